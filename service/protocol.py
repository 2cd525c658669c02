"""The websocket protocol: JSON messages with a schema version, and binary preview frames.

Documented in ``docs/protocol.md``; bump :data:`SCHEMA_VERSION` on any incompatible change.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from v1motion.models.motion.grids import grid, whole_degrees

SCHEMA_VERSION = 2  # 2: units in the field names (speed_px_per_frame, global_direction_deg, ...)
PREVIEW_MAGIC = b"V1MP"
_PREVIEW_HEADER = struct.Struct("!4sI")  # magic, sequence number (big-endian uint32)


_ORJSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def dumps(obj: dict[str, Any]) -> str:
    """Compact JSON text of ``obj``: every websocket message and each entry of a video job's
    motion.json.

    orjson writes the numbers these messages hold (rounded to at most 4 decimals) as
    ``json.dumps(obj, separators=(",", ":"))`` does, about ten times faster: 0.13 ms against 1.3
    ms for the motion of a 640x480 frame, on the thread that runs a live stream's engine or a
    job's results. The text differs only where the value does not: numbers below 1e-4 (``1e-5``
    where ``json`` writes ``1e-05``) and non-ASCII characters (UTF-8, not ``\\u`` escapes). numpy
    scalars and arrays are written as numbers and lists. NaN and infinities must not reach it
    (orjson writes them as ``null``): every grid and number of a result goes through
    :mod:`v1motion.models.motion.grids`, which writes them as 0.
    """
    return orjson.dumps(obj, option=_ORJSON_OPTIONS).decode()


def message(kind: str, **fields: Any) -> str:
    """A JSON text message ``{"v": SCHEMA_VERSION, "type": kind, ...}``."""
    return dumps({"v": SCHEMA_VERSION, "type": kind, **fields})


def error(code: str, detail: str) -> str:
    return message("error", code=code, detail=detail)


def status(
    stream: str,
    sent: int,
    missed: int,
    state: str,
    error: str | None = None,
    behind: bool = False,
) -> str:
    """A viewer's ``status``: results sent to it and results it missed (``dropped``: the same count
    under its first name, kept for clients written before ``missed``), and the stream's ``state``,
    ``error`` and ``behind`` (as ``GET v1/streams/{name}`` says them: why it is reconnecting, say,
    or that it analyses under half of its source's frames)."""
    return message(
        "status", stream=stream, sent=sent, missed=missed, dropped=missed, state=state,
        error=error, behind=behind,
    )  # fmt: skip


_WITH_PREVIEW = '"preview":true}'


def without_preview(text: str) -> str:
    """A result's text as sent to a viewer that turned previews off: ``"preview": false``, since
    no binary message follows it. The text is encoded once for every viewer, with the preview
    last; this changes its end only."""
    if text.endswith(_WITH_PREVIEW):
        return text[: -len(_WITH_PREVIEW)] + '"preview":false}'
    obj = orjson.loads(text)
    obj["preview"] = False
    return dumps(obj)


def v1_names(fields: dict[str, Any]) -> dict[str, Any]:
    """A result's fields with the names of schema version 1 that version 2 renamed, added next to the
    new ones (the same numbers, the units of the new names), for clients written against version 1:
    ``motion.global`` ``{direction_deg, speed, confidence}`` and ``speed`` in ``truth`` and ``flow``.
    The grids of ``motion`` keep their version-2 names only (``cell`` and the ``speed`` grid would
    double the largest part of every message). Returns new dicts; ``fields`` is not changed."""
    out = dict(fields)
    motion = out.get("motion")
    if isinstance(motion, dict) and "global_direction_deg" in motion:
        out["motion"] = {
            **motion,
            "global": {
                "direction_deg": motion["global_direction_deg"],
                "speed": motion["global_speed_px_per_frame"],
                "confidence": motion["global_confidence"],
            },
        }
    for key in ("truth", "flow"):
        part = out.get(key)
        if isinstance(part, dict) and "speed_px_per_frame" in part:
            out[key] = {**part, "speed": part["speed_px_per_frame"]}
    return out


def preview_frame(seq: int, jpeg: bytes) -> bytes:
    """Binary preview message: ``b"V1MP"`` + big-endian uint32 ``seq`` + JPEG bytes."""
    return _PREVIEW_HEADER.pack(PREVIEW_MAGIC, seq & 0xFFFFFFFF) + jpeg


def parse_preview(data: bytes) -> tuple[int, bytes]:
    magic, seq = _PREVIEW_HEADER.unpack_from(data)
    if magic != PREVIEW_MAGIC:
        raise ValueError("not a preview frame")
    return seq, data[_PREVIEW_HEADER.size :]


def flow_payload(direction: np.ndarray, speed: np.ndarray, cell: int) -> dict[str, Any]:
    """DIS optical flow on the motion map's grid, in the format of the grids of the result's
    ``motion`` (:meth:`v1motion.models.motion.engine.MotionFrame.to_dict`): the same field names,
    whole degrees, speeds to 2 decimals."""
    return {
        "cell_px": int(cell),
        "rows": int(direction.shape[0]),
        "cols": int(direction.shape[1]),
        "direction_deg": whole_degrees(direction),
        "speed_px_per_frame": grid(speed, 2),
    }


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One encoded result, shared by every subscriber: ``text`` then, if present, ``preview``."""

    seq: int
    text: str
    preview: bytes | None
    t_capture: float  # time.monotonic() at capture, for capture-to-send latency


END = Outgoing(seq=-1, text="", preview=None, t_capture=0.0)
"""Sentinel offered to subscribers when the stream shuts down."""
