"""Numba kernels of the linear recurrent language model.

Each kernel has a slow numpy twin of the same name in ``tests/naive_language.py``.
Kernels take every tunable as an argument and release the GIL (``nogil``) so the service can call
them from worker threads.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def _diag_scan_forward(x, r, h0, out):
    T, B, H = x.shape
    for b in range(B):
        for j in range(H):
            out[0, b, j] = r[j] * h0[b, j] + x[0, b, j]
        for t in range(1, T):
            for j in range(H):
                out[t, b, j] = r[j] * out[t - 1, b, j] + x[t, b, j]


@njit(cache=True, nogil=True)
def _diag_scan_backward(dh, r, h, h0, dx, dr):
    T, B, H = dh.shape
    delta = np.zeros(H, dtype=dh.dtype)
    for b in range(B):
        for j in range(H):
            delta[j] = 0.0
        for t in range(T - 1, -1, -1):
            for j in range(H):
                d = dh[t, b, j] + r[j] * delta[j]
                delta[j] = d
                dx[t, b, j] = d
                prev = h[t - 1, b, j] if t > 0 else h0[b, j]
                dr[j] += d * prev


@njit(cache=True, nogil=True)
def _scatter_add_rows(target, rows, values):
    for i in range(rows.shape[0]):
        k = rows[i]
        for j in range(values.shape[1]):
            target[k, j] += values[i, j]


def _check_scan(x: np.ndarray, r: np.ndarray, h0: np.ndarray) -> None:
    if x.ndim != 3:
        raise ValueError(f"x must have shape (T, B, H), got {x.shape}")
    T, B, H = x.shape
    if r.shape != (H,) or h0.shape != (B, H):
        raise ValueError(f"r must be ({H},) and h0 ({B}, {H}); got {r.shape} and {h0.shape}")


def diag_scan_forward(x: np.ndarray, r: np.ndarray, h0: np.ndarray) -> np.ndarray:
    """Run ``h_t = r * h_{t-1} + x_t`` for every stream.

    Parameters
    ----------
    x : (T, B, H) inputs (embeddings of the words read at each step)
    r : (H,) diagonal of the recurrence matrix
    h0 : (B, H) state before the first step

    Returns
    -------
    h : (T, B, H) states after each step, same dtype as ``x``
    """
    x = np.ascontiguousarray(x)
    r = np.ascontiguousarray(r, dtype=x.dtype)
    h0 = np.ascontiguousarray(h0, dtype=x.dtype)
    _check_scan(x, r, h0)
    out = np.empty_like(x)
    _diag_scan_forward(x, r, h0, out)
    return out


def diag_scan_backward(
    dh: np.ndarray, r: np.ndarray, h: np.ndarray, h0: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Back-propagate through :func:`diag_scan_forward` (truncated at ``h0``).

    Parameters
    ----------
    dh : (T, B, H) gradient of the loss with respect to each state from outside the recurrence
    r : (H,) diagonal recurrence
    h : (T, B, H) forward states
    h0 : (B, H) state before the first step (treated as a constant)

    Returns
    -------
    dx : (T, B, H) gradient with respect to the inputs
    dr : (H,) gradient with respect to ``r``
    """
    dh = np.ascontiguousarray(dh)
    r = np.ascontiguousarray(r, dtype=dh.dtype)
    h = np.ascontiguousarray(h, dtype=dh.dtype)
    h0 = np.ascontiguousarray(h0, dtype=dh.dtype)
    _check_scan(dh, r, h0)
    if h.shape != dh.shape:
        raise ValueError(f"h must have the shape of dh {dh.shape}, got {h.shape}")
    dx = np.empty_like(dh)
    dr = np.zeros_like(r)
    _diag_scan_backward(dh, r, h, h0, dx, dr)
    return dx, dr


def scatter_add_rows(target: np.ndarray, rows: np.ndarray, values: np.ndarray) -> None:
    """In place ``target[rows[i]] += values[i]`` for every i, repeated rows accumulating.

    Parameters
    ----------
    target : (V, H) C-contiguous array, modified in place
    rows : (n,) integer row indices into ``target``
    values : (n, H)
    """
    if not target.flags.c_contiguous:
        raise ValueError("target must be C-contiguous (it is updated in place)")
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    values = np.ascontiguousarray(values, dtype=target.dtype)
    if values.ndim != 2 or values.shape != (rows.shape[0], target.shape[1]):
        raise ValueError(f"values must have shape ({rows.shape[0]}, {target.shape[1]})")
    if rows.size and (rows.min() < 0 or rows.max() >= target.shape[0]):
        raise IndexError(f"row index out of range [0, {target.shape[0]})")
    _scatter_add_rows(target, rows, values)


@njit(cache=True, nogil=True, fastmath=True)
def _adam_update(p, g, m, v, step_size, beta1, beta2, eps, tiny):
    b1 = p.dtype.type(beta1)
    b2 = p.dtype.type(beta2)
    c1 = p.dtype.type(1.0 - beta1)
    c2 = p.dtype.type(1.0 - beta2)
    a = p.dtype.type(step_size)
    e = p.dtype.type(eps)
    t = p.dtype.type(tiny)
    zero = p.dtype.type(0.0)
    for i in range(p.size):
        gi = g[i]
        mi = b1 * m[i] + c1 * gi
        vi = b2 * v[i] + c2 * gi * gi
        mi = mi if abs(mi) >= t else zero
        vi = vi if vi >= t else zero
        m[i] = mi
        v[i] = vi
        p[i] -= a * mi / (np.sqrt(vi) + e)


def adam_update(
    p: np.ndarray,
    g: np.ndarray,
    m: np.ndarray,
    v: np.ndarray,
    step_size: float,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    tiny: float = 1e-30,
) -> None:
    """One fused in-place Adam step ``p -= step_size * m / (sqrt(v) + eps)``.

    Moments below ``tiny`` are flushed to zero: the moments of rarely seen words decay
    geometrically and would otherwise pass through float32 subnormals, which are ~100x slower.

    Parameters
    ----------
    p, m, v : C-contiguous arrays of one shape (parameters and both moments), updated in place
    g : gradient, same shape
    step_size : learning rate with the bias corrections folded in
    """
    for name, a in (("p", p), ("m", m), ("v", v)):
        if not a.flags.c_contiguous or a.shape != p.shape:
            raise ValueError(f"{name} must be C-contiguous with shape {p.shape}")
    g = np.ascontiguousarray(g, dtype=p.dtype)
    if g.shape != p.shape:
        raise ValueError(f"g must have shape {p.shape}, got {g.shape}")
    _adam_update(
        p.reshape(-1),
        g.reshape(-1),
        m.reshape(-1),
        v.reshape(-1),
        step_size,
        beta1,
        beta2,
        eps,
        tiny,
    )
