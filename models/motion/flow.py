"""OpenCV's DIS optical flow on the same frames as the engine, pooled onto the engine's grid.

Only for the dashboard's comparison view (the service computes it when a viewer asks for it); never
an input of the engine.
"""

from __future__ import annotations

import cv2
import numpy as np

CELL_PX = 16
"""The motion map's cell side (px): the engine's ``Pooling.cell_px``."""


def cell_grid(shape: tuple[int, int], cell: int = CELL_PX) -> tuple[int, int]:
    """``(rows, cols)`` of whole cells in a frame of ``shape = (H, W)``."""
    return shape[0] // cell, shape[1] // cell


def cell_mean(field_: np.ndarray, cell: int = CELL_PX) -> np.ndarray:
    """Mean of ``(H, W, ...)`` over each whole ``cell`` x ``cell`` block -> ``(rows, cols, ...)``."""
    rows, cols = cell_grid(field_.shape[:2], cell)
    f = np.asarray(field_, np.float64)[: rows * cell, : cols * cell]
    return f.reshape(rows, cell, cols, cell, *f.shape[2:]).mean(axis=(1, 3))


def pool_flow(flow: np.ndarray, cell: int = CELL_PX, how: str = "mean") -> np.ndarray:
    """Pool a dense flow ``(H, W, 2)`` (image coordinates ``dx, dy`` down) to cells -> ``(rows, cols, 2)``.

    ``how="mean"`` is the mean flow vector of each cell, ``"median"`` the per-component median.
    The result stays in image coordinates; :func:`flow_to_polar` converts it.
    """
    flow = np.asarray(flow)
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise ValueError(f"flow must be (H, W, 2), got {flow.shape}")
    if how == "mean":
        return cell_mean(flow, cell)
    if how == "median":
        rows, cols = cell_grid(flow.shape[:2], cell)
        f = flow[: rows * cell, : cols * cell].reshape(rows, cell, cols, cell, 2)
        return np.median(f.transpose(0, 2, 1, 3, 4).reshape(rows, cols, -1, 2), axis=2)
    raise ValueError(f"unknown pooling {how!r}; choose 'mean' or 'median'")


def flow_to_polar(flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Image-coordinate flow ``(..., 2)`` -> direction (rad, 0 = right, pi/2 = up) and speed (px/frame).

    The direction of a zero vector is NaN (undefined), not ``atan2(0, 0) = 0``.
    """
    flow = np.asarray(flow, np.float64)
    speed = np.hypot(flow[..., 0], flow[..., 1])
    direction = np.where(speed > 0, np.arctan2(-flow[..., 1], flow[..., 0]), np.nan)
    return direction, speed


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
        pooled = pool_flow(flow, cell)
        dx, dy_up = pooled[..., 0], -pooled[..., 1]
        return np.arctan2(dy_up, dx).astype(np.float32), np.hypot(dx, dy_up).astype(np.float32)
