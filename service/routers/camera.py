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

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect

from v1motion.service import protocol
from v1motion.service.deps import StateDep
from v1motion.service.live.camera import CameraFrame, CameraSession
from v1motion.service.routers.streams import close_quietly, parse_text

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["camera"])

HELLO_TIMEOUT_S = 10.0
MAX_SEQ = 2**53 - 1  # a client frame number: exact in JSON numbers everywhere (JavaScript too)


@router.websocket("/camera")
async def camera_socket(ws: WebSocket, state: StateDep) -> None:
    """Analyse the browser's own camera: JPEG frames in, JSON results out on the same socket."""
    # Accepted and authenticated by the router's guard (v1motion.service.security.authorize).
    settings, metrics, holder = state.settings, state.metrics, state.engine
    if not state.cameras.acquire():
        await ws.send_text(
            protocol.error("busy", f"at most {settings.camera_max_clients} browser cameras at once")
        )
        await close_quietly(ws, 1013, "busy")
        return
    metrics.clients.labels("camera").set(state.cameras.used)
    try:
        await _serve_camera(ws, settings, metrics, holder)
    except WebSocketDisconnect:
        pass
    except (RuntimeError, OSError) as exc:  # the socket broke mid-send, or a bug: say which
        log.warning("camera: session ended by %s: %s", type(exc).__name__, exc)
    finally:
        state.cameras.release()
        metrics.clients.labels("camera").set(state.cameras.used)
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
            event = await asyncio.wait_for(ws.receive(), HELLO_TIMEOUT_S)
        except TimeoutError:
            await send_error("no_hello", 'send {"type": "hello", "width", "height"} first')
            await close_quietly(ws, 4400, "no hello")
            return
        if event["type"] == "websocket.disconnect":
            return
        if event.get("text") is None:  # a binary message
            await send_error("no_hello", "negotiate the frame size with a hello before frames")
            continue
        try:
            msg = parse_text(event["text"])
            if msg is None:
                continue
            if msg["type"] in ("frame", "options"):
                await send_error("no_hello", f"send a hello before {msg['type']!r} messages")
                continue
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
            except Exception as exc:  # the engine failed on the frame: say so, start anew, go on
                analyser = session.analyser
                if analyser.fail():
                    n = analyser.failures
                    log.error("camera: engine failed on %d frames in a row; closing", n)
                    await send_error(
                        "engine_error",
                        f"the engine failed on {n} frames in a row "
                        f"({type(exc).__name__}: {exc}); closing the session",
                    )
                    await close_quietly(ws, 1011, "engine error")
                    return
                await send_error("engine_error", f"{type(exc).__name__}: {exc}")
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
            replaced = 0
            old = session.pending
            if old is not None:  # the browser sent ahead: keep the newest only
                if old.client_seq is None or client_seq is None:
                    # (with both numbered, the gap in seq counts it: it was counted twice)
                    session.dropped += 1
                    session.metrics.dropped.labels("camera", "camera").inc()
                if client_seq is None and old.client_seq is None:
                    replaced = old.replaced + 1
            session.pending = CameraFrame(
                data, time.monotonic(), time.time() * 1000.0, client_seq, replaced
            )
            client_seq = None
            session.wake.set()
            continue
        try:
            msg = parse_text(event.get("text") or "")
            if msg is None:
                continue
            kind = msg["type"]
            if kind == "frame":  # optional: announces the client's sequence number of the next JPEG
                seq = msg.get("seq")
                if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq <= MAX_SEQ:
                    # (a typo's seq was ignored: the client's skip counting went wrong unsaid;
                    # 2**70 failed later, in the result's encoding, as an engine error)
                    raise ValueError(
                        f'"seq" must be a whole number from 0 to 2**53 - 1, got {seq!r}'
                    )
                client_seq = seq
            elif kind == "options":
                unknown = sorted(set(msg) - {"type", "v", "flow"})
                if unknown:
                    raise ValueError(
                        f'the camera socket\'s options take only "flow", not {unknown} (a '
                        "camera's results come one per frame sent: send frames more slowly)"
                    )
                flow = msg.get("flow")
                if not isinstance(flow, bool):
                    raise ValueError('"flow" must be true or false')
                session.want_flow = flow
            elif kind == "hello":
                try:
                    session.negotiate(msg)
                except ValueError as exc:  # as the first hello's: bad_hello, and it may be retried
                    await send_error("bad_hello", str(exc))
                    continue
                session.pending = None
                await send(_ready(session, session.settings))
            else:
                raise ValueError(
                    f"unknown message type {kind!r}; valid: 'hello', 'frame', 'options'"
                )
        except ValueError as exc:
            await send_error("bad_message", str(exc))
