"""``v1motion train``: reproduce the shipped ss-RNN weights (and the time-shuffled control) from a seed."""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path

from v1motion.models import WEIGHTS_DIR
from v1motion.service.commands import not_negative, positive

DEFAULT_OUT = WEIGHTS_DIR


# Help for the training settings; the defaults are the shipped model's (see ``TrainConfig``).
SETTING_HELP = {
    "n_atoms": "dictionary atoms per patch",
    "n_clones": "recurrent clones per atom",
    "patch": "patch side in pixels",
    "tau_x": "standard deviation of a unit's value (slab) prior",
    "tau_y": "standard deviation of the patch noise",
    "kmax": "most active units per patch",
    "whiten_size": "side of the whitening filter in pixels",
    "batch": "sequences per training step",
    "seq_len": "frames per training sequence",
    "steps_w": "phase 1 steps (dictionary only)",
    "steps_r": "phase 2 steps (dictionary and recurrence)",
    "lr_w": "dictionary learning rate in phase 1",
    "lr_w_phase2": "dictionary learning rate in phase 2",
    "lr_b": "bias learning rate",
    "lr_r": "recurrence learning rate",
    "r_decay": "weight decay of the recurrence",
    "r_clip": "largest absolute recurrent weight",
    "r_init": "scale of the initial recurrent weights",
    "b_init": "initial unit bias (log-odds of being on)",
    "speed_min": "slowest training pan, px/frame",
    "speed_max": "fastest training pan, px/frame",
    "speed_log": "draw pan speeds log-uniformly instead of uniformly",
    "clip_fraction": "fraction of sequences from real video clips",
    "split_every": "steps between clone splits",
    "split_until": "fraction of phase 2 after which clones stop splitting",
    "split_threshold": "a clone used less than this times its group's mean is re-split",
    "dead_every": "phase 1 steps between re-seeding unused atoms",
    "r_density": "fraction of recurrent weights kept after training",
    "seed": "random seed",
}

DESCRIPTION = """\
Train the motion engine's ss-RNN on natural movies and fit its motion read-out, reproducing the
shipped weights (models/weights/ssrnn_default.npz) and a time-shuffled control from the seed.
Needs the research data folder (V1MOTION_SHARED_DATA, or ../shared/data); the shipped weights took
about 5 minutes on one core (their card says how long), the read-out's fit (fit-readout) more."""

EPILOG = """\
examples:
  v1motion train                          # the shipped model and its control, seed 0
  v1motion train --out-dir runs/w --seed 1 --no-control"""


def add_parser(subparsers) -> None:
    from v1motion.models.motion.train_config import TrainConfig

    p = subparsers.add_parser(
        "train",
        help="train the motion engine's ss-RNN from natural movies",
        description=DESCRIPTION,
        epilog=EPILOG,
    )
    p.add_argument(
        "--out-dir",
        type=Path,
        default=DEFAULT_OUT,
        help="folder the .npz weights are written to (default: models/weights, the shipped ones)",
    )
    p.add_argument("--levels", type=positive, default=3, help="pyramid levels of the read-out")
    p.add_argument("--no-control", action="store_true", help="skip the time-shuffled control")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    for f in fields(TrainConfig):
        if f.name == "shuffle_time":
            continue
        flag = f"--{f.name.replace('_', '-')}"
        text = SETTING_HELP.get(f.name, "training setting (see TrainConfig)")
        if isinstance(f.default, bool):
            p.add_argument(
                flag,
                action=argparse.BooleanOptionalAction,
                default=f.default,
                help=f"{text} (default: %(default)s)",
            )
        else:
            # every count and size is 1 or more: 0 ran for minutes and ended in a traceback
            kind = {"seed": not_negative}.get(f.name, positive if type(f.default) is int else float)
            p.add_argument(flag, type=kind, default=f.default, help=text)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from v1motion.models.motion.build import build_all
    from v1motion.models.motion.training import TrainConfig

    cfg = TrainConfig(
        **{f.name: getattr(args, f.name) for f in fields(TrainConfig) if f.name != "shuffle_time"}
    )
    # build_all pins BLAS and OpenCV to one thread itself, so the weights do not depend on the core count.
    results = build_all(args.out_dir, cfg, args.levels, not args.no_control, not args.no_progress)
    print(json.dumps(results, indent=2))
    return 0
