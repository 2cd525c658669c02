"""``v1motion train``: reproduce the shipped ss-RNN weights (and the time-shuffled control) from a seed."""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().parents[2] / "models" / "weights"


def add_parser(subparsers) -> None:
    from models.training import TrainConfig

    p = subparsers.add_parser("train", help="train the motion engine's ss-RNN from natural movies")
    p.add_argument("--out-dir", type=Path, default=DEFAULT_OUT, help="where the .npz files go")
    p.add_argument("--levels", type=int, default=3, help="pyramid levels of the read-out")
    p.add_argument("--no-control", action="store_true", help="skip the time-shuffled control")
    p.add_argument("--no-progress", action="store_true")
    for f in fields(TrainConfig):
        if f.name == "shuffle_time":
            continue
        flag = f"--{f.name.replace('_', '-')}"
        if isinstance(f.default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
        else:
            p.add_argument(flag, type=type(f.default), default=f.default)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from models.build import build_all
    from models.training import TrainConfig

    cfg = TrainConfig(
        **{f.name: getattr(args, f.name) for f in fields(TrainConfig) if f.name != "shuffle_time"}
    )
    # build_all pins BLAS and OpenCV to one thread itself, so the weights do not depend on the core count.
    results = build_all(args.out_dir, cfg, args.levels, not args.no_control, not args.no_progress)
    print(json.dumps(results, indent=2))
    return 0
