"""Recurrent GLM (R-GLM): a linear hidden state that integrates the population's past.

    x^t = W0 y^t + R x^{t-1} (+ B u^t),        x^{-1} = 0
    y^t ~ obs(f(C x^{t-1} + A y^t + b)),       A strictly lower triangular (or absent)

Fitted by maximum likelihood with exact gradients by back-propagation through time (BPTT) and L-BFGS.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from models.spikes.base import Design, SpikeModel, _outer_sum


def rglm_states(
    yp: np.ndarray, W0: np.ndarray, R: np.ndarray, bu: np.ndarray | None = None
) -> np.ndarray:
    """Run the hidden-state recursion ``x^t = W0 y^t + R x^{t-1} (+ bu^t)``.

    Parameters
    ----------
    yp : ndarray of shape (n_trials, n_bins, n_neurons)
    W0 : ndarray of shape (n_hidden, n_neurons)
    R : ndarray of shape (n_hidden, n_hidden)
    bu : ndarray of shape (n_trials, n_bins, n_hidden), optional
        Stimulus drive ``B u^t``.

    Returns
    -------
    X : ndarray of shape (n_trials, n_bins, n_hidden)
    """
    drive = yp.matmul(W0.T) if isinstance(yp, Design) else yp @ W0.T
    if bu is not None:
        drive = drive + bu
    return linear_recursion(drive, R)


def linear_recursion(drive: np.ndarray, R: np.ndarray) -> np.ndarray:
    """``x^t = drive^t + R x^{t-1}`` with ``x^{-1} = 0``.

    Parameters
    ----------
    drive : ndarray of shape (n_trials, n_bins, n_hidden)
    R : ndarray of shape (n_hidden, n_hidden)

    Returns
    -------
    X : ndarray of shape (n_trials, n_bins, n_hidden)
    """
    return _linear_recursion(
        np.ascontiguousarray(drive, dtype=np.float64), np.ascontiguousarray(R, dtype=np.float64)
    )


def adjoint_recursion(direct: np.ndarray, R: np.ndarray) -> np.ndarray:
    """Back-propagation through the recursion: ``lam^t = direct^{t+1} + R^T lam^{t+1}``, ``lam^{T-1} = 0``.

    Parameters
    ----------
    direct : ndarray of shape (n_trials, n_bins, n_hidden)
        ``dL/dx^{t-1}`` through the output at bin ``t`` (stored at index ``t``).
    R : ndarray of shape (n_hidden, n_hidden)

    Returns
    -------
    lam : ndarray of shape (n_trials, n_bins, n_hidden), ``dL/dx^t``.
    """
    return _adjoint_recursion(
        np.ascontiguousarray(direct, dtype=np.float64), np.ascontiguousarray(R, dtype=np.float64)
    )


@njit(cache=True, nogil=True)
def _linear_recursion(drive, R):
    n_trials, n_bins, d = drive.shape
    X = np.empty_like(drive)
    for k in range(n_trials):
        for i in range(d):
            X[k, 0, i] = drive[k, 0, i]
        for t in range(1, n_bins):
            for i in range(d):
                acc = drive[k, t, i]
                for j in range(d):
                    acc += R[i, j] * X[k, t - 1, j]
                X[k, t, i] = acc
    return X


@njit(cache=True, nogil=True)
def _adjoint_recursion(direct, R):
    n_trials, n_bins, d = direct.shape
    lam = np.zeros_like(direct)
    for k in range(n_trials):
        for t in range(n_bins - 2, -1, -1):
            for i in range(d):
                acc = direct[k, t + 1, i]
                for j in range(d):
                    acc += R[j, i] * lam[k, t + 1, j]
                lam[k, t, i] = acc
    return lam


def realise_filters(K: np.ndarray, n_hidden: int) -> dict[str, np.ndarray]:
    """A recurrence of ``n_hidden`` states whose drive approximates the coupling filters ``K``.

    The R-GLM's drive is ``C x^{t-1} = sum_{l>=1} C R^{l-1} W0 y^{t-l}``; a GLM's history drive is
    ``sum_{l=1}^{L} K_l y^{t-l}``. Matching the two is a model-reduction problem, solved here by the
    eigensystem realisation algorithm (Ho-Kalman): the block Hankel matrix of the filters, truncated to its
    ``n_hidden`` largest singular values, gives ``(W0, R, C)``.

    Parameters
    ----------
    K : ndarray of shape (n_lags, n_neurons, n_neurons)
        ``K[l - 1, i, j]``: weight of neuron ``j``'s count ``l`` bins ago on neuron ``i``'s drive.
    n_hidden : int

    Returns
    -------
    dict with ``W0`` (n_hidden, n_neurons), ``R`` (n_hidden, n_hidden), ``C`` (n_neurons, n_hidden).

    Notes
    -----
    With ``n_hidden = n_neurons * n_lags`` the realisation is exact (a shift register of lagged counts).
    The filters are zero beyond ``n_lags``, so the Hankel matrices ``H0[a, b] = K_{a+b+1}`` and
    ``H1[a, b] = K_{a+b+2}`` (block indices ``a, b = 0..n_lags-1``) are padded with zero blocks. With
    ``H0 ~ U S V^T`` truncated: ``C`` = first block row of ``U S^{1/2}``, ``W0`` = first block column of
    ``S^{1/2} V^T``, ``R = S^{-1/2} U^T H1 V S^{-1/2}``. A spectral radius of ``R`` above 0.99 (possible
    after truncation) is scaled down to 0.99 so the state cannot run away.
    """
    L, n, _ = K.shape
    if n_hidden < 1:
        raise ValueError("n_hidden must be at least 1")
    Kp = np.concatenate([K, np.zeros((L + 1, n, n))])

    def hankel(offset):
        return np.block([[Kp[a + b + offset] for b in range(L)] for a in range(L)])

    H0, H1 = hankel(0), hankel(1)
    U, S, Vt = np.linalg.svd(H0)
    d = min(n_hidden, int(np.sum(S > S[0] * 1e-12)) if S[0] > 0 else 0)
    out = {
        "W0": np.zeros((n_hidden, n)),
        "R": np.zeros((n_hidden, n_hidden)),
        "C": np.zeros((n, n_hidden)),
    }
    if d == 0:
        return out
    sq = np.sqrt(S[:d])
    O = U[:, :d] * sq
    Q = sq[:, None] * Vt[:d]
    R = (U[:, :d].T @ H1 @ Vt[:d].T) / np.outer(sq, sq)
    rho = np.max(np.abs(np.linalg.eigvals(R)))
    if rho > 0.99:
        R *= 0.99 / rho
    out["C"][:, :d], out["W0"][:d], out["R"][:d, :d] = O[:n], Q[:, :n], R
    return out


def _shift(X):
    """``x^{t-1}`` for every ``t`` (zeros at ``t = 0``)."""
    Xp = np.zeros_like(X)
    Xp[:, 1:] = X[:, :-1]
    return Xp


class RGLM(SpikeModel):
    """Recurrent GLM with optional within-bin correlations and stimulus input.

    Parameters
    ----------
    n_hidden : int, default 8
        Dimension of the hidden state ``x``.
    correlated : bool, default True
        Include the within-bin coupling ``A`` (R-GLM with correlated Poisson noise).
    init_timescales : tuple of float, default (0.5, 0.97)
        Range of the diagonal of ``R`` at a random start (``init="random"``).
    init : {"glm", "random"} or fitted SpikeHistoryGLM, default "glm"
        ``"random"``: random ``W0``, diagonal ``R`` from ``init_timescales``, ``C = 0``. ``"glm"``: first
        fit a spike-history GLM (10 lags, 4 basis functions, the same noise model, ordering, ``l2``,
        ``max_iter`` and ``tol``) and start from it: its ``b`` and ``A``, and ``(W0, R, C)`` realising its
        coupling filters with ``n_hidden`` states (:func:`realise_filters`). A fitted GLM with the same
        ``correlated`` setting can be given instead (it is used as is; its neuron order must match).
    Other parameters as :class:`models.spikes.base.SpikeModel`.

    Attributes
    ----------
    params_ : dict with ``W0`` (n_hidden, n_neurons), ``R`` (n_hidden, n_hidden), ``C`` (n_neurons, n_hidden),
        ``b`` (n_neurons,), ``A`` (n_neurons, n_neurons) and ``B`` (n_hidden, n_inputs) when used, all in the
        model's neuron order ``order_``.
    """

    kind = "rglm"
    weight_keys = ("A", "W0", "R", "C", "B")

    def __init__(
        self,
        n_hidden=8,
        obs="poisson",
        link=None,
        correlated=True,
        ordering="rate",
        l2=1e-4,
        max_iter=500,
        tol=1e-6,
        init_timescales=(0.5, 0.97),
        init="glm",
        seed=0,
    ):
        super().__init__(obs, link, correlated, ordering, l2, max_iter, tol, seed)
        self.n_hidden = n_hidden
        self.init_timescales = init_timescales
        self.init = init

    def _shapes(self, n, u_dim):
        d = self.n_hidden
        shapes = super()._shapes(n, u_dim)
        shapes.update({"W0": (d, n), "R": (d, d), "C": (n, d)})
        if u_dim:
            shapes["B"] = (d, u_dim)
        return shapes

    def _init_params(self, yp, u):
        if self.n_hidden < 1:
            raise ValueError("n_hidden must be at least 1")
        params = super()._init_params(yp, u)
        rng = np.random.default_rng(self.seed)
        n, d = yp.shape[-1], self.n_hidden
        params["W0"] = rng.normal(0, 0.3, (d, n))
        params["R"] = np.diag(np.linspace(*self.init_timescales, d))
        # C = 0: the first steps then move only the read-out (the gradient with respect to R and W0 is
        # zero), instead of a large step in R whose slow modes have steep gradients and can run away
        params["C"] = np.zeros((n, d))
        if u is not None:
            params["B"] = rng.normal(0, 0.1, (d, u.shape[-1]))
        if isinstance(self.init, str) and self.init == "random":
            return params
        glm = self._init_glm(yp)
        params["b"] = glm.params_["b"].copy()
        if self.correlated:
            params["A"] = glm.params_["A"].copy()
        W = glm.params_["W"].reshape(n, n, glm.n_basis)
        K = np.einsum("ijq,lq->lij", W, glm.basis_)  # in the shared neuron order
        params.update(realise_filters(K, d))
        return params

    def _init_glm(self, yp):
        """The fitted spike-history GLM to start from (``init="glm"`` fits one on ``yp``)."""
        from models.spikes.glm import SpikeHistoryGLM

        if isinstance(self.init, SpikeHistoryGLM):
            glm = self.init
            glm._check_fitted()
            if not np.array_equal(glm.order_, self.order_) or glm.correlated != self.correlated:
                raise ValueError(
                    "init GLM must share the R-GLM's neuron order and correlated setting"
                )
            return glm
        if self.init != "glm":
            raise ValueError(
                f"unknown init {self.init!r}; valid: 'random', 'glm' or a fitted SpikeHistoryGLM"
            )
        glm = SpikeHistoryGLM(
            n_lags=10,
            n_basis=4,
            obs=self.obs,
            link=self.link,
            correlated=self.correlated,
            ordering=self.order_,
            l2=self.l2,
            max_iter=self.max_iter,
            tol=self.tol,
            seed=self.seed,
        )
        y = np.empty_like(yp)
        y[..., self.order_] = yp
        return glm.fit(y)

    def _history(self, params, yp, u):
        bu = None if u is None else u @ params["B"].T
        X = rglm_states(self._design(yp), params["W0"], params["R"], bu)
        Xp = _shift(X)
        return Xp @ params["C"].T, (X, Xp)

    def _history_grad(self, params, yp, u, g, cache):
        X, Xp = cache
        R, C = params["R"], params["C"]
        n_trials, n_bins, _ = g.shape
        gC = _outer_sum(g, Xp)
        direct = g @ C  # dL/dx^{t-1} through eta^t, at index t
        lam = adjoint_recursion(direct, R)  # lam[:, t] = dL/dx^t
        grads = {
            "C": gC,
            "W0": self._design(yp).outer(lam),
            "R": _outer_sum(lam, Xp),
        }
        if u is not None:
            grads["B"] = _outer_sum(lam, u)
        return grads

    def hidden_states(self, y, u=None) -> np.ndarray:
        """Hidden states ``x^t`` of shape (n_trials, n_bins, n_hidden) given observed counts."""
        self._check_fitted()
        y, yp, u = self._prepare(y, u)
        bu = None if u is None else u @ self.params_["B"].T
        return rglm_states(yp, self.params_["W0"], self.params_["R"], bu)

    def timescales(self, bin_size: float = 1.0):
        """Eigenvalues of ``R`` and their timescales ``tau = -bin_size / log|lambda|`` (sorted, slowest first).

        Returns
        -------
        eigvals : complex ndarray of shape (n_hidden,)
        tau : ndarray of shape (n_hidden,)
            ``inf`` for ``|lambda| >= 1``.
        """
        self._check_fitted()
        ev = np.linalg.eigvals(self.params_["R"])
        mod = np.abs(ev)
        with np.errstate(divide="ignore"):
            tau = np.where(mod < 1, -bin_size / np.log(np.maximum(mod, 1e-300)), np.inf)
        idx = np.argsort(-tau)
        return ev[idx], tau[idx]

    def _sample_history_init(self, n_trials, u):
        return np.zeros((n_trials, self.n_hidden))

    def _sample_history_step(self, x_prev, t, u):
        return x_prev @ self.params_["C"].T

    def _sample_history_update(self, x_prev, t, y_t, u):
        x = y_t @ self.params_["W0"].T + x_prev @ self.params_["R"].T
        if u is not None:
            x = x + u[:, t] @ self.params_["B"].T
        return x
