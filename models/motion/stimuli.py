"""Visual stimuli with known motion.

Direction convention everywhere in v1motion: an angle in radians, 0 = moving right, pi/2 = moving up on
screen (counter-clockwise as seen). Image rows grow downwards, so a velocity ``(vx, vy_up)`` moves content by
``+vx`` columns and ``-vy_up`` rows per frame. Speeds are in pixels per frame.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

STILL_NAMES = (
    "camera",
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "grass",
    "gravel",
    "brick",
    "moon",
    "coins",
    "hubble_deep_field",
    "immunohistochemistry",
    "cell",
    "text",
    "page",
)
TRAIN_STILLS = (
    "camera",
    "astronaut",
    "coffee",
    "grass",
    "brick",
    "moon",
    "coins",
    "hubble_deep_field",
    "immunohistochemistry",
    "cell",
)
HELDOUT_STILLS = ("chelsea", "rocket", "gravel")


@lru_cache(maxsize=32)
def _load_still_cached(name: str) -> np.ndarray:
    import skimage.data

    if name not in STILL_NAMES:
        raise ValueError(f"unknown still {name!r}; choose one of {', '.join(STILL_NAMES)}")
    img = getattr(skimage.data, name)()
    img = np.asarray(img)
    if img.ndim == 3:
        img = cv2.cvtColor(img[..., :3].astype(np.uint8), cv2.COLOR_RGB2GRAY)
    img = img.astype(np.float32)
    lo, hi = float(img.min()), float(img.max())
    img = (img - lo) / max(hi - lo, 1e-6)
    img.setflags(write=False)
    return img


def load_still(name: str) -> np.ndarray:
    """A grey scikit-image still as float32 in [0, 1] (read-only, cached)."""
    return _load_still_cached(name)


def direction_vector(direction: float) -> tuple[float, float]:
    """Unit velocity ``(dx_columns, dy_rows)`` in image coordinates for a direction in radians."""
    return float(np.cos(direction)), float(-np.sin(direction))


def pan_frame(
    image: np.ndarray, center_xy: tuple[float, float], shape: tuple[int, int]
) -> np.ndarray:
    """Sub-pixel bilinear crop of ``image`` of size ``shape = (H, W)`` centred at ``(cx, cy)``."""
    h, w = shape
    img = np.ascontiguousarray(image, dtype=np.float32)
    return cv2.getRectSubPix(img, (int(w), int(h)), (float(center_xy[0]), float(center_xy[1])))


def pan_sequence(
    image: np.ndarray,
    start_xy: tuple[float, float],
    direction: float,
    speed: float,
    n_frames: int,
    shape: tuple[int, int],
) -> np.ndarray:
    """Frames ``(T, H, W)`` of ``image`` panned so the content moves at ``speed`` px/frame in ``direction``.

    The crop window moves against the motion: content moving right means the window moves left.
    """
    dx, dy = direction_vector(direction)
    frames = np.empty((n_frames, shape[0], shape[1]), np.float32)
    for t in range(n_frames):
        frames[t] = pan_frame(
            image, (start_xy[0] - dx * speed * t, start_xy[1] - dy * speed * t), shape
        )
    return frames


def pan_margin(speed: float, n_frames: int, shape: tuple[int, int]) -> float:
    """Distance from the image border the pan's start must keep so every crop stays inside."""
    return speed * n_frames + max(shape) / 2 + 2


def random_pan_start(
    image: np.ndarray, direction: float, speed: float, n_frames: int, shape, rng
) -> tuple[float, float]:
    """A start centre such that the whole pan stays inside the image."""
    dx, dy = direction_vector(direction)
    h, w = image.shape
    half_h, half_w = shape[0] / 2 + 1, shape[1] / 2 + 1
    travel_x, travel_y = -dx * speed * (n_frames - 1), -dy * speed * (n_frames - 1)
    lo_x = half_w + max(0.0, -travel_x)
    hi_x = w - half_w - max(0.0, travel_x)
    lo_y = half_h + max(0.0, -travel_y)
    hi_y = h - half_h - max(0.0, travel_y)
    if hi_x <= lo_x or hi_y <= lo_y:
        raise ValueError("image too small for this pan")
    return float(rng.uniform(lo_x, hi_x)), float(rng.uniform(lo_y, hi_y))


def _along(shape: tuple[int, int], direction: float) -> np.ndarray:
    h, w = shape
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    # Coordinates with y pointing up so the angle convention matches the screen.
    return x * np.float32(np.cos(direction)) - y * np.float32(np.sin(direction))


def grating_frame(
    shape: tuple[int, int],
    direction: float,
    speed: float,
    period: float,
    t: float,
    kind: str = "square",
    phase: float = 0.0,
) -> np.ndarray:
    """One frame of a drifting grating, float32 in [0, 1].

    ``kind="square"`` is a tanh-sharpened square wave (sharp edges, but no single-pixel aliasing at
    sub-pixel speeds); ``"sine"`` is a sinusoid.
    """
    if period <= 0:
        raise ValueError("period must be positive")
    arg = 2 * np.pi * (_along(shape, direction) - speed * t) / period + phase
    s = np.sin(arg)
    if kind == "square":
        s = np.tanh(4.0 * s)
    elif kind != "sine":
        raise ValueError(f"unknown grating kind {kind!r}; choose 'square' or 'sine'")
    return (0.5 + 0.5 * s).astype(np.float32)


def grating_sequence(shape, direction, speed, period, n_frames, kind="square", phase=0.0):
    """``(T, H, W)`` frames of a drifting grating."""
    return np.stack(
        [grating_frame(shape, direction, speed, period, t, kind, phase) for t in range(n_frames)]
    )


def gabor_sequence(shape, direction, speed, period, n_frames, sigma=None, phase=0.0):
    """A drifting Gabor: a sine grating moving under a fixed Gaussian window centred in the frame."""
    h, w = shape
    sigma = sigma or min(h, w) / 4
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    env = np.exp(-((x - (w - 1) / 2) ** 2 + (y - (h - 1) / 2) ** 2) / (2 * sigma**2))
    g = grating_sequence(shape, direction, speed, period, n_frames, "sine", phase) - 0.5
    return (0.5 + env * g).astype(np.float32)


def bar_sequence(shape, direction, speed, n_frames, width=3.0, start=None):
    """A bright bar, orthogonal to ``direction``, moving across a grey background."""
    along = _along(shape, direction)
    start = float(along.min()) if start is None else start
    frames = np.empty((n_frames, *shape), np.float32)
    for t in range(n_frames):
        d = along - (start + speed * t)
        frames[t] = 0.5 + 0.5 * np.clip(1.0 - np.abs(d) / (width / 2), 0.0, 1.0)
    return frames
