"""OpenCV's DIS optical flow on the same frames as the engine, pooled onto the engine's grid.

Only for the dashboard's comparison view (the service computes it when a viewer asks for it); never
an input of the engine.
"""

from __future__ import annotations

import cv2
import numpy as np


def _grey_u8(frame: np.ndarray) -> np.ndarray:
    """The frame as uint8 grey, as DIS needs it (the engine's ``to_grey`` gives float32 in [0, 1])."""
    if frame.ndim == 3:
        return cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    if frame.dtype != np.uint8:
        return np.clip(frame * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return frame


class DISFlow:
    """Dense flow between successive frames, averaged over ``cell`` x ``cell`` blocks.

    Returns direction (radians, 0 = right, pi/2 = up, as the engine) and speed (px/frame), each
    ``(H // cell, W // cell)``; ``None`` on the first frame or after a size change.
    """

    def __init__(self) -> None:
        self._dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST)
        self._prev: np.ndarray | None = None

    def reset(self) -> None:
        self._prev = None

    def step(self, frame: np.ndarray, cell: int) -> tuple[np.ndarray, np.ndarray] | None:
        grey = _grey_u8(frame)
        prev, self._prev = self._prev, grey
        if prev is None or prev.shape != grey.shape:
            return None
        flow = self._dis.calc(prev, grey, None)
        gh, gw = grey.shape[0] // cell, grey.shape[1] // cell
        if gh == 0 or gw == 0:
            return None
        pooled = flow[: gh * cell, : gw * cell].reshape(gh, cell, gw, cell, 2).mean(axis=(1, 3))
        dx, dy_up = pooled[..., 0], -pooled[..., 1]
        return np.arctan2(dy_up, dx).astype(np.float32), np.hypot(dx, dy_up).astype(np.float32)
