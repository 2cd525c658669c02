"""Token authentication (HTTP header; websocket subprotocol or first message) and Origin checks.

A token is required when the service is bound to anything but localhost (``Settings.requires_token``).
Websocket Origins are always checked: a page on another site must not drive a user's local service.

``authorize`` is the one dependency that guards the API: the app factory includes every ``/v1`` router
with it, so a new route cannot forget it. For HTTP it checks the token header; for a websocket it checks
the Origin, accepts the socket and authenticates it (a token may arrive as the first message), and a
refused socket is closed before the route's code runs.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, HTTPException, WebSocket, status
from starlette.requests import HTTPConnection

from service import protocol
from service.settings import Settings

log = logging.getLogger(__name__)

SUBPROTOCOL = "v1motion.v1"
TOKEN_SUBPROTOCOL_PREFIX = "v1motion.token."
TOKEN_HEADER = "x-v1motion-token"
AUTH_TIMEOUT_S = 5.0


def _token_ok(settings: Settings, given: str | None) -> bool:
    if settings.token is None:
        return True
    if not given:
        return False
    return hmac.compare_digest(given.encode(), settings.token.get_secret_value().encode())


def _header_token(headers) -> str | None:
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return headers.get(TOKEN_HEADER)


def require_token(request: HTTPConnection) -> None:
    """FastAPI dependency for HTTP routes: ``Authorization: Bearer <token>`` or ``X-V1Motion-Token``."""
    settings: Settings = request.app.state.settings
    if settings.requires_token and not _token_ok(settings, _header_token(request.headers)):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="missing or wrong token: send 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )


TokenDep = Annotated[None, Depends(require_token)]


class WebSocketRefused(Exception):
    """Raised by ``authorize`` after it closed a websocket it refused; the app swallows it."""


async def authorize(conn: HTTPConnection) -> None:
    """The API's guard: the token for HTTP requests; Origin, accept and token for websockets."""
    if conn.scope["type"] == "websocket":
        ws = (
            conn if isinstance(conn, WebSocket) else WebSocket(conn.scope, conn.receive, conn._send)
        )
        if not await accept_websocket(ws):
            raise WebSocketRefused
        return
    require_token(conn)  # type: ignore[arg-type]


async def ignore_refused(_conn: HTTPConnection, _exc: Exception) -> None:
    """Exception handler for ``WebSocketRefused``: the socket was already closed with a reason."""


AuthDep = Depends(authorize)


def origin_allowed(ws: WebSocket, settings: Settings) -> bool:
    """No Origin (not a browser), the page's own host, or one of ``settings.allowed_origins``."""
    origin = ws.headers.get("origin")
    if origin is None:
        return True
    if origin in settings.allowed_origins:
        return True
    host = ws.headers.get("host", "")
    return bool(host) and urlsplit(origin).netloc.lower() == host.lower()


async def accept_websocket(ws: WebSocket) -> bool:
    """Check Origin and token, accept the socket; on refusal close it and return False.

    The token may come as a subprotocol ``v1motion.token.<token>``, an ``Authorization`` header
    (non-browser clients), or the first message ``{"type": "auth", "token": "..."}``.
    """
    settings: Settings = ws.app.state.settings
    if not origin_allowed(ws, settings):
        log.warning("websocket from origin %s refused", ws.headers.get("origin"))
        await ws.close(code=1008, reason="origin not allowed")
        return False
    offered = ws.scope.get("subprotocols") or []
    chosen = SUBPROTOCOL if SUBPROTOCOL in offered else None
    given = _header_token(ws.headers)
    for p in offered:
        if p.startswith(TOKEN_SUBPROTOCOL_PREFIX):
            given = p[len(TOKEN_SUBPROTOCOL_PREFIX) :]
    await ws.accept(subprotocol=chosen)
    if not settings.requires_token or _token_ok(settings, given):
        return True
    try:
        first = await asyncio.wait_for(ws.receive_text(), AUTH_TIMEOUT_S)
        msg = json.loads(first)
        token = msg.get("token") if isinstance(msg, dict) and msg.get("type") == "auth" else None
    except (TimeoutError, ValueError, KeyError, RuntimeError):
        token = None
    if _token_ok(settings, token if isinstance(token, str) else None):
        return True
    await ws.send_text(protocol.error("unauthorized", "missing or wrong token"))
    await ws.close(code=4401, reason="unauthorized")
    return False
