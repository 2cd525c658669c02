"""Banks of spatio-temporal filters: 3-D Gabor motion-energy filters, or any bank given as an array.

A bank is an array ``F`` of shape ``(nt, N, ly, lx)``: ``F[tau, n]`` is the spatial weight filter ``n``
gives to the frame ``tau`` frames in the past, so its output at frame ``t`` and one location is
``x_n^t = sum_tau <F[tau, n], y^{t - tau}>`` with ``y^{t - tau}`` the ``ly x lx`` patch at that location.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

#: Default grid of the motion-energy bank (5 x 8 x 5 x 2 x 4 = 1600 filters).
DEFAULT_SPATIAL_FREQUENCIES = (0.05, 0.08, 0.12, 0.18, 0.25)  # cycles / pixel
DEFAULT_DIRECTIONS = 8  # evenly spaced over 360 degrees
DEFAULT_SPEEDS = (0.25, 0.5, 1.0, 1.5, 2.0)  # pixels / frame (temporal frequency capped at 0.5)
DEFAULT_CENTERS = ((-1.5, -1.5), (1.5, -1.5), (-1.5, 1.5), (1.5, 1.5))  # pixels from patch centre


@dataclass(frozen=True)
class GaborParams:
    """Parameters of one filter of a motion-energy bank (angles in radians, lengths in pixels)."""

    spatial_frequency: float
    direction: float
    speed: float
    phase: float
    center_x: float
    center_y: float


def gabor_filter(p: GaborParams, lx: int, ly: int, nt: int, sigma_t: float, t_peak: float):
    """One 3-D Gabor filter, shape ``(nt, ly, lx)``, unit Euclidean norm.

    ``g(x, y, tau) = exp(-|p - c|^2 / 2 sigma_s^2) exp(-(tau - t_peak)^2 / 2 sigma_t^2)
    cos(2 pi f (u + v tau) + phase)`` with ``u`` the position along the preferred direction and
    ``sigma_s = min(0.5 / f, lx / 4)``. The carrier at lag ``tau`` sits where a pattern moving at
    ``v`` pixels/frame along the direction was ``tau`` frames ago, so the filter prefers that motion.
    """
    xs = np.arange(lx) - (lx - 1) / 2.0 - p.center_x
    ys = np.arange(ly) - (ly - 1) / 2.0 - p.center_y
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    u = xx * np.cos(p.direction) + yy * np.sin(p.direction)
    sigma_s = min(0.5 / p.spatial_frequency, lx / 4.0)
    space = np.exp(-(xx**2 + yy**2) / (2 * sigma_s**2))
    tau = np.arange(nt, dtype=float)[:, None, None]
    time = np.exp(-((tau - t_peak) ** 2) / (2 * sigma_t**2))
    omega = min(p.spatial_frequency * p.speed, 0.5)  # cycles / frame, at most Nyquist
    carrier = np.cos(2 * np.pi * (p.spatial_frequency * u[None] + omega * tau) + p.phase)
    g = space[None] * time * carrier
    return g / np.linalg.norm(g)


def gabor_bank(
    n_filters: int = 1600,
    lx: int = 12,
    ly: int = 12,
    nt: int = 30,
    *,
    spatial_frequencies=DEFAULT_SPATIAL_FREQUENCIES,
    n_directions: int = DEFAULT_DIRECTIONS,
    speeds=DEFAULT_SPEEDS,
    centers=DEFAULT_CENTERS,
    sigma_t: float | None = None,
    t_peak: float = 0.0,
    seed: int = 0,
):
    """A bank of 3-D Gabor motion-energy filters in quadrature pairs.

    The full grid is spatial frequency x direction x speed x centre x 2 phases (0, pi/2). If
    ``n_filters`` is smaller than the grid, whole quadrature pairs are drawn without replacement
    with ``seed`` (so the bank stays spread over all directions, speeds and frequencies).

    Parameters
    ----------
    n_filters : int, default 1600
        Number of filters N; even, at most the grid size (1600 with the defaults).
    lx, ly, nt : int, default 12, 12, 30
        Filter width, height and length in frames.
    sigma_t : float, optional
        Width of the Gaussian temporal envelope in frames; default ``nt / 4``.
    t_peak : float, default 0.0
        Lag (frames) of the temporal envelope's peak. 0 gives a causal filter that weighs the
        newest frames most and fades over ``nt`` frames (the default); ``(nt - 1) / 2`` centres it.

    Returns
    -------
    bank : ndarray, shape (nt, N, ly, lx), float64
    params : list of GaborParams, length N
    """
    for name, v in (("lx", lx), ("ly", ly), ("nt", nt), ("n_directions", n_directions)):
        if int(v) != v or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    sigma_t = nt / 4.0 if sigma_t is None else float(sigma_t)
    if sigma_t <= 0:
        raise ValueError(f"sigma_t must be positive, got {sigma_t}")
    directions = 2 * np.pi * np.arange(n_directions) / n_directions
    pairs = list(itertools.product(spatial_frequencies, directions, speeds, centers))
    n_max = 2 * len(pairs)
    if n_filters < 2 or n_filters % 2 or n_filters > n_max:
        raise ValueError(
            f"n_filters must be an even number between 2 and {n_max} (the size of the grid), "
            f"got {n_filters}"
        )
    if n_filters < n_max:
        keep = np.sort(np.random.default_rng(seed).permutation(len(pairs))[: n_filters // 2])
        pairs = [pairs[i] for i in keep]
    params = [
        GaborParams(f, d, v, phase, cx, cy)
        for (f, d, v, (cx, cy)) in pairs
        for phase in (0.0, np.pi / 2)
    ]
    bank = np.stack([gabor_filter(p, lx, ly, nt, sigma_t, t_peak) for p in params], axis=1)
    return bank, params


def as_bank(array, *, layout: str = "tnyx") -> np.ndarray:
    """Check and convert any bank given as an array to ``(nt, N, ly, lx)`` float64.

    Parameters
    ----------
    array : array_like
        A 4-D array. ``layout`` names its axes: ``"tnyx"`` (lag, filter, y, x; the native layout) or
        ``"ntyx"`` (filter, lag, y, x). A 3-D array ``(nt, N, D)`` is taken as flattened patches.
    """
    a = np.asarray(array, dtype=np.float64)
    if a.ndim == 3:
        side = int(round(np.sqrt(a.shape[2])))
        if side * side != a.shape[2]:
            raise ValueError(
                f"a 3-D bank must be (nt, N, D) with D a square number of pixels, got {a.shape}"
            )
        a = a.reshape(a.shape[0], a.shape[1], side, side)
    if a.ndim != 4:
        raise ValueError(f"a bank must be a 4-D array (nt, N, ly, lx), got shape {a.shape}")
    if layout == "ntyx":
        a = a.transpose(1, 0, 2, 3)
    elif layout != "tnyx":
        raise ValueError(f"layout must be 'tnyx' or 'ntyx', got {layout!r}")
    if not np.all(np.isfinite(a)):
        raise ValueError("the bank contains NaN or infinite values")
    if not np.any(a):
        raise ValueError("the bank is all zeros")
    return np.ascontiguousarray(a)


def load_bank(path, *, key: str = "bank", layout: str = "tnyx") -> np.ndarray:
    """Load a bank from a ``.npy`` file or from array ``key`` of an ``.npz`` file; see :func:`as_bank`."""
    data = np.load(path, allow_pickle=False)
    if isinstance(data, np.lib.npyio.NpzFile):
        with data:
            if key not in data.files:
                raise KeyError(f"{path} has no array {key!r}; it holds {sorted(data.files)}")
            arr = data[key]
    else:
        arr = data
    return as_bank(arr, layout=layout)
