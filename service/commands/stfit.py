"""``v1motion stfit``: fit a sparse RNN to a spatio-temporal filter bank and write its report."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from v1motion.service.commands import check_output, not_negative, positive


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "stfit",
        help="fit a sparse RNN to a spatio-temporal filter bank; report JSON + PNG",
        description="Fit a sparse recurrent network (R, W0) so that R^tau W0 reproduces a bank of "
        "spatio-temporal filters (by default 3-D Gabors), then compare the network and the bank "
        "streaming over a video; write a JSON report and figures.",
        epilog="examples:\n  v1motion stfit --n-filters 400 --max-iter 100 --out runs/stfit-small\n"
        "  v1motion stfit --bank my_bank.npz --bank-key filters --no-video",
    )
    p.add_argument("--out", default="runs/stfit", help="output folder")
    p.add_argument("--bank", default=None, help=".npy/.npz bank (default: 3-D Gabor bank)")
    p.add_argument("--bank-key", default="bank", help="array name inside an .npz bank")
    p.add_argument("--layout", default="tnyx", choices=("tnyx", "ntyx"), help="axes of --bank")
    p.add_argument("--n-filters", type=int, default=1600, help="Gabor bank size N (even, <= 1600)")
    p.add_argument("--nt", type=int, default=30, help="Gabor filter length in frames")
    p.add_argument("--size", type=int, default=12, help="Gabor filter width = height in pixels")
    p.add_argument("--density", type=float, default=0.05, help="fraction of non-zero R")
    p.add_argument("--max-iter", type=int, default=300, help="L-BFGS iterations")
    p.add_argument("--init", default="lsq", choices=("lsq", "random"), help="start of the fit")
    p.add_argument("--seed", type=not_negative, default=0, help="random seed")
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--video",
        default=None,
        help="video file to compare the two streams on (default: synthetic gratings)",
    )
    src.add_argument(
        "--shared-video",
        default=None,
        help="name of a clip in the shared data folder's videos/, e.g. box.mp4 (default: none)",
    )
    p.add_argument("--frames", type=positive, default=60, help="frames of the comparison video")
    p.add_argument("--video-size", default="60x80", help="HxW the video is resized to")
    p.add_argument("--no-video", action="store_true", help="skip the streaming comparison")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from v1motion.models.datasets import require_shared_data
    from v1motion.models.reports.stfilter import write_report
    from v1motion.models.stfilter import RecurrentFilterFit, gabor_bank, load_bank
    from v1motion.models.stfilter.evaluate import load_video, synthetic_video

    check_output(args.out, folder=True)
    if args.video and not Path(args.video).is_file():
        raise FileNotFoundError(f"--video {args.video}: no such file")
    try:
        h, w = (int(v) for v in args.video_size.lower().split("x"))
    except ValueError:
        raise ValueError(f"--video-size must look like 60x80, got {args.video_size!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"--video-size must be at least 1x1, got {args.video_size!r}")
    params = None
    if args.bank:
        bank = load_bank(args.bank, key=args.bank_key, layout=args.layout)
        bank_name = str(args.bank)
    else:
        bank, params = gabor_bank(args.n_filters, args.size, args.size, args.nt, seed=args.seed)
        bank_name = f"gabor_bank(n_filters={args.n_filters}, lx=ly={args.size}, nt={args.nt})"
    nt = len(bank)  # the filters' length in frames, --nt or the given bank's
    if not args.no_video and args.frames <= nt:
        raise ValueError(
            f"--frames ({args.frames}) must be more than the filters' {nt} frames: the "
            "comparison's figures are over the frames after the first nt (or give --no-video)"
        )
    model = RecurrentFilterFit(
        density=args.density,
        init=args.init,
        max_iter=args.max_iter,
        seed=args.seed,
        progress=True,
    ).fit(bank)
    video, video_name = None, None
    if not args.no_video:
        if args.video:
            video, video_name = load_video(args.video, args.frames, h, w), str(args.video)
        elif args.shared_video:
            path = require_shared_data("videos", args.shared_video)
            video, video_name = load_video(path, args.frames, h, w), f"shared:{args.shared_video}"
        else:
            video, video_name = synthetic_video(args.frames, h, w, args.seed), "synthetic gratings"
        if len(video) < args.frames:
            print(
                f"note: {video_name} has {len(video)} frames, fewer than --frames {args.frames}",
                file=sys.stderr,
            )
    report = write_report(
        model, bank, args.out, params, video, video_name, extra={"bank": bank_name}
    )
    fit = report["fit"]
    summary = {
        "variance_explained_overall": fit["variance_explained_overall"],
        "variance_explained_overall_at_init": fit["variance_explained_overall_at_init"],
        "per_filter_min": fit["variance_explained_per_filter"]["min"],
        "density": fit["density"],
        "spectral_radius_R": fit["spectral_radius_R"],
        "fit_seconds": fit["fit_seconds"],
    }
    if "stream_comparison" in report:
        c = report["stream_comparison"]
        summary["stream_relative_error_after_nt"] = c["relative_error_after_nt"]
        summary["stream_seconds_per_frame"] = {
            "rnn": c["seconds_per_frame_rnn"],
            "feedforward": c["seconds_per_frame_feedforward"],
        }
    print(json.dumps(summary, indent=1))
    print(f"report: {args.out}/report.json, {args.out}/report.png")
    return 0
