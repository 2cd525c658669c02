"""Fit a sparse recurrent network to a filter bank: ``W_tau = R^tau W0`` for ``tau = 0 .. nt-1``.

The loss is the reconstruction error of the impulse responses,
``L(R, W0) = 1/2 sum_tau || R^tau W0 - F_tau ||_F^2`` with ``F_tau`` the bank at lag ``tau`` as an
``(N, D)`` matrix (``D = ly * lx``), and ``R`` restricted to a fixed support (the sparsity mask).
"""

from __future__ import annotations

import logging
import time

import numpy as np
import scipy.optimize
import scipy.sparse as sp

from v1motion.models.estimator import NotFittedError, Params
from v1motion.models.stfilter.bank import as_bank
from v1motion.models.stfilter.kernels import masked_row_dots

log = logging.getLogger(__name__)

INITS = ("lsq", "random")


def _flat(bank: np.ndarray) -> np.ndarray:
    nt, n = bank.shape[:2]
    return np.ascontiguousarray(bank.reshape(nt, n, -1))


def impulse_responses(R, W0: np.ndarray, nt: int) -> np.ndarray:
    """``[W0, R W0, ..., R^(nt-1) W0]``.

    Parameters
    ----------
    R : ndarray or scipy.sparse matrix, shape (N, N)
    W0 : ndarray, shape (N, D)
    nt : int

    Returns
    -------
    ndarray, shape (nt, N, D)
    """
    out = np.empty((nt,) + W0.shape)
    out[0] = W0
    for tau in range(1, nt):
        out[tau] = R @ out[tau - 1]
    return out


def loss_and_grad(R, W0: np.ndarray, F: np.ndarray, rows=None, cols=None):
    """Loss ``1/2 sum_tau ||R^tau W0 - F_tau||^2`` and its exact gradient (back-propagation in lag).

    Parameters
    ----------
    R : ndarray or scipy.sparse matrix, shape (N, N)
    W0 : ndarray, shape (N, D)
    F : ndarray, shape (nt, N, D)
    rows, cols : int arrays, shape (K,), optional
        The support of ``R``. If given, the gradient of ``R`` is returned only on it (shape (K,));
        otherwise the dense ``(N, N)`` gradient.

    Returns
    -------
    loss : float
    grad_R : ndarray, shape (K,) or (N, N)
    grad_W0 : ndarray, shape (N, D)

    Notes
    -----
    With ``M_tau = R^tau W0`` and ``E_tau = M_tau - F_tau``, the adjoints
    ``G_{nt-1} = E_{nt-1}``, ``G_tau = E_tau + R^T G_{tau+1}`` give
    ``dL/dW0 = G_0`` and ``dL/dR = sum_{tau>=1} G_tau M_{tau-1}^T``.
    """
    nt = F.shape[0]
    M = impulse_responses(R, W0, nt)
    E = M - F
    loss = 0.5 * float(np.vdot(E, E))
    RT = R.T
    G = np.empty_like(E)
    G[nt - 1] = E[nt - 1]
    for tau in range(nt - 2, -1, -1):
        G[tau] = E[tau] + RT @ G[tau + 1]
    n = W0.shape[0]
    # sum over tau >= 1 of G_tau M_{tau-1}^T, as one product over the stacked (N, (nt-1) D) blocks
    A = np.ascontiguousarray(G[1:].transpose(1, 0, 2).reshape(n, -1))
    B = np.ascontiguousarray(M[:-1].transpose(1, 0, 2).reshape(n, -1))
    if rows is None:
        grad_R = A @ B.T
    else:
        grad_R = masked_row_dots(A, B, rows, cols)
    return loss, grad_R, G[0].copy()


def lsq_init(F: np.ndarray, n_nonzero_per_row: int, ridge: float = 1e-6):
    """Least-squares start: ``W0 = F_0`` and ``R`` the sparse one-step predictor ``F_{tau+1} ~ R F_tau``.

    The dense ridge solution of ``min_R sum_tau ||R F_tau - F_{tau+1}||^2`` ranks, for each row, the
    columns by magnitude; the top ``n_nonzero_per_row`` form the support, and each row is re-solved
    by least squares restricted to its support.

    Returns
    -------
    R : ndarray, shape (N, N)   (zero off the support)
    W0 : ndarray, shape (N, D)
    rows, cols : int64 arrays, shape (N * n_nonzero_per_row,), the support, row-major sorted.
    """
    nt, n, _ = F.shape
    X = F[:-1].transpose(1, 0, 2).reshape(n, -1)
    Y = F[1:].transpose(1, 0, 2).reshape(n, -1)
    G = X @ X.T
    C = Y @ X.T
    lam = ridge * np.trace(G) / n
    Greg = G + lam * np.eye(n)
    R_dense = np.linalg.solve(Greg, C.T).T
    k = int(n_nonzero_per_row)
    support = np.argpartition(-np.abs(R_dense), k - 1, axis=1)[:, :k]
    support.sort(axis=1)
    R = np.zeros((n, n))
    for i in range(n):
        s = support[i]
        R[i, s] = np.linalg.solve(Greg[np.ix_(s, s)], C[i, s])
    rows = np.repeat(np.arange(n), k)
    cols = support.reshape(-1).astype(np.int64)
    return R, F[0].copy(), rows, cols


def variance_explained(F: np.ndarray, Fhat: np.ndarray):
    """Per-filter and overall variance explained of a reconstruction.

    Parameters
    ----------
    F, Fhat : ndarray, shape (nt, N, ...)
        Bank and reconstruction.

    Returns
    -------
    per_filter : ndarray, shape (N,)
        ``1 - ||F_n - Fhat_n||^2 / ||F_n - mean(F_n)||^2`` (NaN for a constant filter).
    overall : float
        ``1 - sum_n ||F_n - Fhat_n||^2 / sum_n ||F_n - mean(F_n)||^2``.
    """
    nt, n = F.shape[:2]
    a = np.moveaxis(F.reshape(nt, n, -1), 1, 0).reshape(n, -1)
    b = np.moveaxis(Fhat.reshape(nt, n, -1), 1, 0).reshape(n, -1)
    err = np.sum((a - b) ** 2, axis=1)
    var = np.sum((a - a.mean(axis=1, keepdims=True)) ** 2, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        per_filter = np.where(var > 0, 1.0 - err / np.where(var > 0, var, 1.0), np.nan)
    return per_filter, float(1.0 - err.sum() / var.sum())


class RecurrentFilterFit(Params):
    """Fit ``W_tau = R^tau W0`` to a bank of spatio-temporal filters with a sparse ``R``.

    Parameters
    ----------
    density : float, default 0.05
        Fraction of non-zero entries of ``R`` (each row gets ``round(density * N)``).
    init : {"lsq", "random"}, default "lsq"
        ``"lsq"``: sparse least-squares one-step predictor (see :func:`lsq_init`); ``"random"``:
        ``W0 = F_0`` and a random support with small random weights (a baseline).
    max_iter : int, default 300
        L-BFGS iterations of the gradient refinement (0: keep the start).
    ridge : float, default 1e-6
        Ridge of the least-squares start, relative to the mean diagonal of the Gram matrix.
    seed : int, default 0
    progress : bool, default False
        Show a tqdm progress bar over iterations.

    Attributes
    ----------
    R_ : scipy.sparse.csr_matrix, shape (N, N)
    W0_ : ndarray, shape (N, D)
    rows_, cols_ : int64 arrays, the support of ``R_``
    loss_history_ : list of float, loss after the start and at each iteration
    variance_explained_ : ndarray, shape (N,)
    variance_explained_total_ : float
    init_variance_explained_total_ : float, of the start alone
    eigenvalues_ : ndarray, shape (N,) complex, of ``R_``
    fit_seconds_ : float
    """

    def __init__(
        self,
        density: float = 0.05,
        init: str = "lsq",
        max_iter: int = 300,
        ridge: float = 1e-6,
        seed: int = 0,
        progress: bool = False,
    ):
        self.density = density
        self.init = init
        self.max_iter = max_iter
        self.ridge = ridge
        self.seed = seed
        self.progress = progress

    def _check_params(self, n: int) -> int:
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        if not 0 < self.density <= 1:
            raise ValueError(f"density must be in (0, 1], got {self.density}")
        if int(self.max_iter) != self.max_iter or self.max_iter < 0:
            raise ValueError(f"max_iter must be a non-negative integer, got {self.max_iter}")
        return max(1, int(round(self.density * n)))

    def fit(self, bank):
        """Fit to ``bank`` of shape ``(nt, N, ly, lx)`` (or ``(nt, N, D)``); returns self."""
        bank = as_bank(bank)
        if bank.shape[0] < 2:
            raise ValueError(
                f"the bank needs at least 2 lags to fit a recurrence, got {bank.shape[0]}"
            )
        self.bank_shape_ = bank.shape
        F = _flat(bank)
        nt, n, d = F.shape
        k = self._check_params(n)
        t0 = time.perf_counter()
        if self.init == "lsq":
            R0, W0, rows, cols = lsq_init(F, k, self.ridge)
        else:
            rng = np.random.default_rng(self.seed)
            cols = np.sort(np.argsort(rng.random((n, n)), axis=1)[:, :k], axis=1).reshape(-1)
            rows = np.repeat(np.arange(n), k)
            R0 = np.zeros((n, n))
            R0[rows, cols] = rng.normal(0, 0.5 / np.sqrt(k), size=rows.size)
            W0 = F[0].copy()
        rows = rows.astype(np.int64)
        cols = cols.astype(np.int64)
        r0 = R0[rows, cols]
        nr = r0.size

        def to_csr(rv):
            return sp.csr_matrix((rv, (rows, cols)), shape=(n, n))

        def fun(z):
            Rs = to_csr(z[:nr])
            loss, gR, gW = loss_and_grad(Rs, z[nr:].reshape(n, d), F, rows, cols)
            return loss, np.concatenate([gR, gW.reshape(-1)])

        z0 = np.concatenate([r0, W0.reshape(-1)])
        history = [fun(z0)[0]]
        bar = None
        if self.progress and self.max_iter:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.max_iter, desc="stfit L-BFGS", leave=False)

        def callback(intermediate_result):
            history.append(float(intermediate_result.fun))
            if bar is not None:
                bar.update(1)

        z = z0
        if self.max_iter:
            res = scipy.optimize.minimize(
                fun,
                z0,
                jac=True,
                method="L-BFGS-B",
                callback=callback,
                options={"maxiter": int(self.max_iter), "maxcor": 20, "ftol": 1e-12, "gtol": 1e-10},
            )
            z = res.x
            log.info("stfit: L-BFGS stopped after %s iterations: %s", res.nit, res.message)
        if bar is not None:
            bar.close()
        self.fit_seconds_ = time.perf_counter() - t0
        self.rows_, self.cols_ = rows, cols
        self.R_ = to_csr(z[:nr])
        self.W0_ = z[nr:].reshape(n, d).copy()
        self.loss_history_ = history
        Fhat = impulse_responses(self.R_, self.W0_, nt)
        self.variance_explained_, self.variance_explained_total_ = variance_explained(F, Fhat)
        Finit = impulse_responses(to_csr(r0), W0, nt)
        self.init_variance_explained_total_ = variance_explained(F, Finit)[1]
        self.eigenvalues_ = np.linalg.eigvals(self.R_.toarray())
        radius = float(np.abs(self.eigenvalues_).max())
        if radius >= 1.0:
            log.warning(
                "stfit: spectral radius of R is %.4f >= 1: the streaming RNN is not stable "
                "(its state grows without bound on long videos)",
                radius,
            )
        return self

    def _check_fitted(self):
        if not hasattr(self, "R_"):
            raise NotFittedError("this RecurrentFilterFit is not fitted yet: call fit(bank) first")

    def reconstruct(self) -> np.ndarray:
        """The fitted bank ``R^tau W0`` in the bank's shape ``(nt, N, ly, lx)``."""
        self._check_fitted()
        nt = self.bank_shape_[0]
        return impulse_responses(self.R_, self.W0_, nt).reshape(self.bank_shape_)
