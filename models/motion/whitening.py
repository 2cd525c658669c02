"""ZCA whitening fitted on natural-movie patches, applied to whole frames as a convolution.

A ZCA matrix is symmetric and, for stationary images, nearly shift-invariant: its central row, read as
a ``Q x Q`` image, is a whitening filter. Convolving a whole frame with it whitens every patch of the
frame at once, so live frames need no per-patch loop.
"""

from __future__ import annotations

import cv2
import numpy as np

from v1motion.models.determinism import single_threaded
from v1motion.models.estimator import NotFittedError, Params


def extract_patches(frames: np.ndarray, size: int, n: int, rng) -> np.ndarray:
    """``n`` random ``size x size`` patches from ``frames`` ``(T, H, W)``, flattened to ``(n, size*size)``."""
    frames = np.asarray(frames, np.float32)
    if frames.ndim == 2:
        frames = frames[None]
    t, h, w = frames.shape
    if h < size or w < size:
        raise ValueError(f"frames of {h}x{w} are smaller than the patch size {size}")
    ti = rng.integers(0, t, n)
    yi = rng.integers(0, h - size + 1, n)
    xi = rng.integers(0, w - size + 1, n)
    out = np.empty((n, size * size), np.float32)
    for k in range(n):
        out[k] = frames[ti[k], yi[k] : yi[k] + size, xi[k] : xi[k] + size].ravel()
    return out


def zca_matrix(patches: np.ndarray, eps_rel: float = 0.05, floor_rel: float = 1e-10) -> np.ndarray:
    """ZCA matrix ``Z = U (S + eps)^-1/2 U^T`` of mean-removed patches.

    Parameters
    ----------
    patches : ndarray, shape (n, d)
    eps_rel : float
        Regulariser added to every eigenvalue, as a fraction of the mean eigenvalue.
    floor_rel : float
        Eigenvalues at or below ``floor_rel * max eigenvalue`` are numerically zero (removing each
        patch's mean leaves one such direction): they get gain 0 instead of ``1/sqrt(rounding
        error)``, so the result does not depend on the sign of a rounding error.

    Returns
    -------
    ndarray, shape (d, d)
    """
    x = np.asarray(patches, np.float64)
    x = x - x.mean(axis=1, keepdims=True)
    cov = x.T @ x / len(x)
    s, u = np.linalg.eigh(cov)
    keep = s > floor_rel * max(float(s.max()), 0.0)
    if not keep.any():
        raise ValueError("patches have no variance: cannot fit a whitening matrix")
    eps = eps_rel * s[keep].sum() / len(s)
    gain = np.zeros_like(s)
    gain[keep] = 1.0 / np.sqrt(s[keep] + eps)
    return (u * gain) @ u.T


def patch_grid(frame: np.ndarray, size: int) -> np.ndarray:
    """Non-overlapping ``size x size`` patches of a 2-D array, ``(rows, cols, size*size)``; no copy loop."""
    h, w = frame.shape
    gh, gw = h // size, w // size
    f = frame[: gh * size, : gw * size]
    return f.reshape(gh, size, gw, size).transpose(0, 2, 1, 3).reshape(gh, gw, size * size)


class Whitener(Params):
    """Convolutional ZCA whitening.

    Parameters
    ----------
    size : int
        Side of the patches the ZCA is fitted on; the filter has this size (odd).
    eps_rel : float
        Regulariser of the ZCA as a fraction of the mean eigenvalue.

    Attributes
    ----------
    kernel_ : ndarray, shape (size, size)
        The whitening filter (zero sum, so it also removes the local mean).
    scale_ : float
        Gain such that whitened ``P x P`` patches of training frames have ``E||y||^2 = P*P``.
    """

    def __init__(self, size: int = 9, eps_rel: float = 0.05):
        if size % 2 != 1:
            raise ValueError("the whitening filter size must be odd")
        self.size = size
        self.eps_rel = eps_rel

    @single_threaded()
    def fit(self, movies, n_patches: int = 50_000, seed: int = 0) -> Whitener:
        """Fit on one array of frames ``(T, H, W)`` / ``(H, W)`` or a list of them (sampled equally).

        Deterministic given ``seed``: it runs on one BLAS and one OpenCV thread.
        """
        rng = np.random.default_rng(seed)
        movies = [movies] if isinstance(movies, np.ndarray) else list(movies)
        per = max(1, n_patches // len(movies))
        patches = np.concatenate([extract_patches(m, self.size, per, rng) for m in movies])
        z = zca_matrix(patches, self.eps_rel)
        centre = (self.size * self.size) // 2
        k = z[centre].reshape(self.size, self.size)
        self.kernel_ = (k - k.mean()).astype(np.float32)
        power = [np.mean(self._filter(np.asarray(m, np.float32)) ** 2) for m in movies]
        self.scale_ = float(1.0 / np.sqrt(np.mean(power) + 1e-12))
        return self

    def _filter(self, frames: np.ndarray) -> np.ndarray:
        if frames.ndim == 2:
            return cv2.filter2D(frames, cv2.CV_32F, self.kernel_, borderType=cv2.BORDER_REFLECT)
        return np.stack([self._filter(f) for f in frames])

    def transform_rows(self, frame: np.ndarray, out: np.ndarray, r0: int, r1: int) -> None:
        """Rows ``r0 <= r < r1`` of ``transform(frame)`` for one ``(H, W)`` frame, written to the same
        rows of ``out``: the band is filtered with half the filter's rows of real neighbours on each side,
        so every value is the one the whole-frame filter gives (a band per thread splits the work)."""
        if not hasattr(self, "kernel_"):
            raise NotFittedError("Whitener is not fitted: call fit() or load one")
        pad = self.kernel_.shape[0] // 2
        a, b = max(0, r0 - pad), min(frame.shape[0], r1 + pad)
        band = self._filter(np.asarray(frame[a:b], np.float32))
        np.multiply(band[r0 - a : r1 - a], np.float32(self.scale_), out=out[r0:r1])

    def transform(self, frames: np.ndarray) -> np.ndarray:
        """Whiten ``(H, W)`` or ``(T, H, W)`` frames (float in [0, 1]); unit variance per pixel."""
        if not hasattr(self, "kernel_"):
            raise NotFittedError("Whitener is not fitted: call fit() or load one")
        out = self._filter(np.asarray(frames, np.float32))
        out *= np.float32(self.scale_)  # in place: the same float32 products, one array fewer
        return out
