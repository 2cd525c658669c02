"""The v1motion service: FastAPI app, sources, per-stream pipelines, jobs and the CLI.

Thin by design: every number it reports is computed in ``models``.
"""

import os

# OpenCV reads its decoder pixel limit once, when the library loads, so it is set before anything
# in the service imports cv2. It backs up the JPEG header check of the browser-camera socket: a
# 600-byte JPEG claiming 16000x16000 pixels is refused instead of allocating 256 MB.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(4096 * 4096))
