"""Per-stream pipeline: capture thread -> latest-frame slot -> engine worker thread -> fan-out.

One capture per source however many viewers. The worker always takes the newest frame (never a backlog),
runs ``engine.step`` off the event loop, encodes the result once, and hands it to the :class:`Hub`, which
gives each subscriber a one-message latest-wins mailbox: a slow viewer gets fewer messages (counted as
missed, per viewer), never more server memory, and never delays the others.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from models.motion.contract import Engine
from service import protocol
from service.flow import DISFlow
from service.metrics import Metrics
from service.settings import Settings, SourceSpec
from service.sources import SourceFactory

log = logging.getLogger(__name__)


class EngineHolder:
    """The shared engine, loaded and warmed in a background thread; ``ready`` is set when usable."""

    def __init__(self) -> None:
        self.engine: Engine | None = None
        self.error: str | None = None
        self.ready = threading.Event()
        self.failed = threading.Event()

    def load(self, factory: Callable[[], Engine]) -> None:
        try:
            t0 = time.perf_counter()
            engine = factory()
            engine.warmup()
            self.engine = engine
            self.ready.set()
            log.info("engine ready in %.1f s", time.perf_counter() - t0)
        except Exception as exc:  # reported by /readyz; the traceback goes to the log
            log.exception("engine failed to load")
            self.error = f"{type(exc).__name__}: {exc}"
            self.failed.set()


class LatestSlot:
    """A one-item mailbox between threads: ``put`` replaces, ``get`` waits for a newer item."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: Any = None
        self._seq = 0

    def put(self, item: Any) -> None:
        with self._cond:
            self._item = item
            self._seq += 1
            self._cond.notify_all()

    def get(self, after: int, timeout: float) -> tuple[int, Any] | None:
        """Return ``(seq, item)`` with ``seq > after``, or ``None`` after ``timeout`` seconds."""
        with self._cond:
            if self._seq <= after:
                self._cond.wait(timeout)
            if self._seq <= after:
                return None
            return self._seq, self._item


@dataclass(slots=True)
class CapturedFrame:
    image: np.ndarray
    t_capture: float  # time.monotonic()
    wall_ms: float  # time.time() * 1000, comparable across processes on one machine
    truth: dict | None = None  # the known velocity, for synthetic sources


class Subscriber:
    """One viewer's latest-wins mailbox; lives on the event loop.

    ``missed`` counts every result published on the stream since the viewer joined that it will never
    get: replaced in its mailbox before it was sent, or never offered to it because the fan-out
    coalesced several results into the newest (the event loop was busy). ``sent + missed`` plus the
    one message that may be waiting equals the results published while it watched.
    """

    def __init__(self, want_flow: bool = False) -> None:
        self.pending: protocol.Outgoing | None = None
        self.event = asyncio.Event()
        self.sent = 0
        self.missed = 0
        self.want_flow = want_flow
        self._last_seq = 0  # seq of the last result offered; the stream numbers results 1, 2, ...

    def offer(self, msg: protocol.Outgoing) -> int:
        """Replace any unsent message; return how many results this viewer missed by it."""
        if self.pending is protocol.END:
            return 0
        missed = int(self.pending is not None)
        if self._last_seq and msg.seq > self._last_seq + 1:
            missed += msg.seq - self._last_seq - 1  # published, but coalesced before the fan-out
        self._last_seq = msg.seq  # a restarted stream counts from 1 again: no gap is counted then
        self.missed += missed
        self.pending = msg
        self.event.set()
        return missed

    async def next(self) -> protocol.Outgoing:
        await self.event.wait()
        self.event.clear()
        msg, self.pending = self.pending, None
        assert msg is not None
        return msg


class Hub:
    """Fans one encoded result out to every subscriber, coalescing wake-ups from the worker thread."""

    def __init__(self, name: str, metrics: Metrics) -> None:
        self.name = name
        self.metrics = metrics
        self.subscribers: set[Subscriber] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._latest: protocol.Outgoing | None = None
        self._scheduled = False

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def publish(self, msg: protocol.Outgoing) -> None:
        """Called from the worker thread; at most one fan-out callback is queued at a time."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with self._lock:
            self._latest = msg
            if self._scheduled:
                return
            self._scheduled = True
        try:
            loop.call_soon_threadsafe(self._fanout)
        except RuntimeError:  # loop closed during shutdown
            pass

    def _fanout(self) -> None:
        with self._lock:
            msg, self._latest, self._scheduled = self._latest, None, False
        if msg is None:
            return
        missed = 0
        for sub in self.subscribers:
            missed += sub.offer(msg)
        if missed:
            self.metrics.dropped.labels(self.name, "subscriber").inc(missed)

    def close(self) -> None:
        """On the loop: tell every subscriber the stream ended."""
        for sub in self.subscribers:
            sub.pending = protocol.END
            sub.event.set()

    @property
    def flow_wanted(self) -> bool:
        return any(s.want_flow for s in list(self.subscribers))


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
        self.size: tuple[int, int] | None = None  # (width, height) of the last frame
        self._slot = LatestSlot()
        self._stop = threading.Event()
        self._gen = 0
        self._last_frame_t = 0.0
        self._threads: list[threading.Thread] = []
        self._rng = random.Random(hash(spec.name) & 0xFFFF)
        self._lock = threading.Lock()
        self.log = logging.LoggerAdapter(log, {"stream": spec.name})  # a field in JSON logs

    # ---- life cycle (called from the event loop) -------------------------------------------
    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.running:
            return
        self.hub.bind(loop)
        self._stop = threading.Event()
        self._slot = LatestSlot()
        self.state = "starting"
        self._last_frame_t = time.monotonic()
        worker = threading.Thread(target=self._work, name=f"engine-{self.name}", daemon=True)
        self._threads = [worker]
        self._start_capture()
        worker.start()
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
        age = time.monotonic() - self._last_frame_t if self.running and self.frames else None
        return {
            "name": self.name,
            "kind": self.spec.kind,
            "description": self.spec.describe(),
            "state": self.state,
            "subscribers": len(self.hub.subscribers),
            "frames": self.frames,
            "dropped": self.dropped_capture,
            "fps": round(self.fps, 2),
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
                        raise EOFError("source returned no frame")
                    if not self._current(gen):
                        break
                    now = time.monotonic()
                    self._last_frame_t = now
                    truth = getattr(source, "truth", None)
                    self._slot.put(CapturedFrame(frame, now, time.time() * 1000.0, truth))
                    if not got_frame:
                        got_frame, attempt = True, 0
                        self.state, self.last_error = "running", None
            except Exception as exc:
                if not self._current(gen):
                    break
                self.last_error = f"{type(exc).__name__}: {exc}"
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
        try:
            self._work_loop()
        except Exception:
            self.log.exception("stream %s: worker died", self.name)
            self.state = "error"
            self.last_error = "worker thread died; see the server log"

    def _work_loop(self) -> None:
        while not self._stop.is_set() and not self.engine.ready.wait(0.2):
            if self.engine.failed.is_set():
                self.state, self.last_error = "error", f"engine failed: {self.engine.error}"
                return
        if self._stop.is_set():
            return
        engine = self.engine.engine
        state = engine.new_state()
        flow = DISFlow()
        last_seq = 0
        seq_out = 0
        ema_dt = None
        t_prev = None
        while not self._stop.is_set():
            got = self._slot.get(last_seq, timeout=0.25)
            self._check_stall()
            if got is None:
                continue
            seq, cf = got
            if last_seq and seq - last_seq > 1:
                self.dropped_capture += seq - last_seq - 1
                self.metrics.dropped.labels(self.name, "capture").inc(seq - last_seq - 1)
            last_seq = seq
            t0 = time.monotonic()
            try:
                mf = engine.step(state, cf.image)
            except ValueError as exc:
                self.log.warning("stream %s: frame rejected by the engine: %s", self.name, exc)
                self.last_error = str(exc)
                continue
            t1 = time.monotonic()
            self.metrics.engine_time.labels(self.name).observe(t1 - t0)
            self.metrics.frames.labels(self.name).inc()
            self.frames += 1
            h, w = cf.image.shape[:2]
            self.size = (w, h)
            if t_prev is not None:
                dt = t1 - t_prev
                ema_dt = dt if ema_dt is None else 0.9 * ema_dt + 0.1 * dt
                self.fps = 1.0 / ema_dt if ema_dt > 0 else 0.0
            t_prev = t1
            flow_payload = None
            if self.hub.flow_wanted:
                pooled = flow.step(cf.image, int(mf.cell))
                if pooled is not None:
                    flow_payload = protocol.flow_payload(*pooled, int(mf.cell))
            else:
                flow.reset()
            seq_out += 1
            preview = self._preview(cf.image)
            text = protocol.message(
                "result",
                stream=self.name,
                seq=seq_out,
                capture_ts=round(cf.wall_ms, 3),
                width=w,
                height=h,
                timing={
                    "engine_ms": round((t1 - t0) * 1000, 3),
                    "latency_ms": round((time.monotonic() - cf.t_capture) * 1000, 3),
                    "fps": round(self.fps, 2),
                    "dropped": self.dropped_capture,
                },
                motion=protocol.motion_payload(mf),
                flow=flow_payload,
                truth=cf.truth,
                preview=preview is not None,
            )
            out = protocol.Outgoing(
                seq_out,
                text,
                protocol.preview_frame(seq_out, preview) if preview is not None else None,
                cf.t_capture,
            )
            self.hub.publish(out)

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
        await asyncio.gather(
            *(asyncio.to_thread(p.stop) for p in self.pipelines.values() if p.running)
        )
