"""Streams API and websocket, against FastAPI's TestClient with the engine test double."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time

import numpy as np
import pytest
from engine_double import FakeEngine, FlakyEngine
from fastapi.testclient import TestClient
from service_helpers import pattern_factory, random_engine
from starlette.websockets import WebSocketDisconnect

from v1motion.service.app import create_app
from v1motion.service.protocol import SCHEMA_VERSION, parse_preview
from v1motion.service.routers.streams import UnitsPublic, UnitTuning
from v1motion.service.settings import Settings, SourceSpec


def make_settings(**kw):
    base = dict(
        sources=[
            SourceSpec(name="pat", kind="synthetic"),
            SourceSpec(name="other", kind="synthetic"),
        ],
        grace_period_s=0.3,
    )
    base.update(kw)
    return Settings(**base)


@pytest.fixture
def stats():
    return {}


@pytest.fixture
def client(stats):
    app = create_app(
        make_settings(),
        engine_factory=random_engine,
        source_factories={
            "pat": pattern_factory(stats, vx=2),
            "other": pattern_factory(vx=0, vy_up=2),
        },
    )
    with TestClient(app) as c:
        deadline = time.monotonic() + 10
        while c.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.02)
        yield c


def next_result(ws, timeout_msgs=200):
    """Skip to the next ``result``; return it with its preview."""
    for _ in range(timeout_msgs):
        msg = ws.receive()
        if msg.get("text"):
            m = json.loads(msg["text"])
            if m["type"] == "result":
                preview = ws.receive()["bytes"] if m["preview"] else None
                return m, preview
    raise AssertionError("no result")


def test_health_ready_and_docs(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert "/v1/streams" in paths and "/v1/units" in paths


def test_list_streams_idle_before_viewers(client):
    body = client.get("/v1/streams").json()
    assert [s["name"] for s in body["streams"]] == ["pat", "other"]
    assert all(s["state"] == "idle" and s["subscribers"] == 0 for s in body["streams"])
    assert body["default"] == "pat"
    assert body["camera"]["path"] == "v1/camera"


def test_unknown_stream_is_404_with_the_valid_names(client):
    r = client.get("/v1/streams/nope")
    assert r.status_code == 404
    assert "nope" in r.json()["detail"] and "pat" in r.json()["detail"]


def test_stream_socket_sends_hello_results_and_previews(client):
    with client.websocket_connect("/v1/streams/pat") as ws:
        hello = json.loads(ws.receive_text())
        assert hello == {
            "v": SCHEMA_VERSION,
            "type": "hello",
            "stream": "pat",
            "description": hello["description"],
        }
        for _ in range(3):
            m, preview = next_result(ws)
        assert m["v"] == SCHEMA_VERSION and m["stream"] == "pat"
        motion = m["motion"]
        cell, rows, cols = motion["cell_px"], motion["rows"], motion["cols"]
        assert rows == 96 // cell and cols == 128 // cell
        assert len(motion["direction_deg"]) == rows
        assert len(motion["speed_px_per_frame"][0]) == len(motion["confidence"][0]) == cols
        assert all(0 <= d < 360 for row in motion["direction_deg"] for d in row)
        assert len(motion["direction_hist"]) == 16 and len(motion["speed_hist"]) == 7
        assert set(m["timing"]) >= {"latency_ms", "fps", "dropped", "engine_ms"}
        seq, jpeg = parse_preview(preview)
        assert seq == m["seq"] and jpeg[:2] == b"\xff\xd8"
        assert m["flow"] is None
        status = client.get("/v1/streams/pat").json()
        assert status["state"] == "running" and status["subscribers"] == 1


def test_a_worker_that_polls_before_each_frame_streams_every_frame():
    """``live_busy_poll_ms``: the worker polls for frames instead of sleeping; results still come,
    in order, each frame once."""
    app = create_app(
        make_settings(live_busy_poll_ms=15),
        engine_factory=random_engine,
        source_factories={"pat": pattern_factory(vx=2), "other": pattern_factory(vx=0, vy_up=2)},
    )
    with TestClient(app) as c, c.websocket_connect("/v1/streams/pat") as ws:
        seqs = [next_result(ws)[0]["seq"] for _ in range(12)]
        status = c.get("/v1/streams/pat").json()
    assert seqs == sorted(seqs) and len(set(seqs)) == 12
    assert status["state"] == "running" and status["frames"] >= 12


def test_the_engine_numbers_reach_the_viewer():
    """With an engine double that measures the shift, a pattern moving right reads as 0 degrees."""
    app = create_app(
        make_settings(),
        engine_factory=FakeEngine,
        source_factories={"pat": pattern_factory(vx=2), "other": pattern_factory(vx=0, vy_up=2)},
    )
    with TestClient(app) as c:
        for name, expected in (("pat", 0.0), ("other", 90.0)):
            with c.websocket_connect(f"/v1/streams/{name}") as ws:
                for _ in range(3):
                    m, _ = next_result(ws)
            motion = m["motion"]
            assert abs((motion["global_direction_deg"] - expected + 180) % 360 - 180) < 10
            assert motion["global_speed_px_per_frame"] == pytest.approx(2.0, abs=0.3)


def test_speeds_are_per_source_frame_when_the_engine_skips_frames():
    """A slow engine (averaging over frames as the real one does) sees every third or fourth frame
    of a 2 px/frame pattern, 6-8 px apart; the viewer is still told 2 px/frame, the unit of the
    source's own truth, and so is the flow."""
    app = create_app(
        make_settings(),
        engine_factory=lambda: FakeEngine(delay=0.03, average=True),
        source_factories={"pat": pattern_factory(vx=2, fps=120.0)},
    )
    with TestClient(app) as c, c.websocket_connect("/v1/streams/pat?flow=1") as ws:
        results = [next_result(ws)[0] for _ in range(8)][2:]
    assert results[-1]["timing"]["dropped"] > len(results)  # frames were skipped
    centres = []
    for m in results:
        assert m["motion"]["global_speed_px_per_frame"] == pytest.approx(2.0, abs=0.3)
        flow = m["flow"]
        centres.append(flow["speed_px_per_frame"][flow["rows"] // 2][flow["cols"] // 2])
    # The median: on a loaded machine a gap can reach 10 frames, 20 px, which DIS loses now and then.
    assert np.median(centres) == pytest.approx(2.0, abs=0.6)


def test_flow_option_adds_dis_flow_in_the_same_grid(client):
    with client.websocket_connect("/v1/streams/pat?flow=1") as ws:
        for _ in range(3):
            m, _ = next_result(ws)
        flow = m["flow"]
        assert flow["rows"] == m["motion"]["rows"] and flow["cols"] == m["motion"]["cols"]
        centre = flow["direction_deg"][flow["rows"] // 2][flow["cols"] // 2]
        assert min(centre, 360 - centre) < 20  # DIS also sees rightward motion
        ws.send_text(json.dumps({"type": "options", "flow": False}))
        for _ in range(3):
            m, _ = next_result(ws)
        assert m["flow"] is None


def test_one_capture_however_many_viewers(client, stats):
    with (
        client.websocket_connect("/v1/streams/pat") as a,
        client.websocket_connect("/v1/streams/pat") as b,
        client.websocket_connect("/v1/streams/pat") as c,
    ):
        for ws in (a, b, c):
            next_result(ws)
        assert stats["opens"] == 1
        assert client.get("/v1/streams/pat").json()["subscribers"] == 3


def test_stream_stops_after_grace_period_and_restarts(client, stats):
    with client.websocket_connect("/v1/streams/pat") as ws:
        next_result(ws)
    deadline = time.monotonic() + 5
    while client.get("/v1/streams/pat").json()["state"] != "idle":
        assert time.monotonic() < deadline, "stream did not stop after its grace period"
        time.sleep(0.05)
    assert stats["closes"] == 1
    with client.websocket_connect("/v1/streams/pat") as ws:
        next_result(ws)
    assert stats["opens"] == 2


def test_unknown_stream_socket_gets_error_message(client, caplog):
    with caplog.at_level("INFO", "v1motion.service.routers.streams"):
        with client.websocket_connect("/v1/streams/nope") as ws:
            m = json.loads(ws.receive_text())
            assert m["type"] == "error" and m["code"] == "unknown_stream" and "pat" in m["detail"]
            with pytest.raises(WebSocketDisconnect) as exc:
                ws.receive_text()
            assert exc.value.code == 4404
    assert "websocket for unknown stream 'nope' refused (4404)" in caplog.text
    assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize("gone", ["ClientDisconnected", "WebSocketDisconnect"])
def test_a_client_that_left_before_the_answer_is_no_server_error(client, caplog, gone):
    """A viewer of an unknown stream that left before its error was sent: the server logged
    "Exception in ASGI application" with three tracebacks (found under a soak's load)."""
    from starlette.requests import Request
    from uvicorn.protocols.utils import ClientDisconnected

    from v1motion.service.security import client_left

    left = {"ClientDisconnected": ClientDisconnected, "WebSocketDisconnect": WebSocketDisconnect}
    sent = []

    async def receive():
        return {"type": "websocket.connect"}

    async def send(message):
        sent.append(message["type"])
        if message["type"] == "websocket.send":
            raise left[gone]()

    scope = {
        "type": "websocket",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "scheme": "ws",
        "server": ("testserver", 80),
        "client": ("testclient", 50000),
        "root_path": "",
        "path": "/v1/streams/nope",
        "raw_path": b"/v1/streams/nope",
        "query_string": b"",
        "headers": [(b"host", b"testserver")],
        "subprotocols": [],
        "state": {},
        "app": client.app,
    }
    caplog.set_level("DEBUG")
    client.portal.call(client.app, scope, receive, send)  # raised before
    assert sent[:2] == ["websocket.accept", "websocket.send"]
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    assert "the client left before the route ended" in caplog.text
    http = Request({"type": "http", "headers": []})
    with pytest.raises(left[gone]):  # an HTTP request's own errors are not swallowed
        asyncio.run(client_left(http, left[gone]()))
    assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ("{not json", "bad_message"),
        ("[1, 2]", "bad_message"),
        (json.dumps({"type": "launch"}), "bad_message"),
        (json.dumps({"type": "options", "flow": "yes"}), "bad_message"),
        (b"\x00\x01", "unexpected_binary"),
    ],
)
def test_malformed_messages_get_an_error_and_the_stream_goes_on(client, payload, code):
    with client.websocket_connect("/v1/streams/pat") as ws:
        if isinstance(payload, bytes):
            ws.send_bytes(payload)
        else:
            ws.send_text(payload)
        for _ in range(300):
            msg = ws.receive()
            if msg.get("text") and json.loads(msg["text"])["type"] == "error":
                assert json.loads(msg["text"])["code"] == code
                break
        else:
            raise AssertionError("no error message")
        next_result(ws)  # still streaming


def test_metrics_count_frames_clients_and_latency(client):
    with client.websocket_connect("/v1/streams/pat") as ws:
        for _ in range(5):
            next_result(ws)
        text = client.get("/metrics").text
    assert 'v1motion_clients{stream="pat"} 1.0' in text
    frames = [
        l
        for l in text.splitlines()
        if l.startswith('v1motion_frames_processed_total{stream="pat"}')
    ]
    assert frames and float(frames[0].split()[-1]) >= 5
    assert 'v1motion_capture_to_send_seconds_count{stream="pat"}' in text
    # a slow viewer's sends block up to the send timeout (10 s): they all fell in +Inf above 1 s
    assert 'v1motion_capture_to_send_seconds_bucket{le="10.0",stream="pat"}' in text


def test_units_endpoint_serves_the_tuning_report(client):
    body = client.get("/v1/units").json()
    assert body["n_units"] == len(body["units"]) > 0
    u = body["units"][0]
    assert len(u["direction_tuning"]) == len(body["directions_deg"])
    assert len(u["speed_tuning"]) == len(body["speeds"])
    assert len(body["histogram_speed_bins"]) == 7 and len(body["histogram_directions_deg"]) == 16
    # what the schema promises a generated client, field for field (it said "any object")
    schema = client.get("/openapi.json").json()
    ref = schema["paths"]["/v1/units"]["get"]["responses"]["200"]["content"]["application/json"]
    assert ref["schema"] == {"$ref": "#/components/schemas/UnitsPublic"}
    UnitsPublic.model_validate(body, strict=True)
    assert set(UnitsPublic.model_fields) == set(body)
    assert set(UnitTuning.model_fields) == set(u)


def test_units_are_gzipped_for_a_client_that_takes_it(client):
    """121 KB of JSON took 8.2 s to fill the unit browser on a phone's slow link."""
    import gzip

    plain = client.get("/v1/units", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers and plain.headers["vary"] == "Accept-Encoding"
    with client.stream("GET", "/v1/units", headers={"Accept-Encoding": "br, gzip"}) as r:
        assert r.headers["content-encoding"] == "gzip"
        raw = b"".join(r.iter_raw())
    assert json.loads(gzip.decompress(raw)) == plain.json()
    assert len(raw) * 3 < len(plain.content)
    refused = client.get("/v1/units", headers={"Accept-Encoding": "gzip;q=0, identity"})
    assert "content-encoding" not in refused.headers


def readiness_gauge(c) -> dict[str, float]:
    """``v1motion_readiness{status}`` as scraped: an alert had only /readyz to tell a server still
    compiling from one that failed."""
    lines = c.get("/metrics").text.splitlines()
    return {
        line.split('"')[1]: float(line.rsplit(" ", 1)[1])
        for line in lines
        if line.startswith("v1motion_readiness{")
    }


def test_readyz_is_503_until_the_engine_is_warm():
    import threading

    gate = threading.Event()

    def slow_engine():
        gate.wait(10)
        return random_engine()

    app = create_app(make_settings(), engine_factory=slow_engine, source_factories={})
    with TestClient(app) as c:
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["status"] == "starting"
        assert readiness_gauge(c) == {"ready": 0, "starting": 1, "failed": 0}
        assert c.get("/v1/units").status_code == 503
        gate.set()
        deadline = time.monotonic() + 5
        while c.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert readiness_gauge(c) == {"ready": 1, "starting": 0, "failed": 0}


def test_readyz_reports_a_failed_engine():
    def broken():
        raise RuntimeError("weights missing")

    with TestClient(create_app(make_settings(), engine_factory=broken)) as c:
        deadline = time.monotonic() + 5
        while (r := c.get("/readyz")).json()["status"] == "starting":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert r.status_code == 503 and "weights missing" in r.json()["detail"]
        assert r.json()["status"] == "failed"
        assert readiness_gauge(c) == {"ready": 0, "starting": 0, "failed": 1}


def test_dashboard_is_served_at_root(client):
    r = client.get("/")
    assert r.status_code == 200 and "<html" in r.text.lower()


def test_a_viewer_arriving_while_the_stream_stops_gets_it_restarted(stats):
    import asyncio

    from v1motion.service.live.engine import EngineHolder
    from v1motion.service.live.hub import Subscriber
    from v1motion.service.live.pipeline import StreamManager, StreamPipeline
    from v1motion.service.metrics import Metrics

    settings = make_settings(grace_period_s=0.0)
    holder = EngineHolder()
    holder.load(random_engine)

    async def scenario():
        spec = settings.sources[0]
        p = StreamPipeline(spec, pattern_factory(stats), holder, settings, Metrics())
        real_stop = p.stop

        def slow_stop(timeout=3.0):
            time.sleep(0.3)  # the viewer below arrives during this
            real_stop(timeout)

        p.stop = slow_stop
        mgr = StreamManager({"pat": p}, settings, Metrics())
        first = Subscriber()
        mgr.subscribe("pat", first)
        await first.next()
        mgr.unsubscribe("pat", first)
        await asyncio.sleep(0.1)  # the stop is under way
        second = Subscriber()
        mgr.subscribe("pat", second)
        await asyncio.sleep(0.5)
        msg = await asyncio.wait_for(second.next(), 5)
        assert msg.seq >= 1 and p.running
        await mgr.close()

    asyncio.run(scenario())
    assert stats["opens"] == 2


def test_missed_counts_every_result_a_viewer_does_not_get():
    """A slow viewer's ``missed`` grows, a fast one's stays 0, and sent + missed adds up."""
    import asyncio

    from v1motion.service.live.hub import Hub, Subscriber
    from v1motion.service.metrics import Metrics
    from v1motion.service.protocol import Outgoing

    async def scenario():
        metrics = Metrics()
        hub = Hub("pat", metrics)
        hub.bind(asyncio.get_running_loop())
        fast, slow = Subscriber(), Subscriber()
        hub.subscribers |= {fast, slow}
        got = {fast: [], slow: []}

        gate = asyncio.Event()  # the slow viewer reads only when let through: one result in ten

        async def read(sub, gated):
            while True:
                if gated:
                    await gate.wait()
                    gate.clear()
                msg = await sub.next()
                got[sub].append(msg.seq)
                sub.sent += 1

        readers = [asyncio.create_task(read(fast, False)), asyncio.create_task(read(slow, True))]
        n = 100
        for seq in range(1, n + 1):
            hub.publish(Outgoing(seq, f'{{"seq":{seq}}}', None, 0.0))
            if seq % 10 == 0:
                gate.set()
            await asyncio.sleep(0.001)  # the fan-out and the readers run in between
        # three results published while the fan-out is queued reach nobody but the newest
        for seq in range(n + 1, n + 4):
            hub.publish(Outgoing(seq, f'{{"seq":{seq}}}', None, 0.0))
        await asyncio.sleep(0.1)
        for t in readers:
            t.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        return metrics, fast, slow, got, n + 3

    metrics, fast, slow, got, published = asyncio.run(scenario())
    assert got[fast][: published - 3] == list(range(1, published - 2))
    assert fast.missed == 2  # only the two passed over by the coalesced fan-out
    assert slow.missed >= published - 12  # it read one result in ten
    for sub in (fast, slow):  # first result offered .. last: each one sent, missed or waiting
        assert sub.sent + sub.missed + (sub.pending is not None) == published
        assert len(got[sub]) == sub.sent
    assert slow.pending is None or isinstance(slow.pending.seq, int)  # one message, never a queue
    assert metrics.dropped.labels("pat", "subscriber")._value.get() == fast.missed + slow.missed


def test_the_server_limits_blas_threads_while_it_runs():
    """Small matrix products: a pool of BLAS threads only waits and takes CPU from the viewers."""
    from threadpoolctl import threadpool_info

    def blas_threads():
        return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]

    before = blas_threads()
    app = create_app(make_settings(blas_threads=1), engine_factory=random_engine)
    with TestClient(app):
        assert blas_threads() and set(blas_threads()) == {1}
    assert blas_threads() == before  # restored at shutdown: other code in the process keeps its own


def test_status_reports_sent_and_missed(client):
    with client.websocket_connect("/v1/streams/pat") as ws:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            msg = ws.receive()
            if msg.get("text") and (m := json.loads(msg["text"]))["type"] == "status":
                break
        else:
            raise AssertionError("no status within 10 s")
    assert m["stream"] == "pat" and m["sent"] >= 1
    assert isinstance(m["missed"], int) and m["missed"] >= 0
    assert m["dropped"] == m["missed"]  # the field's first name, kept for existing clients


@pytest.mark.parametrize("placed", [True, False])
def test_the_place_threads_setting_reaches_the_live_engine(placed):
    """``engine_place_threads`` is handed to the engine the server builds (``make_engine``)."""
    import os

    import numba

    if (
        not hasattr(os, "sched_setaffinity")
        or numba.config.NUMBA_NUM_THREADS < 2
        or len(os.sched_getaffinity(0)) < 2
    ):
        pytest.skip("needs 2 CPUs to place threads on")
    settings = make_settings(engine="random", engine_threads=2, engine_place_threads=placed)
    app = create_app(settings, source_factories={"pat": pattern_factory(vx=2)})
    with TestClient(app) as c:
        deadline = time.monotonic() + 30
        while c.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        engine = app.state.services.engine.engine
        assert engine.threads == 2
        assert bool(engine._placement.cpus) is placed


def _dropped_for_engine_errors(c) -> float:
    for line in c.get("/metrics").text.splitlines():
        if line.startswith('v1motion_dropped_frames_total{reason="engine_error",stream="pat"}'):
            return float(line.split()[-1])
    return 0.0


def _app_on(engine):
    sources = {"pat": pattern_factory(vx=2), "other": pattern_factory(vx=0)}
    return create_app(make_settings(), engine_factory=lambda: engine, source_factories=sources)


def _wait_for_status(c, done, seconds: float) -> dict:
    """Stream ``pat``'s status once ``done(status)``; fails after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not done(status := c.get("/v1/streams/pat").json()):
        assert time.monotonic() < deadline, f"not within {seconds} s: {status}"
        time.sleep(0.05)
    return status


def test_a_frame_the_engine_fails_on_is_dropped_and_the_stream_goes_on():
    """An unexpected error on one frame: that frame is counted and named, the stream's engine state
    starts anew, and the stream goes on analysing frames (its worker used to die for good)."""
    engine = FlakyEngine(fail={3})
    with TestClient(_app_on(engine)) as c, c.websocket_connect("/v1/streams/pat"):
        status = _wait_for_status(c, lambda st: st["frames"] >= 6, 10)
        dropped = _dropped_for_engine_errors(c)
    assert engine.calls >= 7 and engine.states >= 2  # the state started anew after the fault
    assert status["state"] == "running"
    assert status["error"] == "engine failed on a frame: RuntimeError: kernel fault"
    assert dropped == 1.0


def test_an_engine_that_keeps_failing_stops_its_stream_after_a_limit():
    from v1motion.service.live.analyse import MAX_FAILED_FRAMES

    engine = FlakyEngine(fail=range(10, 10**9))  # nine good frames, then none
    with TestClient(_app_on(engine)) as c, c.websocket_connect("/v1/streams/pat"):
        status = _wait_for_status(c, lambda st: st["state"] == "error", 20)
        time.sleep(0.2)
        assert engine.calls == 9 + MAX_FAILED_FRAMES  # no step after it gave up
        assert "RuntimeError: kernel fault" in status["error"]
        assert status["fps"] == 0.0  # not the rate it had before it stopped
        assert _dropped_for_engine_errors(c) == MAX_FAILED_FRAMES


# ------------------------------------------ a stream whose engine cannot keep up with its source


def test_a_stream_that_cannot_keep_up_with_its_source_says_so(monkeypatch, caplog):
    """Four 640x480 streams on two cores analysed 8 of their 30 frames a second while every status
    said ``running``, the results' ``timing`` had no source rate to compare with, nothing was
    logged and the dashboard said ``live``. A source of 60 frames a second and an engine of 50 ms a
    step: the results give the source's rate, and the stream's status, its viewers' status messages
    and the log say it falls behind."""
    import logging

    from v1motion.service.live import pipeline as pl

    monkeypatch.setattr(pl, "BEHIND_AFTER_S", 0.3)
    app = create_app(
        make_settings(),
        engine_factory=lambda: FakeEngine(delay=0.05),
        source_factories={"pat": pattern_factory(fps=60.0), "other": pattern_factory()},
    )
    caplog.set_level(logging.INFO, logger="v1motion.service.live.pipeline")
    with TestClient(app) as c, c.websocket_connect("/v1/streams/pat") as ws:
        said, timing = None, None
        deadline = time.monotonic() + 10
        while said is None and time.monotonic() < deadline:
            msg = ws.receive()
            m = json.loads(msg["text"]) if msg.get("text") else {}
            if m.get("type") == "result":
                timing = m["timing"]
            elif m.get("type") == "status" and m["behind"]:
                said = m
        assert said is not None and said["state"] == "running"
        assert timing["source_fps"] > 2 * timing["fps"] > 0, timing
        s = c.get("/v1/streams/pat").json()
        assert s["behind"] is True and s["source_fps"] > 2 * s["fps"] > 0, s
    lines = [r.getMessage() for r in caplog.records if "falls behind its source" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("stream pat: falls behind its source: "), lines


def test_a_stream_that_keeps_up_is_not_behind_and_its_rates_agree(client):
    with client.websocket_connect("/v1/streams/pat") as ws:
        for _ in range(15):
            m, _ = next_result(ws)
    assert m["timing"]["source_fps"] == pytest.approx(m["timing"]["fps"], rel=0.01)
    s = client.get("/v1/streams/pat").json()
    assert s["behind"] is False and s["source_fps"] == pytest.approx(s["fps"], rel=0.01)


def test_behind_needs_its_time_and_ends_with_hysteresis(caplog):
    """Behind only after BEHIND_AFTER_S under half the source's frames (a start or a burst is not);
    not behind again until above 70 % of them; each change logged once. The stream's dropped count
    starts again with each start of the stream, as the protocol says (it ran on from the last)."""
    import logging

    from v1motion.service.live.engine import EngineHolder
    from v1motion.service.live.pipeline import BEHIND_AFTER_S, StreamPipeline
    from v1motion.service.metrics import Metrics

    settings = make_settings()
    p = StreamPipeline(settings.sources[0], pattern_factory(), EngineHolder(), settings, Metrics())
    caplog.set_level(logging.INFO, logger="v1motion.service.live.pipeline")
    said = []
    t = 100.0
    for fps, step, behind in [
        (10, 0, False),  # a third of 30: the clock starts
        (10, BEHIND_AFTER_S - 1, False),
        (20, 0.5, False),  # two thirds: the clock is reset
        (10, 0.5, False),
        (10, BEHIND_AFTER_S - 0.1, False),
        (10, 0.2, True),  # under half for BEHIND_AFTER_S
        (18, 1, True),  # 60 %: not yet keeping up
        (25, 1, False),  # 83 %
    ]:
        t += step
        p.fps, p.source_fps = float(fps), 30.0
        p._pace(t)
        assert p.behind is behind, (fps, t)
        said += [r.getMessage().split(":")[1].strip() for r in caplog.records]
        caplog.clear()
    assert said == [
        "falls behind its source",
        "keeps up again (25.0 of 30.0 frames a second analysed)",
    ]
    p.dropped_capture = 7
    loop = asyncio.new_event_loop()
    try:
        p.start(loop)
        assert p.status()["dropped"] == 0 and p.status()["behind"] is False
    finally:
        p.stop()
        loop.close()


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="the system's thread names: Linux")
def test_a_streams_threads_carry_its_name_where_the_system_shows_threads(client):
    """Every thread of the server was ``python`` in ``top -H``: an operator could not tell which
    stream's engine or capture took the CPU."""
    with client.websocket_connect("/v1/streams/pat") as ws:
        next_result(ws)
        names = set()
        for task in os.listdir("/proc/self/task"):
            with contextlib.suppress(OSError), open(f"/proc/self/task/{task}/comm") as f:
                names.add(f.read().strip())
    assert {"eng:pat", "cap:pat"} <= names, sorted(names)
