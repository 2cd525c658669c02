"""Slow, obviously-right numpy twins of the kernels and streams in ``v1motion.models.stfilter``."""

import numpy as np


def masked_row_dots(A, B, rows, cols):
    return (A @ B.T)[rows, cols]


def csr_step(R_dense, x_prev, drive):
    return drive + R_dense @ x_prev


def temporal_ring(ring, h, newest):
    nt, j, p = ring.shape
    out = np.zeros((j, p))
    for tau in range(nt):
        for c in range(j):
            out[c] += h[tau, c] * ring[(newest - tau) % nt, c]
    return out


def filter_video(bank, video):
    """``out[t, n, i, j] = sum_tau sum_{a,b} bank[tau, n, a, b] video[t - tau, i + a, j + b]``,
    with frames before the first taken as zeros. bank (nt, N, ly, lx), video (T, H, W)."""
    nt, n, ly, lx = bank.shape
    T, H, W = video.shape
    out = np.zeros((T, n, H - ly + 1, W - lx + 1))
    for t in range(T):
        for tau in range(min(nt, t + 1)):
            frame = video[t - tau]
            for i in range(H - ly + 1):
                for j in range(W - lx + 1):
                    patch = frame[i : i + ly, j : j + lx]
                    out[t, :, i, j] += np.tensordot(bank[tau], patch, axes=([1, 2], [0, 1]))
    return out


def reconstruction_loss(R, W0, F):
    """``1/2 sum_tau ||R^tau W0 - F_tau||^2`` by explicit matrix powers."""
    loss = 0.0
    for tau in range(F.shape[0]):
        E = np.linalg.matrix_power(R, tau) @ W0 - F[tau]
        loss += 0.5 * np.sum(E**2)
    return loss
