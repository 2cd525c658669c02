"""Subcommands of the ``v1motion`` CLI, and how a command's failure reaches the user."""

from __future__ import annotations

import argparse
import sys

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


def not_negative(text: str) -> int:
    """An argparse type: a whole number, 0 or more (seeds, counts); argparse names the option in its
    message ("argument --seed: must be 0 or more, got -1") and stops before any work."""
    try:
        k = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if k < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {k}")
    return k
