"""uvicorn's server, but the application hears of a shutdown before uvicorn waits for connections.

uvicorn's own shutdown closes every websocket with 1012 ("service restart") before the application
is told anything. docs/protocol.md promises 1001 ("going away", RFC 6455 §7.4.1: a server going down),
so the app closes its sockets first, with that code, and uvicorn then finds them closed.

uvicorn then waits up to its grace period for open requests and cancels those still running, without
an answer. Spike work (fits, samples, evaluations) still running when most of the grace period has
gone is stopped by the app instead, so that its requests answer 503 ("shutting down") first; work that
ends within it is answered as usual.

:func:`bounded_http_protocol` bounds what uvicorn does not: how long a request's headers may take
to arrive and how many connections may be open.
"""

from __future__ import annotations

import asyncio
import json
import socket
from dataclasses import dataclass

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from v1motion.service.security import SECURITY_HEADERS

# The app's browser policy on the answers written below it too (400, 408, 503): a client sees the same
# headers on every answer of this service.
SECURITY_LINES = b"".join(f"{k}: {v}\r\n".encode() for k, v in SECURITY_HEADERS.items())

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


# --- Bounds on connections, before the application sees a request --------------------------------
#
# uvicorn gives a request's headers no time limit and open connections no bound: a client that
# opened thousands of connections and sent half a request held them all, and with them the process's
# open files, until /healthz itself failed. The protocol below bounds both, for every route at once.

_REFUSAL_LOG_EVERY_S = 60.0
# A request line and headers larger than this get 431 (httptools keeps no such limit: one client
# sent 1 GB of header lines in 2 s and the server's memory grew by as much before the time limit).
MAX_HEADER_BYTES = 64 * 1024
LINGER_BYTES, LINGER_S = 256 * 1024, 2.0
"""After a 431, at most this much more of the request is read and dropped, for at most this long."""


class ConnectionStats:
    """What the bounds did in this process (one server a process), for ``/metrics``: connections
    open now, refused at the cap, and closed for headers that stopped (408), for sending nothing, or
    for reading nothing of an answer."""

    def __init__(self) -> None:
        self.open: set | None = None  # uvicorn's set of open connections, once one was made
        self.refused = self.header_timeouts = self.idle_closed = self.write_timeouts = 0

    def open_now(self) -> int:
        return 0 if self.open is None else len(self.open)


STATS = ConnectionStats()


@dataclass(frozen=True)
class ConnectionLimits:
    """``header_timeout_s``: from a request's first byte to the end of its headers;
    ``idle_timeout_s``: a new connection's wait for its first byte (as an idle kept-alive one's);
    ``max_connections``: open connections, websockets included; more are answered 503 and closed;
    ``write_timeout_s``: how long an answer may wait for a client that reads none of it (the
    connection is then cut)."""

    header_timeout_s: float
    idle_timeout_s: float
    max_connections: int
    write_timeout_s: float = 60.0


class _ParserLog:
    """uvicorn's logger for a connection, without its one line for a request the parser could not
    read: "Invalid HTTP request received." at WARNING named neither the client nor why, and came
    before every 431 as well. The protocol's own line says which (400 or 431) and from whom, at
    INFO, as the service logs other clients' mistakes."""

    UNREAD = "Invalid HTTP request received."

    def __init__(self, logger) -> None:
        self._logger = logger

    def warning(self, msg, *args, **kwargs) -> None:
        if msg != self.UNREAD:
            self._logger.warning(msg, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._logger, name)


def bounded_http_protocol(limits: ConnectionLimits) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with :class:`ConnectionLimits` applied (``uvicorn.Config(http=)``)."""
    refusals = {"logged_at": -_REFUSAL_LOG_EVERY_S, "since": 0}

    class BoundedHttpProtocol(HttpToolsProtocol):
        bounds = limits
        _header_timer: asyncio.TimerHandle | None = None
        _began = False  # a request's first byte arrived, its headers have not all
        _header_bytes = 0  # bytes received since then

        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.logger = _ParserLog(self.logger)

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            STATS.open = self.connections
            if len(self.connections) > limits.max_connections:
                self._refuse()
                return
            self._arm(limits.idle_timeout_s)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            self._write_resumed()
            super().connection_lost(exc)

        # A client that reads nothing of an answer (a download, a large JSON) held its connection
        # and the answer's task for ever: uvicorn's writes wait while the socket's buffers are full,
        # with no time limit. No byte of the answer leaving for write_timeout_s cuts the connection
        # (progress, not the pause, is timed: one large write stays paused until nearly all of it
        # is sent, however fast the client reads).
        _write_timer: asyncio.TimerHandle | None = None
        _write_left = 0  # the bytes waiting to be sent at the last look

        def pause_writing(self) -> None:
            super().pause_writing()
            if self._write_timer is None:
                self._arm_write()

        def _arm_write(self) -> None:
            self._write_left = self.transport.get_write_buffer_size()
            self._write_timer = self.loop.call_later(limits.write_timeout_s, self._write_stalled)

        def resume_writing(self) -> None:
            super().resume_writing()
            self._write_resumed()

        def _write_resumed(self) -> None:
            if self._write_timer is not None:
                self._write_timer.cancel()
                self._write_timer = None

        def _write_stalled(self) -> None:
            self._write_timer = None
            if self.transport.is_closing():
                return
            if self.transport.get_write_buffer_size() < self._write_left:
                self._arm_write()  # some left meanwhile: a slow reader, not a stalled one
                return
            STATS.write_timeouts += 1
            self.transport.abort()  # nothing more can be written: its buffers are dropped too

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._began, self._header_bytes = True, -1  # -1: began within the bytes being read
            self._parsed_bytes, self._too_large = 0, False
            self._arm(limits.header_timeout_s)

        # The reads count from the one after the request began; within that one (up to 256 KiB),
        # the parser's own pieces do: headers of 70-250 KB sent in one write were answered 200.
        _parsed_bytes = 0
        _too_large = False

        def on_url(self, url: bytes) -> None:
            self._count_parsed(len(url))
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count_parsed(len(name) + len(value) + 4)  # ": " and the line's end
            super().on_header(name, value)

        def _count_parsed(self, n: int) -> None:
            self._parsed_bytes += n
            if self._parsed_bytes > MAX_HEADER_BYTES:
                self._too_large = True
                raise ValueError("headers too large")  # the parser stops: send_400_response

        def on_headers_complete(self) -> None:
            self._began = False
            self._disarm()
            super().on_headers_complete()

        # bytes a 431's client may still send, read and dropped (``_answer_and_close``)
        _draining = 0

        def data_received(self, data: bytes) -> None:
            if self._draining:
                self._draining -= min(len(data), self._draining)
                if not self._draining:
                    self.transport.close()
                return
            super().data_received(data)
            if self.transport.is_closing() or self.transport.get_protocol() is not self:
                return  # answered and closing, or now a websocket's
            if self._began:  # still in a request's headers after these bytes
                # counted from the next read on (a read holds at most 256 KiB): what came before
                # the request's first byte in this one may be another request's body
                self._header_bytes = 0 if self._header_bytes < 0 else self._header_bytes + len(data)
                if self._header_bytes > MAX_HEADER_BYTES:
                    self._refuse_large_headers()
                return
            # Bytes that began no request once the last response was sent (a stray CRLF, the rest
            # of a body the app answered without reading): uvicorn stopped its keep-alive timer
            # on them and restarts it only with a response, so nothing closed the connection.
            idle = self.cycle is None or self.cycle.response_complete
            if idle and self._header_timer is None and self.timeout_keep_alive_task is None:
                self._arm(limits.idle_timeout_s)

        def send_400_response(self, msg: str) -> None:
            """A request the parser cannot read: 400 in JSON, as every error of this service (uvicorn
            answers it in plain text); 431 where its headers outgrew the limit."""
            if self._too_large:
                self._refuse_large_headers()
                return
            self._disarm()
            self.logger.info("400: a request from %s could not be read as HTTP/1.1", self._peer())
            self._answer_and_close(
                b"400 Bad Request", f"the request could not be read as HTTP/1.1: {msg}"
            )

        def _peer(self) -> str:
            client = getattr(self, "client", None)
            return f"{client[0]}:{client[1]}" if client else "a client"

        def _refuse_large_headers(self) -> None:
            self.logger.info(
                "431: a request from %s had headers larger than %d bytes", self._peer(),
                MAX_HEADER_BYTES,
            )  # fmt: skip
            self._disarm()
            self._answer_and_close(
                b"431 Request Header Fields Too Large",
                f"the request's headers are larger than {MAX_HEADER_BYTES} bytes",
                linger=True,
            )

        def _answer_and_close(
            self, status: bytes, detail: str, extra: bytes = b"", linger: bool = False
        ) -> None:
            """A JSON error written below the app (no request reached it), then the end. With
            ``linger``, the rest of what the client is sending is read and dropped for a moment
            (up to ``LINGER_BYTES``, ``LINGER_S``) before the connection closes: closed with
            unread bytes, the kernel resets it, and a client that sent 200 KB of headers in one
            write lost the answer saying why."""
            body = json.dumps({"detail": detail}).encode()
            head = b"HTTP/1.1 %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            self.transport.write(
                head % (status, len(body))
                + SECURITY_LINES
                + extra
                + b"connection: close\r\n\r\n"
                + body
            )
            if not linger or not self.transport.can_write_eof():
                self.transport.close()
                return
            self.transport.write_eof()
            self._draining = LINGER_BYTES
            self.loop.call_later(LINGER_S, self.transport.close)

        def _arm(self, seconds: float) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(seconds, self._timed_out)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _timed_out(self) -> None:
            self._header_timer = None
            if self.transport.is_closing():
                return
            if self.cycle is not None and not self.cycle.response_complete:
                self._arm(limits.header_timeout_s)  # a pipelined request behind one still answered
                return
            if self._began:
                STATS.header_timeouts += 1
                self._answer_and_close(
                    b"408 Request Timeout",
                    f"the request's headers did not arrive within {limits.header_timeout_s:g} s",
                )
            else:
                STATS.idle_closed += 1
                self.transport.close()

        def _refuse(self) -> None:
            self._answer_and_close(
                b"503 Service Unavailable",
                f"too many open connections (at most {limits.max_connections}); retry",
                b"retry-after: 1\r\n",
            )
            STATS.refused += 1
            refusals["since"] += 1
            now = self.loop.time()
            if now - refusals["logged_at"] >= _REFUSAL_LOG_EVERY_S:  # said at most once a minute
                self.logger.warning(
                    "refused %d connection(s) since the last such line: %d open, at most %d "
                    "(V1MOTION_MAX_CONNECTIONS)",
                    refusals["since"],
                    len(self.connections) - 1,
                    limits.max_connections,
                )
                refusals["logged_at"], refusals["since"] = now, 0

    return BoundedHttpProtocol


def connection_cap(max_connections: int, reserve: int = 128) -> tuple[int, str | None]:
    """At most ``max_connections``, and ``reserve`` open files fewer than the process may open: the
    soft limit is raised to the hard one first (at most 65,536). Returns the cap and, when the limit
    lowered it, why."""
    try:
        import resource
    except ImportError:  # not on POSIX
        return max_connections, None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY or soft - reserve >= max_connections:
        return max_connections, None
    cap = max(1, soft - reserve)
    return cap, (
        f"at most {cap} open connections, not {max_connections}: the process may open {soft} files "
        f"(ulimit -n) and keeps {reserve} for its own"
    )
