"""Frame sources configured on the server: synthetic, camera, video file, network stream.

A source is opened, read frame by frame from one capture thread, and closed. ``read`` returns a
``(H, W)`` or ``(H, W, 3)`` uint8 frame, or ``None`` when the source ended or failed (the pipeline then
reconnects with backoff). Reads never block for more than a few seconds: OpenCV's FFmpeg backend gets open
and read timeouts, and the pipeline notices a stall by frame age.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from v1motion.service.live.netcheck import diagnose_url
from v1motion.service.settings import Settings, SourceSpec

log = logging.getLogger(__name__)


class SourceError(RuntimeError):
    """A source could not be opened or read."""


class SourceEnded(Exception):
    """A source that has no more frames and is not to be opened again: a file source with
    ``loop`` off at the end of its file."""


class Source(Protocol):
    spec: SourceSpec

    def open(self) -> None: ...

    def read(self) -> np.ndarray | None: ...

    def close(self) -> None: ...


class _Pacer:
    """Sleeps so that successive ``wait`` calls are ``1/fps`` apart (never accumulates a backlog)."""

    def __init__(self, fps: float, stop: threading.Event | None = None):
        self.period = 1.0 / fps
        self.next = time.monotonic()
        self.stop = stop

    def wait(self) -> None:
        self.next += self.period
        delay = self.next - time.monotonic()
        if delay > 0:
            if self.stop is not None:
                self.stop.wait(delay)
            else:
                time.sleep(delay)
        else:
            self.next = time.monotonic()


def _downscale(frame: np.ndarray, max_width: int) -> np.ndarray:
    h, w = frame.shape[:2]
    if w <= max_width:
        return frame
    new_h = max(1, round(h * max_width / w))
    return cv2.resize(frame, (max_width, new_h), interpolation=cv2.INTER_AREA)


class SyntheticSource:
    """Drifting gratings and panned natural images whose velocity changes every few seconds.

    The schedule is deterministic, so the ground truth at frame ``t`` is :meth:`velocity_at`.
    Directions follow the engine's convention: radians, 0 = moving right, pi/2 = moving up.
    """

    SEGMENT_S = 4.0
    # (kind, direction in degrees, speed in px/frame)
    SCHEDULE = (
        ("grating", 0.0, 1.5),
        ("pan", 90.0, 1.0),
        ("grating", 225.0, 2.0),
        ("pan", 135.0, 1.5),
        ("grating", 90.0, 1.0),
        ("pan", 0.0, 2.0),
        ("grating", 315.0, 1.5),
        ("pan", 270.0, 1.0),
    )

    def __init__(self, spec: SourceSpec, stop: threading.Event | None = None):
        self.spec = spec
        self._stop = stop
        self._t = 0
        self._image: np.ndarray | None = None
        self._pacer: _Pacer | None = None
        self.truth: dict | None = None  # velocity shown in the frame last read

    def velocity_at(self, t: int) -> tuple[str, float, float]:
        """Return ``(kind, direction_rad, speed_px_per_frame)`` shown at frame ``t``."""
        seg = int(t // self._segment_frames) % len(self.SCHEDULE)
        kind, deg, speed = self.SCHEDULE[seg]
        return kind, math.radians(deg), speed

    @property
    def _segment_frames(self) -> int:
        return max(1, round(self.SEGMENT_S * self.spec.fps))

    def open(self) -> None:
        from v1motion.models.motion.stimuli import load_still

        still = load_still("astronaut")
        # Twice the still's size, so a whole pan segment fits inside it without hitting an edge.
        self._image = cv2.resize(still, None, fx=2.0, fy=2.0, interpolation=cv2.INTER_LINEAR)
        self._pacer = _Pacer(self.spec.fps, self._stop)

    def read(self) -> np.ndarray | None:
        from v1motion.models.motion.stimuli import grating_frame, pan_frame

        if self._image is None or self._pacer is None:
            raise SourceError("synthetic source read before open")
        self._pacer.wait()
        shape = (self.spec.height, self.spec.width)
        kind, direction, speed = self.velocity_at(self._t)
        self.truth = {
            "kind": kind,
            "direction_deg": round(math.degrees(direction), 1),
            "speed_px_per_frame": speed,
        }
        if kind == "grating":
            img = grating_frame(shape, direction, speed, period=24.0, t=float(self._t))
        else:
            # Content moving by (vx, vy_up) px/frame: the crop window moves by (-vx, +vy_up) in
            # (x, row) coordinates. The window is centred on the middle of the segment.
            n = self._segment_frames
            k = (self._t % n) - n / 2.0
            h, w = self._image.shape
            cx = w / 2.0 - speed * math.cos(direction) * k
            cy = h / 2.0 + speed * math.sin(direction) * k
            img = pan_frame(self._image, (cx, cy), shape)
        self._t += 1
        return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)

    def close(self) -> None:
        self._image = None


class OpenCVSource:
    """Camera index, video file or network URL read with ``cv2.VideoCapture``."""

    def __init__(self, spec: SourceSpec, settings: Settings, stop: threading.Event | None = None):
        self.spec = spec
        self.settings = settings
        self._stop = stop
        self._cap: cv2.VideoCapture | None = None
        self._pacer: _Pacer | None = None
        self._recorded = False  # a file, or a recorded video at a URL: it has an end

    def open(self) -> None:
        spec = self.spec
        timeouts = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
            int(self.settings.open_timeout_s * 1000),
            cv2.CAP_PROP_READ_TIMEOUT_MSEC,
            int(self.settings.read_timeout_s * 1000),
        ]
        if spec.kind == "camera":
            cap = cv2.VideoCapture(int(spec.target))
        elif spec.kind == "file":
            cap = cv2.VideoCapture(str(Path(spec.target).expanduser()), cv2.CAP_FFMPEG, timeouts)
        else:
            cap = cv2.VideoCapture(spec.target, cv2.CAP_FFMPEG, timeouts)
        if not cap.isOpened():
            cap.release()
            what = spec.describe().removesuffix(" (looping)")  # not part of what failed
            why = ""
            if spec.kind == "url":  # FFmpeg's reason is not ours to read: find it again
                why = ": " + diagnose_url(spec.target, min(self.settings.open_timeout_s, 5.0))
            raise SourceError(f"source {spec.name!r}: could not open {what}{why}")
        # A file, or a recorded video at a URL (an mp4 on a web server, an HLS VOD playlist: it has
        # a length, a live stream none), plays at its frame rate: read as fast as it decodes (300
        # frames in 0.08 s), each analysed frame was dozens of frames after the one before it.
        self._recorded = spec.kind == "file" or (
            spec.kind == "url" and cap.get(cv2.CAP_PROP_FRAME_COUNT) > 0
        )
        if self._recorded:
            fps = cap.get(cv2.CAP_PROP_FPS)
            self._pacer = _Pacer(fps if 1.0 <= fps <= 240.0 else spec.fps, self._stop)
        self._cap = cap

    def read(self) -> np.ndarray | None:
        if self._cap is None:
            raise SourceError(f"source {self.spec.name!r} read before open")
        if self._pacer is not None:
            self._pacer.wait()
        ok, frame = self._cap.read()
        if not ok and self._recorded:  # a file or a recorded video: its end
            if not self.spec.loop:
                raise SourceEnded(f"source {self.spec.name!r}: end of {self.spec.describe()}")
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, frame = self._cap.read()
        if not ok or frame is None:
            return None
        return _downscale(frame, self.spec.max_width)

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


SourceFactory = Callable[[threading.Event], Source]


def source_factory(spec: SourceSpec, settings: Settings) -> SourceFactory:
    """Return a function that builds a fresh, unopened source for ``spec`` (one per (re)connection)."""
    if spec.kind == "synthetic":
        return lambda stop: SyntheticSource(spec, stop)
    if spec.kind in ("camera", "file", "url"):
        return lambda stop: OpenCVSource(spec, settings, stop)
    raise ValueError(f"unknown source kind {spec.kind!r}")
