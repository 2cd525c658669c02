"""Why a network stream does not open, in words an operator can act on.

OpenCV's FFmpeg backend says only that a URL did not open; FFmpeg's own messages (connection
refused, 404) went to the process's stderr, beside the log and out of the dashboard's reach, and
are silenced (``v1motion.service``). When a ``url:`` source does not open, its host is looked up,
connected to and, for HTTP(S) and RTSP, asked for the stream, with the open timeout; the first step
that fails is the reason the stream's error and the dashboard's banner give.

Only the configured URL is contacted (clients never choose it), and what is said names its host and
port, never its path or credentials.
"""

from __future__ import annotations

import base64
import socket
import ssl
import urllib.error
import urllib.request
from urllib.parse import unquote, urlsplit

DEFAULT_PORTS = {"http": 80, "https": 443, "rtsp": 554, "rtsps": 322, "rtmp": 1935, "rtmps": 443}


def _printable(text: object, limit: int = 60) -> str:
    """A remote server's words, as plain printable ASCII of at most ``limit`` characters."""
    clean = "".join(c if " " <= c <= "~" else " " for c in str(text))
    return " ".join(clean.split())[:limit]


def diagnose_url(url: str, timeout_s: float) -> str:
    """The first of name lookup, connection and request that fails for ``url``, as a phrase
    (``"connection refused by cam.local:554"``); when all succeed, that the server answered and
    no video could be read from it. Each step waits at most ``timeout_s``."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "the URL cannot be parsed"
    scheme, host = parts.scheme.lower(), parts.hostname
    if not host:
        return "the URL has no host"
    port = port or DEFAULT_PORTS.get(scheme)
    if port is None:
        return f"no port in the URL and none known for {scheme}:"
    where = f"{host}:{port}"
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return f"the host name {_printable(host)!r} is not found"
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except ConnectionRefusedError:
        return f"connection refused by {where}: nothing listens there"
    except TimeoutError:
        return f"no answer from {where} within {timeout_s:g} s"
    except OSError as exc:
        return f"{where} cannot be reached ({_printable(exc.strerror or exc)})"
    if scheme in ("http", "https"):
        return _ask_http(url, parts, where, timeout_s)
    if scheme == "rtsp" and parts.username is None:
        return _ask_rtsp(url, host, port, where, timeout_s)
    return f"{where} accepts connections, but no video could be read from it"


def _ask_http(url: str, parts, where: str, timeout_s: float) -> str:
    """The answer to a GET of ``url`` (redirects followed, as FFmpeg does; certificates not
    checked, as FFmpeg does not by default); only the status line and headers are read."""
    plain = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
    request = urllib.request.Request(plain, headers={"User-Agent": "v1motion"})
    if parts.username is not None:
        secret = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        request.add_header("Authorization", "Basic " + base64.b64encode(secret).decode())
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(request, timeout=timeout_s, context=context) as answer:
            kind = _printable(answer.headers.get("Content-Type", "no content type"), 40)
            return f"{where} answered HTTP {answer.status} ({kind}), but no video could be read from it"
    except urllib.error.HTTPError as exc:
        return f"{where} answered HTTP {exc.code} {_printable(exc.reason)}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, ssl.SSLError):
            return f"{where} accepts connections, but TLS failed ({_printable(reason.reason or reason)})"
        if isinstance(reason, TimeoutError):
            return f"no answer from {where} within {timeout_s:g} s"
        return f"{where} accepts connections, but its HTTP answer failed ({_printable(reason)})"


def _ask_rtsp(url: str, host: str, port: int, where: str, timeout_s: float) -> str:
    """The status line of an RTSP ``DESCRIBE`` of ``url`` (RFC 2326), what a player asks first."""
    request = f"DESCRIBE {url} RTSP/1.0\r\nCSeq: 1\r\nAccept: application/sdp\r\nUser-Agent: v1motion\r\n\r\n"
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.sendall(request.encode("ascii", "replace"))
            line = sock.makefile("rb").readline(200).decode("ascii", "replace")
    except TimeoutError:
        return f"{where} accepts connections, but did not answer an RTSP request within {timeout_s:g} s"
    except OSError as exc:
        return f"{where} accepts connections, but its RTSP answer failed ({_printable(exc.strerror or exc)})"
    version, _, rest = line.partition(" ")
    code, _, reason = rest.strip().partition(" ")
    if not version.startswith("RTSP/") or not code.isdigit():
        return f"{where} accepts connections, but does not answer as an RTSP server"
    if code.startswith("2"):
        return f"{where} answered RTSP {code}, but no video could be read from it"
    return f"{where} answered RTSP {code} {_printable(reason)}"
