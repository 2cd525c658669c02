"""The browser camera's session: size negotiation, the checks before decoding, and analysis.

The socket protocol itself is in :mod:`v1motion.service.routers.camera`; each decoded frame goes through the same
:class:`~v1motion.service.live.analyse.Analyser` as the server-side streams.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import cv2
import numpy as np

from v1motion.models.motion.contract import Engine
from v1motion.service.jpeg import JPEGHeaderError, jpeg_size
from v1motion.service.live.analyse import Analyser
from v1motion.service.metrics import Metrics
from v1motion.service.protocol import SCHEMA_VERSION
from v1motion.service.settings import Settings

MAX_SEQ_GAP = 30
"""Largest step of the page's frame numbers taken as camera frames skipped (a second at 30 fps);
a larger jump (a paused tab, a restarted camera) counts as one frame."""


@dataclass
class CameraFrame:
    """One JPEG as received, before any decoding."""

    data: bytes
    t_recv: float
    wall_ms: float
    client_seq: int | None
    # frames without a seq the server discarded for this one (the page sent ahead)
    replaced: int = 0


class CameraSession:
    """One browser camera: the negotiated size, its :class:`Analyser`, and the newest frame not yet analysed."""

    def __init__(self, engine: Engine, settings: Settings, metrics: Metrics) -> None:
        self.engine = engine
        self.settings = settings
        self.metrics = metrics
        self.width = 0
        self.height = 0
        self.analyser = Analyser(engine, "camera", metrics)
        self.want_flow = False
        self.pending: CameraFrame | None = None
        self.wake = asyncio.Event()
        self.dropped = 0  # frames the server replaced with a newer one before analysing them
        self.skipped = 0  # camera frames the page did not send (its frame numbers jumped)
        self.rejected = 0
        self._last_seq: int | None = None  # client_seq of the last analysed frame

    @property
    def min_side(self) -> int:
        """The smallest side the engine analyses (it refuses smaller frames)."""
        return self.engine.min_side

    def negotiate(self, msg: dict) -> None:
        s = self.settings
        version = msg.get("v", SCHEMA_VERSION)  # a client that says none is taken at its word
        if version != SCHEMA_VERSION or isinstance(version, bool):
            raise ValueError(
                f"protocol version {version!r} is not spoken here: this server speaks "
                f"v{SCHEMA_VERSION} (docs/protocol.md)"
            )
        w, h = msg.get("width"), msg.get("height")
        if not (isinstance(w, int) and isinstance(h, int)):
            raise ValueError('hello needs integer "width" and "height"')
        low, wide, high = self.min_side, s.camera_max_width, s.camera_max_height
        # either way round: a phone held upright sends portrait frames (480x640 within 640x480)
        fits = max(w, h) <= max(wide, high) and min(w, h) <= min(wide, high)
        if not (fits and min(w, h) >= low):
            raise ValueError(
                f"frame size {w}x{h} not allowed: each side at least {low} px, and at most "
                f"{wide}x{high} either way round"
            )
        self.width, self.height = w, h
        self._last_seq = None
        flow = msg.get("flow", self.want_flow)
        if not isinstance(flow, bool):
            raise ValueError('"flow" must be true or false')
        self.want_flow = flow

    def check(self, data: bytes) -> str | None:
        """Return an error message for a frame that must not be decoded, else ``None``."""
        if len(data) > self.settings.camera_max_bytes:
            return (
                f"frame of {len(data)} bytes exceeds the limit of {self.settings.camera_max_bytes}"
            )
        try:
            w, h = jpeg_size(data)
        except JPEGHeaderError as exc:
            return str(exc)
        if (w, h) != (self.width, self.height):
            return f"JPEG is {w}x{h} but the negotiated size is {self.width}x{self.height}"
        return None

    def process(self, frame: CameraFrame) -> str:
        """Decode and analyse one frame (runs in a worker thread); the result message's text."""
        grey = cv2.imdecode(np.frombuffer(frame.data, np.uint8), cv2.IMREAD_GRAYSCALE)
        if grey is None or grey.shape != (self.height, self.width):
            raise ValueError("the JPEG could not be decoded")
        elapsed = self._frames_elapsed(frame.client_seq, frame.replaced)
        # With a seq, its gap counts the camera frames the page skipped and those the server
        # discarded; without, the discarded ones are in ``dropped`` already.
        if frame.client_seq is not None and elapsed > 1:
            self.skipped += elapsed - 1
            self.metrics.dropped.labels("camera", "page").inc(elapsed - 1)
        return self.analyser.analyse(
            grey,
            t_capture=frame.t_recv,
            wall_ms=frame.wall_ms,
            dropped=self.dropped + self.skipped,
            frames_elapsed=elapsed,
            want_flow=self.want_flow,
            client_seq=frame.client_seq,
            truth=None,  # a camera's motion is not known (the synthetic source's is)
        ).text

    def _frames_elapsed(self, seq: int | None, replaced: int = 0) -> int:
        """Camera frames since the last analysed frame, from the ``seq`` the page announced with
        each frame (the camera's frame number: the dashboard sends the video's ``presentedFrames``).
        The page sends a frame only when the last result is back, so at a slower round trip than
        the camera's frame period it skips camera frames; dividing by them keeps speeds in px per
        camera frame. Without a ``seq`` each JPEG is the next camera frame, so a frame counts those
        the server discarded for it (``replaced``: the page sent ahead): a pan of 2 px a JPEG read
        3-10 px/frame when it did not. 1 when the numbers do not advance by 1 to ``MAX_SEQ_GAP``."""
        last, self._last_seq = self._last_seq, seq
        if seq is None:
            return 1 + min(replaced, MAX_SEQ_GAP - 1)
        if last is None or not 1 <= seq - last <= MAX_SEQ_GAP:
            return 1
        return seq - last
