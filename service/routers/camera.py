"""The browser camera: the dashboard sends JPEG frames, the server answers each with a result.

Protocol (docs/protocol.md): the client opens with ``{"type": "hello", "width", "height"}``; the
server answers ``ready`` with the negotiated size and the byte limit. Each binary message is one JPEG of
exactly that size; its header is checked before decoding. The client sends its next frame when the
previous result arrives (one frame in flight); if it sends more, only the newest waiting frame is kept.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import cv2
import numpy as np
from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect

from models.motion.contract import Engine
from service import protocol
from service.flow import DISFlow
from service.jpeg import JPEGHeaderError, jpeg_size
from service.metrics import Metrics
from service.routers.streams import close_quietly, parse_text
from service.settings import Settings

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["camera"])

HELLO_TIMEOUT_S = 10.0


@dataclass
class _Frame:
    data: bytes
    t_recv: float
    wall_ms: float
    client_seq: int | None


class CameraSession:
    """One browser's state: negotiated size, engine state, optional DIS flow, the newest frame."""

    def __init__(self, engine: Engine, settings: Settings, metrics: Metrics) -> None:
        self.engine = engine
        self.settings = settings
        self.metrics = metrics
        self.width = 0
        self.height = 0
        self.state = engine.new_state()
        self.flow = DISFlow()
        self.want_flow = False
        self.pending: _Frame | None = None
        self.wake = asyncio.Event()
        self.frames = 0
        self.dropped = 0
        self.rejected = 0
        self.seq = 0
        self._fps_t: float | None = None
        self.fps = 0.0

    @property
    def min_side(self) -> int:
        """The smallest side the engine analyses (it refuses smaller frames)."""
        return self.engine.min_side

    def negotiate(self, msg: dict) -> None:
        s = self.settings
        w, h = msg.get("width"), msg.get("height")
        if not (isinstance(w, int) and isinstance(h, int)):
            raise ValueError('hello needs integer "width" and "height"')
        low = self.min_side
        if not (low <= w <= s.camera_max_width and low <= h <= s.camera_max_height):
            raise ValueError(
                f"frame size {w}x{h} not allowed: width {low}-{s.camera_max_width}, "
                f"height {low}-{s.camera_max_height}"
            )
        self.width, self.height = w, h
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

    def process(self, frame: _Frame) -> str:
        """Decode and analyse one frame (runs in a worker thread)."""
        grey = cv2.imdecode(np.frombuffer(frame.data, np.uint8), cv2.IMREAD_GRAYSCALE)
        if grey is None or grey.shape != (self.height, self.width):
            raise ValueError("the JPEG could not be decoded")
        t0 = time.monotonic()
        mf = self.engine.step(self.state, grey)
        t1 = time.monotonic()
        self.metrics.engine_time.labels("camera").observe(t1 - t0)
        self.metrics.frames.labels("camera").inc()
        self.frames += 1
        if self._fps_t is not None and t1 > self._fps_t:
            self.fps = (
                0.9 * self.fps + 0.1 / (t1 - self._fps_t) if self.fps else 1 / (t1 - self._fps_t)
            )
        self._fps_t = t1
        flow_payload = None
        if self.want_flow:
            pooled = self.flow.step(grey, int(mf.cell))
            if pooled is not None:
                flow_payload = protocol.flow_payload(*pooled, int(mf.cell))
        else:
            self.flow.reset()
        self.seq += 1
        return protocol.message(
            "result",
            stream="camera",
            seq=self.seq,
            client_seq=frame.client_seq,
            capture_ts=round(frame.wall_ms, 3),
            width=self.width,
            height=self.height,
            timing={
                "engine_ms": round((t1 - t0) * 1000, 3),
                "latency_ms": round((time.monotonic() - frame.t_recv) * 1000, 3),
                "fps": round(self.fps, 2),
                "dropped": self.dropped,
            },
            motion=protocol.motion_payload(mf),
            flow=flow_payload,
            preview=False,
        )


@router.websocket("/camera")
async def camera_socket(ws: WebSocket) -> None:
    """Analyse the browser's own camera: JPEG frames in, JSON results out on the same socket."""
    app = ws.app  # accepted and authenticated by the router's guard (service.security.authorize)
    settings, metrics, holder = app.state.settings, app.state.metrics, app.state.engine
    if app.state.camera_clients >= settings.camera_max_clients:
        await ws.send_text(
            protocol.error("busy", f"at most {settings.camera_max_clients} browser cameras at once")
        )
        await close_quietly(ws, 1013, "busy")
        return
    app.state.camera_clients += 1
    metrics.clients.labels("camera").set(app.state.camera_clients)
    try:
        await _serve_camera(ws, settings, metrics, holder)
    except WebSocketDisconnect:
        pass
    except (RuntimeError, OSError) as exc:  # the socket broke mid-send, or a bug: say which
        log.warning("camera: session ended by %s: %s", type(exc).__name__, exc)
    finally:
        app.state.camera_clients -= 1
        metrics.clients.labels("camera").set(app.state.camera_clients)
        await close_quietly(ws, 1000)


async def _serve_camera(ws: WebSocket, settings, metrics, holder) -> None:
    # Polled rather than waited on in a thread: waiting cameras must not fill the thread pool.
    for _ in range(300):
        if holder.ready.is_set() or holder.failed.is_set():
            break
        await asyncio.sleep(0.2)
    if not holder.ready.is_set():
        await ws.send_text(protocol.error("not_ready", "the engine is not ready; retry shortly"))
        await close_quietly(ws, 1013, "not ready")
        return
    session = CameraSession(holder.engine, settings, metrics)
    lock = asyncio.Lock()

    async def send(text: str) -> None:
        async with lock:
            await ws.send_text(text)

    async def send_error(code: str, detail: str) -> None:
        await send(protocol.error(code, detail))

    # The hello negotiates the frame size; nothing is decoded before it.
    while True:
        try:
            raw = await asyncio.wait_for(ws.receive_text(), HELLO_TIMEOUT_S)
        except TimeoutError:
            await send_error("no_hello", 'send {"type": "hello", "width", "height"} first')
            await close_quietly(ws, 4400, "no hello")
            return
        except KeyError:  # a binary message: receive_text found no text
            await send_error("no_hello", "negotiate the frame size with a hello before frames")
            continue
        try:
            msg = parse_text(raw)
            if msg["type"] != "hello":
                raise ValueError(f"expected a hello, got {msg['type']!r}")
            session.negotiate(msg)
            break
        except ValueError as exc:
            await send_error("bad_hello", str(exc))
    await ws.send_text(_ready(session, settings))

    receiver = asyncio.create_task(_receive_frames(ws, session, send))
    try:
        while not receiver.done():
            waiter = asyncio.create_task(session.wake.wait())
            await asyncio.wait({waiter, receiver}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if receiver.done():
                break
            session.wake.clear()
            frame, session.pending = session.pending, None
            if frame is None:
                continue
            try:
                text = await asyncio.to_thread(session.process, frame)
            except ValueError as exc:
                session.rejected += 1
                metrics.dropped.labels("camera", "camera").inc()
                await send_error("bad_frame", str(exc))
                continue
            async with lock:
                await asyncio.wait_for(ws.send_text(text), settings.send_timeout_s)
    finally:
        receiver.cancel()
        await asyncio.gather(receiver, return_exceptions=True)


def _ready(session: CameraSession, settings) -> str:
    return protocol.message(
        "ready",
        width=session.width,
        height=session.height,
        max_bytes=settings.camera_max_bytes,
        flow=session.want_flow,
    )


async def _receive_frames(ws: WebSocket, session: CameraSession, send) -> None:
    async def send_error(code: str, detail: str) -> None:
        await send(protocol.error(code, detail))

    client_seq = None
    while True:
        event = await ws.receive()
        if event["type"] == "websocket.disconnect":
            return
        data = event.get("bytes")
        if data is not None:
            problem = session.check(data)
            if problem is not None:
                session.rejected += 1
                session.metrics.dropped.labels("camera", "camera").inc()
                await send_error("bad_frame", problem)
                continue
            if session.pending is not None:  # the browser sent ahead: keep the newest only
                session.dropped += 1
                session.metrics.dropped.labels("camera", "camera").inc()
            session.pending = _Frame(data, time.monotonic(), time.time() * 1000.0, client_seq)
            client_seq = None
            session.wake.set()
            continue
        try:
            msg = parse_text(event.get("text") or "")
            kind = msg["type"]
            if kind == "frame":  # optional: announces the client's sequence number of the next JPEG
                seq = msg.get("seq")
                client_seq = seq if isinstance(seq, int) else None
            elif kind == "options":
                flow = msg.get("flow")
                if not isinstance(flow, bool):
                    raise ValueError('"flow" must be true or false')
                session.want_flow = flow
            elif kind == "hello":
                session.negotiate(msg)
                session.pending = None
                await send(_ready(session, session.settings))
            else:
                raise ValueError(
                    f"unknown message type {kind!r}; valid: 'hello', 'frame', 'options'"
                )
        except ValueError as exc:
            await send_error("bad_message", str(exc))
