"""Small video files made on the fly for the video tests: good ones and hostile ones."""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np


def moving_square_frames(n: int, size=(96, 64), step: int = 2) -> list[np.ndarray]:
    """BGR frames of a textured square moving right by ``step`` px per frame on a dark background."""
    w, h = size
    rng = np.random.default_rng(0)
    tex = rng.integers(0, 255, size=(24, 24, 3), dtype=np.uint8)
    frames = []
    for i in range(n):
        f = np.full((h, w, 3), 30, np.uint8)
        x = (4 + step * i) % (w - 24)
        y = max(0, (h - 24) // 2)
        f[y : y + 24, x : x + 24] = tex
        frames.append(f)
    return frames


def write_video(path: Path, fourcc: str | None = "MJPG", n=12, size=(96, 64), fps=10.0) -> bytes:
    """Write frames with OpenCV (``fourcc=None``: uncompressed) and return the file's bytes."""
    code = cv2.VideoWriter_fourcc(*fourcc) if fourcc else 0
    writer = cv2.VideoWriter(str(path), code, fps, size)
    assert writer.isOpened(), f"OpenCV cannot write {path} with {fourcc}"
    for f in moving_square_frames(n, size):
        writer.write(f)
    writer.release()
    return Path(path).read_bytes()


def through_mp4v(frames, path: Path, fps: float = 30.0) -> list[np.ndarray]:
    """Grey uint8 ``frames`` written to an mp4v video at ``path`` and read back as grey, as a video
    job reads them (the codec carries what it sent of a frame into the frames after it)."""
    h, w = frames[0].shape
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_GRAY2BGR))
    writer.release()
    cap, out = cv2.VideoCapture(str(path)), []
    while (got := cap.read())[0]:
        out.append(cv2.cvtColor(got[1], cv2.COLOR_BGR2GRAY))
    return out


def avi(tmp: Path, **kw) -> bytes:
    return write_video(tmp / "sample.avi", "MJPG", **kw)


def mp4(tmp: Path, **kw) -> bytes:
    return write_video(tmp / "sample.mp4", "mp4v", **kw)


def _patch(data: bytes, tag: bytes, offset: int, fmt: str, *values) -> bytes:
    d = bytearray(data)
    struct.pack_into(fmt, d, d.index(tag) + 8 + offset, *values)
    return bytes(d)


def huge_dimensions_avi(tmp: Path) -> bytes:
    """A ~50 kB uncompressed AVI whose headers declare 8000x6000 frames."""
    data = write_video(tmp / "raw.avi", None, n=2, size=(64, 48))
    data = _patch(data, b"avih", 32, "<II", 8000, 6000)
    return _patch(data, b"strf", 4, "<ii", 8000, 6000)


def zero_fps_avi(tmp: Path) -> bytes:
    """An AVI whose stream rate is 1 frame per 2**31 s. (A literal 0/0 rate is replaced by FFmpeg
    with 25 fps, so 'zero fps' reaches the decoder as this: practically zero.)"""
    data = avi(tmp)
    data = _patch(data, b"avih", 0, "<I", 0)
    return _patch(data, b"strh", 20, "<II", 2**31, 1)


def no_video_stream_avi(tmp: Path) -> bytes:
    """A well-formed AVI whose only stream is declared as a text stream, not video."""
    d = bytearray(avi(tmp))
    i = d.index(b"strh") + 8
    d[i : i + 4] = b"txts"
    return bytes(d)


def lying_frame_count_avi(tmp: Path, n: int = 12) -> bytes:
    """An AVI of ``n`` frames whose headers declare 10 million."""
    data = avi(tmp, n=n)
    data = _patch(data, b"avih", 16, "<I", 10_000_000)
    return _patch(data, b"strh", 32, "<I", 10_000_000)


def hls_playlist(target: Path) -> bytes:
    return (f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n{target}\n#EXT-X-ENDLIST\n").encode()


def ffconcat_script(target: Path) -> bytes:
    return f"ffconcat version 1.0\nfile '{target}'\n".encode()


def png_image() -> bytes:
    ok, buf = cv2.imencode(".png", moving_square_frames(1)[0])
    assert ok
    return buf.tobytes()


def damaged_frames_avi(tmp: Path) -> bytes:
    """An AVI with intact headers (it passes the probe) whose every JPEG frame is wiped after its
    first two bytes, so no frame decodes: a problem that only shows while decoding."""
    d = bytearray(avi(tmp))
    movi = d.index(b"movi") + 4
    start = movi
    while (start := d.find(b"\xff\xd8", start)) != -1:
        d[start + 2 : start + 602] = bytes(600)
        start += 602
    return bytes(d)


def box_up_then_down_left(path: Path, n_each: int = 40, size=(320, 240), step: int = 2) -> Path:
    """A textured box on a still textured background, moved up by ``step`` px per frame for
    ``n_each`` frames, then down-left (225 degrees) by ``step`` px along each axis per frame, as an
    MJPG AVI at 30 fps. Known truth: motion at 90 degrees, then at 225 degrees; nothing else moves."""
    w, h = size
    rng = np.random.default_rng(1)
    background = cv2.GaussianBlur(rng.integers(0, 255, (h, w), dtype=np.uint8), (0, 0), 2.0)
    background = (background.astype(np.float32) * 0.5 + 40).astype(np.uint8)
    box = cv2.GaussianBlur(rng.integers(0, 255, (72, 72), dtype=np.uint8), (0, 0), 1.5)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, size)
    assert writer.isOpened()
    x, y = w // 2 - 36, h - 72 - 8
    for t in range(2 * n_each):
        f = background.copy()
        f[y : y + 72, x : x + 72] = box
        writer.write(cv2.cvtColor(f, cv2.COLOR_GRAY2BGR))
        if t < n_each:
            y -= step
        else:
            x, y = x - step, y + step
    writer.release()
    return Path(path)


_MP4_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts", b"dinf"}


def _mp4_boxes(buf: bytes) -> list:
    out, i = [], 0
    while i < len(buf):
        size, kind = struct.unpack(">I4s", buf[i : i + 8])
        body = buf[i + 8 : i + size]
        out.append([kind, _mp4_boxes(body) if kind in _MP4_CONTAINERS else body])
        i += size
    return out


def _mp4_bytes(boxes: list) -> bytes:
    out = b""
    for kind, body in boxes:
        raw = _mp4_bytes(body) if isinstance(body, list) else body
        out += struct.pack(">I4s", len(raw) + 8, kind) + raw
    return out


def variable_rate_mp4(tmp: Path, n: int = 12, slow_from: int = 6) -> bytes:
    """An MP4 of ``n`` frames at 10 fps whose frames from ``slow_from`` on last three times as long
    (its ``stts`` rewritten; OpenCV writes ``moov`` after ``mdat``, so no chunk offset moves): the
    frame times of a phone's variable frame rate, 0.1 s apart and then 0.3 s."""
    boxes = _mp4_boxes(mp4(tmp, n=n))
    longer = slow_from + 3 * (n - slow_from)  # in frames of the first rate
    # where a version-0 box keeps its duration: the movie's, the track's, its media's, its edit's
    DURATION_AT = {b"mvhd": 16, b"tkhd": 20, b"mdhd": 16, b"elst": 8}  # noqa: N806
    assert [b[0] for b in boxes].index(b"moov") > [b[0] for b in boxes].index(b"mdat")

    def walk(level):
        for box in level:
            if box[0] == b"stts":
                head, (count, delta) = box[1][:4], struct.unpack(">II", box[1][8:16])
                entries = [(slow_from, delta), (count - slow_from, 3 * delta)]
                box[1] = (
                    head + struct.pack(">I", 2) + b"".join(struct.pack(">II", *e) for e in entries)
                )
            elif box[0] in DURATION_AT and box[1][0] == 0:  # the durations, longer as much
                body, at = bytearray(box[1]), DURATION_AT[box[0]]
                (duration,) = struct.unpack(">I", body[at : at + 4])
                body[at : at + 4] = struct.pack(">I", duration * longer // n)
                box[1] = bytes(body)
            elif isinstance(box[1], list):
                walk(box[1])

    walk(boxes)
    return _mp4_bytes(boxes)
