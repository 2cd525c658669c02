"""uvicorn's server, but open websockets hear "going away" (1001) when the service stops.

uvicorn's own shutdown closes every websocket with 1012 ("service restart") before the application
is told anything. docs/protocol.md promises 1001 ("going away", RFC 6455 §7.4.1: a server going down),
so the app closes its sockets first, with that code, and uvicorn then finds them closed.
"""

from __future__ import annotations

import socket

import uvicorn


class Server(uvicorn.Server):
    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        state = getattr(self.config.app, "state", None)
        close = getattr(state, "close_websockets", None)
        if close is not None:
            await close(1001, "server shutting down")
        await super().shutdown(sockets)
