"""Subcommands of the ``v1motion`` CLI, and how a command's failure reaches the user."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

USER_ERRORS = (OSError, ValueError)
"""What a command raises on a missing or unreadable file or a value it cannot use: told in one
line (``error: ...``, status 2) instead of a traceback; ``-v`` shows the traceback."""


def run_command(args: argparse.Namespace) -> int:
    """Run the parsed subcommand ``args.func``; its exit status."""
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as exc:
        if args.verbose:
            raise
        print(f"error: {exc} (v1motion -v {args.command} ... shows where)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _whole(text: str, least: int) -> int:
    try:
        k = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if k < least:
        raise argparse.ArgumentTypeError(f"must be {least} or more, got {k}")
    return k


def not_negative(text: str) -> int:
    """An argparse type: a whole number, 0 or more (seeds, counts); argparse names the option in its
    message ("argument --seed: must be 0 or more, got -1") and stops before any work."""
    return _whole(text, 0)


def positive(text: str) -> int:
    """An argparse type: a whole number, 1 or more (sizes, counts of steps, frames, epochs); 0 ran
    a whole job and ended in a traceback."""
    return _whole(text, 1)


def positive_float(text: str) -> float:
    """An argparse type: a number above 0 (seconds, rates, sizes)."""
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not x > 0 or x == float("inf"):
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return x


def check_output(path: str | Path, folder: bool = False) -> None:
    """Refuse, before any work, an output the end of a long run would fail to write (a folder
    where a file goes, a file where a folder goes, a file in its parents): found after the fit,
    minutes of work were lost. A ``ValueError``: one line, status 2."""
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise ValueError(f"{path} is a file: give a folder for the results")
    if not folder and path.is_dir():
        raise ValueError(f"{path} is a folder: give a file name")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{parent} is a file, so {path} cannot be written under it")
            break
