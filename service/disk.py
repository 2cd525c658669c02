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


# The data folder read-only (the kernel remounts it so after an I/O error), failing, or gone from
# under the server: an operator's problem, not the request's.
UNUSABLE = {errno.EROFS, errno.EIO, errno.ENOENT, errno.EACCES, errno.EPERM}
SQLITE_UNUSABLE = {sqlite3.SQLITE_IOERR, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN}


def data_folder_unusable(exc: BaseException, data_dir: Path) -> str | None:
    """Why the data folder cannot be used, if that is what ``exc`` says (an ``OSError`` on a path in
    ``data_dir``, or the job store's SQLite refusing to read or write); else None."""
    if getattr(exc, "sqlite_errorcode", None) in SQLITE_UNUSABLE:
        return str(exc)
    if isinstance(exc, OSError) and exc.errno in UNUSABLE and exc.filename:
        try:
            Path(os.fsdecode(exc.filename)).resolve().relative_to(data_dir.resolve())
        except (ValueError, OSError):
            return None
        return exc.strerror or os.strerror(exc.errno)
    return None


async def answer_disk_full(request: Request, exc: Exception) -> Response:
    """Exception handler (``OSError``, ``sqlite3.OperationalError``): a request that met a full disk
    is a 507 naming it; one that met a data folder it cannot use (read-only, failing, deleted) a
    503 saying so (a plain-text 500 with a traceback before); any other such error a JSON 500."""
    if request.scope["type"] != "http":
        raise exc
    data_dir = Path(request.app.state.settings.data_dir)
    if is_disk_full(exc):
        log.warning("%s %s: %s", request.method, request.url.path, exc)
        detail = disk_full_reason(data_dir, "what this request writes")
        return JSONResponse({"detail": detail}, 507)
    why = data_folder_unusable(exc, data_dir)
    if why is not None:
        log.error(
            "%s %s: the data folder cannot be used: %s", request.method, request.url.path, exc
        )
        detail = f"the server cannot use its data folder ({why}); its operator must look at it"
        return JSONResponse({"detail": detail}, 503, headers={"Retry-After": "60"})
    log.error("%s %s: internal error", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"detail": "internal error"}, 500)


def make_durable(*paths: Path) -> None:
    """Write what the system holds of each file or folder (its new entries) to the disk: what the
    API reports accepted or done survives a power cut or a kernel crash. Without it a job reported
    succeeded 15 s before a crash was gone after it (a user's probe, ext4 with its journal aborted)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


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
