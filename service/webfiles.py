"""Files the service sends: the dashboard's static files, gzipped for a browser that takes it (with
the one reading of ``Accept-Encoding`` the service uses), and files sent from a file held open
(:class:`HeldFileResponse`, a video job's results).

A phone on a 400 kbit/s link spent about 1.7 s fetching the dashboard's script, style and page
(85 KB) before it could show anything: gzipped they are 27 KB. Each text file is compressed once
and kept while its size and modification time stay the same (the web folder is a handful of files);
range requests, HEAD and other files are served as they are.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import anyio
from starlette.datastructures import Headers
from starlette.responses import (
    FileResponse,
    JSONResponse,
    MalformedRangeHeader,
    RangeNotSatisfiable,
    Response,
)
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

GZIPPED = {"Content-Encoding": "gzip"}
TEXT_SUFFIXES = frozenset({".html", ".js", ".css", ".json", ".svg", ".txt", ".map"})
MIN_BYTES = 1024  # smaller files gain less than the header costs


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an ``Accept-Encoding`` header takes gzip (``gzip;q=0`` refuses it)."""
    for item in accept_encoding.lower().split(","):
        name, _, params = item.strip().partition(";")
        if name.strip() in ("gzip", "*"):
            q = params.strip().removeprefix("q=")
            try:
                return not params or float(q) > 0
            except ValueError:
                return False
    return False


class CompressedStaticFiles(StaticFiles):
    """``StaticFiles`` that answers a GET of a text file gzipped when the client accepts it.

    Each file is compressed on its first such request, in a worker thread (the API docs' bundles
    take tens of milliseconds), then kept until its size or modification time changes."""

    def __init__(self, *, directory: str | os.PathLike, html: bool = False) -> None:
        super().__init__(directory=directory, html=html)
        self._gz: dict[str, tuple[tuple[int, int], bytes]] = {}

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        if not isinstance(response, FileResponse):  # 304, 404...: nothing to compress
            return response
        stat = response.stat_result
        full_path = str(response.path)
        if Path(full_path).suffix not in TEXT_SUFFIXES or stat is None or stat.st_size < MIN_BYTES:
            return response
        response.headers["Vary"] = "Accept-Encoding"
        request = Headers(scope=scope)
        if (
            scope.get("method") != "GET"
            or "range" in request
            or not accepts_gzip(request.get("accept-encoding", ""))
        ):
            return response
        key = (stat.st_mtime_ns, stat.st_size)
        cached = self._gz.get(full_path)
        if cached is None or cached[0] != key:
            cached = (key, await anyio.to_thread.run_sync(_gzip_file, full_path))
            self._gz[full_path] = cached
        headers = {
            k: v
            for k, v in response.headers.items()
            if k not in ("content-length", "accept-ranges", "content-type")
        }
        return Response(
            cached[1],
            status_code=response.status_code,
            headers=headers | GZIPPED,
            media_type=response.media_type,
        )


def _gzip_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return gzip.compress(f.read(), 6, mtime=0)


class HeldFileResponse(FileResponse):
    """A file sent from the file object ``held`` open since the route looked: a DELETE of the
    job while the answer was on its way removed the file it was to be read from, and the client
    got a 200 cut short (the server logged an error). Linux's ``/proc/self/fd`` reopens the file
    held, deleted or not (elsewhere, ``path``); ``held`` is closed once the answer is sent."""

    def __init__(self, held, path: Path, **kwargs):
        self.held = held
        reopen = Path(f"/proc/self/fd/{held.fileno()}")
        super().__init__(
            reopen if reopen.exists() else path, stat_result=os.fstat(held.fileno()), **kwargs
        )

    async def __call__(self, scope, receive, send) -> None:
        try:
            refused = self._refuse_range(scope)
            if refused is not None:
                await refused(scope, receive, send)
                return
            await super().__call__(scope, receive, send)
        finally:
            self.held.close()

    def _refuse_range(self, scope: Scope) -> Response | None:
        """A Range this file cannot satisfy answered as every other API error (JSON ``detail``);
        one that does not parse is ignored, and the whole file sent (RFC 9110 §14.2: a server
        may ignore Range; nginx does so). Starlette answered both in plain text, 400 and 416,
        which a client reading ``detail`` could not parse."""
        headers = Headers(scope=scope)
        asked = headers.get("range")
        if asked is None or scope.get("method") not in ("GET", "HEAD"):
            return None
        if_range = headers.get("if-range")
        if if_range is not None and not self._should_use_range(if_range):
            return None  # the file changed since the client's copy: Starlette sends it whole
        size = self.stat_result.st_size
        try:
            self._parse_range_header(asked, size)
        except MalformedRangeHeader:
            scope["headers"] = [(k, v) for k, v in scope["headers"] if k.lower() != b"range"]
            return None
        except RangeNotSatisfiable:
            return JSONResponse(
                {"detail": f"no byte of the range {asked!r} is in the file ({size} bytes)"},
                status_code=416,
                headers={"Content-Range": f"bytes */{size}"},
            )
        return None
