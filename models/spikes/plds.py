"""Poisson latent linear dynamical system (Poisson LDS), fitted by variational EM (or Laplace-EM).

    s^t = F s^{t-1} + w,   w ~ N(0, Q),   s^0 ~ N(mu0, V0)
    y_i^t ~ Poisson(exp(c_i' s^t + d_i))

The LDS baseline of the original work: the latent dynamics of :class:`GaussianLDS`, but the counts
themselves are Poisson given the latents (no square root, no Gaussian noise).

Fit. The posterior of a trial's latent path is not Gaussian. The E-step approximates it by a Gaussian
``q = N(m, Lam^{-1})`` whose precision is block tridiagonal,
``Lam = J + blockdiag(C' diag(r^t) C)`` (``J`` the precision of the Gauss-Markov prior), so every
solve is a banded Cholesky factor in ``O(T k^3)`` and the moments the M-step needs, the diagonal blocks
``Cov(s^t)`` and the first off-diagonal blocks ``Cov(s^t, s^{t-1})`` of ``Lam^{-1}``, come from a backward
recursion on the same factor (:func:`block_tridiag_inverse_blocks`); no dense ``(T k) x (T k)`` matrix is
formed.

- ``method="variational"`` (default): ``q`` maximises the ELBO. At its optimum ``r^t`` are the expected
  rates ``exp(C m^t + d + diag(C S^t C') / 2)``; the mean ascends by Newton steps (negative Hessian
  ``Lam``) and the covariance follows from ``Lam`` (a fixed-point step). Each step raises the ELBO, and so
  does the M-step: the fit ascends the ELBO monotonically.
- ``method="laplace"``: ``m`` is the posterior mode (Newton's method on the log-posterior) and ``r^t`` the
  rates there. Measured on a planted model it does not converge to it: the Gaussian at the mode overstates
  ``E[exp(c's + d)]`` for sparse counts, the M-step lowers ``d`` to compensate, and one eigenvalue of ``F``
  drifts to 1 while the Laplace evidence falls (docs/spikes/README.md).

The M-step is closed-form for ``F, Q, mu0, V0`` (as in the Gaussian LDS), and ``(C, d)`` maximise the
expected Poisson log-likelihood under ``q``, ``sum y (c'm + d) - exp(c'm + d + c'Vc/2)``, a concave
function, by a few Newton steps per neuron. The fit starts from a Gaussian LDS fitted on square-root counts
(its dynamics and smoothed latents, with ``(C, d)`` from the Poisson M-step on those latents).

The latents' scale (``latent_scale``). With free ``F, Q`` the scale of the latents is not identified
(``s -> A s``, ``C -> C A^{-1}`` leaves the likelihood unchanged), and on a rarely firing neuron EM can
follow a ridge along which the likelihood keeps rising, like separation in logistic regression: ever wider
latent excursions with an ever steeper loading and an ever lower baseline (measured on the retina:
docs/spikes/README.md). ``latent_scale="stationary"`` (default) fixes the stationary covariance of the
latents to ``I``: ``Q = I - F F'``, parametrised smoothly by a free ``B`` as ``Q = (I + B B')^{-1}``,
``F = Q^{1/2} B`` (so ``F F' = B B' (I + B B')^{-1}`` and ``||F||_2 < 1``). Then ``c_i' c_i`` is the
stationary variance of neuron ``i``'s latent drive, and ``l2_loadings`` (a Gaussian prior on ``C``) is what
pays for sharp peaks (``l2_dynamics``, a Gaussian prior on ``B``, optionally keeps ``Q`` away from
singular). Each M-step is one of two steps, each of which does not lower the M-step's objective (so EM
still ascends the penalised ELBO): (i) a parameter-expanded step, tried first: the free closed-form
``F, Q, mu0, V0``, Newton steps on ``(c_i, d_i)`` under the penalty ``l2 c' Sigma c / 2`` with ``Sigma`` the
stationary covariance those imply, then the exact change of variables to unit stationary covariance
(:func:`whiten_latents`; ``q`` is transformed with it), taken when it does not lower the objective below its
value at the current parameters (after a refusal it is tried again every ``px_retry``-th step); (ii)
otherwise the constrained step: L-BFGS on ``B`` for the expected transition log-likelihood
``-(N/2) log|Q| - tr(Q^{-1} (S11 - F S10' - S10 F' + F S00 F')) / 2`` (:func:`transition_objective`, analytic
gradient) warm-started from the previous ``B``, and Newton steps on ``(c_i, d_i)`` with the penalty. Step (i)
is what makes EM fast when the penalty is weak (a planted model: 44 EM steps against more than 300 with
(ii) alone). ``mu0, V0`` stay fitted (closed form) so that (i) is exact. The fit starts from the Gaussian
LDS whitened the same way.

Held-out scoring (an approximate filter). Bits/spike needs ``p(y^t | y^{<t})``, as for every row of the
table. The filtered posterior ``p(s^{t-1} | y^{<t})`` is approximated by a Gaussian ``N(m_f, P_f)``;
propagated, it predicts ``s^t ~ N(m, P)`` with ``m = F m_f``, ``P = F P_f F' + Q``, so neuron ``i``'s
log-rate is ``N(c_i'm + d_i, c_i'P c_i)``. Each count is scored by its Poisson-lognormal marginal under
that prediction (adaptive Gauss-Hermite quadrature); the neurons of one bin are treated as independent
given the past (the exact predictive couples them through ``s^t``). The predicted mean count is
``exp(c_i'm + d_i + c_i'P c_i / 2)``; scoring with a Poisson of that mean (``predictive="poisson"``, as the
Gaussian LDS is scored) undercounts empty bins when the log-rate is uncertain. The filter is then updated
with the observed counts by Laplace's method: Newton's method for the mode of
``log N(s; m, P) + log p(y^t | s)`` gives ``m_f``, and ``P_f = (P^{-1} + C' diag(lambda) C)^{-1}`` there.

Derivations: docs/spikes/README.md ("The Poisson LDS").
"""

from __future__ import annotations

import logging

import numpy as np
from numba import njit
from scipy.special import gammaln, logsumexp

from v1motion.models.spikes.base import EstimatorParams, NotFittedError, single_blas_thread
from v1motion.models.spikes.data import as_counts
from v1motion.models.spikes.observations import ETA_MAX

log = logging.getLogger(__name__)

METHODS = ("variational", "laplace")
LATENT_SCALES = ("stationary", "free")
PREDICTIVES = ("lognormal", "poisson")
N_QUADRATURE = 40


def poisson_lognormal_logpmf(y, mean, var, n_points=N_QUADRATURE):
    """``log int Poisson(y; e^eta) N(eta; mean, var) d eta`` elementwise.

    Parameters
    ----------
    y, mean, var : arrays of one shape (counts, log-rate means and variances)
    n_points : int
        Gauss-Hermite points.

    Notes
    -----
    Adaptive Gauss-Hermite quadrature: the integrand ``f`` is log-concave in ``eta``, so it is centred on
    its mode ``eta*`` (1-D Newton: ``y - e^eta - (eta - mean) / var = 0``) and scaled by its curvature
    ``h = e^eta* + 1 / var``: ``int f = h^{-1/2} sum_i w_i e^{x_i^2 / 2} f(eta* + x_i / sqrt(h))``. Plain
    Gauss-Hermite around ``mean`` misses the peak of ``f`` when ``var`` is large and ``y >= 1`` (measured:
    0.3 nats off at ``y = 3, mean = -2, var = 9`` with 20 points). ``var = 0`` gives the Poisson.
    """
    y = np.asarray(y, float)
    mu = np.broadcast_to(np.asarray(mean, float), y.shape).ravel()
    v = np.broadcast_to(np.asarray(var, float), y.shape).ravel()
    yf = y.ravel()
    out = np.empty(yf.size)
    point = v < 1e-12
    eta = np.minimum(mu[point], ETA_MAX)
    out[point] = yf[point] * eta - np.exp(eta)
    idx = np.flatnonzero(~point)
    x, w = np.polynomial.hermite_e.hermegauss(n_points)
    lw = np.log(w) + 0.5 * x**2
    chunk = 1 << 16
    for i in range(0, idx.size, chunk):
        j = idx[i : i + chunk]
        yj, mj, vj = yf[j], mu[j], v[j]
        e = mj.copy()
        for _ in range(100):
            lam = np.exp(np.minimum(e, ETA_MAX))
            step = (yj - lam - (e - mj) / vj) / (lam + 1.0 / vj)
            e += np.clip(step, -2.0, 2.0)
            if np.max(np.abs(step)) < 1e-10:
                break
        h = np.exp(np.minimum(e, ETA_MAX)) + 1.0 / vj
        nodes = np.minimum(e[:, None] + x / np.sqrt(h)[:, None], ETA_MAX)
        logf = (
            yj[:, None] * nodes
            - np.exp(nodes)
            - (nodes - mj[:, None]) ** 2 / (2 * vj[:, None])
            - 0.5 * np.log(2 * np.pi * vj)[:, None]
        )
        out[j] = logsumexp(logf + lw, axis=1) - 0.5 * np.log(h)
    return out.reshape(y.shape) - gammaln(y + 1)


# ----------------------------------------------------------------------------- small dense kernels
@njit(cache=True, nogil=True)
def _chol(A, L):
    """Lower Cholesky factor of the symmetric ``A`` into ``L``; False when ``A`` is not positive definite."""
    k = A.shape[0]
    for j in range(k):
        s = A[j, j]
        for p in range(j):
            s -= L[j, p] * L[j, p]
        if not s > 0.0:
            return False
        ljj = np.sqrt(s)
        L[j, j] = ljj
        for i in range(j + 1, k):
            s = A[i, j]
            for p in range(j):
                s -= L[i, p] * L[j, p]
            L[i, j] = s / ljj
        for i in range(j):
            L[i, j] = 0.0
    return True


@njit(cache=True, nogil=True)
def _fwd(L, b, x):
    """Solve ``L x = b`` (``L`` lower triangular); ``x`` may be ``b``."""
    k = L.shape[0]
    for i in range(k):
        s = b[i]
        for p in range(i):
            s -= L[i, p] * x[p]
        x[i] = s / L[i, i]


@njit(cache=True, nogil=True)
def _bwd(L, b, x):
    """Solve ``L' x = b`` (``L`` lower triangular); ``x`` may be ``b``."""
    k = L.shape[0]
    for i in range(k - 1, -1, -1):
        s = b[i]
        for p in range(i + 1, k):
            s -= L[p, i] * x[p]
        x[i] = s / L[i, i]


@njit(cache=True, nogil=True)
def _tri_inv(L, out):
    """Inverse of the lower-triangular ``L`` (lower triangular)."""
    k = L.shape[0]
    e = np.zeros(k)
    col = np.empty(k)
    for j in range(k):
        e[:] = 0.0
        e[j] = 1.0
        _fwd(L, e, col)
        for i in range(k):
            out[i, j] = col[i]


# ----------------------------------------------------------------------------- block-tridiagonal kernels
@njit(cache=True, nogil=True)
def _spd_inverse(A, L, Linv, out):
    """``out = A^-1`` for a symmetric positive definite ``A``: ``A = L L^T``, ``A^-1 = Linv^T Linv``
    (``L`` and ``Linv`` are scratch, written)."""
    _chol(A, L)
    _tri_inv(L, Linv)
    k = A.shape[0]
    for i in range(k):
        for j in range(k):
            acc = 0.0
            for p in range(max(i, j), k):
                acc += Linv[p, i] * Linv[p, j]
            out[i, j] = acc


@njit(cache=True, nogil=True)
def _rates_and_precision(Pinv, C, d, s, lam, H):
    """At the latent ``s``: the rates ``lam_i = exp(min(c_i' s + d_i, ETA_MAX))`` and the posterior
    precision ``H = Pinv + C' diag(lam) C`` (the negative Hessian of the one-bin log-posterior)."""
    n, k = C.shape
    for i in range(n):
        e = d[i]
        for a in range(k):
            e += C[i, a] * s[a]
        lam[i] = np.exp(min(e, ETA_MAX))
    for a in range(k):
        for b in range(a + 1):
            acc = Pinv[a, b]
            for i in range(n):
                acc += C[i, a] * lam[i] * C[i, b]
            H[a, b] = acc
            H[b, a] = acc


@njit(cache=True, nogil=True)
def _bt_cholesky(D, B, L, M):
    n_trials, n_bins, k = D.shape[0], D.shape[1], D.shape[2]
    work = np.empty((k, k))
    for r in range(n_trials):
        for t in range(n_bins):
            if t == 0:
                work[:, :] = D[r, 0]
            else:
                Lp = L[r, t - 1]
                for i in range(k):  # row i of M_t solves L_{t-1} x = B_t[i]
                    _fwd(Lp, B[r, t, i], M[r, t, i])
                for i in range(k):
                    for j in range(i + 1):
                        s = D[r, t, i, j]
                        for p in range(k):
                            s -= M[r, t, i, p] * M[r, t, j, p]
                        work[i, j] = s
                        work[j, i] = s
            if not _chol(work, L[r, t]):
                return r * n_bins + t
    return -1


@njit(cache=True, nogil=True)
def _bt_solve(L, M, g, x):
    n_trials, n_bins, k = L.shape[0], L.shape[1], L.shape[2]
    rhs = np.empty(k)
    for r in range(n_trials):
        for t in range(n_bins):  # forward: L z = g (z kept in x)
            for i in range(k):
                s = g[r, t, i]
                if t > 0:
                    for p in range(k):
                        s -= M[r, t, i, p] * x[r, t - 1, p]
                rhs[i] = s
            _fwd(L[r, t], rhs, x[r, t])
        for t in range(n_bins - 1, -1, -1):  # backward: L' x = z
            for i in range(k):
                s = x[r, t, i]
                if t < n_bins - 1:
                    for p in range(k):
                        s -= M[r, t + 1, p, i] * x[r, t + 1, p]
                rhs[i] = s
            _bwd(L[r, t], rhs, x[r, t])


@njit(cache=True, nogil=True)
def _bt_inverse_blocks(L, M, S, So):
    n_trials, n_bins, k = L.shape[0], L.shape[1], L.shape[2]
    Li = np.empty((k, k))
    G = np.empty((k, k))
    for r in range(n_trials):
        for t in range(n_bins - 1, -1, -1):
            _tri_inv(L[r, t], Li)
            for i in range(k):  # S_t = Li' Li (+ G' S_{t+1} G below)
                for j in range(k):
                    s = 0.0
                    for p in range(max(i, j), k):
                        s += Li[p, i] * Li[p, j]
                    S[r, t, i, j] = s
            if t < n_bins - 1:
                for i in range(k):  # G = M_{t+1} Li
                    for j in range(k):
                        s = 0.0
                        for p in range(j, k):
                            s += M[r, t + 1, i, p] * Li[p, j]
                        G[i, j] = s
                for i in range(k):  # So_{t+1} = Cov(s^{t+1}, s^t) = -S_{t+1} G
                    for j in range(k):
                        s = 0.0
                        for p in range(k):
                            s -= S[r, t + 1, i, p] * G[p, j]
                        So[r, t + 1, i, j] = s
                for i in range(k):  # S_t -= G' So_{t+1}
                    for j in range(k):
                        s = 0.0
                        for p in range(k):
                            s += G[p, i] * So[r, t + 1, p, j]
                        S[r, t, i, j] -= s
            for i in range(k):
                for j in range(i):
                    v = 0.5 * (S[r, t, i, j] + S[r, t, j, i])
                    S[r, t, i, j] = v
                    S[r, t, j, i] = v
        So[r, 0, :, :] = 0.0


@njit(cache=True, nogil=True)
def _cd_stats(m, V, y, C, d, out_obj, out_g, out_H):
    """Per neuron: ``sum y (c'm + d) - exp(c'm + d + c'Vc/2)``, its gradient in ``(c, d)`` and its negative
    Hessian (``out_g`` (n, k+1), ``out_H`` (n, k+1, k+1)); ``out_H`` is skipped when it has no rows."""
    N, k = m.shape
    n = C.shape[0]
    want_h = out_H.shape[0] > 0
    a = np.empty(k)
    out_obj[:] = 0.0
    out_g[:, :] = 0.0
    if want_h:
        out_H[:, :, :] = 0.0
    for t in range(N):
        for i in range(n):
            lin = d[i]
            quad = 0.0
            for p in range(k):
                lin += C[i, p] * m[t, p]
                acc = 0.0
                for q in range(k):
                    acc += V[t, p, q] * C[i, q]
                a[p] = acc
                quad += C[i, p] * acc
            rho = np.exp(min(lin + 0.5 * quad, ETA_MAX))
            out_obj[i] += y[t, i] * lin - rho
            for p in range(k):
                a[p] += m[t, p]  # d(lin + quad / 2) / dc
                out_g[i, p] += y[t, i] * m[t, p] - rho * a[p]
            out_g[i, k] += y[t, i] - rho
            if want_h:
                for p in range(k):
                    rp = rho * a[p]
                    for q in range(p + 1):
                        out_H[i, p, q] += rp * a[q] + rho * V[t, p, q]
                    out_H[i, k, p] += rp
                out_H[i, k, k] += rho
    if want_h:
        for i in range(n):
            for p in range(k + 1):
                for q in range(p):
                    out_H[i, q, p] = out_H[i, p, q]


def _f64(a) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float64)


def block_tridiag_cholesky(D: np.ndarray, B: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cholesky factor of symmetric block-tridiagonal matrices, one per trial, in ``O(T k^3)``.

    Parameters
    ----------
    D : ndarray of shape (n_trials, n_bins, k, k)
        Diagonal blocks ``H[t, t]``.
    B : ndarray of shape (n_trials, n_bins, k, k)
        Sub-diagonal blocks: ``B[:, t] = H[t, t-1]`` (``B[:, 0]`` is not read).

    Returns
    -------
    L, M : ndarrays of shape (n_trials, n_bins, k, k)
        The block-bidiagonal factor ``H = G G'``: diagonal blocks ``L[:, t]`` (lower triangular) and
        sub-diagonal blocks ``M[:, t] = G[t, t-1]`` (``M[:, 0] = 0``).

    Raises
    ------
    numpy.linalg.LinAlgError
        When a matrix is not positive definite (naming the trial and bin where the factorisation failed).

    Notes
    -----
    ``L_0 L_0' = D_0``; for ``t >= 1``: ``M_t = B_t L_{t-1}^{-T}`` and ``L_t L_t' = D_t - M_t M_t'``.
    """
    D, B = _f64(D), _f64(B)
    if D.ndim != 4 or D.shape != B.shape or D.shape[2] != D.shape[3]:
        raise ValueError("D and B must both have shape (n_trials, n_bins, k, k)")
    L = np.zeros_like(D)
    M = np.zeros_like(D)
    bad = _bt_cholesky(D, B, L, M)
    if bad >= 0:
        r, t = divmod(int(bad), D.shape[1])
        raise np.linalg.LinAlgError(
            f"block-tridiagonal matrix not positive definite (trial {r}, bin {t})"
        )
    return L, M


def block_tridiag_solve(L: np.ndarray, M: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Solve ``H x = g`` per trial with the factor of :func:`block_tridiag_cholesky`.

    Parameters
    ----------
    L, M : ndarrays of shape (n_trials, n_bins, k, k)
    g : ndarray of shape (n_trials, n_bins, k)

    Returns
    -------
    x : ndarray of shape (n_trials, n_bins, k)
    """
    L, M, g = _f64(L), _f64(M), _f64(g)
    if g.shape != L.shape[:3]:
        raise ValueError(f"g must have shape {L.shape[:3]}; got {g.shape}")
    x = np.empty_like(g)
    _bt_solve(L, M, g, x)
    return x


def block_tridiag_inverse_blocks(L: np.ndarray, M: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Diagonal and first sub-diagonal blocks of ``H^{-1}``, from its factor, in ``O(T k^3)``.

    Returns
    -------
    S : ndarray of shape (n_trials, n_bins, k, k)
        ``S[:, t] = (H^{-1})[t, t]``.
    So : ndarray of shape (n_trials, n_bins, k, k)
        ``So[:, t] = (H^{-1})[t, t-1]`` (``So[:, 0] = 0``).

    Notes
    -----
    With ``H = G G'`` and ``X = H^{-1}``, ``G' X = G^{-1}`` is upper-triangular-free above the diagonal, so
    block row ``t`` gives ``X[t, t+1] = -L_t^{-T} M_{t+1}' X[t+1, t+1]`` and ``X[t, t] = L_t^{-T} L_t^{-1}
    - L_t^{-T} M_{t+1}' X[t+1, t]``: with ``G_t = M_{t+1} L_t^{-1}``, ``X[t+1, t] = -X[t+1, t+1] G_t`` and
    ``X[t, t] = L_t^{-T} L_t^{-1} + G_t' X[t+1, t+1] G_t``, backwards from ``X[T-1, T-1] = L^{-T} L^{-1}``.
    """
    L, M = _f64(L), _f64(M)
    S = np.empty_like(L)
    So = np.empty_like(L)
    _bt_inverse_blocks(L, M, S, So)
    return S, So


def block_tridiag_logdet(L: np.ndarray) -> np.ndarray:
    """``log det H`` per trial from the diagonal blocks of its factor, shape (n_trials,)."""
    return 2.0 * np.log(np.diagonal(L, axis1=2, axis2=3)).sum(axis=(1, 2))


# ----------------------------------------------------------------------------- the approximate filter
@njit(cache=True, nogil=True)
def _laplace_filter(y, F, Q, C, d, mu0, V0, max_newton, tol, eta_mean, eta_var):
    n_trials, n_bins, n = y.shape
    k = F.shape[0]
    m = np.empty(k)
    P = np.empty((k, k))
    Pf = np.empty((k, k))
    mf = np.empty(k)
    Lp = np.empty((k, k))
    Pinv = np.empty((k, k))
    H = np.empty((k, k))
    LH = np.empty((k, k))
    s = np.empty(k)
    s_new = np.empty(k)
    g = np.empty(k)
    step = np.empty(k)
    tmp = np.empty(k)
    lam = np.empty(n)
    n_capped = 0
    for r in range(n_trials):
        for t in range(n_bins):
            # predict
            if t == 0:
                m[:] = mu0
                P[:, :] = V0
            else:
                for i in range(k):
                    acc = 0.0
                    for j in range(k):
                        acc += F[i, j] * mf[j]
                    m[i] = acc
                for i in range(k):
                    for j in range(k):
                        acc = Q[i, j]
                        for a in range(k):
                            fa = F[i, a]
                            for b in range(k):
                                acc += fa * Pf[a, b] * F[j, b]
                        P[i, j] = acc
                for i in range(k):
                    for j in range(i):
                        v = 0.5 * (P[i, j] + P[j, i])
                        P[i, j] = v
                        P[j, i] = v
            for i in range(n):
                mu = d[i]
                var = 0.0
                for a in range(k):
                    mu += C[i, a] * m[a]
                    for b in range(k):
                        var += C[i, a] * P[a, b] * C[i, b]
                eta_mean[r, t, i] = mu
                eta_var[r, t, i] = var
            # update: Newton for the mode of log N(s; m, P) + sum_i y_i eta_i - exp(eta_i)
            _spd_inverse(P, Lp, LH, Pinv)
            s[:] = m
            f = 0.0
            for i in range(n):
                e = eta_mean[r, t, i]
                f += y[r, t, i] * e - np.exp(min(e, ETA_MAX))
            converged = False
            for _ in range(max_newton):
                _rates_and_precision(Pinv, C, d, s, lam, H)
                for a in range(k):
                    acc = 0.0
                    for i in range(n):
                        acc += C[i, a] * (y[r, t, i] - lam[i])
                    for b in range(k):
                        acc -= Pinv[a, b] * (s[b] - m[b])
                    g[a] = acc
                _chol(H, LH)
                _fwd(LH, g, tmp)
                _bwd(LH, tmp, step)
                dec = 0.0
                for a in range(k):
                    dec += g[a] * step[a]
                if dec < 2.0 * tol:
                    converged = True
                    break
                alpha = 1.0
                accepted = False
                for _ls in range(40):
                    for a in range(k):
                        s_new[a] = s[a] + alpha * step[a]
                    f_new = 0.0
                    for i in range(n):
                        e = d[i]
                        for a in range(k):
                            e += C[i, a] * s_new[a]
                        f_new += y[r, t, i] * e - np.exp(min(e, ETA_MAX))
                    for a in range(k):
                        tmp[a] = 0.0
                        for b in range(k):
                            tmp[a] += Pinv[a, b] * (s_new[b] - m[b])
                    for a in range(k):
                        f_new -= 0.5 * (s_new[a] - m[a]) * tmp[a]
                    if f_new >= f + 1e-4 * alpha * dec:
                        accepted = True
                        break
                    alpha *= 0.5
                if not accepted:
                    converged = True  # no ascent step left: at the mode to rounding
                    break
                s[:] = s_new
                f = f_new
            if not converged:
                n_capped += 1
            # the filtered posterior: mode, and the inverse negative Hessian there
            _rates_and_precision(Pinv, C, d, s, lam, H)
            _spd_inverse(H, LH, Lp, Pf)
            mf[:] = s
    return n_capped


def laplace_filter(y, F, Q, C, d, mu0, V0, max_newton=50, tol=1e-10):
    """One-step-ahead predictive distribution of the log-rates under the approximate (Laplace) filter.

    Parameters
    ----------
    y : ndarray of shape (n_trials, n_bins, n_neurons)
    F, Q : ndarrays of shape (k, k)
    C : ndarray of shape (n_neurons, k)
    d : ndarray of shape (n_neurons,)
    mu0 : ndarray of shape (k,)
    V0 : ndarray of shape (k, k)
    max_newton : int
        Newton iterations per update (a cap reached is logged as a warning).
    tol : float
        An update stops when half the Newton decrement ``g' H^{-1} g / 2`` is below ``tol`` (nats).

    Returns
    -------
    eta_mean, eta_var : ndarrays of shape (n_trials, n_bins, n_neurons)
        Mean ``c_i'm + d_i`` and variance ``c_i'P c_i`` of neuron ``i``'s log-rate given ``y^{<t}``; the
        predicted mean count is ``exp(eta_mean + eta_var / 2)``.
    """
    y = _f64(y)
    eta_mean = np.empty_like(y)
    eta_var = np.empty_like(y)
    capped = _laplace_filter(
        y, _f64(F), _f64(Q), _f64(C), _f64(d), _f64(mu0), _f64(V0), int(max_newton), float(tol),
        eta_mean, eta_var,
    )  # fmt: skip
    if capped:
        log.warning(
            "Poisson LDS filter: %d updates reached max_newton=%d before the Newton decrement fell "
            "below %g",
            capped,
            max_newton,
            tol,
        )
    return eta_mean, eta_var


# ----------------------------------------------------------------------------- the stationary latent scale
def stationary_dynamics(B: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``F, Q`` of the unit-stationary parametrisation: ``Q = (I + B B')^{-1}``, ``F = Q^{1/2} B``.

    Then ``F F' = B B' (I + B B')^{-1} = I - Q``: the stationary covariance of the latents is ``I`` and
    every singular value of ``F`` is below 1, for any real ``B`` (k, k).
    """
    B = np.asarray(B, float)
    k = B.shape[0]
    a, U = np.linalg.eigh(np.eye(k) + B @ B.T)
    Q = (U / a) @ U.T
    F = (U / np.sqrt(a)) @ U.T @ B
    return F, 0.5 * (Q + Q.T)


def transition_objective(B, S00, S10, S11, n_pairs):
    """Expected transition log-likelihood (nats, without ``2 pi`` terms) at ``F, Q`` of
    :func:`stationary_dynamics` and its gradient in ``B``.

    ``-(N/2) log|Q| - tr(Q^{-1} (S11 - F S10' - S10 F' + F S00 F')) / 2`` with ``N = n_pairs``,
    ``S00 = sum E[s^{t-1} s^{t-1}']``, ``S10 = sum E[s^t s^{t-1}']``, ``S11 = sum E[s^t s^t']``. With
    ``A = I + B B' = Q^{-1}``: ``Q^{-1} F = A^{1/2} B`` and ``F' Q^{-1} F = B' B``, so it equals
    ``(N/2) log|A| - tr(A S11)/2 + tr(A^{1/2} B S10') - tr(B S00 B')/2``. The gradient of
    ``tr(A^{1/2} X)`` uses the derivative of the symmetric square root in the eigenbasis of ``A``
    (``A = U diag(a) U'``: ``d A^{1/2} = U (G o (U' dA U)) U'`` with ``G_ij = 1 / (sqrt a_i + sqrt a_j)``).
    """
    B = np.asarray(B, float)
    k = B.shape[0]
    A = np.eye(k) + B @ B.T
    a, U = np.linalg.eigh(A)
    ra = np.sqrt(a)
    Ah = (U * ra) @ U.T
    Ai = (U / a) @ U.T
    X = B @ S10.T
    val = (
        0.5 * n_pairs * np.sum(np.log(a))
        - 0.5 * np.sum(A * S11)
        + np.sum(Ah * X.T)
        - 0.5 * np.sum((B @ S00) * B)
    )
    Gs = U @ ((U.T @ X.T @ U) / (ra[:, None] + ra[None, :])) @ U.T
    Gs = Gs + Gs.T  # 2 x its symmetric part: d tr(A^{1/2} X) = <dA, Gs / 2>, dA = dB B' + B dB'
    grad = n_pairs * Ai @ B - S11 @ B - B @ S00 + Ah @ S10 + Gs @ B
    return val, grad


def fit_transition_stationary(B0, S00, S10, S11, n_pairs, max_iter=100, l2=0.0):
    """The M-step for ``B``: L-BFGS (scipy) on :func:`transition_objective` minus ``l2 ||B||_F^2 / 2``,
    warm-started from ``B0``; returns ``B0`` itself when the optimiser did not improve on it (so the step
    never lowers it)."""
    from scipy.optimize import minimize

    k = B0.shape[0]
    S00, S10, S11 = (0.5 * (S00 + S00.T), S10, 0.5 * (S11 + S11.T))
    scale = 1.0 / max(n_pairs, 1)

    def f(x):
        v, g = transition_objective(x.reshape(k, k), S00, S10, S11, n_pairs)
        return (0.5 * l2 * x @ x - v) * scale, (l2 * x - g.ravel()) * scale

    f0 = f(B0.ravel())[0]
    res = minimize(f, B0.ravel(), jac=True, method="L-BFGS-B",
                   options={"maxiter": max_iter, "gtol": 1e-10, "ftol": 1e-15})  # fmt: skip
    if not (np.isfinite(res.fun) and res.fun <= f0):
        return np.array(B0, float)
    return res.x.reshape(k, k)


def whiten_latents(F, Q, C, mu0, V0, max_radius=0.999, sigma=None):
    """The same model with latents of unit stationary covariance (an exact change of variables).

    ``Sigma = F Sigma F' + Q`` (discrete Lyapunov) and ``Sigma = L L'``; the latents ``L^{-1} s`` have
    ``F' = L^{-1} F L``, ``Q' = L^{-1} Q L^{-T}``, ``C' = C L``, ``mu0' = L^{-1} mu0``,
    ``V0' = L^{-1} V0 L^{-T}``, so ``F' F'' + Q' = I``. When the spectral radius of ``F`` is not below
    ``max_radius`` (no stationary covariance), ``F`` is first scaled down to it (then not exact).
    ``sigma``: ``Sigma`` when the caller has already solved for it (``F`` then within ``max_radius``).

    Returns ``F', Q', C', mu0', V0', L``.
    """
    F = np.asarray(F, float)
    if sigma is None:
        from scipy.linalg import solve_discrete_lyapunov

        rho = np.max(np.abs(np.linalg.eigvals(F)))
        if rho >= max_radius:
            F = F * (max_radius / rho)
        sigma = solve_discrete_lyapunov(F, Q)
    Sig = sigma
    L = np.linalg.cholesky(0.5 * (Sig + Sig.T))
    Li = np.linalg.inv(L)
    Fw = Li @ F @ L
    Qw = Li @ Q @ Li.T
    V0w = Li @ V0 @ Li.T
    return Fw, 0.5 * (Qw + Qw.T), C @ L, Li @ mu0, 0.5 * (V0w + V0w.T), L


def _in_whitened_latents(means, covs, L):
    """Posterior means ``(..., k)`` and covariances ``(..., k, k)`` of latents ``s`` as those of
    ``L^{-1} s`` (:func:`whiten_latents`'s change of variables)."""
    Li = np.linalg.inv(L)
    return means @ Li.T, Li @ covs @ Li.T


def stationary_parameter(F):
    """``B`` of :func:`stationary_dynamics` for a given ``F`` with ``||F||_2 < 1``: ``B = (I - F F')^{-1/2} F``
    (singular values first clipped to ``1 - 1e-6``)."""
    U, sv, Vt = np.linalg.svd(np.asarray(F, float))
    sv = np.minimum(sv, 1 - 1e-6)
    # F = U diag(sv) V', I - F F' = U diag(1 - sv^2) U'
    return (U * (sv / np.sqrt(1 - sv**2))) @ Vt


# ----------------------------------------------------------------------------- the estimator
class PoissonLDS(EstimatorParams):
    """Poisson LDS (latent linear dynamics, Poisson counts with an exp link) fitted by variational EM.

    Parameters
    ----------
    n_latent : int, default 4
    n_iter : int, default 200
        EM iterations at most; a fit that reaches the cap logs a warning and says so (``stop_reason_``
        ``"max_iter"``).
    tol : float, default 1e-5
        Convergence: the ELBO (``method="variational"``) or the Laplace approximation of the log marginal
        likelihood (``"laplace"``) changed by less than ``tol`` nats per bin in one EM iteration (in
        absolute value: Laplace-EM is not monotone).
    init_iter : int, default 20
        EM iterations of the Gaussian LDS on square-root counts that starts the fit (it is not run to
        convergence; GaussianLDS logs its cap).
    method : {"variational", "laplace"}, default "variational"
        The E-step (see the module's docstring).
    latent_scale : {"stationary", "free"}, default "stationary"
        ``"stationary"``: the latents' stationary covariance is fixed to ``I`` (``Q = I - F F'``,
        ``F = Q^{1/2} B`` with ``Q = (I + B B')^{-1}`` for a free ``B``; ``mu0, V0`` fitted), so only the
        loadings set the scale of the log-rates. ``"free"``: ``F, Q, mu0, V0`` unconstrained (closed-form
        M-step); the latents' scale is then not identified, and on sparse neurons the fit can widen the
        latents without bound (docs/spikes/README.md).
    l2_loadings : float, default 0.0
        Precision of a Gaussian prior on every loading ``C[i, a]`` (nats per squared unit of loading; with
        ``latent_scale="stationary"`` a loading of 1 modulates a log-rate by 1 standard deviation): the
        fit maximises the ELBO minus ``l2_loadings * ||C||_F^2 / 2``, and ``loglik_`` is that penalised ELBO.
    l2_dynamics : float, default 0.0
        ``latent_scale="stationary"``: a Gaussian prior on ``B`` too, the ELBO minus
        ``l2_dynamics * ||B||_F^2 / 2 = l2_dynamics * (tr Q^{-1} - k) / 2`` (an inverse-Wishart-like term that
        keeps ``Q`` away from singular, i.e. ``||F||_2`` away from 1).
    seed : int, default 0

    Attributes
    ----------
    F_, Q_, C_, d_, mu0_, V0_ : fitted parameters.
    loglik_ : list of float
        The ELBO (or the Laplace approximation of ``log p(y)``) of the training counts in nats, per EM
        step (after that step's E-step, before its M-step).
    n_iter_ : int
        EM iterations taken.
    converged_ : bool
        Whether the change per bin fell below ``tol`` (``stop_reason_`` ``"ftol"``).
    final_change_ : float
        The last EM iteration's change of ``loglik_``, nats per bin.
    grad_norm_ : None
        EM computes no gradient.
    B_ : ndarray (k, k) or None
        ``latent_scale="stationary"``: the free parameter of ``F, Q`` (:func:`stationary_dynamics`).
    px_steps_ : int
        ``latent_scale="stationary"``: how many M-steps were the parameter-expanded step.

    Notes
    -----
    The variational E-step is partial: at most ``e_steps`` (3) ascent steps per EM iteration, warm-started
    from the previous iteration's ``q``; each raises the ELBO, and convergence is judged on the ELBO over
    whole EM iterations. The Laplace E-step runs Newton's method on the log-posterior to its mode (half the
    Newton decrement below ``newton_tol`` nats per trial, at most ``max_newton`` steps, a cap logged).
    Derivations in docs/spikes/README.md.
    """

    kind = "plds"
    newton_tol = 1e-8
    max_newton = 50
    cd_steps = 3
    e_steps = 3
    max_radius = 0.999  # latent_scale="stationary": largest |eigenvalue| of a parameter-expanded F
    px_retry = 10  # M-steps without the parameter-expanded step after it was declined
    _px_wait = 0

    def __init__(
        self,
        n_latent=4,
        n_iter=200,
        tol=1e-5,
        init_iter=20,
        method="variational",
        latent_scale="stationary",
        l2_loadings=0.0,
        l2_dynamics=0.0,
        seed=0,
    ):
        self.n_latent = n_latent
        self.method = method
        self.latent_scale = latent_scale
        self.l2_loadings = l2_loadings
        self.l2_dynamics = l2_dynamics
        self.n_iter = n_iter
        self.tol = tol
        self.init_iter = init_iter
        self.seed = seed

    # ------------------------------------------------------------------ helpers
    def _check_fitted(self):
        if not hasattr(self, "F_"):
            raise NotFittedError("this PoissonLDS is not fitted yet: call fit(counts) first")

    def _check_y(self, y):
        y = as_counts(y)
        if hasattr(self, "n_neurons_") and y.shape[-1] != self.n_neurons_:
            raise ValueError(
                f"counts have {y.shape[-1]} neurons; the model was fitted on {self.n_neurons_}"
            )
        return y

    def _params(self):
        return {
            "F": self.F_,
            "Q": self.Q_,
            "C": self.C_,
            "d": self.d_,
            "mu0": self.mu0_,
            "V0": self.V0_,
        }

    # ------------------------------------------------------------------ E-step
    @staticmethod
    def _prior_terms(p, n_bins):
        """Prior precision blocks: diagonal (n_bins, k, k), sub-diagonal (k, k), and the inverses."""
        F, Q, V0 = p["F"], p["Q"], p["V0"]
        k = F.shape[0]
        Qi = np.linalg.inv(Q)
        Qi = 0.5 * (Qi + Qi.T)
        V0i = np.linalg.inv(V0)
        V0i = 0.5 * (V0i + V0i.T)
        Dp = np.empty((n_bins, k, k))
        Dp[:] = Qi
        Dp[0] = V0i
        if n_bins > 1:
            Dp[:-1] += F.T @ Qi @ F
        return Dp, -Qi @ F, Qi, V0i

    @staticmethod
    def log_posterior(s, y, p, Qi=None, V0i=None):
        """Unnormalised log-posterior of latent paths ``s`` (n_trials, n_bins, k), per trial (nats).

        ``log p(y | s) + log p(s)`` without the terms that do not depend on ``s``.
        """
        Qi = np.linalg.inv(p["Q"]) if Qi is None else Qi
        V0i = np.linalg.inv(p["V0"]) if V0i is None else V0i
        eta = s @ p["C"].T + p["d"]
        with np.errstate(over="ignore"):
            ll = np.sum(y * eta - np.exp(eta), axis=(1, 2))
        e0 = s[:, 0] - p["mu0"]
        q = np.einsum("ri,ij,rj->r", e0, V0i, e0)
        e = s[:, 1:] - s[:, :-1] @ p["F"].T
        q = q + np.einsum("rti,ij,rtj->r", e, Qi, e)
        return ll - 0.5 * q

    @staticmethod
    def log_posterior_grad(s, y, p, Qi=None, V0i=None):
        """Gradient of :meth:`log_posterior` with respect to ``s``, shape like ``s``."""
        Qi = np.linalg.inv(p["Q"]) if Qi is None else Qi
        V0i = np.linalg.inv(p["V0"]) if V0i is None else V0i
        lam = np.exp(np.minimum(s @ p["C"].T + p["d"], ETA_MAX))
        g = (y - lam) @ p["C"]
        g[:, 0] -= (s[:, 0] - p["mu0"]) @ V0i
        e = (s[:, 1:] - s[:, :-1] @ p["F"].T) @ Qi
        g[:, 1:] -= e
        g[:, :-1] += e @ p["F"]
        return g

    @staticmethod
    def neg_hessian_blocks(s, p, Dp=None, Bp=None):
        """Blocks of the negative Hessian of :meth:`log_posterior`: diagonal (n_trials, n_bins, k, k) and
        sub-diagonal ``H[t, t-1]`` (k, k), the same for every bin and trial."""
        C = p["C"]
        n, k = C.shape
        if Dp is None:
            Dp, Bp, _, _ = PoissonLDS._prior_terms(p, s.shape[1])
        lam = np.exp(np.minimum(s @ C.T + p["d"], ETA_MAX))
        CC = (C[:, :, None] * C[:, None, :]).reshape(n, k * k)
        D = Dp + (lam.reshape(-1, n) @ CC).reshape(s.shape[0], s.shape[1], k, k)
        return D, Bp

    def _estep(self, y, p, s):
        """Laplace E-step for every trial: the MAP paths, the posterior covariance blocks, and the Laplace
        approximation of ``log p(y)`` per trial."""
        n_trials, n_bins, _ = y.shape
        k = p["F"].shape[0]
        Dp, Bp, Qi, V0i = self._prior_terms(p, n_bins)
        B = np.broadcast_to(Bp, (n_trials, n_bins, k, k))
        f = self.log_posterior(s, y, p, Qi, V0i)
        active = np.ones(n_trials, bool)
        n_newton = 0
        for _ in range(self.max_newton):
            idx = np.flatnonzero(active)
            if idx.size == 0:
                break
            n_newton += 1
            sa, ya = s[idx], y[idx]
            g = self.log_posterior_grad(sa, ya, p, Qi, V0i)
            D, _ = self.neg_hessian_blocks(sa, p, Dp, Bp)
            L, M = block_tridiag_cholesky(D, B[idx])
            step = block_tridiag_solve(L, M, g)
            dec = np.sum(g * step, axis=(1, 2))
            done = dec < 2 * self.newton_tol
            alpha = np.ones(idx.size)
            f_old = f[idx]
            f_new = np.full(idx.size, -np.inf)
            todo = ~done
            for _ls in range(40):
                if not todo.any():
                    break
                cand = sa[todo] + alpha[todo, None, None] * step[todo]
                fc = self.log_posterior(cand, ya[todo], p, Qi, V0i)
                ok = np.isfinite(fc) & (fc >= f_old[todo] + 1e-4 * alpha[todo] * dec[todo])
                t_idx = np.flatnonzero(todo)
                acc = t_idx[ok]
                s[idx[acc]] = cand[ok]
                f_new[acc] = fc[ok]
                todo[acc] = False
                alpha[t_idx[~ok]] *= 0.5
            # no ascent step left (rounding): that trial is at its mode
            done |= todo
            moved = np.isfinite(f_new)
            f[idx[moved]] = f_new[moved]
            active[idx[done]] = False
        if active.any():
            log.warning(
                "PoissonLDS E-step: %d trials reached max_newton=%d",
                int(active.sum()),
                self.max_newton,
            )
        D, _ = self.neg_hessian_blocks(s, p, Dp, Bp)
        L, M = block_tridiag_cholesky(D, B)
        S, So = block_tridiag_inverse_blocks(L, M)
        # log p(y) ~ log p(y, s*) + (T k / 2) log 2 pi - log det(H) / 2; the 2 pi terms cancel with the prior's
        loglik = (
            f
            - gammaln(y + 1).sum(axis=(1, 2))
            - 0.5 * np.linalg.slogdet(p["V0"])[1]
            - 0.5 * (n_bins - 1) * np.linalg.slogdet(p["Q"])[1]
            - 0.5 * block_tridiag_logdet(L)
        )
        return s, S, So, loglik, n_newton

    def _vstep(self, y, p, s, S=None):
        """Variational E-step: the Gaussian ``q`` over each trial's path that maximises the ELBO.

        The optimal ``q`` has precision ``Lam = J + blockdiag(C' diag(lbar^t) C)`` with the expected rates
        ``lbar = exp(C m + d + diag(C S^t C') / 2)``, and its mean maximises ``E_q[log p(y | s)] + E_q[log
        p(s)]``. Each iteration: a Newton step on the mean with ``S`` fixed (negative Hessian ``Lam``), then
        ``S`` from that same ``Lam`` (a fixed-point step); at most ``e_steps`` of them, fewer when the ELBO
        of a trial changes by less than ``tol`` per bin. Returns means, covariance blocks, the ELBO per trial and the iterations.
        """
        n_trials, n_bins, n = y.shape
        C, d = p["C"], p["d"]
        k = C.shape[1]
        Dp, Bp, Qi, V0i = self._prior_terms(p, n_bins)
        CC = (C[:, :, None] * C[:, None, :]).reshape(n, k * k)
        B = np.broadcast_to(Bp, (n_trials, n_bins, k, k))
        S = np.zeros((n_trials, n_bins, k, k)) if S is None else S.copy()
        So = np.zeros_like(S)
        logdet = np.zeros(n_trials)
        elbo = np.full(n_trials, -np.inf)
        active = np.ones(n_trials, bool)
        const = (
            -gammaln(y + 1).sum(axis=(1, 2))
            - 0.5 * np.linalg.slogdet(p["V0"])[1]
            - 0.5 * (n_bins - 1) * np.linalg.slogdet(p["Q"])[1]
            + 0.5 * n_bins * k
        )

        def half_var(Sa):
            return 0.5 * (Sa.reshape(-1, k * k) @ CC.T).reshape(Sa.shape[:2] + (n,))

        def objective(m, ya, hv):
            eta = m @ C.T + d
            with np.errstate(over="ignore"):
                ll = np.sum(ya * eta - np.exp(eta + hv), axis=(1, 2))
            e0 = m[:, 0] - p["mu0"]
            e = m[:, 1:] - m[:, :-1] @ p["F"].T
            q = np.einsum("ri,ij,rj->r", e0, V0i, e0) + np.einsum("rti,ij,rtj->r", e, Qi, e)
            return ll - 0.5 * q

        n_iter = 0
        for _ in range(self.e_steps):
            idx = np.flatnonzero(active)
            if idx.size == 0:
                break
            n_iter += 1
            ma, ya = s[idx], y[idx]
            hv = half_var(S[idx])
            lbar = np.exp(np.minimum(ma @ C.T + d + hv, ETA_MAX))
            g = (ya - lbar) @ C
            g[:, 0] -= (ma[:, 0] - p["mu0"]) @ V0i
            e = (ma[:, 1:] - ma[:, :-1] @ p["F"].T) @ Qi
            g[:, 1:] -= e
            g[:, :-1] += e @ p["F"]
            D = Dp + (lbar.reshape(-1, n) @ CC).reshape(idx.size, n_bins, k, k)
            L, M = block_tridiag_cholesky(D, B[idx])
            step = block_tridiag_solve(L, M, g)
            dec = np.sum(g * step, axis=(1, 2))
            f0 = objective(ma, ya, hv)
            alpha = np.ones(idx.size)
            todo = dec > 0
            for _ls in range(40):
                if not todo.any():
                    break
                t_idx = np.flatnonzero(todo)
                cand = ma[t_idx] + alpha[t_idx, None, None] * step[t_idx]
                fc = objective(cand, ya[t_idx], hv[t_idx])
                ok = np.isfinite(fc) & (fc >= f0[t_idx] + 1e-4 * alpha[t_idx] * dec[t_idx])
                ma[t_idx[ok]] = cand[ok]
                todo[t_idx[ok]] = False
                alpha[t_idx[~ok]] *= 0.5
            s[idx] = ma
            Sa, Soa = block_tridiag_inverse_blocks(L, M)
            S[idx], So[idx] = Sa, Soa
            logdet[idx] = -block_tridiag_logdet(L)
            # ELBO = E_q log p(y|s) + E_q log p(s) + H[q]
            hv = half_var(Sa)
            trJS = np.einsum("tab,rtba->r", Dp, Sa) + 2 * np.einsum("ab,rtab->r", Bp, Soa[:, 1:])
            new = objective(ma, ya, hv) - 0.5 * trJS + 0.5 * logdet[idx] + const[idx]
            done = np.abs(new - elbo[idx]) < self.tol * n_bins
            elbo[idx] = new
            active[idx[done]] = False
        # a partial E-step (at most e_steps ascent steps, warm-started): each step raises the ELBO, and the
        # fit's convergence test is on the ELBO over whole EM iterations
        return s, S, So, elbo, n_iter

    # ------------------------------------------------------------------ M-step
    @staticmethod
    def expected_loglik_cd(C, d, m, V, y):
        """``sum y (c'm + d) - exp(c'm + d + c'Vc/2)`` per neuron (nats), the (C, d) part of the M-step.

        ``m`` (n_bins_total, k), ``V`` (n_bins_total, k, k), ``y`` (n_bins_total, n)."""
        n, k = C.shape
        obj = np.empty(n)
        _cd_stats(_f64(m), _f64(V), _f64(y), _f64(C), _f64(d), obj, np.empty((n, k + 1)),
                  np.empty((0, k + 1, k + 1)))  # fmt: skip
        return obj

    def _update_cd(self, C, d, m, V, y, n_steps, penalty=None):
        """Newton steps on each neuron's ``(c_i, d_i)`` (a concave objective), with backtracking.

        ``m`` (n_bins_total, k), ``V`` (n_bins_total, k, k), ``y`` (n_bins_total, n); returns C, d. The
        objective is :meth:`expected_loglik_cd` minus ``c_i' P c_i / 2`` with ``P = penalty`` (k, k),
        by default ``l2_loadings * I``."""
        N, k = m.shape
        n = C.shape[0]
        m, V, y = _f64(m), _f64(V), _f64(y)
        obj, g, H = np.empty(n), np.empty((n, k + 1)), np.empty((n, k + 1, k + 1))
        obj_c, g_c, no_h = np.empty(n), np.empty((n, k + 1)), np.empty((0, k + 1, k + 1))
        C, d = _f64(C).copy(), _f64(d).copy()
        P = float(self.l2_loadings) * np.eye(k) if penalty is None else np.asarray(penalty, float)
        pen = bool(np.any(P))
        for _ in range(n_steps):
            _cd_stats(m, V, y, C, d, obj, g, H)
            if pen:  # the Gaussian prior on c_i: still concave
                obj -= 0.5 * np.sum((C @ P) * C, axis=1)
                g[:, :k] -= C @ P
                H[:, :k, :k] += P
            step = np.linalg.solve(H, g[:, :, None])[:, :, 0]
            dec = np.sum(g * step, axis=1)
            todo = dec > 2 * self.newton_tol * N
            if not todo.any():
                break
            alpha = np.ones(n)
            for _ls in range(30):
                Cc = C + (alpha * todo)[:, None] * step[:, :k]
                dc = d + alpha * todo * step[:, k]
                _cd_stats(m, V, y, Cc, dc, obj_c, g_c, no_h)
                if pen:
                    obj_c -= 0.5 * np.sum((Cc @ P) * Cc, axis=1)
                ok = todo & np.isfinite(obj_c) & (obj_c >= obj + 1e-4 * alpha * dec)
                C[ok], d[ok] = Cc[ok], dc[ok]
                todo &= ~ok
                if not todo.any():
                    break
                alpha[todo] *= 0.5
        return C, d

    @staticmethod
    def _latent_stats(s, S, So):
        S00 = np.einsum("rti,rtj->ij", s[:, :-1], s[:, :-1]) + S[:, :-1].sum(axis=(0, 1))
        S11 = np.einsum("rti,rtj->ij", s[:, 1:], s[:, 1:]) + S[:, 1:].sum(axis=(0, 1))
        S10 = np.einsum("rti,rtj->ij", s[:, 1:], s[:, :-1]) + So[:, 1:].sum(axis=(0, 1))
        return S00, S10, S11

    @staticmethod
    def _expected_log_prior(F, Q, mu0, V0, s, S, stats):
        """``E_q log p(s)`` summed over trials, without ``2 pi`` terms (nats)."""
        n_trials, n_bins, _ = s.shape
        S00, S10, S11 = stats
        Qi = np.linalg.inv(Q)
        V0i = np.linalg.inv(V0)
        e0 = s[:, 0] - mu0
        R0 = S[:, 0].sum(axis=0) + e0.T @ e0
        R = S11 - F @ S10.T - S10 @ F.T + F @ S00 @ F.T
        return (
            -0.5 * n_trials * np.linalg.slogdet(V0)[1]
            - 0.5 * np.sum(V0i * R0)
            - 0.5 * n_trials * (n_bins - 1) * np.linalg.slogdet(Q)[1]
            - 0.5 * np.sum(Qi * R)
        )

    def _free_dynamics(self, s, S, stats):
        n_trials, n_bins, k = s.shape
        S00, S10, S11 = stats
        F = np.linalg.solve(S00.T, S10.T).T
        Q = (S11 - F @ S10.T) / (n_trials * (n_bins - 1))
        Q = 0.5 * (Q + Q.T) + 1e-9 * np.eye(k)
        return (F, Q, *self._initial_state(s, S))

    @staticmethod
    def _initial_state(s, S):
        """The closed-form ``mu0, V0`` (the first bin's posterior, averaged over trials)."""
        n_trials, _, k = s.shape
        mu0 = s[:, 0].mean(axis=0)
        dm = s[:, 0] - mu0
        V0 = S[:, 0].mean(axis=0) + dm.T @ dm / n_trials
        V0 = 0.5 * (V0 + V0.T) + 1e-6 * np.eye(k)
        return mu0, V0

    def _mstep(self, p, y, s, S, So):
        n_trials, n_bins, k = s.shape
        stats = self._latent_stats(s, S, So)
        S00, S10, S11 = stats
        m2, V2, y2 = s.reshape(-1, k), S.reshape(-1, k, k), y.reshape(-1, y.shape[-1])
        if self.latent_scale == "stationary":
            # the parameter-expanded step costs a Newton pass over the data; after it is declined it is
            # tried again only every px_retry-th M-step
            px = None
            if self._px_wait <= 0:
                px = self._px_step(p, y2, s, S, stats)
                self._px_wait = 0 if px is not None else self.px_retry
            self._px_wait -= 1
            if px is not None:
                return px
            B = fit_transition_stationary(
                p["B"], S00, S10, S11, n_trials * (n_bins - 1), l2=self.l2_dynamics
            )
            F, Q = stationary_dynamics(B)
            mu0, V0 = self._initial_state(s, S)
            C, d = self._update_cd(p["C"], p["d"], m2, V2, y2, self.cd_steps)
            return {"B": B, "F": F, "Q": Q, "C": C, "d": d, "mu0": mu0, "V0": V0}
        F, Q, mu0, V0 = self._free_dynamics(s, S, stats)
        C, d = self._update_cd(p["C"], p["d"], m2, V2, y2, self.cd_steps)
        return {"F": F, "Q": Q, "C": C, "d": d, "mu0": mu0, "V0": V0}

    def _m_objective(self, q, y2, s, S, stats, penalty):
        """The M-step's objective: ``E_q log p(y, s)`` minus the loadings' penalty (without constants)."""
        k = s.shape[-1]
        m2, V2 = s.reshape(-1, k), S.reshape(-1, k, k)
        cd = self.expected_loglik_cd(q["C"], q["d"], m2, V2, y2).sum()
        cd -= 0.5 * np.sum((q["C"] @ penalty) * q["C"])
        cd -= 0.5 * self.l2_dynamics * np.sum(q["B"] ** 2)
        return cd + self._expected_log_prior(q["F"], q["Q"], q["mu0"], q["V0"], s, S, stats)

    def _px_step(self, p, y2, s, S, stats):
        """The parameter-expanded M-step of ``latent_scale="stationary"``, or None when it would lower the
        M-step's objective below its value at the current parameters (then the constrained step, L-BFGS
        for ``B``, is taken).

        Free ``F, Q, mu0, V0`` (closed form) with the stationary covariance ``Sigma`` they imply, and
        ``(C, d)`` under the penalty ``l2 c' Sigma c / 2`` (the penalty the loadings will have once the
        latents are whitened); then the exact change of variables to latents of unit stationary
        covariance (:func:`whiten_latents`). The expected complete-data objective of the expanded model
        equals that of the whitened one for the correspondingly transformed ``q`` (the Jacobian cancels
        against the entropy of ``q``), so taking it only when it does not lower the objective keeps EM
        monotone; the fit then transforms ``q`` (``"_whiten"``).
        """
        k = s.shape[-1]
        m2, V2 = s.reshape(-1, k), S.reshape(-1, k, k)
        F, Q, mu0, V0 = self._free_dynamics(s, S, stats)
        if not np.max(np.abs(np.linalg.eigvals(F))) < self.max_radius:
            return None
        from scipy.linalg import solve_discrete_lyapunov

        Sig = solve_discrete_lyapunov(F, Q)
        Sig = 0.5 * (Sig + Sig.T)
        lam = float(self.l2_loadings)
        C, d = self._update_cd(p["C"], p["d"], m2, V2, y2, self.cd_steps, penalty=lam * Sig)

        Fw, Qw, Cw, mu0w, V0w, L = whiten_latents(F, Q, C, mu0, V0, sigma=Sig)
        Bw = stationary_parameter(Fw)
        cand = {"B": Bw, "F": F, "Q": Q, "C": C, "d": d, "mu0": mu0, "V0": V0}
        new = self._m_objective(cand, y2, s, S, stats, lam * Sig)
        if not (np.isfinite(new) and new >= self._m_objective(p, y2, s, S, stats, lam * np.eye(k))):
            return None
        return {"B": Bw, "F": Fw, "Q": Qw, "C": Cw, "d": d, "mu0": mu0w,
                "V0": V0w, "_whiten": L}  # fmt: skip

    # ------------------------------------------------------------------ fit
    def _init(self, y):
        from v1motion.models.spikes.lds import GaussianLDS, kalman_covariances, kalman_means

        k = self.n_latent
        g = GaussianLDS(n_latent=k, n_iter=self.init_iter, seed=self.seed)
        # a starting point: it need not converge (its cap is logged by GaussianLDS)
        g.fit(y)
        z = np.sqrt(y)
        covs = kalman_covariances(g.F_, g.Q_, g.C_, g.r_, g.V0_, y.shape[1])
        ms = kalman_means(z, g.F_, g.C_, g.d_, g.mu0_, covs)[2]
        Ps = np.broadcast_to(covs["Ps"], (y.shape[0],) + covs["Ps"].shape)
        n = y.shape[-1]
        F, Q, mu0, V0 = g.F_, g.Q_, g.mu0_, g.V0_
        if self.latent_scale == "stationary":
            # the same Gaussian LDS with latents of unit stationary covariance; then the initial state
            # is drawn from the stationary distribution (mu0 = 0, V0 = I)
            F, Q, _, mu0, V0, Lw = whiten_latents(F, Q, g.C_, mu0, V0, self.max_radius)
            ms, Ps = _in_whitened_latents(ms, Ps, Lw)
        rate = y.reshape(-1, n).mean(axis=0)
        C0 = np.zeros((n, k))
        d0 = np.log(rate + 1e-3)
        C, d = self._update_cd(
            C0,
            d0,
            ms.reshape(-1, k),
            np.ascontiguousarray(Ps).reshape(-1, k, k),
            y.reshape(-1, n),
            20,
        )
        p = {"F": F, "Q": Q, "C": C, "d": d, "mu0": mu0, "V0": V0}
        if self.latent_scale == "stationary":
            p["B"] = stationary_parameter(F)
        return p, np.array(ms)

    def fit_bytes(self, n_bins: int, n_neurons: int) -> int:
        """About how much memory :meth:`fit` takes: most of it the Gaussian LDS it starts from
        (:func:`~v1motion.models.spikes.lds.kalman_bytes`; measured: 729 MB at 2,000 bins of 150
        neurons)."""
        from v1motion.models.spikes.lds import kalman_bytes

        return kalman_bytes(n_bins, n_neurons)

    @single_blas_thread
    def fit(self, y, u=None):
        """Fit by EM (variational or Laplace), started from a Gaussian LDS on square-root counts; returns
        ``self``.

        Parameters
        ----------
        y : array of shape (n_trials, n_bins, n_neurons) or (n_bins, n_neurons)
        u : None
            No stimulus input (accepted for the common interface).
        """
        from tqdm import tqdm

        y = as_counts(y)
        if u is not None:
            raise ValueError("PoissonLDS takes no stimulus input")
        if not self.n_latent >= 1:
            raise ValueError("n_latent must be at least 1")
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; valid: {list(METHODS)}")
        if self.latent_scale not in LATENT_SCALES:
            raise ValueError(
                f"unknown latent_scale {self.latent_scale!r}; valid: {list(LATENT_SCALES)}"
            )
        if not (self.l2_loadings >= 0 and self.l2_dynamics >= 0):
            raise ValueError("l2_loadings and l2_dynamics must be non-negative")
        if not self.n_iter >= 1 or not self.init_iter >= 1:
            raise ValueError("n_iter and init_iter must be at least 1")
        n_trials, n_bins, n = y.shape
        if n_bins < 2:
            raise ValueError("a Poisson LDS needs at least 2 bins per trial")
        self.n_neurons_ = n
        p, s = self._init(y)
        self.loglik_ = []
        self.newton_iter_ = []
        self.px_steps_ = 0
        self._px_wait = 0
        converged = False
        change = float("nan")
        n_bins_total = n_trials * n_bins
        S = None
        for _ in tqdm(range(self.n_iter), desc="Poisson LDS EM", disable=None, leave=False):
            if self.method == "variational":
                s, S, So, ll, n_newton = self._vstep(y, p, s, S)
            else:
                s, S, So, ll, n_newton = self._estep(y, p, s)
            self.newton_iter_.append(n_newton)
            total = float(ll.sum()) - 0.5 * self.l2_loadings * float(np.sum(p["C"] ** 2))
            if "B" in p:
                total -= 0.5 * self.l2_dynamics * float(np.sum(p["B"] ** 2))
            if self.loglik_:
                change = (total - self.loglik_[-1]) / n_bins_total
            self.loglik_.append(total)
            if abs(change) < self.tol:
                converged = True
                break
            p = self._mstep(p, y, s, S, So)
            Lw = p.pop("_whiten", None)
            if Lw is not None:  # the same q in the whitened latents' coordinates
                self.px_steps_ += 1
                s, S = _in_whitened_latents(s, S, Lw)
        else:
            log.warning(
                "PoissonLDS: EM hit the iteration cap n_iter=%d without reaching tol=%g "
                "(last change %.3g nats per bin)",
                self.n_iter,
                self.tol,
                change,
            )
        self.F_, self.Q_, self.C_, self.d_ = p["F"], p["Q"], p["C"], p["d"]
        self.mu0_, self.V0_ = p["mu0"], p["V0"]
        self.B_ = p.get("B")
        self.n_iter_ = len(self.loglik_)
        self.converged_ = converged
        self.stop_reason_ = "ftol" if converged else "max_iter"
        self.final_change_ = change
        self.grad_norm_ = None
        return self

    # ------------------------------------------------------------------ use
    @property
    def n_params_(self) -> int:
        self._check_fitted()
        k, n = self.n_latent, self.n_neurons_
        if self.latent_scale == "stationary":
            return k * k + n * k + n + k + k * (k + 1) // 2  # B, C, d, mu0, V0
        return k * k + k * (k + 1) // 2 + n * k + n + k + k * (k + 1) // 2

    @single_blas_thread
    def _predict(self, y):
        self._check_fitted()
        y = self._check_y(y)
        mean, var = laplace_filter(
            y, self.F_, self.Q_, self.C_, self.d_, self.mu0_, self.V0_, self.max_newton
        )
        return y, mean, var

    def predict_rate(self, y) -> np.ndarray:
        """One-step-ahead predicted mean count ``exp(c'm + d + c'Pc/2)`` of every bin, shape like ``y``."""
        _, mean, var = self._predict(y)
        return np.exp(np.minimum(mean + 0.5 * var, ETA_MAX))

    def log_likelihood(self, y, u=None, per_trial=False, predictive="lognormal"):
        """Log-likelihood (nats) of counts under the one-step-ahead predictive of the approximate filter.

        Parameters
        ----------
        predictive : {"lognormal", "poisson"}
            ``"lognormal"`` (default): each neuron's count has the Poisson-lognormal distribution
            ``int Poisson(y; e^eta) N(eta; c'm + d, c'Pc) d eta`` (adaptive 40-point Gauss-Hermite), the exact
            marginal under the filter's Gaussian prediction. ``"poisson"``: a Poisson with the same mean
            ``exp(c'm + d + c'Pc/2)``, as the Gaussian LDS is scored; it undercounts empty bins when the
            predicted log-rate is uncertain (docs/spikes/README.md).
        """
        if predictive not in PREDICTIVES:
            raise ValueError(f"unknown predictive {predictive!r}; valid: {list(PREDICTIVES)}")
        y, mean, var = self._predict(y)
        if predictive == "poisson":
            eta = np.minimum(mean + 0.5 * var, ETA_MAX)
            ll = y * eta - np.exp(eta) - gammaln(y + 1)
        else:
            ll = poisson_lognormal_logpmf(y, mean, var)
        return ll.sum(axis=(1, 2)) if per_trial else float(ll.sum())

    @single_blas_thread
    def smoothed_latents(self, y) -> np.ndarray:
        """MAP latent paths given each whole trial (the Laplace posterior means), (n_trials, n_bins, k)."""
        self._check_fitted()
        y = self._check_y(y)
        p = self._params()
        s0 = np.broadcast_to(self.mu0_, y.shape[:2] + (self.n_latent,)).copy()
        return self._estep(y, p, s0)[0]

    @single_blas_thread
    def sample(self, n_trials=1, n_bins=1000, u=None, seed=None, max_count=100):
        """Sample counts (``int64``), shape (n_trials, n_bins, n_neurons): a latent path, then Poisson
        counts.

        ``max_count`` caps a count per bin (a non-integer cap at its floor), as the other models'
        samplers do (``None``: no cap). A
        slow latent mode with a wide stationary variance drives ``exp`` of it to astronomical rates
        (a fit run to convergence on the retina sampled 3e9 counts per bin on average, up to 1e13);
        a warning says when the cap was hit.
        """
        self._check_fitted()
        if n_trials < 1 or n_bins < 1:
            raise ValueError("n_trials and n_bins must be at least 1")
        if max_count is not None and not max_count >= 1:
            raise ValueError(f"max_count must be at least 1 (or None), got {max_count}")
        rng = np.random.default_rng(self.seed if seed is None else seed)
        k = self.n_latent
        s = rng.multivariate_normal(self.mu0_, self.V0_, size=n_trials)
        Lq = np.linalg.cholesky(self.Q_ + 1e-12 * np.eye(k))
        out = np.empty((n_trials, n_bins, self.n_neurons_), dtype=np.int64)
        for t in range(n_bins):
            if t > 0:
                s = s @ self.F_.T + rng.standard_normal((n_trials, k)) @ Lq.T
            out[:, t] = rng.poisson(np.exp(np.minimum(s @ self.C_.T + self.d_, ETA_MAX)))
        if max_count is not None:
            cap = int(min(np.floor(max_count), 2**62))  # the counts are integers (int64)
            capped = int(np.sum(out > cap))
            if capped:
                log.warning(
                    "PoissonLDS sample ran away: %d bins hit the cap of %d counts", capped, cap
                )
            np.minimum(out, cap, out=out)
        return out
