"""Where the engine step's time goes on one thread and on two, and what bounds the two-thread speed-up.

The engine's stages are timed by wrapping its methods in this process (the engine itself is
unchanged); the frames are vtest.avi's, resized, stepped back to back after a warm-up, the two thread
counts in alternating rounds. Per thread count: the step's wall time, the CPU time of all the
process's threads per step, and the calling thread's time in each stage. With two threads, the time
the helper is idle while the calling thread works (the serial part, by what the calling thread is
doing then; during the ss-RNN kernel both threads work). With every other millisecond of CPU split
evenly over the two cores, a two-thread step could take ``serial + (CPU - serial) / 2``: the
one-thread step's wall time over that is the largest speed-up this division of the work allows.

    python bench/step_profile.py [--size 640x480] [--frames 100] [--rounds 3]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"
os.environ.setdefault("NUMBA_NUM_THREADS", "2")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the v1motion command runs the engine

import argparse  # noqa: E402
import contextlib  # noqa: E402
import functools  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from v1motion.models.motion import engine as engine_module  # noqa: E402
from v1motion.models.motion import ssrnn, whitening  # noqa: E402
from v1motion.models.motion.engine import MotionEngine  # noqa: E402

KERNEL = "ss-RNN kernel"
STAGES = (
    (engine_module, "to_grey", "grey frame"),
    (engine_module, "cut_features", "scene-cut features"),
    (whitening.Whitener, "transform_rows", "whitening (a band)"),
    (whitening.Whitener, "transform", "whitening (a level)"),
    (MotionEngine, "_correlate_levels", "patches and atom correlations"),
    (ssrnn.SSRNN, "infer", KERNEL),
    (MotionEngine, "_project", "read-out: fold into running averages"),
    (MotionEngine, "_fine_gate", "read-out: change gate"),
    (MotionEngine, "_coarse_fold", "coarse read: gate and fold"),
    (MotionEngine, "_decode", "read-out: pool and decode"),
    (MotionEngine, "_coarse_decode", "coarse read: its pooling and decoding"),
    (MotionEngine, "_axis_coherence", "read-out: units' axes"),
    (MotionEngine, "_combine", "read-out: fast motion, aperture, consensus"),
    (MotionEngine, "step", "step"),
)
"""What is timed: (owner, attribute, label). A stage nested in another counts in both."""


class Recorder:
    """Records ``(on calling thread, label, t0, t1)`` of every call to the stages while installed."""

    def __init__(self) -> None:
        self.events: list[tuple[bool, str, float, float]] = []
        self.main = threading.main_thread()

    @contextlib.contextmanager
    def installed(self):
        saved = [(owner, name, getattr(owner, name)) for owner, name, _ in STAGES]
        try:
            for owner, name, label in STAGES:
                setattr(owner, name, self._wrap(getattr(owner, name), label))
            yield self
        finally:
            for owner, name, fn in saved:
                setattr(owner, name, fn)

    def _wrap(self, fn, label):
        events, main = self.events, self.main

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                on_main = threading.current_thread() is main
                events.append((on_main, label, t0, time.perf_counter()))

        return timed


def serial_time(events, steps) -> dict[str, float]:
    """Seconds the helper thread is idle while the calling thread is inside a step, summed over
    ``steps``, by the innermost stage the calling thread is in then (``"(between stages)"``)."""
    idle: dict[str, float] = defaultdict(float)
    for _, _, s0, s1 in steps:
        inside = [e for e in events if s0 <= e[2] <= s1 and e[1] != "step"]
        busy = [(a, b) for m, lab, a, b in inside if not m or lab == KERNEL]
        mains = [(lab, a, b) for m, lab, a, b in inside if m]
        cuts = sorted(
            {
                s0,
                s1,
                *(t for a, b in busy for t in (a, b)),
                *(t for _, a, b in mains for t in (a, b)),
            }
        )
        for a, b in zip(cuts, cuts[1:], strict=False):
            mid = 0.5 * (a + b)
            if not (s0 <= mid <= s1) or any(x <= mid < y for x, y in busy):
                continue
            inner = [(y - x, lab) for lab, x, y in mains if x <= mid < y]
            idle[min(inner)[1] if inner else "(between stages)"] += b - a
    return dict(idle)


def profile(engines: dict[int, MotionEngine], frames: list[np.ndarray], rounds: int = 3) -> dict:
    """Per thread count: wall and CPU ms per step, the calling and helper threads' ms per stage,
    and (with more than one thread) the serial ms by stage; medians over ``rounds`` alternating
    rounds of stepping ``frames`` (the first fifth warm up the stream, not timed)."""
    warm = max(1, len(frames) // 5)
    per: dict[int, list[dict]] = {n: [] for n in engines}
    for _ in range(rounds):
        for n, engine in engines.items():
            state = engine.new_state()
            for f in frames[:warm]:
                engine.step(state, f)
            rec = Recorder()
            with rec.installed():
                cpu0 = time.process_time()
                for f in frames[warm:]:
                    engine.step(state, f)
                cpu = time.process_time() - cpu0
            steps = [e for e in rec.events if e[1] == "step"]
            k = len(steps)
            stages: dict[tuple[bool, str], float] = defaultdict(float)
            for on_main, label, a, b in rec.events:
                if label != "step":
                    stages[(on_main, label)] += (b - a) * 1e3 / k
            row = {
                "wall_ms": sum(b - a for _, _, a, b in steps) * 1e3 / k,
                "cpu_ms": cpu * 1e3 / k,
                "stages": dict(stages),
            }
            if n > 1:
                row["serial"] = {
                    lab: s * 1e3 / k for lab, s in serial_time(rec.events, steps).items()
                }
            per[n].append(row)
    out = {}
    for n, rows in per.items():
        keys = {k for r in rows for k in r["stages"]}
        out[n] = {
            "wall_ms": float(np.median([r["wall_ms"] for r in rows])),
            "cpu_ms": float(np.median([r["cpu_ms"] for r in rows])),
            "stages": {k: float(np.median([r["stages"].get(k, 0.0) for r in rows])) for k in keys},
        }
        if n > 1:
            labels = {k for r in rows for k in r["serial"]}
            serial = {k: float(np.median([r["serial"].get(k, 0.0) for r in rows])) for k in labels}
            out[n]["serial"] = serial
            s = sum(serial.values())
            out[n]["bound_ms"] = s + (out[n]["cpu_ms"] - s) / n
    return out


def contention(
    engine: MotionEngine, frames: list[np.ndarray], repeats: int = 200
) -> dict[str, float]:
    """ms of the fine read's pooling and decoding (``_decode``) of the last of ``frames`` on this
    thread, alone and while another thread repeats: a Numba loop that holds no lock; the coarse
    read's pooling and decoding; the same with the interpreter's switch interval at 0.1 ms."""
    import sys

    from numba import njit

    @njit(nogil=True, cache=False)
    def busy(n):
        x = 0.0
        for i in range(n):
            x += np.sqrt(i * 1.0)
        return x

    grab = {}
    original = MotionEngine._read_on_two_threads

    def keep(self, state, prev, fine, c_codes, shape, c_shape, image=(None, None)):
        grab.update(state=state, fine=fine, c_codes=c_codes, shape=shape, c_shape=c_shape)
        return original(self, state, prev, fine, c_codes, shape, c_shape, image)

    MotionEngine._read_on_two_threads = keep
    try:
        state = engine.new_state()
        for f in frames:
            engine.step(state, f)
    finally:
        MotionEngine._read_on_two_threads = original
    if not grab:
        raise ValueError(
            "the engine did not read on two threads: give it threads=2, parallel_from_px=0"
        )
    st = grab["state"]

    def fine():
        engine._decode(st.acc, grab["fine"], grab["shape"], None, executor=None)

    def coarse():
        engine._decode(st.coarse_acc, grab["c_codes"], grab["c_shape"], None, executor=None)

    def ms(fn) -> float:
        fn()
        t = time.perf_counter()
        for _ in range(repeats):
            fn()
        return (time.perf_counter() - t) * 1e3 / repeats

    def beside(job) -> float:
        stop = threading.Event()

        def loop():
            while not stop.is_set():
                job()

        other = threading.Thread(target=loop, daemon=True)
        other.start()
        try:
            time.sleep(0.05)
            return ms(fine)
        finally:
            stop.set()
            other.join()

    busy(10)
    out = {"alone": ms(fine), "beside a Numba loop (no lock held)": beside(lambda: busy(200_000))}
    out["beside the coarse read's pooling and decoding"] = beside(coarse)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)
    try:
        out["the same, switch interval 0.1 ms"] = beside(coarse)
    finally:
        sys.setswitchinterval(interval)
    return out


def report(result: dict, size: str) -> str:
    lines = []
    counts = sorted(result)
    one, many = result[counts[0]], result[counts[-1]]
    lines.append(f"engine step at {size}, ms per step (median over rounds; stages may nest)")
    head = " | ".join(f"{n} thread{'s' if n > 1 else ''}" for n in counts)
    lines += [f"| | {head} |", "|---|" + "---|" * len(counts)]
    lines.append("| wall | " + " | ".join(f"{result[n]['wall_ms']:.2f}" for n in counts) + " |")
    lines.append(
        "| CPU, all threads | " + " | ".join(f"{result[n]['cpu_ms']:.2f}" for n in counts) + " |"
    )
    labels = [lab for _, _, lab in STAGES if lab != "step"]
    for lab in labels:
        cells = []
        for n in counts:
            st = result[n]["stages"]
            mine, theirs = st.get((True, lab), 0.0), st.get((False, lab), 0.0)
            cells.append(f"{mine:.2f}" + (f" + helper {theirs:.2f}" if theirs > 0.005 else ""))
        if any(c != "0.00" for c in cells):
            lines.append(f"| {lab} | " + " | ".join(cells) + " |")
    if len(counts) > 1:
        serial = many["serial"]
        total = sum(serial.values())
        lines.append(
            f"\n{counts[-1]} threads: the helper idles {total:.2f} ms of the step's "
            f"{many['wall_ms']:.2f} while the calling thread works, in:"
        )
        for lab, ms in sorted(serial.items(), key=lambda kv: -kv[1]):
            if ms >= 0.005:
                lines.append(f"- {lab}: {ms:.2f}")
        lines.append(
            f"speed-up {one['wall_ms'] / many['wall_ms']:.2f}x; with the rest of its "
            f"{many['cpu_ms']:.2f} ms of CPU split evenly, at most "
            f"{one['wall_ms'] / many['bound_ms']:.2f}x ({many['bound_ms']:.2f} ms a step)"
        )
    return "\n".join(lines)


def main() -> None:
    from v1motion.models.motion.movies import load_clip

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", default="640x480", help="frame size WxH")
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--contention",
        action="store_true",
        help="also time the fine read's decoding alone and beside other work on a second thread",
    )
    args = ap.parse_args()
    cv2.setNumThreads(1)
    w, h = (int(v) for v in args.size.split("x"))
    clip = load_clip("vtest.avi", max_frames=args.frames, scale=1.0)
    frames = [cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in clip]
    engines = {n: MotionEngine.load_default(threads=n, parallel_from_px=0) for n in (1, 2)}
    for e in engines.values():
        e.warmup()
    print(report(profile(engines, frames, args.rounds), args.size))
    if args.contention:
        print(
            "\nthe fine read's pooling and decoding of one frame on the calling thread, ms "
            "(median of 3 runs of 200)"
        )
        runs = [contention(engines[2], frames) for _ in range(3)]
        for key in runs[0]:
            print(f"- {key}: {np.median([r[key] for r in runs]):.2f}")


if __name__ == "__main__":
    main()
