"""The one job function: a video file in, motion results in a folder out.

Used unchanged by the local worker processes, the Ray tasks and ``v1motion motion``.
"""

from __future__ import annotations

import json
import logging
import queue
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from models.motion_summary import MotionSummary
from service.jobs.decode import SandboxedDecoder, VideoRejected
from service.jobs.limits import Limits
from service.jobs.sniff import UnsupportedContainer, sniff_file

log = logging.getLogger(__name__)

RESULT_FILES = ("motion.json", "motion.npz", "overlay.mp4", "summary.png", "result.json")
PROGRESS_INTERVAL_S = 0.25


def _round_grid(a: np.ndarray, decimals: int) -> list:
    return np.round(a.astype(np.float64), decimals).tolist()


def _write_motion_json(path: Path, video: dict, arrays: dict, summary: dict) -> None:
    """Stream motion.json frame by frame so a long video never sits in memory as one string."""
    n = arrays["direction"].shape[0]
    with open(path, "w") as f:
        f.write('{"video": ' + json.dumps(video) + ', "summary": ' + json.dumps(summary))
        f.write(', "frames": [')
        for i in range(n):
            frame = {
                "index": i,
                "time_s": round(i / video["fps"], 4),
                "direction": _round_grid(arrays["direction"][i], 3),
                "speed": _round_grid(arrays["speed"][i], 3),
                "confidence": _round_grid(arrays["confidence"][i], 3),
                "global_direction": round(float(arrays["global_direction"][i]), 4),
                "global_speed": round(float(arrays["global_speed"][i]), 4),
                "global_confidence": round(float(arrays["global_confidence"][i]), 4),
            }
            f.write(("," if i else "") + json.dumps(frame, separators=(",", ":")))
        f.write("]}\n")


class _OverlayWriter:
    """Draws and encodes overlay frames on a thread (OpenCV releases the GIL), so the engine of the
    next frame runs meanwhile. The queue is bounded: the job never runs ahead by more than a few
    frames."""

    def __init__(self, path: Path, fps: float, size: tuple[int, int]):
        import cv2

        from service.render import draw_overlay

        self._draw = draw_overlay
        self._writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
        if not self._writer.isOpened():
            raise RuntimeError("OpenCV cannot write an mp4v overlay video here")
        self._queue: queue.Queue = queue.Queue(maxsize=4)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="overlay-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is not None:
                continue
            frame, mf = item
            try:
                self._writer.write(
                    self._draw(frame, mf.direction, mf.speed, mf.confidence, mf.cell)
                )
            except BaseException as exc:  # re-raised in the job's thread
                self._error = exc

    def write(self, frame: np.ndarray, mf) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put((frame, mf))

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        self._writer.release()
        if self._error is not None:
            raise self._error

    def close_quietly(self) -> None:
        """Stop after a failure elsewhere; the file is discarded with the work folder."""
        self._error = self._error or RuntimeError("closed")
        self._queue.put(None)
        self._thread.join()
        self._writer.release()


class _Grids:
    """Per-frame grids appended to memory-mapped .npy files in the work folder (long videos stay off
    the heap); sized for the frame cap, trimmed when saved."""

    NAMES = ("direction", "speed", "confidence")

    def __init__(self, folder: Path, capacity: int):
        self.folder, self.capacity = folder, capacity
        self.maps: dict[str, np.ndarray] = {}
        self.n = 0

    def append(self, mf) -> None:
        if not self.maps:
            for name in self.NAMES:
                shape = (self.capacity,) + getattr(mf, name).shape
                self.maps[name] = np.lib.format.open_memmap(
                    self.folder / f"{name}.npy", mode="w+", dtype=np.float16, shape=shape
                )
        for name in self.NAMES:
            self.maps[name][self.n] = getattr(mf, name)
        self.n += 1

    def trimmed(self) -> dict[str, np.ndarray]:
        return {name: m[: self.n] for name, m in self.maps.items()}

    def remove(self) -> None:
        self.maps.clear()
        for name in self.NAMES:
            (self.folder / f"{name}.npy").unlink(missing_ok=True)


def process_video(
    input_path: Path,
    out_dir: Path,
    engine_factory: Callable[[], object],
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
        ``engine_factory()`` returns a motion engine (``new_state``, ``step``, ``direction_bins``).
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
    service.jobs.decode.DecodeError
        The file was refused or could not be decoded; the message is meant for the user.
    """
    from service.render import summary_figure

    input_path, out_dir = Path(input_path), Path(out_dir)
    overlay = limits.overlay if overlay is None else overlay
    work = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()  # the parent must exist: a deleted job's folder is never brought back
    t0 = time.perf_counter()
    grids = _Grids(work, 1)
    writer = None
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
            grids.capacity = info.max_frames
            glob = {k: [] for k in ("global_direction", "global_speed", "global_confidence")}
            dir_hist, speed_hist = [], []
            if overlay:
                size = (info.out_width, info.out_height)
                writer = _OverlayWriter(work / "overlay.mp4", info.fps, size)
            last = 0.0
            cell = None
            for frame in dec.frames():
                try:
                    mf = engine.step(state, frame)
                except ValueError as exc:  # the engine names what is wrong with the frame
                    raise VideoRejected(f"frame {dec.frames_decoded}: {exc}") from None
                cell = mf.cell
                grids.append(mf)
                summary.update(mf.direction, mf.speed, mf.confidence)
                for k, v in glob.items():
                    v.append(getattr(mf, k))
                dir_hist.append(mf.direction_hist)
                speed_hist.append(mf.speed_hist)
                if writer is not None:
                    writer.write(frame, mf)
                now = time.perf_counter()
                if progress_cb is not None and now - last >= PROGRESS_INTERVAL_S:
                    last = now
                    progress_cb(dec.frames_decoded, max(total, dec.frames_decoded))
            if writer is not None:
                writer, w = None, writer
                w.close()
            n = dec.frames_decoded
            stopped_at_cap = dec.stopped_at_cap
        if n == 0:
            raise VideoRejected("no frame could be decoded: the file is truncated or damaged")
        if progress_cb is not None:
            progress_cb(n, n)
        arrays = grids.trimmed()
        arrays.update({k: np.asarray(v, dtype=np.float32) for k, v in glob.items()})
        arrays["direction_hist"] = np.asarray(dir_hist, dtype=np.float32)
        arrays["speed_hist"] = np.asarray(speed_hist, dtype=np.float32)
        arrays["direction_bins"] = np.asarray(engine.direction_bins, dtype=np.float32)
        arrays["speed_bins"] = np.asarray(engine.speed_bins, dtype=np.float32)
        arrays["video_direction_hist"] = summary.direction_hist_.astype(np.float32)
        arrays["video_direction_bins"] = summary.bin_centres_.astype(np.float32)
        arrays["speed_over_time"] = summary.speed_over_time_.astype(np.float32)
        video = {
            "container": container,
            "codec": info.codec,
            "width": info.width,
            "height": info.height,
            "fps": info.fps,
            "processed_width": info.out_width,
            "processed_height": info.out_height,
            "speed_unit": "pixels of the processed frame per frame",
            "cell": cell,
            "frames": n,
            "declared_frames": info.declared_frames,
            "stopped_at_cap": stopped_at_cap,
        }
        np.savez_compressed(work / "motion.npz", **arrays)
        summary_dict = summary.to_dict()
        _write_motion_json(work / "motion.json", video, arrays, summary_dict)
        summary_figure(
            work / "summary.png",
            summary.bin_centres_,
            summary.direction_hist_,
            summary.speed_over_time_,
            info.fps,
            title=f"{n} frames, {info.width}x{info.height} at {info.fps:.3g} fps",
        )
        grids.remove()
        elapsed = time.perf_counter() - t0
        result = dict(
            video,
            seconds=round(elapsed, 3),
            frames_per_second=round(n / elapsed, 2),
            dominant_direction_deg=summary_dict["dominant_direction_deg"],
        )
        (work / "result.json").write_text(json.dumps(result, indent=1))
        shutil.rmtree(out_dir, ignore_errors=True)
        work.rename(out_dir)
        log.info("processed %s: %d frames in %.1f s", input_path.name, n, elapsed)
        return result
    except BaseException:
        if writer is not None:
            writer.close_quietly()
        grids.remove()
        shutil.rmtree(work, ignore_errors=True)
        raise
