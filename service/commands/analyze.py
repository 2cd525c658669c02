"""``v1motion analyze``: the tuning report (report.json and figures) of trained weights vs their control."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from v1motion.models import WEIGHTS_DIR
from v1motion.service.commands import check_output

WEIGHTS = WEIGHTS_DIR


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "analyze",
        help="measure direction/speed tuning and read-out accuracy",
        description="Measure every unit's direction and speed tuning on drifting gratings, and the "
        "read-out's accuracy on panned images, for trained weights next to their time-shuffled "
        "control; write report.json and its figures.",
        epilog="example:\n  v1motion analyze --out docs/report "
        "--model-card models/weights/MODEL_CARD.md",
    )
    p.add_argument(
        "--weights",
        type=Path,
        default=WEIGHTS / "ssrnn_default.npz",
        help="trained weights to analyse (default: the shipped ssrnn_default.npz)",
    )
    p.add_argument(
        "--control",
        type=Path,
        default=WEIGHTS / "ssrnn_shuffled_control.npz",
        help="time-shuffled control to compare with (default: the shipped "
        "ssrnn_shuffled_control.npz)",
    )
    p.add_argument("--out", type=Path, required=True, help="folder for report.json and PNGs")
    p.add_argument(
        "--model-card",
        type=Path,
        default=None,
        help="also write the model card to this file (default: no model card)",
    )
    p.add_argument(
        "--update-weights",
        action="store_true",
        help="also write the tuning measured here into --weights and --control (the per-unit "
        "tuning the engine ships with, for its histograms, unit browser and aperture step), "
        "leaving every trained array as it is: after a change in how tuning is measured",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from v1motion.models.motion.engine import MotionEngine
    from v1motion.models.motion.tuning_report import build_report
    from v1motion.models.reports.model_card import write_model_card
    from v1motion.models.reports.motion import write_figures, write_report

    check_output(args.out, folder=True)
    if args.model_card is not None:
        check_output(args.model_card)
    for path in (args.weights, args.control):
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: run `v1motion train` first")
    engine = MotionEngine.load(args.weights)
    control = MotionEngine.load(args.control)
    bar = tqdm(total=5, desc="analyze")

    def step(msg):
        bar.set_description(msg)
        bar.update(1)

    report, art = build_report(
        engine.model, control.model, engine.readout, engine.levels, control.readout, progress=step
    )
    step("figures")
    args.out.mkdir(parents=True, exist_ok=True)
    report["figures"] = write_figures(engine.model, art, args.out)
    path = write_report(report, args.out)
    bar.close()
    if args.update_weights:
        for weights, summary in ((args.weights, art["model"]), (args.control, art["control"])):
            write_tuning(weights, summary)
            print(f"wrote the measured tuning into {weights}")
    if args.model_card:
        write_model_card(args.model_card, args.weights, args.control, report)
    print(
        json.dumps({k: v for k, v in report.items() if k not in ("details", "figures")}, indent=2)
    )
    print(f"wrote {path}")
    return 0


def write_tuning(weights: Path, summary) -> None:
    """Replace the ``tuning`` entry of a weights file, keeping its other arrays byte for byte."""
    import numpy as np

    from v1motion.models.motion.tuning_report import tuning_dict

    with np.load(weights, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["tuning"] = np.array(json.dumps(tuning_dict(summary)))
    tmp = weights.with_name(weights.name + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(weights)
