"""Pictures of motion maps: the overlay drawn on video frames and the per-video summary figure.

Drawing only; the numbers come from the motion engine and :mod:`v1motion.models.motion.motion_summary`.
Colour wheel: hue = direction (red = right, then counter-clockwise as seen: yellow-green = up,
cyan = left, blue-violet = down), opacity = confidence; arrows point the way things move, their length
grows with the logarithm of the speed, on the dashboard's scale.
"""

from __future__ import annotations

import functools
import itertools
from pathlib import Path

import cv2
import numpy as np

from v1motion.models.motion.engine import MOVING_FROM

TWO_PI = 2.0 * np.pi
# summary.png's main directions, one dash pattern each: drawn alike, two spokes were told apart by
# their angle alone, and the legend's lines were identical
SPOKE_STYLES = ("-", "--", ":", "-.")
ARROW_V0 = 0.25
"""px/frame: the speed at which an arrow covers 1/log2(1 + ARROW_VMAX / ARROW_V0) of its full length."""
ARROW_VMAX = 16.0
"""px/frame: an arrow covers its full length (0.95 cell) from this speed. The dashboard draws its
arrows with the same two numbers (``V0``, ``VMAX`` in ``web/app.js``), so a speed looks the same in
both."""


def direction_colours(direction: np.ndarray) -> np.ndarray:
    """BGR uint8 colours for directions in radians (hue wheel), shape ``direction.shape + (3,)``."""
    hue = (np.mod(np.asarray(direction, dtype=np.float64), TWO_PI) / TWO_PI * 180.0).astype(
        np.uint8
    )
    hsv = np.stack([np.minimum(hue, 179), np.full_like(hue, 255), np.full_like(hue, 255)], axis=-1)
    return cv2.cvtColor(hsv.reshape(-1, 1, 3), cv2.COLOR_HSV2BGR).reshape(hsv.shape)


def colour_wheel(size: int) -> np.ndarray:
    """A BGR legend disc of side ``size``: each point coloured by its direction from the centre."""
    yy, xx = np.mgrid[0:size, 0:size] - (size - 1) / 2.0
    wheel = direction_colours(np.arctan2(-yy, xx))  # screen y grows downwards; up is +pi/2
    wheel[np.hypot(xx, yy) > size / 2.0] = 0
    return wheel


@functools.lru_cache(maxsize=8)
def _legend(size: int) -> tuple[np.ndarray, np.ndarray]:
    """The colour wheel and its disc mask, made once per size (every overlay frame draws it), with
    the map's arrows pointing right, up, left and down over their colours: the directions are read
    from the legend by shape too, not by colour alone."""
    wheel = colour_wheel(size)
    mask = wheel.any(axis=-1)
    c, segs = (size - 1) / 2.0, []
    for d in (0.0, np.pi / 2, np.pi, 1.5 * np.pi):  # from near the centre towards the rim
        u = np.array([np.cos(d), -np.sin(d)])  # screen y grows downwards
        tail, tip = c + 0.1 * size * u, c + 0.42 * size * u
        segs.append([tail, tip])
        for turn in (np.pi - 0.5, np.pi + 0.5):
            segs.append([tip, tip + 0.14 * size * np.array([np.cos(d + turn), -np.sin(d + turn)])])
    segs = np.round(np.array(segs)).astype(np.int32)
    draw_arrow_segments(wheel, segs)
    wheel.flags.writeable = mask.flags.writeable = False
    return wheel, mask


SCALE_SPEEDS = (0.5, 2.0, 8.0)
"""px/frame: the arrows of the overlay's speed legend (the dashboard's legend shows the same three)."""


@functools.lru_cache(maxsize=8)
def _speed_legend(cell: int) -> np.ndarray:
    """The speed legend, made once per cell size: one map cell per speed of ``SCALE_SPEEDS`` with the
    arrow the map draws at that speed (``arrow_segments``, so the lengths are the map's), labelled,
    on a dark box (BGR, read-only)."""
    slot = max(cell, 22)
    pad, text_h = 3, 11
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, 0.32
    unit_w = max(cv2.getTextSize(t, font, scale, 1)[0][0] for t in ("px/", "frame")) + 2
    h, w = pad + cell + text_h + pad, pad + slot * len(SCALE_SPEEDS) + unit_w + pad
    img = np.full((h, w, 3), 20, np.uint8)
    for k, v in enumerate(SCALE_SPEEDS):
        x0 = pad + k * slot + (slot - cell) // 2
        cv2.rectangle(img, (x0, pad), (x0 + cell - 1, pad + cell - 1), (70, 70, 70), 1)
        segs = arrow_segments(np.zeros((1, 1)), np.full((1, 1), v), np.ones((1, 1)), cell)
        segs = segs + np.array([x0, pad], np.int32)
        cv2.polylines(img, list(segs), False, (255, 255, 255), 1, cv2.LINE_AA)
        label = f"{v:g}"
        (tw, _), _ = cv2.getTextSize(label, font, scale, 1)
        org = (pad + k * slot + (slot - tw) // 2, h - pad - 1)
        cv2.putText(img, label, org, font, scale, (230, 230, 230), 1, cv2.LINE_AA)
    unit_x = pad + len(SCALE_SPEEDS) * slot + 1
    for text, y in (("px/", pad + cell // 2 + 3), ("frame", h - pad - 1)):
        cv2.putText(img, text, (unit_x, y), font, scale, (230, 230, 230), 1, cv2.LINE_AA)
    img.flags.writeable = False
    return img


def blend_cells(frame: np.ndarray, colours: np.ndarray, alpha: np.ndarray, cell: int) -> np.ndarray:
    """Blend one colour per grid cell over a frame, with one opacity per cell.

    The blend is worked out once per cell (premultiplied colour and the frame's remaining weight, in
    1/255 steps) and only then scaled up to pixels with nearest-neighbour ``cv2.resize``; the per-pixel
    work is one saturating multiply and one add, both vectorised in OpenCV.

    Parameters
    ----------
    frame : ndarray, shape (H, W, 3), uint8
    colours : ndarray, shape (gh, gw, 3), uint8
    alpha : ndarray, shape (gh, gw)
        Opacity of each cell's colour, clipped to [0, 1].
    cell : int
        Side of a cell in pixels; cell (i, j) covers rows ``i*cell:(i+1)*cell``, columns
        ``j*cell:(j+1)*cell``. Pixels beyond the grid are left as they are.

    Returns
    -------
    ndarray, shape (H, W, 3), uint8
        A new frame, within 1 of ``(1 - alpha) * frame + alpha * colour`` per channel.
    """
    h, w = frame.shape[:2]
    out = frame.copy()
    a8 = np.rint(np.clip(alpha, 0.0, 1.0) * 255.0).astype(np.uint8)
    # Only the box around the cells that show any colour is touched (often a small part).
    rows, cols = np.flatnonzero(a8.any(axis=1)), np.flatnonzero(a8.any(axis=0))
    if len(rows) == 0:
        return out
    (i0, i1), (j0, j1) = (rows[0], rows[-1] + 1), (cols[0], cols[-1] + 1)
    y0, y1 = i0 * cell, min(h, i1 * cell)
    x0, x1 = j0 * cell, min(w, j1 * cell)
    if y1 <= y0 or x1 <= x0:
        return out
    a3 = np.repeat(a8[i0:i1, j0:j1, None], 3, axis=2)
    box = np.ascontiguousarray(colours[i0:i1, j0:j1], np.uint8)
    premultiplied = cv2.multiply(box, a3, scale=1.0 / 255)
    size = ((j1 - j0) * cell, (i1 - i0) * cell)
    paint = cv2.resize(premultiplied, size, interpolation=cv2.INTER_NEAREST)[: y1 - y0, : x1 - x0]
    keep = cv2.resize(255 - a3, size, interpolation=cv2.INTER_NEAREST)[: y1 - y0, : x1 - x0]
    region = np.ascontiguousarray(out[y0:y1, x0:x1])
    out[y0:y1, x0:x1] = cv2.add(cv2.multiply(region, keep, scale=1.0 / 255), paint)
    return out


def arrow_fraction(speed) -> np.ndarray:
    """The fraction of its full length (0.95 cell) an arrow covers at ``speed`` (px/frame):
    ``log2(1 + v / ARROW_V0) / log2(1 + ARROW_VMAX / ARROW_V0)``, 1 from ``ARROW_VMAX`` on, 0 for
    speeds that are not positive (as the dashboard's ``arrowFraction``)."""
    v = np.asarray(speed, np.float64)
    frac = np.log2(1.0 + np.maximum(v, 0.0) / ARROW_V0) / np.log2(1.0 + ARROW_VMAX / ARROW_V0)
    return np.where(v > 0, np.minimum(frac, 1.0), 0.0)


def arrow_segments(direction, speed, confidence, cell, min_confidence=0.3):
    """Line segments of the motion arrows, all at once.

    Returns
    -------
    ndarray, shape (n_segments, 2, 2), int32
        Each row is ((x0, y0), (x1, y1)) in pixels: for every drawn arrow its shaft and the two strokes
        of its head. As on the dashboard, arrows are centred on their cells (they stay inside them),
        point along ``direction`` (y grows downwards on screen, so up is -y), are ``0.95 * cell *
        arrow_fraction(speed)`` long (the logarithm of the speed: a full cell from 16 px/frame) and
        their head strokes ``min(0.32 * cell, 0.6 * length)``; cells below ``min_confidence`` or
        shorter than 1 px get none.
    """
    length = 0.95 * cell * arrow_fraction(speed)
    keep = (np.asarray(confidence) >= min_confidence) & (length >= 1.0)
    ii, jj = np.nonzero(keep)
    if len(ii) == 0:
        return np.zeros((0, 2, 2), np.int32)
    d = np.asarray(direction, np.float64)[ii, jj]
    ln = length[ii, jj]
    cx, cy = (jj + 0.5) * cell, (ii + 0.5) * cell
    hx, hy = 0.5 * ln * np.cos(d), -0.5 * ln * np.sin(d)  # half the shaft
    sx, sy, tx, ty = cx - hx, cy - hy, cx + hx, cy + hy
    head = np.minimum(0.32 * cell, 0.6 * ln)
    segs = [np.stack([np.stack([sx, sy], -1), np.stack([tx, ty], -1)], 1)]
    for turn in (np.pi - 0.5, np.pi + 0.5):  # the two strokes of the head, swept back from the tip
        hx, hy = tx + head * np.cos(d + turn), ty - head * np.sin(d + turn)
        segs.append(np.stack([np.stack([tx, ty], -1), np.stack([hx, hy], -1)], 1))
    return np.round(np.concatenate(segs)).astype(np.int32)


HALO_BGR = (11, 8, 5)
"""The dark outline under every white arrow: a white line alone vanished on light cells (87 % of an
overlay's arrows under 3:1 contrast), where colour-blind eyes need the arrow's shape to tell
neighbouring directions apart."""


def draw_arrow_segments(out: np.ndarray, segs: np.ndarray) -> None:
    """Draw ``arrow_segments`` white on a dark halo, in place."""
    if len(segs):
        lines = list(segs)
        cv2.polylines(out, lines, False, HALO_BGR, 3, cv2.LINE_8)
        cv2.polylines(out, lines, False, (255, 255, 255), 1, cv2.LINE_AA)


def _draw_arrows(out, direction, speed, confidence, cell, min_confidence) -> None:
    draw_arrow_segments(out, arrow_segments(direction, speed, confidence, cell, min_confidence))


def draw_overlay(
    frame: np.ndarray,
    direction: np.ndarray,
    speed: np.ndarray,
    confidence: np.ndarray,
    cell: int,
    *,
    opacity: float = 0.55,
    moving_from: tuple[float, float] = MOVING_FROM,
) -> np.ndarray:
    """Draw a motion map over a frame.

    Parameters
    ----------
    frame : ndarray, shape (H, W, 3), uint8 BGR
    direction, speed, confidence : ndarray, shape (gh, gw)
        The engine's grids; grid cell (i, j) covers rows ``i*cell:(i+1)*cell`` and columns
        ``j*cell:(j+1)*cell`` of the frame.
    cell : int
        Side of a grid cell in frame pixels.
    opacity : float
        Opacity of the colour layer where confidence is 1.
    moving_from : (lo, hi)
        Which cells are drawn, as the dashboard draws them (the engine's ``MOVING_FROM``): cells
        below ``lo`` get neither colour nor arrow; the dashboard fades arrows in from ``lo`` to
        ``hi``, the overlay draws them (white on a dark outline, no fading) from halfway. Arrow
        lengths grow with the logarithm of the speed (:func:`arrow_fraction`), as on the dashboard.

    Returns
    -------
    ndarray, shape (H, W, 3), uint8
        A new frame; the input is not modified.
    """
    h, w = frame.shape[:2]
    lo, hi = moving_from
    conf = np.clip(confidence, 0, 1).astype(np.float32)
    alpha = np.where(conf >= lo, conf * np.float32(opacity), np.float32(0.0))
    out = blend_cells(frame, direction_colours(direction), alpha, cell)
    _draw_arrows(out, direction, speed, confidence, cell, (lo + hi) / 2)
    legend = max(16, min(h, w) // 8)
    if legend + 4 < min(h, w):
        wheel, mask = _legend(legend)
        out[4 : 4 + legend, w - 4 - legend : w - 4][mask] = wheel[mask]
    scale = _speed_legend(cell)
    sh, sw = scale.shape[:2]
    if sw + 8 <= w // 2 and sh + legend + 12 <= h:  # bottom right, where it fits beside the map
        out[h - 4 - sh : h - 4, w - 4 - sw : w - 4] = scale
    return out


def preload_plotting() -> None:
    """Import what :func:`summary_figure` draws with (matplotlib, its polar axes and Agg canvas).

    The import takes about a third of a second, once per process: processes that run video jobs
    preload before their first (``v1motion.service.jobs.engines.settle_job_process``), so that job
    does not wait for it at its end. Importing this module does not import matplotlib (the server's
    start stays lean)."""
    import matplotlib.projections.polar  # noqa: F401
    from matplotlib.backends import backend_agg  # noqa: F401

    from v1motion.models.reports import plotting  # noqa: F401


def summary_figure(
    path: Path,
    bin_centres: np.ndarray,
    direction_hist: np.ndarray,
    speed_over_time: np.ndarray,
    fps: float,
    title: str = "",
    main_directions: list[dict] | None = None,
    times: np.ndarray | None = None,
) -> None:
    """Write a PNG: a polar histogram of directions with the main directions marked, and the mean
    speed over time.

    Parameters
    ----------
    path : Path
    bin_centres : ndarray, shape (n_bins,)
        Radians (0 = right, pi/2 = up).
    direction_hist : ndarray, shape (n_bins,)
        Fractions of the cells shown moving (``MotionSummary.direction_hist_``).
    speed_over_time : ndarray, shape (n_frames,)
        Pixels per frame.
    fps : float
        For the time axis (frame index / fps) when ``times`` is not given.
    title : str
    main_directions : list of dict, optional
        ``{"direction_deg", "share", "median_speed_px_per_frame"}`` as
        :attr:`v1motion.models.motion.motion_summary.MotionSummary.main_directions_` gives them; each is drawn as a
        spoke and listed in the legend.
    times : ndarray, shape (n_frames,), optional
        Each frame's time in seconds (a variable frame rate's are uneven).
    """
    import matplotlib

    from v1motion.models.reports.plotting import new_figure

    fig = new_figure(figsize=(10, 4.2), dpi=100)
    ax = fig.add_subplot(1, 2, 1, projection="polar")
    width = TWO_PI / max(len(bin_centres), 1)
    if main_directions is not None and not main_directions:
        direction_hist = np.zeros_like(direction_hist)  # a few faint cells, normalised, fill it
    ax.bar(
        bin_centres,
        direction_hist,
        width=width * 0.9,
        color=matplotlib.colormaps["hsv"](bin_centres / TWO_PI),
    )
    top = float(np.max(direction_hist)) if len(direction_hist) else 0.0
    shown = [m for m in main_directions or [] if m["direction_deg"] is not None]
    for m, style in zip(shown, itertools.cycle(SPOKE_STYLES)):
        theta = np.radians(m["direction_deg"])
        label = (
            f"{m['direction_deg']:.0f}°: {m['share']:.0%} of the motion, "
            f"median {m['median_speed_px_per_frame']:.2g} px/frame"
        )
        ax.plot(
            [theta, theta], [0, top * 1.05 or 1.0], color="black", lw=1.8, ls=style, label=label
        )
    ax.set_title("direction of motion (degrees; 0 = right, 90 = up)", fontsize=10)
    ax.set_yticklabels([])
    if main_directions:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.06), fontsize=8, frameon=False)
    else:  # said, not left to empty axes
        ax.annotate(
            "nothing moved confidently", (0.5, -0.16), xycoords="axes fraction", ha="center",
            fontsize=9,
        )  # fmt: skip
    ax2 = fig.add_subplot(1, 2, 2)
    t = np.arange(len(speed_over_time)) / fps if times is None else np.asarray(times, float)
    speed = np.asarray(speed_over_time, dtype=float)
    ax2.plot(t, speed, lw=1.2)
    if len(speed) > 20:  # a start-up transient must not flatten the rest of the curve
        cap = np.percentile(speed, 98) * 1.3
        if cap > 0 and cap < speed.max():
            ax2.set_ylim(0, cap)
            ax2.annotate("(clipped)", (0.01, 0.97), xycoords="axes fraction", va="top", fontsize=8)
    # from 0, as speeds are (a still video's zeros were drawn on an axis from -0.04 to 0.05)
    ax2.set_ylim(0, ax2.get_ylim()[1] if np.any(speed > 0) else 1.0)
    ax2.set_xlabel("time (s)")
    ax2.set_ylabel("mean speed of moving regions (px/frame)")
    ax2.set_title("speed over time")
    ax2.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
