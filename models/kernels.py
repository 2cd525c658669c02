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
def _cholesky_solve(m, rhs, k, work, x):
    """Solve ``m[:k, :k] x = rhs[:k]`` for SPD ``m``; ``work`` holds the factor, ``x`` the solution."""
    for i in range(k):
        for j in range(i + 1):
            s = m[i, j]
            for p in range(j):
                s -= work[i, p] * work[j, p]
            if i == j:
                work[i, i] = np.sqrt(s)
            else:
                work[i, j] = s / work[j, j]
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


@njit(cache=True, nogil=True)
def _best_clone(pi, a, s, n_clones):
    """The clone of (atom a, sign s) with the largest prior log-odds (the first one on ties)."""
    base = (2 * a + s) * n_clones
    bu = base
    bp = pi[base]
    for k in range(1, n_clones):
        if pi[base + k] > bp:
            bp = pi[base + k]
            bu = base + k
    return bp, bu


@njit(cache=True, nogil=True)
def _best_clones(pi, n_clones, best_pi, best_u):
    for a in range(best_pi.shape[0]):
        for s in range(2):
            best_pi[a, s], best_u[a, s] = _best_clone(pi, a, s, n_clones)


@njit(cache=True, nogil=True)
def _pursuit_patch(
    m, C, G, inv2ty2, lam, kappa, kmax, best_pi, best_u, rho, in_support,
    s_atom, s_sign, s_unit, s_prior, gmat, rhs, work, xi, xs, out_idx, out_val, out_cnt, out_prior,
):  # fmt: skip
    """Greedy pursuit of patch ``m`` given the best clone of every (atom, sign) and its prior log-odds
    (``best_u``, ``best_pi``, both (A, 2)); writes row ``m`` of the outputs."""
    n_atoms = C.shape[1]
    for a in range(n_atoms):
        rho[a] = C[m, a]
        in_support[a] = False
    data_scale = inv2ty2 / (1.0 + lam)
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
            _cholesky_solve(gmat, rhs, k_act, work, xs)
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


@njit(cache=True, nogil=True)
def _pursuit_scratch(n_atoms, kmax):
    """Work buffers of ``_pursuit_patch``, allocated once per frame by each driver."""
    return (
        np.empty((n_atoms, 2)),  # best_pi
        np.empty((n_atoms, 2), np.int64),  # best_u
        np.empty(n_atoms),  # rho
        np.zeros(n_atoms, np.bool_),  # in_support
        np.empty(kmax, np.int64),  # s_atom
        np.empty(kmax, np.int64),  # s_sign
        np.empty(kmax, np.int64),  # s_unit
        np.empty(kmax),  # s_prior
        np.empty((kmax, kmax)),  # gmat
        np.empty(kmax),  # rhs
        np.empty((kmax, kmax)),  # work
        np.zeros(kmax),  # xi
        np.zeros(kmax),  # xs
    )


@njit(cache=True, nogil=True)
def _ssrnn_infer_frame(
    C, G, r_ptr, r_idx, r_val, b, prev_idx, prev_val, prev_cnt, n_clones, inv2ty2, lam, kappa, kmax,
    out_idx, out_val, out_cnt, out_prior,
):  # fmt: skip
    """Greedy MAP inference of one frame for all patches, with the sparse recurrent drive.

    Parameters
    ----------
    C : (M, A) float32, correlations of the unit-norm atoms with each whitened patch.
    G : (A, A) float, Gram matrix of the atoms.
    r_ptr, r_idx, r_val : R^T in CSR form: row ``j`` lists the units ``u`` that unit ``j`` drives at the
        next frame and the weights ``R[u, j]``.
    b : (N,) float32 biases.
    prev_idx, prev_val, prev_cnt : the sparse code at t-1 (units, values, counts per patch).
    out_idx, out_val, out_cnt : the sparse code at t (written).
    out_prior : (M,) float64, the summed prior log-odds of the chosen units.

    Notes
    -----
    Only the units that the active units of t-1 project to change their prior, so the best clone of
    every (atom, sign) group is computed once from ``b`` and updated for the touched groups alone.
    """
    m_patches, n_atoms = C.shape
    n_units = b.shape[0]
    pi = np.empty(n_units)
    for u in range(n_units):
        pi[u] = b[u]
    base_pi = np.empty((n_atoms, 2))
    base_u = np.empty((n_atoms, 2), np.int64)
    _best_clones(pi, n_clones, base_pi, base_u)
    touched = np.empty(n_units, np.int64)
    group_dirty = np.zeros(2 * n_atoms, np.bool_)
    (best_pi, best_u, rho, in_support, s_atom, s_sign, s_unit, s_prior, gmat, rhs, work, xi,
     xs) = _pursuit_scratch(n_atoms, kmax)  # fmt: skip
    for m in range(m_patches):
        best_pi[:, :] = base_pi
        best_u[:, :] = base_u
        n_touched = 0
        for i in range(prev_cnt[m]):
            j = prev_idx[m, i]
            v = prev_val[m, i]
            for e in range(r_ptr[j], r_ptr[j + 1]):
                u = r_idx[e]
                g = u // n_clones
                if not group_dirty[g]:
                    group_dirty[g] = True
                    touched[n_touched] = g
                    n_touched += 1
                pi[u] += v * r_val[e]
        for t in range(n_touched):
            g = touched[t]
            a, s = g // 2, g % 2
            best_pi[a, s], best_u[a, s] = _best_clone(pi, a, s, n_clones)
        _pursuit_patch(
            m, C, G, inv2ty2, lam, kappa, kmax, best_pi, best_u, rho, in_support,
            s_atom, s_sign, s_unit, s_prior, gmat, rhs, work, xi, xs, out_idx, out_val, out_cnt,
            out_prior,
        )  # fmt: skip
        for t in range(n_touched):
            g = touched[t]
            group_dirty[g] = False
            for u in range(g * n_clones, (g + 1) * n_clones):
                pi[u] = b[u]


@njit(cache=True, nogil=True)
def _ssrnn_infer_frame_dense(
    C, G, PI, n_clones, inv2ty2, lam, kappa, kmax, out_idx, out_val, out_cnt, out_prior
):
    """The same inference given the prior log-odds of every patch ``PI`` (M, N), e.g. ``b + Z R^T``
    computed densely with BLAS: the baseline the sparse drive is measured against."""
    m_patches, n_atoms = C.shape
    (best_pi, best_u, rho, in_support, s_atom, s_sign, s_unit, s_prior, gmat, rhs, work, xi,
     xs) = _pursuit_scratch(n_atoms, kmax)  # fmt: skip
    for m in range(m_patches):
        _best_clones(PI[m], n_clones, best_pi, best_u)
        _pursuit_patch(
            m, C, G, inv2ty2, lam, kappa, kmax, best_pi, best_u, rho, in_support,
            s_atom, s_sign, s_unit, s_prior, gmat, rhs, work, xi, xs, out_idx, out_val, out_cnt,
            out_prior,
        )  # fmt: skip
