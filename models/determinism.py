"""Thread pinning for the fits whose results must be reproducible bit for bit.

A multi-threaded BLAS product or OpenCV filter splits its work by thread, and a different split adds the
same numbers in a different order: the last bits change with the thread count, so with the number of
cores of the machine. Learning the ss-RNN is chaotic in those bits (the greedy pursuit picks another unit,
and the run goes elsewhere), so training, whitening and read-out fits run on one thread of each pool.
The Numba kernels they call are serial and compiled without ``fastmath``; a test keeps them so.
"""

from __future__ import annotations

import platform
from contextlib import contextmanager

import cv2
import numba
import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits


@contextmanager
def single_threaded():
    """Run the block with one BLAS / OpenMP thread and one OpenCV thread; restore the caller's counts.

    Works as a decorator too. The limits are process-wide (every thread of the process sees them while
    the block runs), which suits the batch jobs that fit models, not code inside a serving process.
    """
    previous = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        cv2.setNumThreads(previous)


def numeric_environment() -> dict:
    """What besides the seed fixes a run's bits: library versions, BLAS kernels and numpy's SIMD paths.

    Two runs with one seed are bit-identical when these agree; when they differ, so may the weights.
    """
    try:  # where ``numpy.show_runtime`` reads them (numpy 2; numpy 1 keeps them in ``numpy.core``)
        from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core._multiarray_umath import __cpu_dispatch__, __cpu_features__
    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "opencv": cv2.__version__,
        "machine": platform.machine(),
        "numpy_simd": [f for f in __cpu_dispatch__ if __cpu_features__.get(f)],
        "thread_pools": [
            {k: pool.get(k) for k in ("internal_api", "version", "architecture", "num_threads")}
            for pool in threadpool_info()
        ],
        "opencv_threads": cv2.getNumThreads(),
    }
