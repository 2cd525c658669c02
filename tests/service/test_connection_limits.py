"""Bounds uvicorn leaves open, applied below every route: a request's headers must arrive in time,
a new connection must start a request, open connections are capped, and a JSON body must keep
arriving. Each was a way for one client to hold the server's connections and files."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
import time

import httpx
import pytest
from service_helpers import ServerThread, random_engine
from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from websockets.sync.client import connect

from v1motion.service.app import create_app
from v1motion.service.server import STATS, ConnectionLimits, bounded_http_protocol
from v1motion.service.settings import Settings


async def hello(request):
    return JSONResponse({"hello": True})


async def hold(websocket):
    await websocket.accept()
    await websocket.send_text("open")
    try:
        while True:
            await websocket.receive_text()
    except Exception:
        pass


BIG = 16 * 1024 * 1024  # more than the kernel's buffers on both sides hold


async def big(request):
    return Response(b"x" * BIG, media_type="application/octet-stream")


TINY = Starlette(routes=[Route("/hello", hello), Route("/big", big), WebSocketRoute("/hold", hold)])


def bounded(header_s=0.4, idle_s=0.6, max_connections=50, write_s=60.0):
    limits = ConnectionLimits(header_s, idle_s, max_connections, write_s)
    return ServerThread(TINY, http=bounded_http_protocol(limits))


def read_until_closed(sock: socket.socket, within: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and when it closed it."""
    t0, data = time.monotonic(), b""
    sock.settimeout(within)
    while chunk := sock.recv(65536):
        data += chunk
    return data, time.monotonic() - t0


def status_and_body(raw: bytes) -> tuple[int, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_headers_that_stop_arriving_get_408_and_the_connection_closed():
    with (
        bounded(header_s=0.4, idle_s=5) as srv,
        socket.create_connection(("127.0.0.1", srv.port)) as s,
    ):
        s.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\n")  # and no blank line
        raw, took = read_until_closed(s, within=5)
        status, body = status_and_body(raw)
        assert status == 408
        assert "headers did not arrive within 0.4 s" in body["detail"]
        assert 0.3 < took < 3
        # the app's browser policy on an answer written below it, as on every other
        head = raw.partition(b"\r\n\r\n")[0].decode().lower()
        assert "x-content-type-options: nosniff" in head and "content-security-policy: " in head


def test_a_connection_that_sends_nothing_is_closed_after_the_idle_time_without_an_answer():
    with (
        bounded(header_s=5, idle_s=0.6) as srv,
        socket.create_connection(("127.0.0.1", srv.port)) as s,
    ):
        raw, took = read_until_closed(s, within=5)
        assert raw == b""
        assert 0.4 < took < 3


def test_a_kept_alive_connection_gets_the_header_time_anew_for_each_request():
    with (
        bounded(header_s=0.5, idle_s=5) as srv,
        socket.create_connection(("127.0.0.1", srv.port)) as s,
    ):
        for _ in range(3):
            time.sleep(0.3)  # slower than the header time in all, within it for each request
            s.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\n")
            time.sleep(0.3)
            s.sendall(b"\r\n")
            s.settimeout(5)
            raw = s.recv(65536)
            assert raw.startswith(b"HTTP/1.1 200"), raw
        s.sendall(b"GET /hello HTTP/1.1\r\n")
        raw, _ = read_until_closed(s, within=5)
        assert status_and_body(raw)[0] == 408


def test_websockets_outlive_the_header_time_and_count_as_connections():
    with bounded(header_s=0.3, idle_s=0.3, max_connections=3) as srv:
        sockets = [connect(f"{srv.ws_url}/hold") for _ in range(3)]
        for ws in sockets:
            assert ws.recv(timeout=5) == "open"
        time.sleep(0.8)  # past both timeouts: the websockets stay open
        sockets[0].send("still here")
        refused = httpx.get(f"{srv.url}/hello", timeout=5)
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert refused.headers["x-frame-options"] == "DENY"
        assert "too many open connections (at most 3)" in refused.json()["detail"]
        sockets.pop().close()
        deadline = time.monotonic() + 5
        while (answer := httpx.get(f"{srv.url}/hello", timeout=5)).status_code == 503:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert answer.json() == {"hello": True}
        for ws in sockets:
            ws.close()


def test_held_connections_past_the_cap_do_not_stop_the_server_answering_once_they_time_out():
    """The probe's attack, small: half-sent requests fill every connection; each is answered 408
    in the header time, and the server answers again."""
    with bounded(header_s=0.5, idle_s=5, max_connections=20) as srv:
        held = []
        for _ in range(20):
            s = socket.create_connection(("127.0.0.1", srv.port))
            s.sendall(b"GET /hello HTTP/1.1\r\n")
            held.append(s)
        time.sleep(0.1)
        assert httpx.get(f"{srv.url}/hello", timeout=5).status_code == 503
        for s in held:
            raw, _ = read_until_closed(s, within=5)
            assert status_and_body(raw)[0] == 408
            s.close()
        assert httpx.get(f"{srv.url}/hello", timeout=5).status_code == 200


def test_a_json_body_that_stops_arriving_gets_408_naming_the_wait():
    settings = Settings(upload_idle_timeout_s=0.5)
    srv = ServerThread(create_app(settings, engine_factory=random_engine))
    with srv, socket.create_connection(("127.0.0.1", srv.port)) as s:
        s.sendall(
            b"POST /v1/language/score HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
            b'{"text": "'
        )
        t0 = time.monotonic()
        s.settimeout(10)
        raw = b""
        while b"\r\n\r\n" not in raw or not raw.rstrip().endswith(b"}"):
            chunk = s.recv(65536)
            assert chunk, raw
            raw += chunk
        status, body = status_and_body(raw)
        assert status == 408
        assert "did not arrive in time (nothing for 0.5 s" in body["detail"]
        assert 0.3 < time.monotonic() - t0 < 5
        assert b"connection: close" in raw.lower()


def test_a_json_body_sent_in_pieces_within_the_idle_time_is_read():
    settings = Settings(upload_idle_timeout_s=0.5)
    srv = ServerThread(create_app(settings, engine_factory=random_engine))
    body = json.dumps({"text": "the cat sat on the mat"}).encode()
    with srv, socket.create_connection(("127.0.0.1", srv.port)) as s:
        s.sendall(
            b"POST /v1/language/score HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
        )
        for i in range(0, len(body), 8):  # 1.2 s in all, 0.3 s between pieces
            time.sleep(0.3)
            s.sendall(body[i : i + 8])
        s.settimeout(30)
        raw = s.recv(65536)
        assert raw.startswith(b"HTTP/1.1 200"), raw[:300]


def test_serve_applies_the_settings(tmp_path, monkeypatch):
    from v1motion.service import server
    from v1motion.service.cli import build_parser
    from v1motion.service.commands import serve

    seen = []
    monkeypatch.setattr(server.Server, "run", lambda self, sockets: seen.append(self.config))
    monkeypatch.setattr(serve, "announce_when_answering", lambda *a: None)
    monkeypatch.setattr(serve.signal, "signal", lambda *a: None)
    monkeypatch.setenv("V1MOTION_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("V1MOTION_HEADER_TIMEOUT_S", "2.5")
    monkeypatch.setenv("V1MOTION_KEEP_ALIVE_S", "7")
    monkeypatch.setenv("V1MOTION_MAX_CONNECTIONS", "40")
    monkeypatch.setenv("V1MOTION_WRITE_TIMEOUT_S", "12")
    args = build_parser().parse_args(["serve", "--engine", "random", "--port", "0"])
    assert serve.run(args) == 0
    assert seen[-1].http.bounds == ConnectionLimits(2.5, 7.0, 40, 12.0)


def _download(port: int) -> socket.socket:
    """A connection asking for /big with a small receive buffer, nothing read yet."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"GET /big HTTP/1.1\r\nHost: localhost\r\n\r\n")
    return sock


def _read_all(sock: socket.socket, pause: float = 0.0) -> int:
    got = 0
    sock.settimeout(10)
    try:
        while chunk := sock.recv(65536):
            got += len(chunk)
            if pause:
                time.sleep(pause)
    except ConnectionResetError:
        pass
    return got


def test_a_client_that_reads_nothing_of_an_answer_is_cut_after_the_write_timeout():
    """Such a client held its connection, and the answer's task and bytes, for as long as it liked."""
    before = STATS.write_timeouts
    with bounded(write_s=0.8) as srv:
        sock = _download(srv.port)
        time.sleep(2.5)  # reads nothing
        got = _read_all(sock)
        sock.close()
        assert 0 < got < BIG  # what the kernel's buffers held, then the end
        assert STATS.write_timeouts == before + 1
        assert httpx.get(f"{srv.url}/hello").status_code == 200


def test_a_slow_reader_is_not_cut():
    """Pauses shorter than the write timeout, over a download longer than it: every byte arrives."""
    before = STATS.write_timeouts
    with bounded(write_s=0.8) as srv:
        sock = _download(srv.port)
        got = _read_all(sock, pause=0.002)  # 16 MiB in 64 KiB reads: about 1 s of pauses
        sock.close()
    assert got > BIG and STATS.write_timeouts == before


@pytest.mark.parametrize(
    ("soft", "hard", "cap", "said"),
    [
        (300, 300, 172, "at most 172 open connections, not 1000: the process may open 300 files"),
        (200, 400, 272, "at most 272 open connections"),  # soft raised to hard first
        (2048, 2048, 1000, None),
    ],
)
def test_the_cap_leaves_the_process_files_of_its_own(soft, hard, cap, said):
    script = textwrap.dedent(
        f"""
        import resource
        resource.setrlimit(resource.RLIMIT_NOFILE, ({soft}, {hard}))
        from v1motion.service.server import connection_cap
        print(repr(connection_cap(1000)))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=os.environ
    )
    assert out.returncode == 0, out.stderr
    got_cap, got_said = eval(out.stdout)  # noqa: S307 - our own repr of (int, str | None)
    assert got_cap == cap
    assert (got_said is None) if said is None else (said in got_said)


def test_metrics_count_what_the_bounds_did():
    import re

    def scrape(url):
        text = httpx.get(f"{url}/metrics", timeout=5).text
        return {
            m[1]: float(m[2])
            for m in re.finditer(r"^(v1motion_http_connections_\w+) ([\d.e+]+)$", text, re.M)
        }

    limits = ConnectionLimits(0.4, 0.6, 4)
    app = create_app(Settings(), engine_factory=random_engine)
    with ServerThread(app, http=bounded_http_protocol(limits)) as srv:
        before = scrape(srv.url)
        held = []
        for _ in range(3):
            s = socket.create_connection(("127.0.0.1", srv.port))
            s.sendall(b"GET /healthz HTTP/1.1\r\n")
            held.append(s)
        quiet = socket.create_connection(("127.0.0.1", srv.port))  # the 4th: sends nothing
        time.sleep(0.1)
        assert httpx.get(f"{srv.url}/healthz", timeout=5).status_code == 503  # a 5th
        for s in [*held, quiet]:
            read_until_closed(s, within=5)
            s.close()
        after = scrape(srv.url)
    assert (
        after["v1motion_http_connections_refused_total"]
        == before.get("v1motion_http_connections_refused_total", 0) + 1
    )
    grew = {k: after[k] - before.get(k, 0) for k in after if k.endswith("_total")}
    assert grew["v1motion_http_connections_header_timeouts_total"] == 3
    assert grew["v1motion_http_connections_idle_closed_total"] == 1
    assert grew["v1motion_http_connections_write_timeouts_total"] == 0  # exported, nothing cut
    assert after["v1motion_http_connections_open"] == 1  # the scrape's own


@pytest.mark.parametrize(
    "after",
    [b"\r\n", b"{"],  # a stray line end; the rest of a body the route answered without reading
)
def test_bytes_that_begin_no_request_after_an_answer_do_not_keep_the_connection(after):
    """uvicorn stops its keep-alive timer on any bytes and restarts it only with a response: a
    connection that sent one more byte after its answer was never closed, and forty of them held
    the connection cap for as long as their client liked."""
    with (
        bounded(header_s=0.4, idle_s=0.6) as srv,
        socket.create_connection(("127.0.0.1", srv.port)) as s,
    ):
        s.sendall(b"POST /hello HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")  # 405
        s.settimeout(5)
        assert s.recv(65536).startswith(b"HTTP/1.1 405")
        s.sendall(after)
        raw, took = read_until_closed(s, within=5)
        assert raw == b"" and took < 3


def test_headers_larger_than_the_limit_get_431_before_they_fill_the_memory():
    """httptools keeps no limit: a client sent 1 GB of header lines in 2 s, and the server's
    memory grew by as much before the time limit ended it."""
    from v1motion.service.server import MAX_HEADER_BYTES

    with (
        bounded(header_s=30, idle_s=30) as srv,
        socket.create_connection(("127.0.0.1", srv.port)) as s,
    ):
        s.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\n")
        line = b"X-Filler: " + b"a" * 1000 + b"\r\n"
        sent = 0
        try:
            while sent < 20 * MAX_HEADER_BYTES:
                s.sendall(line)
                sent += len(line)
                time.sleep(0.0005 if sent % 65536 < len(line) else 0)
        except (BrokenPipeError, ConnectionResetError):
            pass
        raw, _ = read_until_closed(s, within=5)
        status, body = status_and_body(raw)
        assert status == 431 and f"larger than {MAX_HEADER_BYTES} bytes" in body["detail"]
        assert sent < 10 * MAX_HEADER_BYTES  # refused long before the client was done
    with bounded() as srv:  # headers of an ordinary size pass
        big = {"X-Big": "b" * 8000, "Cookie": "c" * 8000}
        assert httpx.get(f"{srv.url}/hello", headers=big, timeout=5).status_code == 200


@pytest.mark.parametrize("size", [70_000, 200_000])
def test_headers_larger_than_the_limit_in_one_write_get_431(size):
    """The reads were counted from the one after the request began, and a read holds up to
    256 KiB: headers of 70-250 KB sent in one write were answered 200."""
    from v1motion.service.server import MAX_HEADER_BYTES

    with (
        bounded(header_s=30, idle_s=30) as srv,
        server_log() as lines,
        socket.create_connection(("127.0.0.1", srv.port)) as s,
    ):
        s.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * size + b"\r\n\r\n")
        raw, _ = read_until_closed(s, within=5)
        status, body = status_and_body(raw)
        assert status == 431 and f"larger than {MAX_HEADER_BYTES} bytes" in body["detail"]
        # one line naming the client and the limit, not uvicorn's anonymous warning before it
        port = s.getsockname()[1]
        assert lines == [
            ("INFO", f"431: a request from 127.0.0.1:{port} had headers larger than "
             f"{MAX_HEADER_BYTES} bytes")
        ]  # fmt: skip


@contextlib.contextmanager
def server_log():
    """uvicorn's error log at INFO and above while the block runs, as (level, message) pairs."""
    got = []

    class Collect(logging.Handler):
        def emit(self, record):
            got.append((record.levelname, record.getMessage()))

    logger, handler = logging.getLogger("uvicorn.error"), Collect(logging.INFO)
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield got
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_a_body_refused_unread_ends_its_connection():
    """A 413 from Content-Length left the unread body on a kept-alive connection."""
    app = create_app(Settings(max_body_mb=0.001), engine_factory=random_engine)
    with ServerThread(app) as srv, socket.create_connection(("127.0.0.1", srv.port)) as s:
        s.sendall(
            b"POST /v1/language/score HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 999999\r\n\r\n{"
        )
        raw, took = read_until_closed(s, within=5)
        assert raw.startswith(b"HTTP/1.1 413") and b"connection: close" in raw.lower()
        assert took < 3


def test_a_request_the_parser_cannot_read_is_a_json_400():
    """uvicorn answered it in plain text ("Invalid HTTP request received."), where docs/security.md
    promises JSON error bodies."""
    with (
        bounded() as srv,
        server_log() as lines,
        socket.create_connection(("127.0.0.1", srv.port)) as s,
    ):
        s.sendall(b"GET /hello HTTP/1.1\r\nHost x\r\n\r\n")  # a header line without its colon
        raw, _ = read_until_closed(s, within=5)
        status, body = status_and_body(raw)
        assert status == 400 and body["detail"].startswith("the request could not be read as HTTP")
        assert b"content-type: application/json" in raw
        port = s.getsockname()[1]
        assert lines == [
            ("INFO", f"400: a request from 127.0.0.1:{port} could not be read as HTTP/1.1")
        ]
