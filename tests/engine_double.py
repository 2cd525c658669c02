"""The one stand-in for ``v1motion.models.motion.engine.MotionEngine`` in the service and video-job tests.

It satisfies ``v1motion.models.motion.contract.Engine``. By default it reports the direction of the
frame-to-frame shift found by phase correlation (OpenCV), so tests can check that a known motion comes
through the pipeline. ``motion="difference"`` instead reports the mean absolute frame difference per cell,
always pointing right (fast and deterministic, for the video jobs). ``delay`` makes each step slow on
purpose. ``average=True`` reports the running average over about two frames of the shift, as the real
engine's temporal pooling does (what the live analyser assumes when frames are skipped). The module-level factories are picklable, for worker processes.
"""

from __future__ import annotations

import math
import time

import cv2
import numpy as np

from v1motion.models.motion.contract import step_each
from v1motion.models.motion.engine import MotionFrame


class FakeState:
    def __init__(self):
        self.prev = None


class FakeEngine:
    N_DIR, N_SPEED, CELL = 8, 4, 16

    min_side = 16

    def __init__(self, delay: float = 0.0, motion: str = "phase", average: bool = False):
        if motion not in ("phase", "difference"):
            raise ValueError(f"motion must be 'phase' or 'difference', got {motion!r}")
        self.delay = delay
        self.average = average
        self.motion = motion
        self.direction_bins = np.arange(self.N_DIR) * 2 * np.pi / self.N_DIR
        self.speed_bins = np.array([0.5, 1.0, 2.0, 4.0])
        self.warmed = False
        self.steps = 0

    def warmup(self):
        self.warmed = True

    def new_state(self):
        return FakeState()

    def run(self, state, frames):
        return step_each(self, state, frames)

    def step(self, state, frame):
        if self.motion == "difference":
            return self._difference_step(state, frame)
        frame = np.asarray(frame)
        if frame.ndim == 3:
            frame = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        if frame.ndim != 2 or min(frame.shape) < 16:
            raise ValueError(f"frame must be (H, W) with H, W >= 16, got {frame.shape}")
        if self.delay:
            time.sleep(self.delay)
        self.steps += 1
        cur = frame.astype(np.float32)
        dx = dy = 0.0
        if state.prev is not None and state.prev.shape == cur.shape:
            (dx, dy), _ = cv2.phaseCorrelate(state.prev, cur)
        state.prev = cur
        direction = math.atan2(-dy, dx) % (2 * math.pi)
        speed = math.hypot(dx, dy)
        if self.average:
            avg = getattr(state, "avg", None)
            speed = speed if avg is None else avg + (speed - avg) / 2
            state.avg = speed
        gh, gw = frame.shape[0] // self.CELL, frame.shape[1] // self.CELL
        dir_hist = np.maximum(np.cos(self.direction_bins - direction), 0).astype(np.float32)
        return MotionFrame(
            direction=np.full((gh, gw), direction, np.float32),
            speed=np.full((gh, gw), speed, np.float32),
            confidence=np.full((gh, gw), 1.0 if speed > 0.1 else 0.0, np.float32),
            cell=self.CELL,
            direction_hist=dir_hist,
            speed_hist=np.exp(-((self.speed_bins - speed) ** 2)).astype(np.float32),
            top_units=[(int(np.argmax(dir_hist)), float(dir_hist.max()))],
            global_direction=direction,
            global_speed=speed,
            global_confidence=1.0 if speed > 0.1 else 0.0,
            active_per_patch=1.0,
        )

    def _difference_step(self, state, frame):
        if self.delay:
            time.sleep(self.delay)
        grey = frame.mean(axis=-1) if frame.ndim == 3 else frame.astype(np.float32)
        c = self.CELL
        gh, gw = grey.shape[0] // c, grey.shape[1] // c
        prev = state.prev if state.prev is not None else grey
        state.prev = grey
        diff = np.abs(grey - prev)[: gh * c, : gw * c].reshape(gh, c, gw, c).mean(axis=(1, 3))
        conf = np.clip(diff / 10.0, 0, 1).astype(np.float32)
        return MotionFrame(
            direction=np.zeros((gh, gw), np.float32),
            speed=(diff / 5.0).astype(np.float32),
            confidence=conf,
            cell=c,
            direction_hist=np.eye(self.N_DIR, dtype=np.float32)[0] * conf.mean(),
            speed_hist=np.zeros(4, np.float32),
            top_units=[],
            global_direction=0.0,
            global_speed=float(diff.mean() / 5.0),
            global_confidence=float(conf.mean()),
            active_per_patch=0.0,
        )

    def tuning_report(self):
        dirs = np.rad2deg(self.direction_bins)
        units = []
        for i in range(self.N_DIR):
            tuning = np.maximum(np.cos(self.direction_bins - self.direction_bins[i]), 0)
            units.append(
                {
                    "id": i,
                    "preferred_direction_deg": float(dirs[i]),
                    "preferred_speed": 1.0,
                    "di": 1.0,
                    "direction_tuning": tuning.round(3).tolist(),
                    "speed_tuning": [0.2, 1.0, 0.5, 0.1],
                }
            )
        return {
            "n_units": self.N_DIR,
            "directions_deg": dirs.tolist(),
            "speeds": self.speed_bins.tolist(),
            "units": units,
        }


def fake_engine() -> FakeEngine:
    return FakeEngine(motion="difference")


def slow_fake_engine() -> FakeEngine:
    return FakeEngine(delay=0.05, motion="difference")


def hanging_fake_engine() -> FakeEngine:
    """Its first step never returns (in practice: an hour)."""
    return FakeEngine(delay=3600.0, motion="difference")


class FlakyEngine(FakeEngine):
    """The engine double, failing with a ``RuntimeError`` (a fault of the server, not a frame it
    rejects) on the steps in ``fail`` (1-based; ``None``: every step). Counts its steps (``calls``)
    and the states it made (``states``)."""

    def __init__(self, fail=None):
        super().__init__()
        self.fail, self.calls, self.states = fail, 0, 0

    def new_state(self):
        self.states += 1
        return super().new_state()

    def step(self, state, frame):
        self.calls += 1
        if self.fail is None or self.calls in self.fail:
            raise RuntimeError("kernel fault")
        return super().step(state, frame)


class _DiskFullEngine(FakeEngine):
    """Steps as the double does, then, from its 8th step, fails as a write onto a full disk does
    (``OSError`` ENOSPC, naming a file of the server)."""

    def step(self, state, frame):
        state.steps = getattr(state, "steps", 0) + 1
        if state.steps >= 8:
            import errno

            raise OSError(errno.ENOSPC, "No space left on device", "/srv/secret/out.tmp/x.npy")
        return super().step(state, frame)


def disk_full_engine() -> FakeEngine:
    return _DiskFullEngine(motion="difference")
