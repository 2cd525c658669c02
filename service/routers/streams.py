"""Configured streams: list them, watch one over a websocket, read the engine's tuning report."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import logging
import math
import time
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter, HTTPException, Request, Response, WebSocket, status
from pydantic import BaseModel, Field
from starlette.websockets import WebSocketDisconnect, WebSocketState

from v1motion.service import protocol
from v1motion.service.deps import EngineDep, SettingsDep, StateDep, StreamsDep
from v1motion.service.live.hub import Subscriber
from v1motion.service.settings import SOURCE_KINDS
from v1motion.service.webfiles import GZIPPED, accepts_gzip

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["streams"])

STATUS_INTERVAL_S = 1.0
MAX_FPS_LIMIT = 1000.0  # a viewer's max_fps: above any stream's rate, i.e. no limit


# The states v1motion.service.live.pipeline sets (an enum in the schema, for generated clients).
StreamState = Literal["idle", "starting", "running", "reconnecting", "stalled", "ended", "error"]


class StreamPublic(BaseModel):
    name: str
    kind: Literal[SOURCE_KINDS]
    description: str
    state: StreamState = Field(
        description="idle (no viewer), starting, running, reconnecting (the source failed or gave "
        "no frame: opened again with backoff, `error` says why), stalled (no frame for "
        "V1MOTION_STALL_TIMEOUT_S: opened again), ended (a file source with loop off played to "
        "its end) or error (the stream stopped: `error` says why)"
    )
    subscribers: int
    frames: int
    dropped: int
    fps: float = Field(description="frames analysed per second while running; 0 in any other state")
    source_fps: float = Field(
        description="frames the source delivers per second while running (the analysed ones and "
        "those skipped for a newer one); 0 in any other state"
    )
    behind: bool = Field(
        description="true while the stream analyses under half of its source's frames and has for "
        "10 s (until it analyses 70 %): the server's cores cannot keep up with its streams"
    )
    frame_age_s: float | None = Field(
        description="seconds since the source's last frame arrived (it grows while the source is "
        "down); null before the first frame and when idle"
    )
    size: list[int] | None = Field(
        description="[width, height] in px of the source's frames as analysed; null before the "
        "first frame"
    )
    error: str | None


class CameraInfo(BaseModel):
    path: str
    max_width: int = Field(description="px: the widest camera frame the socket takes")
    max_height: int = Field(description="px: the tallest camera frame the socket takes")
    max_bytes: int = Field(description="bytes: the largest JPEG message the socket takes")


class StreamsPublic(BaseModel):
    streams: list[StreamPublic]
    camera: CameraInfo
    default: str


@router.get("/streams")
def list_streams(s: SettingsDep, mgr: StreamsDep) -> StreamsPublic:
    """The configured sources and their state; the browser camera socket and its limits."""
    return StreamsPublic(
        streams=[StreamPublic(**p.status()) for p in mgr.pipelines.values()],
        camera=CameraInfo(
            path="v1/camera",
            max_width=s.camera_max_width,
            max_height=s.camera_max_height,
            max_bytes=s.camera_max_bytes,
        ),
        default=s.sources[0].name,
    )


@router.get("/streams/{name}", responses={404: {"description": "no stream with that name"}})
def get_stream(name: str, mgr: StreamsDep) -> StreamPublic:
    """One stream's state."""
    try:
        p = mgr.get(name)
    except KeyError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=exc.args[0]) from None
    return StreamPublic(**p.status())


class UnitTuning(BaseModel):
    id: int = Field(description="the unit's index, as in results' `top_units`")
    preferred_direction_deg: float = Field(description="degrees: 0 = moving right, 90 = up")
    preferred_speed: float = Field(description="px/frame")
    di: float = Field(description="direction index, 1 - r(opposite) / r(preferred)")
    responsive: bool = Field(
        description="its best response is at least 2 % of the population's 99th percentile"
    )
    direction_tuning: list[float] = Field(
        description="mean code per patch at each of `directions_deg`, at its best grating"
    )
    speed_tuning: list[float] = Field(
        description="at its preferred direction, for each of `speeds`"
    )


class UnitsPublic(BaseModel):
    n_units: int
    directions_deg: list[float] = Field(description="the grating directions measured (degrees)")
    speeds: list[float] = Field(description="the grating speeds measured (px/frame)")
    units: list[UnitTuning]
    histogram_directions_deg: list[float] = Field(
        description="bin centres of the direction histograms in each result (degrees)"
    )
    histogram_speed_bins: list[float] = Field(
        description="bin centres of the speed histograms in each result (px/frame)"
    )


@router.get(
    "/units",
    response_model=UnitsPublic,
    responses={503: {"description": "engine still loading"}},
)
async def list_units(holder: EngineDep, state: StateDep, request: Request) -> Response:
    """The engine's measured tuning: per unit, direction tuning (polar) and speed tuning.

    Measured on drifting gratings of 16 directions (``directions_deg``), periods 4-32 px and the
    speeds ``speeds`` (px/frame), leaving out those that flicker or stand still (0.4 cycle a frame
    or more). Each of ``units``: ``id``; ``preferred_direction_deg`` and ``preferred_speed``
    (px/frame); ``di``, the direction index 1 - r(opposite) / r(preferred) at its best grating;
    ``responsive`` (its best response is at least 2 % of the population's 99th percentile);
    ``direction_tuning``, its mean code per patch for each of ``directions_deg`` at that grating;
    ``speed_tuning``, at its preferred direction, for each of ``speeds`` (the best period that
    drifts at that speed). Also the bin centres of the population histograms in each result:
    ``histogram_directions_deg`` and ``histogram_speed_bins`` (px/frame).

    Gzipped for a client that accepts it (121 KB as JSON, 8 s to arrive on a phone's slow link).
    """
    if not holder.ready.is_set():
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, detail="the engine is still loading; retry shortly"
        )
    cache = state.units_cache
    if "tuning" not in cache:
        report = await asyncio.to_thread(holder.engine.tuning_report)
        engine = holder.engine
        report["histogram_directions_deg"] = [
            round(float(d), 2) for d in np.rad2deg(engine.direction_bins)
        ]
        report["histogram_speed_bins"] = [float(v) for v in engine.speed_bins]
        body = json.dumps(report, separators=(",", ":")).encode()
        cache["tuning"] = (body, gzip.compress(body, 6, mtime=0))
    body, zipped = cache["tuning"]
    headers = {"Vary": "Accept-Encoding"}
    if accepts_gzip(request.headers.get("accept-encoding", "")):
        return Response(zipped, media_type="application/json", headers=headers | GZIPPED)
    return Response(body, media_type="application/json", headers=headers)


async def close_quietly(ws: WebSocket, code: int, reason: str = "") -> None:
    if ws.application_state == WebSocketState.DISCONNECTED:
        return
    try:
        await asyncio.wait_for(ws.close(code=code, reason=reason), 1.0)
    except (TimeoutError, RuntimeError, WebSocketDisconnect, OSError):
        pass


def parse_text(raw: str) -> dict[str, Any] | None:
    """A client's JSON message as a dict with a string ``type``; ``ValueError`` names the problem.
    None for an ``auth`` message: the socket is authorised by now (by its handshake, by an ``auth``
    first message, or on a service that needs no token), so a client may always send one first."""
    try:
        msg = json.loads(raw)
    except ValueError:
        raise ValueError("malformed JSON") from None
    except RecursionError:
        raise ValueError("JSON nested too deep") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise ValueError('a message must be a JSON object with a string "type"')
    return None if msg["type"] == "auth" else msg


@router.websocket("/streams/{name}")
async def stream_socket(ws: WebSocket, name: str, state: StateDep) -> None:
    """Results of one configured stream: a ``hello``, then per frame a JSON ``result`` followed by a
    binary preview, and a ``status`` every second (see docs/protocol.md)."""
    # Accepted and authenticated by the router's guard (v1motion.service.security.authorize).
    mgr, settings, metrics = state.streams, state.settings, state.metrics
    try:
        pipeline = mgr.get(name)
    except KeyError as exc:
        log.info("websocket for unknown stream %r refused (4404)", name[:100])
        await ws.send_text(protocol.error("unknown_stream", exc.args[0]))
        await close_quietly(ws, 4404, "unknown stream")
        return
    sub = Subscriber()
    bad_query = []
    for key in ("flow", "preview"):
        if key in ws.query_params:
            try:
                setattr(sub, f"want_{key}", parse_switch(ws.query_params[key], key))
            except ValueError as exc:
                bad_query.append(protocol.error("bad_message", f"?{key}: {exc}"))
    if "max_fps" in ws.query_params:
        try:
            sub.max_fps = parse_max_fps(ws.query_params["max_fps"], text=True)
        except ValueError as exc:
            bad_query.append(protocol.error("bad_message", f"?max_fps: {exc}"))
    try:
        mgr.subscribe(name, sub)
    except RuntimeError as exc:
        await ws.send_text(protocol.error("shutting_down", str(exc)))
        await close_quietly(ws, 1001)
        return
    lock = asyncio.Lock()
    log.info("stream %s: viewer joined (%d now)", name, len(pipeline.hub.subscribers))
    try:
        await ws.send_text(
            protocol.message("hello", stream=name, description=pipeline.spec.describe())
        )
        for refusal in bad_query:
            await ws.send_text(refusal)
        sender = asyncio.create_task(_send_loop(ws, sub, pipeline, lock, settings, metrics))
        receiver = asyncio.create_task(_receive_loop(ws, sub, lock))
        done, pending = await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for t in done:
            exc = t.exception()
            if exc is None or isinstance(exc, WebSocketDisconnect):
                continue
            if isinstance(exc, RuntimeError | OSError):  # usually a send after the peer left
                log.info("stream %s: viewer task ended by %s: %s", name, type(exc).__name__, exc)
            else:
                log.error("stream %s: websocket task failed", name, exc_info=exc)
    except WebSocketDisconnect:
        pass
    except (RuntimeError, OSError) as exc:  # the socket broke mid-send, or a bug: say which
        log.warning("stream %s: viewer ended by %s: %s", name, type(exc).__name__, exc)
    finally:
        mgr.unsubscribe(name, sub)
        log.info("stream %s: viewer left (sent %d, missed %d)", name, sub.sent, sub.missed)
        await close_quietly(ws, 1000)


SWITCH = {"1": True, "true": True, "0": False, "false": False}


def parse_switch(value: str, name: str) -> bool:
    """A query's on/off switch (``?flow=1``, ``?preview=0``); ``ValueError`` names the problem
    (``?flow=yes`` was taken for off without a word)."""
    if value.lower() not in SWITCH:
        raise ValueError(f"{name} must be 1, 0, true or false, got {value!r}")
    return SWITCH[value.lower()]


OPTIONS = ("flow", "max_fps", "preview")


def parse_max_fps(value: Any, text: bool = False) -> float | None:
    """A viewer's ``max_fps``: a number of results a second, or ``None`` (as many as the stream
    makes); ``text``: a query's string, which JSON's numbers are not ("2" there is a client's bug).
    ``ValueError`` names the problem."""
    if value is None or (text and value == ""):
        return None
    fps = math.nan
    if not isinstance(value, bool) and (text or not isinstance(value, str)):
        with contextlib.suppress(TypeError, ValueError):
            fps = float(value)
    if math.isnan(fps):
        raise ValueError(f"max_fps must be a number of results a second, got {value!r}")
    if not 0.1 <= fps <= MAX_FPS_LIMIT:
        raise ValueError(f"max_fps must lie in [0.1, {MAX_FPS_LIMIT:g}], got {value!r}")
    return fps


async def _send_loop(ws, sub: Subscriber, pipeline, lock, settings, metrics) -> None:
    name = pipeline.name
    last_status = time.monotonic()
    last_sent = -math.inf
    while True:
        # Wait out the viewer's rate before taking from the mailbox, so what it then gets is the
        # newest result (those replaced meanwhile are counted as missed): results sent faster than
        # a client reads wait in the network's buffers and arrive seconds old. The rate is read
        # again each time: a viewer that raised it from 0.1 waited out the old 10 s.
        while (
            sub.max_fps is not None
            and time.monotonic() < last_sent + 1.0 / sub.max_fps
            and sub.pending is not protocol.END
        ):
            await asyncio.sleep(min(last_sent + 1.0 / sub.max_fps - time.monotonic(), 0.1))
        try:  # a status is due every second, also while no result comes (the source down, ended)
            wait = max(0.0, last_status + STATUS_INTERVAL_S - time.monotonic())
            await asyncio.wait_for(sub.event.wait(), wait)
        except TimeoutError:
            msg = None
        else:
            msg = await sub.next()
        if msg is protocol.END:
            await close_quietly(ws, 1001, "stream stopped")
            return
        parts = []
        if msg is not None and sub.want_preview:
            parts = [msg.text, msg.preview]
        elif msg is not None:
            parts = [msg.text if msg.preview is None else protocol.without_preview(msg.text)]
        now = time.monotonic()
        if now - last_status >= STATUS_INTERVAL_S:
            last_status = now
            parts.append(
                protocol.status(
                    name,
                    sub.sent + bool(msg),
                    sub.missed,
                    pipeline.state,
                    pipeline.last_error,
                    pipeline.lagging(),
                )  # fmt: skip
            )
        try:
            async with asyncio.timeout(settings.send_timeout_s):
                async with lock:
                    for part in parts:
                        if isinstance(part, str):
                            await ws.send_text(part)
                        elif part is not None:
                            await ws.send_bytes(part)
        except TimeoutError:
            metrics.slow_clients.labels(name).inc()
            log.warning(
                "stream %s: viewer did not read for %.1f s; disconnecting it",
                name,
                settings.send_timeout_s,
            )
            await close_quietly(ws, 4008, "too slow")
            return
        if msg is not None:
            sub.sent += 1
            last_sent = time.monotonic()
            metrics.latency.labels(name).observe(last_sent - msg.t_capture)


async def _receive_loop(ws: WebSocket, sub: Subscriber, lock) -> None:
    while True:
        event = await ws.receive()
        if event["type"] == "websocket.disconnect":
            return
        if event.get("text") is None:
            async with lock:
                await ws.send_text(
                    protocol.error("unexpected_binary", "stream sockets accept JSON text only")
                )
            continue
        try:
            msg = parse_text(event["text"])
            if msg is None:
                continue
            if msg["type"] != "options":
                raise ValueError(f"unknown message type {msg['type']!r}; valid: 'options'")
            unknown = sorted(set(msg) - {"type", "v", *OPTIONS})
            if unknown or not set(msg) & set(OPTIONS):
                raise ValueError(
                    f"options take {', '.join(repr(o) for o in OPTIONS)}"
                    + (f", not {', '.join(repr(u) for u in unknown)}" if unknown else "")
                )
            flow = msg.get("flow", sub.want_flow)
            preview = msg.get("preview", sub.want_preview)
            for key, value in (("flow", flow), ("preview", preview)):
                if not isinstance(value, bool):
                    raise ValueError(f'"{key}" must be true or false')
            max_fps = parse_max_fps(msg["max_fps"]) if "max_fps" in msg else sub.max_fps
            sub.want_flow, sub.want_preview, sub.max_fps = flow, preview, max_fps
        except ValueError as exc:
            async with lock:
                await ws.send_text(protocol.error("bad_message", str(exc)))
