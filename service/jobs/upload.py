"""Stream a multipart upload straight to a file, with a byte limit; no temporary spool files.

Starlette's form parser spools files to the system temp folder before the route runs, so the limit could
not be enforced while receiving. This parser writes the ``file`` field directly to the destination
(a generated name chosen by the server) and stops reading as soon as the limit is passed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from python_multipart import MultipartParser
from python_multipart.multipart import parse_options_header
from starlette.requests import Request

FILE_FIELD = "file"
MAX_PARTS = 4
MAX_OVERHEAD = 64 * 1024  # multipart boundaries, headers and small fields around the file
ACCEPTED_PART_TYPES = ("video/", "application/octet-stream")


class UploadError(Exception):
    """The upload is refused; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


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
    """The client's file name, kept only as a label: no folders, no control characters, <= 200 chars."""
    if not name:
        return "upload"
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if c.isprintable())
    return name[:200] or "upload"


async def receive_upload(request: Request, dest: Path, max_bytes: int) -> ReceivedUpload:
    """Write the multipart field ``file`` of ``request`` to ``dest``.

    Raises
    ------
    UploadError
        415 not multipart or the file part is not a video type; 413 over ``max_bytes``;
        400 malformed body; 422 no ``file`` field. ``dest`` may be left partly written: the caller
        removes the job folder.
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
    )
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_bytes + MAX_OVERHEAD:  # other fields count too
                raise UploadError(413, f"the upload is larger than the limit of {max_bytes} bytes")
            parser.write(chunk)
        parser.finalize()
    except UploadError:
        raise
    except Exception as exc:
        raise UploadError(400, f"malformed multipart body: {exc}") from None
    finally:
        out.close()
    if "filename" not in found:
        raise UploadError(422, "the form has no field 'file' holding the video")
    return ReceivedUpload(found["filename"], found["content_type"], state["size"])
