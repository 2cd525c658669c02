"""The engine step when frames arrive at a camera's pace against back to back, with one and two threads.

The live service steps one frame every 33 ms (30 fps) and the machine idles in between; the engine
benchmark (``bench/engine_speed.py``) steps frames back to back. This measures what the pause does to
the step: frames of the live synthetic source, one engine per thread count (and two threads without
the engine's thread placement, ``place_threads=False``), in interleaved rounds of
modes (``MODES``): back to back, with or without a short idle pause after each step; paced (the
caller sleeps until the next frame is due); paced with the caller spinning instead of sleeping (the
machine never idles); and paced with the caller polling only for the last few ms before the frame.
Prints p50 and p95 per mode.

    python bench/paced_step.py [--size 640x480] [--fps 30] [--frames 120] [--rounds 3]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"
os.environ.setdefault("NUMBA_NUM_THREADS", "2")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the v1motion command runs the engine

import argparse  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from v1motion.models.motion.engine import MotionEngine  # noqa: E402
from v1motion.service.live.sources import SyntheticSource  # noqa: E402
from v1motion.service.settings import SourceSpec  # noqa: E402

ENGINES = (("1", 1, True), ("2", 2, True), ("2, not placed", 2, False))
"""(label, threads, place_threads): one thread; two with the engine's thread placement (the
default); two where the scheduler puts them."""

MODES = (
    ("back to back", "none", 0.0),
    ("back to back, 5 ms idle after each step", "idle", 5.0),
    ("back to back, 15 ms idle after each step", "idle", 15.0),
    ("paced, caller sleeps", "sleep", 0.0),
    ("paced, caller spins", "spin", 0.0),
    ("paced, caller sleeps, spins the last 3 ms", "sleep then spin", 3.0),
    ("paced, caller sleeps, polls the last 10 ms", "sleep then poll", 10.0),
    ("paced, caller sleeps, polls the last 15 ms", "sleep then poll", 15.0),
)
"""(label, how the caller waits between steps, ms): not at all; an idle pause of ms after each step; sleeping
until the next frame is due; spinning until then; sleeping, then spinning or polling the last ms
before it. Polling yields the core between looks (``os.sched_yield``),
as the live worker does with ``live_busy_poll_ms``."""


def source_frames(width: int, height: int, n: int) -> list[np.ndarray]:
    """``n`` frames spread over the synthetic source's whole schedule (gratings and pans)."""
    spec = SourceSpec(name="bench", kind="synthetic", width=width, height=height, fps=30)
    src = SyntheticSource(spec, threading.Event())
    src.open()
    src._pacer.wait = lambda: None  # generate as fast as possible; the pacing is measured here
    total = len(SyntheticSource.SCHEDULE) * src._segment_frames
    every = max(1, total // n)
    return [f for t, f in enumerate(src.read() for _ in range(total)) if t % every == 0][:n]


def run(engine: MotionEngine, frames, mode: tuple, period: float) -> np.ndarray:
    _, kind, ms = mode
    state = engine.new_state()
    times = []
    for frame in frames:
        t0 = time.perf_counter()
        engine.step(state, frame)
        t1 = time.perf_counter()
        times.append(t1 - t0)
        due = t0 + period
        if kind == "idle":
            time.sleep(ms / 1000)
        elif kind == "spin":
            while time.perf_counter() < due:
                pass
        elif kind.startswith("sleep"):
            time.sleep(max(0.0, due - ms / 1000 - time.perf_counter()))
            while time.perf_counter() < due:
                if kind == "sleep then poll":
                    os.sched_yield()
    return 1000.0 * np.asarray(times[10:])  # after the stream's first frames


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="640x480")
    p.add_argument("--fps", type=float, default=30.0)
    p.add_argument("--frames", type=int, default=120)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    width, height = (int(v) for v in args.size.split("x"))
    frames = source_frames(width, height, args.frames)
    engines = {}
    for label, threads, placed in ENGINES:
        engines[label] = MotionEngine.load_default(
            threads=threads, parallel_from_px=0, place_threads=placed
        )
        engines[label].warmup()
    times: dict = {}
    for _ in range(args.rounds):
        for label, engine in engines.items():
            for mode in MODES:
                times.setdefault((label, mode[0]), []).append(
                    run(engine, frames, mode, 1.0 / args.fps)
                )
    print(
        f"engine step at {args.size}, {len(frames)} frames of the synthetic source, "
        f"{args.rounds} interleaved rounds, paced at {args.fps:g} fps; ms"
    )
    print("| threads | mode | p50 | p95 |")
    print("|---|---|---|---|")
    p50 = {}
    for (label, mode), runs in times.items():
        t = np.concatenate(runs)
        p50[label, mode] = np.median(t)
        print(f"| {label} | {mode} | {np.median(t):.2f} | {np.percentile(t, 95):.2f} |")
    for label, _, _ in ENGINES[1:]:
        for mode, _, _ in MODES:
            print(
                f"{label} threads against one, {mode}: {p50['1', mode] / p50[label, mode]:.2f}x (p50)"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
