"""``v1motion``: one entry point, one module per subcommand under ``v1motion.service.commands``."""

from __future__ import annotations

import argparse
import atexit
import importlib
import json
import logging
import os
import shutil
import sys
import tempfile
import textwrap

_COPY_PREFIX = "v1motion-numba-"


def _start_mark(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, Linux), None if it is gone or unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


def _sweep_dead_copies(tmp: str) -> None:
    """Remove the cache copies of processes that are gone: one killed (SIGKILL, the out-of-memory
    killer) never ran its exit handler, and a container restarted in place kept its /tmp. A copy is
    named with its process's id and start time, so that a new process with an old id (PID 1 again,
    after a restart) does not keep it."""
    try:
        names = os.listdir(tmp)
    except OSError:
        return
    for name in names:
        parts = name[len(_COPY_PREFIX) :].split("-")
        if not name.startswith(_COPY_PREFIX) or len(parts) != 3 or not parts[0].isdigit():
            continue
        if _start_mark(int(parts[0])) == parts[1]:
            continue  # its process still runs
        path = os.path.join(tmp, name)
        try:
            if os.stat(path).st_uid == os.getuid():
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass


def usable_numba_cache() -> None:
    """Point ``NUMBA_CACHE_DIR`` at a copy of it in a temporary folder if this user cannot write it.

    Numba will not even read a cache it cannot write ("no locator available"): the container run
    as another user than the image's (Kubernetes' runAsUser, OpenShift's random user) or with a
    read-only root file system died at start with a 34-line traceback. The copy keeps the image's
    compiled kernels (a second or two to copy, not a minute to compile); a cache that cannot be
    read is compiled anew there."""
    cache = os.environ.get("NUMBA_CACHE_DIR")
    if not cache or os.access(cache, os.W_OK | os.X_OK):
        return
    tmp, started = tempfile.gettempdir(), _start_mark(os.getpid())
    if started is not None:  # where a process's start can be read (Linux)
        _sweep_dead_copies(tmp)
    try:
        copy = tempfile.mkdtemp(prefix=f"{_COPY_PREFIX}{os.getpid()}-{started or 0}-", dir=tmp)
    except OSError:  # nowhere to write either: Numba says so
        return
    # removed when this process exits (its workers, given the copy, exit before it): one copy
    # per start was left behind in /tmp; those of killed processes are swept by the next start
    atexit.register(shutil.rmtree, copy, ignore_errors=True)
    try:
        shutil.copytree(cache, copy, dirs_exist_ok=True)
    except OSError:
        pass
    os.environ["NUMBA_CACHE_DIR"] = copy
    said = f"v1motion: NUMBA_CACHE_DIR {cache} is not writable by this user; using a copy in {copy}"
    if os.environ.get("V1MOTION_LOG_FORMAT", "").lower() == "json":  # one JSON object a line
        said = json.dumps({"level": "warning", "logger": "v1motion", "msg": said})
    sys.stderr.write(said + "\n")


usable_numba_cache()  # before anything imports Numba

from v1motion.service.commands import run_command  # noqa: E402

# Before Numba's OpenMP starts: its threads sleep between frames instead of spinning, so the engine's
# second thread leaves the core to the capture, the encoding and the sockets between frames (on 2
# cores, live 640x480 on two threads: p50 14.9-16.3 ms against 15.9-18.9 ms spinning). Set it in the
# environment to choose otherwise.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Each module defines ``add_parser(subparsers)`` which registers its subcommand and sets ``func``.
COMMAND_MODULES = [
    "v1motion.service.commands.serve",
    "v1motion.service.commands.motion",
    "v1motion.service.commands.train",
    "v1motion.service.commands.fit_readout",
    "v1motion.service.commands.analyze",
    "v1motion.service.commands.stfit",
    "v1motion.service.commands.lm",
    "v1motion.service.commands.spikes",
]

DESCRIPTION = """\
v1motion reads visual motion (which way things move, and how fast) out of a recurrent model of
primary visual cortex, live from a camera or stream, or offline from a video file. It also ships
sibling models for spike trains and language."""

EPILOG = """\
examples:
  v1motion serve                       # live dashboard on http://127.0.0.1:8000/
  v1motion motion clip.mp4 -o out/     # motion map of a video file, offline
  v1motion serve --help                # every command has its own help"""


class HelpFormatter(argparse.HelpFormatter):
    """Wraps descriptions by paragraph, keeps example blocks as written, shows each option's default.

    A paragraph whose first line ends with ``:`` or that has indented lines (``examples:``) keeps
    its line breaks. An option whose help already says its default, a flag, or an option whose
    default is None is left as written.
    """

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        blocks = []
        for block in text.split("\n\n"):
            lines = block.splitlines()
            if lines and (lines[0].endswith(":") or any(ln.startswith(" ") for ln in lines)):
                blocks.append("\n".join(indent + ln for ln in lines))
            else:
                blocks.append(
                    textwrap.fill(
                        " ".join(lines), width, initial_indent=indent, subsequent_indent=indent
                    )
                )
        return "\n\n".join(blocks)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            not action.option_strings
            or any(action.default is x for x in (None, False, argparse.SUPPRESS))
            or "default" in text
            or "%(default)" in text
        ):
            return text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose help, and every subcommand's, uses :class:`HelpFormatter`."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="v1motion", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("-v", "--verbose", action="store_true", help="show debug messages too")
    subparsers = parser.add_subparsers(
        title="commands", dest="command", required=True, metavar="COMMAND"
    )
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return run_command(args)


if __name__ == "__main__":
    sys.exit(main())
