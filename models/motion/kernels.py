"""Numba kernels of the ss-RNN. Each has a slow numpy twin of the same name in ``tests/naive.py``.

Unit layout: ``N = A * 2 * K`` units; unit ``u`` uses atom ``u // (2K)`` with sign ``+1`` if
``(u // K) % 2 == 0`` else ``-1``, and is clone ``u % K`` of its (atom, sign) group. Clones share the atom
and differ only in their bias and recurrent weights, so the likelihood term is shared and the clone with
the largest prior log-odds is the one that can win.

Arrays indexed by (atom, sign) are flat by group ``g = 2 * atom + sign = unit // K``, so the recurrent
drive indexes them by group directly and the scans over atoms read the two signs side by side.

Numba caches the compiled kernels on disk (``cache=True``) beside this file, keyed by its path and
stamp; the cached code records its module by name (``v1motion.models...``).
"""

from __future__ import annotations

import os

# Before Numba's OpenMP layer starts (at the first parallel kernel call, ``SSRNN.infer`` without an
# executor; the engine shares its chunks with its own threads instead): its threads sleep between
# calls instead of spinning, so they leave the cores to other threads. Spinning, a 640x480 step on two
# threads ran at 1.03-1.07x one thread's speed (BLAS on one thread), against 1.50-1.59x waiting
# passively (the v1motion command sets this too). Set it in the environment to choose otherwise.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
from numba import njit, prange  # noqa: E402


@njit(cache=True, nogil=True)
def _best_clones(pi, n_clones, best_pi, best_u):
    """Fill ``best_pi``, ``best_u`` ``(2 A,)`` with the best clone of every group ``2 * atom + sign``: the
    clone with the largest prior log-odds ``pi``, the first on ties.

    Written without branches, over all groups at once, so that it vectorises: for every frame patch
    that the recurrent drive reaches, recomputing all groups is cheaper than finding and updating the
    ones it reached. Four clones (the shipped model) compare in pairs; any other number clone by
    clone. Both keep the first of equal values, as a scan from clone 0 would."""
    n_groups = best_pi.shape[0]
    if n_clones == 4:
        for g in range(n_groups):
            base = 4 * g
            p0, p1, p2, p3 = pi[base], pi[base + 1], pi[base + 2], pi[base + 3]
            take1 = p1 > p0
            m01 = p1 if take1 else p0
            u01 = base + 1 if take1 else base
            take3 = p3 > p2
            m23 = p3 if take3 else p2
            u23 = base + 3 if take3 else base + 2
            take23 = m23 > m01
            best_pi[g] = m23 if take23 else m01
            best_u[g] = u23 if take23 else u01
        return
    for g in range(n_groups):
        best_pi[g] = pi[g * n_clones]
        best_u[g] = g * n_clones
    for k in range(1, n_clones):
        for g in range(n_groups):
            x = pi[g * n_clones + k]
            better = x > best_pi[g]
            best_pi[g] = x if better else best_pi[g]
            best_u[g] = g * n_clones + k if better else best_u[g]


@njit(cache=True, nogil=True, fastmath={"nnan", "nsz"})
def _max_gain(gain):
    """``max(0, max(gain))``. Gains are never NaN and max is exact in any order, so the flags that let
    this reduction vectorise cannot change the result."""
    best = 0.0
    for a in range(gain.shape[0]):
        g = gain[a]
        best = g if g > best else best
    return best


@njit(cache=True, nogil=True)
def _pursuit_patch(
    m, C, G, Gt, inv2ty2, lam, kappa, kmax, best_pi, best_u, rho, gain, in_support,
    s_atom, s_sign, s_unit, s_prior, chol, fwd, xi, out_idx, out_val, out_cnt, out_prior,
):  # fmt: skip
    """Greedy pursuit of patch ``m`` given the best clone of every (atom, sign) and its prior log-odds
    (``best_u``, ``best_pi``, both (2 A,), by group ``2 * atom + sign``); writes row ``m`` of the outputs.

    ``Gt`` is ``G.T`` stored contiguously, so the residual update runs along rows. ``in_support`` must be
    all False on entry and is left all False.

    Notes
    -----
    The ridge refit on the support is solved by Cholesky. Row ``i`` of a Cholesky factor (and of the
    forward substitution) depends only on the leading ``i + 1`` rows of the matrix, so when a unit is
    appended only its row is computed, and when units are dropped the factor is recomputed from the
    first dropped position on. Every number is computed by the same operations in the same order as a
    full refactorisation, so the result is identical, not merely close.
    """
    n_atoms = C.shape[1]
    for a in range(n_atoms):
        rho[a] = C[m, a]
    data_scale = inv2ty2 / (1.0 + lam)
    k_act = 0
    # Dropping a unit can in principle let the pursuit revisit it, so cap the number of additions.
    for _step in range(2 * kmax):
        if k_act >= kmax:
            break
        # Gains of every atom with the sign of its residual correlation; -inf where it cannot be added.
        # (Both priors are loaded and the masks combined without branches so that the loop vectorises.)
        for a in range(n_atoms):
            r = rho[a]
            p_pos = best_pi[2 * a]
            p_neg = best_pi[2 * a + 1]
            g = r * r * data_scale + (p_pos if r > 0 else p_neg) - kappa
            gain[a] = -np.inf if in_support[a] | (r == 0.0) else g
        best_gain = _max_gain(gain)
        if not best_gain > 0.0:
            break
        best_a = 0
        while gain[best_a] != best_gain:  # the first atom with the largest gain
            best_a += 1
        s = 0 if rho[best_a] > 0 else 1
        s_atom[k_act] = best_a
        s_sign[k_act] = s
        s_unit[k_act] = best_u[2 * best_a + s]
        s_prior[k_act] = best_pi[2 * best_a + s]
        in_support[best_a] = True
        k_act += 1
        # Ridge refit of the signed atom coefficients on the support; drop units whose value lost
        # its sign (their non-negative optimum is zero) and refit again.
        first = k_act - 1  # rows of the factor still to compute
        while True:
            for i in range(first, k_act):
                ai = s_atom[i]
                for j in range(i + 1):
                    t = G[ai, s_atom[j]]
                    if i == j:
                        t += lam
                    for p in range(j):
                        t -= chol[i, p] * chol[j, p]
                    if i == j:
                        chol[i, i] = np.sqrt(t)
                    else:
                        chol[i, j] = t / chol[j, j]
                t = np.float64(C[m, ai])
                for p in range(i):
                    t -= chol[i, p] * fwd[p]
                fwd[i] = t / chol[i, i]
            for i in range(k_act - 1, -1, -1):
                t = fwd[i]
                for p in range(i + 1, k_act):
                    t -= chol[p, i] * xi[p]
                xi[i] = t / chol[i, i]
            keep = 0
            first = k_act
            for i in range(k_act):
                sign = 1.0 if s_sign[i] == 0 else -1.0
                if xi[i] * sign > 0:
                    if keep != i:
                        s_atom[keep] = s_atom[i]
                        s_sign[keep] = s_sign[i]
                        s_unit[keep] = s_unit[i]
                        s_prior[keep] = s_prior[i]
                    keep += 1
                else:
                    in_support[s_atom[i]] = False
                    first = min(first, i)
            if keep == k_act:
                break
            k_act = keep
            if k_act == 0:
                break
        for a in range(n_atoms):
            rho[a] = C[m, a]
        for i in range(k_act):
            row = s_atom[i]
            x = xi[i]
            for a in range(n_atoms):
                rho[a] -= Gt[row, a] * x
    total_prior = 0.0
    for i in range(k_act):
        out_idx[m, i] = s_unit[i]
        out_val[m, i] = abs(xi[i])
        total_prior += s_prior[i]
        in_support[s_atom[i]] = False
    out_cnt[m] = k_act
    out_prior[m] = total_prior


@njit(cache=True, nogil=True)
def _pursuit_scratch(n_atoms, kmax):
    """Work buffers of ``_pursuit_patch``, allocated once per frame (or per chunk of patches)."""
    return (
        np.empty(n_atoms),  # rho
        np.empty(n_atoms),  # gain
        np.zeros(n_atoms, np.bool_),  # in_support
        np.empty(kmax, np.int64),  # s_atom
        np.empty(kmax, np.int64),  # s_sign
        np.empty(kmax, np.int64),  # s_unit
        np.empty(kmax),  # s_prior
        np.empty((kmax, kmax)),  # chol
        np.zeros(kmax),  # fwd
        np.zeros(kmax),  # xi
    )


@njit(cache=True, nogil=True)
def _infer_patches(
    m0, m1, C, G, Gt, r_ptr, r_idx, r_val, b, base_pi, base_u, prev_idx, prev_val, prev_cnt,
    n_clones, inv2ty2, lam, kappa, kmax, out_idx, out_val, out_cnt, out_prior,
):  # fmt: skip
    """Patches ``m0 <= m < m1`` of a frame, with the sparse recurrent drive; allocates its own scratch,
    so disjoint ranges can run on different threads. ``base_pi``, ``base_u``: the best clone of every
    group from the biases alone (``_frame_setup``), what a patch that nothing drives uses."""
    n_units = b.shape[0]
    n_atoms = C.shape[1]
    pi = np.empty(n_units)
    for u in range(n_units):
        pi[u] = b[u]
    best_pi = base_pi.copy()
    best_u = base_u.copy()
    rho, gain, in_support, s_atom, s_sign, s_unit, s_prior, chol, fwd, xi = _pursuit_scratch(
        n_atoms, kmax
    )
    for m in range(m0, m1):
        n_prev = prev_cnt[m]
        if n_prev:
            for i in range(n_prev):
                j = prev_idx[m, i]
                v = prev_val[m, i]
                for e in range(r_ptr[j], r_ptr[j + 1]):
                    pi[r_idx[e]] += v * r_val[e]
            _best_clones(pi, n_clones, best_pi, best_u)
        _pursuit_patch(
            m, C, G, Gt, inv2ty2, lam, kappa, kmax, best_pi, best_u, rho, gain, in_support,
            s_atom, s_sign, s_unit, s_prior, chol, fwd, xi, out_idx, out_val, out_cnt, out_prior,
        )  # fmt: skip
        if n_prev:
            # Undo this patch's drive: only the units it reached differ from the bias-only state.
            for i in range(n_prev):
                j = prev_idx[m, i]
                for e in range(r_ptr[j], r_ptr[j + 1]):
                    u = r_idx[e]
                    pi[u] = b[u]
            for g in range(best_pi.shape[0]):
                best_pi[g] = base_pi[g]
                best_u[g] = base_u[g]


@njit(cache=True, nogil=True)
def _frame_setup(G, b, n_clones, n_atoms):
    """Per-frame constants: ``G.T`` contiguous and the best clone of every group from ``b`` alone."""
    Gt = np.ascontiguousarray(G.T)
    pi = b.astype(np.float64)
    base_pi = np.empty(2 * n_atoms)
    base_u = np.empty(2 * n_atoms, np.int64)
    _best_clones(pi, n_clones, base_pi, base_u)
    return Gt, base_pi, base_u


# The serial driver is the one Python calls: an eager signature compiles it once (or loads it from the
# cache) at import and rejects wrong dtypes or layouts instead of compiling a slow variant for them.
_INFER_FRAME_SIGNATURE = (
    "void(float32[:, ::1], float64[:, ::1], int64[::1], int64[::1], float32[::1], float32[::1], "
    "int64[:, ::1], float32[:, ::1], int64[::1], int64, float64, float64, float64, int64, "
    "int64[:, ::1], float32[:, ::1], int64[::1], float64[::1])"
)


@njit(_INFER_FRAME_SIGNATURE, cache=True, nogil=True)
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
    every (atom, sign) group is computed once from ``b``; a patch that the drive reaches adds it to
    the units it reaches, recomputes the best clones (``_best_clones``, all groups: branch-free, it
    costs less than tracking which groups were reached) and restores the bias-only state after.
    """
    n_atoms = C.shape[1]
    Gt, base_pi, base_u = _frame_setup(G, b, n_clones, n_atoms)
    _infer_patches(
        0, C.shape[0], C, G, Gt, r_ptr, r_idx, r_val, b, base_pi, base_u, prev_idx, prev_val,
        prev_cnt, n_clones, inv2ty2, lam, kappa, kmax, out_idx, out_val, out_cnt, out_prior,
    )  # fmt: skip


@njit(cache=True, nogil=True, parallel=True)
def _ssrnn_infer_frame_parallel(
    C, G, r_ptr, r_idx, r_val, b, prev_idx, prev_val, prev_cnt, n_clones, inv2ty2, lam, kappa, kmax,
    out_idx, out_val, out_cnt, out_prior, starts, ends,
):  # fmt: skip
    """``_ssrnn_infer_frame`` with the patches split into chunks ``starts[c] <= m < ends[c]`` run in
    parallel (``prange``), each chunk with its own scratch. Patches are independent given the
    previous code, so the result is identical to the serial kernel's for any split and any order of
    the chunks."""
    n_atoms = C.shape[1]
    Gt, base_pi, base_u = _frame_setup(G, b, n_clones, n_atoms)
    for c in prange(starts.shape[0]):
        _infer_patches(
            starts[c], ends[c], C, G, Gt, r_ptr, r_idx, r_val, b, base_pi, base_u, prev_idx,
            prev_val, prev_cnt, n_clones, inv2ty2, lam, kappa, kmax, out_idx, out_val, out_cnt,
            out_prior,
        )  # fmt: skip


# Called from Python on each of several threads: an eager signature, as for the serial driver.
_INFER_CHUNKS_SIGNATURE = (
    "void(float32[:, ::1], float64[:, ::1], float64[:, ::1], float64[::1], int64[::1], int64[::1], "
    "int64[::1], float32[::1], float32[::1], int64[:, ::1], float32[:, ::1], int64[::1], int64, "
    "float64, float64, float64, int64, int64[:, ::1], float32[:, ::1], int64[::1], float64[::1], "
    "int64[::1], int64[::1])"
)


@njit(_INFER_CHUNKS_SIGNATURE, cache=True, nogil=True)
def _ssrnn_infer_chunks(
    C, G, Gt, base_pi, base_u, r_ptr, r_idx, r_val, b, prev_idx, prev_val, prev_cnt, n_clones,
    inv2ty2, lam, kappa, kmax, out_idx, out_val, out_cnt, out_prior, starts, ends,
):  # fmt: skip
    """The patches ``starts[c] <= m < ends[c]`` of a frame, chunk after chunk, on the calling thread
    with the interpreter's lock released: the share of ``_ssrnn_infer_frame``'s work one of several
    Python threads does, for threads the caller places itself (``SSRNN.infer`` with an
    ``executor``). ``Gt``, ``base_pi``, ``base_u``: ``_frame_setup``, computed once per frame.
    Patches are independent given the previous code, so any split gives the serial kernel's code."""
    for c in range(starts.shape[0]):
        _infer_patches(
            starts[c], ends[c], C, G, Gt, r_ptr, r_idx, r_val, b, base_pi, base_u, prev_idx,
            prev_val, prev_cnt, n_clones, inv2ty2, lam, kappa, kmax, out_idx, out_val, out_cnt,
            out_prior,
        )  # fmt: skip


@njit(cache=True, nogil=True)
def _ssrnn_infer_frame_dense(
    C, G, PI, n_clones, inv2ty2, lam, kappa, kmax, out_idx, out_val, out_cnt, out_prior
):
    """The same inference given the prior log-odds of every patch ``PI`` (M, N), e.g. ``b + Z R^T``
    computed densely with BLAS: the baseline the sparse drive is measured against."""
    n_atoms = C.shape[1]
    Gt = np.ascontiguousarray(G.T)
    best_pi = np.empty(2 * n_atoms)
    best_u = np.empty(2 * n_atoms, np.int64)
    rho, gain, in_support, s_atom, s_sign, s_unit, s_prior, chol, fwd, xi = _pursuit_scratch(
        n_atoms, kmax
    )
    for m in range(C.shape[0]):
        _best_clones(PI[m], n_clones, best_pi, best_u)
        _pursuit_patch(
            m, C, G, Gt, inv2ty2, lam, kappa, kmax, best_pi, best_u, rho, gain, in_support,
            s_atom, s_sign, s_unit, s_prior, chol, fwd, xi, out_idx, out_val, out_cnt, out_prior,
        )  # fmt: skip


@njit(cache=True, nogil=True)
def _scaled_patches(frame, scale, p, out):
    """The non-overlapping ``p x p`` patches of ``frame`` times ``scale`` (float32 products), row-major
    over the patch grid (``frame.shape[1] // p`` columns), each flattened row-major into a row of ``out``
    ``(rows * cols, p * p)``; ``out`` may hold fewer rows than the frame has, as the engine's levels do."""
    cols = frame.shape[1] // p
    for k in range(out.shape[0]):
        i, j = k // cols, k % cols
        for r in range(p):
            for c in range(p):
                out[k, r * p + c] = frame[i * p + r, j * p + c] * scale


@njit(cache=True, nogil=True, fastmath=True)
def _image_change(grey, prev, older, p, out):
    """Per ``p x p`` patch of the grey frame ``grey`` (float32), how it changed: ``out[0]`` the mean
    absolute difference from ``prev`` (the frame before), ``out[1]`` the mean squared difference from
    ``prev`` and ``out[2]`` from ``older`` (the frame before that); ``out`` is ``(3, rows, cols)`` over
    the frame's first ``rows x cols`` patches. Sums a row of patches at a time, pixel row by pixel
    row, so that the loop over a row's pixels vectorises."""
    rows, cols = out.shape[1], out.shape[2]
    w = cols * p
    ra = np.empty(w, np.float32)
    r1 = np.empty(w, np.float32)
    r2 = np.empty(w, np.float32)
    inv = np.float32(1.0 / (p * p))
    for i in range(rows):
        ra[:] = 0.0
        r1[:] = 0.0
        r2[:] = 0.0
        for y in range(i * p, i * p + p):
            g, b1, b2 = grey[y], prev[y], older[y]
            for x in range(w):
                d1 = g[x] - b1[x]
                d2 = g[x] - b2[x]
                ra[x] += abs(d1)
                r1[x] += d1 * d1
                r2[x] += d2 * d2
        for j in range(cols):
            a = np.float32(0.0)
            s1 = np.float32(0.0)
            s2 = np.float32(0.0)
            for x in range(j * p, j * p + p):
                a += ra[x]
                s1 += r1[x]
                s2 += r2[x]
            out[0, i, j] = a * inv
            out[1, i, j] = s1 * inv
            out[2, i, j] = s2 * inv


@njit(cache=True, nogil=True, inline="always")
def _patch_change(prev_idx, prev_val, prev_cnt, idx, val, cnt, m):
    """``_code_change`` of patch ``m``."""
    total = 0.0
    diff = 0.0
    for a in range(cnt[m]):
        v = val[m, a]
        total += v
        match = 0.0
        for b in range(prev_cnt[m]):
            if prev_idx[m, b] == idx[m, a]:
                match = prev_val[m, b]
                break
        diff += abs(v - match)
    for b in range(prev_cnt[m]):
        v = prev_val[m, b]
        total += v
        found = False
        for a in range(cnt[m]):
            if idx[m, a] == prev_idx[m, b]:
                found = True
                break
        if not found:
            diff += v
    return diff / total if total > 0.0 else 0.0


@njit(cache=True, nogil=True)
def _code_change(prev_idx, prev_val, prev_cnt, idx, val, cnt, out):
    """Per patch, how much its code changed since the previous frame: the L1 distance between the two
    sparse codes over the sum of their L1 norms, in [0, 1] (0: the same units with the same values,
    or no activity at all; 1: no unit in common). ``out`` is ``(M,)`` float32."""
    for m in range(idx.shape[0]):
        out[m] = _patch_change(prev_idx, prev_val, prev_cnt, idx, val, cnt, m)


@njit(cache=True, nogil=True)
def _code_change_where(prev_idx, prev_val, prev_cnt, idx, val, cnt, where, out):
    """``_code_change`` of the patches where ``where`` (``(M,)``) is above 0; the others read 1 (all
    changed), so that a smallest change over several comparisons is not moved by them."""
    for m in range(idx.shape[0]):
        if where[m] > 0.0:
            out[m] = _patch_change(prev_idx, prev_val, prev_cnt, idx, val, cnt, m)
        else:
            out[m] = 1.0


@njit(cache=True, nogil=True)
def _axis_cell_sums(idx, val, cnt, axis_re, axis_im, gw, f, out):
    """Per cell of ``f x f`` patches, its units' motion axes summed with their activity: ``out[i, j] =
    (sum_u z_u cos 2a_u, sum_u z_u sin 2a_u, sum_u z_u)`` over the active units ``u`` (values ``z_u``)
    of the patches ``(i f + r, j f + c)``, ``0 <= r, c < f``, of a grid ``gw`` patches wide, where
    ``(axis_re[u], axis_im[u])`` is unit ``u``'s axis of motion as a doubled-angle vector (length: how
    selective the unit is for it). ``out`` is ``(rows, cols, 3)`` float32; the grid must hold
    ``rows * f`` rows and ``cols * f`` columns of patches (the rest are left out)."""
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            re = 0.0
            im = 0.0
            total = 0.0
            for r in range(f):
                for c in range(f):
                    m = (i * f + r) * gw + j * f + c
                    for a in range(cnt[m]):
                        u = idx[m, a]
                        v = val[m, a]
                        re += v * axis_re[u]
                        im += v * axis_im[u]
                        total += v
            out[i, j, 0] = re
            out[i, j, 1] = im
            out[i, j, 2] = total
