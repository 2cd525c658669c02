"""``v1motion motion INPUT -o OUTDIR``: the motion map of a video file, offline, with a progress bar.

Runs the same job function as the service (sniffing, sandboxed decoding, the same limits), and writes
motion.json, motion.npz, overlay.mp4, summary.png and result.json into OUTDIR.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_parser(subparsers) -> None:
    from v1motion.service.jobs.limits import Limits

    limits = Limits()
    p = subparsers.add_parser(
        "motion",
        help="compute the motion map of a video file",
        description="Compute the motion map of a video file offline, as the service's video jobs "
        "do, and write motion.json, motion.npz, overlay.mp4 (the video with the map drawn on "
        "it), summary.png and result.json into the output folder.",
        epilog="examples:\n  v1motion motion clip.mp4 -o results/clip\n"
        "  v1motion motion long.mkv -o results/long --max-seconds 60 --no-overlay",
    )
    p.add_argument("input", type=Path, help="video file (MP4/MOV, AVI, Matroska/WebM)")
    p.add_argument("-o", "--output", type=Path, required=True, help="results folder")
    p.add_argument(
        "--engine",
        choices=("default", "random"),
        default="default",
        help="'default' is the shipped trained model; 'random' a small untrained one, for tests",
    )
    p.add_argument(
        "--max-frames",
        type=_positive(int),
        default=None,
        help=f"stop after this many frames (default: {limits.max_frames}, as the service)",
    )
    p.add_argument(
        "--max-seconds",
        type=_positive(float),
        default=None,
        help="stop after this many seconds of video, by the frames' own times "
        f"(default: {limits.max_seconds:g}, as the service)",
    )
    p.add_argument(
        "--max-side",
        type=_positive(int),
        default=None,
        help=f"shrink frames to this longer side first (default: {limits.max_side}, the service's "
        "default; V1MOTION_VIDEO_MAX_SIDE sets the service's, not this command's)",
    )
    p.add_argument(
        "--threads",
        type=_positive(int),
        default=None,
        help="threads of the engine: with 2, each frame is read while the following are encoded (default: "
        "2, or 1 on one core; the results are the same)",
    )
    p.add_argument("--no-overlay", action="store_true", help="skip overlay.mp4")
    p.add_argument(
        "--overlay-codec",
        choices=("auto", "h264", "mp4v"),
        default=None,
        help="overlay.mp4's codec: h264 plays in browsers (needs PyAV: the h264 extra), mp4v "
        "(desktop players only) encodes faster; auto: h264 where PyAV is installed, else mp4v "
        "(default: auto, as the service)",
    )
    p.set_defaults(func=run)


def _positive(kind):
    """An argparse type: a number above 0 (a cap of 0 frames read as 'no frame could be decoded')."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
        return value

    return parse


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    from v1motion.service.jobs.decode import DecodeError
    from v1motion.service.jobs.engines import engine_factory, pin_threads, settle_job_process
    from v1motion.service.jobs.layout import RESULT_FILES
    from v1motion.service.jobs.limits import H264_MISSING, Limits, h264_available
    from v1motion.service.jobs.process import process_video

    out = args.output
    if out.exists() and not out.is_dir():
        print(f"error: {out} is a file, not a folder; choose a new folder", file=sys.stderr)
        return 2
    earlier = {p.name for p in out.iterdir()} if out.exists() else set()
    if earlier - set(RESULT_FILES):
        print(f"error: {out} exists and holds other files; choose a new folder", file=sys.stderr)
        return 2
    import numba

    if args.threads is None:
        args.threads = min(2, numba.config.NUMBA_NUM_THREADS)
    if not 1 <= args.threads <= numba.config.NUMBA_NUM_THREADS:
        print(
            f"error: --threads must be between 1 and {numba.config.NUMBA_NUM_THREADS}",
            file=sys.stderr,
        )
        return 2
    if not args.input.is_file():
        print(f"error: {args.input} is not a file", file=sys.stderr)
        return 2
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file where a folder should be, a read-only place
        print(f"error: cannot create the results folder {out}: {exc}", file=sys.stderr)
        return 2
    if args.overlay_codec == "h264" and not h264_available():
        print(f"error: {H264_MISSING}", file=sys.stderr)
        return 2
    limits = Limits()
    overrides = {"max_frames": args.max_frames, "max_seconds": args.max_seconds}
    overrides["max_side"] = args.max_side
    overrides["overlay_codec"] = args.overlay_codec
    limits = replace(limits, **{k: v for k, v in overrides.items() if v is not None})
    bar = None  # started with the first progress report: a refused file prints no empty bar

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(unit="frame", desc=args.input.name, total=total)
        bar.total = total
        bar.update(done - bar.n)

    def close_bar() -> None:
        if bar is not None:
            bar.close()

    pin_threads(1)  # the job overlaps its own stages; library pools would only contend
    build = engine_factory(args.engine, args.threads)

    def settled_engine():
        # process_video checks the container first, so a refused file never builds an engine
        engine = build()
        settle_job_process()
        return engine

    try:
        # log lines print above the bar, which then ends once rather than broken and redrawn
        with logging_redirect_tqdm():
            result = process_video(
                args.input,
                out,
                settled_engine,
                limits,
                progress,
                overlay=not args.no_overlay,
            )
    except (DecodeError, OSError) as exc:  # refused, or unreadable, or unwritable (a full disk)
        close_bar()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    close_bar()
    if earlier:  # said once they are: a refused or failed run leaves the earlier ones in place
        print(f"note: the earlier results in {out} were replaced", file=sys.stderr)
    print(json.dumps(result, indent=1))
    print(describe(result))
    print(f"results in {out}")
    return 0


def describe(result: dict) -> str:
    """Lines for people: the main directions, the speed of the run and where its time went."""
    main = result["main_directions"]
    lines = [
        "main directions: "
        + (
            "; ".join(
                f"{m['direction_deg']:g} deg ({m['share']:.0%}, median "
                f"{m['median_speed_px_per_frame']:.3g} px/frame)"
                for m in main
                if m["direction_deg"] is not None
            )
            or "none (nothing moved confidently)"
        )
    ]
    n, fps = result["frames"], result["fps"]
    rate = result["processed_frames_per_second"]
    lines.append(f"{n} frames at {rate:g} frames/s = {rate / fps:.2f}x real time")
    stages = ", ".join(
        f"{name} {n / s:.0f}/s" if s > 0 else f"{name} -"
        for name, s in result["stage_seconds"].items()
        if not name.startswith("write_")
    )
    lines.append(f"frames/s of each stage on its own (they overlap): {stages}")
    lines.extend(f"warning: {w}" for w in result.get("warnings", []))
    return "\n".join(lines)
