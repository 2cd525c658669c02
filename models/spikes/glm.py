"""Independent, correlated and spike-history GLMs.

- :class:`IndependentPoisson`: a constant rate per neuron (the baseline of bits/spike).
- :class:`PSTHPoisson`: a rate per neuron and time bin, from the trial average (uses the trial repeats).
- :class:`CorrelatedGLM`: ``eta^t = A y^t + b`` with ``A`` strictly lower triangular: each neuron is
  predicted from the neurons before it in the same bin. Poisson (the correlated Poisson model), Bernoulli, or
  Gaussian observations (the Gaussian case is a full-covariance Gaussian written as its Cholesky factor).
- :class:`SpikeHistoryGLM`: ``eta^t = b + sum_j sum_k W_{i,jk} (phi_k * y_j)^t (+ A y^t)``, filters of
  every neuron's past spikes on a small raised-cosine basis ``phi``.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse

from v1motion.models.spikes.base import (
    SAMPLE_MAX_COUNT,
    EstimatorParams,
    NotFittedError,
    SpikeModel,
)
from v1motion.models.spikes.data import as_counts
from v1motion.models.spikes.observations import ETA_MAX
from v1motion.models.spikes.sparse import _add_coupling, _spike_outer, spike_rows


class IndependentPoisson(SpikeModel):
    """Homogeneous independent Poisson: one constant rate per neuron (closed-form fit).

    Parameters
    ----------
    min_rate : float, default 1e-6
        Floor on the rate of a neuron that never fired in the training data.
    """

    kind = "independent"

    def __init__(self, min_rate=1e-6, seed=0):
        super().__init__(obs="poisson", link="exp", correlated=False, ordering="index", seed=seed)
        self.min_rate = min_rate

    def fit(self, y, u=None):
        self.__dict__.pop("_obs_cache", None)
        y, yp, _ = self._prepare(y, u, fitting=True)
        rate = np.maximum(y.reshape(-1, y.shape[-1]).mean(axis=0), self.min_rate)
        self.params_ = {"b": np.log(rate)}
        self.n_inputs_, self.offset_fitted_ = 0, False
        # closed form: the maximum-likelihood rate is the mean count, the gradient is zero there
        self._record_fit(
            {"n_iter": 0, "converged": True, "stop_reason": "closed_form", "grad_norm": 0.0}
        )
        from v1motion.models.spikes.base import ParamPacker

        self._packer = ParamPacker({"b": (y.shape[-1],)}, y.shape[-1])
        return self

    @property
    def rate_(self) -> np.ndarray:
        """Mean count per bin of each neuron, shape (n_neurons,)."""
        self._check_fitted()
        return np.exp(self.params_["b"])


class CorrelatedGLM(SpikeModel):
    """Correlated observations within a bin: ``y_i^t ~ obs(f(b_i + sum_{j<i} A_ij y_j^t))``.

    With ``obs="poisson"`` this is the correlated Poisson model; ``"bernoulli"`` for binary data;
    ``"gaussian"`` gives a full-covariance Gaussian (``A`` and the conditional variances are its
    Cholesky factorisation, so its likelihood equals the multivariate normal's).
    See :class:`v1motion.models.spikes.base.SpikeModel` for the parameters.
    """

    kind = "correlated"

    def __init__(
        self,
        obs="poisson",
        link=None,
        ordering="rate",
        l2=1e-4,
        max_iter=500,
        tol=1e-6,
        seed=0,
        input_cap=1.0,
    ):
        super().__init__(obs, link, True, ordering, l2, max_iter, tol, seed, input_cap)

    def _fit_data(self, yp, u):
        # no history: the likelihood depends only on how often each within-bin pattern occurs, and
        # sparse spike trains repeat few patterns (most bins are silent); not with an offset, which
        # differs from bin to bin
        if self._offset is not None:
            return yp, None
        patterns, counts = np.unique(yp.reshape(-1, yp.shape[-1]), axis=0, return_counts=True)
        return patterns[None], counts[None, :, None].astype(float)


def raised_cosine_basis(n_lags: int, n_basis: int, stretch: float = 1.0) -> np.ndarray:
    """Log-stretched raised-cosine temporal basis (Pillow et al. 2008), unit-peak bumps.

    Parameters
    ----------
    n_lags : int
        Number of past bins covered (lag 1 .. n_lags).
    n_basis : int
    stretch : float
        Offset of the log stretching; small values put more bumps at short lags.

    Returns
    -------
    basis : ndarray of shape (n_lags, n_basis)
    """
    if n_lags < 1 or n_basis < 1:
        raise ValueError("n_lags and n_basis must be at least 1")
    if n_basis == 1:
        return np.ones((n_lags, 1))
    lags = np.arange(1, n_lags + 1, dtype=float)
    warped = np.log(lags + stretch)
    lo, hi = np.log(1 + stretch), np.log(n_lags + stretch)
    centres = np.linspace(lo, hi, n_basis)
    width = centres[1] - centres[0]
    arg = np.clip((warped[:, None] - centres[None, :]) * np.pi / (2 * width), -np.pi, np.pi)
    return 0.5 * (1 + np.cos(arg))


def history_features(yp: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """Past spikes filtered by each basis function.

    Parameters
    ----------
    yp : ndarray of shape (n_trials, n_bins, n_neurons)
    basis : ndarray of shape (n_lags, n_basis)

    Returns
    -------
    F : ndarray of shape (n_trials, n_bins, n_neurons * n_basis)
        ``F[k, t, j * n_basis + q] = sum_{l=1}^{n_lags} basis[l-1, q] yp[k, t-l, j]`` (zero before the trial).
    """
    n_trials, n_bins, n = yp.shape
    n_lags, nb = basis.shape
    F = np.zeros((n_trials, n_bins, n, nb))
    for lag in range(1, min(n_lags, n_bins - 1) + 1):
        F[:, lag:] += yp[:, :-lag, :, None] * basis[lag - 1]
    return F.reshape(n_trials, n_bins, n * nb)


class SpikeHistoryGLM(SpikeModel):
    """GLM with spike-history coupling between all neurons, optionally with within-bin ``A``.

    Parameters
    ----------
    n_lags : int, default 10
        History length in bins.
    n_basis : int, default 4
        Raised-cosine basis functions per coupling filter.
    correlated : bool, default False
        Add the within-bin coupling ``A`` (the GLM with correlated Poisson noise).
    Other parameters as :class:`v1motion.models.spikes.base.SpikeModel`.

    Attributes
    ----------
    basis_ : ndarray of shape (n_lags, n_basis)
    filters_ : ndarray of shape (n_neurons, n_neurons, n_lags)
        Coupling filter from neuron j (axis 1) to neuron i (axis 0), original neuron order.
    """

    kind = "glm"
    weight_keys = ("A", "W")

    def __init__(
        self,
        n_lags=10,
        n_basis=4,
        obs="poisson",
        link=None,
        correlated=False,
        ordering="rate",
        l2=1e-4,
        max_iter=1000,
        tol=1e-6,
        seed=0,
        input_cap=1.0,
        max_drive=None,
    ):
        super().__init__(
            obs, link, correlated, ordering, l2, max_iter, tol, seed, input_cap, max_drive
        )
        self.n_lags = n_lags
        self.n_basis = n_basis

    def _basis(self):
        return raised_cosine_basis(self.n_lags, self.n_basis)

    def _shapes(self, n, u_dim):
        shapes = super()._shapes(n, u_dim)
        shapes["W"] = (n, n * self.n_basis)
        return shapes

    def _init_params(self, yp, u):
        params = super()._init_params(yp, u)
        params["W"] = np.zeros((yp.shape[-1], yp.shape[-1] * self.n_basis))
        return params

    def _features(self, yp):
        cache = getattr(self, "_feat_cache", None)
        if cache is not None and cache[0] is yp:
            return cache[1]
        F = history_features(self._inputs(yp), self._basis())
        # spike trains are sparse, and so are their filtered histories: sparse products are faster
        F = sparse.csr_matrix(F.reshape(-1, F.shape[-1]))
        if getattr(self, "_fitting", False):
            self._feat_cache = (yp, F)
        return F

    def _history(self, params, yp, u):
        F = self._features(yp)
        return np.asarray(F @ params["W"].T).reshape(yp.shape), F

    def _history_grad(self, params, yp, u, g, F):
        return {"W": np.asarray(F.T @ g.reshape(-1, g.shape[-1])).T}

    def _nll_grad(self, params, yp, u, weights=None):
        """The likelihood term and its gradient; with Poisson counts and the exp link, the sparse
        products (history features, within-bin coupling) by Numba kernels into one array reused
        within a fit, ``exp`` in place, the scale ``1 / bins`` applied to the small results; else as
        every model does. The same numbers as the generic path to rounding."""
        obs = self._obs()
        if not (weights is None and u is None and obs.name == "poisson" and obs.link.name == "exp"):
            return super()._nll_grad(params, yp, u, weights)

        def make(y):
            F = self._features(y)
            csr = (F.indptr.astype(np.int64), F.indices.astype(np.int64), F.data, F.shape[1])
            return spike_rows(y, self._inputs(y)), csr, np.empty((F.shape[0], y.shape[-1]))

        (indptr, indices, counts, values, flat), F, eta = self._per_fit("_rows_cache", yp, make)
        n_trials, n_bins, n = yp.shape
        scale = 1.0 / (n_trials * n_bins)
        eta[:] = params["b"]
        if self._offset is not None:
            eta += self._offset.reshape(-1, n)
        _add_coupling(eta, np.ascontiguousarray(params["W"].T), F[0], F[1], F[2])
        if self.correlated:
            _add_coupling(eta, np.ascontiguousarray(params["A"].T), indptr, indices, values)
        ev = eta.ravel()[flat]
        g = np.exp(eta, out=eta)
        rates = float(np.sum(g))
        if not rates <= np.exp(ETA_MAX):  # an entry above ETA_MAX or not finite: clipped there
            return super()._nll_grad(params, yp, u, weights)
        g.ravel()[flat] -= counts  # dL/deta per bin, without the scale
        grads = {
            "b": g.sum(axis=0) * scale,
            "W": _spike_outer(g, F[0], F[1], F[2], F[3]) * scale,
        }
        if self.correlated:
            grads["A"] = _spike_outer(g, indptr, indices, values, n) * scale
        return scale * (rates - float(counts @ ev)), grads

    def _history_gains(self, params):
        n = params["b"].shape[0]
        s = self._basis().sum(axis=0)  # each basis function's sum over the lags
        W = params["W"].reshape(n, n, self.n_basis)
        G = W @ s

        def back(gG):
            return {"W": (gG[:, :, None] * s).reshape(n, n * self.n_basis)}

        return G, back

    def _after_fit(self, yp, u):
        self._feat_cache = None
        self.basis_ = self._basis()

    @property
    def filters_(self) -> np.ndarray:
        self._check_fitted()
        n = self.n_neurons_
        W = self.params_["W"].reshape(n, n, self.n_basis)
        filt = np.einsum("ijq,lq->ijl", W, self.basis_)
        out = np.empty_like(filt)
        out[np.ix_(self.order_, self.order_)] = filt
        return out

    def _sample_history_init(self, n_trials, u):
        return np.zeros((n_trials, self.n_lags, self.n_neurons_))  # buffer[:, l-1] = y^{t-l}

    def _sample_history_step(self, buf, t, u):
        hist = np.einsum("klj,lq->kjq", buf, self.basis_).reshape(buf.shape[0], -1)
        return hist @ self.params_["W"].T

    def _sample_history_update(self, buf, t, y_t, u):
        buf = np.roll(buf, 1, axis=1)
        buf[:, 0] = y_t
        return buf


class PSTHPoisson(EstimatorParams):
    """Inhomogeneous independent Poisson: a rate per neuron and bin, from the trial-averaged response.

    It uses the fact that trials repeat the same stimulus, so it is only defined on data aligned to the
    trials it was fitted on (same number of bins). A Gaussian smoothing of ``smooth_bins`` and a mixture
    with the neuron's mean rate (weight ``shrink``) keep rates positive.
    """

    kind = "psth"

    def __init__(self, smooth_bins=2.0, shrink=0.05):
        self.smooth_bins = smooth_bins
        self.shrink = shrink

    def fit(self, y, u=None):
        from scipy.ndimage import gaussian_filter1d

        y = as_counts(y)
        m = y.mean(axis=0)
        if self.smooth_bins > 0:
            m = gaussian_filter1d(m, self.smooth_bins, axis=0, mode="nearest")
        self.rate_ = (1 - self.shrink) * m + self.shrink * y.mean(axis=(0, 1))
        self.rate_ = np.maximum(self.rate_, 1e-6)
        self.n_neurons_ = y.shape[-1]
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "rate_"):
            raise NotFittedError("this PSTHPoisson is not fitted yet: call fit(counts) first")

    @property
    def n_params_(self) -> int:
        """One rate per bin and neuron (the smoothing makes fewer of them free; an information
        criterion with this count penalises the PSTH at most)."""
        self._check_fitted()
        return int(self.rate_.size)

    def log_likelihood(self, y, u=None, per_trial=False):
        from scipy.special import gammaln

        self._check_fitted()
        y = as_counts(y)
        if y.shape[1:] != self.rate_.shape:
            raise ValueError(f"counts must have shape (n_trials,) + {self.rate_.shape}")
        ll = y * np.log(self.rate_) - self.rate_ - gammaln(y + 1)
        return ll.sum(axis=(1, 2)) if per_trial else float(ll.sum())

    def sample(self, n_trials=1, n_bins=None, u=None, seed=0):
        """Poisson counts (``int64``) of shape (n_trials, n_bins, n_neurons); ``n_bins`` other than
        the fitted trials' repeats the rates cyclically."""
        self._check_fitted()
        rng = np.random.default_rng(seed)
        rate = self.rate_ if n_bins is None else np.resize(self.rate_, (n_bins, self.n_neurons_))
        return rng.poisson(np.broadcast_to(rate, (n_trials,) + rate.shape)).astype(np.int64)


class StimulusLocked(EstimatorParams):
    """A spike model driven by the stimulus-locked log-rate of the trials it is fitted on.

    For trials that repeat one stimulus (the retina's movie): ``eta = log r_t + (the model's own
    predictor)``, where ``r_t`` is the :class:`PSTHPoisson` rate of bin ``t``, taken from the training
    trials only and passed to ``model`` as a fixed ``offset``. The model's bias, history and coupling
    then describe the spikes around the stimulus-locked rate, and ``sample`` draws trials of the same
    stimulus. Held-out trials are scored with the training trials' rates, so they must have as many
    bins. A history model fitted without the stimulus explains its bursts by self-excitation, and its
    free-running samples run away (``docs/spikes/README.md``).

    Parameters
    ----------
    model : an unfitted :class:`v1motion.models.spikes.base.SpikeModel` (GLM or R-GLM).
    smooth_bins, shrink : the PSTH's smoothing and shrinkage (:class:`PSTHPoisson`).

    Attributes
    ----------
    psth_ : the fitted :class:`PSTHPoisson`; everything else (``params_``, ``converged_``, ...) is the
        wrapped model's.
    """

    def __init__(self, model, smooth_bins=2.0, shrink=0.05):
        self.model = model
        self.smooth_bins = smooth_bins
        self.shrink = shrink

    @property
    def kind(self) -> str:
        return f"{self.model.kind}_locked"

    def __getattr__(self, name):
        # fitted attributes and everything else the wrapped model has (not the ones set here)
        if name in ("model", "psth_"):
            raise AttributeError(name)
        return getattr(self.model, name)

    def _offset(self, n_bins: int) -> np.ndarray:
        if not hasattr(self, "psth_"):
            raise NotFittedError(
                "this StimulusLocked model is not fitted yet: call fit(counts) first"
            )
        if n_bins != self.psth_.rate_.shape[0]:
            raise ValueError(
                f"trials have {n_bins} bins; the stimulus-locked rate has {self.psth_.rate_.shape[0]}"
                " (the trials it was fitted on)"
            )
        return np.log(self.psth_.rate_)

    def fit(self, y, u=None):
        y = as_counts(y)
        self.psth_ = PSTHPoisson(self.smooth_bins, self.shrink).fit(y)
        self.model.fit(y, u, offset=self._offset(y.shape[1]))
        return self

    def log_likelihood(self, y, u=None, per_trial=False):
        y = as_counts(y)
        return self.model.log_likelihood(y, u, per_trial, offset=self._offset(y.shape[1]))

    def predict_eta(self, y, u=None):
        y = as_counts(y)
        return self.model.predict_eta(y, u, offset=self._offset(y.shape[1]))

    def sample(self, n_trials=1, n_bins=None, u=None, seed=None, max_count=SAMPLE_MAX_COUNT):
        n_bins = self.psth_.rate_.shape[0] if n_bins is None and hasattr(self, "psth_") else n_bins
        offset = self._offset(n_bins)
        return self.model.sample(n_trials, n_bins, u, seed, max_count, offset=offset)
