"""Video job throughput: frames processed per second on real clips, as a multiple of real time.

    .venv/bin/python bench/video_jobs.py [--engine default|random] [--only-box] [--max-frames N]

Clips come from ``v1motion.models.datasets.shared_data_dir() / "videos"``: box.mp4 (640x480, 29.97 fps, H.264)
and vtest.avi (768x576, 10 fps, MS-MPEG4; reassembled from its three parts into a temporary file).
Per clip and size, one after another on the same machine:

- each stage on its own, on frames already in memory: decode (the sandboxed child, frames piped to
  this process), engine step (the libraries' default thread pools, then pinned to one thread as the
  video workers run it), overlay drawing, overlay encoding (mp4v, and h264 where PyAV is), the motion.json entry
  (``MotionFrame.to_dict`` + ``protocol.dumps``, as the job writes it) and the summary update;
- full job: ``process_video`` in this process (what ``v1motion motion`` runs), with its own per-stage
  times (``stage_seconds``: the stages overlap on threads, so these are busy times, not a partition);
- full job with the engine replaced by a no-op: what the job machinery costs on its own;
- the service: 1 job through the local worker pool with 1 worker (its engine on two threads, the
  default for one worker on 2 cores), then 2 jobs at once with 2 workers (one engine thread each;
  aggregate frames/s, "x real time" sums both streams), then 1 job on that 2-worker pool; whether
  jobs add up is the ratio of the last two;
- the CLI: ``v1motion motion`` as a command, start-up and engine loading included.

Goal (issue 12): >= 10x real time for 30 fps video, i.e. >= 300 frames/s on the 640x480 clip, and
2 jobs >= 1.5x the throughput of 1.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from v1motion.models.datasets import require_shared_data
from v1motion.models.motion.contract import step_each
from v1motion.service.jobs.decode import SandboxedDecoder
from v1motion.service.jobs.engines import pin_threads, warm_engine
from v1motion.service.jobs.limits import Limits, overlay_codec
from v1motion.service.jobs.process import OVERLAY_WRITERS, process_video
from v1motion.service.settings import Settings


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

    def run(self, state, frames):
        return step_each(self, state, frames)

    def step(self, state, frame):
        from v1motion.models.motion.engine import MotionFrame

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


def engine_only(engine, frames: list, pools: bool = False, run: bool = False) -> tuple[float, list]:
    """Seconds to step every frame, and the motion maps; ``pools``: with BLAS and OpenCV thread
    pools of one thread per core (the libraries' defaults) instead of one thread; ``run``: through
    ``engine.run`` (with two threads, the following frames encoded ahead), as jobs run."""
    import cv2
    from threadpoolctl import threadpool_limits

    n = os.cpu_count() if pools else 1
    with threadpool_limits(limits=n):
        cv2.setNumThreads(n)
        try:
            state = engine.new_state()
            t0 = time.perf_counter()
            maps = (
                list(engine.run(state, frames)) if run else [engine.step(state, f) for f in frames]
            )
            return time.perf_counter() - t0, maps
        finally:
            cv2.setNumThreads(1)


def cpu_seconds() -> float:
    """CPU time of this process (all threads) and of its finished children (the decoders)."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def stages_alone(frames: list, maps: list, fps: float, tmp: Path) -> dict[str, float]:
    """Seconds of each later stage on its own, over all frames."""
    import cv2

    from v1motion.models.motion.motion_summary import MotionSummary
    from v1motion.service import protocol
    from v1motion.service.render import draw_overlay

    out = {}
    t0 = time.perf_counter()
    drawn = [
        draw_overlay(f, m.direction, m.speed, m.confidence, m.cell)
        for f, m in zip(frames, maps, strict=True)
    ]
    out["overlay draw"] = time.perf_counter() - t0
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(tmp / "o.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    t0 = time.perf_counter()
    for d in drawn:
        writer.write(d)
    writer.release()
    out["overlay encode (mp4v)"] = time.perf_counter() - t0
    if overlay_codec("auto") == "h264":
        writer = OVERLAY_WRITERS["h264"](tmp / "o264.mp4", fps, (w, h))
        t0 = time.perf_counter()
        for i, d in enumerate(drawn):
            writer.write(d, i / fps)
        writer.release()
        out["overlay encode (h264)"] = time.perf_counter() - t0
    del drawn
    t0 = time.perf_counter()
    for m in maps:
        protocol.dumps(m.to_dict())
    out["motion.json entry"] = time.perf_counter() - t0
    summary = MotionSummary()
    t0 = time.perf_counter()
    for m in maps:
        summary.update(m.direction, m.speed, m.confidence)
    out["summary update"] = time.perf_counter() - t0
    return out


def through_pool(
    clip: Path, tmp: Path, engine_name: str, limits: Limits, n: int, workers: int | None = None
) -> tuple[int, float]:
    """``n`` uploads of ``clip`` at once through the local worker pool with ``workers`` (default
    ``n``) warm workers, each engine with the service's default threads for that many workers:
    total frames, seconds."""
    from v1motion.service.jobs.engines import engine_factory
    from v1motion.service.jobs.manager import VideoJobs

    workers = n if workers is None else workers
    threads = Settings(video_workers=workers).video_engine_threads
    folder = tmp / f"service{n}-{workers}"
    jobs = VideoJobs.local(
        folder, limits, engine_factory(engine_name, threads), workers=workers, lazy=False
    )
    jobs.start()
    try:
        while len(jobs.runner.worker_pids()) < workers:  # engines built and warm
            time.sleep(0.2)
        ids = []
        t0 = time.perf_counter()
        for _ in range(n):
            job_id, job_folder = jobs.new_folder()
            shutil.copy(clip, job_folder / "input.bin")
            jobs.submit(job_id, clip.name, "video/mp4", clip.stat().st_size)
            ids.append(job_id)
        while any(jobs.get(i).status in ("queued", "running") for i in ids):
            time.sleep(0.05)
        seconds = time.perf_counter() - t0
        bad = [jobs.get(i).error for i in ids if jobs.get(i).status != "succeeded"]
        if bad:
            raise RuntimeError(f"a benchmark job failed: {bad}")
        return sum(jobs.get(i).frames_done for i in ids), seconds
    finally:
        jobs.stop()
        shutil.rmtree(folder, ignore_errors=True)


def cli_run(clip: Path, tmp: Path, engine_name: str, limits: Limits) -> tuple[int, float]:
    """``v1motion motion`` as a command: frames, wall seconds including start-up."""
    import subprocess
    import sys

    out = tmp / "cli"
    cmd = [sys.executable, "-m", "v1motion.service.cli", "motion", str(clip), "-o", str(out)]
    cmd += ["--engine", engine_name, "--max-frames", str(limits.max_frames)]
    if limits.max_side != Limits().max_side:
        cmd += ["--max-side", str(limits.max_side)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    seconds = time.perf_counter() - t0
    frames = json.loads((out / "result.json").read_text())["frames"]
    shutil.rmtree(out)
    return frames, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", choices=("default", "random"), default="default")
    ap.add_argument("--max-frames", type=int, default=300)
    ap.add_argument("--only-box", action="store_true", help="skip vtest.avi (a shorter run)")
    ap.add_argument("--sides", default="native,320", help="frame sizes: native and/or longer sides")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here as JSON")
    args = ap.parse_args()
    name = args.engine
    pin_threads(1)  # as the video workers and the CLI run
    threads = Settings().video_engine_threads  # a job's engine as the service builds it alone
    try:
        engine, job_engine = warm_engine(name), warm_engine(name, threads)
    except FileNotFoundError as exc:
        print(f"default engine unavailable ({exc}); using the random engine")
        name = "random"
        engine, job_engine = warm_engine(name), warm_engine(name, threads)
    videos = require_shared_data("videos")
    tmp = Path(tempfile.mkdtemp(prefix="v1motion-bench-"))
    clips = [videos / "box.mp4"] + ([] if args.only_box else [vtest_path(videos, tmp)])
    base = Limits(max_frames=args.max_frames)
    sides = [None if s == "native" else int(s) for s in args.sides.split(",")]
    print(
        f"engine: {name}; at most {args.max_frames} frames per clip; {os.cpu_count()} cores, shared; "
        f"a job's engine: {threads} thread(s), as the service's default with one worker"
    )
    print(f"load average at start: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(
        f"{'clip':10} {'size':>9} {'row':44} {'frames':>6} {'s':>7} {'frames/s':>9} {'x real time':>11}"
    )

    rows = []

    def row(clip, size, label, n, seconds, *, fps):
        rate = n / seconds if seconds > 0 else float("inf")
        print(
            f"{clip:10} {size:>9} {label:44} {n:6d} {seconds:7.2f} {rate:9.1f} {rate / fps:10.2f}x"
        )
        rows.append({"clip": clip, "size": size, "row": label, "frames": n, "seconds": seconds,
                     "frames_per_s": rate, "x_real_time": rate / fps})  # fmt: skip
        return rate

    try:
        for clip in clips:
            for side in sides:
                limits = base if side is None else replace(base, max_side=side)
                n, s, fps, frames = decode_only(clip, limits)
                size = f"{frames[0].shape[1]}x{frames[0].shape[0]}"
                r = functools.partial(row, clip.name, size, fps=fps)
                r("stage alone: decode (sandboxed child)", n, s)
                s, maps = engine_only(engine, frames, pools=True)
                r("stage alone: engine (thread pools, 1/core)", n, s)
                s, maps = engine_only(engine, frames)
                r("stage alone: engine (1 thread)", n, s)
                if threads > 1:
                    s, maps = engine_only(job_engine, frames, run=True)
                    r(f"stage alone: engine ({threads} threads, as jobs run)", n, s)
                for label, sec in stages_alone(frames, maps, fps, tmp).items():
                    r(f"stage alone: {label}", n, sec)
                del frames, maps
                out = tmp / "out"
                cpu0 = cpu_seconds()
                t0 = time.perf_counter()
                res = process_video(clip, out, lambda: job_engine, limits)
                wall = time.perf_counter() - t0
                r("full job (process_video, as the CLI)", res["frames"], wall)
                cpu = cpu_seconds() - cpu0
                print(
                    f"{'':21}CPU of that job (all threads + decoder child): {cpu:.2f} s = "
                    f"{cpu / wall:.2f} cores busy; {res['frames'] / cpu:.1f} frames per CPU-second, "
                    f"so 2 free cores could do {2 * res['frames'] / cpu:.0f} frames/s"
                )
                for stage, sec in res["stage_seconds"].items():
                    r(f"  in the job, busy in {stage}", res["frames"], sec)
                if res["overlay_codec"] == "h264":
                    t0 = time.perf_counter()
                    mp4v = replace(limits, overlay_codec="mp4v")
                    res = process_video(clip, out, lambda: job_engine, mp4v)
                    r("full job, overlay.mp4 in mp4v", res["frames"], time.perf_counter() - t0)
                t0 = time.perf_counter()
                res = process_video(clip, out, lambda: job_engine, limits, overlay=False)
                r("full job without overlay.mp4", res["frames"], time.perf_counter() - t0)
                shutil.rmtree(out)
                noop = NoOpEngine(engine)
                t0 = time.perf_counter()
                res = process_video(clip, out, lambda: noop, limits)  # noqa: B023
                r("full job, engine replaced by a no-op", res["frames"], time.perf_counter() - t0)
                shutil.rmtree(out)
                if clip != clips[0]:
                    continue
                one = r(
                    "service: 1 job, 1 worker process", *through_pool(clip, tmp, name, limits, 1)
                )
                two = r(
                    "service: 2 jobs at once, 2 workers", *through_pool(clip, tmp, name, limits, 2)
                )
                # whether jobs add up: one job on the same two-worker pool (one engine thread each)
                alone = r(
                    "service: 1 job, 2 workers",
                    *through_pool(clip, tmp, name, limits, 1, workers=2),
                )
                print(
                    f"{'':21}2 jobs / 1 job throughput: {two / alone:.2f} on the same 2-worker "
                    f"pool; {two / one:.2f} against 1 job on the default 1-worker service"
                )
                r("CLI: v1motion motion (with start-up)", *cli_run(clip, tmp, name, limits))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json is not None:
        doc = {"engine": name, "max_frames": args.max_frames, "rows": rows}
        args.json.write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
