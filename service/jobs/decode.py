"""Decode an untrusted video in a separate, capped process.

The parent (:class:`SandboxedDecoder`) starts ``python -m v1motion.service.jobs.decode`` with the stored file's
path and the :class:`~v1motion.service.jobs.limits.Limits`. The child caps its own address space
(``RLIMIT_AS``), CPU time and open files, restricts OpenCV's FFmpeg backend to plain files and to the
allowed demuxers (``protocol_whitelist;file|format_whitelist;...`` through
``OPENCV_FFMPEG_CAPTURE_OPTIONS``), probes the stream (a video stream exists, size, codec, frame rate)
and only then decodes, stopping at the frame and duration caps whatever the container declares.
Frames travel over a pipe as tagged messages. A crash, an abort, a memory blow-up or a hang ends the
child, never the parent: the parent sees end-of-pipe or its deadline and raises :class:`DecodeError`
with a readable reason.
"""

from __future__ import annotations

import heapq
import json
import logging
import os
import selectors
import signal
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from v1motion.service.jobs.limits import CODEC_NAMES, Limits

log = logging.getLogger(__name__)

# Demuxers OpenCV's FFmpeg backend may use: the containers sniff.py accepts, nothing that reads other
# files (hls, concat, image2, subtitles...).
FORMAT_WHITELIST = "mov,mp4,m4a,3gp,3g2,mj2,avi,matroska,webm"
CAPTURE_OPTIONS = f"protocol_whitelist;file|format_whitelist;{FORMAT_WHITELIST}"

_MSG = struct.Struct("<cI")  # tag, payload length
# Frames held back in the decoder so that each gets its own time. With B-frames OpenCV reports the
# time of the packet it last fed the decoder, in decode order (box.mp4: 0, 101, 67, 134, 34 ms...),
# while the frames come in display order; the frames' times are those same times in order, so the
# smallest not yet given is the next frame's, once more frames than the reordering depth are read.
REORDER_FRAMES = 8
_HEADER, _FRAME, _ERROR, _DONE, _TIME = b"H", b"F", b"E", b"D", b"T"
_EXIT_REJECTED = 3
# What running into RLIMIT_AS looks like on the child's stderr.
_OOM_MARKS = (
    "MemoryError",
    "bad_alloc",
    "Cannot allocate",
    "failed to map segment",
    "out of memory",
)


class DecodeError(RuntimeError):
    """Decoding failed; the message is meant for the user."""


class VideoRejected(DecodeError):
    """The video breaks one of the limits or is not a readable video."""


@dataclass(frozen=True)
class VideoInfo:
    """What the probe found; ``out_width`` x ``out_height`` is the size of the frames delivered."""

    width: int
    height: int
    fps: float
    codec: str
    declared_frames: int
    out_width: int
    out_height: int
    max_frames: int

    @property
    def scale(self) -> float:
        return self.out_width / self.width


# ----------------------------------------------------------------------------------------- child


def leave_signals_to_parent() -> None:
    """Ignore SIGTERM and SIGINT: the parent decides when a child stops (it kills it outright).

    ``systemctl stop`` and Ctrl-C signal the whole process group. A child that died of that signal
    before the service had stopped it would make its job look like a crash (failed for good) instead
    of an interrupted job that goes back to the queue."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def lower_priority(niceness: int) -> None:
    """Add ``niceness`` to this process's (Unix) niceness: batch work (video jobs, spike fits) gives
    way to the live streams' engines on shared cores. A no-op at 0 or where it is refused."""
    if niceness <= 0 or not hasattr(os, "nice"):
        return
    try:
        os.nice(niceness)
    except OSError:
        log.debug("cannot lower this process's priority")


def die_with_parent() -> None:
    """Ask Linux to kill this process when its parent dies (no orphaned decoders or workers after
    a hard kill of the service). A no-op elsewhere."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    except OSError:
        log.debug("prctl(PR_SET_PDEATHSIG) unavailable")


SECRET_WORDS = ("TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL", "API_KEY", "ACCESS_KEY")


def _child_env() -> dict[str, str]:
    """The decoder's environment: the server's without its settings (the token among them) and
    without any variable named like a secret. The child parses hostile files; whatever took it
    over would have found the token in its environment."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.upper().startswith("V1MOTION_") and not any(w in k.upper() for w in SECRET_WORDS)
    }
    env.update(
        OPENCV_FFMPEG_CAPTURE_OPTIONS=CAPTURE_OPTIONS,
        OPENCV_VIDEOIO_PRIORITY_LIST="FFMPEG",
        OPENCV_LOG_LEVEL="ERROR",
        OPENCV_FFMPEG_LOGLEVEL="8",
        OMP_NUM_THREADS="1",
        OPENBLAS_NUM_THREADS="1",
    )
    return env


def _fourcc(value: float) -> str:
    code = int(value) & 0xFFFFFFFF
    return code.to_bytes(4, "little").decode("latin-1").strip("\x00 ").lower()


def processed_size(width: int, height: int, limits: Limits) -> tuple[int, int]:
    """The size of the frames the engine gets: the longer side shrunk to ``limits.max_side``."""
    scale = min(1.0, limits.max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def check_probe(width: int, height: int, fps: float, codec: str, limits: Limits) -> None:
    """Raise :class:`VideoRejected` if a probed stream breaks a limit (runs in the child)."""
    if width <= 0 or height <= 0:
        raise VideoRejected("the file has no decodable video stream")
    if min(width, height) < limits.min_side:
        raise VideoRejected(
            f"frame size {width}x{height} is too small: each side needs at least {limits.min_side} px"
        )
    out_w, out_h = processed_size(width, height, limits)
    if min(out_w, out_h) < limits.min_side:
        # A long, narrow frame: accepted as decoded, but too small once shrunk for the engine.
        raise VideoRejected(
            f"frame size {width}x{height} is too narrow: shrunk to {out_w}x{out_h} (the longer side "
            f"to {limits.max_side} px), its shorter side is under {limits.min_side} px"
        )
    # either way round: a portrait video of the landscape limit's size is as much work
    long_max, short_max = (
        max(limits.max_width, limits.max_height),
        min(limits.max_width, limits.max_height),
    )
    if max(width, height) > long_max or min(width, height) > short_max:
        raise VideoRejected(
            f"frame size {width}x{height} exceeds the limit of {limits.max_width}x{limits.max_height} "
            "(or its portrait equivalent)"
        )
    if not np.isfinite(fps) or fps < limits.min_fps or fps > limits.max_fps:
        raise VideoRejected(
            f"frame rate {fps:g} fps is outside the accepted range "
            f"{limits.min_fps:g}-{limits.max_fps:g} fps"
        )
    if not codec:
        raise VideoRejected(
            "the video is uncompressed or its codec has no name, and is not accepted; convert it "
            "losslessly to FFV1 (ffmpeg -i in.avi -c:v ffv1 out.mkv) or to another accepted "
            f"codec: {', '.join(limits.codecs)}"
        )
    if codec not in limits.codecs:
        name = f" ({CODEC_NAMES[codec]})" if codec in CODEC_NAMES else ""
        raise VideoRejected(
            f"video codec {codec!r}{name} is not accepted; convert it, e.g. to H.264 (ffmpeg -i "
            f"in.mov -c:v libx264 -crf 18 out.mp4); accepted: {', '.join(limits.codecs)}"
        )


def _stamp(ms: float) -> float:
    """OpenCV's time of a frame in ms; -1 where it has none (then timed by its index)."""
    return ms if np.isfinite(ms) and ms >= 0 else -1.0


def _child_main(path: str, limits: Limits, probe_only: bool) -> int:
    import resource

    leave_signals_to_parent()
    die_with_parent()
    mem = limits.memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    cpu = max(1, int(limits.deadline_s) + 5)
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    # Our messages get a private copy of stdout; fd 1 becomes stderr, so anything native code prints
    # cannot corrupt the frame stream.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)

    def send(tag: bytes, payload) -> None:
        view = memoryview(payload).cast("B")
        out.write(_MSG.pack(tag, view.nbytes))
        out.write(view)

    try:
        import cv2

        cv2.setNumThreads(1)
        cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
        if not cap.isOpened():
            raise VideoRejected(
                "the file could not be opened as a video: it has no video stream, is truncated, "
                "or its container is not an accepted one"
            )
        width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        fps = float(cap.get(cv2.CAP_PROP_FPS))
        codec = _fourcc(cap.get(cv2.CAP_PROP_FOURCC))
        declared = int(max(0.0, cap.get(cv2.CAP_PROP_FRAME_COUNT)))
        check_probe(width, height, fps, codec, limits)
        out_w, out_h = processed_size(width, height, limits)
        max_frames = int(min(limits.max_frames, np.floor(limits.max_seconds * fps)))
        header = dict(
            width=width,
            height=height,
            fps=fps,
            codec=codec,
            declared_frames=declared,
            out_width=out_w,
            out_height=out_h,
            max_frames=max_frames,
        )
        send(_HEADER, json.dumps(header).encode())
        out.flush()
        n, reason = 0, "end"
        held: deque = deque()  # frames read, not yet sent (REORDER_FRAMES)
        stamps: list[float] = []  # their times (ms), a heap
        first_ms, sent, past = None, 0, False

        def send_held() -> bool:
            """Send the oldest held frame with its time; False if it lies past the seconds cap
            (a file whose frames are sparser than its declared rate: a timelapse, dropped frames)."""
            nonlocal first_ms, sent
            ms = heapq.heappop(stamps)
            if ms >= 0:
                first_ms = ms if first_ms is None else first_ms
                if (ms - first_ms) / 1000.0 > limits.max_seconds:
                    return False
            send(_TIME, np.array([ms], np.float64))
            send(_FRAME, held.popleft())
            sent += 1
            return True

        while not probe_only:
            if n >= max_frames:
                reason = "cap"
                for _ in range(len(held)):  # the times of the frames after the cap, grabbed only:
                    if not cap.grab():  # some of the held frames' times come with them
                        break
                    heapq.heappush(stamps, _stamp(cap.get(cv2.CAP_PROP_POS_MSEC)))
                break
            ok, frame = cap.read()
            if not ok or frame is None:
                break
            if frame.shape[:2] != (height, width):
                raise VideoRejected(
                    f"frame {n} is {frame.shape[1]}x{frame.shape[0]}, "
                    f"but the stream declared {width}x{height}"
                )
            if (out_w, out_h) != (width, height):
                frame = cv2.resize(frame, (out_w, out_h), interpolation=cv2.INTER_AREA)
            if frame.ndim == 2:
                frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
            # the frame's own time in the container (a variable frame rate's are uneven)
            heapq.heappush(stamps, _stamp(cap.get(cv2.CAP_PROP_POS_MSEC)))
            held.append(np.ascontiguousarray(frame, dtype=np.uint8))
            n += 1
            if len(held) > REORDER_FRAMES and not send_held():
                past = True
                break
        while held and not past:
            past = not send_held()  # past the seconds cap: the rest are later still
        if past:
            reason = "cap"
        cap.release()
        send(_DONE, json.dumps({"frames": sent, "stop": reason}).encode())
        out.flush()
        return 0
    except VideoRejected as exc:
        send(_ERROR, str(exc).encode())
        out.flush()
        return _EXIT_REJECTED
    except MemoryError:
        send(_ERROR, f"the decoder ran out of memory (limit {limits.memory_mb} MB)".encode())
        out.flush()
        return _EXIT_REJECTED


# ---------------------------------------------------------------------------------------- parent


class SandboxedDecoder:
    """Run the decoder child for one file; use as a context manager.

    Parameters
    ----------
    path : Path
        The stored file (a generated name inside the job folder).
    limits : Limits
    probe_only : bool
        Stop after the header (used to check an upload before it is queued).

    Attributes
    ----------
    info : VideoInfo
        Set on entry.
    frames_decoded : int
    frame_times : list of float
        Seconds from the first frame to each frame yielded, from the container's timestamps (uneven
        for a variable frame rate); ``index / fps`` where a timestamp is missing or does not advance.
    stopped_at_cap : bool
        True when decoding stopped at the frame/duration cap rather than the end of the file.
    """

    def __init__(self, path: Path, limits: Limits, probe_only: bool = False):
        self.path = Path(path)
        self.limits = limits
        self.probe_only = probe_only
        self.info: VideoInfo | None = None
        self.frames_decoded = 0
        self.frame_times: list[float] = []
        self.stopped_at_cap = False
        self._first_ms: float | None = None
        self._proc: subprocess.Popen | None = None
        self._stderr_tail: deque[bytes] = deque(maxlen=20)
        self._deadline = 0.0
        self._sel: selectors.BaseSelector | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def __enter__(self) -> SandboxedDecoder:
        # -P: the folder the service was started from is not put on the child's path, where a
        # user's file named like a standard module (json.py, dis.py) would be imported and run
        cmd = [sys.executable, "-P", "-m", "v1motion.service.jobs.decode", str(self.path)]
        cmd += [json.dumps(self.limits.to_dict())] + (["--probe"] if self.probe_only else [])
        self._proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=_child_env(),
            close_fds=True,
        )
        try:
            return self._start()
        except BaseException:
            self.close()  # a refused file must not leave the child and its pipes behind
            raise

    def _start(self) -> SandboxedDecoder:
        threading.Thread(target=self._drain_stderr, name="decoder-stderr", daemon=True).start()
        _widen_pipe(self._proc.stdout.fileno())
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._proc.stdout, selectors.EVENT_READ)
        start = time.monotonic()
        self._deadline = start + self.limits.deadline_s
        tag, payload = self._read_message(start + self.limits.probe_timeout_s, "probing")
        if tag == _ERROR:
            raise VideoRejected(bytes(payload).decode(errors="replace"))
        if tag != _HEADER:
            raise DecodeError("the decoder sent no stream description")
        self.info = VideoInfo(**json.loads(bytes(payload)))
        # Defence in depth: the child checked these too.
        if self.info.out_width * self.info.out_height > self.limits.max_side**2:
            raise DecodeError("the decoder reported an impossible frame size")
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()
        if self._sel is not None:
            self._sel.close()

    def frames(self) -> Iterator[np.ndarray]:
        """Yield BGR uint8 frames of shape (out_height, out_width, 3) until the end or a cap."""
        info = self.info
        nbytes = info.out_width * info.out_height * 3
        stamp = None
        while True:
            tag, payload = self._read_message(self._deadline, "decoding", max_len=nbytes)
            if tag == _TIME:
                if len(payload) != 8:
                    raise DecodeError("the decoder sent a malformed timestamp")
                stamp = float(np.frombuffer(payload, np.float64)[0])
            elif tag == _FRAME:
                if len(payload) != nbytes:
                    raise DecodeError("the decoder sent a frame of the wrong size")
                self.frame_times.append(self._frame_time(stamp))
                stamp = None
                self.frames_decoded += 1
                yield np.frombuffer(payload, np.uint8).reshape(info.out_height, info.out_width, 3)
            elif tag == _DONE:
                self.stopped_at_cap = json.loads(bytes(payload))["stop"] == "cap"
                return
            elif tag == _ERROR:
                raise VideoRejected(bytes(payload).decode(errors="replace"))
            else:
                raise DecodeError("the decoder sent an unknown message")

    def _frame_time(self, ms: float | None) -> float:
        """Seconds from the first frame: the container's timestamp where it is a number that
        advances, else the frame's index over the frame rate (after the last good time)."""
        n, fps = len(self.frame_times), self.info.fps
        last = self.frame_times[-1] if n else None
        if ms is not None and np.isfinite(ms) and ms >= 0:
            if self._first_ms is None:
                self._first_ms = ms
            t = (ms - self._first_ms) / 1000.0
            if last is None or t > last:
                return round(t, 6)
        return round(n / fps if last is None else last + 1.0 / fps, 6)

    # -- plumbing

    def _drain_stderr(self) -> None:
        for line in self._proc.stderr:
            self._stderr_tail.append(line[:300])
        self._proc.stderr.close()

    def _read_exact(self, n: int, deadline: float, what: str) -> bytearray:
        """Read exactly ``n`` bytes into a fresh buffer (frames are handed on without a copy)."""
        buf = bytearray(n)
        view = memoryview(buf)
        fd = self._proc.stdout.fileno()
        got = 0
        while got < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._proc.kill()
                limit = self.limits.probe_timeout_s if what == "probing" else self.limits.deadline_s
                raise DecodeError(f"the decoder took longer than {limit:g} s while {what}")
            if not self._sel.select(timeout=min(remaining, 1.0)):
                continue
            k = os.readv(fd, [view[got:]])
            if k == 0:
                raise self._died(what)
            got += k
        return buf

    def _read_message(
        self, deadline: float, what: str, max_len: int = 1 << 16
    ) -> tuple[bytes, bytearray]:
        tag, length = _MSG.unpack(bytes(self._read_exact(_MSG.size, deadline, what)))
        if length > max(max_len, 1 << 16):
            raise DecodeError("the decoder sent an oversized message")
        return tag, self._read_exact(length, deadline, what)

    def _died(self, what: str) -> DecodeError:
        try:
            code = self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            code = self._proc.wait()
        tail = b"".join(self._stderr_tail).decode(errors="replace").strip()
        log.info(
            "decoder for %s exited with %s while %s; stderr tail: %s", self.path, code, what, tail
        )
        if code < 0:
            name = signal.Signals(-code).name
            return DecodeError(f"the decoder crashed ({name}) while {what} the file")
        if any(m in tail for m in _OOM_MARKS):
            return DecodeError(
                f"the decoder ran out of memory (limit {self.limits.memory_mb} MB) while {what}"
            )
        return DecodeError(f"the decoder stopped unexpectedly (exit code {code}) while {what}")


def _widen_pipe(fd: int) -> None:
    """Grow the frame pipe from 64 kB to 1 MB (Linux), so a frame crosses in a few reads."""
    import fcntl

    try:
        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
    except OSError:
        log.debug("could not widen the decoder pipe")


def probe(path: Path, limits: Limits) -> VideoInfo:
    """Open and check ``path`` in the sandbox without decoding frames; raises :class:`DecodeError`."""
    with SandboxedDecoder(path, limits, probe_only=True) as dec:
        return dec.info


def _main(argv: list[str]) -> int:
    path, limits_json = argv[0], argv[1]
    return _child_main(path, Limits.from_dict(json.loads(limits_json)), "--probe" in argv[2:])


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
