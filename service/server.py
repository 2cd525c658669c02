"""uvicorn's server, but the application hears of a shutdown before uvicorn waits for connections.

uvicorn's own shutdown closes every websocket with 1012 ("service restart") before the application
is told anything, then waits up to its grace period for open requests. docs/protocol.md promises
1001 ("going away", RFC 6455 §7.4.1: a server going down), so the app closes its sockets first, with
that code, and uvicorn then finds them closed; and the app stops its spike work first, so that a
running fit answers 503 ("shutting down") at once instead of being cut off after the grace period.
"""

from __future__ import annotations

import socket

import uvicorn


class Server(uvicorn.Server):
    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        state = getattr(self.config.app, "state", None)
        before = getattr(state, "before_shutdown", None)
        if before is not None:
            await before(1001, "server shutting down")
        await super().shutdown(sockets)
