"""The v1motion service: FastAPI app, sources, per-stream pipelines, jobs and the CLI.

Thin by design: every number it reports is computed in ``models``.
"""

import ctypes
import os
import sys

# OpenCV reads its decoder pixel limit once, when the library loads, so it is set before anything
# in the service imports cv2. It backs up the JPEG header check of the browser-camera socket: a
# 600-byte JPEG claiming 16000x16000 pixels is refused instead of allocating 256 MB.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(4096 * 4096))

# FFmpeg's messages (a refused connection, a 404, every corrupt packet of a lossy RTSP stream) and
# OpenCV's warnings went straight to stderr, between the log's lines (breaking one JSON object a
# line) and out of the dashboard's reach: silenced, and why a url source does not open is found
# again (``v1motion.service.live.netcheck``) and said in its error. Set either variable to hear
# them again (FFmpeg's levels: 16 errors, 24 warnings; OpenCV then prints them to stdout).
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")


def _cap_malloc_arenas(n: int = 2) -> None:
    """Cap glibc's malloc arenas at ``n`` for this process and the worker processes it starts.

    glibc gives each new thread an arena of its own, up to 8 per core, and returns little of their
    freed memory: under a mixed load (live streams, browser cameras, video jobs, spike fits and
    language requests at once, each on its own threads; ``bench/memory_soak.py``, 20 minutes) the
    server's resident memory grew 33 MB an hour and its workers' 128, and with two arenas it levelled
    off at 52 and 40 MB less. An operator's ``MALLOC_ARENA_MAX`` stands.
    """
    if os.environ.get("MALLOC_ARENA_MAX") or not sys.platform.startswith("linux"):
        return
    os.environ["MALLOC_ARENA_MAX"] = str(n)  # read by each worker process's glibc as it starts
    try:
        ctypes.CDLL("libc.so.6").mallopt(-8, n)  # M_ARENA_MAX, for this process's threads to come
    except (OSError, AttributeError):  # not glibc (musl): nothing to cap
        pass


_cap_malloc_arenas()
