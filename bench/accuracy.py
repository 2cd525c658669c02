"""Ground-truth accuracy of the motion engine next to OpenCV optical flow, on the same frames and cells.

Families of stimuli with known motion (``v1motion.models.motion.motion_eval``): pans of held-out stills, drifting
gratings, plaids, a textured object over a still background, abrupt turns, still frames and real clips
(against DIS MEDIUM). Each method is pooled to the engine's 16-px cells; flow baselines use the direction
and length of each cell's mean flow vector and count a cell as moving when that length exceeds 0.2 px/frame;
the engine counts a cell as moving when its confidence exceeds 0.5. Prints one table, writes JSON.

    python bench/accuracy.py --quick                  # < 2 min: 320x240, few directions and speeds
    python bench/accuracy.py --out docs/motion/accuracy.json --md docs/motion/accuracy.md
    python bench/accuracy.py --engine path/to/weights.npz --families pan,object --sizes 320x240

Deterministic for a given ``--seed`` (stimuli and pan starts are seeded; the engine and the flows are
deterministic). Runs on one thread.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # benchmark the models/ of this checkout, whatever is installed

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from v1motion.models.motion import motion_eval as me  # noqa: E402
from v1motion.models.motion.engine import DEFAULT_MT, DEFAULT_WEIGHTS, MotionEngine  # noqa: E402

cv2.setNumThreads(1)

# Full-run settings per family (the families' own defaults, written out so the output records them).
FULL = {
    "pan": {"n_directions": 16, "speeds": me.PAN_SPEEDS},
    "grating": {"n_directions": 8, "periods": (8.0, 16.0, 32.0), "speeds": (0.5, 1.0, 2.0, 4.0)},
    "plaid": {"n_directions": 8, "speeds": (1.0, 2.0, 4.0)},
    "object": {"n_directions": 8, "speeds": (1.0, 2.0, 4.0)},
    "abrupt": {"n_directions": 8, "turns_deg": (90.0, 135.0, 180.0), "speed": 2.0},
    "still": {"crops_per_still": 4},
    "clip": {},
}
BY = {
    "pan": "speed",
    "grating": "speed",
    "plaid": "type",
    "object": "speed",
    "abrupt": "turn_size_deg",
    "clip": "clip",
}
# Speed ranges the targets are set on, scored pooled (every frame and cell of the range).
RANGES = {"pan": {"0.5-8": (0.5, 8.0), "8-16": (8.0, 16.0)}}
# The accuracy targets (issue 11), each on its own family, size and range: (what, family, sizes,
# range label or None, summary key, bound: met when the figure is at most this, format).
TARGETS = (
    ("pans 0.5-8 px/frame: global direction", "pan", ("320x240",), "0.5-8", "global_dir_err_median_deg", 3.0, "{:.1f}°"),
    ("pans 0.5-8 px/frame: per-cell direction", "pan", ("320x240",), "0.5-8", "cell_dir_err_median_deg", 10.0, "{:.1f}°"),
    ("pans 0.5-8 px/frame: speed", "pan", ("320x240",), "0.5-8", "speed_rel_err_median", 0.20, "{:.0%}"),
    ("pans 8-16 px/frame: global direction", "pan", ("640x480",), "8-16", "global_dir_err_median_deg", 10.0, "{:.1f}°"),
    ("pans 8-16 px/frame: speed", "pan", ("640x480",), "8-16", "speed_rel_err_median", 0.30, "{:.0%}"),
    ("gratings: global direction", "grating", ("320x240", "640x480"), None, "global_dir_err_median_deg", 10.0, "{:.1f}°"),
    ("gratings: speed along the normal", "grating", ("320x240", "640x480"), None, "speed_rel_err_median", 0.25, "{:.0%}"),
    ("object on a still background: false motion", "object", ("320x240", "640x480"), None, "false_motion_rate", 0.02, "{:.1%}"),
    ("object on a still background: per-cell direction", "object", ("320x240", "640x480"), None, "cell_dir_err_median_deg", 20.0, "{:.1f}°"),
    ("real clips: per-cell direction against DIS medium", "clip", ("320x240", "640x480"), None, "cell_dir_err_median_deg", 20.0, "{:.1f}°"),
    ("real clips: false motion", "clip", ("320x240", "640x480"), None, "false_motion_rate", 0.03, "{:.1%}"),
    ("after a velocity change: frames to within 20°", "abrupt", ("320x240", "640x480"), None, "frames_to_recover_median", 5, "{:.0f}"),
)  # fmt: skip
COLUMNS = (
    ("global dir err (med/mean °)", ("global_dir_err_median_deg", "global_dir_err_mean_deg"), "{:.1f}"),
    ("cell dir err med °", ("cell_dir_err_median_deg",), "{:.1f}"),
    ("cell dir err p90 °", ("cell_dir_err_p90_deg",), "{:.0f}"),
    ("speed err (med \\|pred/true-1\\|)", ("speed_rel_err_median",), "{:.2f}"),
    ("moving cells shown", ("moving_shown_rate",), "{:.0%}"),
    ("cell dir err med ° of shown cells", ("shown_cell_dir_err_median_deg",), "{:.1f}"),
    ("cell dir err med ° of textured cells (share)", ("textured_cell_dir_err_median_deg", "textured_moving_share"), "{:.1f}"),
    ("false motion", ("false_motion_rate",), "{:.1%}"),
    ("frames to recover (med/max)", ("frames_to_recover_median", "frames_to_recover_max"), "{:.0f}"),
)  # fmt: skip


NOTES = """
Columns. *global dir err*: angle between the method's global (dominant) direction and the truth, median
and mean over scored frames (engine: `global_direction`; flow: direction of the frame's mean flow vector;
object family: truth = the object's velocity). *cell dir err*: angle between each cell's direction and its
true direction, over all moving cells of all scored frames (median, 90th percentile); a cell with no
direction (zero flow) scores 90°. *speed err*: median over moving cells of |predicted / true speed - 1|.
*moving cells shown*: share of moving cells the method shows as moving (engine confidence > 0.5; flow
cell mean > 0.2 px/frame). *cell dir err med ° of shown cells*: the per-cell median over those shown
cells only, the motion a user sees on the map (on real clips DIS fills textureless regions with the
motion around them, cells the engine leaves unconfident). *false motion*: the same share over still cells. *frames to recover*: frames
after an abrupt turn until the global direction is first within 20° of the new direction (1 = on the
first new frame; "never" = not within the sequence's frames after the turn).

Families (`models/motion/motion_eval.py`; held-out stills chelsea, rocket, gravel only). Sequences of 16
frames, scored on frames 8, 10, 12, 14 (the engine's state carries over frames: warm-up first).
*pan*: rigid pans, 16 directions x 0.25-16 px/frame, one still per (direction, speed) in turn; stills
too small for the fastest pan are upscaled (cubic) once per size, the same factor for every speed.
*grating*: square gratings, 8 directions, periods 8/16/32 px x speeds 0.5-4 with speed/period < 0.4;
truth = normal velocity. *plaid*: two sine gratings (periods 16 and 24 px), normals at +-60° (type I)
or +20°/+70° (type II) from the pattern direction, 8 directions x 1/2/4 px/frame; truth = pattern
velocity (intersection of constraints). *object*: a textured square or disc (side = 1/4 of the frame
width) over another, still, held-out still; object cells >= 75 % covered at this frame and the one
before, background cells 0 %, others not scored. *abrupt*: 2 px/frame pans turning by 90°, 135° or
180° at frame 10 (22 frames; per-cell scores on frames 18, 20). *still*: still crops with Gaussian
noise of 2/255 per frame (so flow methods see noise, not a frozen frame). *clip*: 56-frame windows of
the real clips (vtest from frame 180, box 120, cup 40, tree 12; tree only at its native 320x240),
truth = DIS MEDIUM on the same frames (cell mean), cells moving > 1 px/frame and still < 0.2 px/frame;
the DIS medium row of this family is the reference itself (0 by construction). *textured cells*
(clips only): the same per-cell error over the moving cells whose image has 2-D texture (smaller
eigenvalue of the structure tensor at least 1 (grey level/px)^2, `TEXTURE_MIN`), and their share of the
moving cells; elsewhere (a blank wall, a single edge) the frames do not fix the motion and DIS fills it
in from its smoothness prior (on `cup.mp4` it shows much of the white wall moving 1-8 px/frame).
"""


def load_engine(spec: str, mt: str | None = None) -> MotionEngine:
    """The engine of ``--engine`` (an ss-RNN) with the MT read-out of ``--mt`` (default: shipped)."""
    mt_path = DEFAULT_MT
    if mt is not None:
        mt_path = Path(mt)
        if spec == "random" or not mt_path.exists():
            raise SystemExit(f"--mt {mt!r}: no such file, or --engine random (it has its own)")
    if spec == "random":
        return MotionEngine.random(seed=0)
    path = DEFAULT_WEIGHTS if spec == "default" else Path(spec)
    if not path.exists():
        raise SystemExit(
            f"--engine {spec!r}: no such file; use 'default', 'random' or a weights .npz"
        )
    if spec == "default":
        return MotionEngine.load_default(mt_path=mt_path)
    # another ss-RNN: the shipped axis calibration is not its own
    return MotionEngine.load(path, mt_path=mt_path)


def parse_gate(text: str) -> tuple[float, float] | None:
    """``--change-gate``: 'off' or 'LO,HI' with 0 <= LO < HI (the engine's ``change_gate``)."""
    if text == "off":
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise SystemExit(
            f"--change-gate {text!r}: expected LO,HI (e.g. 0.1,0.3) or 'off'"
        ) from None
    if not 0 <= lo < hi:
        raise SystemExit(f"--change-gate {text!r}: expected 0 <= LO < HI")
    return (lo, hi)


def rel(path: Path) -> str:
    """A path relative to the project root when inside it (outputs name no machine paths)."""
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return Path(path).name


def command_args(argv: list[str]) -> list[str]:
    """The arguments as recorded in the outputs: the paths given to ``--out``, ``--md``, ``--engine``
    and ``--mt`` as :func:`rel` writes them (a file outside the project by its name only)."""
    out, paths = [], ("--out", "--md", "--engine", "--mt")
    for i, arg in enumerate(argv):
        flag, eq, value = arg.partition("=")
        if eq and flag in paths:
            arg = f"{flag}={rel(Path(value))}"
        elif i > 0 and argv[i - 1] in paths and arg not in ("default", "random"):
            arg = rel(Path(arg))
        out.append(arg)
    return out


def fmt(summary: dict, keys, spec: str) -> str:
    vals = [summary.get(k) for k in keys]
    if all(v is None for v in vals):
        return "-"
    if keys[0] == "textured_cell_dir_err_median_deg":  # the error, then the share of moving cells
        err, share = vals
        return f"{'-' if err is None else spec.format(err)} ({share:.0%})"
    text = "/".join("-" if v is None else spec.format(v) for v in vals)
    if keys[0] == "frames_to_recover_median" and summary.get("not_recovered"):
        text += f" ({summary['not_recovered']} never)"
    return text


def table(rows: list[dict]) -> str:
    head = ["family", "size", "method", "seqs"] + [c[0] for c in COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        s = r["summary"]
        cells = [r["family"], r["size"], r["method"], str(s["n_sequences"])]
        cells += [fmt(s, keys, spec) for _, keys, spec in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def by_table(rows: list[dict], family: str, key: str, methods) -> str:
    """Per-cell median / p90 direction error and speed error by ``key`` for one family."""
    sel = [
        r for r in rows if r["family"] == family and r["method"] in methods and "by" in r["summary"]
    ]
    if not sel:
        return ""
    values = list(sel[0]["summary"]["by"])
    head = ["size", "method"] + [v if key in ("type", "clip") else f"{key} {v}" for v in values]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in sel:
        cells = [r["size"], r["method"]]
        for v in values:
            s = r["summary"]["by"].get(v, {})
            med, p90, spd = (s.get(k) for k in ("cell_dir_err_median_deg", "cell_dir_err_p90_deg", "speed_rel_err_median"))  # fmt: skip
            text = "-" if med is None else f"{med:.1f}° / {p90:.0f}° / {spd:.2f}"
            if s.get("textured_cell_dir_err_median_deg") is not None:
                text += f"; textured {s['textured_cell_dir_err_median_deg']:.1f}° ({s['textured_moving_share']:.0%})"  # fmt: skip
            if s.get("frames_to_recover_median") is not None or s.get("not_recovered"):
                rec = s.get("frames_to_recover_median")
                text += f"; recover {'-' if rec is None else f'{rec:.0f}'}"
                text += f" ({s['not_recovered']} never)" if s.get("not_recovered") else ""
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def targets_table(rows: list[dict], engine: str = "ss-RNN", peer: str = "DIS medium") -> str:
    """The issue's targets, each scored on its family, size and range: the engine's figure, whether
    it meets the bound, and the optical-flow peer's figure on the same frames (where it ran)."""
    by_key = {(r["family"], r["size"], r["method"]): r["summary"] for r in rows}
    lines = [
        f"| target | size | bound | {engine} | met | {peer} |",
        "|---|---|---|---|---|---|",
    ]
    for what, family, sizes, span, key, bound, spec in TARGETS:
        for size in sizes:

            def pick(method, span=span, key=key, family=family, size=size):
                """The method's figure on this target's range (None where it did not run)."""
                s = by_key.get((family, size, method))
                if s is None:
                    return None
                return (s.get("ranges") or {}).get(span, {}).get(key) if span else s.get(key)

            if (family, size, engine) not in by_key:
                continue
            figure, p_fig = pick(engine), pick(peer)
            show = lambda v, spec=spec: "-" if v is None else spec.format(v)  # noqa: E731
            met = "-" if figure is None else ("yes" if figure <= bound else "**no**")
            lines.append(f"| {what} | {size} | ≤ {spec.format(bound)} | {show(figure)} | {met} | {show(p_fig)} |")  # fmt: skip
    return "\n".join(lines) if len(lines) > 2 else ""


def calibration_table(rows: list[dict], family: str = "pan") -> str:
    sel = [r for r in rows if r["family"] == family and r["summary"]["calibration"]]
    if not sel:
        return ""
    lines = [
        "| size | method | " + " | ".join(f"d{i + 1}" for i in range(10)) + " |",
        "|" + "---|" * 12,
    ]
    for r in sel:
        cal = r["summary"]["calibration"]
        cells = [f"{c['confidence_lo']:.2f}-{c['confidence_hi']:.2f}: {c['dir_err_median_deg']:.0f}°" for c in cal]  # fmt: skip
        lines.append(f"| {r['size']} | {r['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--quick", action="store_true", help="few directions/speeds, 320x240 only")
    ap.add_argument("--engine", default="default", help="'default' (shipped weights), 'random' or a weights .npz")  # fmt: skip
    ap.add_argument(
        "--mt", default=None, metavar="NPZ",
        help="an MT read-out (v1motion fit-readout --out) instead of the shipped one",
    )  # fmt: skip
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sizes", default=None, help="comma-separated WxH (default 320x240,640x480; quick 320x240)")  # fmt: skip
    ap.add_argument(
        "--families", default=None, help=f"comma-separated, from {','.join(me.FAMILIES)}"
    )
    ap.add_argument(
        "--no-flow", action="store_true", help="the engine only, no optical-flow baselines"
    )
    ap.add_argument(
        "--change-gate", default=None, metavar="LO,HI",
        help="the engine's change gate (code change mapped from LO-HI to a factor on confidence), "
        "or 'off'; default the engine's CHANGE_GATE",
    )  # fmt: skip
    ap.add_argument(
        "--tau", type=float, default=None, metavar="FRAMES",
        help="the read-out's temporal average (exponential, frames; it also averages the change "
        "gate's code change); default the one the MT read-out was fitted with",
    )  # fmt: skip
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    ap.add_argument("--md", type=Path, default=None, help="write the tables as Markdown here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    families = args.families.split(",") if args.families else list(me.FAMILIES)
    for f in families:
        if f not in me.FAMILIES:
            raise SystemExit(f"unknown family {f!r}; choose from {', '.join(me.FAMILIES)}")
    default_sizes = "320x240" if args.quick else ",".join(f"{w}x{h}" for w, h in me.SIZES)
    sizes = [me.parse_size(s) for s in (args.sizes or default_sizes).split(",")]

    engine = load_engine(args.engine, args.mt)
    if args.change_gate is not None:
        engine.change_gate = parse_gate(args.change_gate)
    if args.tau is not None:
        if not args.tau >= 1.0:
            raise SystemExit(f"--tau {args.tau}: expected at least 1 frame")
        engine.pooling = dataclasses.replace(engine.pooling, tau=args.tau)
    engine.warmup()
    methods = [me.EngineMethod(engine)]
    if not args.no_flow:
        methods += me.flow_methods(me.CELL_PX)

    given = argv if argv is not None else sys.argv[1:]
    command = "python bench/accuracy.py " + " ".join(shlex.quote(a) for a in command_args(given))
    rows, timings = [], {}
    t_all = time.perf_counter()
    for size in sizes:
        for family in families:
            opts = {} if args.quick else FULL[family]
            seqs = me.family_sequences(family, size, quick=args.quick, seed=args.seed, **opts)
            label = f"{family} {size[0]}x{size[1]}"
            t0 = time.perf_counter()
            bar = lambda it, label=label: tqdm(it, desc=label, unit="seq", leave=False)  # noqa: E731
            res = me.evaluate(
                methods, seqs, me.CELL_PX, progress=bar, by=BY.get(family),
                ranges=RANGES.get(family),
            )  # fmt: skip
            timings[label] = round(time.perf_counter() - t0, 1)
            for name, summary in res.items():
                rows.append({"family": family, "size": f"{size[0]}x{size[1]}", "method": name, "summary": summary})  # fmt: skip
            tqdm.write(f"{label}: {timings[label]:.0f} s")
    total = time.perf_counter() - t_all

    engine_name = args.engine if args.engine in ("default", "random") else rel(Path(args.engine))
    if args.mt is not None:
        engine_name += f" with the MT read-out {rel(Path(args.mt))}"
    header = (
        f"# {command}\n"
        f"# engine: {engine_name}"
        + (f" ({rel(DEFAULT_WEIGHTS)})" if args.engine == "default" else "")
        + f"; change gate {engine.change_gate}; tau {engine.pooling.tau:g} frames; seed {args.seed}; {'quick' if args.quick else 'full'} mode; "
        f"{total:.0f} s wall clock on one thread"
    )
    main_table = table(rows)
    goals = targets_table(rows)
    print(header)
    print(main_table)
    if goals:
        print("\nTargets (issue 11), each on its own family, size and speed range\n" + goals)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "command": command,
            "engine": engine_name,
            "change_gate": engine.change_gate,
            "tau_frames": engine.pooling.tau,
            "seed": args.seed,
            "quick": args.quick,
            "sizes": [f"{w}x{h}" for w, h in sizes],
            "families": families,
            "settings": {f: (me.QUICK[f] if args.quick else FULL[f]) for f in families},
            "cell_px": me.CELL_PX,
            "engine_moving_confidence": me.CONFIDENT,
            "flow_moving_min_px_per_frame": me.FLOW_MOVING_MIN,
            "versions": {"numpy": np.__version__, "opencv": cv2.__version__},
            "seconds": timings,
            "total_seconds": round(total, 1),
            "results": rows,
        }
        args.out.write_text(json.dumps(doc, indent=1, default=lambda o: list(o)) + "\n")
    if args.md is not None:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        names = [m.name for m in methods]
        parts = [
            "# Motion accuracy against ground truth\n",
            "Produced by `bench/accuracy.py` (families and scores in `models/motion/motion_eval.py`):\n",
            f"```\n{header.replace('# ', '')}\n```\n",
            main_table + "\n",
        ]
        if goals:
            parts += [
                "### Targets, each scored on its own family, size and speed range (pooled)\n",
                goals + "\n",
            ]
        parts.append(NOTES)
        for family, key in BY.items():
            t = by_table(rows, family, key, names)
            if t:
                parts += [f"\n### {family}: per-cell median / p90 direction error / speed error, by {key}\n", t + "\n"]  # fmt: skip
        cal = calibration_table(rows)
        if cal:
            parts += ["\n### Calibration (pans, moving cells): confidence decile range: median direction error (deciles tied at confidence 1.00 merge)\n", cal + "\n"]  # fmt: skip
        args.md.write_text("\n".join(parts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
