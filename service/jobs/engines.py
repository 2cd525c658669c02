"""Motion engines by name, as picklable factories (worker processes and Ray tasks build their own)."""

from __future__ import annotations

import functools
from collections.abc import Callable

ENGINE_NAMES = ("default", "random")


def pin_threads(n: int = 1) -> None:
    """Give this process ``n`` threads each for BLAS/OpenMP, OpenCV and Numba, for good.

    Video workers and ``v1motion motion`` call it once before their first job: a job already overlaps
    its own stages on threads (decoding in a child process, the engine on the job's thread, results
    and overlay on stages), and with each library also running a pool of one thread per core, two
    jobs on two cores fight over them and together get less done than one alone. On a busy 2-core
    machine even one job's engine step ran 4x slower with the default pools than with one thread
    (bench/video_jobs.py, "stage alone: engine" rows).
    """
    import cv2
    import numba
    from threadpoolctl import threadpool_limits

    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))  # loads its OpenMP layer first,
    threadpool_limits(limits=n)  # so this reaches it too; not a context manager: the limit stays
    cv2.setNumThreads(n)


def make_engine(name: str):
    """Build a warmed-up motion engine: ``"default"`` (shipped weights) or ``"random"`` (seed 0, tests)."""
    from models.engine import MotionEngine

    if name == "default":
        engine = MotionEngine.load_default()
    elif name == "random":
        engine = MotionEngine.random(seed=0)
    else:
        raise ValueError(f"unknown engine {name!r}; choose one of {', '.join(ENGINE_NAMES)}")
    engine.warmup()
    return engine


def engine_factory(name: str) -> Callable[[], object]:
    """A picklable zero-argument callable that builds the named engine."""
    if name not in ENGINE_NAMES:
        raise ValueError(f"unknown engine {name!r}; choose one of {', '.join(ENGINE_NAMES)}")
    return functools.partial(make_engine, name)
