"""``v1motion``: one entry point, one module per subcommand under ``service.commands``."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Each module defines ``add_parser(subparsers)`` which registers its subcommand and sets ``func``.
COMMAND_MODULES = [
    "service.commands.serve",
    "service.commands.motion",
    "service.commands.train",
    "service.commands.fit_readout",
    "service.commands.analyze",
    "service.commands.stfit",
    "service.commands.lm",
    "service.commands.spikes",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="v1motion", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
