"""The engine step at 640x480 back to back against the same step after an idle gap, as live streams run it.

A live stream at 30 fps analyses a frame every 33 ms and waits in between; this measures what the wait
costs the next step (same process, same thread, same frames, nothing else running). Prints medians and
95th percentiles per case, two rounds.

    python bench/idle_step.py
"""

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from v1motion.models.motion.engine import MotionEngine  # noqa: E402
from v1motion.service.live.sources import SyntheticSource  # noqa: E402
from v1motion.service.settings import SourceSpec  # noqa: E402


def spin(seconds: float) -> None:
    t = time.perf_counter()
    while time.perf_counter() - t < seconds:
        pass


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()  # --help only
    eng = MotionEngine.load_default()
    eng.warmup()
    src = SyntheticSource(
        SourceSpec(name="b", kind="synthetic", width=640, height=480, fps=240), threading.Event()
    )
    src.open()
    frames = [src.read() for _ in range(130)]

    def run(gap) -> np.ndarray:
        state = eng.new_state()
        for f in frames[:10]:
            eng.step(state, f)
        ms = []
        for f in frames[10:]:
            gap()
            t = time.perf_counter()
            eng.step(state, f)
            ms.append((time.perf_counter() - t) * 1e3)
        return np.array(ms)

    cases = {
        "back to back": lambda: None,
        "after sleeping 2 ms": lambda: time.sleep(0.002),
        "after sleeping 20 ms": lambda: time.sleep(0.02),
        "after sleeping 20 ms, then spinning 3 ms": lambda: (time.sleep(0.02), spin(0.003)),
        "after spinning 20 ms (never idle)": lambda: spin(0.02),
    }
    print("| case | round | step p50 ms | step p95 ms |\n|---|---|---|---|")
    for rnd in (1, 2):
        for name, gap in cases.items():
            ms = run(gap)
            print(f"| {name} | {rnd} | {np.median(ms):.2f} | {np.percentile(ms, 95):.2f} |")


if __name__ == "__main__":
    main()
