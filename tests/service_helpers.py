"""Sources and servers for the service tests."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import numpy as np
import uvicorn


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
    """A real uvicorn serving ``app`` on 127.0.0.1 and a free port, in a background thread."""

    def __init__(self, app, **config):
        self.port = free_port()
        cfg = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on", **config
        )
        self.server = uvicorn.Server(cfg)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn-test", daemon=True)

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
def serving(app, **config):
    with ServerThread(app, **config) as srv:
        yield srv
