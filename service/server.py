"""uvicorn's server, but the application hears of a shutdown before uvicorn waits for connections.

uvicorn's own shutdown closes every websocket with 1012 ("service restart") before the application
is told anything. docs/protocol.md promises 1001 ("going away", RFC 6455 §7.4.1: a server going down),
so the app closes its sockets first, with that code, and uvicorn then finds them closed.

uvicorn then waits up to its grace period for open requests and cancels those still running, without
an answer. Spike work (fits, samples, evaluations) still running when most of the grace period has
gone is stopped by the app instead, so that its requests answer 503 ("shutting down") first; work that
ends within it is answered as usual.
"""

from __future__ import annotations

import asyncio
import socket

import uvicorn

STOP_WORK_AT = 0.8  # of the grace period: what runs longer is stopped, and answered, before its end


class Server(uvicorn.Server):
    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        state = getattr(self.config.app, "state", None)
        close = getattr(state, "close_websockets", None)
        if close is not None:
            await close(1001, "server shutting down")
        stop = getattr(state, "stop_work", None)
        grace = self.config.timeout_graceful_shutdown
        timer = None
        if stop is not None and grace is not None:
            timer = asyncio.get_running_loop().call_later(STOP_WORK_AT * grace, stop)
        try:
            await super().shutdown(sockets)
        finally:
            if timer is not None:
                timer.cancel()
