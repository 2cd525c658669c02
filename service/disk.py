"""A full disk, said as such: to the client that uploads, and in the reason a job failed.

On a full disk an upload was refused as a "malformed multipart body" (400, the client's fault), a
job failed with an "internal error" naming a file of the server, and a worker writing its results
through a memory map died of SIGBUS ("the worker process died (exit code -7)")."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import sqlite3
from pathlib import Path

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

log = logging.getLogger(__name__)

FULL = {errno.ENOSPC, errno.EDQUOT}


def is_disk_full(exc: BaseException | None) -> bool:
    """Whether ``exc``, or an exception it was raised from or during, is "no space left" (or "disk
    quota exceeded", or SQLite's "database or disk is full")."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, OSError) and exc.errno in FULL:
            return True
        if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


async def answer_disk_full(request: Request, exc: Exception) -> Response:
    """Exception handler (``OSError``, ``sqlite3.OperationalError``): a request that met a full disk
    is a 507 naming it, not a 500 with a traceback; any other such error is raised again."""
    if request.scope["type"] != "http" or not is_disk_full(exc):
        raise exc
    log.warning("%s %s: %s", request.method, request.url.path, exc)
    detail = disk_full_reason(Path(request.app.state.settings.data_dir), "what this request writes")
    return JSONResponse({"detail": detail}, 507)


def free_mb(folder: Path) -> float | None:
    try:
        return shutil.disk_usage(folder).free / 2**20
    except OSError:
        return None


def disk_full_reason(folder: Path | None, what: str) -> str:
    """One sentence for a client: ``what`` could not be written; no path of the server. With
    ``folder``, the room left there (not for a job: its partial results are gone by then)."""
    free = None if folder is None else free_mb(folder)
    left = f" ({free:.0f} MB free)" if free is not None else ""
    return f"the server's disk has no room for {what}{left}; retry once space is freed"


def reserve(path: Path, offset: int, length: int) -> None:
    """Allocate the blocks of bytes ``offset`` to ``offset + length`` of the file at ``path`` now (not
    past its end): writing through a memory map into a sparse file on a full disk kills the process
    with SIGBUS, where this raises OSError (ENOSPC). Does nothing where the file system or the
    platform cannot."""
    if not hasattr(os, "posix_fallocate"):
        return
    fd = os.open(path, os.O_RDWR)
    try:
        length = min(length, os.fstat(fd).st_size - offset)
        if length > 0:
            os.posix_fallocate(fd, offset, length)
    except OSError as exc:
        if exc.errno in FULL:
            raise
    finally:
        os.close(fd)
