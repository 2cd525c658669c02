"""Numba kernels of the linear recurrent language model.

Each kernel has a slow numpy twin of the same name in ``tests/naive_language.py``.
Kernels take every tunable as an argument and release the GIL (``nogil``) so the service can call
them from worker threads.

Numba caches the compiled kernels on disk (``cache=True``) beside this file, keyed by its path and
stamp; the cached code records its module by name (``v1motion.models...``).
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


# ----------------------------------------------------------------------------------------------
# Class-factorised (frequency-binned) softmax
# ----------------------------------------------------------------------------------------------


class WordClasses:
    """A partition of the vocabulary into classes of contiguous frequency rank.

    ``P(w | h) = P(class(w) | h) P(w | class(w), h)``: a ``C``-way softmax over classes times a
    softmax over the members of the word's class. Frequent words share small classes, rare words
    large ones, so scoring a running-text token touches ``C`` plus a few hundred columns instead
    of ``V``.

    Parameters
    ----------
    word_class : (V,) int class of each word id, every class in ``[0, C)`` non-empty

    Attributes
    ----------
    word_class : (V,) int64
    members : (V,) int64 word ids grouped by class (class ``k`` is ``members[ptr[k]:ptr[k+1]]``)
    ptr : (C + 1,) int64 class boundaries in ``members``
    position : (V,) int64 index of each word inside its class
    """

    def __init__(self, word_class: np.ndarray):
        word_class = np.asarray(word_class, dtype=np.int64)
        if word_class.ndim != 1 or word_class.size == 0 or word_class.min() < 0:
            raise ValueError("word_class must be a non-empty 1-d array of class ids >= 0")
        C = int(word_class.max()) + 1
        sizes = np.bincount(word_class, minlength=C)
        if (sizes == 0).any():
            raise ValueError(f"classes {np.flatnonzero(sizes == 0).tolist()} have no words")
        self.word_class = word_class
        self.members = np.argsort(word_class, kind="stable").astype(np.int64)
        self.ptr = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.position = np.empty_like(word_class)
        self.position[self.members] = (
            np.arange(word_class.size) - self.ptr[word_class[self.members]]
        )

    @property
    def n_classes(self) -> int:
        return self.ptr.size - 1

    @classmethod
    def from_counts(cls, counts: np.ndarray, n_classes: int, power: float = 0.5) -> WordClasses:
        """Frequency binning: words by decreasing count, cut into ``n_classes`` equal slices of
        the cumulative ``count**power`` mass (Mikolov et al. 2011; ``power`` 0.5 balances the
        cost of the class and the word softmax better than raw counts).

        Parameters
        ----------
        counts : (V,) word counts in the training text (> 0; add one for unseen words)
        n_classes : number of classes, 1 <= n_classes <= V
        """
        counts = np.asarray(counts, dtype=np.float64)
        V = counts.size
        if not 1 <= n_classes <= V:
            raise ValueError(f"n_classes must be in [1, {V}], got {n_classes}")
        order = np.argsort(-counts, kind="stable")
        mass = counts[order] ** power
        total = mass.sum()
        k = np.empty(V, np.int64)
        cur, acc = 0, 0.0
        for i in range(V):
            k[i] = cur
            acc += mass[i]
            classes_left = n_classes - cur - 1
            # close the class at its share of the mass, or when each class left needs a word
            if classes_left > 0 and (
                acc >= (cur + 1) / n_classes * total or V - i - 1 == classes_left
            ):
                cur += 1
        word_class = np.empty(V, np.int64)
        word_class[order] = k
        return cls(word_class)


def _log_softmax_rows(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def class_softmax(
    u: np.ndarray,
    y: np.ndarray,
    Wout: np.ndarray,
    c: np.ndarray,
    Wc: np.ndarray,
    bc: np.ndarray,
    classes: WordClasses,
    scale: float = 1.0,
    grads: bool = True,
):
    """Exact log-probability of each target under the class-factorised softmax, and gradients.

    Tokens are grouped by the class of their target; each group is one BLAS product with its
    class's word vectors, so the cost per token is ``C + |class(y)|`` columns instead of ``V``.

    Parameters
    ----------
    u : (N, H) output features (``h P``)
    y : (N,) target word ids
    Wout : (V, H) output word vectors; c : (V,) word biases
    Wc : (C, H) class vectors; bc : (C,) class biases
    classes : the vocabulary partition
    scale : the gradients are those of ``-scale * sum(logp)`` (``1/N`` for a mean)
    grads : also return gradients

    Returns
    -------
    logp : (N,) float64 ``log P(y_i | u_i)``, normalised over all ``V`` words
    and, when ``grads``: du (N, H), dWout (V, H), dc (V,), dWc (C, H), dbc (C,)
    """
    N = y.shape[0]
    rows = np.arange(N)
    ky = classes.word_class[y]
    lpc = _log_softmax_rows(u @ Wc.T + bc)
    logp = lpc[rows, ky].astype(np.float64)
    if grads:
        Gc = np.exp(lpc)
        Gc[rows, ky] -= 1.0
        Gc *= scale
        du = Gc @ Wc
        dWc = Gc.T @ u
        dbc = Gc.sum(axis=0)
        dW = np.zeros_like(Wout)
        dc = np.zeros_like(c)
    order = np.argsort(ky, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(ky, minlength=classes.n_classes))])
    pos_all = classes.position[y]
    for k in np.flatnonzero(np.diff(bounds)):
        idx = order[bounds[k] : bounds[k + 1]]
        mk = classes.members[classes.ptr[k] : classes.ptr[k + 1]]
        Wk = Wout[mk]
        uk = u[idx]
        lpk = _log_softmax_rows(uk @ Wk.T + c[mk])
        pos = pos_all[idx]
        sub = np.arange(idx.size)
        logp[idx] += lpk[sub, pos]
        if grads:
            Gk = np.exp(lpk)
            Gk[sub, pos] -= 1.0
            Gk *= scale
            du[idx] += Gk @ Wk
            dW[mk] += Gk.T @ uk
            dc[mk] += Gk.sum(axis=0)
    if grads:
        return logp, du, dW, dc, dWc, dbc
    return logp


def class_log_probs_all(
    u: np.ndarray,
    Wout: np.ndarray,
    c: np.ndarray,
    Wc: np.ndarray,
    bc: np.ndarray,
    classes: WordClasses,
) -> np.ndarray:
    """Log-probabilities (N, V) of every word under the class-factorised softmax.

    Parameters
    ----------
    u : (N, H) output features

    Returns
    -------
    (N, V) float64, each row normalised over the vocabulary
    """
    lpc = _log_softmax_rows((u @ Wc.T + bc).astype(np.float64))
    out = np.empty((u.shape[0], Wout.shape[0]), np.float64)
    for k in range(classes.n_classes):
        mk = classes.members[classes.ptr[k] : classes.ptr[k + 1]]
        out[:, mk] = lpc[:, k : k + 1] + _log_softmax_rows(
            (u @ Wout[mk].T + c[mk]).astype(np.float64)
        )
    return out
