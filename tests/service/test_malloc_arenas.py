"""The service caps glibc's malloc arenas: with one per thread (up to 8 per core), a mixed load
(live streams, browser cameras, jobs, spike fits and language requests at once) grew the server's
resident memory 33 MB an hour and its workers' 128; with two, both levelled off
(bench/memory_soak.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

PROBE = textwrap.dedent(
    """
    import ctypes, sys, threading
    if sys.argv[1] == "service":
        import v1motion.service  # noqa: F401
    barrier = threading.Barrier(6)

    def work():
        barrier.wait()  # six threads allocating at once: each would get an arena of its own
        blocks = [bytearray(2000) for _ in range(2000)]
        barrier.wait()
        del blocks

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ctypes.CDLL("libc.so.6").malloc_stats()  # one "Arena N:" paragraph each, on stderr
    """
)


def arenas(*argv: str, **env: str) -> int:
    environ = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"} | env
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *argv],
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return sum(line.startswith("Arena ") for line in done.stderr.splitlines())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_the_service_caps_malloc_arenas_and_an_operators_choice_stands():
    assert arenas("plain") > 2  # the probe can tell: without the cap, threads get arenas
    assert arenas("service") <= 2
    assert arenas("service", MALLOC_ARENA_MAX="4") > 2


def test_child_processes_inherit_the_cap():
    import v1motion.service  # noqa: F401

    assert os.environ.get("MALLOC_ARENA_MAX")
