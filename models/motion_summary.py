"""Per-video summaries of a sequence of motion maps: direction histogram and speed over time.

A motion map (one per frame) is three grids of the same shape: ``direction`` (radians, 0 = moving right,
pi/2 = moving up on screen), ``speed`` (pixels per frame) and ``confidence`` (in [0, 1], 0 where nothing
moves). The summaries weight every grid cell by its confidence, so still background counts for nothing.
"""

from __future__ import annotations

import numpy as np

TWO_PI = 2.0 * np.pi


def direction_bin_centres(n_bins: int) -> np.ndarray:
    """Centres of ``n_bins`` equal direction bins, the first centred on 0 (moving right).

    Returns
    -------
    ndarray, shape (n_bins,)
        Radians in [0, 2 pi).
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    return np.arange(n_bins) * (TWO_PI / n_bins)


def _check_grids(direction, weight) -> tuple[np.ndarray, np.ndarray]:
    direction = np.asarray(direction, dtype=np.float64)
    weight = np.asarray(weight, dtype=np.float64)
    if direction.shape != weight.shape:
        raise ValueError(
            f"direction and weight must have the same shape, got {direction.shape} and {weight.shape}"
        )
    if not (np.all(np.isfinite(direction)) and np.all(np.isfinite(weight))):
        raise ValueError("direction and weight must be finite (found NaN or inf)")
    if np.any(weight < 0):
        raise ValueError("weights must be >= 0")
    return direction, weight


def direction_histogram(direction, weight, n_bins: int) -> np.ndarray:
    """Weighted histogram of directions in ``n_bins`` bins centred on :func:`direction_bin_centres`.

    Parameters
    ----------
    direction : array_like, any shape
        Radians; any real value (wrapped modulo 2 pi).
    weight : array_like, same shape as ``direction``
        Non-negative weights (typically the confidence).
    n_bins : int

    Returns
    -------
    ndarray, shape (n_bins,)
        Sum of the weights falling in each bin (not normalised).
    """
    direction, weight = _check_grids(direction, weight)
    width = TWO_PI / n_bins
    idx = np.floor(np.mod(direction + width / 2.0, TWO_PI) / width).astype(np.int64) % n_bins
    return np.bincount(idx.ravel(), weights=weight.ravel(), minlength=n_bins)


def weighted_mean_speed(speed, weight) -> float:
    """Confidence-weighted mean speed of one frame; 0 when the total weight is 0."""
    speed, weight = _check_grids(speed, weight)
    total = weight.sum()
    return float((speed * weight).sum() / total) if total > 0 else 0.0


def circular_mean(angles, weights) -> float:
    """Weighted circular mean in [0, 2 pi); NaN when the weighted resultant is zero."""
    angles, weights = _check_grids(angles, weights)
    c, s = (weights * np.cos(angles)).sum(), (weights * np.sin(angles)).sum()
    if np.hypot(c, s) <= 1e-12 * max(weights.sum(), 1e-300):
        return float("nan")
    return float(np.mod(np.arctan2(s, c), TWO_PI))


class MotionSummary:
    """Accumulate per-frame motion maps into per-video summaries without keeping the frames.

    Parameters
    ----------
    n_bins : int, default 16
        Number of direction bins.
    moving_threshold : float, default 0.5
        A cell counts as moving when its confidence is above this.

    Attributes
    ----------
    direction_hist_ : ndarray, shape (n_bins,)
        Confidence-weighted direction histogram over the whole video, normalised to sum 1
        (all zeros if nothing ever moved).
    bin_centres_ : ndarray, shape (n_bins,)
    speed_over_time_ : ndarray, shape (n_frames,)
        Confidence-weighted mean speed of each frame (px/frame).
    moving_fraction_ : ndarray, shape (n_frames,)
        Fraction of cells moving in each frame.
    dominant_direction_ : float
        Circular mean of all directions weighted by confidence (radians), NaN if nothing moved.
    """

    def __init__(self, n_bins: int = 16, moving_threshold: float = 0.5):
        self.n_bins = n_bins
        self.moving_threshold = moving_threshold
        self._hist = np.zeros(n_bins)
        self._speeds: list[float] = []
        self._moving: list[float] = []
        self._cs = np.zeros(2)

    def update(self, direction, speed, confidence) -> MotionSummary:
        """Add one frame's grids (all of the same shape). Returns self."""
        direction, confidence = _check_grids(direction, confidence)
        self._hist += direction_histogram(direction, confidence, self.n_bins)
        self._speeds.append(weighted_mean_speed(speed, confidence))
        self._moving.append(float(np.mean(confidence > self.moving_threshold)))
        self._cs += ((confidence * np.cos(direction)).sum(), (confidence * np.sin(direction)).sum())
        return self

    @property
    def n_frames(self) -> int:
        return len(self._speeds)

    @property
    def direction_hist_(self) -> np.ndarray:
        total = self._hist.sum()
        return self._hist / total if total > 0 else np.zeros(self.n_bins)

    @property
    def bin_centres_(self) -> np.ndarray:
        return direction_bin_centres(self.n_bins)

    @property
    def speed_over_time_(self) -> np.ndarray:
        return np.asarray(self._speeds)

    @property
    def moving_fraction_(self) -> np.ndarray:
        return np.asarray(self._moving)

    @property
    def dominant_direction_(self) -> float:
        c, s = self._cs
        if np.hypot(c, s) <= 1e-12 * max(self._hist.sum(), 1e-300):
            return float("nan")
        return float(np.mod(np.arctan2(s, c), TWO_PI))

    def to_dict(self) -> dict:
        """JSON-able summary (rounded)."""
        dom = self.dominant_direction_
        return {
            "n_frames": self.n_frames,
            "direction_bins_deg": np.round(np.degrees(self.bin_centres_), 3).tolist(),
            "direction_hist": np.round(self.direction_hist_, 5).tolist(),
            "speed_over_time": np.round(self.speed_over_time_, 4).tolist(),
            "moving_fraction": np.round(self.moving_fraction_, 4).tolist(),
            "dominant_direction_deg": None if np.isnan(dom) else round(float(np.degrees(dom)), 3),
        }
