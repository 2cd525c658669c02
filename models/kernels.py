"""Numba kernels of the ss-RNN. Each has a slow numpy twin of the same name in ``tests/naive.py``.

Unit layout: ``N = A * 2 * K`` units; unit ``u`` uses atom ``u // (2K)`` with sign ``+1`` if
``(u // K) % 2 == 0`` else ``-1``, and is clone ``u % K`` of its (atom, sign) group. Clones share the atom
and differ only in their bias and recurrent weights, so the likelihood term is shared and the clone with
the largest prior log-odds is the one that can win.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def _cholesky_solve(m, rhs, k, work):
    """Solve ``m[:k, :k] x = rhs[:k]`` for SPD ``m`` in place of ``work``; returns x in a new array."""
    for i in range(k):
        for j in range(i + 1):
            s = m[i, j]
            for p in range(j):
                s -= work[i, p] * work[j, p]
            if i == j:
                work[i, i] = np.sqrt(s)
            else:
                work[i, j] = s / work[j, j]
    x = np.empty(k)
    for i in range(k):
        s = rhs[i]
        for p in range(i):
            s -= work[i, p] * x[p]
        x[i] = s / work[i, i]
    for i in range(k - 1, -1, -1):
        s = x[i]
        for p in range(i + 1, k):
            s -= work[p, i] * x[p]
        x[i] = s / work[i, i]
    return x


@njit(cache=True, nogil=True)
def _ssrnn_infer_frame(
    C, G, RT, b, prev_idx, prev_val, prev_cnt, n_clones, inv2ty2, lam, kappa, kmax,
    out_idx, out_val, out_cnt, out_prior,
):  # fmt: skip
    """Greedy MAP inference of one frame for all patches.

    Parameters
    ----------
    C : (M, A) float32, correlations of the unit-norm atoms with each whitened patch.
    G : (A, A) float, Gram matrix of the atoms.
    RT : (N, N) float32, transposed recurrent weights: ``RT[j, u] = R[u, j]``.
    b : (N,) float32 biases.
    prev_idx, prev_val, prev_cnt : the sparse code at t-1 (units, values, counts per patch).
    out_idx, out_val, out_cnt : the sparse code at t (written).
    out_prior : (M,) float64, the prior log-odds sum of the chosen units (for the objective).
    """
    m_patches, n_atoms = C.shape
    n_units = b.shape[0]
    two_k = 2 * n_clones
    pi = np.empty(n_units)
    best_pi = np.empty((n_atoms, 2))
    best_u = np.empty((n_atoms, 2), np.int64)
    rho = np.empty(n_atoms)
    in_support = np.zeros(n_atoms, np.bool_)
    s_atom = np.empty(kmax, np.int64)
    s_sign = np.empty(kmax, np.int64)
    s_unit = np.empty(kmax, np.int64)
    s_prior = np.empty(kmax)
    gmat = np.empty((kmax, kmax))
    rhs = np.empty(kmax)
    work = np.empty((kmax, kmax))
    xi = np.zeros(kmax)
    data_scale = inv2ty2 / (1.0 + lam)
    for m in range(m_patches):
        # Prior log-odds: bias plus the recurrent drive of the units active at t-1 (sparse columns of R).
        for u in range(n_units):
            pi[u] = b[u]
        for i in range(prev_cnt[m]):
            j = prev_idx[m, i]
            v = prev_val[m, i]
            for u in range(n_units):
                pi[u] += v * RT[j, u]
        for a in range(n_atoms):
            for s in range(2):
                base = a * two_k + s * n_clones
                bu = base
                bp = pi[base]
                for k in range(1, n_clones):
                    if pi[base + k] > bp:
                        bp = pi[base + k]
                        bu = base + k
                best_pi[a, s] = bp
                best_u[a, s] = bu
            rho[a] = C[m, a]
            in_support[a] = False
        k_act = 0
        # Dropping a unit can in principle let the pursuit revisit it, so cap the number of additions.
        for _step in range(2 * kmax):
            if k_act >= kmax:
                break
            best_gain = 0.0
            best_a = -1
            for a in range(n_atoms):
                if in_support[a]:
                    continue
                r = rho[a]
                if r == 0.0:
                    continue
                s = 0 if r > 0 else 1
                gain = r * r * data_scale + best_pi[a, s] - kappa
                if gain > best_gain:
                    best_gain = gain
                    best_a = a
            if best_a < 0:
                break
            s = 0 if rho[best_a] > 0 else 1
            s_atom[k_act] = best_a
            s_sign[k_act] = s
            s_unit[k_act] = best_u[best_a, s]
            s_prior[k_act] = best_pi[best_a, s]
            in_support[best_a] = True
            k_act += 1
            # Ridge refit of the signed atom coefficients on the support; drop units whose value lost
            # its sign (their non-negative optimum is zero) and refit again.
            while True:
                for i in range(k_act):
                    rhs[i] = C[m, s_atom[i]]
                    for j in range(k_act):
                        gmat[i, j] = G[s_atom[i], s_atom[j]]
                    gmat[i, i] += lam
                xs = _cholesky_solve(gmat, rhs, k_act, work)
                keep = 0
                for i in range(k_act):
                    sign = 1.0 if s_sign[i] == 0 else -1.0
                    if xs[i] * sign > 0:
                        s_atom[keep] = s_atom[i]
                        s_sign[keep] = s_sign[i]
                        s_unit[keep] = s_unit[i]
                        s_prior[keep] = s_prior[i]
                        xi[keep] = xs[i]
                        keep += 1
                    else:
                        in_support[s_atom[i]] = False
                if keep == k_act:
                    break
                k_act = keep
                if k_act == 0:
                    break
            for a in range(n_atoms):
                r = C[m, a]
                for i in range(k_act):
                    r -= G[a, s_atom[i]] * xi[i]
                rho[a] = r
        total_prior = 0.0
        for i in range(k_act):
            out_idx[m, i] = s_unit[i]
            out_val[m, i] = abs(xi[i])
            total_prior += s_prior[i]
        out_cnt[m] = k_act
        out_prior[m] = total_prior
