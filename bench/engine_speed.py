"""Motion engine against OpenCV optical flow: frames/s on one thread, and direction error on stimuli with
ground-truth motion. Prints tables; run under the machine's heavy-job lock. Ratios are what to quote: the
baselines run in the same process on the same frames, so machine noise cancels.

    python bench/engine_speed.py [--weights models/weights/ssrnn_default.npz] [--frames 60]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from models.engine import DEFAULT_WEIGHTS, MotionEngine  # noqa: E402
from models.movies import load_clip  # noqa: E402
from models.readout import MotionReadout, angular_error  # noqa: E402
from models.ssrnn import recurrent_csr  # noqa: E402
from models.stimuli import (  # noqa: E402
    HELDOUT_STILLS,
    grating_sequence,
    load_still,
    pan_sequence,
    random_pan_start,
)

cv2.setNumThreads(1)
SIZES = ((160, 120), (320, 240), (640, 480))


def timed(fn, frames, repeat=1):
    fn(frames[0])  # warm
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        for f in frames:
            fn(f)
        best = min(best, time.perf_counter() - t0)
    return len(frames) / best


def flow_methods():
    dis_fast = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST)
    dis_med = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)

    def farneback(a, b):
        return cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)

    return {
        "DIS ultrafast": lambda a, b: dis_fast.calc(a, b, None),
        "DIS medium": lambda a, b: dis_med.calc(a, b, None),
        "Farneback": farneback,
    }


def engine_levels(engine: MotionEngine, levels: int) -> MotionEngine:
    """The same network read out from the first ``levels`` pyramid levels only (for timing)."""
    n = engine.model.n_units
    r = MotionReadout()
    r.coef_ = engine.readout.coef_[: levels * n]
    r.intercept_ = engine.readout.intercept_
    return MotionEngine(engine.model, r, engine.tuning, levels=levels)


def speed_table(engine, clip, n_frames):
    rows = []
    flows = flow_methods()
    for w, h in SIZES:
        grey = [cv2.resize((f * 255).astype(np.uint8), (w, h)) for f in clip[:n_frames]]
        row = {"size": f"{w}x{h}"}
        for levels in (engine.levels, 1):
            e = engine_levels(engine, levels) if levels != engine.levels else engine
            state = e.new_state()
            row[f"engine {levels} lvl"] = timed(lambda f, e=e, s=state: e.step(s, f), grey)
        # Kernel alone, sparse against dense recurrent drive, on the same whitened patches.
        model = engine.model
        cs = []
        for f in grey:
            white = model.whitener_.transform(f.astype(np.float32) / 255)
            white /= max(float(np.sqrt(np.mean(white**2))), 0.1)
            cs.append(model.correlations(white)[0].astype(np.float32))
        G = model.gram()
        csr = recurrent_csr(model.R_)
        for name, infer in (
            ("kernel sparse drive", lambda c, p, m=model, g=G, r=csr: m.infer(c, p, g, r)),
            ("kernel dense drive", lambda c, p, m=model, g=G: m.infer_dense(c, p, g)),
        ):
            prev = [None]

            def run(c, infer=infer, prev=prev):
                prev[0] = infer(c, prev[0])

            row[name] = timed(run, cs)
        pairs = list(zip(grey[:-1], grey[1:], strict=True))
        for name, fn in flows.items():
            row[name] = timed(lambda ab, fn=fn: fn(*ab), pairs)
        rows.append(row)
    return rows


def stimuli_sets(size=96, n_frames=15, seed=3):
    rng = np.random.default_rng(seed)
    dirs16 = np.arange(16) * 2 * np.pi / 16
    natural, grat = [], []
    for name in HELDOUT_STILLS:
        img = load_still(name)
        for d in dirs16:
            for s in (0.5, 1.0, 2.0, 4.0):
                for _ in range(2):
                    start = random_pan_start(img, d, s, n_frames, (size, size), rng)
                    natural.append((pan_sequence(img, start, d, s, n_frames, (size, size)), d, s))
    for period in (8.0, 16.0, 32.0):
        for s in (0.5, 1.0, 2.0, 4.0):
            if s / period >= 0.4:
                continue
            for d in dirs16:
                grat.append((grating_sequence((size, size), d, s, period, n_frames), d, s))
    return {"held-out natural pans": natural, "drifting gratings": grat}


def direction_errors(engine, sets):
    flows = flow_methods()
    out = {}
    for set_name, items in sets.items():
        errs = {"ss-RNN engine": []} | {k: [] for k in flows}
        for frames, d, _ in items:
            u8 = [(f * 255).clip(0, 255).astype(np.uint8) for f in frames]
            state = engine.new_state()
            for f in u8:
                mf = engine.step(state, f)
            errs["ss-RNN engine"].append(angular_error(mf.global_direction, d))
            for name, fn in flows.items():
                v = np.mean(
                    [
                        fn(a, b).reshape(-1, 2).mean(0)
                        for a, b in zip(u8[3:-1], u8[4:], strict=True)
                    ],
                    0,
                )
                errs[name].append(angular_error(np.arctan2(-v[1], v[0]), d))
        out[set_name] = {k: float(np.rad2deg(np.mean(v))) for k, v in errs.items()}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    ap.add_argument("--frames", type=int, default=60)
    args = ap.parse_args()
    engine = MotionEngine.load(args.weights)
    engine.warmup()
    clip = load_clip("vtest.avi", max_frames=args.frames + 1, scale=1.0)
    rows = speed_table(engine, clip, args.frames)
    cols = list(rows[0])
    print(f"\nframes/s on one thread ({args.frames} frames of vtest.avi, resized)")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(r["size"] if c == "size" else f"{r[c]:.0f}" for c in cols) + " |")
    print("\nratios at each size")
    for r in rows:
        e = r[f"engine {engine.levels} lvl"]
        print(
            f"- {r['size']}: engine / DIS ultrafast = {e / r['DIS ultrafast']:.2f}; "
            f"engine 1 lvl / DIS ultrafast = {r['engine 1 lvl'] / r['DIS ultrafast']:.2f}; "
            f"sparse / dense drive = {r['kernel sparse drive'] / r['kernel dense drive']:.2f}"
        )
    errs = direction_errors(engine, stimuli_sets())
    print(
        "\nmean direction error (degrees; 96x96 px, 15 frames; flow = mean flow vector of frames 3-14)"
    )
    names = list(next(iter(errs.values())))
    print("| stimuli | " + " | ".join(names) + " |")
    print("|" + "---|" * (len(names) + 1))
    for set_name, e in errs.items():
        print(f"| {set_name} | " + " | ".join(f"{e[n]:.1f}" for n in names) + " |")


if __name__ == "__main__":
    main()
