"""Motion engines by name as picklable factories (worker processes and Ray tasks build their own), and
the thread pinning of the processes that run them."""

from __future__ import annotations

import functools
from collections.abc import Callable

from v1motion.models.motion.contract import ENGINE_NAMES, Engine, make_engine


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


def settle_job_process() -> None:
    """Once, in a process that runs video jobs, after its engine is built and before its first job.

    Imports what the summary figure draws with (``preload_plotting``: about a third of a second, which
    the first job would otherwise pay after its last frame), then moves every object alive so far
    (modules, the engine) into the garbage collector's permanent generation (``gc.freeze``): they are
    never garbage, and each full collection during a job would walk them all. With matplotlib
    imported at the start and no freeze, two box.mp4 jobs at once on two workers took 6.6 s instead of
    5.9-6.2 (bench/video_jobs.py); with the freeze, 5.6-6.0 s.
    """
    import gc

    from v1motion.service.render import preload_plotting

    preload_plotting()
    gc.collect()
    gc.freeze()


def warm_engine(name: str, threads: int = 1) -> Engine:
    """The named engine (``v1motion.models.motion.contract.make_engine``), compiled and warmed up."""
    engine = make_engine(name, threads=threads)
    engine.warmup()
    return engine


def engine_factory(name: str, threads: int = 1) -> Callable[[], Engine]:
    """A picklable zero-argument callable that builds the named engine, warmed up.

    Worker processes and Ray tasks receive this rather than an engine and build their own.
    """
    if name not in ENGINE_NAMES:
        raise ValueError(f"unknown engine {name!r}; choose one of: {', '.join(ENGINE_NAMES)}")
    return functools.partial(warm_engine, name, threads)
