"""The v1motion service: FastAPI app, sources, per-stream pipelines, jobs and the CLI.

Thin by design: every number it reports is computed in ``models``.
"""

import os

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
