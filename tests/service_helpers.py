"""Sources and servers for the service tests."""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import uvicorn


def json_request_bodies(spec: dict) -> dict[str, dict]:
    """``"METHOD /path"`` -> the JSON schema of its JSON request body, ``$ref`` resolved, for every
    operation of the OpenAPI ``spec`` that takes one."""
    bodies = {}
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            body = op.get("requestBody", {}).get("content", {}).get("application/json")
            if body is not None:
                schema = body["schema"]
                if "$ref" in schema:
                    schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
                bodies[f"{method.upper()} {path}"] = schema
    return bodies


class PatternSource:
    """Random texture shifted by (vx, vy_up) px per frame, at ``fps``; counts opens in ``stats``."""

    def __init__(self, spec, stop, stats=None, vx=2, vy_up=0, fps=60.0, shape=(96, 128)):
        self.spec = spec
        self.stop = stop
        self.stats = stats if stats is not None else {}
        self.vx, self.vy_up, self.fps, self.shape = vx, vy_up, fps, shape
        rng = np.random.default_rng(0)
        tex = rng.integers(0, 256, (shape[0] // 4 + 1, shape[1] // 4 + 1), dtype=np.uint8)
        self.texture = np.kron(tex, np.ones((4, 4), np.uint8))[: shape[0], : shape[1]]
        self.t = 0

    def open(self):
        self.stats["opens"] = self.stats.get("opens", 0) + 1

    def read(self):
        self.stop.wait(1.0 / self.fps)
        self.t += 1
        frame = np.roll(self.texture, (-self.vy_up * self.t, self.vx * self.t), axis=(0, 1))
        self.stats["reads"] = self.stats.get("reads", 0) + 1
        return frame

    def close(self):
        self.stats["closes"] = self.stats.get("closes", 0) + 1


def pattern_factory(stats=None, **kw):
    return lambda stop: PatternSource(None, stop, stats, **kw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    """A real uvicorn serving ``app`` on 127.0.0.1 and a free port, in a background thread; stopped
    as ``v1motion serve`` is (``__exit__``, as on a signal), with at most 15 s to end."""

    def __init__(self, app, port: int = 0, **config):
        from v1motion.service.commands.serve import bind_socket
        from v1motion.service.server import Server

        self.sock = bind_socket("127.0.0.1", port)  # 0: a free port
        self.port = self.sock.getsockname()[1]
        cfg = uvicorn.Config(app, log_level="warning", lifespan="on", **config)
        self.server = Server(cfg)  # the service's own, as `v1motion serve` runs it
        self.thread = threading.Thread(
            target=self.server.run, args=([self.sock],), name="uvicorn-test", daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(15)


@contextlib.contextmanager
def serving(app, port: int = 0, **config):
    with ServerThread(app, port, **config) as srv:
        yield srv


@contextlib.contextmanager
def server_warnings():
    """The messages uvicorn's error log receives at WARNING and above while the block runs (a list
    filled as they come). Enter it after the server has started: uvicorn's logging set-up removes
    the handlers it finds on its loggers."""
    import logging

    messages = []

    class Collect(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    handler = Collect(logging.WARNING)
    logger = logging.getLogger("uvicorn.error")
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)


class RawWebSocket:
    """A bare websocket client over a socket with a small receive buffer, reading at a set pace.

    It simulates a viewer on a slow network link: the kernel's flow control, not a library's queue,
    limits what the server can hand it.
    """

    def __init__(self, port: int, path: str, rcvbuf: int = 16384):
        import base64
        import os

        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(1)
        assert b" 101 " in head.split(b"\r\n")[0], head
        self.buf = b""
        self.messages: list[tuple[int, bytes]] = []  # (opcode, payload)

    def read_some(self, nbytes: int) -> None:
        """Read at most ``nbytes`` from the socket (blocking up to 1 s) and parse whole frames."""
        self.sock.settimeout(1.0)
        try:
            chunk = self.sock.recv(nbytes)
        except TimeoutError:
            return
        if not chunk:
            raise ConnectionError("server closed the connection")
        self.buf += chunk
        while len(self.buf) >= 2:
            opcode, n, off = self.buf[0] & 0x0F, self.buf[1] & 0x7F, 2
            if n == 126:
                if len(self.buf) < 4:
                    return
                n, off = int.from_bytes(self.buf[2:4], "big"), 4
            elif n == 127:
                if len(self.buf) < 10:
                    return
                n, off = int.from_bytes(self.buf[2:10], "big"), 10
            if len(self.buf) < off + n:
                return
            self.messages.append((opcode, self.buf[off : off + n]))
            self.buf = self.buf[off + n :]
            if opcode == 8:
                raise ConnectionError("server sent close")

    def close(self) -> None:
        self.sock.close()


@functools.lru_cache(maxsize=1)
def _random_engine():
    from v1motion.models.motion.engine import MotionEngine

    engine = MotionEngine.random(seed=0)
    engine.warmup()
    return engine


def random_engine():
    """The real engine with small random weights (built and compiled once per test session)."""
    return _random_engine()


@functools.lru_cache(maxsize=1)
def _default_engine():
    from v1motion.models.motion.engine import MotionEngine

    engine = MotionEngine.load_default()
    engine.warmup()
    return engine


def default_engine():
    """The shipped trained engine (loaded and compiled once per test session)."""
    return _default_engine()


def serve_refused(*args: str, **env: str):
    """``v1motion serve --port 1 *args`` with ``env`` added, for a configuration it refuses at once
    (status 2): the finished process, its output as text."""
    return subprocess.run(
        [sys.executable, "-m", "v1motion.service.cli", "serve", "--port", "1", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, **env),
    )


def serve_command(port: int, engine: str = "random") -> list[str]:
    """The command line of ``v1motion serve`` on ``port`` with this interpreter."""
    return [sys.executable, "-m", "v1motion.service.cli", "serve", "--engine", engine,
            "--port", str(port)]  # fmt: skip
