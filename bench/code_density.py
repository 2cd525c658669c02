"""Does a denser ss-RNN code read motion better per cell? Same weights, denser inference, refitted read-out.

The ss-RNN's observation noise ``tau_y`` sets how much residual correlation a unit needs to switch on
(``SSRNN`` notes): a smaller ``tau_y`` gives more active units per patch with the same atoms and
recurrent weights (which were learned at the shipped ``tau_y = 0.6``). For each ``tau_y`` this fits an
MT read-out on the code it gives (``mt_fit.collect``, the shipped read-out's data recipe, fewer
sequences) and scores it on held-out pans, a textured object over a still background and still
frames at 320x240, against ground truth. The shipped ``tau_y`` is refitted the same way, so every row
has the same read-out recipe. The aperture and constraint steps are off in every row (their axis
calibration belongs to the shipped code); the integration over cells and the change gate are on
(``--change-gate``: the code change over which a cell's confidence goes from 0 to 1; several pairs
score each fitted read-out with each, since the gate does not enter the fit).
The step's frames/s are a ratio to the first row, measured in this process on the pans' frames.

    python bench/code_density.py [--tau-y 0.6 0.45 0.3] [--sequences 1500] [--seed 0]
    python bench/code_density.py --weights runs/ssrnn_tau_y_0.35/ssrnn_default.npz --tau-y 0.35

``--weights``: another ss-RNN (e.g. one trained with ``v1motion train --tau-y 0.35``); each ``--tau-y``
is then the noise it infers with, and the first row is still the shipped weights at 0.6, the reference
of the frames/s ratio.

Runs on one thread (data, fit and evaluation). About 5 minutes per ``tau_y``.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from v1motion.models.determinism import single_threaded  # noqa: E402
from v1motion.models.motion import motion_eval as me  # noqa: E402
from v1motion.models.motion.engine import CHANGE_GATE, DEFAULT_WEIGHTS, MotionEngine  # noqa: E402
from v1motion.models.motion.mt_fit import collect  # noqa: E402
from v1motion.models.motion.mt_readout import MTReadout, Pooling  # noqa: E402

cv2.setNumThreads(1)
SIZE = (320, 240)
PAN = {"n_directions": 8, "speeds": (0.5, 1.0, 2.0, 4.0, 8.0)}
OBJECT = {"n_directions": 4, "speeds": (1.0, 2.0, 4.0)}
STILL = {"crops_per_still": 2}


def engine_for(weights: Path, tau_y: float, sequences: int, seed: int):
    """The ss-RNN of ``weights`` inferring with ``tau_y`` and an MT read-out fitted on its code, as
    ``(engine(change_gate) -> MotionEngine, fit summary)``: the gate does not enter the fit."""
    base = MotionEngine.load(weights)
    base.model.tau_y = float(tau_y)
    pooling = Pooling(patch=base.model.patch, pool_px=(32, 96), tau=2.0)
    probe = MTReadout.random(4 * pooling.n_scales, base.model.n_units)
    kw = {"levels": base.readout_levels, "pooling": pooling}
    probe_engine = MotionEngine(base.model, base.readout, base.tuning, mt=probe, **kw)
    t0 = time.time()
    with single_threaded():
        x, total, d, s, w = collect(probe_engine, sequences, seed=seed, pooling=pooling)
        ro = MTReadout(n_hidden=64, epochs=16, seed=seed).fit(x, total, d, s, weight=w)
    fit = {"rows": int(len(x)), "fit_s": round(time.time() - t0, 1), "loss": float(ro.history_[-1])}

    def engine(change_gate) -> MotionEngine:
        return MotionEngine(
            base.model, base.readout, base.tuning, mt=ro, aperture=None, constraints=None,
            change_gate=change_gate, **kw,
        )  # fmt: skip

    return engine, fit


def rel(path: Path) -> str:
    """``path`` relative to the project root when inside it (outputs name no machine paths)."""
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return f"{Path(path).parent.name}/{Path(path).name}"


def timed_pass(engine: MotionEngine, frames: list[np.ndarray]) -> tuple[float, float]:
    """Frames/s of a fresh stream over ``frames`` (after a warm-up on its first four), and the mean
    number of active units per patch on them."""
    state = engine.new_state()
    for f in frames[:4]:
        engine.step(state, f)
    state = engine.new_state()
    active = []
    t0 = time.perf_counter()
    for f in frames:
        active.append(engine.step(state, f).active_per_patch)
    return len(frames) / (time.perf_counter() - t0), float(np.mean(active))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--tau-y", type=float, nargs="+", default=[0.6, 0.45, 0.3])
    ap.add_argument("--sequences", type=int, default=1500, help="read-out training sequences")
    ap.add_argument("--weights", type=Path, help="another ss-RNN's weights (rows after the first)")
    ap.add_argument(
        "--change-gate", nargs="+", default=[",".join(map(str, CHANGE_GATE))], metavar="LO,HI",
        help="change gates to score each read-out with (default: the engine's)",
    )  # fmt: skip
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="write the rows as JSON")
    args = ap.parse_args(argv)
    gates = [tuple(float(v) for v in g.split(",")) for g in args.change_gate]

    pans = list(me.family_sequences("pan", SIZE, seed=args.seed, **PAN))
    timing_frames = [f for seq in pans[:6] for f in seq.frames]
    rows = []
    runs = [(DEFAULT_WEIGHTS, t) for t in args.tau_y]
    if args.weights is not None:
        runs = [(DEFAULT_WEIGHTS, 0.6)] + [(args.weights, t) for t in args.tau_y]
    for weights, tau_y in runs:
        make, fit = engine_for(weights, tau_y, args.sequences, args.seed)
        for gate in gates:
            engine = make(gate)
            fps, active = timed_pass(engine, timing_frames)
            pan = me.evaluate([me.EngineMethod(engine)], pans, by="speed")["ss-RNN"]
            obj = me.evaluate_family(engine, "object", SIZE, quick=False, seed=args.seed, **OBJECT)
            still = me.evaluate_family(engine, "still", SIZE, quick=False, seed=args.seed, **STILL)
            rows.append(
                {
                    "weights": "shipped" if weights == DEFAULT_WEIGHTS else rel(weights),
                    "tau_y": tau_y,
                    "change_gate": list(gate),
                    "kappa": round(engine.model.kappa, 3),
                    "active_per_patch": round(active, 2),
                    "fps": fps,
                    **fit,
                    "pan": pan,
                    "object": obj,
                    "still": still,
                }
            )
            print(f"{weights.name} tau_y {tau_y} gate {gate}: done ({fit})", file=sys.stderr)

    speeds = [str(s) for s in PAN["speeds"]]
    head = [
        "weights",
        "tau_y",
        "change gate",
        "active units / patch",
        "step fps (ratio)",
        "read-out loss",
    ]
    head += ["pans per cell med / p90", "pans global med"]
    head += [f"per cell @{s}" for s in speeds]
    head += ["pans speed err", "object per cell", "object false motion", "still false motion"]
    weights = "" if args.weights is None else f" --weights {rel(args.weights)}"
    print(f"# python bench/code_density.py{weights} --tau-y {' '.join(map(str, args.tau_y))} "
          f"--change-gate {' '.join(args.change_gate)} --sequences {args.sequences} "
          f"--seed {args.seed}")  # fmt: skip
    print(f"# {SIZE[0]}x{SIZE[1]}; pans {PAN}; objects {OBJECT}; stills {STILL}; one thread")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        p, o, s = r["pan"], r["object"], r["still"]
        cells = [
            r["weights"], f"{r['tau_y']:g}", "-".join(f"{v:g}" for v in r["change_gate"]),
            f"{r['active_per_patch']:.2f}",
            f"{r['fps']:.0f} ({r['fps'] / rows[0]['fps']:.2f}x)", f"{r['loss']:.4f}",
            f"{p['cell_dir_err_median_deg']:.1f}° / {p['cell_dir_err_p90_deg']:.0f}°",
            f"{p['global_dir_err_median_deg']:.1f}°",
        ]  # fmt: skip
        cells += [f"{p['by'][k]['cell_dir_err_median_deg']:.1f}°" for k in speeds]
        cells += [
            f"{p['speed_rel_err_median']:.2f}", f"{o['cell_dir_err_median_deg']:.1f}°",
            f"{o['false_motion_rate']:.1%}", f"{s['false_motion_rate']:.1%}",
        ]  # fmt: skip
        print("| " + " | ".join(cells) + " |")
    if args.out:
        for r in rows:
            for fam in ("pan", "object", "still"):
                r[fam].pop("calibration", None)
        args.out.write_text(json.dumps(rows, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
