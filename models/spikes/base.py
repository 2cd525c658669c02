"""Shared machinery of the spike models: neuron ordering, parameter packing, L-BFGS, the estimator base.

Every model's linear predictor for bin ``t`` has the form

    eta^t = h^t + A y^t + b,

where ``h^t`` depends only on the past (nothing for the independent and correlated models, spike-history
filters for the GLM, ``C x^{t-1}`` for the R-GLM) and ``A`` is strictly lower triangular in the model's
neuron ordering (``order_``), or absent. The joint probability of one bin is then a product of
conditionals, ``p(y^t) = prod_i p(y_i^t | y_<i^t, past)``, so it is normalised exactly and can be sampled
neuron by neuron.
"""

from __future__ import annotations

import functools
import logging

import numpy as np
from scipy import sparse
from scipy.optimize import minimize
from threadpoolctl import threadpool_limits

from v1motion.models.estimator import NotFittedError as NotFittedError
from v1motion.models.estimator import Params
from v1motion.models.estimator import clone as clone
from v1motion.models.spikes.data import as_counts
from v1motion.models.spikes.observations import (
    GaussianObservations,
    Observations,
    get_observations,
    nonzero,
)

log = logging.getLogger(__name__)

ORDERINGS = ("rate", "rate_ascending", "index", "random")


def neuron_order(y: np.ndarray, ordering: str | np.ndarray, seed: int = 0) -> np.ndarray:
    """Return the neuron ordering used by the within-bin coupling ``A``.

    Parameters
    ----------
    y : ndarray of shape (n_trials, n_bins, n_neurons)
    ordering : {"rate", "rate_ascending", "index", "random"} or array of ints
        ``rate``: highest firing rate first (the default: the most informative neurons condition the
        rest); ``rate_ascending``: lowest first; ``index``: as given; ``random``: a seeded permutation;
        an explicit permutation is used as is.
    """
    n = y.shape[-1]
    if not isinstance(ordering, str):
        order = np.asarray(ordering, dtype=int)
        if sorted(order.tolist()) != list(range(n)):
            raise ValueError(f"ordering must be a permutation of 0..{n - 1}")
        return order
    rates = y.reshape(-1, n).mean(axis=0)
    if ordering == "rate":
        return np.argsort(-rates, kind="stable")
    if ordering == "rate_ascending":
        return np.argsort(rates, kind="stable")
    if ordering == "index":
        return np.arange(n)
    if ordering == "random":
        return np.random.default_rng(seed).permutation(n)
    raise ValueError(f"unknown ordering {ordering!r}; valid: {list(ORDERINGS)} or a permutation")


def single_blas_thread(fn):
    """Run ``fn`` with one BLAS thread: the matrices here are small and threads only contend for the
    cores (measured 10x slower matrix products with OpenBLAS's default threads on a busy 2-core machine)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with threadpool_limits(limits=1, user_api="blas"):
            return fn(*args, **kwargs)

    return wrapper


def packed_sizes(shapes: dict[str, tuple[int, ...]], n_neurons: int) -> dict[str, int]:
    """How many numbers each array of ``shapes`` takes in the flat vector (``A``: its strict lower
    triangle)."""
    return {
        k: (n_neurons * (n_neurons - 1) // 2 if k == "A" else int(np.prod(s, dtype=np.int64)))
        for k, s in shapes.items()
    }


class ParamPacker:
    """Pack a dict of arrays into one flat vector and back; ``A`` entries are its strict lower triangle."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], n_neurons: int):
        self.shapes = shapes
        # only where there is an A: for n neurons the table is n^2 entries (144 MB kept in an
        # independent model of 3,000 neurons, which has 3,000 parameters)
        self.tril = np.tril_indices(n_neurons, -1) if "A" in shapes else None
        self.sizes = packed_sizes(shapes, n_neurons)
        self.size = sum(self.sizes.values())

    def pack(self, params: dict[str, np.ndarray]) -> np.ndarray:
        parts = []
        for k in self.shapes:
            v = params[k]
            parts.append(v[self.tril] if k == "A" else np.ravel(v))
        return np.concatenate(parts) if parts else np.zeros(0)

    def unpack(self, theta: np.ndarray) -> dict[str, np.ndarray]:
        out, i = {}, 0
        for k, s in self.shapes.items():
            n = self.sizes[k]
            if k == "A":
                A = np.zeros(s)
                A[self.tril] = theta[i : i + n]
                out[k] = A
            else:
                out[k] = theta[i : i + n].reshape(s).copy()
            i += n
        return out


# corrections kept by L-BFGS (scipy's default is 10). Measured on an R-GLM of one retina recording
# (1000 iterations from the GLM): 30 gave a gradient norm of 8.5e-4 against 1.5e-2 with 10, and
# +1.985 against +1.977 held-out bits/spike. Measured again on the 16-state R-GLM with correlated
# Poisson (Movie1Exp1, fold 0's 24 training trials, run to a largest gradient entry of 1e-6): 100
# needed 1784 iterations against more than 3000 with 30 (the same optimum, loss equal to 1e-9 per
# bin); the cost per iteration is the loss's, not the memory's
LBFGS_MEMORY = 100

# Memory a fit takes per parameter its L-BFGS run optimises, measured at the peak of a correlated
# GLM's fit (101,325 parameters, 150 iterations: 2.27 kB each; the 100 pairs of vectors L-BFGS keeps
# are 1.6 kB of it). What ``SpikeModel.fit_bytes`` counts.
PARAM_BYTES = 2300

# width of the smoothed positive part in the bound on the excitatory drive (log-rate units): a kink at
# zero would stall L-BFGS, and zero weights (the start of every fit) sit on it
DRIVE_SMOOTH = 0.1
# weight of the squared excess of a neuron's excitatory drive over ``max_drive`` (per bin of data, as
# the loss). A soft bound: on the retina the fitted drive exceeds it by about 0.1 (GLMs) and up to 1.35
# (R-GLM) at the iteration caps. A weight of 1 held it to 0.01 but left the GLM fits far from converged
# (largest gradient entries 0.03-0.1 at 1000 iterations, against 4e-5 to 1.7e-4 with 0.01)
STABILITY_WEIGHT = 0.01
# the bound on a history model's excitatory drive measured for sampling (log-rate per bin, see
# SpikeModel.max_drive); opt-in: the fits default to none, the maximum-likelihood fit
MAX_DRIVE = 4.0


def smooth_pos(x: np.ndarray) -> np.ndarray:
    """Positive part smoothed by a quadratic over ``[0, DRIVE_SMOOTH]``: 0 below 0, ``x^2 / (2 d)`` on
    ``[0, d]``, ``x - d / 2`` above (continuous with a continuous slope)."""
    d = DRIVE_SMOOTH
    return np.where(x <= 0, 0.0, np.where(x < d, x**2 / (2 * d), x - d / 2))


def smooth_pos_grad(x: np.ndarray) -> np.ndarray:
    """Derivative of :func:`smooth_pos`: ``clip(x / d, 0, 1)``."""
    return np.clip(x / DRIVE_SMOOTH, 0.0, 1.0)


SAMPLE_MAX_COUNT = 100
"""The samplers' cap on a Poisson count per bin (a count there means the sample ran away)."""

STOP_REASONS = ("gtol", "ftol", "max_iter", "max_fun", "line_search", "closed_form")


def _stop_reason(message: str) -> str:
    """Name the criterion that ended an L-BFGS-B run, from scipy's message."""
    m = message.upper().replace("_", " ")
    if "PROJECTED GRADIENT" in m:
        return "gtol"
    if "REDUCTION OF F" in m:
        return "ftol"
    if "ITERATIONS REACHED LIMIT" in m:
        return "max_iter"
    if "EVALUATIONS EXCEEDS LIMIT" in m:
        return "max_fun"
    return "line_search"


def lbfgs(fun, theta0: np.ndarray, maxiter: int, tol: float, name: str) -> tuple[np.ndarray, dict]:
    """Minimise ``fun(theta) -> (value, grad)`` with scipy's L-BFGS-B and say how it stopped.

    Parameters
    ----------
    fun : callable
        Loss per bin of data and its gradient.
    theta0 : ndarray of shape (n_params,)
    maxiter : int
        Iteration cap (the models' ``max_iter``).
    tol : float
        Gradient tolerance: the run has converged when ``max_i |grad_i| <= tol``.
    name : str
        Model name for the log and the progress bar.

    Returns
    -------
    theta : ndarray of shape (n_params,)
    info : dict
        ``n_iter``, ``loss``, ``grad_norm`` (largest absolute entry of the gradient at ``theta``, on the
        per-bin loss scale; without bounds the projected gradient is the gradient), ``stop_reason``
        (``"gtol"``: gradient below ``tol``; ``"ftol"``: an iteration did not decrease the loss at all;
        ``"max_iter"``: the iteration cap; ``"max_fun"``: the cap on evaluations; ``"line_search"``: the
        line search found no acceptable step), ``converged`` (the largest gradient entry is at most
        ``tol``: the only convergence test), ``overflowing_steps`` and scipy's ``message``. Every stop
        other than convergence is logged as a warning.

    Notes
    -----
    scipy's relative test on the loss (``ftol``) is switched off (``ftol = 0``): it used to stop fits
    whose largest gradient entry was still 10-800 times ``tol`` (the GLMs 1e-5 to 3e-5, the R-GLM
    7.6e-5 to 8.4e-4), so a fit now runs until its gradient is below ``tol`` or a cap ends it.

    A step into an unstable region (a recurrent loop whose state runs away over the trial) overflows.
    Such a point is reported as a loss far above the best one seen, with that point's gradient, so the
    line search interpolates back to a shorter step. (Reported as NaN, scipy 1.17's line search does not
    backtrack and ends "ABNORMAL" at the NaN point: measured on an R-GLM started from a 5-iteration GLM on
    the retina. ``inf`` or a huge value with a zero gradient instead ends the line search with a spurious
    "convergence": measured on the retina R-GLM, it stopped after 5 iterations at 0.40 bits/spike where
    the fit reaches 1.3.)
    """
    n_bad = [0]
    best: dict = {}

    def safe(theta):
        with np.errstate(over="ignore", invalid="ignore"):
            value, grad = fun(theta)
        if not (np.isfinite(value) and np.all(np.isfinite(grad))):
            n_bad[0] += 1
            if not best:
                return np.nan, np.full_like(theta, np.nan)
            # far above the best loss, with its (non-zero) gradient: the line search interpolates back
            return best["fun"] + 1e6 * max(1.0, abs(best["fun"])), best["jac"]
        if not best or value < best["fun"]:
            best.update(fun=value, x=theta.copy(), jac=grad.copy())
        return value, grad

    from tqdm import tqdm

    # A fit can take a minute (the retina's R-GLM: 6,000-8,000 iterations): a bar up to the cap, with
    # the largest gradient entry against the tolerance that ends it. On a terminal only (disable=None):
    # not in the service's worker processes or in logs.
    bar = tqdm(total=maxiter, desc=f"{name} L-BFGS", unit="it", disable=None, leave=False)

    def step(_theta) -> None:
        if best and not bar.disable:  # drawn when tqdm redraws (at most every 0.1 s)
            grad = np.max(np.abs(best["jac"]))
            bar.set_postfix_str(f"max|grad| {grad:.1e} (stops at {tol:.0e})", refresh=False)
        bar.update(1)

    with bar:
        res = minimize(
            safe,
            theta0,
            jac=True,
            method="L-BFGS-B",
            callback=step,
            options={"maxiter": maxiter, "gtol": tol, "ftol": 0.0, "maxcor": LBFGS_MEMORY},
        )
    if not np.isfinite(res.fun):
        raise FloatingPointError(f"{name}: the loss is not finite at the starting parameters")
    x, loss, jac = res.x, float(res.fun), res.jac
    if best and not loss <= best["fun"]:
        # The run ended on (or reported) a point that overflowed, whose loss is the stand-in above:
        # the result is the best point evaluated, with its own loss and gradient.
        x, loss, jac = best["x"], float(best["fun"]), best["jac"]
    reason = _stop_reason(str(res.message))
    grad_norm = float(np.max(np.abs(jac))) if np.size(jac) else 0.0
    converged = grad_norm <= tol
    if converged:  # the test holds at the returned point, whatever ended scipy's run
        reason = "gtol"
    if reason == "max_iter":
        log.warning(
            "%s: L-BFGS hit the iteration cap max_iter=%d without converging "
            "(gradient norm %.3g, tol %.3g); raise max_iter",
            name,
            maxiter,
            grad_norm,
            tol,
        )
    elif not converged:
        log.warning(
            "%s: L-BFGS stopped without converging (%s: %s) after %d iterations, gradient norm %.3g",
            name,
            reason,
            res.message,
            res.nit,
            grad_norm,
        )
    info = {
        "n_iter": int(res.nit),
        "loss": loss,
        "grad_norm": grad_norm,
        "stop_reason": reason,
        "converged": converged,
        "overflowing_steps": n_bad[0],
        "message": str(res.message),
    }
    return x, info


class EstimatorParams(Params):
    """:class:`~v1motion.models.estimator.Params` (scikit-learn's parameter protocol) and ``score``,
    the held-out quality the spike models are compared by."""

    def score(self, y, u=None, **kwargs) -> float:
        """Mean log-likelihood of held-out counts per time bin, in nats (higher is better).

        ``log_likelihood(y, u)`` divided by the number of bins (trials x bins; each bin's term sums
        over the neurons), so it is defined on new data alone, with or without spikes, for every
        model. On the same counts a difference of two models' scores times the bins, over the
        spikes and ``ln 2``, is their difference in bits/spike
        (:func:`v1motion.models.spikes.evaluation.bits_per_spike`, which needs a baseline fitted
        on the training data). For Gaussian observations (``obs="gaussian"``) it is a
        log-density, comparable only with other Gaussian models.

        Parameters
        ----------
        y : array of shape (n_trials, n_bins, n_neurons) or (n_bins, n_neurons)
        u : array of shape (n_trials, n_bins, n_inputs), optional
            Stimulus inputs (models that take them).
        **kwargs
            Passed to ``log_likelihood``: the ``offset`` of a model fitted with one (as in its
            ``fit``).
        """
        ll = self.log_likelihood(y, u, **kwargs)  # validates y first
        return float(ll) / _n_bins(y)


def _n_bins(y) -> int:
    """Time bins of counts ``y`` (trials x bins; a 2-D array is one trial)."""
    shape = np.shape(y)
    return int(np.prod(shape[:-1])) if len(shape) >= 2 else 1


class SpikeModel(EstimatorParams):
    """Base class of the spike-train estimators (scikit-learn style: ``fit`` returns ``self``; the
    parameters, ``score`` and ``repr`` as :class:`EstimatorParams`).

    Subclasses implement ``_init_params``, ``_history`` (the past-dependent drive ``h``) and
    ``_history_grad`` (back-propagation of ``dL/deta`` into the history parameters), and
    ``_sample_history`` for free-running sampling.

    Parameters
    ----------
    obs : str or Observations, default "poisson"
    link : str, optional
        Inverse link; default the observation model's (``exp`` for Poisson).
    correlated : bool
        Whether the model has the within-bin coupling ``A``.
    ordering : str or array, default "rate"
        Neuron ordering for ``A`` (see :func:`neuron_order`).
    l2 : float
        L2 penalty on all weights except the biases ``b`` (per bin of data).
    max_iter : int
        L-BFGS iteration cap; a fit that reaches it logs a warning naming ``max_iter``.
    tol : float
        Gradient tolerance (largest absolute gradient entry of the per-bin loss).
    seed : int
    input_cap : float or None, default 1
        Counts enter the within-bin coupling and the history (spike-history filters, the R-GLM's state)
        as ``min(y, input_cap)``; ``None`` passes them unchanged. Applies to Poisson observations only
        (Bernoulli data are already 0/1; Gaussian data are not counts). With the exp link a count feeds
        back exponentially: a neuron whose excitatory self-coupling outweighs the fall of the rate makes
        more spikes the more it made, and free-running samples run away (measured: 12-34 counts per 10 ms
        bin against 0.013 in the retina data, with raw counts). Capped at 1 (a spike indicator), the drive
        of each neuron is bounded whatever the past. Counts above 1 are 7% of the non-empty 10 ms bins of
        the retina data.
    max_drive : float or None
        Bound on each neuron's excitatory drive ``D_i = b_i + sum_j pos(G_ij) + sum_j pos(A_ij)``
        (:meth:`excitatory_drive`, log-rate per bin): the log-rate of neuron ``i`` in a self-sustained
        state where every neuron that excites it fires in every bin. The fit adds
        ``(STABILITY_WEIGHT / 2) sum_i max(0, D_i - max_drive)^2`` to the loss; ``None``: no bound. Only models with a history (the GLM and the
        R-GLM; default ``None``, ``MAX_DRIVE = 4`` is the measured choice for sampling) use it. Fitted on a stimulus-driven recording without the stimulus, a history
        model explains the stimulus-locked bursts by self-excitation, and free-running samples fall into
        a state where a group of neurons keeps itself firing (measured on the retina: ``D`` up to 47-56,
        samples at 0.14-18 counts per bin against 0.013-0.017 in the data); the bound removes that state
        at a measured cost in held-out likelihood (``docs/spikes/README.md``).

    Attributes
    ----------
    params_ : dict of ndarrays, in the model's neuron order ``order_``.
    converged_ : bool
        Whether the largest gradient entry is at most ``tol`` (``stop_reason_`` ``"gtol"``).
    stop_reason_ : str
        What ended the fit, one of :data:`STOP_REASONS` (see :func:`lbfgs`).
    grad_norm_ : float
        Largest absolute entry of the gradient of the per-bin penalised loss at the fitted parameters.
    n_iter_ : int
        L-BFGS iterations.
    fit_info_ : dict
        All of the above and the final loss.
    """

    kind = "base"
    weight_keys: tuple[str, ...] = ("A",)

    def __init__(
        self,
        obs="poisson",
        link=None,
        correlated=True,
        ordering="rate",
        l2=1e-4,
        max_iter=500,
        tol=1e-6,
        seed=0,
        input_cap=1.0,
        max_drive=None,
    ):
        self.max_drive = max_drive
        self.obs = obs
        self.link = link
        self.correlated = correlated
        self.ordering = ordering
        self.l2 = l2
        self.max_iter = max_iter
        self.tol = tol
        self.seed = seed
        self.input_cap = input_cap

    # ------------------------------------------------------------------ helpers
    def _check_fitted(self):
        if not hasattr(self, "params_"):
            raise NotFittedError(
                f"this {type(self).__name__} is not fitted yet: call fit(counts) first"
            )

    def _check_y(self, y, fitting=False):
        """``y`` as counts (floats for Gaussian observations) of the fitted number of neurons; a new
        fit takes any number (it forgets the earlier fit, as scikit-learn's ``fit`` does)."""
        y = as_counts(y) if not isinstance(self._obs(), GaussianObservations) else _as_float3(y)
        self._obs().check_data(y)
        if not fitting and hasattr(self, "n_neurons_") and y.shape[-1] != self.n_neurons_:
            raise ValueError(
                f"counts have {y.shape[-1]} neurons; the model was fitted on {self.n_neurons_}"
            )
        return y

    def _obs(self) -> Observations:
        if not hasattr(self, "_obs_cache"):
            self._obs_cache = get_observations(self.obs, self.link)
        return self._obs_cache

    def _inputs(self, yp: np.ndarray) -> np.ndarray:
        """Counts as they enter the coupling and the history: ``min(y, input_cap)`` (Poisson only)."""
        cap = getattr(self, "input_cap", None)
        if cap is None or self._obs().name != "poisson":
            return yp
        if not cap > 0:
            raise ValueError("input_cap must be positive (or None)")
        return np.minimum(yp, cap)

    def _shapes(self, n: int, u_dim: int) -> dict[str, tuple[int, ...]]:
        shapes = {"b": (n,)}
        if self.correlated:
            shapes["A"] = (n, n)
        return shapes

    def _init_params(self, yp, u) -> dict[str, np.ndarray]:
        n = yp.shape[-1]
        obs = self._obs()
        m = yp.reshape(-1, n).mean(axis=0)
        if obs.name == "poisson" and obs.link.name == "exp":
            b = np.log(m + 1e-3)
        elif obs.name == "poisson":
            b = np.log(np.expm1(m + 1e-3))
        elif obs.name == "bernoulli":
            p = np.clip(m, 1e-3, 1 - 1e-3)
            b = np.log(p / (1 - p))
        else:
            b = m.copy()
        params = {"b": b}
        if self.correlated:
            params["A"] = np.zeros((n, n))
        return params

    # --------------------------------------------------- history (subclass hooks)
    def _history(self, params, yp, u):
        """Past-dependent drive ``h`` of shape (n_trials, n_bins, n_neurons) and a cache."""
        return np.zeros_like(yp), None

    def _history_grad(self, params, yp, u, g, cache) -> dict[str, np.ndarray]:
        return {}

    # ------------------------------------------------------------------ core
    def _per_fit(self, name: str, yp, compute):
        """``compute(yp)``, kept in ``self.<name>`` for the training data while fitting (``fit``
        clears it), so every evaluation of one fit reuses it."""
        cache = getattr(self, name, None)
        if cache is not None and cache[0] is yp:
            return cache[1]
        value = compute(yp)
        if getattr(self, "_fitting", False):
            setattr(self, name, (yp, value))
        return value

    def _design(self, yp) -> Design:
        """The design matrix of ``yp``, cached for the training data while fitting."""
        return self._per_fit("_design_cache", yp, lambda y: Design(self._inputs(y)))

    def _spikes(self, yp):
        """Non-zero entries of the training counts (``observations.nonzero``), found once per fit."""
        return self._per_fit("_spikes_cache", yp, nonzero)

    def _eta(self, params, yp, u):
        h, cache = self._history(params, yp, u)
        eta = h + params["b"]
        if self._offset is not None:
            eta += self._offset
        if self.correlated:
            eta += self._design(yp).matmul(params["A"].T)
        return eta, cache

    def _loss_grad(self, theta, packer, yp, u, weights=None):
        """Penalised negative log-likelihood per bin and its gradient.

        ``weights`` (shape (n_trials, n_bins, 1)) counts how often each bin occurs, for models whose
        bins can be deduplicated (no history): the loss is then the weighted sum.
        """
        params = packer.unpack(theta)
        loss, grads = self._nll_grad(params, yp, u, weights)
        for k in self.weight_keys:
            if k in params:
                l2 = self._l2(k)
                loss += 0.5 * l2 * np.sum(params[k] ** 2)
                grads[k] = grads[k] + l2 * params[k]
        if getattr(self, "max_drive", None) is not None:
            pen, pgrads = self._drive_penalty(params)
            loss += pen
            for k, v in pgrads.items():
                grads[k] = grads[k] + v
        return loss, packer.pack(grads)

    def _nll_grad(self, params, yp, u, weights=None):
        """Negative log-likelihood per bin (the loss before its penalties) and its gradient, a dict by
        parameter; ``weights`` as in :meth:`_loss_grad`."""
        eta, cache = self._eta(params, yp, u)
        obs = self._obs()
        if weights is None:
            loss, g = obs.loss_and_grad(
                yp, eta, 1.0 / (yp.shape[0] * yp.shape[1]), self._spikes(yp)
            )
        else:
            n_bins = float(weights.sum())
            loss = -float(np.sum(weights * obs.log_likelihood(yp, eta))) / n_bins
            g = obs.loss_grad(yp, eta) * (weights / n_bins)
        grads = {"b": g.sum(axis=(0, 1))}
        if self.correlated:
            grads["A"] = self._design(yp).outer(g)
        grads.update(self._history_grad(params, yp, u, g, cache))
        return loss, grads

    # ------------------------------------------------------- bound on the excitatory drive
    def _history_gains(self, params):
        """Total gain ``G_ij`` of a sustained input ``g(y_j) = 1`` on neuron ``i``'s log-rate, summed over
        all lags, and the back-propagation ``dL/dG -> {param: dL/dparam}``; ``None`` without history."""
        return None

    def excitatory_drive(self, params=None) -> np.ndarray:
        """``D_i = b_i + sum_j pos(G_ij) + sum_{j<i} pos(A_ij)``, in the model's neuron order.

        ``G_ij`` is the gain of neuron ``j``'s sustained firing on neuron ``i``'s log-rate (its history
        filter summed over all lags, see ``_history_gains``) and ``A`` the within-bin coupling, so ``D_i``
        is the log-rate of neuron ``i`` when every neuron that excites it has fired in every bin, this
        one included, and no inhibitory one has: the largest rate a self-sustained state of the
        population can reach. ``pos`` is the positive part, smoothed over ``[0, DRIVE_SMOOTH]``
        (:func:`smooth_pos`).
        """
        params = self.params_ if params is None else params
        return self._excitatory_drive(params)[0]

    def _excitatory_drive(self, params):
        D = params["b"].copy()
        hist = self._history_gains(params)
        if hist is not None:
            D = D + smooth_pos(hist[0]).sum(axis=1)
        if self.correlated and "A" in params:
            D = D + np.tril(smooth_pos(params["A"]), -1).sum(axis=1)
        return D, hist

    def _drive_penalty(self, params):
        """``(STABILITY_WEIGHT / 2) sum_i max(0, D_i - max_drive)^2`` and its gradients."""
        D, hist = self._excitatory_drive(params)
        over = np.maximum(D - self.max_drive, 0.0)
        pen = 0.5 * STABILITY_WEIGHT * float(np.sum(over**2))
        gD = STABILITY_WEIGHT * over
        grads = {"b": gD}
        if self.correlated and "A" in params:
            grads["A"] = np.tril(gD[:, None] * smooth_pos_grad(params["A"]), -1)
        if hist is not None:
            G, back = hist
            grads.update(back(gD[:, None] * smooth_pos_grad(G)))
        return pen, grads

    def _l2(self, key: str) -> float:
        """L2 penalty of the weight block ``key``."""
        return self.l2

    # The offset of the call being run (``fit``, ``log_likelihood``, ``predict_eta``, ``sample``), in
    # the model's neuron order, or None; set by ``_offset_for`` and cleared when the call returns.
    _offset = None

    def _offset_for(self, offset, shape):
        """``offset`` as an array of ``shape`` (n_trials, n_bins, n_neurons) in the model's neuron order
        (a ``(n_bins, n_neurons)`` offset is shared by every trial), or ``None``."""
        if offset is None:
            return None
        off = np.asarray(offset, dtype=float)
        if off.ndim == 2:
            off = np.broadcast_to(off, (shape[0],) + off.shape)
        if off.shape != tuple(shape):
            raise ValueError(
                f"offset has shape {np.shape(offset)}; it needs (n_trials, n_bins, n_neurons) = "
                f"{tuple(shape)} or (n_bins, n_neurons) = {tuple(shape[1:])}"
            )
        if not np.all(np.isfinite(off)):
            raise ValueError("offset must be finite (a log-rate per bin and neuron)")
        return np.ascontiguousarray(off[..., self.order_])

    takes_stimulus = False
    """Whether the model has weights for a stimulus ``u`` (the R-GLM's ``B``); the others refuse one
    (a GLM fitted "with" a stimulus ignored it)."""

    def _check_inputs(self, u, offset, fitting: bool) -> None:
        """Refuse a stimulus the model cannot use, and one or an offset its fit did not have (or
        the one it had, left out): scored so, a model fitted with an offset read -11.2 nats a bin
        where it reads -0.36 with it, without a word."""
        if u is not None and not self.takes_stimulus:
            raise ValueError(
                f"{type(self).__name__} takes no stimulus input (u): only the R-GLM has weights "
                "for one; leave u out"
            )
        if fitting:
            return
        n_inputs = 0 if u is None else np.shape(u)[-1]
        if n_inputs != getattr(self, "n_inputs_", n_inputs):
            raise ValueError(
                f"this model was fitted with {self.n_inputs_} stimulus inputs (u), and is given "
                f"{n_inputs}: pass the stimulus of the counts, as in its fit"
            )
        fitted_with = getattr(self, "offset_fitted_", None)  # None: a model from before it was kept
        if fitted_with is not None and fitted_with != (offset is not None):
            raise ValueError(
                "this model was fitted with an offset: pass the offset of these counts"
                if fitted_with
                else "this model was fitted without an offset: score it without one"
            )

    def _prepare(self, y, u, fitting=False, offset=None):
        self._check_inputs(u, offset, fitting)
        y = self._check_y(y, fitting)
        if fitting:
            self.n_neurons_ = y.shape[-1]
            self.order_ = neuron_order(y, self.ordering if self.correlated else "index", self.seed)
        yp = np.ascontiguousarray(y[..., self.order_])
        self._offset = self._offset_for(offset, yp.shape)
        if u is not None:
            u = _as_float3(u, name="stimulus")
            if u.shape[:2] != y.shape[:2]:
                raise ValueError(
                    f"stimulus has shape {u.shape}; it needs (n_trials, n_bins, n_inputs) = {y.shape[:2]} + (k,)"
                )
        return y, yp, u

    @single_blas_thread
    def fit(self, y, u=None, offset=None):
        """Fit by maximum likelihood (L-BFGS, L2 penalty) and return ``self``.

        Parameters
        ----------
        y : array of shape (n_trials, n_bins, n_neurons) or (n_bins, n_neurons)
        u : array of shape (n_trials, n_bins, n_inputs), optional
            Stimulus inputs (models that take them).
        offset : array of shape (n_trials, n_bins, n_neurons) or (n_bins, n_neurons), optional
            A known drive added to every neuron's linear predictor (log-rate with the exp link) in
            every bin, not fitted: e.g. the stimulus-locked log-rate of trials that repeat one stimulus
            (:class:`v1motion.models.spikes.glm.StimulusLocked`). ``log_likelihood``, ``predict_eta``
            and ``sample`` then need the offset of the trials they score or draw.
        """
        try:
            return self._fit(y, u, offset)
        finally:
            self._offset = None

    def _fit(self, y, u, offset):
        for name in ("_obs_cache",):
            self.__dict__.pop(name, None)
        y, yp, u = self._prepare(y, u, fitting=True, offset=offset)
        self.n_inputs_ = 0 if u is None else u.shape[-1]
        self.offset_fitted_ = offset is not None
        params = self._init_params(yp, u)
        packer = ParamPacker(self._shapes(yp.shape[-1], self.n_inputs_), yp.shape[-1])
        yf, weights = self._fit_data(yp, u)
        theta0 = packer.pack(params)
        self._fitting = True  # cache what depends only on the training data
        try:
            theta, self.fit_info_ = lbfgs(
                lambda th: self._loss_grad(th, packer, yf, u, weights),
                theta0,
                self.max_iter,
                self.tol,
                type(self).__name__,
            )
        finally:
            self._fitting = False
            self._design_cache = self._spikes_cache = self._rows_cache = None
        self._record_fit(self.fit_info_)
        self.params_ = packer.unpack(theta)
        self._packer = packer
        obs = self._obs()
        if isinstance(obs, GaussianObservations):
            eta, _ = self._eta(self.params_, yp, u)
            obs.estimate_scale(yp, eta)
        self._after_fit(yp, u)
        return self

    def _record_fit(self, info: dict) -> None:
        """Keep how the fit ended as attributes (``converged_``, ``stop_reason_``, ...)."""
        self.fit_info_ = info
        self.converged_ = bool(info["converged"])
        self.stop_reason_ = str(info["stop_reason"])
        self.grad_norm_ = float(info["grad_norm"])
        self.n_iter_ = int(info["n_iter"])

    def _after_fit(self, yp, u):
        pass

    def _fit_data(self, yp, u):
        """Data the optimiser sees and per-bin weights (``None``: every bin once)."""
        return yp, None

    @property
    def n_params_(self) -> int:
        self._check_fitted()
        return self._packer.size

    def optimised_params(self, n_neurons: int, n_inputs: int = 0) -> int:
        """How many numbers one L-BFGS run of :meth:`fit` optimises on ``n_neurons`` neurons (and
        ``n_inputs`` stimulus inputs), known before the fit: each keeps ``LBFGS_MEMORY`` pairs of
        vectors that long (1.6 kB a parameter)."""
        return sum(packed_sizes(self._shapes(n_neurons, n_inputs), n_neurons).values())

    def fit_bytes(self, n_bins: int, n_neurons: int) -> int:
        """About how much memory :meth:`fit` takes on counts of ``n_bins`` bins per trial and
        ``n_neurons`` neurons, beyond the data's own (known before the fit, for a server to refuse
        what it cannot hold): ``PARAM_BYTES`` per optimised parameter."""
        return self.optimised_params(n_neurons) * PARAM_BYTES

    def _fitted_eta(self, y, u, offset):
        """``(yp, eta)``: the counts in the model's neuron order and the fitted model's linear
        predictor of every bin (``offset`` as in :meth:`fit`, cleared after)."""
        self._check_fitted()
        try:
            _, yp, u = self._prepare(y, u, offset=offset)
            eta, _ = self._eta(self.params_, yp, u)
        finally:
            self._offset = None
        return yp, eta

    @single_blas_thread
    def predict_eta(self, y, u=None, offset=None) -> np.ndarray:
        """Linear predictor of every bin given the observed counts, in the original neuron order
        (``offset`` as in :meth:`fit`)."""
        _, eta = self._fitted_eta(y, u, offset)
        out = np.empty_like(eta)
        out[..., self.order_] = eta
        return out

    @single_blas_thread
    def log_likelihood(self, y, u=None, per_trial: bool = False, offset=None):
        """Full log-likelihood in nats of ``y`` (summed, or one value per trial; ``offset`` as in
        :meth:`fit`)."""
        yp, eta = self._fitted_eta(y, u, offset)
        ll = self._obs().log_likelihood(yp, eta)
        return ll.sum(axis=(1, 2)) if per_trial else float(ll.sum())

    def set_params(self, **params):
        """As :meth:`EstimatorParams.set_params`; a new ``obs`` or ``link`` also drops the
        observation model built from the old ones."""
        super().set_params(**params)
        if "obs" in params or "link" in params:
            # the observation model is built from them; a fit estimates its scale again
            self.__dict__.pop("_obs_cache", None)
        return self

    # ------------------------------------------------------------------ sampling
    def _sample_history_init(self, n_trials, u):
        return None

    def _sample_history_step(self, state, t, u):
        """Return ``h^t`` of shape (n_trials, n_neurons) given the state; ``None`` means zero."""
        return None

    def _sample_history_update(self, state, t, y_t, u):
        return state

    @single_blas_thread
    def sample(
        self,
        n_trials: int = 1,
        n_bins: int = 1000,
        u=None,
        seed: int | None = None,
        max_count=SAMPLE_MAX_COUNT,
        offset=None,
    ):
        """Draw counts from the fitted model, free-running, bin by bin and neuron by neuron.

        ``max_count`` caps a Poisson count per bin (a non-integer cap at its floor): a recurrent
        model with net excitatory feedback can run away when sampled freely; a warning says when the
        cap was hit. ``offset`` (as in :meth:`fit`, for the drawn trials) is added to every bin's
        drive. ``seed=None`` draws with the model's own ``seed``, so two calls without one draw the
        same counts: pass a seed per draw for different ones.

        Returns
        -------
        y : ndarray of shape (n_trials, n_bins, n_neurons)
            Integer counts (``int64``) for Poisson and Bernoulli observations; floats for Gaussian
            ones.
        """
        self._check_fitted()
        if n_trials < 1 or n_bins < 1:
            raise ValueError("n_trials and n_bins must be at least 1")
        if u is not None:
            u = _as_float3(u, name="stimulus")
            if u.shape[:2] != (n_trials, n_bins):
                raise ValueError(f"stimulus must have shape ({n_trials}, {n_bins}, n_inputs)")
        rng = np.random.default_rng(self.seed if seed is None else seed)
        n = self.n_neurons_
        off = self._offset_for(offset, (n_trials, n_bins, n))
        obs = self._obs()
        if obs.name == "poisson":
            max_count = np.floor(max_count)  # the counts are integers
        A = self.params_.get("A") if self.correlated else None
        out = np.zeros((n_trials, n_bins, n))
        state = self._sample_history_init(n_trials, u)
        for t in range(n_bins):
            h = self._sample_history_step(state, t, u)
            eta0 = np.broadcast_to(self.params_["b"], (n_trials, n)).copy()
            if h is not None:
                eta0 += h
            if off is not None:
                eta0 += off[:, t]
            y_t = sample_bin(
                obs, eta0, A, rng, max_count if obs.name == "poisson" else None, self._inputs
            )
            out[:, t] = y_t
            state = self._sample_history_update(state, t, self._inputs(y_t), u)
        if obs.name == "poisson" and np.any(out >= max_count):
            log.warning(
                "%s sample ran away: %d bins hit the cap of %d counts",
                type(self).__name__,
                int(np.sum(out >= max_count)),
                max_count,
            )
        # counts are drawn as whole numbers; the sampler keeps them as floats for the drive
        res = np.empty(out.shape, dtype=np.int64 if obs.counts else float)
        res[..., self.order_] = out
        return res


def sample_bin(
    obs: Observations,
    eta0: np.ndarray,
    A: np.ndarray | None,
    rng,
    max_count: float | None = None,
    inputs=None,
) -> np.ndarray:
    """Sample one bin neuron by neuron: ``y_i ~ obs(f(eta0_i + sum_{j<i} A_ij g(y_j)))``.

    Parameters
    ----------
    eta0 : ndarray of shape (n_trials, n_neurons)
        Drive without the within-bin term, in the model's neuron order.
    A : ndarray of shape (n_neurons, n_neurons), strictly lower triangular, or None
    inputs : callable, optional
        ``g``: counts as they enter the coupling (the model's ``_inputs``); default the identity.
    """
    g = inputs if inputs is not None else (lambda v: v)
    if A is None:
        if isinstance(obs, GaussianObservations):
            return obs.link(eta0) + np.sqrt(obs.scale) * rng.standard_normal(eta0.shape)
        y = obs.sample(eta0, rng)
        return y if max_count is None else np.minimum(y, max_count)
    y = np.zeros_like(eta0)
    scale = np.broadcast_to(np.asarray(getattr(obs, "scale", 1.0), float), (eta0.shape[1],))
    for i in range(eta0.shape[1]):
        eta_i = eta0[:, i] + g(y[:, :i]) @ A[i, :i]
        if isinstance(obs, GaussianObservations):
            y[:, i] = obs.link(eta_i) + np.sqrt(scale[i]) * rng.standard_normal(eta_i.shape)
        else:
            y[:, i] = obs.sample(eta_i, rng)
            if max_count is not None:
                y[:, i] = np.minimum(y[:, i], max_count)
    return y


class Design:
    """Counts as a 2-D design matrix (all bins stacked), sparse when spikes are rare.

    Spike counts in 10 ms bins are mostly zeros; products with a CSR matrix then cost a fraction of the
    dense ones. Dense data (density above ``max_density``) stays dense.
    """

    def __init__(self, yp: np.ndarray, max_density: float = 0.1):
        self.shape = yp.shape
        flat = yp.reshape(-1, yp.shape[-1])
        dense = np.count_nonzero(flat) > max_density * flat.size
        self.matrix = flat if dense else sparse.csr_matrix(flat)

    def matmul(self, M: np.ndarray) -> np.ndarray:
        """``yp @ M`` with shape (n_trials, n_bins, M.shape[1])."""
        return np.asarray(self.matrix @ M).reshape(self.shape[:-1] + (M.shape[1],))

    def outer(self, g: np.ndarray) -> np.ndarray:
        """``sum_{k,t} g[k, t, :, None] * yp[k, t, None, :]`` of shape (g.shape[-1], n_neurons)."""
        return np.asarray(self.matrix.T @ g.reshape(-1, g.shape[-1])).T


def _outer_sum(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``sum_{k,t} a[k, t, :, None] * b[k, t, None, :]`` as one matrix product."""
    return a.reshape(-1, a.shape[-1]).T @ b.reshape(-1, b.shape[-1])


def _as_float3(x, name="data") -> np.ndarray:
    try:
        arr = np.asarray(x, dtype=float)
    except (ValueError, TypeError):
        raise ValueError(f"{name} must be a rectangular numeric array (ragged input?)") from None
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or 0 in arr.shape:
        raise ValueError(
            f"{name} must have shape (n_trials, n_bins, n_channels) with no empty axis"
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr
