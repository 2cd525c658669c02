"""Motion engine against OpenCV optical flow: frames/s, and direction error on stimuli with ground-truth
motion. Prints tables. Ratios are what to quote: the baselines run in the same process on the same frames,
interleaved round by round, so machine noise largely cancels; each figure is the median over rounds.

    python bench/engine_speed.py [--weights models/weights/ssrnn_default.npz] [--frames 60] [--rounds 5]

BLAS and OpenCV run on one thread. The engine runs with ``threads=1`` (the reference path) and
``threads=2`` (the ss-RNN kernel split over patch rows with Numba's ``prange``, level 0 whitened in two
bands and the coarser levels on a helper thread, the coarse read on the helper beside the fine one,
decoded there ahead when the frame before took it),
on every frame size (``parallel_from_px=0``: by default the engine steps frames under
``PARALLEL_FROM_PX`` on one thread, where two measured slower); "run 2 thr" is ``MotionEngine.run``
with two threads (a run of frames, as video jobs take them: each frame read, and a later one whitened,
while the following ones are encoded on a helper thread, up to ``RUN_AHEAD`` ahead, one thread each);
"encode" is the ss-RNN stage alone
(pyramid to sparse codes), "step" adds the motion read-out, with the coarse read of fast motion ("one
scale": without it). Both thread counts give identical codes.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"
os.environ.setdefault("NUMBA_NUM_THREADS", "2")
# OpenMP threads wait passively between frames: spin-waiting takes the core the other thread needs on
# a machine shared with other work (there two threads measured 0.3-0.6x one thread).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from v1motion.models.motion.engine import DEFAULT_MT, DEFAULT_WEIGHTS, MotionEngine, to_grey  # noqa: E402
from v1motion.models.motion.movies import load_clip  # noqa: E402
from v1motion.models.motion.readout import angular_error  # noqa: E402
from v1motion.models.motion.ssrnn import recurrent_csr  # noqa: E402
from v1motion.models.motion.stimuli import (  # noqa: E402
    HELDOUT_STILLS,
    grating_sequence,
    load_still,
    pan_sequence,
    random_pan_start,
)

cv2.setNumThreads(1)
SIZES = ((320, 240), (640, 480))
REFERENCE = "DIS ultrafast"


def flow_methods():
    presets = {
        "DIS ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
        "DIS fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
        "DIS medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
    }
    methods = {}
    for name, preset in presets.items():
        dis = cv2.DISOpticalFlow_create(preset)
        methods[name] = lambda a, b, dis=dis: dis.calc(a, b, None)

    def farneback(a, b):
        return cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)

    methods["Farneback"] = farneback
    return methods


def flow_run(fn, frames):
    """Optical flow between consecutive frames; each field is dropped at once, as the engine's outputs
    are (keeping them all would time the allocator, not the flow)."""
    for a, b in zip(frames[:-1], frames[1:], strict=True):
        fn(a, b)


def engine_runners(engine: MotionEngine, threads: int, coarse: bool = True):
    """Per-frame callables over a run of frames, each starting a fresh stream."""
    e = MotionEngine(
        engine.model, engine.readout, engine.tuning, levels=engine.readout_levels, mt=engine.mt,
        pooling=engine.pooling, threads=threads, coarse=coarse, parallel_from_px=0,
        axis_calibration=engine.axis_calibration, coherence_reference=engine.coherence_reference,
    )  # fmt: skip
    e.warmup()

    def step(frames):
        state = e.new_state()
        for f in frames:
            e.step(state, f)

    def run(frames):
        for _ in e.run(e.new_state(), frames):
            pass

    def encode(frames):
        state = e.new_state()
        h, w = frames[0].shape
        state.shape, state.prev, state.rms = (h, w), [None] * e.levels, [None] * e.levels
        for f in frames:
            e.encode(state, to_grey(f))

    return step, encode, run


def kernel_runners(model, grey):
    """The ss-RNN kernel alone on level 0, sparse against dense recurrent drive, on the same patches."""
    cs = []
    for f in grey:
        white = model.whitener_.transform(f.astype(np.float32) / 255)
        white /= max(float(np.sqrt(np.mean(white**2))), 0.1)
        cs.append(model.correlations(white)[0].astype(np.float32))
    G = model.gram()
    csr = recurrent_csr(model.R_)

    def sparse(_frames):
        prev = None
        for c in cs:
            prev = model.infer(c, prev, G, csr)

    def dense(_frames):
        prev = None
        for c in cs:
            prev = model.infer_dense(c, prev, G)

    return {"kernel sparse drive": sparse, "kernel dense drive": dense}


def speed_table(engine, clip, n_frames, rounds):
    """Frames/s of every method at every size: medians over ``rounds`` interleaved rounds, and the
    median over rounds of each method's ratio to DIS ultrafast in the same round."""
    runners = {}
    for threads in (1, 2):
        step, encode, run = engine_runners(engine, threads)
        runners[f"step {threads} thr"] = step
        runners[f"encode {threads} thr"] = encode
    runners["run 2 thr"] = run
    runners["step 1 thr, one scale"] = engine_runners(engine, 1, coarse=False)[0]
    flows = flow_methods()
    table = []
    for w, h in SIZES:
        grey = [cv2.resize((f * 255).astype(np.uint8), (w, h)) for f in clip[:n_frames]]
        methods = dict(runners) | kernel_runners(engine.model, grey)
        for name, fn in flows.items():
            methods[name] = lambda frames, fn=fn: flow_run(fn, frames)
        counts = {name: len(grey) - 1 if name in flows else len(grey) for name in methods}
        for fn in methods.values():
            fn(grey[:3])  # warm
        fps = {name: [] for name in methods}
        for _ in range(rounds):
            for name, fn in methods.items():
                t0 = time.perf_counter()
                fn(grey)
                fps[name].append(counts[name] / (time.perf_counter() - t0))
        ref = np.array(fps[REFERENCE])
        table.append(
            {
                "size": f"{w}x{h}",
                "fps": {k: float(np.median(v)) for k, v in fps.items()},
                "ratio": {k: float(np.median(np.array(v) / ref)) for k, v in fps.items()},
                "threads": float(np.median(np.array(fps["step 2 thr"]) / fps["step 1 thr"])),
                "run_threads": float(np.median(np.array(fps["run 2 thr"]) / fps["step 1 thr"])),
                "encode_threads": float(
                    np.median(np.array(fps["encode 2 thr"]) / fps["encode 1 thr"])
                ),
                "coarse": float(
                    np.median(np.array(fps["step 1 thr"]) / fps["step 1 thr, one scale"])
                ),
            }
        )
    return table


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
    ap.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS, help="ss-RNN weights")
    ap.add_argument("--mt", type=Path, default=DEFAULT_MT, help="MT read-out")
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--no-accuracy", action="store_true", help="skip the direction-error table")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here as JSON")
    args = ap.parse_args()
    if (args.weights, args.mt) == (DEFAULT_WEIGHTS, DEFAULT_MT):
        engine = MotionEngine.load_default()  # with the shipped axis calibration
    else:
        engine = MotionEngine.load(args.weights, mt_path=args.mt)
    engine.warmup()
    clip = load_clip("vtest.avi", max_frames=args.frames + 1, scale=1.0)
    table = speed_table(engine, clip, args.frames, args.rounds)
    cols = list(table[0]["fps"])
    print(
        f"\nframes/s, median of {args.rounds} interleaved rounds of {args.frames} frames of "
        "vtest.avi, resized (BLAS and OpenCV on one thread)"
    )
    print("| size | " + " | ".join(cols) + " |")
    print("|" + "---|" * (len(cols) + 1))
    for r in table:
        print(f"| {r['size']} | " + " | ".join(f"{r['fps'][c]:.0f}" for c in cols) + " |")
    print(f"\nratio to {REFERENCE} (median over rounds of the ratio within a round)")
    print("| size | " + " | ".join(cols) + " |")
    print("|" + "---|" * (len(cols) + 1))
    for r in table:
        print(f"| {r['size']} | " + " | ".join(f"{r['ratio'][c]:.2f}" for c in cols) + " |")
    print("\ntwo threads against one (median over rounds)")
    for r in table:
        print(
            f"- {r['size']}: step {r['threads']:.2f}x, encode {r['encode_threads']:.2f}x, "
            f"run (each frame read while the following are encoded) {r['run_threads']:.2f}x"
        )
    print("\nthe step with the coarse read of fast motion against one scale (median over rounds)")
    for r in table:
        print(f"- {r['size']}: {r['coarse']:.2f}x")
    if args.no_accuracy:
        write_json(args.json, {"speed": table, "rounds": args.rounds, "frames": args.frames})
        return
    errs = direction_errors(engine, stimuli_sets())
    print(
        "\nmean direction error (degrees; 96x96 px, 15 frames; flow = mean flow vector of frames 3-14)"
    )
    names = list(next(iter(errs.values())))
    print("| stimuli | " + " | ".join(names) + " |")
    print("|" + "---|" * (len(names) + 1))
    for set_name, e in errs.items():
        print(f"| {set_name} | " + " | ".join(f"{e[n]:.1f}" for n in names) + " |")
    write_json(
        args.json,
        {"speed": table, "rounds": args.rounds, "frames": args.frames, "direction_error_deg": errs},
    )


def write_json(path: Path | None, doc: dict) -> None:
    if path is not None:
        path.write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
