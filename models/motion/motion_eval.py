"""Ground-truth accuracy of motion maps: stimulus families with known motion, and the scores.

Every family yields :class:`Sequence` objects: uint8 grey frames and the true velocity of what moves, per
frame (and, for the moving object, the per-pixel mask of the object). :func:`cell_truth` turns that into
per-cell truth on the motion map's grid (cell ``(i, j)`` covers pixels ``[i*cell:(i+1)*cell,
j*cell:(j+1)*cell]``). Methods (the ss-RNN engine, or an optical-flow baseline pooled to the same cells)
are run over the frames by :func:`evaluate`, which returns one summary per method.

Conventions (those of :mod:`v1motion.models.motion.stimuli`): directions in radians, 0 = moving right, pi/2 = moving up on
screen; velocities are ``(vx, vy_up)`` in px/frame; image rows grow downwards, so an optical-flow field
``(dx, dy)`` in image coordinates has direction ``atan2(-dy, dx)``. The velocity of frame ``t`` is the
displacement from frame ``t - 1`` to frame ``t``.

Families (:data:`FAMILIES`)
---------------------------
``pan``      rigid translation of a held-out still, 16 directions x speeds 0.25-16 px/frame.
``grating``  drifting square gratings; truth = the normal velocity.
``plaid``    sum of two drifting sine gratings; truth = the pattern velocity (intersection of constraints).
``object``   a textured square or disc (side 1/4 of the frame width, cut from one held-out still) moving
             over another, still, held-out still; per-cell truth from the per-pixel mask.
``abrupt``   a pan whose direction turns by 90, 135 or 180 degrees mid-sequence; scored by the frames the
             dominant (global) direction needs to come within 20 degrees of the new truth.
``still``    a still held-out crop with faint sensor noise: every cell is still.
``clip``     real camera clips; per-cell truth = DIS optical flow (preset MEDIUM) on the same frames,
             cells moving > 1 px/frame and still < 0.2 px/frame (cells in between are not scored).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import NamedTuple, Protocol

import cv2
import numpy as np

from v1motion.models.datasets import require_shared_data

# The cell pooling and polar conversion of flows live with the DIS flow the dashboard shows;
# they are used here and re-exported (me.pool_flow, ...).
from v1motion.models.motion.flow import (  # noqa: F401
    CELL_PX,
    cell_grid,
    cell_mean,
    flow_to_polar,
    pool_flow,
)
from v1motion.models.motion.movies import load_clip
from v1motion.models.motion.stimuli import (
    HELDOUT_STILLS,
    direction_vector,
    grating_frame,
    load_still,
    pan_frame,
)

log = logging.getLogger(__name__)

PAN_SPEEDS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
SIZES = ((320, 240), (640, 480))
OBJECT_MIN_FRACTION = 0.75
CLIP_MOVING_MIN = 1.0
CLIP_STILL_MAX = 0.2
RECOVER_TOL_DEG = 20.0
CONFIDENT = 0.5
FLOW_MOVING_MIN = 0.2
# First frame of the window scored in each clip: chosen where things move (DIS shows > 1 px/frame).
CLIP_STARTS = {"vtest.avi": 180, "box.mp4": 120, "cup.mp4": 40, "tree.avi": 12}
STILL_NOISE = 2.0 / 255
TEXTURE_MIN = 1.0
"""(grey levels / px)^2. A clip cell counts as *textured* where the smaller eigenvalue of the image's
structure tensor (gradient products of the 0-255 frame, central differences, averaged over 7 x 7
px) averages at least this over the cell: its brightness varies by about a grey level per pixel or
more in every direction, so its motion is fixed by the image. Elsewhere (a blank wall, a single
edge) any motion along the flat direction fits the frames, and DIS MEDIUM's reference there comes
from its smoothness prior, not from the cell."""


# ------------------------------------------------------------------ sequences and truth
@dataclass
class Sequence:
    """Frames with ground-truth motion.

    Attributes
    ----------
    family : str
    frames : (T, H, W) uint8 grey frames.
    velocity : (T, 2) float ``(vx, vy_up)`` px/frame of the moving content between frames ``t-1`` and ``t``
        (row 0 repeats row 1). Zero for still sequences.
    scored : frame indices scored for the per-cell and global scores (after the engine's warm-up).
    mask : (T, H, W) float32 in [0, 1], share of each pixel covered by the moving object, or None when the
        whole frame moves with ``velocity``.
    cell_velocity : ``{t: (rows, cols, 2)}`` measured per-cell truth ``(vx, vy_up)`` (real clips), or None.
    cell_textured : ``{t: (rows, cols) bool}`` cells of frame ``t - 1`` with 2-D texture
        (:func:`textured_cells`), where a measured truth is fixed by the image (real clips), or None.
    change_frame : first frame of the new velocity (``abrupt`` family), or None.
    params : what generated the sequence (JSON-friendly).
    """

    family: str
    frames: np.ndarray
    velocity: np.ndarray
    scored: tuple[int, ...]
    mask: np.ndarray | None = None
    cell_velocity: dict[int, np.ndarray] | None = None
    cell_textured: dict[int, np.ndarray] | None = None
    change_frame: int | None = None
    params: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return self.frames.shape[1], self.frames.shape[2]

    def wanted(self) -> set[int]:
        """Frames on which a method's output is needed: the scored ones and, after a change, all."""
        out = set(self.scored)
        if self.change_frame is not None:
            out.update(range(self.change_frame, len(self.frames)))
        return out


def cell_truth(seq: Sequence, t: int, cell: int = CELL_PX) -> tuple[np.ndarray, np.ndarray]:
    """Per-cell truth of frame ``t``: velocity ``(rows, cols, 2)`` as ``(vx, vy_up)`` and a label.

    Label per cell: 1 = moving (scored for direction and speed), 0 = still (scored for false motion),
    -1 = not scored (object cells covered between 0 % and 75 %, clip cells between the thresholds).
    """
    rows, cols = cell_grid(seq.shape, cell)
    if seq.cell_velocity is not None:
        vel = np.asarray(seq.cell_velocity[t], np.float64)
        speed = np.hypot(vel[..., 0], vel[..., 1])
        label = np.full((rows, cols), -1, np.int8)
        label[speed > seq.params.get("moving_min", CLIP_MOVING_MIN)] = 1
        label[speed < seq.params.get("still_max", CLIP_STILL_MAX)] = 0
        return vel, label
    v = np.asarray(seq.velocity[t], np.float64)
    moving = bool(np.hypot(*v) > 0)
    if seq.mask is None:
        vel = np.broadcast_to(v, (rows, cols, 2)).copy()
        return vel, np.full((rows, cols), 1 if moving else 0, np.int8)
    now = cell_mean(seq.mask[t], cell)
    before = cell_mean(seq.mask[max(t - 1, 0)], cell)
    label = np.full((rows, cols), -1, np.int8)
    label[np.minimum(now, before) >= OBJECT_MIN_FRACTION] = 1 if moving else 0
    label[np.maximum(now, before) <= 1e-6] = 0
    vel = np.where((label == 1)[..., None], v, 0.0)
    return vel, label


def textured_cells(
    frame: np.ndarray, cell: int = CELL_PX, minimum: float = TEXTURE_MIN
) -> np.ndarray:
    """``(rows, cols)`` bool: cells of the grey ``frame`` (0-255) whose structure tensor's smaller
    eigenvalue averages at least ``minimum`` (:data:`TEXTURE_MIN`); see there."""
    img = np.asarray(frame, np.float32)
    gx = cv2.Sobel(img, cv2.CV_32F, 1, 0, ksize=1, scale=0.5, borderType=cv2.BORDER_REFLECT)
    gy = cv2.Sobel(img, cv2.CV_32F, 0, 1, ksize=1, scale=0.5, borderType=cv2.BORDER_REFLECT)
    box = (7, 7)
    jxx = cv2.blur(gx * gx, box, borderType=cv2.BORDER_REFLECT)
    jyy = cv2.blur(gy * gy, box, borderType=cv2.BORDER_REFLECT)
    jxy = cv2.blur(gx * gy, box, borderType=cv2.BORDER_REFLECT)
    smaller = 0.5 * (jxx + jyy - np.sqrt((jxx - jyy) ** 2 + 4 * jxy**2))
    return cell_mean(smaller, cell) >= minimum


def _to_u8(frames: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(np.asarray(frames) * 255), 0, 255).astype(np.uint8)


def _velocity(direction: float, speed: float) -> np.ndarray:
    return np.array([np.cos(direction), np.sin(direction)]) * speed


def _scored(n_frames: int, warmup: int, stride: int) -> tuple[int, ...]:
    return tuple(range(warmup, n_frames, stride))


def _directions(n: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """``n`` evenly spaced directions; with ``rng``, the set is rotated by a random offset."""
    offset = 0.0 if rng is None else rng.uniform(0, 2 * np.pi / n)
    return (np.arange(n) * 2 * np.pi / n + offset) % (2 * np.pi)


# ------------------------------------------------------------------ stills large enough to pan
@lru_cache(maxsize=16)
def _scaled_still(name: str, factor: float) -> np.ndarray:
    img = load_still(name)
    if factor <= 1.0:
        return img
    h, w = img.shape
    out = cv2.resize(img, (round(w * factor), round(h * factor)), interpolation=cv2.INTER_CUBIC)
    out = np.clip(out, 0, 1).astype(np.float32)
    out.setflags(write=False)
    return out


def still_for_travel(name: str, shape: tuple[int, int], travel: float) -> tuple[np.ndarray, float]:
    """A held-out still, upscaled (cubic) only if needed so a crop of ``shape`` can travel ``travel`` px
    in any direction; returns ``(image, factor)``. The factor is rounded up to 0.05 so that it is shared
    by all sequences of one family and size."""
    h, w = load_still(name).shape
    need = max((shape[0] + travel + 8) / h, (shape[1] + travel + 8) / w, 1.0)
    factor = float(np.ceil(need * 20) / 20) if need > 1.0 else 1.0
    return _scaled_still(name, factor), factor


def path_start(
    image_shape: tuple[int, int],
    offsets: np.ndarray,
    shape: tuple[int, int],
    rng: np.random.Generator,
) -> tuple[float, float]:
    """A crop centre such that crops at ``start + offsets[t]`` (``(T, 2)`` x, y) all stay in the image."""
    h, w = image_shape
    half_h, half_w = shape[0] / 2 + 1, shape[1] / 2 + 1
    lo_x = half_w - offsets[:, 0].min()
    hi_x = w - half_w - offsets[:, 0].max()
    lo_y = half_h - offsets[:, 1].min()
    hi_y = h - half_h - offsets[:, 1].max()
    if hi_x <= lo_x or hi_y <= lo_y:
        raise ValueError("image too small for this path")
    return float(rng.uniform(lo_x, hi_x)), float(rng.uniform(lo_y, hi_y))


def path_sequence(image: np.ndarray, velocity: np.ndarray, shape, rng) -> np.ndarray:
    """Frames ``(T, H, W)`` of ``image`` panned so its content moves by ``velocity[t]`` (``(vx, vy_up)``)
    between frames ``t - 1`` and ``t``; the crop window moves against the motion."""
    step = np.asarray(velocity, np.float64).copy()
    step[0] = 0.0
    # Window offsets in image coordinates (x right, y down): opposite to the content's motion.
    offsets = -np.cumsum(np.stack([step[:, 0], -step[:, 1]], 1), axis=0)
    start = path_start(image.shape, offsets, shape, rng)
    return np.stack([pan_frame(image, (start[0] + ox, start[1] + oy), shape) for ox, oy in offsets])


# ------------------------------------------------------------------ families
def pan_family(
    size: tuple[int, int] = (320, 240),
    *,
    n_directions: int = 16,
    speeds=PAN_SPEEDS,
    stills=HELDOUT_STILLS,
    n_frames: int = 16,
    warmup: int = 8,
    stride: int = 2,
    seed: int = 0,
) -> Iterator[Sequence]:
    """Rigid pans of held-out stills; one still per (direction, speed), taking the stills in turn.

    ``size`` is ``(width, height)``. Stills too small for the fastest pan are upscaled once per size
    (:func:`still_for_travel`), so every speed of a size sees the same image.
    """
    shape = (size[1], size[0])
    rng = np.random.default_rng(seed)
    travel = max(speeds) * (n_frames - 1)
    images = {name: still_for_travel(name, shape, travel) for name in stills}
    for i, d in enumerate(_directions(n_directions)):
        for j, s in enumerate(speeds):
            name = stills[(i + j) % len(stills)]
            img, factor = images[name]
            v = np.tile(_velocity(d, s), (n_frames, 1))
            frames = path_sequence(img, v, shape, rng)
            yield Sequence(
                "pan", _to_u8(frames), v, _scored(n_frames, warmup, stride),
                params={"still": name, "still_scale": factor, "direction_deg": float(np.rad2deg(d)),
                        "speed": float(s)},
            )  # fmt: skip


def grating_family(
    size: tuple[int, int] = (320, 240),
    *,
    n_directions: int = 8,
    periods=(8.0, 16.0, 32.0),
    speeds=(0.5, 1.0, 2.0, 4.0),
    max_cycles_per_frame: float = 0.4,
    n_frames: int = 16,
    warmup: int = 8,
    stride: int = 2,
    seed: int = 0,
) -> Iterator[Sequence]:
    """Square drifting gratings at their normal velocity, for ``speed / period < max_cycles_per_frame``
    (beyond half a cycle per frame the motion is aliased)."""
    shape = (size[1], size[0])
    rng = np.random.default_rng(seed)
    for d in _directions(n_directions):
        for p in periods:
            for s in speeds:
                if s / p >= max_cycles_per_frame:
                    continue
                phase = rng.uniform(0, 2 * np.pi)
                frames = np.stack(
                    [grating_frame(shape, d, s, p, t, "square", phase) for t in range(n_frames)]
                )
                yield Sequence(
                    "grating", _to_u8(frames), np.tile(_velocity(d, s), (n_frames, 1)),
                    _scored(n_frames, warmup, stride),
                    params={"direction_deg": float(np.rad2deg(d)), "speed": float(s), "period": p},
                )  # fmt: skip


def ioc_velocity(normal_directions, normal_speeds) -> np.ndarray:
    """Intersection of constraints: the velocity ``v = (vx, vy_up)`` with ``v . n_k = s_k`` for every
    component (least squares when there are more than two).

    Parameters
    ----------
    normal_directions : (K,) directions (rad) of the components' normals (their drift directions).
    normal_speeds : (K,) speeds (px/frame) along those normals.
    """
    d = np.asarray(normal_directions, np.float64)
    s = np.asarray(normal_speeds, np.float64)
    a = np.stack([np.cos(d), np.sin(d)], 1)
    if np.linalg.matrix_rank(a) < 2:
        raise ValueError("the components' normals are parallel: the pattern velocity is undefined")
    return np.linalg.lstsq(a, s, rcond=None)[0]


def plaid_frames(shape, components, n_frames, phases) -> np.ndarray:
    """Sum of sine gratings ``components = [(direction, normal_speed, period), ...]`` in [0, 1]."""
    frames = np.zeros((n_frames, *shape), np.float32)
    for (d, s, p), ph in zip(components, phases, strict=True):
        for t in range(n_frames):
            frames[t] += grating_frame(shape, d, s, p, t, "sine", ph)
    return frames / len(components)


PLAID_TYPES = {"type I (+-60)": (-60.0, 60.0), "type II (+20, +70)": (20.0, 70.0)}


def plaid_family(
    size: tuple[int, int] = (320, 240),
    *,
    n_directions: int = 8,
    speeds=(1.0, 2.0, 4.0),
    types=tuple(PLAID_TYPES),
    periods=(16.0, 24.0),
    n_frames: int = 16,
    warmup: int = 8,
    stride: int = 2,
    seed: int = 0,
) -> Iterator[Sequence]:
    """Plaids with pattern velocity ``(direction, speed)``: two sine gratings whose normals are turned by
    the type's angles from the pattern direction and drift at ``speed * cos(angle)``. Type I (+-60 deg)
    has the vector average on the pattern direction; in type II (+20/+70 deg) the vector average is
    45 deg off, so only an intersection-of-constraints read-out is right."""
    shape = (size[1], size[0])
    rng = np.random.default_rng(seed)
    for name in types:
        offsets = np.deg2rad(PLAID_TYPES[name])
        for d in _directions(n_directions):
            for s in speeds:
                comps = [(d + o, s * np.cos(o), p) for o, p in zip(offsets, periods, strict=True)]
                truth = ioc_velocity([c[0] for c in comps], [c[1] for c in comps])
                frames = plaid_frames(shape, comps, n_frames, rng.uniform(0, 2 * np.pi, 2))
                yield Sequence(
                    "plaid", _to_u8(frames), np.tile(truth, (n_frames, 1)),
                    _scored(n_frames, warmup, stride),
                    params={"type": name, "direction_deg": float(np.rad2deg(d)), "speed": float(s)},
                )  # fmt: skip


def object_mask(shape, center_xy, side: float, kind: str = "square") -> np.ndarray:
    """Anti-aliased coverage ``(H, W)`` in [0, 1] of a square (side ``side``) or disc (diameter ``side``)
    centred at ``center_xy`` (pixel centres at integer coordinates)."""
    h, w = shape
    cx, cy = center_xy
    x = np.arange(w, dtype=np.float64)
    y = np.arange(h, dtype=np.float64)
    if kind == "square":
        cov_x = np.clip(
            np.minimum(x + 0.5, cx + side / 2) - np.maximum(x - 0.5, cx - side / 2), 0, 1
        )
        cov_y = np.clip(
            np.minimum(y + 0.5, cy + side / 2) - np.maximum(y - 0.5, cy - side / 2), 0, 1
        )
        return (cov_y[:, None] * cov_x[None, :]).astype(np.float32)
    if kind == "disc":
        dist = np.hypot(x[None, :] - cx, y[:, None] - cy)
        return np.clip(side / 2 - dist + 0.5, 0, 1).astype(np.float32)
    raise ValueError(f"unknown object kind {kind!r}; choose 'square' or 'disc'")


def object_family(
    size: tuple[int, int] = (320, 240),
    *,
    n_directions: int = 8,
    speeds=(1.0, 2.0, 4.0),
    side_fraction: float = 0.25,
    n_frames: int = 16,
    warmup: int = 8,
    stride: int = 2,
    seed: int = 0,
) -> Iterator[Sequence]:
    """A textured square or disc (taken in turn) moving over a still textured background.

    The object's texture is a pan of one held-out still seen through the moving mask; the background is
    a still crop of another held-out still. Speeds whose path would not fit in the frame are skipped.
    """
    shape = (size[1], size[0])
    h, w = shape
    side = round(w * side_fraction)
    rng = np.random.default_rng(seed)
    pairs = list(zip(HELDOUT_STILLS, HELDOUT_STILLS[1:] + HELDOUT_STILLS[:1], strict=True))
    travel = max(speeds) * (n_frames - 1)
    k = 0
    for i, d in enumerate(_directions(n_directions)):
        for j, s in enumerate(speeds):
            dx, dy = direction_vector(d)
            span_x, span_y = abs(dx) * s * (n_frames - 1), abs(dy) * s * (n_frames - 1)
            margin = side / 2 + 2
            if w - 2 * margin <= span_x or h - 2 * margin <= span_y:
                log.info("object: %.1f px/frame does not fit %dx%d; skipped", s, w, h)
                continue
            # Pairs taken in turn along directions and speeds, so no speed gets one pair only.
            obj_name, bg_name = pairs[(i + j) % len(pairs)]
            kind = ("square", "disc")[k % 2]
            k += 1
            x0 = rng.uniform(margin + max(0, -dx) * s * (n_frames - 1), w - margin - max(0, dx) * s * (n_frames - 1))  # fmt: skip
            y0 = rng.uniform(margin + max(0, -dy) * s * (n_frames - 1), h - margin - max(0, dy) * s * (n_frames - 1))  # fmt: skip
            obj_img, _ = still_for_travel(obj_name, shape, travel)
            bg_img, _ = still_for_travel(bg_name, shape, 0.0)
            v = np.tile(_velocity(d, s), (n_frames, 1))
            tex = path_sequence(obj_img, v, shape, rng)
            bg = pan_frame(bg_img, path_start(bg_img.shape, np.zeros((1, 2)), shape, rng), shape)
            mask = np.stack(
                [object_mask(shape, (x0 + dx * s * t, y0 + dy * s * t), side, kind) for t in range(n_frames)]
            )  # fmt: skip
            frames = bg[None] * (1 - mask) + tex * mask
            yield Sequence(
                "object", _to_u8(frames), v, _scored(n_frames, warmup, stride), mask=mask,
                params={"object": obj_name, "background": bg_name, "kind": kind, "side_px": side,
                        "direction_deg": float(np.rad2deg(d)), "speed": float(s)},
            )  # fmt: skip


def abrupt_family(
    size: tuple[int, int] = (320, 240),
    *,
    n_directions: int = 8,
    turns_deg=(90.0, 135.0, 180.0),
    speed: float = 2.0,
    n_before: int = 10,
    n_after: int = 12,
    settle: int = 8,
    seed: int = 0,
) -> Iterator[Sequence]:
    """Pans whose direction turns by ``turns_deg`` (sign alternating) at frame ``n_before``.

    The per-cell scores use frames ``n_before + settle`` onwards; the recovery score
    (:func:`frames_to_recover`) uses every frame from the change on.
    """
    shape = (size[1], size[0])
    rng = np.random.default_rng(seed)
    n_frames = n_before + n_after
    images = {n: still_for_travel(n, shape, speed * n_frames) for n in HELDOUT_STILLS}
    k = 0
    for i, d in enumerate(_directions(n_directions)):
        for j, turn in enumerate(turns_deg):
            sign = 1.0 if k % 2 == 0 else -1.0
            d2 = (d + sign * np.deg2rad(turn)) % (2 * np.pi)
            name = HELDOUT_STILLS[(i + j) % len(HELDOUT_STILLS)]  # no turn gets one still only
            k += 1
            img, factor = images[name]
            v = np.array([_velocity(d if t < n_before else d2, speed) for t in range(n_frames)])
            frames = path_sequence(img, v, shape, rng)
            yield Sequence(
                "abrupt", _to_u8(frames), v, tuple(range(n_before + settle, n_frames, 2)),
                change_frame=n_before,
                params={"still": name, "still_scale": factor, "direction_deg": float(np.rad2deg(d)),
                        "new_direction_deg": float(np.rad2deg(d2)), "turn_deg": sign * turn,
                        "turn_size_deg": turn,
                        "speed": speed},
            )  # fmt: skip


def still_family(
    size: tuple[int, int] = (320, 240),
    *,
    crops_per_still: int = 4,
    noise: float = STILL_NOISE,
    n_frames: int = 16,
    warmup: int = 8,
    stride: int = 2,
    seed: int = 0,
) -> Iterator[Sequence]:
    """Still crops of the held-out stills with independent Gaussian noise (std ``noise``) per frame."""
    shape = (size[1], size[0])
    rng = np.random.default_rng(seed)
    for name in HELDOUT_STILLS:
        img, factor = still_for_travel(name, shape, 0.0)
        for _ in range(crops_per_still):
            crop = pan_frame(img, path_start(img.shape, np.zeros((1, 2)), shape, rng), shape)
            frames = crop[None] + noise * rng.standard_normal((n_frames, *shape))
            yield Sequence(
                "still", _to_u8(frames), np.zeros((n_frames, 2)), _scored(n_frames, warmup, stride),
                params={"still": name, "still_scale": factor, "noise": noise},
            )  # fmt: skip


def dis_medium() -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """OpenCV DIS optical flow, preset MEDIUM, as ``flow = f(prev_u8, next_u8)``."""
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    return lambda a, b: dis.calc(a, b, None)


def clip_family(
    size: tuple[int, int] = (320, 240),
    *,
    clips=tuple(CLIP_STARTS),
    n_frames: int = 56,
    warmup: int = 8,
    stride: int = 2,
    cell: int = CELL_PX,
    seed: int = 0,
) -> Iterator[Sequence]:
    """``n_frames`` of each real clip from :data:`CLIP_STARTS` on (fewer where the clip ends), resized to
    ``size`` (never upscaled: clips smaller than ``size`` are skipped), with per-cell truth from DIS
    MEDIUM on the scored frames (mean flow per cell).

    Data come from ``shared_data_dir() / "videos"`` (environment variable ``V1MOTION_SHARED_DATA``).
    ``seed`` is unused (the clips are fixed); it is accepted so every family has the same signature.
    """
    del seed
    require_shared_data("videos")
    w, h = size
    for name in clips:
        raw = load_clip(name, max_frames=n_frames, scale=1.0, start=CLIP_STARTS.get(name, 0))
        if raw.shape[1] < h or raw.shape[2] < w:
            log.info("clip %s is %dx%d, smaller than %dx%d; skipped", name, raw.shape[2], raw.shape[1], w, h)  # fmt: skip
            continue
        frames = _to_u8(
            np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in raw])
        )
        flow = dis_medium()
        scored = _scored(len(frames), warmup, stride)
        cells, textured = {}, {}
        for t in scored:
            pooled = pool_flow(flow(frames[t - 1], frames[t]), cell)
            cells[t] = np.stack([pooled[..., 0], -pooled[..., 1]], -1)
            textured[t] = textured_cells(frames[t - 1], cell)
        yield Sequence(
            "clip", frames, np.full((len(frames), 2), np.nan), scored, cell_velocity=cells,
            cell_textured=textured,
            params={"clip": name, "start": CLIP_STARTS.get(name, 0), "n_frames": len(frames),
                    "native": f"{raw.shape[2]}x{raw.shape[1]}",
                    "moving_min": CLIP_MOVING_MIN, "still_max": CLIP_STILL_MAX},
        )  # fmt: skip


FAMILIES: dict[str, Callable[..., Iterator[Sequence]]] = {
    "pan": pan_family,
    "grating": grating_family,
    "plaid": plaid_family,
    "object": object_family,
    "abrupt": abrupt_family,
    "still": still_family,
    "clip": clip_family,
}

# Smaller settings of each family: for --quick runs and tests.
QUICK: dict[str, dict] = {
    "pan": {"n_directions": 4, "speeds": (1.0, 4.0), "n_frames": 12},
    "grating": {"n_directions": 4, "periods": (16.0,), "speeds": (1.0, 2.0), "n_frames": 12},
    "plaid": {"n_directions": 4, "speeds": (2.0,), "n_frames": 12},
    "object": {"n_directions": 4, "speeds": (2.0,), "n_frames": 12},
    "abrupt": {"n_directions": 2, "turns_deg": (90.0, 180.0), "n_before": 8, "n_after": 10},
    "still": {"crops_per_still": 1, "n_frames": 12},
    "clip": {"clips": ("box.mp4",), "n_frames": 24},
}


def family_sequences(
    family: str, size: tuple[int, int] = (320, 240), *, quick: bool = False, seed: int = 0, **kw
) -> Iterator[Sequence]:
    """Sequences of a family by name (``size = (width, height)``); ``quick`` uses :data:`QUICK`."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")
    opts = (QUICK[family] if quick else {}) | kw
    return FAMILIES[family](size, seed=seed, **opts)


# ------------------------------------------------------------------ methods
class CellMotion(NamedTuple):
    """One method's motion map for one frame. ``confidence`` is NaN for methods without one."""

    direction: np.ndarray
    speed: np.ndarray
    confidence: np.ndarray
    moving: np.ndarray
    global_direction: float
    global_speed: float


class Method(Protocol):
    """What :func:`evaluate` runs: ``reset()`` before each sequence, then ``step`` on every frame."""

    name: str

    def reset(self) -> None: ...

    def step(self, frame: np.ndarray, want: bool) -> CellMotion | None: ...


class EngineMethod:
    """A motion engine (``new_state()`` / ``step(state, frame)``) as a :class:`Method`.

    A cell is shown moving when its confidence exceeds ``confident``.
    """

    def __init__(self, engine, name: str = "ss-RNN", confident: float = CONFIDENT):
        self.engine = engine
        self.name = name
        self.confident = confident
        self._state = None

    def reset(self) -> None:
        self._state = self.engine.new_state()

    def step(self, frame: np.ndarray, want: bool) -> CellMotion | None:
        mf = self.engine.step(self._state, frame)
        if not want:
            return None
        conf = np.asarray(mf.confidence, np.float64)
        return CellMotion(
            np.asarray(mf.direction, np.float64), np.asarray(mf.speed, np.float64), conf,
            conf > self.confident, float(mf.global_direction), float(mf.global_speed),
        )  # fmt: skip


class FlowMethod:
    """A dense optical flow ``flow = fn(prev_u8, next_u8)`` (image coordinates) pooled to cells.

    Cell direction and speed are those of the cell's mean flow vector; a cell is shown moving when that
    mean is longer than ``moving_min`` px/frame; the global motion is the frame's mean flow vector.
    Flow is only computed on wanted frames.
    """

    def __init__(self, name: str, fn, cell: int = CELL_PX, moving_min: float = FLOW_MOVING_MIN):
        self.name = name
        self.fn = fn
        self.cell = cell
        self.moving_min = moving_min
        self._prev = None

    def reset(self) -> None:
        self._prev = None

    def step(self, frame: np.ndarray, want: bool) -> CellMotion | None:
        prev, self._prev = self._prev, frame
        if not want:
            return None
        if prev is None:
            raise ValueError("a flow method cannot score the first frame of a sequence")
        flow = self.fn(prev, frame)
        direction, speed = flow_to_polar(pool_flow(flow, self.cell))
        g_dir, g_speed = flow_to_polar(flow.reshape(-1, 2).mean(0))
        return CellMotion(
            direction, speed, np.full(speed.shape, np.nan), speed > self.moving_min,
            float(g_dir), float(g_speed),
        )  # fmt: skip


def flow_methods(cell: int = CELL_PX) -> list[FlowMethod]:
    """The OpenCV baselines: DIS ULTRAFAST, DIS MEDIUM and Farneback (OpenCV's usual parameters)."""
    fast = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST)
    medium = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)

    def farneback(a, b):
        return cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)

    return [
        FlowMethod("DIS ultrafast", lambda a, b: fast.calc(a, b, None), cell),
        FlowMethod("DIS medium", lambda a, b: medium.calc(a, b, None), cell),
        FlowMethod("Farneback", farneback, cell),
    ]


# ------------------------------------------------------------------ scores
def angular_error_deg(a, b) -> np.ndarray:
    """Absolute difference of directions ``a`` and ``b`` (radians) in degrees, in [0, 180].

    An undefined (NaN) direction scores 90 degrees, the expected error of a random guess.
    """
    err = np.rad2deg(np.abs(np.angle(np.exp(1j * (np.asarray(a, np.float64) - np.asarray(b))))))
    return np.where(np.isnan(err), 90.0, err)


def speed_relative_error(pred, true) -> np.ndarray:
    """``|pred / true - 1|`` per element (``true`` > 0)."""
    true = np.asarray(true, np.float64)
    if np.any(true <= 0):
        raise ValueError("true speeds must be positive")
    return np.abs(np.asarray(pred, np.float64) / true - 1)


def frames_to_recover(global_direction, true_direction, tol_deg: float = RECOVER_TOL_DEG):
    """Frames from a change until the global direction is first within ``tol_deg`` of the truth.

    ``global_direction[k]`` is the estimate on the ``k``-th frame of the new velocity; the answer is
    ``k + 1`` (1 = right on the first new frame), or None when it never comes within ``tol_deg``.
    """
    err = angular_error_deg(np.asarray(global_direction, np.float64), true_direction)
    hit = np.flatnonzero(err <= tol_deg)
    return int(hit[0]) + 1 if len(hit) else None


def calibration_by_decile(confidence, error_deg, n_bins: int = 10) -> list[dict]:
    """Median direction error of moving cells in each confidence quantile bin (deciles by default)."""
    conf = np.asarray(confidence, np.float64)
    err = np.asarray(error_deg, np.float64)
    ok = np.isfinite(conf) & np.isfinite(err)
    conf, err = conf[ok], err[ok]
    if len(conf) < n_bins:
        return []
    edges = np.quantile(conf, np.linspace(0, 1, n_bins + 1))
    which = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, n_bins - 1)
    out = []
    for b in range(n_bins):
        sel = which == b
        if sel.any():
            out.append(
                {
                    "confidence_lo": float(edges[b]),
                    "confidence_hi": float(edges[b + 1]),
                    "n_cells": int(sel.sum()),
                    "dir_err_median_deg": float(np.median(err[sel])),
                    "dir_err_p90_deg": float(np.percentile(err[sel], 90)),
                }
            )
    return out


@dataclass
class Tally:
    """Per-method accumulator of cell and global scores over sequences and scored frames."""

    cell_err: list = field(default_factory=list)
    cell_conf: list = field(default_factory=list)
    speed_err: list = field(default_factory=list)
    moving_shown: list = field(default_factory=list)
    still_shown: list = field(default_factory=list)
    global_err: list = field(default_factory=list)
    textured_err: list = field(default_factory=list)
    textured_moving: list = field(default_factory=list)
    recover: list = field(default_factory=list)
    n_frames: int = 0
    n_sequences: int = 0

    def add_frame(
        self, out: CellMotion, truth_v: np.ndarray, label: np.ndarray, global_v, textured=None
    ) -> None:
        """Score one frame; ``textured`` (per cell, bool; optional) marks the cells whose truth is
        fixed by the image (:func:`textured_cells`), scored again on their own."""
        if out.direction.shape != label.shape:
            raise ValueError(f"motion map {out.direction.shape} does not match cells {label.shape}")
        self.n_frames += 1
        mov = label == 1
        if mov.any():
            t_dir = np.arctan2(truth_v[..., 1], truth_v[..., 0])[mov]
            t_speed = np.hypot(truth_v[..., 0], truth_v[..., 1])[mov]
            err = angular_error_deg(out.direction[mov], t_dir)
            self.cell_err.append(err)
            if textured is not None:
                self.textured_moving.append(textured[mov])
                self.textured_err.append(err[textured[mov]])
            self.cell_conf.append(out.confidence[mov])
            self.speed_err.append(speed_relative_error(out.speed[mov], t_speed))
            self.moving_shown.append(out.moving[mov])
        self.still_shown.append(out.moving[label == 0])
        if global_v is not None and np.all(np.isfinite(global_v)) and np.hypot(*global_v) > 0:
            self.global_err.append(
                angular_error_deg(out.global_direction, np.arctan2(global_v[1], global_v[0]))
            )

    def summary(self) -> dict:
        cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0)  # noqa: E731
        err, conf, spd = cat(self.cell_err), cat(self.cell_conf), cat(self.speed_err)
        mov, still = cat(self.moving_shown), cat(self.still_shown)
        g = np.asarray(self.global_err, np.float64)
        stat = lambda x, f: float(f(x)) if len(x) else None  # noqa: E731
        rec = [np.inf if r is None else r for r in self.recover]
        rec_med = float(np.median(rec)) if rec else None
        return {
            "n_sequences": self.n_sequences,
            "n_frames": self.n_frames,
            "n_moving_cells": int(len(err)),
            "n_still_cells": int(len(still)),
            "global_dir_err_median_deg": stat(g, np.median),
            "global_dir_err_mean_deg": stat(g, np.mean),
            "cell_dir_err_median_deg": stat(err, np.median),
            "cell_dir_err_p90_deg": stat(err, lambda x: np.percentile(x, 90)),
            "cell_dir_err_mean_deg": stat(err, np.mean),
            # the same over the moving cells the method shows as moving: what a user sees on the map
            "shown_cell_dir_err_median_deg": stat(err[mov.astype(bool)], np.median),
            # the same over the moving cells with 2-D texture, where a measured truth (real clips:
            # DIS MEDIUM) is fixed by the image rather than by the flow's smoothness prior
            "textured_cell_dir_err_median_deg": stat(cat(self.textured_err), np.median),
            "textured_moving_share": stat(cat(self.textured_moving), np.mean),
            "speed_rel_err_median": stat(spd, np.median),
            "moving_shown_rate": stat(mov, np.mean),
            "false_motion_rate": stat(still, np.mean),
            "frames_to_recover_median": None if rec_med is None or np.isinf(rec_med) else rec_med,
            "frames_to_recover_max": (None if not rec or np.isinf(max(rec)) else float(max(rec))),
            "not_recovered": int(sum(r is None for r in self.recover)),
            "calibration": calibration_by_decile(conf, err),
        }


def evaluate(
    methods,
    sequences,
    cell: int = CELL_PX,
    progress=None,
    by: str | None = None,
    ranges: dict[str, tuple[float, float]] | None = None,
) -> dict[str, dict]:
    """Run every method on every sequence (the same uint8 frames) and score it against the truth.

    Parameters
    ----------
    methods : list of :class:`Method`.
    sequences : iterable of :class:`Sequence`.
    cell : cell side in pixels (the engine's ``MotionFrame.cell``).
    progress : optional callable wrapping the sequence iterable (e.g. ``tqdm``).
    by : optional key of ``Sequence.params`` (e.g. ``"speed"``): each summary then also holds
        ``"by": {str(value): summary}`` for the sequences of each value.
    ranges : optional ``{label: (lo, hi)}`` on the numeric ``by`` values: each summary then also
        holds ``"ranges": {label: summary}`` over the sequences with ``lo <= value <= hi``, pooled
        (frames and cells of the range together, not a mean of the values' summaries).

    Returns
    -------
    ``{method name: summary dict}`` (see :meth:`Tally.summary`).
    """
    if ranges and by is None:
        raise ValueError("ranges need `by`: the sequence parameter they bound")
    ranges = ranges or {}
    tallies = {m.name: Tally() for m in methods}
    groups: dict[str, dict[str, Tally]] = {m.name: {} for m in methods}
    spans = {m.name: {label: Tally() for label in ranges} for m in methods}
    seqs = progress(sequences) if progress is not None else sequences
    for seq in seqs:
        wanted = seq.wanted()
        for m in methods:
            m.reset()
            targets = [tallies[m.name]]
            if by is not None:
                value = seq.params.get(by)
                targets.append(groups[m.name].setdefault(str(value), Tally()))
                for label, (lo, hi) in ranges.items():
                    if value is not None and lo <= float(value) <= hi:
                        targets.append(spans[m.name][label])
            recovery = []
            for t, frame in enumerate(seq.frames):
                out = m.step(frame, t in wanted)
                if out is None:
                    continue
                if seq.change_frame is not None and t >= seq.change_frame:
                    recovery.append(out.global_direction)
                if t in seq.scored:
                    truth_v, label = cell_truth(seq, t, cell)
                    g = None if seq.cell_velocity is not None else seq.velocity[t]
                    tex = None if seq.cell_textured is None else seq.cell_textured[t]
                    for tally in targets:
                        tally.add_frame(out, truth_v, label, g, tex)
            for tally in targets:
                tally.n_sequences += 1
                if seq.change_frame is not None:
                    v = seq.velocity[seq.change_frame]
                    tally.recover.append(frames_to_recover(recovery, np.arctan2(v[1], v[0])))
    out = {}
    for name, tally in tallies.items():
        out[name] = tally.summary()
        if by is not None:
            out[name]["by"] = {k: g.summary() for k, g in groups[name].items()}
        if ranges:
            out[name]["ranges"] = {k: t.summary() for k, t in spans[name].items()}
    return out


def parse_size(size) -> tuple[int, int]:
    """``(width, height)`` from a tuple or a ``"320x240"`` string."""
    if isinstance(size, str):
        try:
            w, h = (int(x) for x in size.lower().split("x"))
        except ValueError:
            raise ValueError(f"size {size!r} is not WIDTHxHEIGHT, e.g. 320x240") from None
        return w, h
    w, h = size
    return int(w), int(h)


def evaluate_family(
    engine, family: str, size=(320, 240), quick: bool = True, seed: int = 0, **kw
) -> dict:
    """Score a motion engine on one family (the engine only; no flow baselines).

    ``engine`` has ``new_state()`` and ``step(state, frame)`` (e.g. ``MotionEngine``); ``size`` is
    ``(width, height)`` or ``"WxH"``; ``quick`` uses the small settings of :data:`QUICK`; ``kw`` overrides
    the family's settings. Returns the summary dict of :meth:`Tally.summary`.
    """
    seqs = family_sequences(family, parse_size(size), quick=quick, seed=seed, **kw)
    return evaluate([EngineMethod(engine)], seqs)["ss-RNN"]
