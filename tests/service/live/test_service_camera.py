"""The browser-camera socket: negotiation, frames, and every kind of bad input."""

from __future__ import annotations

import json
import resource
import time

import cv2
import numpy as np
import pytest
from engine_double import FakeEngine, FlakyEngine
from fastapi.testclient import TestClient
from service_helpers import random_engine, server_warnings, serving
from starlette.websockets import WebSocketDisconnect
from websockets.sync.client import connect

from v1motion.service.app import create_app
from v1motion.service.jpeg import JPEGHeaderError, jpeg_size
from v1motion.service.settings import Settings


def jpeg(img, **kw) -> bytes:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90, *kw.get("params", [])])
    assert ok
    return buf.tobytes()


def huge_claim_jpeg(width=16000, height=16000) -> bytes:
    """A few hundred bytes whose frame header claims ``width`` x ``height`` pixels."""
    data = bytearray(jpeg(np.zeros((16, 16), np.uint8)))
    i = data.index(b"\xff\xc0")
    data[i + 5 : i + 7] = height.to_bytes(2, "big")
    data[i + 7 : i + 9] = width.to_bytes(2, "big")
    return bytes(data)


def texture(shift=0, shape=(96, 128)):
    rng = np.random.default_rng(1)
    t = np.kron(
        rng.integers(0, 256, (shape[0] // 4, shape[1] // 4), dtype=np.uint8),
        np.ones((4, 4), np.uint8),
    )
    return np.roll(t, shift, axis=1)


@pytest.fixture
def client():
    app = create_app(Settings(camera_max_bytes=64 * 1024), engine_factory=random_engine)
    with TestClient(app) as c:
        yield c


def hello(ws, width=128, height=96, **kw):
    ws.send_text(json.dumps({"type": "hello", "width": width, "height": height, **kw}))
    return json.loads(ws.receive_text())


def receive_json(ws):
    return json.loads(ws.receive_text())


# ---- the header parser -------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(1, 1), (96, 128), (480, 640), (37, 1001)])
@pytest.mark.parametrize("progressive", [0, 1])
def test_jpeg_size_matches_the_encoded_image(shape, progressive):
    data = jpeg(np.full(shape, 100, np.uint8), params=[cv2.IMWRITE_JPEG_PROGRESSIVE, progressive])
    assert jpeg_size(data) == (shape[1], shape[0])


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 30,
        b"\xff\xd8\xff",
        b"\xff\xd8\x00\x00\x00\x00",
        b"\xff\xd8\xff\xda\x00\x02",
    ],
)
def test_jpeg_size_rejects_non_jpegs_and_truncations(data):
    with pytest.raises(JPEGHeaderError):
        jpeg_size(data)


def test_jpeg_size_reads_the_claimed_size_of_a_tiny_file():
    data = huge_claim_jpeg()
    assert len(data) < 700
    assert jpeg_size(data) == (16000, 16000)


# ---- the socket --------------------------------------------------------------------------------
def test_camera_frames_get_results_with_the_motion():
    app = create_app(Settings(), engine_factory=FakeEngine)
    with TestClient(app) as client, client.websocket_connect("/v1/camera") as ws:
        ready = hello(ws)
        assert ready["type"] == "ready" and (ready["width"], ready["height"]) == (128, 96)
        for k in range(4):
            ws.send_bytes(jpeg(texture(shift=3 * k)))  # moving right 3 px/frame
            m = receive_json(ws)
            assert m["type"] == "result", m
        g = m["motion"]["global_direction_deg"]
        assert min(g, 360 - g) < 10
        assert m["stream"] == "camera" and m["preview"] is False


def test_camera_flow_toggle(client):
    with client.websocket_connect("/v1/camera") as ws:
        hello(ws, flow=True)
        for k in range(3):
            ws.send_bytes(jpeg(texture(shift=3 * k)))
            m = receive_json(ws)
        assert m["flow"] is not None and m["flow"]["rows"] == m["motion"]["rows"]


def expect_error(ws, code):
    m = receive_json(ws)
    assert m["type"] == "error" and m["code"] == code, m
    return m


def still_works(ws, client):
    ws.send_bytes(jpeg(texture()))
    assert receive_json(ws)["type"] == "result"
    assert client.get("/healthz").status_code == 200


def test_a_frame_the_engine_fails_on_gets_an_error_and_the_session_goes_on():
    engine = FlakyEngine(fail={2})
    app = create_app(Settings(), engine_factory=lambda: engine)
    with TestClient(app) as client, client.websocket_connect("/v1/camera") as ws:
        hello(ws)
        states = engine.states
        ws.send_bytes(jpeg(texture()))
        assert receive_json(ws)["type"] == "result"
        ws.send_bytes(jpeg(texture(shift=3)))
        assert expect_error(ws, "engine_error")["detail"] == "RuntimeError: kernel fault"
        assert engine.states == states + 1  # the session's motion starts anew
        still_works(ws, client)
        metrics = client.get("/metrics").text
    assert 'v1motion_dropped_frames_total{reason="engine_error",stream="camera"} 1.0' in metrics


def test_a_camera_whose_engine_fails_on_every_frame_is_closed_after_a_limit():
    from v1motion.service.live.analyse import MAX_FAILED_FRAMES

    app = create_app(Settings(), engine_factory=lambda: FlakyEngine())
    with TestClient(app) as client, client.websocket_connect("/v1/camera") as ws:
        hello(ws)
        for _ in range(MAX_FAILED_FRAMES - 1):
            ws.send_bytes(jpeg(texture()))
            expect_error(ws, "engine_error")
        ws.send_bytes(jpeg(texture()))
        detail = expect_error(ws, "engine_error")["detail"]
        assert f"{MAX_FAILED_FRAMES} frames in a row" in detail
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_text()
        assert closed.value.code == 1011
        assert client.get("/healthz").status_code == 200


def test_non_jpeg_frame_is_refused(client):
    with client.websocket_connect("/v1/camera") as ws:
        hello(ws)
        ok, png = cv2.imencode(".png", texture())
        ws.send_bytes(png.tobytes())
        assert "not a JPEG" in expect_error(ws, "bad_frame")["detail"]
        still_works(ws, client)


def test_oversized_frame_is_refused_before_decoding(client):
    with client.websocket_connect("/v1/camera") as ws:
        hello(ws)
        ws.send_bytes(b"\xff\xd8" + b"\x00" * (100 * 1024))
        assert "exceeds the limit" in expect_error(ws, "bad_frame")["detail"]
        still_works(ws, client)


def test_huge_dimension_jpeg_is_refused_without_allocating(client):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with client.websocket_connect("/v1/camera") as ws:
        hello(ws)
        ws.send_bytes(huge_claim_jpeg())
        assert "16000x16000" in expect_error(ws, "bad_frame")["detail"]
        still_works(ws, client)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 100  # decoding it would take 256 MB


def test_opencv_pixel_limit_backs_up_the_header_check():
    """Even if a huge JPEG reached cv2.imdecode, the limit set by ``import service`` refuses it."""
    import subprocess
    import sys

    code = (
        "import v1motion.service, cv2, numpy as np, sys\n"
        "sys.path[:0] = ['tests', 'tests/service/live']\n"
        "from test_service_camera import huge_claim_jpeg\n"
        "try:\n"
        "    img = cv2.imdecode(np.frombuffer(huge_claim_jpeg(), np.uint8), cv2.IMREAD_GRAYSCALE)\n"
        "except cv2.error as e:\n"
        "    print('refused' if 'CV_IO_MAX_IMAGE_PIXELS' in str(e) else e)\n"
        "else:\n"
        "    print('decoded', None if img is None else img.shape)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "refused", out.stdout + out.stderr


def test_frame_of_the_wrong_size_is_refused(client):
    with client.websocket_connect("/v1/camera") as ws:
        hello(ws)
        ws.send_bytes(jpeg(np.zeros((100, 100), np.uint8)))
        assert "negotiated size is 128x96" in expect_error(ws, "bad_frame")["detail"]
        still_works(ws, client)


def test_corrupt_jpeg_body_is_an_error_not_a_crash(client):
    with client.websocket_connect("/v1/camera") as ws:
        hello(ws)
        data = jpeg(texture())
        i = data.index(b"\xff\xda")
        ws.send_bytes(data[: i + 14])  # header intact, image data cut off
        m = receive_json(ws)
        assert m["type"] in ("error", "result")  # libjpeg may pad a truncated scan; never a crash
        still_works(ws, client)


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ("{oops", "bad_hello"),
        (json.dumps({"type": "hello", "width": 100000, "height": 96}), "bad_hello"),
        (json.dumps({"type": "hello", "width": "128", "height": 96}), "bad_hello"),
        (json.dumps({"type": "frame"}), "no_hello"),  # a frame before the hello
        # a client of another protocol version was served results it would misread
        (json.dumps({"v": 1, "type": "hello", "width": 128, "height": 96}), "bad_hello"),
        (json.dumps({"v": True, "type": "hello", "width": 128, "height": 96}), "bad_hello"),
    ],
)
def test_bad_hello_gets_an_error_and_can_be_retried(client, payload, code):
    with client.websocket_connect("/v1/camera") as ws:
        ws.send_text(payload)
        expect_error(ws, code)
        assert hello(ws)["type"] == "ready"


def test_frames_before_hello_are_not_decoded(client):
    with client.websocket_connect("/v1/camera") as ws:
        ws.send_bytes(jpeg(texture()))
        expect_error(ws, "no_hello")
        assert hello(ws)["type"] == "ready"


@pytest.mark.parametrize(
    "payload",
    [
        "not json",
        json.dumps({"type": "dance"}),
        json.dumps({"type": "options", "flow": 3}),
        # a frame number that is not one was ignored: the client's skip counting went wrong unsaid
        json.dumps({"type": "frame"}),
        json.dumps({"type": "frame", "seq": "7"}),
        json.dumps({"type": "frame", "seq": 7.5}),
        json.dumps({"type": "frame", "seq": -1}),
        json.dumps({"type": "frame", "seq": True}),
        json.dumps({"type": "frame", "seq": 2**70}),  # failed later, as an engine error
    ],
)
def test_malformed_messages_after_hello(client, payload):
    with client.websocket_connect("/v1/camera") as ws:
        hello(ws)
        ws.send_text(payload)
        expect_error(ws, "bad_message")
        still_works(ws, client)


def test_a_phone_held_upright_may_send_portrait_frames():
    """The size limit holds either way round: 480x640 from a phone held upright was refused."""
    app = create_app(
        Settings(camera_max_width=128, camera_max_height=96), engine_factory=random_engine
    )
    with TestClient(app) as c, c.websocket_connect("/v1/camera") as ws:
        for w, h in ((128, 128), (96, 129)):
            m = hello(ws, w, h)
            assert m["code"] == "bad_hello" and "at most 128x96 either way round" in m["detail"]
        assert hello(ws, 96, 128)["type"] == "ready"
        ws.send_bytes(jpeg(texture(shape=(128, 96))))
        ws.send_bytes(jpeg(texture(shift=2, shape=(128, 96))))
        assert receive_json(ws)["type"] == "result"
        assert receive_json(ws)["type"] == "result"


def test_a_bad_second_hello_is_a_bad_hello_and_the_session_keeps_its_size(client):
    with client.websocket_connect("/v1/camera") as ws:
        hello(ws)
        ws.send_text(json.dumps({"type": "hello", "width": 100000, "height": 96}))
        expect_error(ws, "bad_hello")  # it was bad_message, unlike the first hello's
        still_works(ws, client)


def test_frames_sent_ahead_keep_only_the_newest():
    engine = FakeEngine(delay=0.2)
    with TestClient(create_app(Settings(), engine_factory=lambda: engine)) as c:
        with c.websocket_connect("/v1/camera") as ws:
            hello(ws)
            for k in range(10):  # a misbehaving client: ten frames without waiting
                ws.send_bytes(jpeg(texture(shift=k)))
            results = 0
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                m = receive_json(ws)
                results += 1
                if m["timing"]["dropped"] + results >= 10:
                    break
            assert m["timing"]["dropped"] >= 5  # not queued: replaced while one was in flight
            assert engine.steps == results <= 4


def test_too_many_cameras_are_told_so():
    with TestClient(create_app(Settings(camera_max_clients=1), engine_factory=random_engine)) as c:
        with c.websocket_connect("/v1/camera") as first:
            hello(first)
            with c.websocket_connect("/v1/camera") as second:
                assert expect_error(second, "busy")
                with pytest.raises(WebSocketDisconnect):
                    second.receive_text()


def test_camera_with_a_failed_engine_is_told_so():
    def broken():
        raise RuntimeError("no weights")

    with TestClient(create_app(Settings(), engine_factory=broken)) as c:
        with c.websocket_connect("/v1/camera") as ws:
            assert expect_error(ws, "not_ready")
            with pytest.raises(WebSocketDisconnect) as exc:
                ws.receive_text()
            assert exc.value.code == 1013
        assert c.get("/healthz").status_code == 200


def test_cameras_that_leave_at_any_stage_free_their_place_without_a_server_error():
    """On a real uvicorn, with room for one camera: browsers that close the socket before their
    hello, after it, or between frames each give their place back (the next one is not told
    "busy"), and the server's log stays clean."""
    app = create_app(Settings(camera_max_clients=1), engine_factory=random_engine)
    with serving(app) as srv, server_warnings() as warnings:
        url = srv.ws_url + "/v1/camera"

        def leave_before_hello(ws):
            time.sleep(0.2)

        def leave_after_hello(ws):
            ws.send(json.dumps({"type": "hello", "width": 128, "height": 96}))
            assert json.loads(ws.recv(timeout=10))["type"] == "ready"

        def leave_between_frames(ws):
            leave_after_hello(ws)
            for k in range(3):
                ws.send(jpeg(texture(shift=2 * k)))
            assert json.loads(ws.recv(timeout=10))["type"] == "result"

        for leave in (leave_before_hello, leave_after_hello, leave_between_frames):
            with connect(url) as ws:
                leave(ws)
            deadline = time.monotonic() + 5
            while app.state.services.cameras.used and time.monotonic() < deadline:
                time.sleep(0.02)
            assert app.state.services.cameras.used == 0, leave.__name__
        with connect(url) as ws:  # the one place is free
            ws.send(json.dumps({"type": "hello", "width": 128, "height": 96}))
            assert json.loads(ws.recv(timeout=10))["type"] == "ready"
    assert warnings == []


def _send_ahead(ws, n, step_px, seq=False):
    for k in range(n):  # without waiting for results
        if seq:
            ws.send_text(json.dumps({"type": "frame", "seq": 100 + k}))
        ws.send_bytes(jpeg(texture(shift=step_px * k)))


def _results_until_frame(ws, last_seq=None, n=10, timeout=5.0):
    results, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = receive_json(ws)
        results.append(m)
        if (
            (m.get("client_seq") == last_seq)
            if last_seq is not None
            else (m["timing"]["dropped"] + len(results) >= n)
        ):
            break
    return results


def test_numbered_frames_sent_ahead_are_counted_once_as_dropped():
    """Each numbered frame the server discarded was counted once as sent ahead and again as a gap
    in seq: 7 frames lost read dropped 14."""
    engine = FakeEngine(delay=0.2)
    with TestClient(create_app(Settings(), engine_factory=lambda: engine)) as c:
        with c.websocket_connect("/v1/camera") as ws:
            hello(ws)
            _send_ahead(ws, 10, 2, seq=True)
            results = _results_until_frame(ws, last_seq=109)
            assert results[-1]["client_seq"] == 109 and len(results) < 10
            assert results[-1]["timing"]["dropped"] == 10 - len(results)


def test_frames_sent_ahead_without_seq_count_every_jpeg_as_a_camera_frame(monkeypatch):
    """Without seq each JPEG is the next camera frame: a pan of 2 px a JPEG, sent ahead, read 3-10
    px/frame, as the JPEGs the server discarded were not among the frames its speeds are divided
    by (``frames_elapsed``)."""
    from v1motion.service.live.analyse import Analyser

    elapsed, analyse = [], Analyser.analyse

    def spy(self, image, **kw):
        elapsed.append(kw["frames_elapsed"])
        return analyse(self, image, **kw)

    monkeypatch.setattr(Analyser, "analyse", spy)
    engine = FakeEngine(delay=0.2)
    with TestClient(create_app(Settings(), engine_factory=lambda: engine)) as c:
        with c.websocket_connect("/v1/camera") as ws:
            hello(ws)
            _send_ahead(ws, 10, 2)
            results = _results_until_frame(ws)
    assert results[-1]["timing"]["dropped"] == 10 - len(results) and len(results) < 10
    assert elapsed[0] == 1 and sum(elapsed) == 10  # the ten JPEGs, each counted once


def test_camera_results_say_there_is_no_truth(client):
    with client.websocket_connect("/v1/camera") as ws:
        hello(ws)
        ws.send_bytes(jpeg(texture()))
        result = receive_json(ws)
        assert "truth" in result and result["truth"] is None  # a client's r["truth"] was a KeyError


@pytest.mark.parametrize("kind", ["frame", "options"])
def test_a_frame_or_options_before_the_hello_is_no_hello(client, kind):
    with client.websocket_connect("/v1/camera") as ws:
        ws.send_text(json.dumps({"type": kind, "seq": 1, "flow": True}))
        m = receive_json(ws)
        assert m["code"] == "no_hello" and "hello" in m["detail"]
        assert hello(ws)["type"] == "ready"


def test_camera_options_name_what_they_take(client):
    with client.websocket_connect("/v1/camera") as ws:
        hello(ws)
        ws.send_text(json.dumps({"type": "options", "max_fps": 2}))
        m = receive_json(ws)
        assert (
            m["code"] == "bad_message" and 'only "flow"' in m["detail"] and "max_fps" in m["detail"]
        )
