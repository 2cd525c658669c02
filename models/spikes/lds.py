"""Gaussian latent linear dynamical system on square-root counts, fitted by EM with Kalman smoothing.

    s^t = F s^{t-1} + w,   w ~ N(0, Q),   s^0 ~ N(mu0, V0)
    z^t = C s^t + d + v,   v ~ N(0, diag(r)),   z = sqrt(y)

The classical baseline that the R-GLM generalises. For bits/spike on counts, each bin's count is given
the Poisson distribution whose mean is the model's one-step-ahead prediction of ``y = z^2`` from the past
(``E[z]^2 + Var[z]`` under the Kalman filter's predictive distribution); samples draw a latent path and
Poisson counts with mean ``(C s + d)^2 + r``.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy.special import gammaln

from v1motion.models.spikes.base import (
    EstimatorParams,
    NotFittedError,
    _outer_sum,
    single_blas_thread,
)
from v1motion.models.spikes.data import as_counts

log = logging.getLogger(__name__)


def kalman_bytes(n_bins: int, n_neurons: int) -> int:
    """Memory of :func:`kalman_covariances`' per-bin ``n x n`` predictive covariances of the counts
    (float64), and as much again for the likelihood that reads them: what an LDS's fit and its
    evaluation of ``n_bins`` bins per trial take beyond the data."""
    return 2 * 8 * n_bins * n_neurons**2


def kalman_covariances(F, Q, C, r, V0, n_bins):
    """Covariance recursions of the Kalman filter and RTS smoother (the same for every trial).

    Returns
    -------
    dict of arrays: ``Pp`` predicted (n_bins, k, k), ``Pf`` filtered, ``K`` gains (n_bins, k, n),
    ``Sp`` predictive covariance of z (n_bins, n, n), ``Ps`` smoothed, ``J`` smoother gains,
    ``Pcross`` Cov(s^t, s^{t-1} | all) (n_bins, k, k) (zero at t = 0).
    """
    k, n = F.shape[0], C.shape[0]
    Pp = np.empty((n_bins, k, k))
    Pf = np.empty((n_bins, k, k))
    K = np.empty((n_bins, k, n))
    Sp = np.empty((n_bins, n, n))
    P = V0
    for t in range(n_bins):
        if t > 0:
            P = F @ Pf[t - 1] @ F.T + Q
            if np.max(np.abs(P - Pp[t - 1])) <= 1e-13 * max(np.max(np.abs(P)), 1e-300):
                # the filter reached its steady state: the remaining bins repeat it exactly
                Pp[t:], Pf[t:], K[t:], Sp[t:] = Pp[t - 1], Pf[t - 1], K[t - 1], Sp[t - 1]
                break
        Pp[t] = P
        S = C @ P @ C.T + np.diag(r)
        Sp[t] = S
        K[t] = np.linalg.solve(S, C @ P).T
        Pf[t] = P - K[t] @ C @ P
        Pf[t] = 0.5 * (Pf[t] + Pf[t].T)
    Ps = np.empty_like(Pf)
    J = np.zeros((n_bins, k, k))
    Ps[-1] = Pf[-1]
    for t in range(n_bins - 2, -1, -1):
        J[t] = np.linalg.solve(Pp[t + 1], F @ Pf[t]).T
        Ps[t] = Pf[t] + J[t] @ (Ps[t + 1] - Pp[t + 1]) @ J[t].T
    Pcross = np.zeros_like(Ps)
    for t in range(1, n_bins):
        Pcross[t] = Ps[t] @ J[t - 1].T
    return {"Pp": Pp, "Pf": Pf, "K": K, "Sp": Sp, "Ps": Ps, "J": J, "Pcross": Pcross}


def kalman_means(z, F, C, d, mu0, cov):
    """Filtered, predicted and smoothed means for a batch of trials.

    Parameters
    ----------
    z : ndarray of shape (n_trials, n_bins, n)
    cov : output of :func:`kalman_covariances`

    Returns
    -------
    mp : predicted means (n_trials, n_bins, k); mf filtered; ms smoothed; zp predicted z (n_trials, n_bins, n)
    """
    n_trials, n_bins, n = z.shape
    k = F.shape[0]
    mp = np.empty((n_trials, n_bins, k))
    mf = np.empty_like(mp)
    m = np.broadcast_to(mu0, (n_trials, k))
    for t in range(n_bins):
        if t > 0:
            m = mf[:, t - 1] @ F.T
        mp[:, t] = m
        mf[:, t] = m + (z[:, t] - m @ C.T - d) @ cov["K"][t].T
    ms = np.empty_like(mf)
    ms[:, -1] = mf[:, -1]
    for t in range(n_bins - 2, -1, -1):
        ms[:, t] = mf[:, t] + (ms[:, t + 1] - mp[:, t + 1]) @ cov["J"][t].T
    zp = mp @ C.T + d
    return mp, mf, ms, zp


class GaussianLDS(EstimatorParams):
    """Gaussian LDS fitted by EM on ``sqrt(counts)``; evaluated on counts through a Poisson read-out.

    Parameters
    ----------
    n_latent : int, default 4
    n_iter : int, default 100
        EM iterations (stops earlier when the log-likelihood gains less than ``tol`` per bin).
    tol : float, default 1e-6
    seed : int, default 0

    Attributes
    ----------
    F_, Q_, C_, d_, r_, mu0_, V0_ : fitted parameters; ``loglik_`` the Gaussian log-likelihood per EM step.
    n_iter_ : int
        EM steps taken.
    final_change_ : float or None
        Gain of the log-likelihood (of the square-root counts) between its last two evaluations, in nats
        per bin (``None`` when it was evaluated once); convergence is this gain below ``tol``.
    converged_ : bool
        Whether the gain per bin fell below ``tol`` (``stop_reason_`` ``"ftol"``) before ``n_iter``
        steps (``"max_iter"``, logged as a warning).
    grad_norm_ : None
        EM computes no gradient.
    """

    kind = "lds"

    def __init__(self, n_latent=4, n_iter=100, tol=1e-6, seed=0):
        self.n_latent = n_latent
        self.n_iter = n_iter
        self.tol = tol
        self.seed = seed

    def _check_fitted(self):
        if not hasattr(self, "F_"):
            raise NotFittedError("this GaussianLDS is not fitted yet: call fit(counts) first")

    def fit_bytes(self, n_bins: int, n_neurons: int) -> int:
        """About how much memory :meth:`fit` takes (:func:`kalman_bytes`; measured: 721 MB at 2,000
        bins of 150 neurons)."""
        return kalman_bytes(n_bins, n_neurons)

    @single_blas_thread
    def fit(self, y, u=None):
        """Fit by EM on ``z = sqrt(y)``; returns ``self``."""
        from tqdm import tqdm

        y = as_counts(y)
        z = np.sqrt(y)
        n_trials, n_bins, n = z.shape
        k = self.n_latent
        if not 1 <= k:
            raise ValueError("n_latent must be at least 1")
        self.n_neurons_ = n
        # initialise with PCA of z
        d = z.reshape(-1, n).mean(axis=0)
        zc = (z - d).reshape(-1, n)
        cov = zc.T @ zc / len(zc)
        w, v = np.linalg.eigh(cov)
        idx = np.argsort(w)[::-1][:k]
        # with more latents than neurons, PCA gives only n directions: the rest start small and random
        # (all zero, their EM updates would stay zero)
        C = (
            0.01
            * np.sqrt(max(np.mean(w), 1e-6))
            * np.random.default_rng(self.seed).standard_normal((n, k))
        )
        C[:, : len(idx)] = v[:, idx] * np.sqrt(np.maximum(w[idx], 1e-6))
        r = np.maximum(np.diag(cov) - np.sum(C**2, axis=1), 1e-3)
        F = 0.9 * np.eye(k)
        Q = (1 - 0.81) * np.eye(k)
        mu0, V0 = np.zeros(k), np.eye(k)
        self.loglik_ = []
        prev = -np.inf
        converged = False
        self.final_change_ = None
        for _ in tqdm(range(self.n_iter), desc="LDS EM", disable=None, leave=False):
            covs = kalman_covariances(F, Q, C, r, V0, n_bins)
            mp, mf, ms, zp = kalman_means(z, F, C, d, mu0, covs)
            ll = self._gauss_ll(z, zp, covs["Sp"])
            self.loglik_.append(ll)
            if len(self.loglik_) > 1:
                self.final_change_ = float((ll - prev) / (n_trials * n_bins))
            if ll - prev < self.tol * n_trials * n_bins:
                converged = True
                break
            prev = ll
            Ps = covs["Ps"]
            # sufficient statistics summed over trials and bins
            Ess = _outer_sum(ms, ms) + n_trials * Ps.sum(axis=0)
            Ms = ms.sum(axis=(0, 1))
            N = n_trials * n_bins
            # C, d: regress z on [s, 1]
            Sz = _outer_sum(z, ms)
            G = np.block([[Ess, Ms[:, None]], [Ms[None, :], np.array([[N]])]])
            H = np.concatenate([Sz, z.sum(axis=(0, 1))[:, None]], axis=1)
            Cd = np.linalg.solve(G.T, H.T).T
            C, d = Cd[:, :k], Cd[:, k]
            zz = np.einsum("kti,kti->i", z, z)
            r = np.maximum((zz - np.sum(Cd * H, axis=1)) / N, 1e-6)
            # F, Q from pairs (t, t-1)
            S10 = _outer_sum(ms[:, 1:], ms[:, :-1]) + n_trials * covs["Pcross"][1:].sum(axis=0)
            S00 = _outer_sum(ms[:, :-1], ms[:, :-1]) + n_trials * Ps[:-1].sum(axis=0)
            S11 = _outer_sum(ms[:, 1:], ms[:, 1:]) + n_trials * Ps[1:].sum(axis=0)
            F = np.linalg.solve(S00.T, S10.T).T
            Q = (S11 - F @ S10.T) / (n_trials * (n_bins - 1))
            Q = 0.5 * (Q + Q.T) + 1e-9 * np.eye(k)
            mu0 = ms[:, 0].mean(axis=0)
            dm = ms[:, 0] - mu0
            V0 = Ps[0] + dm.T @ dm / n_trials + 1e-6 * np.eye(k)
        else:
            log.warning(
                "GaussianLDS: EM hit the iteration cap n_iter=%d without reaching tol", self.n_iter
            )
        self.F_, self.Q_, self.C_, self.d_, self.r_, self.mu0_, self.V0_ = F, Q, C, d, r, mu0, V0
        self.n_iter_ = len(self.loglik_)
        # EM computes no gradient: convergence is the log-likelihood gain per bin below tol
        self.converged_ = converged
        self.stop_reason_ = "ftol" if converged else "max_iter"
        self.grad_norm_ = None
        return self

    @staticmethod
    def _gauss_ll(z, zp, Sp):
        n = z.shape[-1]
        L = np.linalg.cholesky(Sp)  # (T, n, n)
        e = z - zp  # (K, T, n)
        sol = np.linalg.solve(L, e.transpose(1, 2, 0))  # (T, n, K), one triangular system per bin
        logdet = 2 * np.log(np.diagonal(L, axis1=1, axis2=2)).sum(axis=1)  # (T,)
        return float(
            -0.5
            * (
                np.sum(sol**2)
                + z.shape[0] * np.sum(logdet)
                + z.shape[0] * z.shape[1] * n * np.log(2 * np.pi)
            )
        )

    @property
    def n_params_(self) -> int:
        self._check_fitted()
        k, n = self.n_latent, self.n_neurons_
        return k * k + k * (k + 1) // 2 + n * k + 2 * n + k + k * (k + 1) // 2

    @single_blas_thread
    def _predict(self, y):
        self._check_fitted()
        y = as_counts(y)
        if y.shape[-1] != self.n_neurons_:
            raise ValueError(
                f"counts have {y.shape[-1]} neurons; the model was fitted on {self.n_neurons_}"
            )
        z = np.sqrt(y)
        covs = kalman_covariances(self.F_, self.Q_, self.C_, self.r_, self.V0_, y.shape[1])
        _, _, _, zp = kalman_means(z, self.F_, self.C_, self.d_, self.mu0_, covs)
        var = np.diagonal(covs["Sp"], axis1=1, axis2=2)
        return y, z, zp, covs, var

    def predict_rate(self, y) -> np.ndarray:
        """One-step-ahead predicted mean count ``E[z]^2 + Var[z]`` of every bin, shape like ``y``."""
        _, _, zp, _, var = self._predict(y)
        return zp**2 + var

    def log_likelihood(self, y, u=None, per_trial=False):
        """Poisson log-likelihood (nats) of counts with the one-step-ahead predicted means."""
        y, _, zp, _, var = self._predict(y)
        rate = np.maximum(zp**2 + var, 1e-8)
        ll = y * np.log(rate) - rate - gammaln(y + 1)
        return ll.sum(axis=(1, 2)) if per_trial else float(ll.sum())

    def gaussian_log_likelihood(self, y) -> float:
        """The LDS's own log-likelihood (nats) of ``sqrt(y)`` (the Kalman filter's)."""
        _, z, zp, covs, _ = self._predict(y)
        return self._gauss_ll(z, zp, covs["Sp"])

    def smoothed_latents(self, y) -> np.ndarray:
        """Posterior means of the latents given each whole trial, shape (n_trials, n_bins, n_latent)."""
        y, z, _, covs, _ = self._predict(y)
        return kalman_means(z, self.F_, self.C_, self.d_, self.mu0_, covs)[2]

    @single_blas_thread
    def sample(self, n_trials=1, n_bins=1000, u=None, seed=None, gaussian=False):
        """Sample counts (or ``sqrt`` counts when ``gaussian``), shape (n_trials, n_bins, n_neurons):
        integers (``int64``) drawn from the Poisson read-out, or the LDS's own continuous outputs
        (floats) when ``gaussian``."""
        self._check_fitted()
        rng = np.random.default_rng(self.seed if seed is None else seed)
        k = self.n_latent
        s = rng.multivariate_normal(self.mu0_, self.V0_, size=n_trials)
        Lq = np.linalg.cholesky(self.Q_ + 1e-12 * np.eye(k))
        out = np.empty((n_trials, n_bins, self.n_neurons_))
        for t in range(n_bins):
            if t > 0:
                s = s @ self.F_.T + rng.standard_normal((n_trials, k)) @ Lq.T
            mean = s @ self.C_.T + self.d_
            if gaussian:
                out[:, t] = mean + np.sqrt(self.r_) * rng.standard_normal(mean.shape)
            else:
                out[:, t] = rng.poisson(mean**2 + self.r_)
        return out if gaussian else out.astype(np.int64)
