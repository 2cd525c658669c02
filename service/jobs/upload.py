"""Stream a multipart upload straight to a file, with a byte limit; no temporary spool files.

Starlette's form parser spools files to the system temp folder before the route runs, so the limit could
not be enforced while receiving. This parser writes the ``file`` field directly to the destination
(a generated name chosen by the server) and stops reading as soon as the limit is passed.

Every upload body (videos here, spike data in ``v1motion.service.routers.spikes``) is read through
:func:`body_chunks`: at most ``max_bytes``, refused as soon as the count passes it, and dropped (408) when
the client sends nothing for ``idle_timeout_s`` or is still sending after ``total_timeout_s``.
:class:`UploadSlots` caps how many uploads are received at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from python_multipart import MultipartParser
from python_multipart.multipart import parse_options_header
from starlette.requests import Request

from v1motion.service.disk import disk_full_reason, is_disk_full

FILE_FIELD = "file"
MAX_PARTS = 4
# A part's header line may hold a long file name: it is read up to this size and cut to
# FILENAME_MAX_CHARS characters.
MAX_PART_HEADER = 16 * 1024
MAX_OVERHEAD = 64 * 1024  # multipart boundaries, headers and small fields around the file
# Recent python-multipart versions cap a part's header line (4 KiB by default); older ones have no cap.
_HEADER_LIMIT = (
    {"max_header_size": MAX_PART_HEADER}
    if "max_header_size" in inspect.signature(MultipartParser.__init__).parameters
    else {}
)
FILENAME_MAX_CHARS = 200  # also the record's limit (schemas.JobCreate)
ACCEPTED_PART_TYPES = ("video/", "application/octet-stream", "audio/3gpp")
"""Content types of a file part taken (the file's own bytes decide after): Python's ``mimetypes``,
which httpx and requests ask, calls a phone's .3gp / .3g2 video ``audio/3gpp`` / ``audio/3gpp2``."""


class UploadError(Exception):
    """The upload is refused; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


@dataclass(frozen=True)
class BodyLimits:
    max_bytes: int
    idle_timeout_s: float = 30.0
    total_timeout_s: float = 900.0

    @classmethod
    def from_settings(cls, settings, max_bytes: int) -> BodyLimits:
        return cls(max_bytes, settings.upload_idle_timeout_s, settings.upload_timeout_s)


async def body_chunks(request: Request, limits: BodyLimits) -> AsyncIterator[bytes]:
    """The request body chunk by chunk; ``UploadError`` 413 past ``max_bytes``, 408 on a timeout."""
    too_large = f"the body is larger than the limit of {limits.max_bytes} bytes"
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limits.max_bytes:
        raise UploadError(413, too_large)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limits.total_timeout_s
    stream = request.stream().__aiter__()
    received = 0
    while True:
        wait = min(limits.idle_timeout_s, deadline - loop.time())
        try:
            if wait <= 0:
                raise TimeoutError
            chunk = await asyncio.wait_for(stream.__anext__(), wait)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise UploadError(
                408,
                f"the body did not arrive in time (nothing for {limits.idle_timeout_s:g} s, "
                f"or not complete after {limits.total_timeout_s:g} s)",
            ) from None
        received += len(chunk)
        if received > limits.max_bytes:
            raise UploadError(413, too_large)
        yield chunk


async def read_body(request: Request, limits: BodyLimits) -> bytes:
    """The whole body, read through :func:`body_chunks`."""
    return b"".join([c async for c in body_chunks(request, limits)])


class UploadSlots:
    """At most ``n`` uploads received at once; one more gets ``UploadError`` 503 (``retry_after`` s)."""

    def __init__(self, n: int, retry_after: int = 10):
        self.n, self.retry_after, self.active = n, retry_after, 0

    @contextlib.contextmanager
    def hold(self):
        if self.active >= self.n:
            raise UploadError(503, f"{self.n} uploads are already arriving; try again shortly")
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1


@dataclass(frozen=True)
class ReceivedUpload:
    filename: str
    content_type: str
    size_bytes: int


def _disposition(value: bytes) -> tuple[str | None, str | None]:
    kind, params = parse_options_header(value)
    if kind != b"form-data":
        return None, None
    name = params.get(b"name")
    filename = params.get(b"filename")
    return (
        name.decode("utf-8", "replace") if name is not None else None,
        filename.decode("utf-8", "replace") if filename is not None else None,
    )


def clean_filename(name: str | None) -> str:
    """The client's file name, kept only as a label: no folders, no control characters, at most
    ``FILENAME_MAX_CHARS``; a longer name is cut before its extension (a batch keeps telling its .mp4 files apart)."""
    if not name:
        return "upload"
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if c.isprintable())
    if len(name) > FILENAME_MAX_CHARS:
        stem, dot, ext = name.rpartition(".")
        keep = FILENAME_MAX_CHARS - len(ext) - 1
        name = f"{stem[:keep]}.{ext}" if dot and stem and 0 < len(ext) <= 16 else name
    return name[:FILENAME_MAX_CHARS] or "upload"


async def receive_upload(
    request: Request, dest: Path, max_bytes: int, limits: BodyLimits | None = None
) -> ReceivedUpload:
    """Write the multipart field ``file`` of ``request`` to ``dest``.

    Raises
    ------
    UploadError
        415 not multipart or the file part is not a video type; 413 over ``max_bytes``;
        400 malformed body; 408 too slow (``limits``); 422 no ``file`` field; 507 the server's disk
        is full. ``dest`` may be left
        partly written: the caller removes the job folder.
    """
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or b"boundary" not in params:
        raise UploadError(
            415, "send the video as multipart/form-data with the file in the field 'file'"
        )
    state = {"headers": {}, "field": b"", "value": b"", "parts": 0, "target": None, "size": 0}
    found: dict = {}
    out = open(dest, "wb")

    def on_part_begin():
        state["headers"], state["target"] = {}, None
        state["parts"] += 1
        if state["parts"] > MAX_PARTS:
            raise UploadError(400, f"too many form fields (at most {MAX_PARTS})")

    def on_header_field(data, start, end):
        state["field"] += data[start:end]

    def on_header_value(data, start, end):
        state["value"] += data[start:end]

    def on_header_end():
        state["headers"][state["field"].lower()] = state["value"]
        state["field"], state["value"] = b"", b""

    def on_headers_finished():
        name, filename = _disposition(state["headers"].get(b"content-disposition", b""))
        if name != FILE_FIELD:
            return
        if "filename" in found:
            raise UploadError(400, "send exactly one file in the field 'file'")
        part_type = state["headers"].get(b"content-type", b"application/octet-stream")
        part_type = part_type.decode("latin-1").split(";")[0].strip().lower()
        if not part_type.startswith(ACCEPTED_PART_TYPES):
            raise UploadError(
                415,
                f"the file's content type {part_type!r} is not a video type "
                "(send video/mp4, video/x-msvideo, video/x-matroska, video/webm, video/quicktime "
                "or application/octet-stream)",
            )
        found.update(filename=clean_filename(filename), content_type=part_type)
        state["target"] = out

    def on_part_data(data, start, end):
        if state["target"] is None:
            return
        state["size"] += end - start
        if state["size"] > max_bytes:
            raise UploadError(413, f"the file is larger than the limit of {max_bytes} bytes")
        state["target"].write(data[start:end])

    def on_part_end():
        state["target"] = None

    parser = MultipartParser(
        params[b"boundary"],
        {
            "on_part_begin": on_part_begin,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
        },
        max_size=max_bytes + 1024 * 1024,
        **_HEADER_LIMIT,
    )
    limits = limits or BodyLimits(max_bytes)
    # other fields and the multipart framing count too
    limits = BodyLimits(max_bytes + MAX_OVERHEAD, limits.idle_timeout_s, limits.total_timeout_s)
    try:
        async for chunk in body_chunks(request, limits):
            parser.write(chunk)
        parser.finalize()
    except UploadError as exc:
        if exc.status == 413:
            raise UploadError(
                413, f"the upload is larger than the limit of {max_bytes} bytes"
            ) from None
        raise
    except Exception as exc:
        if is_disk_full(exc):
            raise UploadError(507, disk_full_reason(dest.parent, "the upload")) from None
        msg = str(exc)
        if "header size" in msg:
            msg = (
                f"a part's header is longer than {MAX_PART_HEADER} bytes "
                f"(a file name that long is refused; names are kept to {FILENAME_MAX_CHARS} "
                "characters)"
            )
        raise UploadError(400, f"malformed multipart body: {msg}") from None
    finally:
        try:
            out.close()  # writes what is buffered: the disk may be full now
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            raise UploadError(507, disk_full_reason(dest.parent, "the upload")) from None
    if "filename" not in found:
        raise UploadError(422, "the form has no field 'file' holding the video")
    return ReceivedUpload(found["filename"], found["content_type"], state["size"])
