"""``v1motion fit-readout``: regenerate the motion engine's MT read-out from the shipped ss-RNN."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from v1motion.models import WEIGHTS_DIR
from v1motion.service.commands import not_negative, positive, positive_float

DEFAULT_OUT = WEIGHTS_DIR / "mt_readout_default.npz"
DEFAULT_AXIS_OUT = WEIGHTS_DIR / "axis_calibration.json"
AXIS_COMMAND = "v1motion fit-readout --axis-calibration"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "fit-readout",
        help="fit the MT read-out (direction, speed, still) of the shipped ss-RNN",
        description="Run training sequences (pans, gratings, still frames and moving objects made "
        "from the training stills) through the engine and fit the MT read-out on the pooled "
        "activity it sees live. With the defaults it remakes the shipped read-out and its card "
        "(about 6 minutes on one core, and 7 GB of memory at the peak).",
        epilog="example:\n  v1motion fit-readout --out /tmp/readout.npz   # then compare with "
        "python bench/accuracy.py --quick",
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the .npz goes")
    p.add_argument(
        "--sequences", type=positive, default=2500, help="training sequences (12 frames)"
    )
    p.add_argument("--levels", type=positive, default=4, help="pyramid levels read")
    p.add_argument("--hidden", type=positive, default=64, help="MT units")
    p.add_argument(
        "--pool-px", type=positive, nargs="+", default=[32, 96], help="pooling box sides, px"
    )
    p.add_argument("--tau", type=positive_float, default=2.0, help="temporal average, frames")
    p.add_argument("--epochs", type=positive, default=16, help="passes over the data")
    p.add_argument("--seed", type=not_negative, default=0, help="seeds the sequences and the fit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--axis-calibration",
        action="store_true",
        help="instead, refit only the calibration of the axis the aperture step reads from the "
        "units (on drifting gratings of every axis, 2.5 degrees apart; about a minute) and write "
        "it to --axis-out; rerun it after retraining the ss-RNN",
    )
    p.add_argument(
        "--axis-out", type=Path, default=DEFAULT_AXIS_OUT, help="where the axis calibration goes"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from v1motion.models.motion.mt_fit import fit_default

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.axis_calibration:
        return run_axis_calibration(args)
    out = Path(args.out)  # checked before minutes of work: numpy would add .npz, elsewhere
    if out.suffix != ".npz" or out.is_dir() or not out.parent.is_dir():
        print(f"error: --out {out} must be a .npz file in an existing folder", file=sys.stderr)
        return 2
    summary = fit_default(
        args.out, sequences=args.sequences, levels=args.levels, hidden=args.hidden,
        pool_px=tuple(args.pool_px), tau=args.tau, epochs=args.epochs, seed=args.seed,
        progress=not args.no_progress,
    )  # fmt: skip
    print(json.dumps({"out": str(args.out), **summary}, indent=2))
    return 0


def run_axis_calibration(args: argparse.Namespace) -> int:
    from v1motion.models.determinism import single_threaded
    from v1motion.models.motion.engine import MotionEngine
    from v1motion.models.motion.mt_fit import fit_axis_calibration

    engine = MotionEngine.load_default()  # fit_axis_calibration measures it uncalibrated
    with single_threaded():
        result = fit_axis_calibration(engine, progress=not args.no_progress)
    result = {
        "what": "offsets (true - estimated axis, degrees) on a grid of axes in [0, 180) that correct "
        "the axis the motion engine's aperture step reads from the ss-RNN's units "
        "(models/motion/mt_readout.py: calibrate_axis), and the coherence of gratings on the same "
        "grid, to which the aperture step relates each cell's (coherence_on_axis_scale)",
        # with --axis-out unless it is the shipped one's place, which the command alone overwrites
        "command": AXIS_COMMAND
        + ("" if args.axis_out == DEFAULT_AXIS_OUT else f" --axis-out {args.axis_out.as_posix()}"),
        **result,
    }
    args.axis_out.write_text(json.dumps(result, indent=1) + "\n")
    worst = max(abs(v) for v in result["offsets_deg"])
    print(
        f"wrote {args.axis_out}: {len(result['offsets_deg'])} offsets, the largest {worst:.1f} deg"
    )
    return 0
