"""A tiny stand-in for models.engine.MotionEngine for the video job tests: fast, deterministic, and
slow or hanging on demand (crash, watchdog and restart tests). Product code never uses it."""

from __future__ import annotations

import time

import numpy as np

from models.engine import MotionFrame


class FakeEngine:
    """Motion = frame difference per cell, always pointing right; ``delay_s`` slows each step."""

    cell = 16

    def __init__(self, delay_s: float = 0.0):
        self.delay_s = delay_s
        self.direction_bins = np.arange(8) * (2 * np.pi / 8)
        self.speed_bins = np.array([0.5, 1.0, 2.0, 4.0])

    def warmup(self):
        return self

    def new_state(self):
        return {"prev": None}

    def step(self, state, frame):
        if self.delay_s:
            time.sleep(self.delay_s)
        grey = frame.mean(axis=-1) if frame.ndim == 3 else frame.astype(np.float32)
        c = self.cell
        gh, gw = grey.shape[0] // c, grey.shape[1] // c
        prev = state["prev"] if state["prev"] is not None else grey
        state["prev"] = grey
        diff = np.abs(grey - prev)[: gh * c, : gw * c].reshape(gh, c, gw, c).mean(axis=(1, 3))
        conf = np.clip(diff / 10.0, 0, 1).astype(np.float32)
        return MotionFrame(
            direction=np.zeros((gh, gw), np.float32),
            speed=(diff / 5.0).astype(np.float32),
            confidence=conf,
            cell=c,
            direction_hist=np.eye(8, dtype=np.float32)[0] * conf.mean(),
            speed_hist=np.zeros(4, np.float32),
            top_units=[],
            global_direction=0.0,
            global_speed=float(diff.mean() / 5.0),
            global_confidence=float(conf.mean()),
            active_per_patch=0.0,
        )


def fake_engine() -> FakeEngine:
    return FakeEngine()


def slow_fake_engine() -> FakeEngine:
    return FakeEngine(delay_s=0.05)


def hanging_fake_engine() -> FakeEngine:
    """Its first step never returns (in practice: an hour)."""
    return FakeEngine(delay_s=3600.0)
