"""Numba kernels of the spatio-temporal filtering paths; slow numpy twins live in
``tests/naive_stfilter.py``. Public wrappers validate and call the private ``_kernels``.

Numba caches the compiled kernels on disk (``cache=True``) beside this file, keyed by its path and
stamp; the cached code records its module by name (``v1motion.models...``).
"""

from __future__ import annotations

import numba
import numpy as np

#: Locations processed together by the sparse recurrent step (keeps a block of the state in cache).
DEFAULT_BLOCK = 1024


@numba.njit(cache=True, nogil=True)
def _masked_row_dots(A, B, rows, cols, out):
    for k in range(rows.size):
        a = A[rows[k]]
        b = B[cols[k]]
        acc = 0.0
        for m in range(a.size):
            acc += a[m] * b[m]
        out[k] = acc


def masked_row_dots(A: np.ndarray, B: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``out[k] = A[rows[k]] . B[cols[k]]``: the entries of ``A @ B.T`` on a sparse support.

    Parameters
    ----------
    A : ndarray, shape (N, M); B : ndarray, shape (N2, M)
    rows, cols : int arrays, shape (K,)

    Returns
    -------
    ndarray, shape (K,), float64
    """
    A = np.ascontiguousarray(A, dtype=np.float64)
    B = np.ascontiguousarray(B, dtype=np.float64)
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    cols = np.ascontiguousarray(cols, dtype=np.int64)
    if A.ndim != 2 or B.ndim != 2 or A.shape[1] != B.shape[1]:
        raise ValueError(f"A and B must be 2-D with equal columns, got {A.shape} and {B.shape}")
    if rows.shape != cols.shape or rows.ndim != 1:
        raise ValueError(f"rows and cols must be 1-D of one length, got {rows.shape}, {cols.shape}")
    if rows.size and (rows.min() < 0 or rows.max() >= A.shape[0]):
        raise IndexError(f"rows out of range for A with {A.shape[0]} rows")
    if cols.size and (cols.min() < 0 or cols.max() >= B.shape[0]):
        raise IndexError(f"cols out of range for B with {B.shape[0]} rows")
    out = np.empty(rows.size)
    _masked_row_dots(A, B, rows, cols, out)
    return out


@numba.njit(cache=True, nogil=True, fastmath={"contract"})
def _csr_step(indptr, indices, data, x_prev, out, block):
    # Eight non-zeros of a row at a time over a block of locations: one pass over the output row
    # per eight source rows, and contiguous 1-D slices that LLVM vectorises (measured ~8x faster
    # than one non-zero at a time).
    n, p = out.shape
    for p0 in range(0, p, block):
        p1 = min(p0 + block, p)
        m = p1 - p0
        for i in range(n):
            row = out[i, p0:p1]
            k = indptr[i]
            end = indptr[i + 1]
            while k + 8 <= end:
                v0, v1, v2, v3 = data[k], data[k + 1], data[k + 2], data[k + 3]
                v4, v5, v6, v7 = data[k + 4], data[k + 5], data[k + 6], data[k + 7]
                s0 = x_prev[indices[k], p0:p1]
                s1 = x_prev[indices[k + 1], p0:p1]
                s2 = x_prev[indices[k + 2], p0:p1]
                s3 = x_prev[indices[k + 3], p0:p1]
                s4 = x_prev[indices[k + 4], p0:p1]
                s5 = x_prev[indices[k + 5], p0:p1]
                s6 = x_prev[indices[k + 6], p0:p1]
                s7 = x_prev[indices[k + 7], p0:p1]
                for q in range(m):
                    row[q] += (v0 * s0[q] + v1 * s1[q] + v2 * s2[q] + v3 * s3[q]) + (
                        v4 * s4[q] + v5 * s5[q] + v6 * s6[q] + v7 * s7[q]
                    )
                k += 8
            while k < end:
                v = data[k]
                src = x_prev[indices[k], p0:p1]
                for q in range(m):
                    row[q] += v * src[q]
                k += 1


def csr_step(R, x_prev: np.ndarray, drive: np.ndarray, block: int = DEFAULT_BLOCK) -> np.ndarray:
    """One recurrent step in place: ``drive += R @ x_prev`` with sparse ``R``; returns ``drive``.

    Parameters
    ----------
    R : scipy.sparse.csr_matrix, shape (N, N)
    x_prev : ndarray, shape (N, P), C-contiguous, same dtype as ``drive``
        Previous state, one column per location.
    drive : ndarray, shape (N, P), C-contiguous
        ``W0 @ y^t`` on entry, the new state ``x^t`` on return.
    block : int
        Locations per cache block.
    """
    if drive.shape != x_prev.shape or drive.ndim != 2 or drive.shape[0] != R.shape[0]:
        raise ValueError(
            f"x_prev and drive must both be (N, P) with N = {R.shape[0]}, "
            f"got {x_prev.shape} and {drive.shape}"
        )
    if drive.dtype != x_prev.dtype or not (drive.flags.c_contiguous and x_prev.flags.c_contiguous):
        raise ValueError("x_prev and drive must be C-contiguous arrays of one dtype")
    if block < 1:
        raise ValueError(f"block must be positive, got {block}")
    data = np.asarray(R.data, dtype=drive.dtype)
    _csr_step(R.indptr.astype(np.int64), R.indices.astype(np.int64), data, x_prev, drive, block)
    return drive


@numba.njit(cache=True, nogil=True, fastmath={"contract"})
def _temporal_ring(ring, h, newest, out):
    # Four lags at a time over contiguous 1-D slices (the same pattern as ``_csr_step``).
    nt = ring.shape[0]
    j_count, p = out.shape
    for j in range(j_count):
        row = out[j]
        for q in range(p):
            row[q] = 0.0
        tau = 0
        while tau + 4 <= nt:
            c0, c1, c2, c3 = h[tau, j], h[tau + 1, j], h[tau + 2, j], h[tau + 3, j]
            s0 = ring[(newest - tau) % nt, j]
            s1 = ring[(newest - tau - 1) % nt, j]
            s2 = ring[(newest - tau - 2) % nt, j]
            s3 = ring[(newest - tau - 3) % nt, j]
            for q in range(p):
                row[q] += (c0 * s0[q] + c1 * s1[q]) + (c2 * s2[q] + c3 * s3[q])
            tau += 4
        while tau < nt:
            c = h[tau, j]
            src = ring[(newest - tau) % nt, j]
            for q in range(p):
                row[q] += c * src[q]
            tau += 1


def temporal_ring(ring: np.ndarray, h: np.ndarray, newest: int, out: np.ndarray) -> np.ndarray:
    """Temporal filtering from a ring buffer: ``out[j] = sum_tau h[tau, j] ring[(newest - tau) % nt, j]``.

    Parameters
    ----------
    ring : ndarray, shape (nt, J, P)
        Past spatial responses; slot ``newest`` holds the current frame's.
    h : ndarray, shape (nt, J)
        Temporal profile of each channel (lag 0 first).
    newest : int
    out : ndarray, shape (J, P), written in place and returned.
    """
    if ring.ndim != 3 or h.shape != ring.shape[:2] or out.shape != ring.shape[1:]:
        raise ValueError(
            f"need ring (nt, J, P), h (nt, J), out (J, P); got {ring.shape}, {h.shape}, {out.shape}"
        )
    if not 0 <= newest < ring.shape[0]:
        raise ValueError(f"newest must be a slot in [0, {ring.shape[0]}), got {newest}")
    _temporal_ring(ring, np.ascontiguousarray(h, dtype=ring.dtype), int(newest), out)
    return out
