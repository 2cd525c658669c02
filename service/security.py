"""Token authentication (HTTP header; websocket subprotocol or first message) and Origin checks.

A token is required when the service is bound to anything but localhost (``Settings.requires_token``).
Websocket Origins are always checked: a page on another site must not drive a user's local service.

``authorize`` is the one dependency that guards the API: the app factory includes every ``/v1`` router
with it, so a new route cannot forget it. For HTTP it checks the token header; for a websocket it checks
the Origin, accepts the socket and authenticates it (a token may arrive as the first message), and a
refused socket is closed before the route's code runs. It also refuses (415) a body whose Content-Type
is not one the route reads (``application/json`` for JSON routes): a page on another site can send
``text/plain`` or form bodies without asking the browser first, never ``application/json``.

:class:`HostOriginGuard` is middleware for the whole app. Without a token (a localhost service) any page
the user opens could otherwise use it: it refuses a ``Host`` that is not one of this service's names
(DNS rebinding points an attacker's name at 127.0.0.1; the browser then sends that name as ``Host``), and
a state-changing request (POST, PUT, PATCH, DELETE) whose ``Origin`` is another site's.

:class:`SecurityHeaders` is middleware for the whole app: every HTTP answer says how a browser may use it
(a Content-Security-Policy that lets pages load scripts, styles and connections from this service only,
no framing, no MIME sniffing, no referrer), unless the route set its own.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, HTTPException, Security, WebSocket, params, status
from fastapi.security import HTTPBearer
from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from v1motion.service import protocol
from v1motion.service.settings import Settings

log = logging.getLogger(__name__)

SUBPROTOCOL = "v1motion.v1"
TOKEN_SUBPROTOCOL_PREFIX = "v1motion.token."
TOKEN_HEADER = "x-v1motion-token"
AUTH_TIMEOUT_S = 1.0  # a client without a token in the handshake must send it as its first message
UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


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


class _BearerScheme(HTTPBearer):
    """Declares the token in the schema (``components.securitySchemes``, and ``security`` on each
    guarded operation), so /docs offers "Authorize"; the check itself is :func:`require_token`'s.
    Takes any connection: FastAPI gives a ``Request`` to HTTP routes only, and websockets share
    :func:`authorize`."""

    async def __call__(self, conn: HTTPConnection) -> None:  # type: ignore[override]
        return None


BEARER = _BearerScheme(
    scheme_name="token",
    description=(
        "The server's token (V1MOTION_TOKEN), when it has one (a server bound beyond localhost "
        "must): `Authorization: Bearer <token>`, or the header `X-V1Motion-Token: <token>`."
    ),
    auto_error=False,
)
TokenSchemeDep = Annotated[None, Security(BEARER)]
# The answer every guarded operation documents beside its own.
TOKEN_REFUSED = {401: {"description": "no token, or a wrong one, while the server has a token"}}


TOKEN_MISSING = "missing or wrong token: send 'Authorization: Bearer <token>'"


def app_path(scope: Scope) -> str:
    """A request's path within the app: without the root path a proxy's prefix adds."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def guarded_path(scope: Scope) -> bool:
    """Whether a request goes to the API's guarded routes (``/v1/``)."""
    return app_path(scope).startswith("/v1/")


def require_token(request: HTTPConnection, _scheme: TokenSchemeDep = None) -> None:
    """FastAPI dependency for HTTP routes: ``Authorization: Bearer <token>`` or ``X-V1Motion-Token``."""
    settings: Settings = request.app.state.settings
    if settings.requires_token and not _token_ok(settings, _header_token(request.headers)):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail=TOKEN_MISSING,
            headers={"WWW-Authenticate": "Bearer"},
        )


class TokenGuard:
    """ASGI middleware: every HTTP request to the API (``/v1/``) without the token is refused, before
    any route, router or body. Requests with a body are refused before it is read: FastAPI reads and
    parses a JSON body before any dependency runs, the token check (:func:`authorize`) included: 60
    tokenless bodies of 15 MB at once took the server from 442 to 856 MB, and a tokenless client
    could hold a connection by sending half a body. A router included without the routers' guard (a
    contributor's first new route answered 200 without a token) is guarded here all the same. The
    routers' guard stays the check of websockets (whose token may come as their first message) and
    says 401 in the schema. CORS preflights (``OPTIONS``) carry no token and pass."""

    def __init__(self, app: ASGIApp, settings: Settings):
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and self.settings.requires_token
            and scope["method"] != "OPTIONS"
            and guarded_path(scope)
            and not _token_ok(self.settings, _header_token(Headers(scope=scope)))
        ):
            close = {"Connection": "close"} if scope["method"] in ("POST", "PUT", "PATCH") else {}
            refused = JSONResponse(
                {"detail": TOKEN_MISSING},
                status.HTTP_401_UNAUTHORIZED,
                headers={"WWW-Authenticate": "Bearer", **close},  # a body left unread: closed
            )
            await refused(scope, receive, send)
            return
        await self.app(scope, receive, send)


TokenDep = Annotated[None, Depends(require_token)]


class WebSocketRefused(Exception):
    """Raised by ``authorize`` after it closed a websocket it refused; the app swallows it."""


async def authorize(conn: HTTPConnection, _scheme: TokenSchemeDep = None) -> None:
    """The API's guard: the token for HTTP requests; Origin, accept and token for websockets."""
    if conn.scope["type"] == "websocket":
        ws = (
            conn if isinstance(conn, WebSocket) else WebSocket(conn.scope, conn.receive, conn._send)
        )
        if not await accept_websocket(ws):
            raise WebSocketRefused
        services = getattr(ws.app.state, "services", None)
        if (
            services is not None
        ):  # closed with 1001 when the service stops (v1motion.service.server)
            services.websockets.add(ws)
        return
    require_token(conn)  # type: ignore[arg-type]
    require_media_type(conn)


def body_media_types(route) -> tuple[str, ...]:
    """The media types a route reads its body as (empty: it takes no body)."""
    cached = getattr(route, "_v1motion_media_types", None)
    if cached is not None:
        return cached
    extra = (getattr(route, "openapi_extra", None) or {}).get("requestBody", {}).get("content")
    if extra:
        types = tuple(extra)
    elif getattr(route, "body_field", None) is not None:
        forms = any(isinstance(f.field_info, params.Form) for f in route.dependant.body_params)
        types = ("multipart/form-data", "application/x-www-form-urlencoded") if forms else ()
        types = types or ("application/json",)
    else:
        types = ()
    route._v1motion_media_types = types
    return types


def require_media_type(request: HTTPConnection) -> None:
    """415 when a request sends a body of a type its route does not read."""
    if request.scope.get("method") not in ("POST", "PUT", "PATCH"):
        return
    accepted = body_media_types(request.scope.get("route"))
    headers = request.headers
    if not accepted or (
        headers.get("content-length", "0") == "0" and "transfer-encoding" not in headers
    ):
        return
    media = headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in accepted:
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            detail=f"send the body as {' or '.join(accepted)}, not {media or 'no Content-Type'}",
        )


AUTH_MESSAGE_MAX = 4096
"""Characters: a first message longer than this is no auth message, and is not parsed (200
tokenless sockets each sending 1 MiB of JSON held the event loop for up to 1.5 s)."""


def _auth_message_token(text: str | None) -> str | None:
    """The token of a first message ``{"type": "auth", "token": "..."}``; None for anything else
    (a binary message, other JSON, not JSON, longer than ``AUTH_MESSAGE_MAX``)."""
    if text is not None and len(text) > AUTH_MESSAGE_MAX:
        return None
    try:
        msg = json.loads(text) if text is not None else None
    except (ValueError, RecursionError):  # RecursionError: JSON nested thousands deep
        return None
    if isinstance(msg, dict) and msg.get("type") == "auth" and isinstance(msg.get("token"), str):
        return msg["token"]
    return None


async def ignore_refused(_conn: HTTPConnection, _exc: Exception) -> None:
    """Exception handler for ``WebSocketRefused``: the socket was already closed with a reason."""


async def client_left(conn: HTTPConnection, exc: Exception) -> None:
    """Exception handler for a websocket whose client left while its route still wrote to it (an
    unknown stream's error, a hello): nobody to answer and nothing wrong with the server, which
    logged it as an ERROR with a traceback. Raised again for HTTP requests."""
    if conn.scope["type"] != "websocket":
        raise exc
    log.debug("websocket %s: the client left before the route ended", app_path(conn.scope))


AuthDep = Depends(authorize)


def foreign_origin(origin: str) -> str:
    """Why a request or a websocket from the page of another site is refused."""
    return (
        f"cross-site request refused: Origin {origin!r} is not this service; "
        "add it to V1MOTION_ALLOWED_ORIGINS if pages there may use it"
    )


def refusal_hint(origin: str | None, headers) -> str:
    """Why an Origin was not this service's, for the operator: behind a proxy most often a ``Host``
    header without the page's port (nginx's ``$host``)."""
    host = headers.get("host", "")
    page = urlsplit(origin or "").netloc.lower()
    if host and _split_host(host) == _split_host(page):
        hint = f"the Host header {host!r} is the page's {page!r} but for the port"
    else:
        hint = f"the Host header {host!r} is not the page's {page!r}"
    return (
        f"{hint}; a proxy must pass the Host the browser sent, port included (nginx: "
        f"proxy_set_header Host $http_host), or add {origin} to V1MOTION_ALLOWED_ORIGINS"
    )


def answers_handshakes(scope: Scope) -> bool:
    """Whether the server can refuse a websocket's handshake with a response of the app's own (the
    ASGI denial-response extension: uvicorn, the test client); else only by closing it (1008)."""
    return "websocket.http.response" in scope.get("extensions", {})


def origin_allowed(ws: WebSocket, settings: Settings) -> bool:
    """No Origin (not a browser), the page's own host, or one of ``settings.allowed_origins``."""
    origin = ws.headers.get("origin")
    if origin is None:
        return True
    # Comparing with Host is safe: without a token, HostOriginGuard only lets this service's names in.
    return same_site(origin, ws.headers.get("host", ""), settings)


async def accept_websocket(ws: WebSocket) -> bool:
    """Check Origin and token, accept the socket; on refusal close it and return False.

    The token may come as a subprotocol ``v1motion.token.<token>``, an ``Authorization`` header
    (non-browser clients), or the first message ``{"type": "auth", "token": "..."}``.
    """
    settings: Settings = ws.app.state.settings
    if not origin_allowed(ws, settings):
        origin = ws.headers.get("origin")
        log.warning(
            "websocket from origin %s refused: %s", origin, refusal_hint(origin, ws.headers)
        )
        if answers_handshakes(ws.scope):  # a 403 with the reason and the headers, as HTTP gets
            await ws.send_denial_response(
                JSONResponse({"detail": foreign_origin(origin)}, status.HTTP_403_FORBIDDEN)
            )
        else:
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
    token = None
    if given is None:  # no token in the handshake: it may come as the first message, soon
        try:
            first = await asyncio.wait_for(ws.receive(), AUTH_TIMEOUT_S)
        except TimeoutError:
            first = {}
        if first.get("type") == "websocket.disconnect":
            return False  # the client left before it sent a token: nobody to answer
        token = _auth_message_token(first.get("text"))
    if _token_ok(settings, token):
        return True
    log.info("websocket %s refused (4401): missing or wrong token", app_path(ws.scope))
    await ws.send_text(protocol.error("unauthorized", "missing or wrong token"))
    await ws.close(code=4401, reason="unauthorized")
    return False


# ------------------------------------------------------------------------- Host and Origin guard


def _split_host(value: str) -> str:
    """``host[:port]`` or ``[v6]:port`` to the lower-case host name."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def allowed_hosts(settings: Settings) -> set[str]:
    """Names the service answers to: localhost names, the bound host and ``settings.allowed_hosts``."""
    names = {"localhost", "127.0.0.1", "::1", settings.host.lower()}
    return names | {_split_host(h) for h in settings.allowed_hosts}


def host_guarded(settings: Settings) -> bool:
    """The Host and Origin checks apply without a token, or when allowed hosts are configured."""
    return not settings.requires_token or bool(settings.allowed_hosts)


def same_site(origin: str, host: str, settings: Settings) -> bool:
    """An ``Origin`` of the page's own host, or one of ``settings.allowed_origins``."""
    if origin in settings.allowed_origins:
        return True
    return bool(host) and urlsplit(origin).netloc.lower() == host.lower()


class HostOriginGuard:
    """ASGI middleware: refuse foreign ``Host`` names and cross-site state-changing requests.

    Active when no token is required (see :func:`host_guarded`): a token is what protects a service
    bound to the network, and a page on another site can neither read nor send it.
    """

    def __init__(self, app: ASGIApp, settings: Settings):
        self.app = app
        self.settings = settings
        self.hosts = allowed_hosts(settings)
        self.active = host_guarded(settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.active or scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        conn = HTTPConnection(scope)
        host = conn.headers.get("host", "")
        problem = None
        if host and _split_host(host) not in self.hosts:
            problem = (
                f"Host {host!r} is not a name of this service; add it to V1MOTION_ALLOWED_HOSTS "
                "if it is one"
            )
        elif scope["type"] == "http" and scope["method"] in UNSAFE_METHODS:
            origin = conn.headers.get("origin")
            fetch_site = conn.headers.get("sec-fetch-site", "")
            if origin is not None and not same_site(origin, host, self.settings):
                problem = foreign_origin(origin)
            elif origin is None and fetch_site == "cross-site":
                problem = "cross-site request refused (Sec-Fetch-Site: cross-site)"
        if problem is None:
            await self.app(scope, receive, send)
            return
        log.warning("refused %s %s: %s", scope.get("method", "websocket"), scope["path"], problem)
        if scope["type"] == "websocket" and not answers_handshakes(scope):
            await send(
                {"type": "websocket.close", "code": 1008, "reason": "host or origin not allowed"}
            )
            return
        # HTTP, and the handshake of a websocket: the same 403 with the reason, and the headers
        await JSONResponse({"detail": problem}, status.HTTP_403_FORBIDDEN)(scope, receive, send)


# ----------------------------------------------------------------------------- response headers

# The dashboard's pages: their own scripts and styles only; images drawn from data and blob URLs (the
# favicon, previews); the camera's stream; requests and websockets to this service only ('self' covers
# ws: and wss: on the same host). No plugins, a <base> of this service only (the page's under a root
# path, ``proxy.index_with_base``), no form posts, never inside another site's frame.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "media-src 'self' blob: mediastream:; connect-src 'self'; worker-src 'none'; "
    "object-src 'none'; base-uri 'self'; form-action 'none'; frame-ancestors 'none'"
)
# /docs and /redoc (their pages in web/, their libraries in web/vendor/): the same, except that
# Swagger UI and ReDoc write inline styles and ReDoc runs its search in a worker made from a blob.
API_DOCS_POLICY = CONTENT_SECURITY_POLICY.replace(
    "style-src 'self'", "style-src 'self' 'unsafe-inline'"
).replace("worker-src 'none'", "worker-src blob:")
SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}


class SecurityHeaders:
    """ASGI middleware: :data:`SECURITY_HEADERS` on every HTTP answer that does not set its own
    (refusals of the outer middleware included: it is the outermost)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message) -> None:
            # a websocket's handshake refused with a response of the app's own is an HTTP answer
            if message["type"] in ("http.response.start", "websocket.http.response.start"):
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)


# ----------------------------------------------------------------------------- request body size


class _TrackedSend:
    """``send``, noting whether the response has started (a refusal can be sent only before)."""

    def __init__(self, send: Send):
        self.send, self.started = send, False

    async def __call__(self, message) -> None:
        self.started = self.started or message["type"] == "http.response.start"
        await self.send(message)


class _BodyTooLarge(BaseException):
    """Raised from ``receive`` past the limit. A BaseException: FastAPI turns any Exception met
    while reading a body into a 400, which would hide the 413."""


# Routes that count their own bodies while streaming them, each against its own setting.
STREAMED_BODIES = {"/v1/videos", "/v1/spikes/models"}


class _BodyTimedOut(BaseException):
    """Raised from ``receive`` when a body stops arriving (a BaseException, as :class:`_BodyTooLarge`)."""


class BodyLimit:
    """ASGI middleware: a request body over ``settings.max_body_mb`` gets 413, refused from its
    Content-Length before it is read, or as soon as the bytes received pass the limit (chunked
    bodies); one of which nothing arrives for ``upload_idle_timeout_s``, or that is still arriving
    after ``upload_timeout_s``, gets 408 (uploads' own limits, which a client sending a JSON body
    slowly met nowhere). Routes in :data:`STREAMED_BODIES` apply their own limits."""

    def __init__(self, app: ASGIApp, settings: Settings):
        self.app = app
        self.limit = int(settings.max_body_mb * 1024 * 1024)
        self.idle_s = settings.upload_idle_timeout_s
        self.total_s = settings.upload_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, root = scope.get("path", ""), scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        if scope["type"] != "http" or path.rstrip("/") in STREAMED_BODIES:
            await self.app(scope, receive, send)
            return
        detail = f"the request body is larger than the limit of {self.limit} bytes"
        declared = HTTPConnection(scope).headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.limit:  # its body is not read: close
            await JSONResponse({"detail": detail}, 413, {"Connection": "close"})(
                scope, receive, send
            )
            return
        received, sent, pending = 0, _TrackedSend(send), True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.total_s

        async def limited_receive():
            nonlocal received, pending
            if not pending:  # the body is in; what comes next (a disconnect) may take any time
                return await receive()
            wait = min(self.idle_s, deadline - loop.time())
            try:
                message = await asyncio.wait_for(receive(), max(wait, 0.0))
            except TimeoutError:
                raise _BodyTimedOut from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _BodyTooLarge
                pending = message.get("more_body", False)
            else:
                pending = False
            return message

        try:
            await self.app(scope, limited_receive, sent)
        except _BodyTooLarge:
            if sent.started:
                raise
            await JSONResponse({"detail": detail}, 413, {"Connection": "close"})(
                scope, receive, send
            )
        except _BodyTimedOut:
            if sent.started:
                raise
            late = (
                f"the request body did not arrive in time (nothing for {self.idle_s:g} s, or still "
                f"arriving after {self.total_s:g} s)"
            )
            await JSONResponse({"detail": late}, 408, {"Connection": "close"})(scope, receive, send)


class StoppedRequests:
    """ASGI middleware: a request still running when the server's graceful shutdown ends (uvicorn
    cancels it after ``V1MOTION_SHUTDOWN_TIMEOUT_S``) is answered 503 "the server is shutting down"
    in JSON, as a refusal of this service is. Cancelled through the app, it was uvicorn's plain-text
    500 "Internal Server Error" and an ERROR with a 31-frame traceback at every rolling restart
    during an upload. Its handler's own clean-up (an upload's file) has run on the way out."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = _TrackedSend(send)
        try:
            await self.app(scope, receive, sent)
        except asyncio.CancelledError:
            if sent.started:  # nothing more can be said on this response
                raise
            log.info("%s %s: stopped by the server's shutdown", scope.get("method"), scope["path"])
            body = {"detail": "the server is shutting down; retry"}
            await JSONResponse(body, 503, {"Retry-After": "5"})(scope, receive, send)
