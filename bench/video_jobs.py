"""Video job throughput: frames processed per second on real clips, as a multiple of real time.

    .venv/bin/python bench/video_jobs.py [--engine default|random]

Clips come from ``models.datasets.shared_data_dir() / "videos"``: box.mp4 (640x480, 29.97 fps, H.264)
and vtest.avi (768x576, 10 fps, MS-MPEG4; reassembled from its three parts into a temporary file).
Rows, each in this process, one after another on the same machine (2 cores):

- decode only: the sandboxed decoder child, frames piped to this process and dropped;
- engine only: ``engine.step`` on the decoded frames already in memory;
- full job: ``process_video`` (decode child + engine + summaries + overlay.mp4 + motion.json/npz +
  summary.png), at the native size and with frames shrunk to a longer side of 320 px;
- full job with the engine replaced by a no-op: what the job machinery costs on its own;
- 2 jobs at once: two copies of box.mp4 through the local worker pool with 2 worker processes
  (aggregate frames/s; the multiple of real time is per 30 fps stream summed over both).

Goal (issue 4): >= 10x real time for 30 fps video, i.e. >= 300 frames/s on the 640x480 clip.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from models.datasets import require_shared_data
from service.jobs.decode import SandboxedDecoder
from service.jobs.engines import make_engine
from service.jobs.limits import Limits
from service.jobs.process import process_video


def vtest_path(videos: Path, folder: Path) -> Path:
    """Concatenate vtest.avi.part0..2 into ``folder``."""
    out = folder / "vtest.avi"
    with open(out, "wb") as f:
        for part in sorted(videos.glob("vtest.avi.part*")):
            f.write(part.read_bytes())
    return out


class NoOpEngine:
    """Stands in for the engine to measure what the job machinery itself costs: constant motion maps
    of the real grid size (half the cells confident, so the overlay draws arrows)."""

    cell = 16

    def __init__(self, engine):
        self.direction_bins, self.speed_bins = engine.direction_bins, engine.speed_bins
        self._frames = {}

    def new_state(self):
        return None

    def step(self, state, frame):
        from models.engine import MotionFrame

        shape = (frame.shape[0] // self.cell, frame.shape[1] // self.cell)
        if shape not in self._frames:
            conf = np.zeros(shape, np.float32)
            conf[:, ::2] = 0.8
            self._frames[shape] = MotionFrame(
                np.full(shape, 0.5, np.float32), np.full(shape, 2.0, np.float32), conf,
                self.cell, np.ones(len(self.direction_bins), np.float32),
                np.ones(len(self.speed_bins), np.float32), [], 0.5, 2.0, 0.4, 1.0,
            )  # fmt: skip
        return self._frames[shape]


def decode_only(path: Path, limits: Limits) -> tuple[int, float, float, list]:
    t0 = time.perf_counter()
    frames = []
    with SandboxedDecoder(path, limits) as dec:
        fps = dec.info.fps
        for f in dec.frames():
            frames.append(f.copy())
    return len(frames), time.perf_counter() - t0, fps, frames


def engine_only(engine, frames: list) -> float:
    state = engine.new_state()
    t0 = time.perf_counter()
    for f in frames:
        engine.step(state, f)
    return time.perf_counter() - t0


def two_jobs_at_once(clip: Path, tmp: Path, engine_name: str, limits: Limits) -> tuple[int, float]:
    """Two uploads of ``clip`` through the local worker pool with 2 workers: total frames, seconds."""
    from service.jobs.engines import engine_factory
    from service.jobs.manager import VideoJobs

    jobs = VideoJobs.local(
        tmp / "service", limits, engine_factory(engine_name), workers=2, lazy=False
    )
    jobs.start()
    try:
        while len(jobs.runner.worker_pids()) < 2:  # engines built and warm
            time.sleep(0.2)
        ids = []
        t0 = time.perf_counter()
        for _ in range(2):
            job_id, folder = jobs.new_folder()
            shutil.copy(clip, folder / "input.bin")
            jobs.submit(job_id, clip.name, "video/mp4", clip.stat().st_size)
            ids.append(job_id)
        while any(jobs.get(i).status in ("queued", "running") for i in ids):
            time.sleep(0.05)
        seconds = time.perf_counter() - t0
        return sum(jobs.get(i).frames_done for i in ids), seconds
    finally:
        jobs.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", choices=("default", "random"), default="default")
    ap.add_argument("--max-frames", type=int, default=600)
    ap.add_argument("--only-box", action="store_true", help="skip vtest.avi (a shorter run)")
    args = ap.parse_args()
    name = args.engine
    try:
        engine = make_engine(name)
    except FileNotFoundError as exc:
        print(f"default engine unavailable ({exc}); using the random engine")
        name, engine = "random", make_engine("random")
    videos = require_shared_data("videos")
    tmp = Path(tempfile.mkdtemp(prefix="v1motion-bench-"))
    clips = [videos / "box.mp4"] + ([] if args.only_box else [vtest_path(videos, tmp)])
    base = Limits(max_frames=args.max_frames)
    print(f"engine: {name}; at most {args.max_frames} frames per clip; 2 cores shared machine")
    print(
        f"{'clip':10} {'size':>9} {'row':34} {'frames':>6} {'s':>7} {'frames/s':>9} {'x real time':>11}"
    )

    def row(clip, size, label, n, seconds, fps):
        rate = n / seconds
        print(
            f"{clip:10} {size:>9} {label:34} {n:6d} {seconds:7.2f} {rate:9.1f} {rate / fps:10.1f}x"
        )

    try:
        for clip in clips:
            for side in (None, 320):
                limits = base if side is None else replace(base, max_side=side)
                n, s, fps, frames = decode_only(clip, limits)
                size = f"{frames[0].shape[1]}x{frames[0].shape[0]}"
                row(clip.name, size, "decode only (sandboxed child)", n, s, fps)
                row(clip.name, size, "engine only", n, engine_only(engine, frames), fps)
                del frames
                out = tmp / "out"
                t0 = time.perf_counter()
                res = process_video(clip, out, lambda: engine, limits)
                row(
                    clip.name,
                    size,
                    "full job (process_video)",
                    res["frames"],
                    time.perf_counter() - t0,
                    fps,
                )
                t0 = time.perf_counter()
                res = process_video(clip, out, lambda: engine, limits, overlay=False)
                row(
                    clip.name,
                    size,
                    "full job without overlay.mp4",
                    res["frames"],
                    time.perf_counter() - t0,
                    fps,
                )
                shutil.rmtree(out)
                noop = NoOpEngine(engine)
                t0 = time.perf_counter()
                res = process_video(clip, out, lambda: noop, limits)  # noqa: B023
                row(
                    clip.name,
                    size,
                    "full job, engine replaced by a no-op",
                    res["frames"],
                    time.perf_counter() - t0,
                    fps,
                )
                shutil.rmtree(out)
        n, seconds = two_jobs_at_once(clips[0], tmp, name, replace(base, max_side=320))
        row(clips[0].name, "320x240", "2 jobs at once, 2 worker processes", n, seconds, 29.97)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
