"""The JSON form of per-cell grids and numbers, shared by :meth:`MotionFrame.to_dict
<v1motion.models.motion.engine.MotionFrame.to_dict>` and the service's optical-flow payload. A light
module (numpy only): the service imports it without loading the engine."""

from __future__ import annotations

import math

import numpy as np


def finite_array(a) -> np.ndarray:
    """``a`` with NaN and infinities as 0 (in its own dtype)."""
    return np.nan_to_num(np.asarray(a), nan=0.0, posinf=0.0, neginf=0.0)


def grid(a, decimals: int) -> list:
    """An array as nested lists of floats rounded to ``decimals``; NaN and infinities as 0 (an
    infinity kept as the largest float would round back to infinity)."""
    return np.round(finite_array(np.asarray(a, dtype=np.float64)), decimals).tolist()


def finite(x, decimals: int) -> float:
    """A number rounded to ``decimals``; NaN and infinities as 0."""
    x = float(x)
    return round(x, decimals) if math.isfinite(x) else 0.0


def whole_degrees(direction) -> list:
    """Directions in radians as nested lists of whole degrees in [0, 360) (0 = right, 90 = up on
    screen); NaN and infinities as 0. ``np.mod`` and ``np.rint`` work in the array's own dtype, then
    whole degrees modulo 360: a direction just under 360 rounds to 0."""
    direction_deg = np.rad2deg(np.mod(finite_array(direction), 2 * np.pi))
    return (np.rint(direction_deg).astype(np.int32) % 360).tolist()
