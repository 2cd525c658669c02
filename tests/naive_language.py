"""Slow, obviously-right numpy twins of the language-model Numba kernels."""

import numpy as np


def diag_scan_forward(x, r, h0):
    h = np.empty_like(x)
    prev = h0
    for t in range(x.shape[0]):
        prev = r * prev + x[t]
        h[t] = prev
    return h


def diag_scan_backward(dh, r, h, h0):
    # unroll: h_t = sum_{s<=t} r^(t-s) x_s + r^(t+1) h0, so dL/dx_s = sum_{t>=s} r^(t-s) dh_t
    T = dh.shape[0]
    dx = np.zeros_like(dh)
    for s in range(T):
        for t in range(s, T):
            dx[s] += r ** (t - s) * dh[t]
    # dL/dr = sum_t dh_t * d h_t / d r, with d h_t/d r = h_{t-1} + r d h_{t-1}/d r
    dr = np.zeros_like(r)
    dh_dr = np.zeros_like(h0)
    prev = h0
    for t in range(T):
        dh_dr = prev + r * dh_dr
        dr += (dh[t] * dh_dr).sum(axis=0)
        prev = h[t]
    return dx, dr


def scatter_add_rows(target, rows, values):
    for i, k in enumerate(rows):
        target[k] += values[i]


def adam_update(p, g, m, v, step_size, beta1=0.9, beta2=0.999, eps=1e-8, tiny=1e-30):
    m[...] = beta1 * m + (1 - beta1) * g
    v[...] = beta2 * v + (1 - beta2) * g * g
    m[np.abs(m) < tiny] = 0.0
    v[v < tiny] = 0.0
    p -= step_size * m / (np.sqrt(v) + eps)


def class_softmax(u, y, Wout, c, Wc, bc, word_class):
    """log P(y_i) = log softmax_k(u_i . Wc_k + bc_k)[class(y_i)]
    + log softmax over the words w of that class of (u_i . Wout_w + c_w), one token at a time."""
    out = np.empty(len(y))
    for i in range(len(y)):
        zc = Wc @ u[i] + bc
        k = word_class[y[i]]
        lp_class = zc[k] - np.log(np.sum(np.exp(zc)))
        members = [w for w in range(len(word_class)) if word_class[w] == k]
        zw = np.array([Wout[w] @ u[i] + c[w] for w in members])
        lp_word = Wout[y[i]] @ u[i] + c[y[i]] - np.log(np.sum(np.exp(zw)))
        out[i] = lp_class + lp_word
    return out


def assert_each_position_sums_to_one(model, seq, positions, **kw):
    """Dynamic evaluation still gives every position one distribution over the words: summed by
    brute force, every word put in turn at each of ``positions`` of ``seq`` (``kw`` for
    ``model.dynamic_log_probs``)."""
    n_words = model.params_["E"].shape[0]
    for j in positions:
        total = 0.0
        for v in range(n_words):
            s = np.array(seq).copy()
            s[j] = v
            total += np.exp(model.dynamic_log_probs(s, **kw)[j - 1])
        assert abs(total - 1.0) <= 1e-5, (j, total)
