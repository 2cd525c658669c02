"""The one job function: a video file in, motion results in a folder out.

Used unchanged by the local worker processes, the Ray tasks and ``v1motion motion``.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import queue
import shutil
import threading
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import numpy as np

from v1motion.models.motion.contract import Engine
from v1motion.models.motion.motion_summary import MotionSummary
from v1motion.service import protocol
from v1motion.service.disk import reserve
from v1motion.service.jobs.decode import SandboxedDecoder, VideoRejected
from v1motion.service.jobs.layout import INPUT_NAME, ResultsFolder
from v1motion.service.jobs.limits import Limits, overlay_codec
from v1motion.service.jobs.sniff import UnsupportedContainer, sniff_file

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 0.25
OVERLAY_TICKS = 90_000  # overlay.mp4's time base (1/s), as MPEG streams count time
RESERVE_FRAMES = 64  # the maps' file blocks are allocated this many frames ahead


UNITS = {
    "direction_deg": "degrees, 0 = moving right, 90 = moving up on screen, counter-clockwise",
    "speed_px_per_frame": "pixels of the processed frame (processed_width x processed_height) per frame",
    "cell_px": "side of a grid cell in pixels of the processed frame",
    "confidence": "0 (nothing moves) to 1",
    "share": "fraction of the moving cells' confidence, summed over the video",
    "direction_hist": "in the summary: fraction of the confidence-weighted cells in each direction "
    "bin; in a frame: the model units' activity by preferred direction, not the map's histogram",
    "speed_hist": "in a frame: the model units' activity by preferred speed, not the map's histogram",
}


class _Stage:
    """A worker thread fed through a bounded queue: ``fn(*item)`` per item, in order.

    The job's own thread decodes and steps the engine (whose Numba kernels, BLAS and OpenCV calls
    release the GIL) while stages consume its frames; the bounded queue keeps the job from running
    more than a few frames ahead. An exception in ``fn`` is re-raised in the job's thread at the next
    ``put`` or at ``close``. ``seconds`` is the time spent inside ``fn``.
    """

    def __init__(self, name: str, fn: Callable[..., None], maxsize: int = 4):
        self.name, self._fn = name, fn
        self._queue: queue.Queue = queue.Queue(maxsize=maxsize)
        self._error: BaseException | None = None
        self.seconds = 0.0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is not None:
                continue
            t0 = time.perf_counter()
            try:
                self._fn(*item)
            except BaseException as exc:  # re-raised in the job's thread
                log.debug("stage %s failed", self.name, exc_info=True)
                self._error = exc
            self.seconds += time.perf_counter() - t0

    def put(self, *item) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(item)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error

    def close_quietly(self) -> None:
        """Stop after a failure elsewhere; what it wrote is discarded with the work folder."""
        self._error = self._error or RuntimeError("closed")
        self._queue.put(None)
        self._thread.join()


class _H264Writer:
    """overlay.mp4 in H.264 (libx264 through PyAV), which browsers play: ``ultrafast`` on one thread
    (jobs run beside each other and beside their engines), its index first (``+faststart``) so a
    browser plays it while it loads. Even sides, as 4:2:0 colour needs: an odd last row or column
    is left out. Each frame is shown at its time in the video (:data:`OVERLAY_TICKS` a second):
    at one mean rate, a phone clip whose rate fell from 30 to 15 frames/s in low light drifted a
    second from the original within six."""

    def __init__(self, path: Path, fps: float, size: tuple[int, int]):
        import av

        self.width, self.height = size[0] // 2 * 2, size[1] // 2 * 2
        self._av = av
        self._file = av.open(str(path), mode="w", options={"movflags": "+faststart"})
        stream = self._file.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = self.width, self.height, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "23"}
        stream.thread_count = 1
        stream.codec_context.time_base = Fraction(1, OVERLAY_TICKS)
        self._stream = stream
        self._first: float | None = None  # the first frame's time: the overlay starts at 0
        self._pts = -1

    def write(self, bgr: np.ndarray, t: float) -> None:
        frame = self._av.VideoFrame.from_ndarray(bgr[: self.height, : self.width], format="bgr24")
        if self._first is None:
            self._first = t
        self._pts = max(self._pts + 1, round((t - self._first) * OVERLAY_TICKS))  # increasing
        frame.pts, frame.time_base = self._pts, Fraction(1, OVERLAY_TICKS)
        self._file.mux(self._stream.encode(frame))

    def release(self) -> None:
        if self._file is None:
            return
        try:
            self._file.mux(self._stream.encode())  # what the encoder still holds
        finally:
            self._file.close()
            self._file = None


class _Mp4vWriter:
    """overlay.mp4 in MPEG-4 Part 2 (OpenCV's FFmpeg): faster to encode, but browsers do not play it,
    and its frames are shown at one rate (the one the file declares: OpenCV's writer takes no
    times)."""

    def __init__(self, path: Path, fps: float, size: tuple[int, int]):
        import cv2

        self._writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
        if not self._writer.isOpened():
            raise RuntimeError("OpenCV cannot write an mp4v overlay video here")
        self.release = self._writer.release

    def write(self, bgr: np.ndarray, t: float) -> None:
        self._writer.write(bgr)


OVERLAY_WRITERS = {"h264": _H264Writer, "mp4v": _Mp4vWriter}


class _OverlayWriter:
    """Draws the motion map on each frame and encodes overlay.mp4, on two stages of its own (drawing
    is numpy and OpenCV, encoding is FFmpeg; both mostly outside the GIL)."""

    def __init__(self, path: Path, fps: float, size: tuple[int, int], codec: str):
        from v1motion.service.render import draw_overlay

        self._draw = draw_overlay
        self._writer = OVERLAY_WRITERS[codec](path, fps, size)
        self.encode = _Stage("overlay-encode", self._writer.write)
        self.draw = _Stage("overlay-draw", self._draw_one)

    def _draw_one(self, frame: np.ndarray, mf, t: float) -> None:
        self.encode.put(self._draw(frame, mf.direction, mf.speed, mf.confidence, mf.cell), t)

    def write(self, frame: np.ndarray, mf, t: float) -> None:
        """Draw ``mf`` on ``frame``, shown at ``t`` seconds into the video."""
        self.draw.put(frame, mf, t)

    def close(self) -> None:
        try:
            self.draw.close()
        finally:
            self.encode.close()
            self._writer.release()

    def close_quietly(self) -> None:
        self.draw.close_quietly()
        self.encode.close_quietly()
        self._writer.release()


class _Results:
    """Everything kept of each frame's motion, gathered on a stage of its own: the grids (appended to
    memory-mapped .npy files in the work folder, so long videos stay off the heap; sized for the
    frame cap, trimmed when saved), the per-video summary, and the frame's entry of motion.json,
    serialised by :meth:`v1motion.models.motion.engine.MotionFrame.to_dict` (the format of the websocket's motion
    messages) and streamed to a part file."""

    GRIDS = ("direction_deg", "speed_px_per_frame", "confidence")
    GLOBALS = ("global_direction_deg", "global_speed_px_per_frame", "global_confidence")

    def __init__(
        self,
        folder: Path,
        capacity: int,
        fps: float,
        summary: MotionSummary,
        times: list[float],
    ):
        self.folder, self.capacity, self.fps, self.summary = folder, capacity, fps, summary
        self.times = times  # each frame's time (the decoder's frame_times, filled before a frame)
        self.maps: dict[str, np.ndarray] = {}
        self.globals: dict[str, list[float]] = {k: [] for k in self.GLOBALS}
        self.direction_hist: list[np.ndarray] = []
        self.speed_hist: list[np.ndarray] = []
        self.cell: int | None = None
        self.n = 0
        self._reserved = 0  # frames whose rows in the maps' files have their blocks allocated
        self.frames_path = folder / "frames.jsonl"
        self._frames = open(self.frames_path, "w")

    def add(self, mf) -> None:
        if not self.maps:
            for name in self.GRIDS:
                shape = (self.capacity,) + mf.direction.shape
                self.maps[name] = np.lib.format.open_memmap(
                    self.folder / f"{name}.npy", mode="w+", dtype=np.float16, shape=shape
                )
        if self.n == self._reserved:  # a full disk is an OSError here, not SIGBUS mid-frame
            for name, m in self.maps.items():
                row = m[0].nbytes
                reserve(self.folder / f"{name}.npy", m.offset + self.n * row, RESERVE_FRAMES * row)
            self._reserved += RESERVE_FRAMES
        frame = {"index": self.n, "time_s": round(self.times[self.n], 4)} | mf.to_dict()
        self._frames.write(("," if self.n else "") + protocol.dumps(frame))
        direction = np.mod(np.degrees(mf.direction), 360.0).astype(np.float16)
        direction[direction >= 360] = 0  # float16 rounds 359.9 up to 360
        self.maps["direction_deg"][self.n] = direction
        self.maps["speed_px_per_frame"][self.n] = mf.speed
        self.maps["confidence"][self.n] = mf.confidence
        for k in self.GLOBALS:
            self.globals[k].append(frame[k])
        self.direction_hist.append(mf.direction_hist)
        self.speed_hist.append(mf.speed_hist)
        self.summary.update(mf.direction, mf.speed, mf.confidence)
        self.cell = mf.cell
        self.n += 1

    def arrays(self) -> dict[str, np.ndarray]:
        out = {name: m[: self.n] for name, m in self.maps.items()}
        out.update({k: np.asarray(v, dtype=np.float32) for k, v in self.globals.items()})
        out["direction_hist"] = np.asarray(self.direction_hist, dtype=np.float32)
        out["speed_hist"] = np.asarray(self.speed_hist, dtype=np.float32)
        return out

    def write_motion_json(self, path: Path, video: dict, summary: dict) -> None:
        """motion.json: the video, its summary, then the frames copied from the part file (a long
        video never sits in memory as one string)."""
        self._frames.close()
        with open(path, "w") as f:
            head = {"video": video, "units": UNITS, "summary": summary}
            f.write(json.dumps(head)[:-1] + ', "frames": [')
            with open(self.frames_path) as frames:
                shutil.copyfileobj(frames, f, 1 << 20)
            f.write("]}\n")
        self.frames_path.unlink()

    def remove(self) -> None:
        self.maps.clear()
        try:
            self._frames.close()
        except OSError:  # a full disk, flushing what it buffered: removed below in any case
            pass
        for name in self.GRIDS:
            (self.folder / f"{name}.npy").unlink(missing_ok=True)
        self.frames_path.unlink(missing_ok=True)


def _frames_timed(frames, timing: dict):
    """Iterate ``frames``, adding the time spent waiting for each to ``timing["decode_wait"]``."""
    it = iter(frames)
    while True:
        t0 = time.perf_counter()
        try:
            frame = next(it)
        except StopIteration:
            return
        finally:
            timing["decode_wait"] += time.perf_counter() - t0
        yield frame


def _variable_rate(times: list[float], fps: float) -> bool:
    """Whether the frames' times step unevenly: some step more than 10 % off the mean frame rate's
    period (phones record at a variable rate; ``time_s`` then follows the frames' own times)."""
    steps = np.diff(np.asarray(times, float))
    return bool(steps.size) and bool(np.any(np.abs(steps * fps - 1.0) > 0.1))


def _mean_rate(times: list[float], declared: float) -> float:
    """Frames per second over the frames' own times: a file whose frames are sparser or denser
    than its header says (an AVI with dropped frames declares 15 fps and holds 68 frames over 29.5
    s) is read at its real mean rate; ``declared`` where the times span nothing."""
    span = float(times[-1] - times[0]) if len(times) > 1 else 0.0
    return (len(times) - 1) / span if span > 0 else declared


def _summary_title(n: int, info, variable: bool = False, fps: float | None = None) -> str:
    """summary.png's title; where the frames were shrunk, the size its speeds are in (a 1280x720
    video's 4 px/frame read as '2 px/frame' under a title of 1280x720)."""
    fps = info.fps if fps is None else fps
    rate = f"a variable {fps:.3g} fps on average" if variable else f"{fps:.3g} fps"
    title = f"{n} frames, {info.width}x{info.height} at {rate}"
    if (info.out_width, info.out_height) != (info.width, info.height):
        title += f"; speeds in px of the {info.out_width}x{info.out_height} frames analysed"
    return title


def _decode_warnings(frames: int, declared: int, stopped_at_cap: bool) -> list[str]:
    """What a user should know about the decoding: a file that ended well before the frames its
    container declares is likely damaged or cut (its results cover only the frames read)."""
    short = declared - frames
    if stopped_at_cap or declared <= 0 or short <= max(2, 0.02 * declared):
        return []
    return [
        f"decoding ended after {frames} of the {declared} frames the file declares: it may be "
        "damaged or cut short, and the results cover only the frames read"
    ]


def process_video(
    input_path: Path,
    out_dir: Path,
    engine_factory: Callable[[], Engine],
    limits: Limits,
    progress_cb: Callable[[int, int], None] | None = None,
    *,
    overlay: bool | None = None,
) -> dict:
    """Compute the motion map of a video and write the results.

    Parameters
    ----------
    input_path : Path
        The video (for uploads: the generated name in the job folder).
    out_dir : Path
        Results folder (its parent must exist); written as ``<out_dir>.tmp`` and renamed when
        complete, so it either holds every result file or does not exist.
    engine_factory : callable
        ``engine_factory()`` returns a motion engine (``new_state``, ``run``, ``direction_bins``).
    limits : Limits
    progress_cb : callable(frames_done, frames_total), optional
        Called a few times a second. ``frames_total`` is the container's frame count capped by the
        limits, an estimate; the last call has the true count.
    overlay : bool, optional
        Write ``overlay.mp4``; default ``limits.overlay``.

    Returns
    -------
    dict
        JSON-able description of the run (also written to ``result.json``).

    Raises
    ------
    v1motion.service.jobs.decode.DecodeError
        The file was refused or could not be decoded; the message is meant for the user.
    """
    from v1motion.service.render import summary_figure

    input_path, out_dir = Path(input_path), Path(out_dir)
    overlay = limits.overlay if overlay is None else overlay
    codec = overlay_codec(limits.overlay_codec) if overlay else None  # result.json says which
    folder = ResultsFolder(out_dir)
    work = folder.begin()
    t0 = time.perf_counter()
    results = writer = keeper = None
    timing = {"decode_wait": 0.0, "engine": 0.0}
    try:
        try:
            container = sniff_file(input_path)
        except UnsupportedContainer as exc:
            raise VideoRejected(str(exc)) from None
        engine = engine_factory()
        t0 = time.perf_counter()  # the job's own time, not the engine's one-off loading
        state = engine.new_state()
        summary = MotionSummary(n_bins=len(engine.direction_bins))
        with SandboxedDecoder(input_path, limits) as dec:
            info = dec.info
            total = min(info.declared_frames or info.max_frames, info.max_frames)
            results = _Results(work, info.max_frames, info.fps, summary, dec.frame_times)
            keeper = _Stage("motion-results", results.add)
            if overlay:
                size = (info.out_width, info.out_height)
                writer = _OverlayWriter(work / "overlay.mp4", info.fps, size, codec)
            last = 0.0
            # The engine takes the frames itself (``Engine.run``: it may encode a few frames
            # ahead while it reads another); `pulled` pairs each motion frame with its frame.
            pulled: collections.deque = collections.deque()

            def feed():
                for frame in _frames_timed(dec.frames(), timing):
                    pulled.append(frame)
                    yield frame

            motion = engine.run(state, feed())
            try:
                done = 0
                while True:
                    t_step, waited = time.perf_counter(), timing["decode_wait"]
                    try:
                        mf = next(motion)
                    except StopIteration:
                        break
                    except ValueError as exc:  # the engine names what is wrong with the frame
                        raise VideoRejected(f"frame {done + 1}: {exc}") from None
                    # the engine's time, without the decoder's (it is waited for inside the engine)
                    timing["engine"] += (
                        time.perf_counter() - t_step - (timing["decode_wait"] - waited)
                    )
                    frame = pulled.popleft()
                    done += 1
                    keeper.put(mf)
                    if writer is not None:
                        writer.write(frame, mf, dec.frame_times[done - 1])
                    now = time.perf_counter()
                    if progress_cb is not None and now - last >= PROGRESS_INTERVAL_S:
                        last = now
                        progress_cb(dec.frames_decoded, max(total, dec.frames_decoded))
            finally:  # its helper thread (if any) is joined here, not at garbage collection
                motion.close()
            keeper, k = None, keeper
            k.close()
            timing["results"] = k.seconds
            if writer is not None:
                writer, w = None, writer
                w.close()
                timing["overlay_draw"] = w.draw.seconds
                timing["overlay_encode"] = w.encode.seconds
            n = dec.frames_decoded
            stopped_at_cap = dec.stopped_at_cap
        if n == 0:
            raise VideoRejected("no frame could be decoded: the file is truncated or damaged")
        if n == 1:
            raise VideoRejected(
                "the video has one frame: motion is read between frames, so it needs at least two"
            )
        warnings = _decode_warnings(n, info.declared_frames, stopped_at_cap)
        times = results.times[:n]
        variable = _variable_rate(times, info.fps)
        fps = _mean_rate(times, info.fps) if variable else info.fps
        if progress_cb is not None:
            progress_cb(n, n)
        t_write = time.perf_counter()
        arrays = results.arrays()
        main = summary.main_directions_
        arrays.update(
            time_s=np.asarray(times, dtype=np.float64),
            fps=np.asarray(fps, dtype=np.float64),
            processed_width=np.asarray(info.out_width, dtype=np.int32),
            processed_height=np.asarray(info.out_height, dtype=np.int32),
            cell_px=np.asarray(results.cell, dtype=np.int32),
            direction_bins_deg=np.degrees(np.asarray(engine.direction_bins, np.float64)).astype(
                np.float32
            ),
            speed_bins_px_per_frame=np.asarray(engine.speed_bins, dtype=np.float32),
            video_direction_hist=summary.direction_hist_.astype(np.float32),
            video_direction_bins_deg=np.degrees(summary.bin_centres_).astype(np.float32),
            speed_over_time_px_per_frame=summary.speed_over_time_.astype(np.float32),
            main_directions_deg=np.asarray(
                [np.nan if m["direction_deg"] is None else m["direction_deg"] for m in main],
                dtype=np.float32,
            ),
            main_directions_share=np.asarray([m["share"] for m in main], dtype=np.float32),
            main_directions_median_speed_px_per_frame=np.asarray(
                [m["median_speed_px_per_frame"] for m in main], dtype=np.float32
            ),
        )
        video = {
            "container": container,
            "codec": info.codec,
            "width": info.width,
            "height": info.height,
            "fps": fps,
            "processed_width": info.out_width,
            "processed_height": info.out_height,
            "cell_px": results.cell,
            "frames": n,
            "declared_frames": info.declared_frames,
            "stopped_at_cap": stopped_at_cap,
            "variable_frame_rate": variable,
            "warnings": warnings,
        }
        np.savez_compressed(work / "motion.npz", **arrays)
        timing["write_npz"] = time.perf_counter() - t_write
        t_write = time.perf_counter()
        results.write_motion_json(work / "motion.json", video, summary.to_dict())
        timing["write_json"] = time.perf_counter() - t_write
        t_write = time.perf_counter()
        summary_figure(
            work / "summary.png",
            summary.bin_centres_,
            summary.direction_hist_,
            summary.speed_over_time_,
            fps,
            title=_summary_title(n, info, variable, fps),
            main_directions=main,
            times=times,
        )
        timing["write_png"] = time.perf_counter() - t_write
        results.remove()
        elapsed = time.perf_counter() - t0
        result = dict(
            video,
            main_directions=main,
            processing_seconds=round(elapsed, 3),
            processed_frames_per_second=round(n / elapsed, 2),
            stage_seconds={k: round(v, 3) for k, v in timing.items()},
            overlay=bool(overlay),
            overlay_codec=codec,
            units=UNITS,
        )
        (work / "result.json").write_text(json.dumps(result, indent=1))
        folder.publish()
        # a job's upload has one name (INPUT_NAME): its folder, the job id, names it
        name = input_path.parent.name if input_path.name == INPUT_NAME else input_path.name
        log.info("processed %s: %d frames in %.1f s", name, n, elapsed)
        return result
    except BaseException:
        for stage in (keeper, writer):
            if stage is not None:
                # on a full disk the overlay's encoder fails again as it closes: the clean-up
                # goes on (it stopped here, and the result maps stayed mapped, their blocks taken)
                with contextlib.suppress(Exception):
                    stage.close_quietly()
        if results is not None:
            # a read-only or failing disk refuses the clean-up too: the job fails with what went
            # wrong first, not with the clean-up's error (which named a file of the server)
            with contextlib.suppress(OSError):
                results.remove()
        folder.discard()
        raise
