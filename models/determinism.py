"""Thread pinning for the fits whose results must be reproducible bit for bit.

A multi-threaded BLAS product or OpenCV filter splits its work by thread, and a different split adds the
same numbers in a different order: the last bits change with the thread count, so with the number of
cores of the machine. Learning the ss-RNN is chaotic in those bits (the greedy pursuit picks another unit,
and the run goes elsewhere), so training, whitening and read-out fits run on one thread of each pool.
The Numba kernels they call are serial and compiled without ``fastmath``; a test keeps them so.
"""

from __future__ import annotations

from contextlib import contextmanager

import cv2
from threadpoolctl import threadpool_limits


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
