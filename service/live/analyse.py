"""The one analysis step of a live frame, shared by the server-side streams and the browser camera.

engine step -> timing -> frames per second -> DIS flow (when a viewer wants it) -> one encoded result.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from v1motion.models.motion.contract import Engine
from v1motion.models.motion.flow import DISFlow
from v1motion.service import protocol
from v1motion.service.metrics import Metrics

log = logging.getLogger(__name__)

FPS_SMOOTHING = 0.1
"""Weight of the newest frame interval in the exponential average behind ``fps``."""
ELAPSED_TAU = 2.0
"""Frames over which the model's speeds are put back in px per source frame: the engine reads the
displacement between the frames it sees averaged over about this many of them (the MT read-out's
temporal average, ``Pooling.tau``), so its speeds are divided by the same running average of the
source frames that passed between them, not by the last gap alone (gaps of 1, 2, 1, 2 frames would
otherwise swing the reading by -33 % / +50 %)."""


@dataclass(frozen=True, slots=True)
class Analysis:
    """One analysed frame: its result message (JSON text) and sequence number."""

    seq: int
    text: str
    engine_ms: float


MAX_FAILED_FRAMES = 30
"""Frames in a row on which the engine may fail with an unexpected error (not a frame it rejects
with a ``ValueError``) before a stream's worker or a browser camera's session gives up. Each such
frame is dropped, counted (``v1motion_dropped_frames_total{reason="engine_error"}``) and named (the
stream's ``last_error``; an ``engine_error`` message to a camera), and the engine state starts anew
(``Analyser.fail``), as after a scene cut: one bad frame or a passing fault does not stop a
stream for all its viewers, and a broken engine does not spin."""


class Analyser:
    """A stream's engine state, frame rate and result numbering; one per stream or browser camera.

    Not thread-safe: one thread analyses a stream's frames in order.

    Parameters
    ----------
    engine : Engine
        Shared by all streams; this analyser keeps its own recurrent state.
    stream : str
        The stream's name in results and metrics (``"camera"`` for browser cameras).
    metrics : Metrics
    """

    def __init__(self, engine: Engine, stream: str, metrics: Metrics) -> None:
        self.engine = engine
        self.stream = stream
        self.metrics = metrics
        self.state = engine.new_state()
        self.flow = DISFlow()
        self.frames = 0
        self.seq = 0
        self.fps = 0.0
        self._ema_dt: float | None = None
        self._t_prev: float | None = None
        self._elapsed: float | None = None  # running average of frames_elapsed (ELAPSED_TAU)
        self._passed: float | None = None  # frames_elapsed averaged as ``fps`` is (FPS_SMOOTHING)
        self.source_fps = 0.0  # frames the source delivered per second: ``fps`` x ``_passed``
        self.failures = 0  # frames in a row the engine failed on (``fail``)

    def fail(self) -> bool:
        """Call from the handler of an unexpected error of ``analyse`` (not a refused frame): the
        frame is counted as dropped, the first failure of a run is logged with its traceback, and
        the engine state starts anew (it may be half updated; numbering, frame rate and counts go
        on). ``True`` once ``MAX_FAILED_FRAMES`` frames in a row have failed: give up."""
        self.failures += 1
        self.metrics.dropped.labels(self.stream, "engine_error").inc()
        if self.failures >= MAX_FAILED_FRAMES:
            return True
        if self.failures == 1:
            log.exception("%s: engine failed on a frame", self.stream)
        self._forget_motion()
        return False

    def _forget_motion(self) -> None:
        """The engine's and optical flow's state start anew: the next frame has no motion to read."""
        self.state = self.engine.new_state()
        self.flow.reset()

    def restart(self) -> None:
        """The source was opened again (a reconnect): its next frame is the first of a new run, with
        no motion to read from the last one before the gap, and no frame rate across the gap
        (numbering and counts go on)."""
        self._forget_motion()
        self._ema_dt = self._t_prev = self._elapsed = self._passed = None
        self.fps = self.source_fps = 0.0

    def analyse(
        self,
        image: np.ndarray,
        *,
        t_capture: float,
        wall_ms: float,
        dropped: int,
        frames_elapsed: int = 1,
        want_flow: bool = False,
        preview: bool = False,
        **extra: Any,
    ) -> Analysis:
        """Analyse the stream's next frame and encode its ``result`` message.

        Parameters
        ----------
        image : ndarray
            Grey ``(H, W)`` or BGR ``(H, W, 3)`` uint8 frame.
        t_capture : float
            ``time.monotonic()`` when the frame arrived (for ``latency_ms``).
        wall_ms : float
            ``time.time() * 1000`` at arrival (``capture_ts``, comparable across processes).
        dropped : int
            Frames the stream skipped so far (``timing.dropped``).
        frames_elapsed : int
            Source frames since the previous analysed frame (1 when none was skipped). The engine
            reads the displacement between the frames it sees; dividing its speeds by the running
            average of this count (``ELAPSED_TAU``), and optical flow's by the count itself, gives
            speeds in px per source frame, the unit of the source's own truth, however many frames
            were skipped.
        want_flow : bool
            Also compute DIS optical flow on the motion map's grid (``flow``).
        preview : bool
            Whether a binary preview follows this result.
        **extra
            More top-level fields of the result (``truth``, ``client_seq``); ``None`` values are kept.

        Raises
        ------
        ValueError
            The engine refused the frame; nothing was counted.
        """
        t0 = time.monotonic()
        if frames_elapsed < 1:
            raise ValueError(f"frames_elapsed must be >= 1, got {frames_elapsed}")
        mf = self.engine.step(self.state, image)
        t1 = time.monotonic()
        avg = self._elapsed
        avg = float(frames_elapsed) if avg is None else avg + (frames_elapsed - avg) / ELAPSED_TAU
        self._elapsed = avg
        if avg != 1.0:
            mf = replace(mf, speed=mf.speed / avg, global_speed=mf.global_speed / avg)
        self.metrics.engine_time.labels(self.stream).observe(t1 - t0)
        self.metrics.frames.labels(self.stream).inc()
        self.frames += 1
        if self._t_prev is not None and t1 > self._t_prev:
            dt = t1 - self._t_prev
            ema = self._ema_dt
            self._ema_dt = dt if ema is None else (1 - FPS_SMOOTHING) * ema + FPS_SMOOTHING * dt
            self.fps = 1.0 / self._ema_dt
        self._t_prev = t1
        passed = self._passed
        self._passed = (
            float(frames_elapsed)
            if passed is None
            else (1 - FPS_SMOOTHING) * passed + FPS_SMOOTHING * frames_elapsed
        )
        self.source_fps = self.fps * self._passed
        flow = None
        if want_flow:
            pooled = self.flow.step(image, int(mf.cell))
            if pooled is not None:
                direction, speed = pooled
                flow = protocol.flow_payload(direction, speed / frames_elapsed, int(mf.cell))
        else:
            self.flow.reset()
        self.seq += 1
        h, w = image.shape[:2]
        fields = dict(
            stream=self.stream,
            seq=self.seq,
            **extra,
            capture_ts=round(wall_ms, 3),
            width=w,
            height=h,
            timing={
                "engine_ms": round((t1 - t0) * 1000, 3),
                "latency_ms": round((time.monotonic() - t_capture) * 1000, 3),
                "fps": round(self.fps, 2),
                "source_fps": round(self.source_fps, 2),
                "dropped": dropped,
            },
            motion=mf.to_dict(),
            flow=flow,
            preview=preview,
        )
        text = protocol.message("result", **protocol.v1_names(fields))
        self.failures = 0
        return Analysis(self.seq, text, (t1 - t0) * 1000)
