"""Per-stream pipeline: capture thread -> latest-frame slot -> engine worker thread -> fan-out.

One capture per source however many viewers. The worker always takes the newest frame (never a backlog),
runs ``engine.step`` off the event loop, encodes the result once, and hands it to the :class:`Hub`, which
gives each subscriber a one-message latest-wins mailbox: a slow viewer gets fewer messages (counted as
missed, per viewer), never more server memory, and never delays the others.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import random
import threading
import time
from typing import Any

import cv2
import numpy as np

from v1motion.service import protocol
from v1motion.service.live.analyse import Analyser
from v1motion.service.live.engine import EngineHolder
from v1motion.service.live.hub import Hub, Subscriber
from v1motion.service.live.slot import CapturedFrame, LatestSlot
from v1motion.service.live.sources import SourceEnded, SourceError, SourceFactory
from v1motion.service.metrics import Metrics
from v1motion.service.settings import Settings, SourceSpec

log = logging.getLogger(__name__)
NO_FRAME = (
    "the source stopped giving frames: it closed the connection, or its data ended or broke off"
)
"""A stream's error when a source that opened gives no frame (shown on the dashboard's banner: it
read "EOFError: source returned no frame")."""
BEHIND_SHARE = (0.5, 0.7)
"""A stream falls behind its source below the first share of the source's frames analysed, and
keeps up again above the second (``StreamPipeline._pace``)."""
BEHIND_AFTER_S = 10.0
"""Seconds under ``BEHIND_SHARE[0]`` before a stream counts as behind (a start, a scene's burst of
work, or a busy second of a video job is not)."""


PR_SET_NAME = 15  # linux/prctl.h


def name_os_thread(name: str) -> None:
    """The calling thread's name as the system shows it (``top -H``, ``ps -L``,
    ``/proc/<pid>/task/<tid>/comm``), its first 15 bytes: every thread of the server was
    ``python``, so an operator could not tell which stream's engine or capture took the CPU. Where
    the system has no such call (not Linux), nothing changes."""
    try:
        libc = ctypes.CDLL(None)
        libc.prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)
    except (OSError, AttributeError):
        pass


class StreamPipeline:
    """Capture thread + engine worker thread for one configured source."""

    def __init__(
        self,
        spec: SourceSpec,
        factory: SourceFactory,
        engine: EngineHolder,
        settings: Settings,
        metrics: Metrics,
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.factory = factory
        self.engine = engine
        self.settings = settings
        self.metrics = metrics
        self.hub = Hub(spec.name, metrics)
        self.state = "idle"
        self.last_error: str | None = None
        self.frames = 0
        self.dropped_capture = 0
        self.fps = 0.0
        self.source_fps = 0.0  # frames the source delivered per second, as the worker saw them
        self.behind = False  # analysing under BEHIND_SHARE[0] of them for BEHIND_AFTER_S
        self._behind_since: float | None = None
        self.size: tuple[int, int] | None = None  # (width, height) of the last frame
        self._slot = LatestSlot()
        self._done_seq = 0  # the last frame of the slot that the worker is done with
        self._stop = threading.Event()
        self._gen = 0
        self._last_frame_t = 0.0  # the stall timer: the last frame, or the last (re)connection
        self._frame_t: float | None = None  # when the last frame arrived
        self._threads: list[threading.Thread] = []
        self._rng = random.Random(hash(spec.name) & 0xFFFF)
        self._lock = threading.Lock()
        self.log = logging.LoggerAdapter(log, {"stream": spec.name})  # a field in JSON logs

    # ---- life cycle (called from the event loop) -------------------------------------------
    @property
    def running(self) -> bool:
        """Started and not told to stop. A capture thread that ``stop`` gave up waiting for (stuck
        opening a silent camera) does not count: it counted, so a viewer arriving then found the
        stream "running", nothing started it, and it stayed idle for good."""
        return not self._stop.is_set() and any(t.is_alive() for t in self._threads)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.running:
            return
        self.hub.bind(loop)
        self._stop = threading.Event()  # a capture thread of the last run ends by its `_gen`
        self._slot = LatestSlot()
        self._done_seq = 0
        self.state = "starting"
        self.last_error, self.frames, self.fps, self.size = None, 0, 0.0, None  # this run's
        self.dropped_capture, self.source_fps, self.behind, self._behind_since = 0, 0.0, False, None
        self._last_frame_t = time.monotonic()
        self._frame_t = None
        worker = threading.Thread(target=self._work, name=f"engine-{self.name}", daemon=True)
        self._threads = [worker]
        worker.start()  # before the capture: _start_capture keeps only live threads in _threads
        self._start_capture()
        self.log.info("stream %s: started (%s)", self.name, self.spec.describe())

    def stop(self, timeout: float = 3.0) -> None:
        """Stop both threads (blocking: call it via ``asyncio.to_thread``)."""
        self._stop.set()
        for t in list(self._threads):
            t.join(timeout)
            if t.is_alive():
                self.log.warning(
                    "stream %s: thread %s did not stop within %.1f s", self.name, t.name, timeout
                )
        self.state = "idle"
        self.fps = 0.0
        self.log.info("stream %s: stopped", self.name)

    def status(self) -> dict[str, Any]:
        age = (
            None if self._frame_t is None or not self.running else time.monotonic() - self._frame_t
        )
        return {
            "name": self.name,
            "kind": self.spec.kind,
            "description": self.spec.describe(),
            "state": self.state,
            "subscribers": len(self.hub.subscribers),
            "frames": self.frames,
            "dropped": self.dropped_capture,
            "fps": round(self.fps, 2) if self.state == "running" else 0.0,  # none coming now
            "source_fps": round(self.source_fps, 2) if self.state == "running" else 0.0,
            "behind": self.lagging(),
            "frame_age_s": None if age is None else round(age, 3),
            "size": list(self.size) if self.size else None,
            "error": self.last_error,
        }

    # ---- capture thread ----------------------------------------------------------------------
    def _start_capture(self) -> None:
        with self._lock:
            self._gen += 1
            gen = self._gen
        t = threading.Thread(
            target=self._capture, args=(gen,), name=f"capture-{self.name}-{gen}", daemon=True
        )
        self._threads = [x for x in self._threads if x.is_alive()] + [t]
        t.start()

    def _current(self, gen: int) -> bool:
        return gen == self._gen and not self._stop.is_set()

    def _backoff(self, attempt: int) -> float:
        base = min(self.settings.backoff_max_s, self.settings.backoff_initial_s * 2**attempt)
        return base * self._rng.uniform(0.5, 1.0)  # "equal jitter": spreads reconnect storms

    def _capture(self, gen: int) -> None:
        name_os_thread(f"cap:{self.name}")
        attempt = 0
        while self._current(gen):
            source = None
            try:
                source = self.factory(self._stop)
                source.open()
                got_frame = False
                while self._current(gen):
                    frame = source.read()
                    if frame is None:
                        raise EOFError(NO_FRAME)
                    if not self._current(gen):
                        break
                    now = time.monotonic()
                    self._last_frame_t = now
                    truth = getattr(source, "truth", None)
                    self._frame_t = now
                    wall = time.time() * 1000.0
                    self._slot.put(CapturedFrame(frame, now, wall, truth, reopened=not got_frame))
                    if not got_frame:
                        got_frame, attempt = True, 0
                        self.state, self.last_error = "running", None
            except SourceEnded as end:
                # a file that does not loop: the stream is over, not broken (no reconnecting)
                if self._current(gen):
                    self._wait_analysed()  # "ended" with its last frame counted, not before
                    self.state, self.last_error = "ended", None
                    self.log.info("stream %s: %s; it does not loop", self.name, end)
                break
            except Exception as exc:
                if not self._current(gen):
                    break
                # a source's own words as they are; an unexpected error with its kind
                said = isinstance(exc, (SourceError, EOFError)) and str(exc)
                self.last_error = said or f"{type(exc).__name__}: {exc}"
                self.log.warning(
                    "stream %s: source failed (%s)",
                    self.name,
                    self.last_error,
                    exc_info=not isinstance(exc, (EOFError, OSError, RuntimeError)),
                )
            finally:
                if source is not None:
                    try:
                        source.close()
                    except Exception:
                        self.log.exception("stream %s: closing the source failed", self.name)
            if not self._current(gen):
                break
            delay = self._backoff(attempt)
            attempt += 1
            self.state = "reconnecting"
            self.metrics.reconnects.labels(self.name).inc()
            self.log.info(
                "stream %s: reconnecting in %.2f s (attempt %d)", self.name, delay, attempt
            )
            self._stop.wait(delay)
            self._last_frame_t = time.monotonic()

    def _wait_analysed(self, timeout: float = 2.0) -> None:
        """Until the worker is done with the last frame put in the slot (analysed, rejected or
        dropped for a newer one), the stream stops, or ``timeout`` seconds pass."""
        end = time.monotonic() + timeout
        while self._done_seq < self._slot.seq and time.monotonic() < end:
            if self._stop.wait(0.005):
                return

    # ---- worker thread ------------------------------------------------------------------------
    def _check_stall(self) -> None:
        if self.state != "running":
            return
        age = time.monotonic() - self._last_frame_t
        if age > self.settings.stall_timeout_s:
            self.log.warning(
                "stream %s: stalled (no frame for %.1f s); reconnecting", self.name, age
            )
            self.state = "stalled"
            self.last_error = f"no frame for {age:.1f} s"
            self.metrics.stalls.labels(self.name).inc()
            self._last_frame_t = time.monotonic()
            # The stuck reader notices it is superseded when its read returns (FFmpeg read timeout).
            self._start_capture()

    def _work(self) -> None:
        name_os_thread(f"eng:{self.name}")
        try:
            self._work_loop()
        except Exception as exc:
            self.log.exception("stream %s: worker died", self.name)
            self.state, self.fps = "error", 0.0
            self.last_error = f"worker stopped by {type(exc).__name__}: {exc}; see the server log"

    def _work_loop(self) -> None:
        # this run's stop and slot: a worker that outlived its stop must not take the next run's
        stop, slot = self._stop, self._slot
        while not stop.is_set() and not self.engine.ready.wait(0.2):
            if self.engine.failed.is_set():
                self.state, self.last_error = "error", f"engine failed: {self.engine.error}"
                return
        if stop.is_set():
            return
        analyser = Analyser(self.engine.engine, self.name, self.metrics)
        self.analyser = analyser
        last_seq = 0
        busy_s = self.settings.live_busy_poll_ms / 1000.0
        while not stop.is_set():
            got = slot.get(last_seq, timeout=0.25, busy_s=busy_s)
            self._check_stall()
            if got is None:
                continue
            seq, cf = got
            if cf.reopened and analyser.frames:
                analyser.restart()  # after a reconnect: nothing to compare the frame with
            elapsed = seq - last_seq if last_seq else 1
            if last_seq and seq - last_seq > 1:
                self.dropped_capture += seq - last_seq - 1
                self.metrics.dropped.labels(self.name, "capture").inc(seq - last_seq - 1)
            last_seq = seq
            # (encoded only while some viewer takes previews: numbers-only clients cost no JPEG)
            preview = self._preview(cf.image) if self.hub.preview_wanted else None
            try:
                result = analyser.analyse(
                    cf.image,
                    t_capture=cf.t_capture,
                    wall_ms=cf.wall_ms,
                    dropped=self.dropped_capture,
                    frames_elapsed=elapsed,
                    want_flow=self.hub.flow_wanted,
                    preview=preview is not None,
                    truth=cf.truth,
                )
            except ValueError as exc:
                self.log.warning("stream %s: frame rejected by the engine: %s", self.name, exc)
                self.last_error = str(exc)
                self._done_seq = seq
                continue
            except Exception as exc:
                self.last_error = f"engine failed on a frame: {type(exc).__name__}: {exc}"
                if analyser.fail():
                    raise  # _work logs it and marks the stream failed
                self._done_seq = seq
                continue
            self.frames, self.fps, self.source_fps = (
                analyser.frames,
                analyser.fps,
                analyser.source_fps,
            )
            self._pace(time.monotonic())
            self._done_seq = seq
            h, w = cf.image.shape[:2]
            self.size = (w, h)
            out = protocol.Outgoing(
                result.seq,
                result.text,
                protocol.preview_frame(result.seq, preview) if preview is not None else None,
                cf.t_capture,
            )
            self.hub.publish(out)

    def lagging(self) -> bool:
        """Whether the stream runs and is ``behind`` its source now (status and viewers' status)."""
        return self.behind and self.state == "running"

    def _pace(self, now: float) -> None:
        """``behind`` once the worker has analysed under ``BEHIND_SHARE[0]`` of the source's frames
        for ``BEHIND_AFTER_S``, and no longer above ``BEHIND_SHARE[1]``; each change logged. Four
        640x480 streams on two cores analysed 8 of their 30 frames a second while every status said
        ``running``, no line was logged and the dashboard's pill said ``live``."""
        share = self.fps / self.source_fps if self.source_fps > 0 else 1.0
        if self.behind:
            if share > BEHIND_SHARE[1]:
                self.behind, self._behind_since = False, None
                self.log.info(
                    "stream %s: keeps up again (%.1f of %.1f frames a second analysed)",
                    self.name, self.fps, self.source_fps,
                )  # fmt: skip
        elif share >= BEHIND_SHARE[0]:
            self._behind_since = None
        elif self._behind_since is None:
            self._behind_since = now
        elif now - self._behind_since >= BEHIND_AFTER_S:
            self.behind = True
            self.log.warning(
                "stream %s: falls behind its source: %.1f of its %.1f frames a second analysed "
                "(the others skipped; the map stays current). More streams or cameras than the "
                "server's cores can take?",
                self.name, self.fps, self.source_fps,
            )  # fmt: skip

    def _preview(self, image: np.ndarray) -> bytes | None:
        h, w = image.shape[:2]
        pw = self.settings.preview_width
        if w > pw:
            image = cv2.resize(image, (pw, max(1, round(h * pw / w))), interpolation=cv2.INTER_AREA)
        ok, buf = cv2.imencode(
            ".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.settings.preview_quality]
        )
        return buf.tobytes() if ok else None


class StreamManager:
    """All configured streams; starts a stream with its first viewer and stops it after a grace period."""

    def __init__(
        self,
        pipelines: dict[str, StreamPipeline],
        settings: Settings,
        metrics: Metrics,
    ) -> None:
        self.pipelines = pipelines
        self.settings = settings
        self.metrics = metrics
        self._stop_tasks: dict[str, asyncio.Task] = {}
        self._stopping: set[str] = set()
        self._replays: dict[str, asyncio.Task] = {}
        self._closing = False

    def get(self, name: str) -> StreamPipeline:
        try:
            return self.pipelines[name]
        except KeyError:
            raise KeyError(
                f"unknown stream {name!r}; configured streams: {', '.join(sorted(self.pipelines))}"
            ) from None

    def subscribe(self, name: str, sub: Subscriber) -> StreamPipeline:
        if self._closing:
            raise RuntimeError("the service is shutting down")
        p = self.get(name)
        p.hub.subscribers.add(sub)
        self.metrics.clients.labels(name).set(len(p.hub.subscribers))
        if name in self._stopping:
            return p  # the stop under way restarts the stream when it is done, for this viewer
        task = self._stop_tasks.pop(name, None)
        if task is not None:
            task.cancel()
        if not p.running:
            p.start(asyncio.get_running_loop())
        elif p.state == "ended" and name not in self._replays:
            # A file that played to its end, kept for the grace period: it plays again for the
            # viewer who came to watch it, as it does once the stream has stopped.
            self._replays[name] = asyncio.get_running_loop().create_task(self._replay(name))
        return p

    def unsubscribe(self, name: str, sub: Subscriber) -> None:
        p = self.pipelines[name]
        p.hub.subscribers.discard(sub)
        self.metrics.clients.labels(name).set(len(p.hub.subscribers))
        if (
            not p.hub.subscribers
            and p.running
            and not self._closing
            and name not in self._stop_tasks
        ):
            self._stop_tasks[name] = asyncio.get_running_loop().create_task(self._stop_later(name))

    async def _replay(self, name: str) -> None:
        p = self.pipelines[name]
        self._stopping.add(name)
        try:
            await asyncio.to_thread(p.stop)
        finally:
            self._stopping.discard(name)
            del self._replays[name]
        if p.hub.subscribers and not self._closing:
            log.info("stream %s: played to its end; again for a new viewer", name)
            p.start(asyncio.get_running_loop())

    async def _stop_later(self, name: str) -> None:
        p = self.pipelines[name]
        try:
            await asyncio.sleep(self.settings.grace_period_s)
            if p.hub.subscribers:
                return
            log.info("stream %s: no viewers for %.1f s", name, self.settings.grace_period_s)
            self._stopping.add(name)
            try:
                await asyncio.to_thread(p.stop)
            finally:
                self._stopping.discard(name)
            if p.hub.subscribers and not self._closing:  # someone arrived while it stopped
                p.start(asyncio.get_running_loop())
        finally:
            if self._stop_tasks.get(name) is asyncio.current_task():
                del self._stop_tasks[name]

    async def close(self) -> None:
        self._closing = True
        for task in self._stop_tasks.values():
            task.cancel()
        for p in self.pipelines.values():
            p.hub.close()
        replays = list(self._replays.values())  # they see _closing and start nothing
        await asyncio.gather(
            *(asyncio.to_thread(p.stop) for p in self.pipelines.values() if p.running)
        )
        await asyncio.gather(*replays, return_exceptions=True)
