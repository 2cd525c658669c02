"""Model kinds by name, their options, and fitting with a held-out score (what the CLI and service call)."""

from __future__ import annotations

import inspect
import logging
import time

import numpy as np

from v1motion.models.spikes.evaluation import bits_per_spike, check_scorable
from v1motion.models.spikes.glm import (
    CorrelatedGLM,
    IndependentPoisson,
    SpikeHistoryGLM,
    StimulusLocked,
)
from v1motion.models.spikes.lds import GaussianLDS
from v1motion.models.spikes.plds import PoissonLDS
from v1motion.models.spikes.rglm import RGLM

log = logging.getLogger(__name__)

MODEL_KINDS = {
    "independent": (IndependentPoisson, {}),
    "correlated": (CorrelatedGLM, {}),
    "glm": (SpikeHistoryGLM, {"correlated": False}),
    "glm_correlated": (SpikeHistoryGLM, {"correlated": True}),
    "lds": (GaussianLDS, {}),
    "plds": (PoissonLDS, {}),
    "rglm": (RGLM, {"correlated": False}),
    "rglm_correlated": (RGLM, {"correlated": True}),
    "glm_correlated_locked": (SpikeHistoryGLM, {"correlated": True}),
    "rglm_correlated_locked": (RGLM, {"correlated": True}),
}

# Kinds driven by the stimulus-locked rate of their training trials (:class:`StimulusLocked`).
STIMULUS_LOCKED = ("glm_correlated_locked", "rglm_correlated_locked")

# The defaults that differ from the class's, measured on the retina recordings (docs/spikes/README.md):
# the driven R-GLM's ``l2_state`` ("Models that see the stimulus"); the Poisson LDS's priors, without
# which its EM does not converge ("The Poisson LDS").
KIND_DEFAULTS = {
    "rglm_correlated_locked": {"l2_state": 1e-3},
    "plds": {"l2_loadings": 10.0, "l2_dynamics": 100.0},
}


def model_options(kind: str) -> list[str]:
    """Names of the options ``kind`` accepts (its constructor's parameters, minus fixed ones)."""
    cls, fixed = _lookup(kind)
    return [p for p in inspect.signature(cls.__init__).parameters if p != "self" and p not in fixed]


def options_in_effect(kind: str, given: dict) -> dict:
    """Every option of ``kind`` as a fit with the options ``given`` uses it: the constructor's
    defaults, this project's defaults for the kind (``KIND_DEFAULTS``), then the given ones; tuples
    as lists (JSON)."""
    cls, _ = _lookup(kind)
    params = inspect.signature(cls.__init__).parameters
    used = {k: params[k].default for k in model_options(kind)} | KIND_DEFAULTS.get(kind, {}) | given
    return {k: list(v) if isinstance(v, tuple) else v for k, v in used.items()}


def _lookup(kind):
    try:
        return MODEL_KINDS[kind]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown model kind {kind!r}; valid kinds: {sorted(MODEL_KINDS)}"
        ) from None


def make_model(kind: str, **options):
    """Build an unfitted model by kind name; unknown options are refused with the valid ones listed."""
    cls, fixed = _lookup(kind)
    valid = model_options(kind)
    bad = sorted(set(options) - set(valid))
    if bad:
        raise ValueError(f"unknown option(s) {bad} for kind {kind!r}; valid options: {valid}")
    model = cls(**fixed, **{**KIND_DEFAULTS.get(kind, {}), **options})
    return StimulusLocked(model) if kind in STIMULUS_LOCKED else model


# Why a fit's memory outgrows its counts: said by every refusal of a fit too large to hold.
GROWS_WITH_NEURONS = (
    "a GLM's couplings and an LDS's covariance of the counts in each bin grow with the square of "
    "the neurons"
)


def _fitted_model(kind: str, options: dict):
    """The model a ``kind`` fit optimises (a stimulus-locked kind's: the GLM or R-GLM it drives)."""
    model = make_model(kind, **options)
    return model.model if kind in STIMULUS_LOCKED else model


def optimised_params(kind: str, n_neurons: int, **options) -> int:
    """How many numbers the largest L-BFGS run of a ``kind`` fit on ``n_neurons`` neurons optimises
    (an R-GLM started from a GLM: the larger of the two), known before the fit. 0 for the kinds that
    are not fitted by one (the LDS, by EM); their size goes with the counts and latents."""
    count = getattr(_fitted_model(kind, options), "optimised_params", None)
    return 0 if count is None else int(count(n_neurons))


def fit_bytes(kind: str, n_bins: int, n_neurons: int, **options) -> int:
    """About how much memory a ``kind`` fit on ``n_bins`` bins per trial of ``n_neurons`` neurons
    takes beyond its data, known before it runs (``GROWS_WITH_NEURONS``: :func:`optimised_params`
    for a GLM)."""
    return int(_fitted_model(kind, options).fit_bytes(n_bins, n_neurons))


def check_data(kind: str, y: np.ndarray) -> None:
    """``ValueError`` when counts ``y`` (trials, bins, neurons) cannot be fitted by ``kind``.

    A stimulus-locked kind needs repeated trials of one stimulus: at least 2 (a training and a
    held-out trial of the same length)."""
    _lookup(kind)
    n_trials = y.shape[0] if np.ndim(y) == 3 else 1
    if kind in STIMULUS_LOCKED and n_trials < 2:
        raise ValueError(
            f"kind {kind!r} is driven by the stimulus-locked rate of repeated trials: it needs "
            f"counts of shape (trials, bins, neurons) with at least 2 trials of one stimulus, got "
            f"{n_trials}"
        )


def check_observations(kind: str, options: dict | None = None) -> None:
    """``ValueError`` when ``kind`` with ``options`` cannot be scored in bits/spike
    (:func:`~v1motion.models.spikes.evaluation.check_scorable`), before any fit."""
    check_scorable(make_model(kind, **(options or {})))


def held_out(n_trials: int, n_bins: int, test_fraction: float, seed: int = 0):
    """What :func:`split_trials` holds out: ``(trials, None)``, the sorted indices of the held-out
    trials (a seeded choice), or with one trial ``(None, first)``, its bins from ``first`` on."""
    if not 0 < test_fraction < 1:
        raise ValueError("test_fraction must be between 0 and 1")
    if n_trials >= 2:
        n_test = min(max(1, round(test_fraction * n_trials)), n_trials - 1)
        return np.sort(np.random.default_rng(seed).permutation(n_trials)[:n_test]), None
    n_test = round(test_fraction * n_bins)
    if n_test < 1 or n_test >= n_bins:
        raise ValueError("one trial is too short to hold out any bins: give more bins or trials")
    return None, n_bins - n_test


def split_trials(y: np.ndarray, test_fraction: float, seed: int = 0):
    """Hold out whole trials (a seeded choice); with one trial, hold out its last bins instead
    (:func:`held_out`).

    Returns
    -------
    train, test : ndarrays of shape (n, n_bins, n_neurons)
    """
    return _split(y, *held_out(*y.shape[:2], test_fraction, seed))


def _split(y: np.ndarray, trials, first):
    """``(train, test)`` of ``y`` by what :func:`held_out` chose."""
    if trials is None:
        return y[:, :first], y[:, first:]
    return np.delete(y, trials, axis=0), y[trials]


def timescales_bins(model) -> list[float] | None:
    """An R-GLM's timescales in bins, slowest first, -1 for one that does not decay (JSON has no
    infinity); None for a model without them. What the API and the CLI answer."""
    if not hasattr(model, "timescales"):
        return None
    return [float(t) if np.isfinite(t) else -1.0 for t in model.timescales(bin_size=1.0)[1]]


def fit_summary(model) -> dict:
    """How a fitted model's optimiser ended: ``converged``, ``stop_reason``, ``grad_norm`` (``None`` for
    EM), ``n_iter``."""
    grad = getattr(model, "grad_norm_", None)
    return {
        "converged": bool(model.converged_),
        "stop_reason": str(model.stop_reason_),
        "grad_norm": None if grad is None else float(grad),
        "n_iter": int(model.n_iter_),
    }


WORSE_BY = 1e-3
"""bits/spike: a fit is said to predict worse than constant rates from this far below them."""


def fit_warnings(bits: float, n_params: int, n_train_counts: int) -> list[str]:
    """What a user should know before trusting a fit: a model with more parameters than training
    counts, or one that predicts held-out spikes worse than each neuron's constant mean rate (its
    bits/spike below 0), which overfitting on little data gives without any other sign."""
    out = []
    if n_params > n_train_counts:
        out.append(
            f"the model has {n_params:,} parameters for {n_train_counts:,} training counts (trials x bins x "
            "neurons): it can fit noise; give more trials or bins, or fewer lags, hidden units or "
            "latents, or a larger l2"
        )
    if bits < -WORSE_BY:  # not a rounding error's -1e-15 for a model that is the constant rate
        out.append(
            f"held-out spikes are predicted worse than by each neuron's constant mean rate "
            f"({bits:.3g} bits/spike): the model overfits these data or does not suit them"
        )
    return out


def fit_and_score(y: np.ndarray, kind: str, options: dict | None = None, test_fraction=0.2, seed=0):
    """Fit ``kind`` on training trials and score it on held-out ones.

    Returns
    -------
    model : the fitted model (on the training split)
    baseline : :class:`IndependentPoisson` fitted on the same split (the bits/spike reference)
    report : dict with ``bits_per_spike`` (held-out, relative to the baseline), ``n_spikes_test``,
        ``fit_seconds``, ``n_train_trials``, ``n_test_trials``, ``held_out_trials`` and
        ``held_out_from_bin`` (:func:`held_out`), ``n_params``, ``fit`` (see :func:`fit_summary`) and
        ``warnings`` (see :func:`fit_warnings`).
    """
    model = make_model(kind, **(options or {}))
    check_data(kind, y)
    check_scorable(model)
    trials, first = held_out(*y.shape[:2], test_fraction, seed)
    train, test = _split(y, trials, first)
    if test.sum() == 0:
        raise ValueError("the held-out part has no spikes: bits/spike is undefined; give more data")
    t0 = time.perf_counter()
    model.fit(train)
    seconds = time.perf_counter() - t0
    baseline = IndependentPoisson().fit(train)
    report = {
        "bits_per_spike": bits_per_spike(
            model.log_likelihood(test), baseline.log_likelihood(test), float(test.sum())
        ),
        "n_spikes_test": float(test.sum()),
        "fit_seconds": seconds,
        "n_train_trials": int(train.shape[0]),
        "n_test_trials": int(test.shape[0]),
        "held_out_trials": None if trials is None else [int(i) for i in trials],
        "held_out_from_bin": first,
        "n_params": int(model.n_params_),
        "fit": fit_summary(model),
    }
    report["warnings"] = fit_warnings(report["bits_per_spike"], report["n_params"], train.size)
    for warning in report["warnings"]:
        log.warning("%s fit: %s", kind, warning)
    log.info(
        "fitted %s: %.4f held-out bits/spike in %.1f s", kind, report["bits_per_spike"], seconds
    )
    return model, baseline, report


def evaluate(model, baseline, y: np.ndarray) -> dict:
    """Bits/spike of ``y`` under ``model`` relative to ``baseline``, with the log-likelihoods (nats)."""
    check_scorable(model)
    n = float(np.sum(y))
    ll, llb = model.log_likelihood(y), baseline.log_likelihood(y)
    return {
        "bits_per_spike": bits_per_spike(ll, llb, n) if n > 0 else None,
        "log_likelihood": ll,
        "log_likelihood_baseline": llb,
        "n_spikes": n,
    }
