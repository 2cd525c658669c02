"""Evaluation of spike models: held-out bits/spike cross-validated over trials, sample statistics, decoding."""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from v1motion.models.spikes.data import as_counts
from v1motion.models.spikes.glm import IndependentPoisson
from v1motion.models.spikes.observations import get_observations

log = logging.getLogger(__name__)
LN2 = np.log(2.0)


def bits_per_spike(ll_model: float, ll_baseline: float, n_spikes: float) -> float:
    """``(LL_model - LL_baseline) / (n_spikes ln 2)``: information gain per spike over a baseline."""
    if n_spikes <= 0:
        raise ValueError("bits/spike needs at least one spike in the held-out data")
    return float((ll_model - ll_baseline) / (n_spikes * LN2))


def check_scorable(model) -> None:
    """``ValueError`` when ``model``'s likelihood is not a probability of counts: a Gaussian observation
    model (``obs="gaussian"``) gives a density, which compared with the Poisson baseline's
    probabilities reads as tens of bits/spike gained by a model of nothing (a constant Gaussian scored
    +87 on a retina recording). The Gaussian LDS (``lds``) is scored by the Poisson probability of the
    rates it predicts, and passes."""
    inner = getattr(model, "model", model)  # a StimulusLocked wraps its model
    obs = getattr(inner, "obs", None)
    if obs is None:
        return
    if get_observations(obs, getattr(inner, "link", None)).counts:
        return
    raise ValueError(
        f"obs {getattr(obs, 'name', obs)!r} gives a probability density, not a probability of "
        "counts, so its bits/spike against the Poisson baseline would mean nothing: use obs "
        "'poisson' (the default) or 'bernoulli' for 0/1 counts; the 'lds' kind models square-root "
        "counts as Gaussian and is scored by the Poisson probability of the rates it predicts"
    )


def trial_folds(n_trials: int, n_folds: int, seed: int = 0) -> list[np.ndarray]:
    """Split trial indices into ``n_folds`` held-out sets (a seeded permutation)."""
    if not 2 <= n_folds <= n_trials:
        raise ValueError(f"n_folds must be between 2 and the number of trials ({n_trials})")
    perm = np.random.default_rng(seed).permutation(n_trials)
    return [np.sort(f) for f in np.array_split(perm, n_folds)]


def held_out_bits(model, y_train, y_test) -> dict:
    """Fit ``model`` on ``y_train``; its held-out bits/spike relative to the homogeneous Poisson.

    Returns
    -------
    dict with ``bits_per_spike`` (relative), ``ll`` (nats), ``ll_baseline``, ``n_spikes`` and
    ``baseline_bits_per_spike`` (the baseline's absolute log-likelihood per spike, bits).
    """
    check_scorable(model)
    base = IndependentPoisson().fit(y_train)
    model.fit(y_train)
    ll = model.log_likelihood(y_test)
    llb = base.log_likelihood(y_test)
    n = float(np.sum(y_test))
    return {
        "bits_per_spike": bits_per_spike(ll, llb, n),
        "ll": ll,
        "ll_baseline": llb,
        "n_spikes": n,
        "baseline_bits_per_spike": float(llb / (n * LN2)),
    }


def cross_validate(
    factories: dict[str, Callable[[], object]],
    y: np.ndarray,
    n_folds: int = 5,
    seed: int = 0,
    progress: bool = True,
    keep: dict | None = None,
    fits: dict | None = None,
) -> dict[str, np.ndarray]:
    """Held-out bits/spike of each model on each fold of trials.

    Parameters
    ----------
    factories : dict name -> callable returning an unfitted model
    y : ndarray of shape (n_trials, n_bins, n_neurons)

    Returns
    -------
    dict name -> ndarray of shape (n_folds,) of bits/spike relative to the homogeneous independent
    Poisson fitted on the same training trials; also ``"_baseline_abs"``: the baseline's absolute
    log-likelihood per held-out spike (bits). When ``keep`` is a dict, the models fitted on fold 0's
    training trials are stored in it by name. When ``fits`` is a dict, ``fits[name]`` is the list (one per
    fold) of how each fit ended: ``converged``, ``stop_reason``, ``grad_norm``, ``n_iter``, ``tol`` and
    ``fit_seconds`` (wall time), for the models that report it, and ``final_change`` (EM fits that
    record it: the last iteration's change of their objective, nats per bin; otherwise ``None``).
    """
    import time

    from tqdm import tqdm

    y = as_counts(y)
    folds = trial_folds(y.shape[0], n_folds, seed)
    out = {name: np.zeros(n_folds) for name in factories}
    out["_baseline_abs"] = np.zeros(n_folds)
    jobs = [(f, name) for f in range(n_folds) for name in factories]
    for f, name in tqdm(jobs, desc="cross-validation", disable=not progress, leave=False):
        test = folds[f]
        train = np.setdiff1d(np.arange(y.shape[0]), test)
        model = factories[name]()
        t0 = time.perf_counter()
        res = held_out_bits(model, y[train], y[test])
        seconds = time.perf_counter() - t0
        if keep is not None and f == 0:
            keep[name] = model
        if fits is not None and hasattr(model, "stop_reason_"):
            grad = getattr(model, "grad_norm_", None)
            fits.setdefault(name, []).append(
                {
                    "converged": bool(model.converged_),
                    "stop_reason": str(model.stop_reason_),
                    "grad_norm": None if grad is None else float(grad),
                    "n_iter": int(model.n_iter_),
                    "tol": getattr(model, "tol", None),
                    "final_change": getattr(model, "final_change_", None),
                    "fit_seconds": seconds,
                }
            )
        out[name][f] = res["bits_per_spike"]
        out["_baseline_abs"][f] = res["baseline_bits_per_spike"]
        log.info("fold %d %s: %.4f bits/spike", f, name, res["bits_per_spike"])
    return out


def pairwise_correlations(y: np.ndarray) -> np.ndarray:
    """Zero-lag correlation coefficients of every neuron pair over all bins and trials.

    Returns
    -------
    c : ndarray of shape (n_pairs,), pairs ``i < j`` in ``np.triu_indices`` order (NaN for a silent neuron).
    """
    y = np.asarray(y, dtype=float)
    flat = y.reshape(-1, y.shape[-1])
    flat = flat - flat.mean(axis=0)
    sd = np.sqrt(np.mean(flat**2, axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        c = (flat.T @ flat / len(flat)) / np.outer(sd, sd)
    return c[np.triu_indices(y.shape[-1], 1)]


def cross_correlogram(
    y: np.ndarray, i: int, j: int, max_lag: int = 20
) -> tuple[np.ndarray, np.ndarray]:
    """Correlation coefficient between neuron ``i`` at ``t`` and neuron ``j`` at ``t + lag``, within trials.

    Returns
    -------
    lags : ndarray of shape (2 * max_lag + 1,)
    ccg : ndarray of the same shape
    """
    y = np.asarray(y, dtype=float)
    if y.ndim == 2:
        y = y[None]
    a = y[..., i] - y[..., i].mean()
    b = y[..., j] - y[..., j].mean()
    sa, sb = a.std(), b.std()
    lags = np.arange(-max_lag, max_lag + 1)
    ccg = np.zeros(len(lags))
    T = y.shape[1]
    for n, lag in enumerate(lags):
        if lag >= 0:
            ccg[n] = np.mean(a[:, : T - lag] * b[:, lag:])
        else:
            ccg[n] = np.mean(a[:, -lag:] * b[:, : T + lag])
    denom = sa * sb
    return lags, ccg / denom if denom > 0 else np.full(len(lags), np.nan)


def fit_linear_decoder(
    X: np.ndarray, v: np.ndarray, l2: float = 1e-3
) -> tuple[np.ndarray, np.ndarray]:
    """Ridge regression from states to an external variable.

    Parameters
    ----------
    X : ndarray of shape (..., n_features)
    v : ndarray of shape (...,) or (..., n_outputs), same leading shape as ``X``
    l2 : float
        Ridge penalty (relative to the number of samples).

    Returns
    -------
    W : ndarray of shape (n_features, n_outputs)
    bias : ndarray of shape (n_outputs,)
    """
    Xf = X.reshape(-1, X.shape[-1])
    vf = np.asarray(v, float).reshape(len(Xf), -1)
    mx, mv = Xf.mean(axis=0), vf.mean(axis=0)
    Xc, vc = Xf - mx, vf - mv
    G = Xc.T @ Xc + l2 * len(Xf) * np.eye(Xf.shape[1])
    W = np.linalg.solve(G, Xc.T @ vc)
    return W, mv - mx @ W


def decode(X: np.ndarray, W: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Apply a decoder from :func:`fit_linear_decoder`; output shape ``X.shape[:-1] + (n_outputs,)``."""
    return X @ W + bias


def r_squared(v: np.ndarray, v_hat: np.ndarray) -> float:
    """Fraction of variance of ``v`` explained by ``v_hat``."""
    v, v_hat = np.ravel(v), np.ravel(v_hat)
    return float(1 - np.sum((v - v_hat) ** 2) / np.sum((v - v.mean()) ** 2))
