"""Direction and speed tuning of ss-RNN units, and the metrics of the tuning report.

Responses are the mean rectified code ``max(z, 0)`` of each unit over a stimulus region and the frames after
a warm-up, averaged over phases (gratings) or start positions (natural pans). Directions follow the
project's convention (0 = right, counter-clockwise on screen).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from v1motion.models.motion.population import pooled_response
from v1motion.models.motion.ssrnn import SSRNN
from v1motion.models.motion.stimuli import (
    HELDOUT_STILLS,
    grating_sequence,
    load_still,
    pan_sequence,
    random_pan_start,
)

N_DIRECTIONS = 16
DIRECTIONS = np.arange(N_DIRECTIONS) * 2 * np.pi / N_DIRECTIONS
GRATING_PERIODS = (4.0, 8.0, 16.0, 32.0)
SPEEDS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
NATURAL_SPEEDS = (0.5, 1.0, 2.0, 4.0)


@dataclass
class GratingTuning:
    """``resp[d, p, s, level, u]``: response to direction d, period p, speed s."""

    resp: np.ndarray
    periods: tuple
    speeds: tuple


@dataclass
class NaturalTuning:
    """``resp[d, s, level, u]``: response to held-out stills panned in direction d at speed s."""

    resp: np.ndarray
    speeds: tuple


def grating_tuning(
    model: SSRNN,
    periods=GRATING_PERIODS,
    speeds=SPEEDS,
    n_phases: int = 4,
    size: int = 64,
    n_frames: int = 15,
    kind: str = "square",
    levels: int = 1,
) -> GratingTuning:
    """Responses to drifting gratings at evenly spaced phases."""
    frames, keys = [], []
    for d in range(N_DIRECTIONS):
        for p, period in enumerate(periods):
            for s, speed in enumerate(speeds):
                for ph in range(n_phases):
                    phase = 2 * np.pi * ph / n_phases
                    frames.append(
                        grating_sequence(
                            (size, size), DIRECTIONS[d], speed, period, n_frames, kind, phase
                        )
                    )
                    keys.append((d, p, s))
    r = pooled_response(model, np.stack(frames), levels=levels)
    resp = np.zeros((N_DIRECTIONS, len(periods), len(speeds), levels, model.n_units))
    for (d, p, s), row in zip(keys, r, strict=True):
        resp[d, p, s] += row / n_phases
    return GratingTuning(resp, tuple(periods), tuple(speeds))


def natural_pan_stimuli(
    images=HELDOUT_STILLS,
    speeds=NATURAL_SPEEDS,
    n_positions: int = 16,
    size: int = 64,
    n_frames: int = 15,
    seed: int = 1,
    warmup: int = 3,
):
    """Held-out stills panned in 16 directions; every direction uses the same positions."""
    rng = np.random.default_rng(seed)
    frames, keys = [], []
    for name in images:
        img = load_still(name)
        starts = [
            random_pan_start(
                img, 0.0, 0.0, n_frames, (size + 2 * max(speeds) * n_frames, size), rng
            )
            for _ in range(n_positions)
        ]
        for d in range(N_DIRECTIONS):
            for s, speed in enumerate(speeds):
                for cx, cy in starts:
                    # The frames after the warm-up are centred on the same point for every direction,
                    # so opposite directions show the same frames in reverse order: without recurrence
                    # DI is exactly 0, and what DI remains comes from the order of the frames alone.
                    dx, dy = np.cos(DIRECTIONS[d]), -np.sin(DIRECTIONS[d])
                    half = speed * (warmup + n_frames - 1) / 2
                    start = (cx + dx * half, cy + dy * half)
                    frames.append(
                        pan_sequence(img, start, DIRECTIONS[d], speed, n_frames, (size, size))
                    )
                    keys.append((d, s))
    return np.stack(frames), keys


def natural_tuning(model: SSRNN, speeds=NATURAL_SPEEDS, levels: int = 1, **kw) -> NaturalTuning:
    frames, keys = natural_pan_stimuli(speeds=speeds, **kw)
    r = pooled_response(model, frames, levels=levels)
    resp = np.zeros((N_DIRECTIONS, len(speeds), levels, model.n_units))
    counts = np.zeros((N_DIRECTIONS, len(speeds)))
    for (d, s), row in zip(keys, r, strict=True):
        resp[d, s] += row
        counts[d, s] += 1
    return NaturalTuning(resp / counts[:, :, None, None], tuple(speeds))


def direction_index(curves: np.ndarray):
    """DI = 1 - r(opposite) / r(preferred) per unit from direction curves ``(n_dir, U)``.

    Returns ``(di, preferred_bin, r_pref)``; DI is 0 for silent units.
    """
    pref = curves.argmax(0)
    r_pref = curves[pref, np.arange(curves.shape[1])]
    r_opp = curves[(pref + N_DIRECTIONS // 2) % N_DIRECTIONS, np.arange(curves.shape[1])]
    di = np.where(r_pref > 0, 1 - r_opp / np.maximum(r_pref, 1e-12), 0.0)
    return np.clip(di, 0, 1), pref, r_pref


ALIASED_FROM = 0.4
"""Cycles per frame from which a grating no longer drifts: at 0.5 it flickers in counterphase and
at 1 it stands still, so the same responses come for a direction and its opposite. A unit's
direction tuning was read at such a grating when it was its strongest (period 4 px at 2-8
px/frame, 8 px at 4-8): 93 of the 269 tuned units shown by the dashboard had a DI of exactly 0 and
a preferred direction picked between two opposites, 48 of them the wrong one (unit 509: DI 1.00 at
0.5-1 px/frame, shown as 0.00 preferring 4 px/frame)."""


def drifting(periods, speeds) -> np.ndarray:
    """``(n_periods, n_speeds)``: True where a grating drifts (``speed / period < ALIASED_FROM``)."""
    return np.asarray(speeds, float)[None, :] / np.asarray(periods, float)[:, None] < ALIASED_FROM


def best_condition_curves(resp: np.ndarray, allowed=None) -> tuple[np.ndarray, np.ndarray]:
    """Direction curves at each unit's best condition. ``resp`` is ``(n_dir, C, U)``; ``allowed``
    (C,), if given, the conditions it may be (those whose gratings drift)."""
    peak = resp.max(0)  # (C, U)
    if allowed is not None:
        peak = np.where(np.asarray(allowed, bool)[:, None], peak, -np.inf)
    best = peak.argmax(0)  # (U,) best condition by peak response
    u = np.arange(resp.shape[2])
    return resp[:, best, u], best


def responsive_mask(r_pref: np.ndarray, rel: float = 0.02) -> np.ndarray:
    """Units whose preferred response is at least ``rel`` of the population's 99th percentile."""
    if r_pref.size == 0 or not np.any(r_pref > 0):
        return np.zeros_like(r_pref, bool)
    return r_pref > rel * np.percentile(r_pref, 99)


def preferred_orientation(curves: np.ndarray) -> np.ndarray:
    """Orientation (radians in [0, pi)) of each unit from its direction curve, by angle doubling.

    The orientation of a grating is perpendicular to its direction of drift.
    """
    v = (curves * np.exp(2j * DIRECTIONS)[:, None]).sum(0)
    return (np.angle(v) / 2 + np.pi / 2) % np.pi


def circ_dist(a, b, period=2 * np.pi):
    d = np.abs(np.asarray(a) - np.asarray(b)) % period
    return np.minimum(d, period - d)


@dataclass
class TuningSummary:
    """Per-unit tuning at level 0 and the report metrics computed from it."""

    di: np.ndarray
    pref_dir: np.ndarray
    responsive: np.ndarray
    ds: np.ndarray
    pref_speed: np.ndarray
    di_natural: np.ndarray
    pref_dir_natural: np.ndarray
    responsive_natural: np.ndarray
    orientation: np.ndarray
    speed_curves: np.ndarray  # (U, n_speeds) at the preferred direction, best drifting period
    direction_curves: np.ndarray  # (n_dir, U) at the best grating
    metrics: dict


def summarize(model: SSRNN, gt: GratingTuning, nt: NaturalTuning, level: int = 0) -> TuningSummary:
    n_dir = N_DIRECTIONS
    g = gt.resp[:, :, :, level]  # (dir, period, speed, U)
    n_p, n_s = g.shape[1], g.shape[2]
    moves = drifting(gt.periods, gt.speeds)  # (n_p, n_s)
    curves, best = best_condition_curves(g.reshape(n_dir, n_p * n_s, -1), moves.ravel())
    di, pref, r_pref = direction_index(curves)
    responsive = responsive_mask(r_pref)
    ds = responsive & (di > 0.5)
    u = np.arange(g.shape[-1])
    # At the preferred direction, each speed at its best period among those whose gratings drift
    # at it (period 32 px drifts at every speed measured).
    at_pref = np.where(moves[None], g[pref, :, :, u], -np.inf)  # (U, n_p, n_s): advanced first
    speed_curves = at_pref.max(1)
    speed_curves = np.where(np.isfinite(speed_curves), speed_curves, 0.0)  # no drifting period
    pref_speed = np.asarray(gt.speeds)[speed_curves.argmax(1)]
    ncurves, _ = best_condition_curves(nt.resp[:, :, level])
    di_n, pref_n, r_pref_n = direction_index(ncurves)
    resp_n = responsive_mask(r_pref_n)
    orientation = preferred_orientation(curves)
    metrics = {
        "n_units": int(g.shape[-1]),
        "n_responsive": int(responsive.sum()),
        "n_ds": int(ds.sum()),
        "ds_fraction": float(ds.sum() / max(responsive.sum(), 1)),
        "n_responsive_natural": int(resp_n.sum()),
        "ds_fraction_natural": float((resp_n & (di_n > 0.5)).sum() / max(resp_n.sum(), 1)),
    }
    both = ds & resp_n
    agree = circ_dist(DIRECTIONS[pref[both]], DIRECTIONS[pref_n[both]]) <= np.deg2rad(22.5) + 1e-9
    metrics["direction_agreement"] = float(agree.mean()) if both.any() else 0.0
    sp = pref_speed[ds]
    metrics["speed_octaves"] = float(np.log2(sp.max() / sp.min())) if len(sp) else 0.0
    metrics["speed_octaves_p10_p90"] = (
        float(np.log2(np.percentile(sp, 90) / np.percentile(sp, 10))) if len(sp) else 0.0
    )
    metrics["preferred_speed_counts"] = {str(s): int((sp == s).sum()) for s in gt.speeds}
    r_abs = np.abs(model.R_)
    resp_idx = np.nonzero(responsive)[0]
    if len(resp_idx) > 1:
        o = orientation[resp_idx]
        dist = circ_dist(o[:, None], o[None, :], np.pi)
        ra = r_abs[np.ix_(resp_idx, resp_idx)]
        off = ~np.eye(len(resp_idx), dtype=bool)
        near = off & (dist <= np.deg2rad(22.5))
        far = off & (dist >= np.deg2rad(67.5))
        metrics["coorientation_ratio"] = float(ra[near].mean() / max(ra[far].mean(), 1e-12))
        same_atom = model.unit_atoms()[resp_idx][:, None] == model.unit_atoms()[resp_idx][None, :]
        near_other = near & ~same_atom
        metrics["coorientation_ratio_other_atoms"] = float(
            ra[near_other].mean() / max(ra[far].mean(), 1e-12)
        )
    else:
        metrics["coorientation_ratio"] = 0.0
        metrics["coorientation_ratio_other_atoms"] = 0.0
    return TuningSummary(
        di, DIRECTIONS[pref], responsive, ds, pref_speed, di_n, DIRECTIONS[pref_n], resp_n,
        orientation, speed_curves, curves, metrics,
    )  # fmt: skip
