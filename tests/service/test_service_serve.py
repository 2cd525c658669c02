"""``v1motion serve`` as a real process: start-up, JSON logs, pings, SIGTERM with open websockets."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest
from service_helpers import RawWebSocket, free_port, serve_command, serve_refused
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect


@pytest.fixture
def server(tmp_path):
    port = free_port()
    env = dict(
        os.environ,
        V1MOTION_LOG_FORMAT="json",
        V1MOTION_WS_PING_INTERVAL_S="0.5",
        V1MOTION_WS_PING_TIMEOUT_S="1",
        V1MOTION_DATA_DIRR="typo",  # a mistyped setting: said in the log (test_logs_are_json_lines...)
    )
    log = open(tmp_path / "serve.log", "w+")
    proc = subprocess.Popen(
        serve_command(port),
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, (tmp_path / "serve.log").read_text()
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "server not ready in 60 s"
        time.sleep(0.2)
    yield proc, port, tmp_path / "serve.log"
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)
    log.close()


@pytest.mark.deadline
def test_sigterm_with_open_websockets_exits_within_seconds(server):
    proc, port, log_path = server
    viewers = [connect(f"ws://127.0.0.1:{port}/v1/streams/synthetic") for _ in range(3)]
    for ws in viewers:
        # the client offers permessage-deflate; the server declines it (compression per viewer)
        assert ws.response.headers.get("Sec-WebSocket-Extensions") is None
        assert json.loads(ws.recv(timeout=10))["type"] == "hello"
        while not (isinstance(m := ws.recv(timeout=30), str) and json.loads(m)["type"] == "result"):
            pass
        assert json.loads(m)["truth"]["kind"] in ("grating", "pan")  # the synthetic ground truth
    camera = connect(f"ws://127.0.0.1:{port}/v1/camera")
    camera.send(json.dumps({"type": "hello", "width": 64, "height": 64}))
    assert json.loads(camera.recv(timeout=10))["type"] == "ready"
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    # docs/protocol.md: when the service stops, viewers get close code 1001 ("going away")
    for ws in [*viewers, camera]:
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                ws.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    code = proc.wait(15)
    elapsed = time.monotonic() - t0
    # uvicorn shuts down gracefully, then re-raises the signal it caught: a normal exit
    assert code == 0
    assert elapsed < 8.0, elapsed  # shutdown_timeout_s is 5
    msgs = [json.loads(x)["msg"] for x in log_path.read_text().splitlines() if x.startswith("{")]
    assert "stream synthetic: stopped" in msgs
    assert any("Application shutdown complete" in m for m in msgs), msgs[-10:]
    for ws in viewers:
        ws.close()
    camera.close()


def test_a_server_that_did_spike_work_stops_on_sigterm_without_leaking_semaphores(server):
    """The fit (its worker pool) and a large JSON body (the reader's pool) leave one process pool
    each; SIGTERM used to end the process before Python's exit handlers, and the resource tracker
    then warned of their 5 semaphores each at every stop (a container's included)."""
    import numpy as np

    proc, port, log_path = server
    counts = np.random.default_rng(0).poisson(0.3, (4, 3000, 5)).tolist()  # a 300 kB body
    body = {"counts": counts, "kind": "glm", "options": {"n_lags": 2, "max_iter": 5}}
    r = httpx.post(f"http://127.0.0.1:{port}/v1/spikes/models", json=body, timeout=60)
    assert r.status_code == 201, r.text
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0
    log = log_path.read_text()
    assert "Application shutdown complete" in log
    assert "leaked" not in log, log[-2000:]


def test_logs_are_json_lines_with_the_stream_name(server):
    proc, port, log_path = server
    with connect(f"ws://127.0.0.1:{port}/v1/streams/synthetic") as ws:
        ws.recv(timeout=10)
    time.sleep(0.3)
    # every line, the start-up announcements too (they were plain text, three lines a start), and
    # no field of terminal colour codes (uvicorn's color_message)
    records = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    assert records, log_path.read_text()
    assert any(r["msg"].startswith("v1motion: dashboard on http://") for r in records)
    assert not any("color_message" in r for r in records)
    assert {"ts", "level", "logger", "msg", "thread"} <= set(records[0])
    assert any("stream synthetic: viewer joined" in r["msg"] for r in records)
    assert any(r.get("stream") == "synthetic" and "started" in r["msg"] for r in records)
    assert any(r["msg"].startswith("engine ready") for r in records)
    typo = [r for r in records if "V1MOTION_DATA_DIRR" in r["msg"]]
    assert [(r["level"], r["msg"]) for r in typo] == [
        (
            "warning",
            "V1MOTION_DATA_DIRR is not a setting and is ignored (did you mean V1MOTION_DATA_DIR?); "
            "the settings are in README.md ('Settings') and docs/security.md ('Limits')",
        )
    ]
    assert any(r["msg"].startswith("job store ") and " jobs, " in r["msg"] for r in records)


@pytest.mark.deadline
def test_pings_keep_sockets_alive_and_drop_dead_peers(server):
    _, port, _ = server
    # A peer that never answers pings: the server pings every 0.5 s and gives up after 1 s.
    dead = RawWebSocket(port, "/v1/camera")
    t0 = time.monotonic()
    with pytest.raises(ConnectionError):
        while time.monotonic() - t0 < 10:
            dead.read_some(65536)
    assert any(op == 9 for op, _ in dead.messages)  # it was pinged
    assert time.monotonic() - t0 < 6
    dead.close()
    # A live client answers pings (the library does) and stays connected.
    with connect(f"ws://127.0.0.1:{port}/v1/camera") as ws:
        time.sleep(2.5)
        ws.send(json.dumps({"type": "hello", "width": 64, "height": 64}))
        assert json.loads(ws.recv(timeout=5))["type"] == "ready"


def test_bad_configuration_is_refused_with_a_message():
    out = subprocess.run(
        [sys.executable, "-m", "v1motion.service.cli", "serve", "--host", "0.0.0.0", "--port", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "V1MOTION_TOKEN" in out.stderr and out.stdout == ""  # `2>err.log` keeps it


@pytest.mark.parametrize(
    ("env", "args", "said"),
    [
        ({"V1MOTION_SOURCES": "synthetic"}, [], "V1MOTION_SOURCES must be a JSON list, e.g. '["),
        ({"V1MOTION_ALLOWED_HOSTS": "a.org"}, [], "V1MOTION_ALLOWED_HOSTS must be a JSON list"),
        ({}, ["--source", "c=file:."], "file source 'c': '.' is a folder, not a file"),
        ({}, ["--source", "w=url:http://"], "url source 'w': the URL names no host"),
        (
            {"V1MOTION_SOURCES": '[{"name": "t", "kind": "synthetic", "lop": false}]'},
            [],
            "V1MOTION_SOURCES.0.lop: Extra inputs are not permitted",  # a misspelt key: refused
        ),
    ],
)
def test_each_bad_source_setting_is_one_line_that_names_it(env, args, said):
    out = serve_refused(*args, **env)
    assert out.returncode == 2
    assert said in out.stderr
    assert "Value error" not in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize(
    ("env", "args", "said"),
    [
        # a server that looked healthy and answered every request with a 500
        ({"V1MOTION_MAX_BODY_MB": "inf"}, [], "V1MOTION_MAX_BODY_MB: Input should be a finite"),
        # one that refused every upload as a broken video
        ({"V1MOTION_VIDEO_DEADLINE_S": "1e400"}, [], "V1MOTION_VIDEO_DEADLINE_S: Input should be"),
        ({"V1MOTION_VIDEO_MEMORY_MB": "99999999999999"}, [], "V1MOTION_VIDEO_MEMORY_MB: Input"),
        ({"V1MOTION_DATA_DIR": ""}, [], "V1MOTION_DATA_DIR: is empty"),  # was the current folder
        ({"V1MOTION_HOST": " "}, [], "V1MOTION_HOST: is empty"),  # was every interface
        ({"V1MOTION_LOG_LEVEL": "loud"}, [], "V1MOTION_LOG_LEVEL: Input should be 'debug'"),
        ({}, ["--threads", "0"], "--threads: Input should be greater than or equal to 1"),
        ({"V1MOTION_ENGINE_THREADS": "0"}, [], "V1MOTION_ENGINE_THREADS: Input should be"),
    ],
)
def test_a_bad_setting_is_named_as_the_operator_wrote_it(env, args, said, tmp_path):
    out = serve_refused(*args, **{"V1MOTION_DATA_DIR": str(tmp_path), **env})
    assert out.returncode == 2 and said in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "jobs.sqlite3").exists()


def test_a_file_source_that_is_not_a_video_is_refused_at_start(tmp_path):
    """It was accepted, then retried for as long as the service ran ("could not open video file
    notvideo.mp4 (looping)", again and again), as a missing file is not."""
    (tmp_path / "notes.mp4").write_text("hello")
    out = serve_refused("--source", f"nv=file:{tmp_path / 'notes.mp4'}")
    assert out.returncode == 2
    assert "file source 'nv': 'notes.mp4' is not a video that can be read" in out.stderr


def test_a_configuration_error_does_not_print_the_token():
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "v1motion.service.cli",
            "serve",
            "--host",
            "0.0.0.0",
            "--token",
            "hunter2-x",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, V1MOTION_BACKOFF_INITIAL_S="10", V1MOTION_BACKOFF_MAX_S="1"),
    )
    assert out.returncode == 2
    assert "backoff_max_s must be at least" in out.stderr
    assert "hunter2-x" not in out.stdout + out.stderr


def test_messages_beyond_the_socket_limit_close_the_socket_not_the_server(server):
    from websockets.exceptions import ConnectionClosed

    _, port, _ = server
    with connect(f"ws://127.0.0.1:{port}/v1/camera", max_size=None) as ws:
        ws.send(json.dumps({"type": "hello", "width": 64, "height": 64}))
        ready = json.loads(ws.recv(timeout=10))
        # past the app's own limit (an error message) and uvicorn's (twice that: close 1009)
        # The server closes (1009) as soon as it reads the frame's length, often
        # while the client is still writing: the close then surfaces on send, and
        # under load the client's socket may be reset before it reads the close
        # frame at all. Either way the socket is closed; a close frame it did read
        # must say "message too big".
        with pytest.raises(ConnectionClosed) as exc:
            ws.send(b"\xff\xd8" + b"\x00" * (2 * ready["max_bytes"] + 10))
            ws.recv(timeout=10)
        if exc.value.rcvd is not None:
            assert exc.value.rcvd.code == 1009
    assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
