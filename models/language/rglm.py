"""The linear recurrent language model (R-GLM).

``h_t = R h_{t-1} + E[w_t]`` and ``P(w_{t+1} | w_<=t) = softmax(W P^T h_t + c)`` (in code, rows:
``(h @ P) @ W.T + c``).

``R`` is diagonal by default (each unit a leaky integrator with its own timescale ``-1/log|r|``
words; |r| is kept below ``R_MAX``) or a full matrix (unconstrained). With tied embeddings the output word vectors ``W`` are the input
embedding ``E``; the small projection ``P`` (H x H) keeps the tied model from being forced into
symmetric word-to-word interactions. Untied models learn a separate ``W``.

Training: truncated back-propagation through time over ``bptt`` steps on ``batch_size`` parallel
streams, a sampled softmax (shared negative samples, importance-corrected) so the output layer costs
``n_samples`` instead of ``V`` columns per token, dropout on the embeddings and on the hidden state
fed to the output, and a max-norm on every word vector (the columns of the embedding and output
matrices in the paper's layout). Reported perplexities always use the exact full softmax.

With ``n_classes`` the output layer is instead class-factorised, ``P(class | h) P(word | class, h)``
over frequency-binned classes (:class:`v1motion.models.language.kernels.WordClasses`): 2.4x faster
to train at H=200 than 1,024 sampled negatives (``bench/lm_speed.py``), and exact, so such a
model is trained and scored with the same normalised distribution.
"""

from __future__ import annotations

import json
import logging
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from v1motion.models.language.data import Vocabulary
from v1motion.models.language.kernels import (
    WordClasses,
    adam_update,
    class_log_probs_all,
    class_softmax,
    diag_scan_backward,
    diag_scan_forward,
    scatter_add_rows,
)

log = logging.getLogger(__name__)

RECURRENCES = ("diagonal", "full")
OPTIMIZERS = ("adam", "sgd")
R_MAX = 0.9995  # |r| bound: timescales up to ~2000 words, and the recurrence stays stable
NAMES = ("E", "W", "P", "r", "c", "Wc", "bc")


# ----------------------------------------------------------------------------------------------
# Plain functions on a parameter dict {E, W (None when tied), P, r (H,) or (H, H), c}
# ----------------------------------------------------------------------------------------------


def _out_matrix(params: dict) -> np.ndarray:
    return params["E"] if params.get("W") is None else params["W"]


def recur(x: np.ndarray, r: np.ndarray, h0: np.ndarray) -> np.ndarray:
    """States (T, B, H) of ``h_t = R h_{t-1} + x_t``; ``r`` is (H,) (diagonal) or (H, H) (full)."""
    if r.ndim == 1:
        return diag_scan_forward(x, r, h0)
    out = np.empty_like(x)
    prev = h0
    for t in range(x.shape[0]):
        prev = prev @ r.T + x[t]
        out[t] = prev
    return out


def recur_backward(dh, r, h, h0):
    """Gradients ``(dx, dr)`` of :func:`recur` given the loss gradient ``dh`` on each state."""
    if r.ndim == 1:
        return diag_scan_backward(dh, r, h, h0)
    dx = np.empty_like(dh)
    dr = np.zeros_like(r)
    delta = np.zeros_like(h0)
    for t in range(dh.shape[0] - 1, -1, -1):
        delta = dh[t] + delta @ r
        dx[t] = delta
        dr += delta.T @ (h[t - 1] if t > 0 else h0)
    return dx, dr


def log_softmax_rows(logits: np.ndarray) -> np.ndarray:
    m = logits.max(axis=1, keepdims=True)
    z = logits - m
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def loss_and_grads(
    params: dict,
    X: np.ndarray,
    Y: np.ndarray,
    h0: np.ndarray,
    mask_in: np.ndarray | None = None,
    mask_h: np.ndarray | None = None,
    samples: np.ndarray | None = None,
    log_q: np.ndarray | None = None,
    return_logp: bool = False,
    classes: WordClasses | None = None,
):
    """Mean cross-entropy (nats/token) of one truncated-BPTT window and its gradients.

    Parameters
    ----------
    params : parameter dict (``W`` is None for tied embeddings)
    X, Y : (T, B) int input words and the words that follow them
    h0 : (B, H) carried state (a constant: gradients are truncated here)
    mask_in, mask_h : (T, B, H) dropout multipliers (0 or 1/(1-p)) on embeddings and on the state
        fed to the output; None means no dropout
    samples : (K,) negative samples for the sampled softmax (with replacement, from ``exp(log_q)``);
        None means the exact full softmax
    log_q : (V,) log sampling probabilities, needed with ``samples``
    classes : the word classes of a class-factorised output layer (parameters ``Wc`` (C, H) and
        ``bc`` (C,)); None for the plain softmax. The class softmax is exact, not an estimate.

    Returns
    -------
    loss : float
    grads : dict with the keys of ``params`` (``E`` collects both input and tied-output gradients)
    hT : (B, H) last state (undropped), to carry into the next window
    logp : (T, B) log P of each target (full softmax only), returned last when ``return_logp``
    """
    E, P, r, c = params["E"], params["P"], params["r"], params["c"]
    Wout = _out_matrix(params)
    T, B = X.shape
    H = E.shape[1]
    N = T * B
    x = E[X]
    if mask_in is not None:
        x = x * mask_in
    h = recur(x, r, h0)
    hd = h * mask_h if mask_h is not None else h
    hd2 = hd.reshape(N, H)
    u = hd2 @ P
    y = Y.reshape(N)
    extra = {}
    if classes is not None:
        lp_y, du, dW, dc, dWc, dbc = class_softmax(
            u, y, Wout, c, params["Wc"], params["bc"], classes, scale=1.0 / N
        )
        loss = -lp_y.mean()
        extra = {"Wc": dWc, "bc": dbc}
    elif samples is None:
        dW = np.zeros_like(Wout)
        dc = np.zeros_like(c)
        logits = u @ Wout.T + c
        lp = log_softmax_rows(logits)
        lp_y = lp[np.arange(N), y]
        loss = -lp_y.mean()
        G = np.exp(lp)
        G[np.arange(N), y] -= 1.0
        G /= N
        du = G @ Wout
        dW += G.T @ u
        dc += G.sum(axis=0)
    else:
        dW = np.zeros_like(Wout)
        dc = np.zeros_like(c)
        Ws = Wout[samples]
        Wy = Wout[y]
        true_logit = np.einsum("nh,nh->n", u, Wy) + c[y] - (log_q[y] + np.log(len(samples)))
        samp_logit = u @ Ws.T + (c[samples] - (log_q[samples] + np.log(len(samples))))
        samp_logit[y[:, None] == samples[None, :]] = -np.inf  # accidental hits
        logits = np.concatenate([true_logit[:, None], samp_logit], axis=1)
        lp = log_softmax_rows(logits)
        lp_y = lp[:, 0]
        loss = -lp_y.mean()
        G = np.exp(lp)
        G[:, 0] -= 1.0
        G /= N
        g0, gs = G[:, :1], G[:, 1:]
        du = g0 * Wy + gs @ Ws
        scatter_add_rows(dW, y, g0 * u)
        scatter_add_rows(dW, samples, gs.T @ u)
        np.add.at(dc, y, g0[:, 0])
        np.add.at(dc, samples, gs.sum(axis=0))
    dP = hd2.T @ du
    dh = (du @ P.T).reshape(T, B, H)
    if mask_h is not None:
        dh *= mask_h
    dx, dr = recur_backward(dh, r, h, h0)
    if mask_in is not None:
        dx *= mask_in
    dE = np.zeros_like(E)
    scatter_add_rows(dE, X.reshape(N), dx.reshape(N, H))
    grads = {"P": dP, "r": dr, "c": dc, **extra}
    if params.get("W") is None:
        grads["E"] = dE + dW
    else:
        grads["E"], grads["W"] = dE, dW
    if return_logp:
        return float(loss), grads, h[-1].copy(), lp_y.reshape(T, B)
    return float(loss), grads, h[-1].copy()


def stream_log_probs(
    params: dict,
    tokens: np.ndarray,
    h0: np.ndarray | None = None,
    chunk: int = 1024,
    classes: WordClasses | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact log-probability (nats) of each ``tokens[t+1]`` given ``tokens[:t+1]``, full softmax.

    Parameters
    ----------
    tokens : (n,) ids of one stream
    h0 : (H,) state before the first token (zeros by default)
    classes : word classes of a class-factorised output layer (None: plain softmax)

    Returns
    -------
    logp : (n-1,) log P(tokens[t+1] | tokens[:t+1])
    hT : (H,) state after the last token
    """
    E, P, r, c = params["E"], params["P"], params["r"], params["c"]
    Wout = _out_matrix(params)
    tokens = np.asarray(tokens)
    H = E.shape[1]
    h0 = np.zeros((1, H), E.dtype) if h0 is None else np.asarray(h0, E.dtype).reshape(1, H)
    h = recur(E[tokens][:, None, :], r, h0)[:, 0, :]
    logp = np.empty(len(tokens) - 1, dtype=np.float64)
    for s in range(0, len(tokens) - 1, chunk):
        e = min(s + chunk, len(tokens) - 1)
        if classes is not None:
            logp[s:e] = class_softmax(
                h[s:e] @ P,
                tokens[s + 1 : e + 1],
                Wout,
                c,
                params["Wc"],
                params["bc"],
                classes,
                grads=False,
            )
            continue
        lp = log_softmax_rows((h[s:e] @ P) @ Wout.T + c)
        logp[s:e] = lp[np.arange(e - s), tokens[s + 1 : e + 1]]
    return logp, h[-1].copy()


def dynamic_step(
    params: dict,
    X: np.ndarray,
    Y: np.ndarray,
    h0: np.ndarray,
    learning_rate: float,
    max_grad_norm: float | None = 5.0,
    classes: WordClasses | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Score one window of a stream, then take one in-place SGD step on it.

    Same update as ``p -= learning_rate * n * grads[p]`` with ``grads`` from
    :func:`loss_and_grads` (full softmax, no dropout), but the output-matrix update, a rank-n
    change of a V x H matrix, is applied in place by BLAS instead of forming the dense gradient.

    Parameters
    ----------
    params : parameter dict, modified in place (C-contiguous float32 or float64 arrays)
    X, Y : (n,) the words read and the words that follow them
    h0 : (1, H) state before the window
    learning_rate : step per token (the window gradient is summed over its n tokens)
    max_grad_norm : the step is scaled down when the window gradient's norm exceeds
        ``max_grad_norm * n`` (norms of the separate parts added in quadrature); None: never
    classes : word classes of a class-factorised output layer (None: plain softmax); then the
        exact class-softmax gradient of :func:`loss_and_grads` is applied

    Returns
    -------
    logp : (n,) log P(Y[i] | ..., X[i]) under the parameters before the update
    hT : (1, H) state after the window (computed with the parameters before the update)
    """
    from scipy.linalg import blas

    if classes is not None:
        return _dynamic_step_classes(params, X, Y, h0, learning_rate, max_grad_norm, classes)
    E, P, r, c = params["E"], params["P"], params["r"], params["c"]
    Wout = _out_matrix(params)
    n = X.shape[0]
    logp, h, u, G, dP, dx, dr = _window_backward(params, Wout, X, Y, h0, mean=False)
    lr = learning_rate
    if max_grad_norm is not None:
        # ||G^T u||_F^2 = sum((u u^T) * (G G^T)): the output-matrix part without forming it
        sq = float(np.sum((u @ u.T) * (G @ G.T)))
        sq += float(np.vdot(dx, dx) + np.vdot(dP, dP) + np.vdot(dr, dr))
        sq += float(np.vdot(G.sum(axis=0), G.sum(axis=0)))
        norm = np.sqrt(sq)
        if norm > max_grad_norm * n:
            lr *= max_grad_norm * n / norm
    # Wout.T (F-ordered view of the C-ordered Wout) += -lr * u^T G, in place
    gemm = blas.get_blas_funcs("gemm", (Wout,))
    res = gemm(-lr, u, G, beta=1.0, c=Wout.T, trans_a=1, overwrite_c=1)
    if not np.shares_memory(res, Wout):
        Wout[...] = res.T
    c -= lr * G.sum(axis=0)
    scatter_add_rows(E, X, -lr * dx[:, 0, :])
    P -= lr * dP
    r -= lr * dr
    if r.ndim == 1:
        np.clip(r, -R_MAX, R_MAX, out=r)
    return logp, h[-1].copy()


def _dynamic_step_classes(params, X, Y, h0, learning_rate, max_grad_norm, classes):
    n = X.shape[0]
    _, grads, hT, lp = loss_and_grads(
        params, X[:, None], Y[:, None], h0, return_logp=True, classes=classes
    )
    lr = learning_rate * n  # the gradients are of the mean loss
    if max_grad_norm is not None:
        norm = n * np.sqrt(sum(float(np.vdot(g, g)) for g in grads.values()))
        if norm > max_grad_norm * n:
            lr *= max_grad_norm * n / norm
    for k, g in grads.items():
        params[k] -= (lr * g).astype(params[k].dtype)
    r = params["r"]
    if r.ndim == 1:
        np.clip(r, -R_MAX, R_MAX, out=r)
    return lp[:, 0].astype(np.float64), hT


def gradient_rms(
    params: dict,
    tokens: np.ndarray,
    chunk: int,
    batch: int = 100,
    classes: WordClasses | None = None,
) -> dict:
    """Root mean square of each parameter's window gradient over a training stream.

    Krause et al.'s (2018) gradient statistics for RMS-normalised dynamic evaluation:
    ``tokens`` is cut into ``batch`` parallel streams (contiguous slices), read in windows of
    ``chunk`` steps with the state carried from window to window; each window's gradient is that
    of the mean loss over its ``chunk * batch`` tokens (exact softmax, no dropout).

    Returns
    -------
    dict of float32 arrays shaped like the parameters (the keys of ``params`` that are not None)
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    steps = len(tokens) // batch
    if chunk < 1 or steps < 2:
        raise ValueError("need chunk >= 1 and at least two tokens per stream")
    streams = tokens[: steps * batch].reshape(batch, steps).T  # (steps, batch)
    E = params["E"]
    h = np.zeros((batch, E.shape[1]), E.dtype)
    ms = {k: np.zeros(v.shape, np.float64) for k, v in params.items() if v is not None}
    count = 0
    for s in range(0, steps - 1, chunk):
        e = min(s + chunk, steps - 1)
        _, grads, h = loss_and_grads(
            params, streams[s:e], streams[s + 1 : e + 1], h, classes=classes
        )
        for k, g in grads.items():
            ms[k] += np.square(g, dtype=np.float64)
        count += 1
    return {k: np.sqrt(v / count).astype(np.float32) for k, v in ms.items()}


def rms_rates(rms: dict, decay: float, eps: float) -> tuple[dict, dict]:
    """Per-weight ``(decay rates, 1 / (rms + eps))`` of Krause et al.'s RMS-normalised update.

    Each weight decays at ``decay * rms / g`` towards the fitted value, ``g`` the mean over
    parameter arrays of each array's mean RMS (so arrays count equally, whatever their size);
    a rate is capped at 1 (Krause et al. cap ``rms / g`` at ``1 / decay``: no overshoot).
    """
    g = float(np.mean([float(np.mean(v)) for v in rms.values()]))
    rates = {
        k: np.minimum(np.float32(decay) * (v / np.float32(g)), 1.0).astype(np.float32)
        for k, v in rms.items()
    }
    inv = {k: (1.0 / (v.astype(np.float64) + eps)).astype(np.float32) for k, v in rms.items()}
    return rates, inv


def _window_backward(params, Wout, X, Y, h0, mean):
    """Forward and backward pass of one window (n,) of a stream through the full softmax (output
    matrix ``Wout``): ``(log P, states h, projected states u, logit gradient G, dP, dx, dr)`` for
    the summed loss, or the mean loss if ``mean``."""
    E, P, r, c = params["E"], params["P"], params["r"], params["c"]
    n = X.shape[0]
    h = recur(E[X][:, None, :], r, h0)
    h2 = h[:, 0, :]
    u = h2 @ P
    lp = log_softmax_rows(u @ Wout.T + c)
    logp = lp[np.arange(n), Y].astype(np.float64)
    G = np.exp(lp)
    G[np.arange(n), Y] -= 1.0  # gradient of the summed loss with respect to the logits
    if mean:
        G /= n
    du = G @ Wout
    dP = h2.T @ du
    dx, dr = recur_backward((du @ P.T)[:, None, :], r, h, h0)
    return logp, h, u, G, dP, dx, dr


def _window_grads(params, X, Y, h0, classes):
    """log P, last state and dense gradients of the mean loss of one window (n,) of a stream."""
    if classes is not None:
        _, grads, hT, lp = loss_and_grads(
            params, X[:, None], Y[:, None], h0, return_logp=True, classes=classes
        )
        return lp[:, 0].astype(np.float64), hT, grads
    E = params["E"]
    logp, h, u, G, dP, dx, dr = _window_backward(params, _out_matrix(params), X, Y, h0, mean=True)
    grads = {"P": dP, "r": dr, "c": G.sum(axis=0)}
    dW = G.T @ u
    if params.get("W") is None:
        scatter_add_rows(dW, X, dx[:, 0, :])
        grads["E"] = dW
    else:
        dE = np.zeros_like(E)
        scatter_add_rows(dE, X, dx[:, 0, :])
        grads["E"], grads["W"] = dE, dW
    return logp, h[-1].copy(), grads


def rms_dynamic_step(
    params: dict,
    fitted: dict,
    X: np.ndarray,
    Y: np.ndarray,
    h0: np.ndarray,
    learning_rate: float,
    rates: dict,
    inv_rms: dict,
    classes: WordClasses | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Score one window, then take Krause et al.'s (2018) RMS-normalised step on it, in place.

    ``p += rates * (fitted - p) - learning_rate * g * inv_rms`` for every parameter, with ``g`` the
    gradient of the window's mean loss (BPTT inside the window) and ``rates``, ``inv_rms`` from
    :func:`rms_rates`; both terms use the parameters before the step.

    Returns
    -------
    logp : (n,) log P(Y[i] | ..., X[i]) under the parameters before the update
    hT : (1, H) state after the window (computed with the parameters before the update)
    """
    logp, hT, grads = _window_grads(params, X, Y, h0, classes)
    lr = params["E"].dtype.type(learning_rate)
    for k, g in grads.items():
        p = params[k]
        step = fitted[k] - p
        step *= rates[k]
        g *= inv_rms[k]
        g *= lr
        step -= g
        p += step
    r = params["r"]
    if r.ndim == 1:
        np.clip(r, -R_MAX, R_MAX, out=r)
    return logp, hT


def fit_logit_scale(
    params: dict, tokens: np.ndarray, chunk: int = 1024, max_iter: int = 30, tol: float = 1e-5
) -> tuple[float, float, float]:
    """The one factor ``a`` on every logit that maximises the likelihood of ``tokens[1:]``.

    A model trained with dropout is scored without it, and its deterministic logits can be too
    sharp (or too flat) for the text it was not trained on: the temperature ``1 / a`` fitted on
    held-out text is the classic calibration of a softmax (Guo et al. 2017). The mean
    negative log-likelihood ``L(a) = mean(logsumexp(a z) - a z_y)`` is convex in ``a`` (its second
    derivative is the variance of ``z`` under ``softmax(a z)``), so Newton's method from ``a = 1``
    finds it in a few passes over ``tokens`` (exact full softmax; the stream read from a zero
    state, as :func:`stream_log_probs` does). Plain softmax only.

    Returns
    -------
    a : float
        The fitted factor (> 0).
    nll_before, nll_after : float
        Mean negative log-likelihood (nats per prediction) at ``a = 1`` and at ``a``.
    """
    if params.get("Wc") is not None:
        raise ValueError("fit_logit_scale: class-factorised output layers are not supported")
    tokens = np.asarray(tokens, dtype=np.int64)
    if len(tokens) < 2:
        raise ValueError("fit_logit_scale needs at least two tokens")
    E, P, r, c = params["E"], params["P"], params["r"], params["c"]
    Wout = _out_matrix(params)
    H = E.shape[1]
    h = recur(E[tokens][:, None, :], r, np.zeros((1, H), E.dtype))[:, 0, :]
    n = len(tokens) - 1

    def moments(a: float) -> tuple[float, float, float]:
        """Mean NLL at ``a`` and its first and second derivatives in ``a``."""
        nll = grad = curv = 0.0
        f = np.float32(a)
        for s in range(0, n, chunk):
            e = min(s + chunk, n)
            z = ((h[s:e] @ P) @ Wout.T + c).astype(np.float32)  # the model's own precision
            p = z * f
            m = p.max(axis=1, keepdims=True)
            p -= m
            np.exp(p, out=p)
            norm = p.sum(axis=1, keepdims=True, dtype=np.float64)
            p /= norm.astype(np.float32)
            zy = z[np.arange(e - s), tokens[s + 1 : e + 1]].astype(np.float64)
            p *= z
            ez = p.sum(axis=1, dtype=np.float64)
            p *= z
            ez2 = p.sum(axis=1, dtype=np.float64)
            nll += float((np.log(norm[:, 0]) + m[:, 0] - a * zy).sum())
            grad += float((ez - zy).sum())
            curv += float((ez2 - ez * ez).sum())
        return nll / n, grad / n, curv / n

    a = 1.0
    nll, grad, curv = moments(a)
    before = nll
    for _ in range(max_iter):
        if curv <= 0.0:  # every logit equal: any factor scores the same
            break
        step = grad / curv
        new = a - step if a - step > 0.0 else 0.5 * a  # Newton, kept positive
        new_nll, new_grad, new_curv = moments(new)
        while new_nll > nll and abs(new - a) > tol * a:  # a convex function: halve back to a
            new = 0.5 * (new + a)
            new_nll, new_grad, new_curv = moments(new)
        done = abs(new - a) <= tol * a
        if new_nll <= nll:
            a, nll, grad, curv = new, new_nll, new_grad, new_curv
        if done:
            break
    return float(a), float(before), float(nll)


def next_word_log_probs(
    params: dict, h: np.ndarray, classes: WordClasses | None = None
) -> np.ndarray:
    """Log-probabilities (V,) of the next word given the state ``h`` (H,)."""
    if classes is not None:
        u = (np.asarray(h, params["E"].dtype) @ params["P"])[None, :]
        return class_log_probs_all(
            u, _out_matrix(params), params["c"], params["Wc"], params["bc"], classes
        )[0]
    logits = (np.asarray(h, params["E"].dtype) @ params["P"]) @ _out_matrix(params).T + params["c"]
    return log_softmax_rows(logits[None, :].astype(np.float64))[0]


def max_norm_rows(M: np.ndarray, max_norm: float) -> None:
    """In place: rescale every row (word vector) whose L2 norm exceeds ``max_norm``."""
    norms = np.sqrt(np.einsum("ij,ij->i", M, M))
    big = norms > max_norm
    if big.any():
        M[big] *= (max_norm / norms[big])[:, None].astype(M.dtype)


def timescales(r: np.ndarray) -> np.ndarray:
    """Unit timescales ``-1/log|r|`` in words (H,); for a full R, of its eigenvalues."""
    lam = np.abs(r) if r.ndim == 1 else np.abs(np.linalg.eigvals(r))
    lam = np.clip(lam, 1e-12, 1 - 1e-12)
    return -1.0 / np.log(lam)


# ----------------------------------------------------------------------------------------------
# Optimisers
# ----------------------------------------------------------------------------------------------


@dataclass
class _Optimizer:
    kind: str
    lr: float
    momentum: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    step: int = 0

    def init(self, params: dict) -> None:
        self.m = {k: np.zeros_like(v) for k, v in params.items() if v is not None}
        self.v = (
            {k: np.zeros_like(v) for k, v in params.items() if v is not None}
            if self.kind == "adam"
            else {}
        )

    def update(self, params: dict, grads: dict) -> None:
        self.step += 1
        for k, g in grads.items():
            p, m = params[k], self.m[k]
            if self.kind == "sgd":
                m *= self.momentum
                m -= self.lr * g
                m[np.abs(m) < 1e-30] = 0.0  # no float32 subnormals (see adam_update)
                p += m
            else:
                a = self.lr * np.sqrt(1 - self.beta2**self.step) / (1 - self.momentum**self.step)
                adam_update(p, g, m, self.v[k], a, self.momentum, self.beta2, self.eps)


# ----------------------------------------------------------------------------------------------
# The estimator
# ----------------------------------------------------------------------------------------------


class LinearRecurrentLM:
    """Linear recurrent language model (R-GLM) trained by truncated BPTT.

    Parameters
    ----------
    n_hidden : int, default 200
    recurrence : {"diagonal", "full"}, default "diagonal"
    tied : bool, default True -- output word vectors are the input embedding
    dropout_input, dropout_hidden : float in [0, 1), defaults 0.1 and 0.25
    dropout_words : float in [0, 1), default 0.0 -- word-type dropout (Gal & Ghahramani's
        embedding dropout): in each training window every word type's embedding is dropped, at
        all of its occurrences at once, with this probability (the kept ones scaled by 1/(1-p)),
        on top of ``dropout_input``; 0 draws nothing, so runs without it are unchanged
    max_norm : float or None, default 3.0 -- max L2 norm of every word vector
    bptt : int, default 20 -- truncation length
    batch_size : int, default 64 -- parallel streams
    n_samples : int or None, default 1024 -- sampled-softmax negatives (None: full softmax)
    n_classes : int or None, default None -- a class-factorised output layer with this many
        frequency-binned classes (the model is then ``P(class | h) P(word | class, h)``, trained
        and scored exactly; ``n_samples`` is ignored)
    class_power : float, default 1.0 -- classes are equal slices of cumulative ``count**power``
        (1: Mikolov's frequency binning, 8 % lower validation perplexity than 0.5 in
        ``docs/language/search.md``; 0.5 gives smaller classes to the rare tail, 20 % faster)
    optimizer : {"adam", "sgd"}, default "adam"
    learning_rate : float or None -- default 2e-3 (adam) or 1.0 (sgd, momentum 0.9)
    momentum : float, default 0.9
    anneal : float, default 0.5 -- learning-rate factor when validation stops improving
    n_epochs : int, default 20
    average_from : int or None, default None -- from the start of this epoch (1-based) keep the
        running arithmetic mean of the parameters over every update (Polyak averaging; the
        average of iterates that obey the max-norm and |r| bounds obeys them too, both sets being
        convex). Each such epoch is then validated, kept as best and annealed on with the
        averaged parameters; None: no averaging
    anneal_while_averaging : bool, default True -- False: the learning rate stays where it is once
        averaging has started (as averaged SGD does: the mean, not a shrinking step, removes the
        iterates' noise)
    time_limit : float or None -- pause ``fit`` after this many seconds (inside an epoch; with a
        checkpoint, calling ``fit`` again resumes exactly where it paused)
    warm_start : bool, default False -- ``fit`` starts from the parameters already in ``params_``
        (a loaded or fitted model's; their shapes must be the ones these settings give) with a
        fresh optimiser, instead of fresh parameters: e.g. a model trained with the sampled
        softmax fine-tuned with the exact one. A checkpoint to resume from still comes first
    seed : int, default 0

    Attributes
    ----------
    params_ : dict of E (V, H), W (V, H) or None, P (H, H), r (H,) or (H, H), c (V,)
    vocab_ : Vocabulary
    history_ : list of per-epoch dicts (train loss, valid perplexity, tokens/s, lr, seconds);
        with averaging on, ``valid_ppl`` is that of the averaged parameters and ``valid_ppl_raw``
        that of the last iterate
    best_valid_ppl_ : float -- validation perplexity of the parameters kept (the best epoch's, or
        with ``warm_start`` maybe those started from); inf when ``fit`` had no ``valid``
    """

    def __init__(
        self,
        n_hidden: int = 200,
        recurrence: str = "diagonal",
        tied: bool = True,
        dropout_input: float = 0.1,
        dropout_hidden: float = 0.25,
        dropout_words: float = 0.0,
        max_norm: float | None = 3.0,
        bptt: int = 20,
        batch_size: int = 64,
        n_samples: int | None = 1024,
        n_classes: int | None = None,
        class_power: float = 1.0,
        optimizer: str = "adam",
        learning_rate: float | None = None,
        momentum: float = 0.9,
        anneal: float = 0.5,
        n_epochs: int = 20,
        average_from: int | None = None,
        anneal_while_averaging: bool = True,
        time_limit: float | None = None,
        warm_start: bool = False,
        seed: int = 0,
    ):
        self.n_hidden = n_hidden
        self.recurrence = recurrence
        self.tied = tied
        self.dropout_input = dropout_input
        self.dropout_hidden = dropout_hidden
        self.dropout_words = dropout_words
        self.max_norm = max_norm
        self.bptt = bptt
        self.batch_size = batch_size
        self.n_samples = n_samples
        self.n_classes = n_classes
        self.class_power = class_power
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.momentum = momentum
        self.anneal = anneal
        self.n_epochs = n_epochs
        self.average_from = average_from
        self.anneal_while_averaging = anneal_while_averaging
        self.time_limit = time_limit
        self.warm_start = warm_start
        self.seed = seed

    # -- set-up ---------------------------------------------------------------------------------

    def _validate(self) -> None:
        if self.recurrence not in RECURRENCES:
            raise ValueError(
                f"recurrence={self.recurrence!r}; valid choices: {', '.join(RECURRENCES)}"
            )
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"optimizer={self.optimizer!r}; valid choices: {', '.join(OPTIMIZERS)}"
            )
        for name in ("dropout_input", "dropout_hidden", "dropout_words"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        for name in ("n_hidden", "bptt", "batch_size", "n_epochs"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.average_from is not None and int(self.average_from) < 1:
            raise ValueError(f"average_from must be an epoch >= 1 or None, got {self.average_from}")

    def init_params(self, vocab_size: int, unigram: np.ndarray | None = None) -> dict:
        """Fresh parameters: timescales log-uniform over 1-100 words, P = diag(1 - r)."""
        rng = np.random.default_rng(self.seed)
        H, V = self.n_hidden, vocab_size
        tau = np.exp(rng.uniform(0.0, np.log(100.0), H))
        r_diag = np.exp(-1.0 / tau).astype(np.float32)
        E = (rng.standard_normal((V, H)) * 0.1).astype(np.float32)
        W = None if self.tied else (rng.standard_normal((V, H)) * 0.1).astype(np.float32)
        r = r_diag if self.recurrence == "diagonal" else np.diag(r_diag).astype(np.float32)
        P = np.diag(1.0 - r_diag).astype(np.float32)
        if unigram is None:
            c = np.zeros(V, np.float32)
        else:
            c = np.log(np.maximum(unigram, 1e-8) / unigram.sum()).astype(np.float32)
        params = {"E": E, "W": W, "P": P, "r": r, "c": c}
        classes = getattr(self, "classes_", None)
        if classes is not None:
            C = classes.n_classes
            params["Wc"] = (rng.standard_normal((C, H)) * 0.1).astype(np.float32)
            if unigram is None:
                params["bc"] = np.zeros(C, np.float32)
            else:
                # class biases carry the class unigram, word biases the share inside the class
                mass = np.bincount(classes.word_class, weights=unigram, minlength=C)
                params["bc"] = np.log(mass / mass.sum()).astype(np.float32)
                params["c"] = np.log(np.maximum(unigram, 1e-8) / mass[classes.word_class]).astype(
                    np.float32
                )
        return params

    def _check_fitted(self) -> None:
        if not hasattr(self, "params_"):
            raise RuntimeError("this LinearRecurrentLM is not fitted: call fit() or load() first")
        if not hasattr(self, "classes_"):
            self.classes_ = None

    # -- training -------------------------------------------------------------------------------

    def fit(
        self,
        train: np.ndarray,
        vocab: Vocabulary,
        valid: np.ndarray | None = None,
        checkpoint: str | Path | None = None,
        progress: bool = False,
        checkpoint_every: float = 60.0,
        stop_after: int | None = None,
    ) -> LinearRecurrentLM:
        """Train on the id stream ``train`` (n,); anneal on ``valid`` perplexity; keep the best.

        With ``checkpoint`` the full training state (parameters, optimiser moments, random
        generator, carried hidden state, position inside the epoch) is saved every
        ``checkpoint_every`` seconds, at the end of every epoch and when the run pauses; if the
        file exists, training resumes from it. Resuming from any checkpoint gives the same
        parameters as an uninterrupted run, so a run can be stopped at any moment and loses
        at most ``checkpoint_every`` seconds.

        With ``average_from`` the running mean of the parameters (after every update from that
        epoch on) is part of that state. From then on each epoch ends by scoring ``valid`` with
        both the last iterate (``valid_ppl_raw``) and the mean (``valid_ppl``); the mean is the
        candidate for the best epoch, and the learning rate is annealed when the mean's
        perplexity stops improving: the mean is the model kept, and annealing on the noisier last
        iterate would shrink the steps just when averaging their noise away pays (a stalling
        iterate is what averaging is for).

        Parameters
        ----------
        train : (n,) training ids; valid : (m,) validation ids (annealing, early stopping)
        vocab : the vocabulary
        checkpoint : path of the resumable state (.npz), or None
        progress : show a progress bar over the windows of each epoch
        checkpoint_every : seconds between checkpoints inside an epoch
        stop_after : pause after this many training windows in this call (None: no pause);
            ``time_limit`` pauses the same way after that many seconds in this call
        """
        self._validate()
        train = np.asarray(train, dtype=np.int64)
        V = len(vocab)
        if train.ndim != 1 or train.size < 2 or train.min() < 0 or train.max() >= V:
            raise ValueError(f"train must be a 1-d stream of ids in [0, {V})")
        if train.size // self.batch_size < 2:  # no window to train on (a ZeroDivisionError)
            raise ValueError(
                f"{train.size} training tokens make fewer than 2 for each of the {self.batch_size} "
                "parallel streams (batch_size): give more tokens or fewer streams"
            )
        for stored in ("word_storage_", "p_storage_"):  # a model fitted anew is saved as new
            self.__dict__.pop(stored, None)
        self.vocab_ = vocab
        counts = np.bincount(train, minlength=V).astype(np.float64) + 1.0
        q = counts**0.75
        log_q = np.log(q / q.sum())
        q_cdf = np.cumsum(np.exp(log_q))
        self.classes_ = (
            WordClasses.from_counts(counts, self.n_classes, self.class_power)
            if self.n_classes
            else None
        )
        ckpt = Path(checkpoint) if checkpoint is not None else None
        if ckpt is not None:  # its folder made now: not found missing at the first save
            ckpt.parent.mkdir(parents=True, exist_ok=True)
        B, T, H = self.batch_size, self.bptt, self.n_hidden
        if ckpt is not None and ckpt.exists():
            state = self._load_checkpoint(ckpt)
            log.info(  # counted from 1, as the bars and the epoch lines
                "resuming from %s: epoch %d/%d, %d windows of it done",
                ckpt,
                state["epoch"] + 1,
                self.n_epochs,
                state["pos"],
            )
        else:
            lr = self.learning_rate or (2e-3 if self.optimizer == "adam" else 1.0)
            opt = _Optimizer(self.optimizer, lr, self.momentum)
            fresh = self.init_params(V, counts)
            self.params_ = self._warm_params(fresh) if self.warm_start else fresh
            opt.init(self.params_)
            state = {
                "epoch": 0,
                "pos": 0,
                "h": np.zeros((B, H), np.float32),
                "total": 0.0,
                "count": 0,
                "epoch_seconds": 0.0,
                "opt": opt,
                "best": np.inf,
                "best_params": None,
                "history": [],
                "rng": np.random.default_rng(self.seed + 1),
                "avg_sum": None,
                "avg_count": 0,
            }
            if self.warm_start and valid is not None:
                # the parameters started from are the first candidate: fine-tuning that only
                # makes them worse on valid gives them back
                state["best"] = self.perplexity(valid)
                state["best_params"] = _copy_params(self.params_)
                log.info("warm start: valid ppl %.2f before training", state["best"])
        self.history_ = state["history"]
        opt, rng = state["opt"], state["rng"]
        L = (train.size - 1) // B
        data = train[: L * B + 1]
        Xs = data[:-1].reshape(B, L).T
        Ys = data[1:].reshape(B, L).T
        n_windows = (L + T - 1) // T
        started = time.perf_counter()
        last_save = started
        windows_run = 0
        paused = False
        while state["epoch"] < self.n_epochs and not paused:
            t0 = time.perf_counter()
            bar = None
            if progress:
                from tqdm import tqdm

                bar = tqdm(
                    total=n_windows,
                    initial=state["pos"],
                    desc=f"epoch {state['epoch'] + 1}/{self.n_epochs}",
                    unit="win",
                    leave=False,
                )
            while state["pos"] < n_windows:
                s = state["pos"] * T
                X, Y = Xs[s : s + T], Ys[s : s + T]
                shape = (*X.shape, H)
                m_in = _dropout_mask(rng, shape, self.dropout_input)
                if self.dropout_words > 0:
                    m_in = _word_dropout(rng, X, V, self.dropout_words, m_in, shape)
                m_h = _dropout_mask(rng, shape, self.dropout_hidden)
                samples = None
                if self.n_samples and self.classes_ is None:
                    samples = np.searchsorted(q_cdf, rng.random(self.n_samples) * q_cdf[-1])
                    samples = np.minimum(samples, V - 1)
                loss, grads, state["h"] = loss_and_grads(
                    self.params_,
                    X,
                    Y,
                    state["h"],
                    m_in,
                    m_h,
                    samples,
                    log_q if samples is not None else None,
                    classes=self.classes_,
                )
                if not np.isfinite(loss):
                    raise FloatingPointError(
                        f"training diverged at epoch {state['epoch'] + 1}: lower learning_rate"
                    )
                _clip_global(grads, 5.0)
                opt.update(self.params_, grads)
                self._project()
                if self.average_from is not None and state["epoch"] + 1 >= self.average_from:
                    _accumulate(state, self.params_)
                state["total"] += loss * X.size
                state["count"] += X.size
                state["pos"] += 1
                windows_run += 1
                if bar is not None:
                    bar.update(1)
                now = time.perf_counter()
                over_time = self.time_limit is not None and now - started > self.time_limit
                over_count = stop_after is not None and windows_run >= stop_after
                if (over_time or over_count) and state["pos"] < n_windows:
                    paused = True
                    break
                if ckpt is not None and now - last_save > checkpoint_every:
                    state["epoch_seconds"] += now - t0
                    t0 = now
                    self._save_checkpoint(ckpt, state)
                    last_save = time.perf_counter()
            if bar is not None:
                bar.close()
            state["epoch_seconds"] += time.perf_counter() - t0
            if paused:
                break
            entry = {
                "epoch": state["epoch"] + 1,
                "train_loss": state["total"] / state["count"],
                "tokens_per_s": state["count"] / state["epoch_seconds"],
                "seconds": state["epoch_seconds"],
                "lr": opt.lr,
            }
            if valid is not None:
                candidate = self.params_
                if state["avg_count"]:
                    entry["valid_ppl_raw"] = self.perplexity(valid)
                    entry["averaged_updates"] = state["avg_count"]
                    candidate = _mean_params(state, self.params_)
                iterate, self.params_ = self.params_, candidate
                entry["valid_ppl"] = self.perplexity(valid)
                self.params_ = iterate
                if entry["valid_ppl"] < state["best"]:
                    state["best"] = entry["valid_ppl"]
                    state["best_params"] = _copy_params(candidate)
                held = state["avg_count"] and not self.anneal_while_averaging
                if not held and entry["valid_ppl"] > 0.995 * min(
                    [e["valid_ppl"] for e in self.history_] or [np.inf]
                ):
                    opt.lr *= self.anneal
            self.history_.append(entry)
            state.update(
                epoch=state["epoch"] + 1,
                pos=0,
                h=np.zeros((B, H), np.float32),
                total=0.0,
                count=0,
                epoch_seconds=0.0,
            )
            log.info("epoch %s: %s", entry["epoch"], entry)
            if ckpt is not None:  # an epoch's validation is never lost to a stop
                self._save_checkpoint(ckpt, state)
                last_save = time.perf_counter()
            if self.time_limit is not None and time.perf_counter() - started > self.time_limit:
                paused = state["epoch"] < self.n_epochs
            if stop_after is not None and windows_run >= stop_after:
                paused = state["epoch"] < self.n_epochs
        if ckpt is not None:
            self._save_checkpoint(ckpt, state)
        if paused:
            log.info(
                "paused at epoch %s window %s/%s after %.0f s",
                state["epoch"] + 1,
                state["pos"],
                n_windows,
                time.perf_counter() - started,
            )
        if state["best_params"] is not None:
            self.params_ = state["best_params"]
        self.best_valid_ppl_ = state["best"]  # of the parameters kept (inf without ``valid``)
        self.epochs_done_ = state["epoch"]
        self.finished_ = state["epoch"] >= self.n_epochs
        return self

    def _warm_params(self, fresh: dict) -> dict:
        """A copy of ``params_`` to start from (``warm_start``), checked against ``fresh``, the
        parameters these settings and this vocabulary would start from."""
        have = getattr(self, "params_", None)
        if have is None:
            raise ValueError("warm_start needs parameters to start from: load or fit a model first")
        shapes = {k: None if v is None else v.shape for k, v in have.items()}
        want = {k: None if v is None else v.shape for k, v in fresh.items()}
        if shapes != want:
            raise ValueError(
                f"warm_start: the parameters to start from have shapes {shapes}, these settings "
                f"and vocabulary need {want}"
            )
        return _copy_params(have)

    def _project(self) -> None:
        r = self.params_["r"]
        if r.ndim == 1:
            np.clip(r, -R_MAX, R_MAX, out=r)
        if self.max_norm:
            max_norm_rows(self.params_["E"], self.max_norm)
            if self.params_.get("W") is not None:
                max_norm_rows(self.params_["W"], self.max_norm)

    # -- evaluation -----------------------------------------------------------------------------

    def log_probs(self, tokens: np.ndarray) -> np.ndarray:
        """Exact log P (nats) of ``tokens[1:]`` (n-1,) reading the stream from a zero state."""
        self._check_fitted()
        return stream_log_probs(
            self.params_, np.asarray(tokens, dtype=np.int64), classes=self.classes_
        )[0]

    def perplexity(self, tokens: np.ndarray) -> float:
        """Exact full-softmax perplexity of ``tokens[1:]``."""
        return float(np.exp(-self.log_probs(tokens).mean()))

    def dynamic_log_probs(
        self,
        tokens: np.ndarray,
        learning_rate: float = 0.05,
        chunk: int = 20,
        progress: bool = False,
        decay: float = 0.0,
        rms: dict | None = None,
        eps: float = 2e-5,
    ) -> np.ndarray:
        """Dynamic evaluation: log P of ``tokens[1:]`` while training online on the stream.

        The stream is cut into windows of ``chunk`` predictions. Each window is scored with the
        current parameters first; only then is one SGD step (:func:`dynamic_step`: exact
        full-softmax gradient summed over the window, BPTT inside it) taken on it. So no token
        ever influences the parameters that score it. After each step the parameters move back
        towards the fitted ones by ``decay`` of the difference (Krause et al. 2018's decay to the
        global prior: what the stream taught fades, so a larger step can be taken); 0 keeps every
        step. The fitted parameters are left untouched (a float32 copy is adapted).

        With ``rms`` (each parameter's gradient RMS over training windows, :func:`gradient_rms`)
        the step is instead Krause et al.'s (2018) RMS-normalised one (:func:`rms_dynamic_step`):
        the gradient of the window's mean loss divided by ``rms + eps`` times ``learning_rate``,
        and a decay of ``decay`` scaled per weight by its RMS (:func:`rms_rates`).
        """
        self._check_fitted()
        if chunk < 1 or learning_rate < 0:
            raise ValueError("chunk must be >= 1 and learning_rate >= 0")
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"decay must be in [0, 1], got {decay}")
        tokens = np.asarray(tokens, dtype=np.int64)
        params = _copy_params(self.params_, np.float32)
        fitted = _copy_params(self.params_, np.float32) if decay > 0 or rms is not None else None
        if rms is not None:
            names = {k for k, v in params.items() if v is not None}
            if set(rms) != names:
                raise ValueError(f"rms must have the parameters {sorted(names)}, got {sorted(rms)}")
            rates, inv_rms = rms_rates(rms, decay, eps)
        H = params["E"].shape[1]
        h = np.zeros((1, H), np.float32)
        out = np.empty(len(tokens) - 1, np.float64)
        starts = range(0, len(tokens) - 1, chunk)
        if progress:
            from tqdm import tqdm

            starts = tqdm(starts, desc="dynamic eval", unit="win")
        for s in starts:
            e = min(s + chunk, len(tokens) - 1)
            X, Y = tokens[s:e], tokens[s + 1 : e + 1]
            if rms is not None:
                out[s:e], h = rms_dynamic_step(
                    params, fitted, X, Y, h, learning_rate, rates, inv_rms, self.classes_
                )
                continue
            out[s:e], h = dynamic_step(params, X, Y, h, learning_rate, classes=self.classes_)
            if fitted is not None:
                for k, p in params.items():
                    if p is not None:
                        p += np.float32(decay) * (fitted[k] - p)
        return out

    def next_word_log_probs(self, context: np.ndarray) -> np.ndarray:
        """Log-probabilities (V,) of the word after the id sequence ``context`` (from zero state)."""
        self._check_fitted()
        context = np.asarray(context, dtype=np.int64)
        H = self.params_["E"].shape[1]
        if context.size == 0:
            return next_word_log_probs(self.params_, np.zeros(H, np.float32), self.classes_)
        x = self.params_["E"][context][:, None, :].astype(np.float32)
        h = recur(x, self.params_["r"].astype(np.float32), np.zeros((1, H), np.float32))
        return next_word_log_probs(self.params_, h[-1, 0], self.classes_)

    def calibrate(self, tokens: np.ndarray) -> tuple[float, float, float]:
        """Fit one factor on every logit to ``tokens`` (held-out text) and fold it into the weights.

        :func:`fit_logit_scale` finds the factor ``a``; ``P`` and ``c`` are multiplied by it, so the
        model stays an R-GLM of the same shape whose logits are ``a`` times the old ones (the input
        side, ``E`` and ``R``, is unchanged). ``logit_scale_`` accumulates the factors folded in so
        far.

        Returns
        -------
        a : float
        ppl_before, ppl_after : float
            Perplexity of ``tokens[1:]`` before and after.
        """
        self._check_fitted()
        if self.classes_ is not None:
            raise ValueError("calibrate: class-factorised output layers are not supported")
        a, before, after = fit_logit_scale(self.params_, tokens)
        self.params_["P"] = (self.params_["P"] * np.float32(a)).astype(self.params_["P"].dtype)
        self.params_["c"] = (self.params_["c"] * np.float32(a)).astype(self.params_["c"].dtype)
        self.logit_scale_ = getattr(self, "logit_scale_", 1.0) * a
        return a, float(np.exp(before)), float(np.exp(after))

    def timescales(self) -> np.ndarray:
        """Unit timescales in words (H,), ``-1/log|r|``."""
        self._check_fitted()
        return timescales(self.params_["r"])

    # -- persistence ----------------------------------------------------------------------------

    def get_config(self) -> dict:
        keys = [
            "n_hidden",
            "recurrence",
            "tied",
            "dropout_input",
            "dropout_hidden",
            "dropout_words",
            "max_norm",
            "bptt",
            "batch_size",
            "n_samples",
            "n_classes",
            "class_power",
            "optimizer",
            "learning_rate",
            "momentum",
            "anneal",
            "n_epochs",
            "average_from",
            "anneal_while_averaging",
            "time_limit",
            "warm_start",
            "seed",
        ]
        return {k: getattr(self, k) for k in keys}

    def save(
        self,
        path: str | Path,
        half: bool | None = None,
        meta: dict | None = None,
        int8: bool | None = None,
        half_p: bool | None = None,
    ) -> Path:
        """Write the fitted model to one ``.npz``; word vectors in float16 when ``half``.

        Each of ``half``, ``int8`` and ``half_p`` left ``None`` keeps how a loaded model was stored
        (``word_storage_``, ``p_storage_``: saving the shipped int8 model gives it back unchanged,
        where float16 changed its scores and grew the file by 60 %); for a model fitted here they
        default to float16 word vectors and a float32 ``P``.

        With ``int8`` the word vectors (``E``, and ``W`` when untied) are stored as int8 with one
        float32 scale per word (symmetric, :func:`quantize_rows`: each entry within half a step
        ``max|row| / 127`` of its value), half the bytes of float16, so a larger model fits the
        same file size; ``half`` is then ignored. ``P`` stays float32 unless ``half_p`` (float16:
        on the H=700 model of the PTB table, valid perplexity 119.8843 against 119.8844), ``r``
        always: float16 cannot resolve ``r`` near 1 (long timescales). :meth:`load` reads every
        variant.
        """
        self._check_fitted()
        stored = getattr(self, "word_storage_", None)
        if int8 is None:
            int8 = stored == "int8"
        if half is None:
            half = stored in (None, "float16")
        if half_p is None:
            half_p = getattr(self, "p_storage_", "float32") == "float16"
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        big = np.float16 if half else np.float32

        def words(name: str) -> dict:
            if not int8:
                return {name: self.params_[name].astype(big)}
            q, scale = quantize_rows(self.params_[name])
            return {name: q, f"{name}_scale": scale}

        arrays = {
            **words("E"),
            "P": self.params_["P"].astype(np.float16 if half_p else np.float32),
            "r": self.params_["r"].astype(np.float32),
            "c": self.params_["c"].astype(np.float32),
            "vocab": np.array(self.vocab_.words),
            "config": np.array(json.dumps({**self.get_config(), **(meta or {})})),
        }
        if self.params_.get("W") is not None:
            arrays.update(words("W"))
        if self.classes_ is not None:
            arrays["Wc"] = self.params_["Wc"].astype(np.float32)
            arrays["bc"] = self.params_["bc"].astype(np.float32)
            arrays["word_class"] = self.classes_.word_class.astype(np.int16)
        np.savez_compressed(path, **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> LinearRecurrentLM:
        """Load a model written by :meth:`save` (parameters as float32 for computing).

        int8 word vectors are dequantised (:func:`dequantize_rows`); ``word_storage_`` records
        how they were stored.
        """
        path = Path(path)
        with open_weights(path) as z:
            config = json.loads(str(z["config"]))
            init_keys = cls().get_config().keys()
            model = cls(**{k: v for k, v in config.items() if k in init_keys})
            model.meta_ = config
            model.vocab_ = Vocabulary([str(w) for w in z["vocab"]])
            model.word_storage_ = str(z["E"].dtype)  # int8, float16 or float32
            model.p_storage_ = str(z["P"].dtype)  # float16 or float32
            model.params_ = {
                "E": _stored_words(z, "E"),
                "W": _stored_words(z, "W") if "W" in z.files else None,
                "P": z["P"].astype(np.float32),
                "r": z["r"].astype(np.float32),
                "c": z["c"].astype(np.float32),
            }
            model.classes_ = None
            if "word_class" in z.files:
                model.classes_ = WordClasses(z["word_class"])
                model.params_["Wc"] = z["Wc"].astype(np.float32)
                model.params_["bc"] = z["bc"].astype(np.float32)
        return model

    def _check_resumable(self, path: Path, meta: dict) -> None:
        """Refuse a checkpoint written with other settings (or words): resumed, it trained the
        checkpoint's model and saved it under this one's settings and command. The epochs and the
        time limit may change between runs (a run extended, a job split)."""
        mine = self.get_config()
        differ = [
            f"{k} {v!r} (now {mine.get(k)!r})"
            for k, v in meta.get("config", {}).items()
            if k not in ("n_epochs", "time_limit") and mine.get(k) != v
        ]
        if meta.get("vocab") != self.vocab_.words:
            differ.append("another vocabulary")
        if differ:
            raise ValueError(
                f"the checkpoint {path} is of a run with other settings: {', '.join(differ)}; "
                "resume with that run's settings, or give another --checkpoint to start anew"
            )

    def _save_checkpoint(self, path: Path, state: dict) -> None:
        opt = state["opt"]
        arrays = {f"p_{k}": v for k, v in self.params_.items() if v is not None}
        arrays.update({f"m_{k}": v for k, v in opt.m.items()})
        arrays.update({f"v_{k}": v for k, v in opt.v.items()})
        if state["best_params"] is not None:
            arrays.update({f"b_{k}": v for k, v in state["best_params"].items() if v is not None})
        if state["avg_sum"] is not None:
            arrays.update({f"a_{k}": v for k, v in state["avg_sum"].items()})
        arrays["h"] = state["h"]
        meta = {
            "epoch": state["epoch"],
            "pos": state["pos"],
            "total": state["total"],
            "count": state["count"],
            "epoch_seconds": state["epoch_seconds"],
            "best": state["best"],
            "history": state["history"],
            "avg_count": state["avg_count"],
            "lr": opt.lr,
            "step": opt.step,
            "rng": state["rng"].bit_generator.state,
            "config": self.get_config(),
            "vocab": self.vocab_.words,
        }
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, meta=np.array(json.dumps(meta)), **arrays)
        tmp.replace(path)

    def _load_checkpoint(self, path: Path) -> dict:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            self._check_resumable(path, meta)
            self.params_ = {k: z[f"p_{k}"] if f"p_{k}" in z.files else None for k in NAMES}
            opt = _Optimizer(self.optimizer, meta["lr"], self.momentum, step=meta["step"])
            opt.m = {k[2:]: z[k] for k in z.files if k.startswith("m_")}
            opt.v = {k[2:]: z[k] for k in z.files if k.startswith("v_")}
            best_params = None
            if any(k.startswith("b_") for k in z.files):
                best_params = {k: z[f"b_{k}"] if f"b_{k}" in z.files else None for k in NAMES}
            avg_sum = {k[2:]: z[k] for k in z.files if k.startswith("a_")} or None
            h = z["h"]
        rng = np.random.default_rng()
        rng.bit_generator.state = meta["rng"]
        return {
            "epoch": meta["epoch"],
            "pos": meta["pos"],
            "h": h,
            "total": meta["total"],
            "count": meta["count"],
            "epoch_seconds": meta["epoch_seconds"],
            "opt": opt,
            "best": meta["best"],
            "best_params": best_params,
            "history": meta["history"],
            "rng": rng,
            "avg_sum": avg_sum,
            "avg_count": meta.get("avg_count", 0),
        }


def quantize_rows(M: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 quantisation of each row of ``M`` (n, d) with its own float32 scale.

    ``scale = max|row| / 127`` and ``q = round(row / scale)``, so ``q * scale`` is within half a
    step (``scale / 2``) of every entry and the largest entry of each row is exact up to float32
    rounding. An all-zero row gets scale 0 and codes 0.
    """
    M = np.asarray(M, dtype=np.float32)
    scale = (np.abs(M).max(axis=1) / np.float32(127)).astype(np.float32)
    step = np.where(scale > 0, scale, np.float32(1))[:, None]
    q = np.clip(np.rint(M / step), -127, 127).astype(np.int8)
    return q, scale


def dequantize_rows(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """float32 rows ``q * scale`` from :func:`quantize_rows`."""
    return q.astype(np.float32) * np.asarray(scale, dtype=np.float32)[:, None]


WEIGHT_ARRAYS = frozenset({"config", "vocab", "E", "P", "r", "c"})


def open_weights(path: str | Path):
    """The weights file at ``path``, opened (an ``NpzFile``, to use as a context manager).

    ``FileNotFoundError`` when there is none; ``ValueError`` naming the file when it is not an .npz of
    R-GLM weights (an empty file, a JSON file, a video job's motion.npz), and never numpy's advice to
    load it with ``allow_pickle``, which would run code from the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"language model weights {path} not found")
    not_weights = (
        f"{path} is not a language-model weights file (an .npz written by `v1motion lm train`)"
    )
    try:
        z = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile):
        raise ValueError(not_weights) from None
    if not isinstance(z, np.lib.npyio.NpzFile):  # one .npy array
        raise ValueError(not_weights)
    missing = WEIGHT_ARRAYS - set(z.files)
    if missing:
        z.close()
        raise ValueError(f"{not_weights}: it has no {', '.join(sorted(missing))}")
    return z


def _stored_words(z, name: str) -> np.ndarray:
    """Word vectors ``name`` of an open ``.npz`` as float32 (int8 ones dequantised)."""
    if f"{name}_scale" in z.files:
        return dequantize_rows(z[name], z[f"{name}_scale"])
    return z[name].astype(np.float32)


def _dropout_mask(rng: np.random.Generator, shape, p: float) -> np.ndarray | None:
    if p <= 0:
        return None
    return (rng.random(shape, dtype=np.float32) >= p).astype(np.float32) / np.float32(1 - p)


def _word_dropout(rng, X, n_words: int, p: float, m_in, shape) -> np.ndarray:
    """``m_in`` (or ones) times a word-type mask: each of the ``n_words`` types kept with
    probability ``1 - p`` (scaled by ``1/(1-p)``) or dropped, the same at every occurrence in ``X``."""
    keep = (rng.random(n_words, dtype=np.float32) >= p).astype(np.float32) / np.float32(1 - p)
    per_token = keep[X][..., None]
    return np.broadcast_to(per_token, shape).copy() if m_in is None else m_in * per_token


def _clip_global(grads: dict, max_norm: float) -> None:
    total = np.sqrt(sum(float(np.vdot(g, g)) for g in grads.values()))
    if total > max_norm:
        for g in grads.values():
            g *= max_norm / total


def _accumulate(state: dict, params: dict) -> None:
    """Add the current parameters to the float64 running sum of the averaged iterates."""
    if state["avg_sum"] is None:
        state["avg_sum"] = {
            k: np.zeros(v.shape, np.float64) for k, v in params.items() if v is not None
        }
    for k, s in state["avg_sum"].items():
        s += params[k]
    state["avg_count"] += 1


def _mean_params(state: dict, like: dict) -> dict:
    """The running mean of the averaged iterates, as a parameter dict in the dtypes of ``like``."""
    n = state["avg_count"]
    return {
        k: None if v is None else (state["avg_sum"][k] / n).astype(v.dtype) for k, v in like.items()
    }


def _copy_params(params: dict, dtype=None) -> dict:
    return {
        k: (None if v is None else (v.astype(dtype) if dtype is not None else v.copy()))
        for k, v in params.items()
    }
