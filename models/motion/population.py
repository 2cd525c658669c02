"""Run the ss-RNN over batches of stimulus movies and pool the population response.

The engine applies the same learned network at several scales of a Gaussian pyramid (level ``l`` sees the
frame shrunk by ``2**l``), as V1 covers several spatial frequencies; a unit at level ``l`` prefers speeds
``2**l`` times higher in input pixels. Every function here takes ``levels`` and returns responses per level.
"""

from __future__ import annotations

import cv2
import numpy as np

from v1motion.models.motion.ssrnn import SSRNN, SparseCode, recurrent_csr
from v1motion.models.motion.whitening import patch_grid


def pyramid(frame: np.ndarray, levels: int) -> list[np.ndarray]:
    """Gaussian pyramid of a float32 frame, finest first."""
    out = [frame]
    for _ in range(levels - 1):
        out.append(cv2.pyrDown(out[-1]))
    return out


def whiten_sequences(model: SSRNN, frames: np.ndarray, level: int, warmup: int = 0) -> np.ndarray:
    """Whitened, contrast-normalised patches ``(S, T, M, D)`` of movies ``frames`` ``(S, T, H, W)``.

    The contrast of each movie is measured on its frames after ``warmup``, the frames that are scored.
    """
    s_n, t_n = frames.shape[:2]
    out = None
    for s in range(s_n):
        white = np.stack(
            [model.whitener_.transform(pyramid(f, level + 1)[level]) for f in frames[s]]
        )
        white = white / max(float(np.sqrt(np.mean(white[warmup:] ** 2))), 1e-3)
        grids = np.stack([patch_grid(w, model.patch) for w in white])  # (T, gh, gw, D)
        if out is None:
            gh, gw, d = grids.shape[1:]
            out = np.empty((s_n, t_n, gh * gw, d), np.float32)
        out[s] = grids.reshape(t_n, -1, grids.shape[-1])
    return out


def pooled_response(
    model: SSRNN, frames: np.ndarray, levels: int = 1, warmup: int = 3, chunk: int = 256
) -> np.ndarray:
    """Mean code ``max(z, 0)`` over patches and frames after ``warmup``: ``(S, levels, N)``.

    ``frames`` is ``(S, T, H, W)`` float32 in [0, 1]; the code is non-negative by construction.
    """
    frames = np.asarray(frames, np.float32)
    s_n, t_n = frames.shape[:2]
    if t_n <= warmup:
        raise ValueError(f"need more than {warmup} frames per movie, got {t_n}")
    n = model.n_units
    G = model.gram()
    csr = recurrent_csr(model.R_)
    resp = np.zeros((s_n, levels, n))
    for lo in range(0, s_n, chunk):
        hi = min(lo + chunk, s_n)
        for level in range(levels):
            y = whiten_sequences(model, frames[lo:hi], level, warmup)  # (S, T, M, D)
            s_c, _, m, d = y.shape
            prev = SparseCode.empty(s_c * m, model.kmax)
            seq_of = np.repeat(np.arange(s_c), m)
            acc = np.zeros(s_c * n)
            for t in range(t_n):
                code = model.infer(y[:, t].reshape(-1, d) @ model.W_, prev, G, csr)
                if t >= warmup:
                    for i in range(int(code.cnt.max(initial=0))):
                        rows = np.nonzero(code.cnt > i)[0]
                        acc += np.bincount(
                            seq_of[rows] * n + code.idx[rows, i],
                            weights=code.val[rows, i],
                            minlength=s_c * n,
                        )
                prev = code
            resp[lo:hi, level] = acc.reshape(s_c, n) / (m * (t_n - warmup))
    return resp
