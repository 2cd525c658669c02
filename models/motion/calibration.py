"""Fitting and scoring the motion read-out on stimuli with ground-truth motion."""

from __future__ import annotations

import numpy as np

from v1motion.models.motion.population import pooled_response
from v1motion.models.motion.readout import MotionReadout, angular_error
from v1motion.models.motion.ssrnn import SSRNN
from v1motion.models.motion.stimuli import (
    HELDOUT_STILLS,
    TRAIN_STILLS,
    grating_sequence,
    load_still,
    pan_sequence,
    random_pan_start,
)
from v1motion.models.motion.tuning import DIRECTIONS, N_DIRECTIONS, NATURAL_SPEEDS


def random_pan_trials(images, n_trials, size, n_frames, speed_range, seed):
    """Pans with a uniform direction and a log-uniform speed: ``(frames, directions, speeds)``."""
    rng = np.random.default_rng(seed)
    stills = [load_still(n) for n in images]
    frames = np.empty((n_trials, n_frames, size, size), np.float32)
    dirs = rng.uniform(-np.pi, np.pi, n_trials)
    speeds = np.exp(rng.uniform(np.log(speed_range[0]), np.log(speed_range[1]), n_trials))
    for i in range(n_trials):
        img = stills[rng.integers(len(stills))]
        start = random_pan_start(img, dirs[i], speeds[i], n_frames, (size, size), rng)
        frames[i] = pan_sequence(img, start, dirs[i], speeds[i], n_frames, (size, size))
    return frames, dirs, speeds


def features(model: SSRNN, frames: np.ndarray, levels: int) -> np.ndarray:
    return pooled_response(model, frames, levels=levels).reshape(len(frames), -1)


def fit_readout(
    model: SSRNN,
    levels: int = 3,
    n_trials: int = 1500,
    size: int = 96,
    n_frames: int = 15,
    speed_range=(0.25, 8.0),
    seed: int = 0,
) -> MotionReadout:
    """Fit the read-out on pans of the training stills (never the held-out ones)."""
    frames, dirs, speeds = random_pan_trials(
        TRAIN_STILLS, n_trials, size, n_frames, speed_range, seed
    )
    return MotionReadout().fit(features(model, frames, levels), dirs, speeds, seed=seed)


def natural_direction_error(
    model: SSRNN, readout: MotionReadout, levels: int = 3, size: int = 96, n_positions: int = 8,
    n_frames: int = 15, seed: int = 2,
) -> dict:  # fmt: skip
    """Read-out error on held-out stills panned at 0.5-4 px/frame in 16 directions."""
    rng = np.random.default_rng(seed)
    frames, dirs, speeds = [], [], []
    for name in HELDOUT_STILLS:
        img = load_still(name)
        for d in DIRECTIONS:
            for s in NATURAL_SPEEDS:
                for _ in range(n_positions):
                    start = random_pan_start(img, d, s, n_frames, (size, size), rng)
                    frames.append(pan_sequence(img, start, d, s, n_frames, (size, size)))
                    dirs.append(d)
                    speeds.append(s)
    dirs, speeds = np.array(dirs), np.array(speeds)
    pdir, pspeed, conf = readout.predict(features(model, np.stack(frames), levels))
    err = np.rad2deg(angular_error(pdir, dirs))
    rel_speed = np.abs(pspeed / speeds - 1)
    return {
        "natural_direction_error_deg": float(err.mean()),
        "natural_direction_error_median_deg": float(np.median(err)),
        "natural_direction_error_by_speed_deg": {
            str(s): float(err[speeds == s].mean()) for s in NATURAL_SPEEDS
        },
        "natural_speed_rel_error": float(rel_speed.mean()),
        "natural_speed_rel_error_median": float(np.median(rel_speed)),
        "natural_speed_log_corr": float(np.corrcoef(np.log(pspeed), np.log(speeds))[0, 1]),
    }


GRATING_EVAL_PERIODS = (8.0, 16.0, 32.0)
GRATING_EVAL_SPEEDS = (0.5, 1.0, 2.0, 4.0)


def grating_direction_error(
    model: SSRNN, readout: MotionReadout, levels: int = 3, size: int = 96, n_frames: int = 15,
    n_phases: int = 2, kind: str = "square",
) -> dict:  # fmt: skip
    """Read-out error on drifting gratings, 16 directions, non-aliased (speed / period < 0.4)."""
    frames, dirs, cond = [], [], []
    for period in GRATING_EVAL_PERIODS:
        for speed in GRATING_EVAL_SPEEDS:
            if speed / period >= 0.4:
                continue
            for d in DIRECTIONS:
                for ph in range(n_phases):
                    frames.append(
                        grating_sequence(
                            (size, size), d, speed, period, n_frames, kind, np.pi * ph / n_phases
                        )
                    )
                    dirs.append(d)
                    cond.append((period, speed))
    pdir, _, _ = readout.predict(features(model, np.stack(frames), levels))
    err = np.rad2deg(angular_error(pdir, np.array(dirs)))
    by = {}
    for c in sorted(set(cond)):
        mask = np.array([x == c for x in cond])
        by[f"period {c[0]:g} speed {c[1]:g}"] = float(err[mask].mean())
    return {
        "grating_direction_error_deg": float(err.mean()),
        "grating_direction_error_by_condition_deg": by,
        "grating_conditions": len(by),
        "n_directions": N_DIRECTIONS,
    }
