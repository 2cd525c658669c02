"""Per-video summaries of a sequence of motion maps: direction histogram, main directions, speed over time.

A motion map (one per frame) is three grids of the same shape: ``direction`` (radians, 0 = moving right,
pi/2 = moving up on screen), ``speed`` (pixels per frame) and ``confidence`` (in [0, 1], 0 where nothing
moves). The summaries weight every grid cell by its confidence, so still background counts for nothing.

A video's motion is described by its *main directions*: the peaks of the confidence-weighted histogram
of the confident cells' directions, each with its share of the moving mass and its median speed. A mean
direction would not do: a box moved up and then down-left has a mean direction of about 160 degrees,
where nothing moved.
"""

from __future__ import annotations

import numpy as np

from v1motion.models.motion.engine import MOVING_FROM, shown_moving

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


def smooth_circular(hist, sigma_bins: float) -> np.ndarray:
    """Gaussian smoothing of a histogram on the circle (the last bin neighbours the first).

    Parameters
    ----------
    hist : array_like, shape (n_bins,)
    sigma_bins : float
        Standard deviation of the Gaussian in bins; 0 returns a copy.

    Returns
    -------
    ndarray, shape (n_bins,)
        Same total as ``hist``.
    """
    hist = np.asarray(hist, dtype=np.float64)
    n = len(hist)
    if sigma_bins <= 0 or n < 3:
        return hist.copy()
    offsets = np.arange(n)
    gap = np.minimum(offsets, n - offsets)  # circular distance of bin k from bin 0
    kernel = np.exp(-0.5 * (gap / sigma_bins) ** 2)
    kernel /= kernel.sum()
    # circular convolution through the FFT: exact for any n, no edge effects
    return np.real(np.fft.ifft(np.fft.fft(hist) * np.fft.fft(kernel)))


def histogram_peaks(
    hist, min_share: float = 0.10, max_peaks: int = 3, sigma_bins: float = 1.5
) -> list[tuple[int, float, np.ndarray]]:
    """The main peaks of a circular histogram, largest share first.

    The histogram is smoothed (:func:`smooth_circular`); every local maximum of the smoothed histogram
    owns the bins that climb to it (its basin, bounded by the minima on either side). A peak's share is
    its basin's part of the *raw* histogram's total.

    Parameters
    ----------
    hist : array_like, shape (n_bins,)
        Non-negative.
    min_share : float, default 0.10
        Peaks holding less than this fraction of the total are dropped.
    max_peaks : int, default 3
    sigma_bins : float, default 1.5
        Smoothing, in bins.

    Returns
    -------
    list of (peak_bin, share, basin)
        ``basin`` is a boolean mask of shape (n_bins,). Empty if the histogram is all zeros.
    """
    hist = np.asarray(hist, dtype=np.float64)
    total = hist.sum()
    n = len(hist)
    if n == 0 or total <= 0:
        return []
    sm = smooth_circular(hist, sigma_bins)
    sm = np.where(sm > total * 1e-12, sm, 0.0)  # FFT round-off must not make flat zeros bumpy
    if n == 1 or np.ptp(sm) <= 1e-12 * total:  # flat: one "peak" holding everything, no direction
        return [(int(np.argmax(hist)), 1.0, np.ones(n, bool))]
    # Hill climbing: each bin follows its higher neighbour until a local maximum (ties go clockwise,
    # i.e. to the lower index, so a plateau ends at one bin).
    up = np.arange(n)
    left, right = np.roll(sm, 1), np.roll(sm, -1)
    go_left = (left > sm) & (left >= right)
    go_right = (right > sm) & ~go_left
    up = np.where(go_left, (up - 1) % n, np.where(go_right, (up + 1) % n, up))
    top = up.copy()
    for _ in range(n):
        nxt = up[top]
        if np.array_equal(nxt, top):
            break
        top = nxt
    peaks = []
    for b in np.unique(top):
        basin = top == b
        share = float(hist[basin].sum() / total)
        if share > 0 and share >= min_share:  # still, empty stretches are no peak
            peaks.append((int(b), share, basin))
    peaks.sort(key=lambda p: -p[1])
    return peaks[:max_peaks]


def weighted_median(values, weights) -> float:
    """The value at which the cumulative weight reaches half the total (NaN if the total is 0)."""
    values = np.asarray(values, dtype=np.float64).ravel()
    weights = np.asarray(weights, dtype=np.float64).ravel()
    total = weights.sum()
    if total <= 0:
        return float("nan")
    order = np.argsort(values, kind="stable")
    cum = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cum, 0.5 * total)])


class MotionSummary:
    """Accumulate per-frame motion maps into per-video summaries without keeping the frames.

    Parameters
    ----------
    n_bins : int, default 16
        Number of direction bins of ``direction_hist_`` (the figure's histogram).
    moving_threshold : float, default 0.5
        A cell counts as moving when its confidence is above this; only moving cells enter the main
        directions.
    peak_bins : int, default 72
        Direction bins (5 degrees each by default) of the histogram the main directions are found in.
    peak_sigma_deg : float, default 10.0
        Circular Gaussian smoothing of that histogram before its peaks are looked for.
    min_share : float, default 0.10
        A main direction holds at least this fraction of the moving cells' confidence.
    max_peaks : int, default 3
    moving_from : (float, float), default MOVING_FROM
        How far a cell counts in the direction histogram and the speed over time, by its confidence:
        not at all below the first, fully from the second, as the engine's dominant motion and the
        dashboard count cells (the engine's ``MOVING_FROM``).
    min_moving : float, default 12.0
        The main directions need at least this much moving cells' confidence over the whole video
        (cell-frames: 12 is four confident cells for three frames); below it, nothing moved. A few
        cells confident for a frame or two on a still video are not its motion.

    Attributes
    ----------
    direction_hist_ : ndarray, shape (n_bins,)
        Direction histogram over the whole video of the cells as far as they are shown moving
        (``moving_from``), normalised to sum 1 (all zeros if nothing ever moved).
    bin_centres_ : ndarray, shape (n_bins,)
        Radians.
    speed_over_time_ : ndarray, shape (n_frames,)
        Mean speed of each frame (px/frame) over the cells as far as they are shown moving; 0 if none.
    moving_fraction_ : ndarray, shape (n_frames,)
        Fraction of cells moving in each frame.
    main_directions_ : list of dict
        ``{"direction_deg", "share", "median_speed_px_per_frame"}`` per peak, largest share first; empty
        if nothing moved. ``direction_deg`` is the circular mean of the peak's basin (0 = right,
        90 = up on screen); ``share`` its part of the moving cells' confidence; the median speed is read
        from a histogram with log-spaced bins about 9 % wide.

    Notes
    -----
    Every moving cell of every frame adds its confidence to one cell of a joint (direction, log speed)
    histogram. The direction marginal, smoothed on the circle, is split into the basins of its local
    maxima (:func:`histogram_peaks`); the speed histogram of a basin gives the peak's median speed.
    """

    SPEED_EDGES = np.geomspace(1.0 / 64, 64.0, 97)  # px/frame; outside values go to the end bins

    def __init__(
        self,
        n_bins: int = 16,
        moving_threshold: float = 0.5,
        peak_bins: int = 72,
        peak_sigma_deg: float = 10.0,
        min_share: float = 0.10,
        max_peaks: int = 3,
        moving_from: tuple[float, float] = MOVING_FROM,
        min_moving: float = 12.0,
    ):
        if peak_bins < 1:
            raise ValueError(f"peak_bins must be >= 1, got {peak_bins}")
        self.n_bins = n_bins
        self.moving_threshold = moving_threshold
        self.peak_bins = peak_bins
        self.peak_sigma_deg = peak_sigma_deg
        self.min_share = min_share
        self.max_peaks = max_peaks
        self.moving_from = moving_from
        self.min_moving = min_moving
        self._hist = np.zeros(n_bins)
        self._joint = np.zeros((peak_bins, len(self.SPEED_EDGES) - 1))
        self._speeds: list[float] = []
        self._moving: list[float] = []

    def update(self, direction, speed, confidence) -> MotionSummary:
        """Add one frame's grids (all of the same shape). Returns self."""
        direction, confidence = _check_grids(direction, confidence)
        speed = np.asarray(speed, dtype=np.float64)
        shown = shown_moving(confidence, self.moving_from)
        self._hist += direction_histogram(direction, shown, self.n_bins)
        self._speeds.append(weighted_mean_speed(speed, shown))
        moving = confidence > self.moving_threshold
        self._moving.append(float(np.mean(moving)))
        if moving.any():
            width = TWO_PI / self.peak_bins
            d = np.floor(np.mod(direction[moving] + width / 2.0, TWO_PI) / width).astype(np.int64)
            d %= self.peak_bins
            n_speed = self._joint.shape[1]
            v = np.searchsorted(self.SPEED_EDGES, speed[moving], side="right") - 1
            v = np.clip(v, 0, n_speed - 1)
            self._joint += np.bincount(
                d * n_speed + v, weights=confidence[moving], minlength=self._joint.size
            ).reshape(self._joint.shape)
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
    def main_directions_(self) -> list[dict]:
        marginal = self._joint.sum(axis=1)
        if marginal.sum() < self.min_moving:
            return []
        sigma = self.peak_sigma_deg / (360.0 / self.peak_bins)
        centres = direction_bin_centres(self.peak_bins)
        speed_centres = np.sqrt(self.SPEED_EDGES[:-1] * self.SPEED_EDGES[1:])
        out = []
        for _, share, basin in histogram_peaks(marginal, self.min_share, self.max_peaks, sigma):
            mean = circular_mean(centres[basin], marginal[basin])
            speed = weighted_median(speed_centres, self._joint[basin].sum(axis=0))
            out.append(
                {
                    "direction_deg": None if np.isnan(mean) else round(float(np.degrees(mean)), 1),
                    "share": round(share, 3),
                    "median_speed_px_per_frame": round(speed, 3),
                }
            )
        return out

    def to_dict(self) -> dict:
        """JSON-able summary (rounded); units in the field names."""
        return {
            "n_frames": self.n_frames,
            "main_directions": self.main_directions_,
            "direction_bins_deg": np.round(np.degrees(self.bin_centres_), 3).tolist(),
            "direction_hist": np.round(self.direction_hist_, 5).tolist(),
            "speed_over_time_px_per_frame": np.round(self.speed_over_time_, 4).tolist(),
            "moving_fraction": np.round(self.moving_fraction_, 4).tolist(),
        }
