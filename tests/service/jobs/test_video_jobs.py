"""The job function, the SQLite store, the local worker pool and restart recovery."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import video_samples as vs
from engine_double import (
    FakeEngine,
    disk_full_engine,
    fake_engine,
    hanging_fake_engine,
    slow_fake_engine,
)

from v1motion.models.motion.engine import MotionFrame
from v1motion.service.jobs.decode import DecodeError
from v1motion.service.jobs.layout import RESULT_FILES, JobLayout
from v1motion.service.jobs.limits import Limits
from v1motion.service.jobs.manager import VideoJobs
from v1motion.service.jobs.process import process_video
from v1motion.service.jobs.store import JobStore


def wait_for(predicate, timeout=60.0, every=0.1):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("timed out waiting")


# ------------------------------------------------------------------------------ process_video


def test_process_video_writes_every_result(tmp_path):
    src = tmp_path / "input.bin"
    src.write_bytes(vs.avi(tmp_path, n=12))
    calls = []
    out = tmp_path / "out"
    result = process_video(src, out, fake_engine, Limits(), lambda d, t: calls.append((d, t)))
    assert sorted(p.name for p in out.iterdir()) == sorted(RESULT_FILES)
    assert not (tmp_path / "out.tmp").exists()
    assert result["frames"] == 12 and calls[-1] == (12, 12)

    npz = np.load(out / "motion.npz")
    grids = ("direction_deg", "speed_px_per_frame", "confidence")
    assert {npz[k].shape for k in grids} == {(12, 4, 6)}
    assert npz["speed_over_time_px_per_frame"].shape == (12,)
    assert npz["direction_hist"].shape == (12, 8) and int(npz["cell_px"]) == 16
    # a time axis and the frame size the speeds are in, without motion.json or result.json
    assert float(npz["fps"]) == pytest.approx(result["fps"])
    np.testing.assert_allclose(npz["time_s"], np.arange(12) / result["fps"], atol=1e-6)
    size = (int(npz["processed_width"]), int(npz["processed_height"]))
    assert size == (result["processed_width"], result["processed_height"])
    assert npz["video_direction_hist"].sum() == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(npz["direction_bins_deg"], np.arange(8) * 45.0)

    doc = json.loads((out / "motion.json").read_text())
    assert doc["video"]["frames"] == 12 and len(doc["frames"]) == 12
    frame = doc["frames"][3]
    assert frame["index"] == 3 and frame["cell_px"] == 16
    # the same speeds: to 2 decimals in motion.json, float16 in motion.npz
    speed = npz["speed_px_per_frame"][3]
    assert np.allclose(frame["speed_px_per_frame"], speed, atol=0.005, rtol=1e-3)
    assert np.allclose(frame["direction_deg"], 0.0)  # the double always says "right"
    [main] = doc["summary"]["main_directions"]
    assert main["direction_deg"] == 0.0 and main["share"] == 1.0
    assert result["main_directions"] == doc["summary"]["main_directions"]
    assert "dominant_direction_deg" not in result and "speed_px_per_frame" in result["units"]
    assert set(result["stage_seconds"]) >= {"decode_wait", "engine", "results", "overlay_draw"}

    assert (out / "summary.png").read_bytes()[:4] == b"\x89PNG"
    cap = cv2.VideoCapture(str(out / "overlay.mp4"))
    n = 0
    while cap.read()[0]:
        n += 1
    assert n == 12 and cap.get(cv2.CAP_PROP_FRAME_WIDTH) == 96


def _fourcc(path) -> str:
    code = int(cv2.VideoCapture(str(path)).get(cv2.CAP_PROP_FOURCC)) & 0xFFFFFFFF
    return code.to_bytes(4, "little").decode("latin-1").lower()


@pytest.mark.parametrize("codec, fourccs", [("h264", {"h264", "avc1"}), ("mp4v", {"mp4v", "fmp4"})])
def test_the_overlay_is_h264_that_browsers_play_or_mp4v_if_asked(tmp_path, codec, fourccs):
    """overlay.mp4 was MPEG-4 Part 2 only, which no browser plays; H.264 by default now. Odd sides
    lose their last row or column (4:2:0 colour), the frames stay whole otherwise."""
    src = tmp_path / "input.bin"
    src.write_bytes(vs.avi(tmp_path, n=8, size=(97, 67)))
    out = tmp_path / "out"
    result = process_video(src, out, fake_engine, Limits(overlay_codec=codec))
    assert _fourcc(out / "overlay.mp4") in fourccs and result["overlay_codec"] == codec
    cap = cv2.VideoCapture(str(out / "overlay.mp4"))
    assert (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (96, 66)
    n = 0
    while cap.read()[0]:
        n += 1
    assert n == 8


@pytest.mark.skipif(
    __import__("numba").config.NUMBA_NUM_THREADS < 2, reason="needs NUMBA_NUM_THREADS >= 2"
)
def test_a_job_on_two_engine_threads_writes_the_one_thread_motion(tmp_path):
    """With two threads the engine reads each frame while it encodes the next (``Engine.run``):
    every motion map and the overlay are those of one thread, frame for frame."""
    from v1motion.models.motion.engine import MotionEngine

    src = tmp_path / "input.bin"
    src.write_bytes(vs.avi(tmp_path, n=12, size=(128, 96)))
    out = {}
    for threads in (1, 2):
        engine = MotionEngine.random(seed=0, levels=2, threads=threads)
        out[threads] = tmp_path / f"out{threads}"
        result = process_video(src, out[threads], lambda e=engine: e, Limits())
        assert result["frames"] == 12
    one, two = (np.load(out[t] / "motion.npz") for t in (1, 2))
    assert set(one.files) == set(two.files)
    for key in one.files:
        np.testing.assert_array_equal(one[key], two[key], err_msg=key)
    assert one["confidence"].max() > 0  # something was read, not only the first frame
    frames = {}
    for t in (1, 2):
        cap = cv2.VideoCapture(str(out[t] / "overlay.mp4"))
        frames[t] = []
        while (ok := cap.read())[0]:
            frames[t].append(ok[1])
    assert len(frames[1]) == len(frames[2]) == 12
    for a, b in zip(frames[1], frames[2], strict=True):
        np.testing.assert_array_equal(a, b)


class _PickyEngine(FakeEngine):
    """The double, refusing the fifth frame it is given, as the engine refuses a frame it cannot
    analyse."""

    def step(self, state, frame):
        state.seen = getattr(state, "seen", 0) + 1
        if state.seen == 5:
            raise ValueError("frame contains NaN or infinite values")
        return super().step(state, frame)


def test_a_frame_the_engine_refuses_fails_the_job_naming_the_frame(tmp_path):
    src = tmp_path / "input.bin"
    src.write_bytes(vs.avi(tmp_path, n=12))
    with pytest.raises(DecodeError, match="^frame 5: frame contains NaN"):
        process_video(src, tmp_path / "out", _PickyEngine, Limits())
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.tmp").exists()


class _EdgyEngine(FakeEngine):
    """The double, its motion made to test the format: directions on both sides of 0 = 360
    degrees, numbers to round, and NaN where only the format reads it (not the video's summary)."""

    def step(self, state, frame):
        t = state.steps = getattr(state, "steps", 0) + 1
        gh, gw = frame.shape[0] // self.CELL, frame.shape[1] // self.CELL
        grid = np.arange(gh * gw, dtype=np.float32).reshape(gh, gw)
        hist = np.linspace(0, 1, self.N_DIR, dtype=np.float32) / 3
        hist[t % self.N_DIR] = np.nan
        return MotionFrame(
            direction=(2 * np.pi - 1e-4 + (grid - 3) * 0.2 * t).astype(np.float32),
            speed=(1.23456 * t + grid / 7).astype(np.float32),
            confidence=np.full((gh, gw), 0.5 + 0.0123 * t, np.float32),
            cell=self.CELL,
            direction_hist=hist,
            speed_hist=np.full(4, 0.123456 * t, np.float32),
            top_units=[(t, 1 / 3), (t + 1, np.nan)],
            global_direction=-1e-3 * t,
            global_speed=1.0 / 3 + t,
            global_confidence=2 / 3,
            active_per_patch=np.nan,
        )


def test_motion_json_frames_carry_the_live_results_motion(tmp_path):
    """One serialiser (``MotionFrame.to_dict``): a video job's frame is ``{"index", "time_s"}`` plus
    exactly the ``motion`` of the live result for the same motion (less the live socket's alias of
    schema version 1, ``global``)."""
    from v1motion.service.live.analyse import Analyser
    from v1motion.service.metrics import Metrics

    src = tmp_path / "input.bin"
    src.write_bytes(vs.avi(tmp_path, n=4))
    process_video(src, tmp_path / "out", _EdgyEngine, Limits(), overlay=False)
    frames = json.loads((tmp_path / "out" / "motion.json").read_text())["frames"]

    live = Analyser(_EdgyEngine(), "s", Metrics())
    image = np.zeros((64, 96, 3), np.uint8)  # the video's size: the double's motion ignores pixels
    for i, frame in enumerate(frames):
        msg = json.loads(live.analyse(image, t_capture=0.0, wall_ms=0.0, dropped=0).text)
        motion = {k: v for k, v in msg["motion"].items() if k != "global"}
        assert frame == {"index": i, "time_s": round(i / 10.0, 4)} | motion
        assert all(0 <= d < 360 for row in frame["direction_deg"] for d in row)
        assert frame["active_per_patch"] == 0.0 and 0.0 in frame["direction_hist"]
    assert len(frames) == 4


def test_motion_npz_directions_stay_below_360(tmp_path):
    """motion.npz keeps its grids in float16, which rounds 359.9 degrees up to 360.0: the docs and
    motion.json say [0, 360)."""
    src = tmp_path / "input.bin"
    src.write_bytes(vs.avi(tmp_path, n=4))
    process_video(src, tmp_path / "out", _EdgyEngine, Limits(), overlay=False)
    with np.load(tmp_path / "out" / "motion.npz") as z:
        d = z["direction_deg"].astype(np.float64)
    assert d.min() >= 0 and d.max() < 360 and (d == 0).any()


def test_a_failure_on_a_stage_thread_fails_the_job_and_leaves_nothing(tmp_path, monkeypatch):
    import v1motion.service.render

    def broken(*args, **kw):
        raise RuntimeError("cannot draw")

    monkeypatch.setattr(v1motion.service.render, "draw_overlay", broken)
    src = tmp_path / "input.bin"
    src.write_bytes(vs.avi(tmp_path, n=12))
    with pytest.raises(RuntimeError, match="cannot draw"):
        process_video(src, tmp_path / "out", fake_engine, Limits())
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.tmp").exists()


def test_process_video_leaves_nothing_when_refused(tmp_path):
    src = tmp_path / "input.bin"
    src.write_bytes(vs.zero_fps_avi(tmp_path))
    with pytest.raises(DecodeError, match="frame rate"):
        process_video(src, tmp_path / "out", fake_engine, Limits())
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.tmp").exists()


def test_a_video_of_one_frame_fails_saying_motion_needs_two(tmp_path):
    src = tmp_path / "input.bin"
    src.write_bytes(vs.avi(tmp_path, n=1))
    with pytest.raises(DecodeError, match="one frame: motion is read between frames"):
        process_video(src, tmp_path / "out", fake_engine, Limits())
    assert not (tmp_path / "out").exists()


def test_a_file_that_ends_before_its_declared_frames_is_warned_about(tmp_path):
    """A damaged or cut file 'succeeded' on the frames it had, without a word (25 of 90 frames)."""
    src = tmp_path / "input.bin"
    src.write_bytes(vs.lying_frame_count_avi(tmp_path, n=12))
    result = process_video(src, tmp_path / "out", fake_engine, Limits())
    assert result["frames"] == 12
    [warning] = result["warnings"]
    assert "ended after 12 of the 10000000 frames the file declares" in warning
    whole = tmp_path / "whole.bin"
    whole.write_bytes(vs.avi(tmp_path, n=12))
    assert process_video(whole, tmp_path / "out2", fake_engine, Limits())["warnings"] == []


# ------------------------------------------------------------------------------------- store


def test_store_is_wal_and_claims_each_job_once(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite3")
    assert store.journal_mode == "wal"
    for i in range(3):
        store.create(f"{i:032x}", "a.mp4", "video/mp4", 10)
    claimed = [store.claim_next() for _ in range(4)]
    assert [c.id[-1] for c in claimed[:3]] == ["0", "1", "2"] and claimed[3] is None
    assert all(c.status == "running" and c.attempts == 1 for c in claimed[:3])


def test_a_full_queue_asks_clients_back_when_a_running_job_should_end(tmp_path):
    """A fixed Retry-After of 30 s left the worker idle between a batch's short jobs."""
    store = JobStore(tmp_path / "jobs.sqlite3")
    jobs = SimpleNamespace(store=store)
    assert VideoJobs.retry_after_s(jobs) == 30  # nothing runs: the longest wait
    for i, total in enumerate((100, 1000)):
        store.create(f"{i:032x}", "a.mp4", "video/mp4", 10, frames_total=total)
    short, long = store.claim_next(), store.claim_next()
    start = max(short.started_at, long.started_at)
    assert VideoJobs.retry_after_s(jobs, now=start + 1) == 30  # no pace yet
    store.set_progress(long.id, 100, 1000)
    assert VideoJobs.retry_after_s(jobs, now=long.started_at + 2) == 18  # 900 frames at 50/s
    store.set_progress(short.id, 20, 100)
    assert VideoJobs.retry_after_s(jobs, now=short.started_at + 2) == 8  # 80 frames at 10/s
    store.set_progress(short.id, 99, 100)
    assert VideoJobs.retry_after_s(jobs, now=short.started_at + 2) == 1  # the shortest
    store.set_progress(long.id, 10, 1000)
    store.set_progress(short.id, 1, 100)
    assert VideoJobs.retry_after_s(jobs, now=start + 10) == 30  # the longest


def test_recover_requeues_then_fails_with_a_reason(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite3")
    store.create("a" * 32, "a.mp4", "video/mp4", 10)
    store.claim_next()
    assert store.recover(max_attempts=2) == (["a" * 32], [])
    assert store.get("a" * 32).status == "queued"
    store.claim_next()
    assert store.recover(max_attempts=2) == ([], ["a" * 32])
    rec = store.get("a" * 32)
    assert rec.status == "failed" and "restart" in rec.error


# ------------------------------------------------------------------------------- worker pool


def _submit(jobs: VideoJobs, data: bytes) -> str:
    job_id, folder = jobs.new_folder()
    (folder / "input.bin").write_bytes(data)
    jobs.submit(job_id, "clip.avi", "video/x-msvideo", len(data))
    return job_id


def _finished(jobs, job_id):
    rec = jobs.get(job_id)
    return rec if rec.status in ("succeeded", "failed") else None


def test_an_idle_worker_stops_and_the_next_job_starts_one(tmp_path, caplog):
    """A video worker holds its engine and decoder (about 330 MB) and stayed for good after one
    upload. It stops after ``idle_exit_s`` without a job; the next job starts a new one."""
    jobs = VideoJobs.local(tmp_path / "data", Limits(), fake_engine, workers=1, idle_exit_s=0.5)
    jobs.start()
    try:
        with caplog.at_level("INFO", logger="v1motion.service.jobs.runners"):
            first = _submit(jobs, vs.avi(tmp_path, n=4))
            wait_for(lambda: _finished(jobs, first))
            assert jobs.get(first).status == "succeeded"
            [pid] = jobs.runner.worker_pids()
            wait_for(lambda: jobs.runner.worker_pids() == [], timeout=10)
            assert not os.path.exists(f"/proc/{pid}") or _zombie(pid)
            second = _submit(jobs, vs.avi(tmp_path, n=4))
            wait_for(lambda: _finished(jobs, second))
            assert jobs.get(second).status == "succeeded"
            assert jobs.runner.worker_pids() not in ([], [pid])
    finally:
        jobs.stop()
    stopped = [r.getMessage() for r in caplog.records if "without a job" in r.getMessage()]
    assert stopped and stopped[0].startswith("local worker 0 stopped after "), stopped


def _zombie(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "Z"


def test_a_failed_job_is_a_warning_and_a_warned_success_says_why(tmp_path, caplog):
    """From the operators' probe: a job failed by a server limit logged at info (nothing at
    V1MOTION_LOG_LEVEL=warning), and a success on 2 of 30 frames said only 'succeeded'."""
    jobs = VideoJobs.local(tmp_path / "data", Limits(), fake_engine, workers=1)
    jobs.start()
    try:
        with caplog.at_level("INFO", logger="v1motion.service.jobs.runners"):
            one = _submit(jobs, vs.avi(tmp_path, n=1))
            cut = _submit(jobs, vs.lying_frame_count_avi(tmp_path, n=12))
            wait_for(lambda: _finished(jobs, one) and _finished(jobs, cut))
    finally:
        jobs.stop()
    ended = {
        r.getMessage(): r.levelname for r in caplog.records if ": started on" not in r.getMessage()
    }
    [(failed, level)] = [(m, lv) for m, lv in ended.items() if m.startswith(f"job {one}")]
    assert level == "WARNING" and "one frame" in failed
    [(warned, level)] = [(m, lv) for m, lv in ended.items() if m.startswith(f"job {cut}")]
    assert level == "INFO" and "succeeded, but decoding ended after 12 of the" in warned


@pytest.fixture
def slow_jobs(tmp_path):
    jobs = VideoJobs.local(tmp_path / "data", Limits(), slow_fake_engine, workers=1)
    jobs.start()
    yield jobs
    jobs.stop()


@pytest.mark.slow
def test_a_dead_worker_fails_its_job_only(tmp_path, slow_jobs):
    jobs = slow_jobs
    victim = _submit(jobs, vs.avi(tmp_path, n=200))
    wait_for(lambda: jobs.get(victim).frames_done > 0)
    os.kill(jobs.runner.worker_pids()[0], signal.SIGKILL)
    rec = wait_for(lambda: _finished(jobs, victim))
    assert rec.status == "failed" and "worker process died" in rec.error
    assert not JobLayout.of(jobs.jobs_dir, victim).results.out.exists()
    assert not (jobs.jobs_dir / victim / "out.tmp").exists()
    good = _submit(jobs, vs.avi(tmp_path, n=6))
    assert wait_for(lambda: _finished(jobs, good)).status == "succeeded"


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="a process's mapped files, Linux")
def test_a_full_disk_fails_the_job_saying_so_and_its_worker_lets_go_of_the_files(tmp_path):
    """A job that met a full disk failed as an "internal error" naming a file of the server, and its
    worker kept the deleted result maps mapped, their blocks taken, so the next jobs failed too."""
    jobs = VideoJobs.local(tmp_path / "data", Limits(), disk_full_engine, workers=1)
    jobs.start()
    try:
        job_id = _submit(jobs, vs.avi(tmp_path, n=30))
        rec = wait_for(lambda: _finished(jobs, job_id))
        assert rec.status == "failed"
        assert (
            rec.error
            == "the server's disk has no room for this video's results; retry once space is freed"
        )
        assert "retry once space is freed" in rec.error and "/srv" not in rec.error
        assert not (jobs.jobs_dir / job_id / "out.tmp").exists()
        (pid,) = jobs.runner.worker_pids()
        maps = Path(f"/proc/{pid}/maps").read_text()
        assert str(jobs.jobs_dir) not in maps, [m for m in maps.splitlines() if "deleted" in m]
    finally:
        jobs.stop()


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="a process's mapped files, Linux")
def test_a_job_that_fails_on_a_full_disk_lets_go_of_its_mapped_files(tmp_path, monkeypatch):
    """On a full disk, closing the overlay's encoder and the frames' part file failed too (each
    writes what it holds), so the clean-up stopped before letting go of the result maps; the failure's traceback and the job's
    threads hold each other, and with them the maps, whose deleted files kept their blocks until a
    full collection, which a worker rarely runs: every job after the first failed for want of the
    room its predecessors still held."""
    import errno
    import gc

    from v1motion.service.jobs import process
    from v1motion.service.jobs.runners import run_job

    def full(name):
        return OSError(errno.ENOSPC, "No space left on device", f"/srv/secret/{name}")

    class FullPartFile:
        def __init__(self, f):
            self.f = f

        def write(self, text):
            return self.f.write(text)

        def close(self):
            self.f.close()
            raise full("frames.jsonl")

    init, add = process._Results.__init__, process._Results.add

    def init_full(self, *args, **kw):
        init(self, *args, **kw)
        self._frames = FullPartFile(self._frames)

    def add_until_full(self, mf):
        add(self, mf)
        if self.n == 5:
            raise full("direction_deg.npy")

    close_quietly = process._OverlayWriter.close_quietly

    def close_quietly_full(self):
        close_quietly(self)
        raise full("overlay.mp4")  # the encoder's trailer, written as it closes

    monkeypatch.setattr(process._Results, "__init__", init_full)
    monkeypatch.setattr(process._Results, "add", add_until_full)
    monkeypatch.setattr(process._OverlayWriter, "close_quietly", close_quietly_full)
    src = tmp_path / "input.bin"
    src.write_bytes(vs.avi(tmp_path, n=12))
    (tmp_path / "job").mkdir()
    gc.disable()  # as a worker between jobs: no collection of its own
    try:
        status, reason = run_job(
            "j", src, tmp_path / "job" / "out", fake_engine(), Limits(), lambda d, t: None
        )
        maps = Path("/proc/self/maps").read_text()
    finally:
        gc.enable()
    assert status == "failed"
    assert (
        reason
        == "the server's disk has no room for this video's results; retry once space is freed"
    )
    assert "/srv" not in reason
    assert str(tmp_path / "job") not in maps, [m for m in maps.splitlines() if "job" in m]
    assert not (tmp_path / "job" / "out.tmp").exists()


def test_the_result_maps_are_allocated_ahead_so_a_full_disk_is_an_error_not_sigbus(
    tmp_path, monkeypatch
):
    """Written through a memory map, a sparse file on a full disk kills the process with SIGBUS
    ("the worker process died (exit code -7)"); its blocks are now allocated 64 frames ahead."""
    import errno

    from v1motion.service import disk

    calls = []

    def fallocate(fd, offset, length):
        calls.append((offset, length))
        if len(calls) > 3:  # the second reservation, from frame 64
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(disk.os, "posix_fallocate", fallocate, raising=False)
    src = tmp_path / "input.bin"
    src.write_bytes(vs.avi(tmp_path, n=70))
    with pytest.raises(OSError) as failed:
        process_video(src, tmp_path / "out", fake_engine, Limits(), overlay=False)
    assert failed.value.errno == errno.ENOSPC
    assert len(calls) == 4  # three maps at frame 0, the first of them at frame 64
    row = calls[0][1] // 64
    assert calls[3][1] == 64 * row and calls[3][0] - calls[0][0] == 64 * row
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.tmp").exists()


@pytest.mark.slow
@pytest.mark.parametrize(("free", "said"), [(10.0, "disk has no room"), (5000.0, "process died")])
def test_a_worker_killed_by_sigbus_on_a_full_disk_fails_its_job_saying_so(
    tmp_path, slow_jobs, monkeypatch, free, said
):
    """Writing through a memory map onto a full disk kills with SIGBUS; with little room left the
    reason says so, otherwise it stays that the worker died."""
    from v1motion.service.jobs import runners

    monkeypatch.setattr(runners, "free_mb", lambda folder: free)
    jobs = slow_jobs
    victim = _submit(jobs, vs.avi(tmp_path, n=200))
    wait_for(lambda: jobs.get(victim).frames_done > 0)
    os.kill(jobs.runner.worker_pids()[0], signal.SIGBUS)
    rec = wait_for(lambda: _finished(jobs, victim))
    assert rec.status == "failed" and said in rec.error


@pytest.mark.slow
def test_deleting_a_running_job_stops_it(tmp_path, slow_jobs, caplog):
    jobs = slow_jobs
    job_id = _submit(jobs, vs.avi(tmp_path, n=400))
    wait_for(lambda: jobs.get(job_id).frames_done > 0)
    with caplog.at_level("INFO", logger="v1motion.service.jobs.manager"):
        assert jobs.delete(job_id)
    assert f"job {job_id} deleted (it was running)" in caplog.text  # it logged nothing
    assert jobs.get(job_id) is None and not (jobs.jobs_dir / job_id).exists()
    time.sleep(0.5)
    assert not (jobs.jobs_dir / job_id).exists()


CRASHING_SERVICE = """
import sys, time
sys.path.insert(0, sys.argv[2])
from engine_double import slow_fake_engine
from v1motion.service.jobs.limits import Limits
from v1motion.service.jobs.manager import VideoJobs
if __name__ == "__main__":
    jobs = VideoJobs.local(sys.argv[1], Limits(), slow_fake_engine, workers=1)
    jobs.start()
    time.sleep(600)
"""


@pytest.mark.slow
def test_restart_requeues_interrupted_jobs_and_they_finish(tmp_path):
    data_dir = tmp_path / "data"
    setup = VideoJobs.local(data_dir, Limits(), fake_engine)  # not started: only to queue a job
    job_id = _submit(setup, vs.avi(tmp_path, n=300))
    setup.store.close()
    script = tmp_path / "crashing_service.py"
    script.write_text(CRASHING_SERVICE)
    tests_dir = str(Path(__file__).resolve().parents[2])  # tests/: the helpers
    proc = subprocess.Popen(
        [sys.executable, str(script), str(data_dir), tests_dir], start_new_session=True
    )
    try:
        watch = JobStore(data_dir / "jobs.sqlite3")
        wait_for(lambda: watch.get(job_id).frames_done > 0)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole service, workers and decoders at once
        proc.wait()
    assert watch.get(job_id).status == "running"
    watch.close()
    orphan = data_dir / "videos" / ("f" * 32)
    orphan.mkdir()  # an upload cut off mid-way: a folder with no record

    second = VideoJobs.local(data_dir, Limits(), fake_engine, workers=1)
    second.start()
    try:
        assert not orphan.exists()
        rec = wait_for(lambda: _finished(second, job_id))
        assert rec.status == "succeeded" and rec.attempts == 2
        assert rec.result["frames"] == 300
    finally:
        second.stop()


STOPPING_SERVICE = """
import signal, sys, threading
sys.path[:0] = [sys.argv[2], sys.argv[3]]
from engine_double import slow_fake_engine
from v1motion.service.jobs.limits import Limits
from v1motion.service.jobs.manager import VideoJobs
if __name__ == "__main__":
    jobs = VideoJobs.local(sys.argv[1], Limits(), slow_fake_engine, workers=1)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())  # as uvicorn does: stop gracefully
    jobs.start()
    stop.wait(600)
    jobs.stop()
"""


_TEST_AND_PROJECT_DIRS = tuple(str(Path(__file__).resolve().parents[i]) for i in (2, 3))


def test_sigterm_to_the_process_group_requeues_the_running_job(tmp_path):
    """``systemctl stop`` signals every process of the service: the worker and its decoder too."""
    data_dir = tmp_path / "data"
    setup = VideoJobs.local(data_dir, Limits(), fake_engine)  # not started: only to queue a job
    job_id = _submit(setup, vs.avi(tmp_path, n=300))
    setup.store.close()
    script = tmp_path / "stopping_service.py"
    script.write_text(STOPPING_SERVICE)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(data_dir), *_TEST_AND_PROJECT_DIRS],
        start_new_session=True,
    )
    watch = JobStore(data_dir / "jobs.sqlite3")
    try:
        wait_for(lambda: watch.get(job_id).frames_done > 0)
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    rec = watch.get(job_id)
    watch.close()
    assert rec.status == "queued", rec.error  # not "worker process died (exit code -15)"


def test_process_video_with_the_real_engine(tmp_path):
    """The product path: v1motion.models.motion.engine.MotionEngine (small random one) through the same function."""
    from v1motion.service.jobs.engines import engine_factory

    src = tmp_path / "input.bin"
    src.write_bytes(vs.avi(tmp_path, n=8, size=(128, 96)))
    out = tmp_path / "out"
    result = process_video(src, out, engine_factory("random"), Limits())
    npz = np.load(out / "motion.npz")
    cell = result["cell_px"]
    assert npz["direction_deg"].shape == (8, 96 // cell, 128 // cell)
    assert npz["direction_hist"].shape == (8, 16) and npz["speed_bins_px_per_frame"].shape == (7,)
    deg = npz["direction_deg"].astype(np.float32)
    assert np.all((deg >= 0) & (deg <= 360))
    conf = npz["confidence"].astype(np.float32)
    assert np.all((conf >= 0) & (conf <= 1))


def _python(code: str) -> list[str]:
    """The words ``code`` prints, run in a fresh interpreter."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_pin_threads_leaves_one_thread_in_every_pool():
    code = (
        "import cv2, numba; from threadpoolctl import threadpool_info;"
        "from v1motion.service.jobs.engines import pin_threads; pin_threads(1);"
        "pools = [p['num_threads'] for p in threadpool_info()];"
        "print(cv2.getNumThreads(), numba.get_num_threads(), set(pools) or {1})"
    )
    assert _python(code) == ["1", "1", "{1}"]


def test_a_job_process_is_settled_with_plotting_loaded_and_its_start_up_heap_frozen():
    """Before its first job a worker (or ``v1motion motion``) imports matplotlib, which summary.png
    needs, and freezes what is alive: later garbage collections skip the modules and the engine."""
    code = (
        "import gc, sys; from v1motion.service.jobs.engines import settle_job_process;"
        "before = (gc.get_freeze_count(), 'matplotlib.projections.polar' in sys.modules);"
        "settle_job_process();"
        "print(*before, gc.get_freeze_count() > 10000, 'matplotlib.projections.polar' in sys.modules)"
    )
    assert _python(code) == ["0", "False", "True", "True"]


def test_engine_names_are_checked():
    from v1motion.service.jobs.engines import engine_factory

    with pytest.raises(ValueError, match="default, random"):
        engine_factory("trained")


@pytest.mark.slow
def test_a_stuck_job_is_stopped_by_the_watchdog(tmp_path, monkeypatch):
    from v1motion.service.jobs import runners

    monkeypatch.setattr(runners, "JOB_GRACE_S", 0.5)
    jobs = VideoJobs.local(tmp_path / "data", Limits(deadline_s=1.0), hanging_fake_engine)
    jobs.start()
    try:
        job_id = _submit(jobs, vs.avi(tmp_path, n=4))
        rec = wait_for(lambda: _finished(jobs, job_id), timeout=30)
        assert rec.status == "failed" and "took longer than 1.5 s" in rec.error
    finally:
        jobs.stop()


def _pan_video(path, vx, vy_up, n=60, shape=(240, 320)):
    """A still panned so its content moves by (vx, vy_up) px/frame (up positive), as MJPG AVI."""
    from v1motion.models.motion.stimuli import load_still, pan_frame

    img = load_still("camera")
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, shape[::-1])
    for t in range(n):
        frame = pan_frame(img, (256 - vx * t, 256 + vy_up * t), shape)
        grey = np.clip(frame * 255, 0, 255).astype(np.uint8)
        writer.write(cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR))
    writer.release()


@pytest.mark.slow
@pytest.mark.parametrize("vx, vy_up, expected_deg", [(2, 0, 0), (0, 2, 90), (-2, 0, 180)])
def test_planted_pan_comes_back_through_the_job(tmp_path, vx, vy_up, expected_deg):
    """The shipped engine through process_video recovers the direction of a planted pan."""
    from v1motion.service.jobs.engines import engine_factory

    src = tmp_path / "pan.avi"
    _pan_video(src, vx, vy_up)
    result = process_video(src, tmp_path / "out", engine_factory("default"), Limits())
    main = result["main_directions"][0]["direction_deg"]
    gap = (main - expected_deg + 180) % 360 - 180
    assert abs(gap) < 30, result["main_directions"]
    npz = np.load(tmp_path / "out" / "motion.npz")
    speed = np.median(npz["speed_over_time_px_per_frame"][20:])
    assert 1.0 < speed < 6.0  # planted 2 px/frame; the engine's speed read-out is coarse


@pytest.mark.slow
def test_workers_start_with_the_first_job_not_with_the_service(tmp_path):
    jobs = VideoJobs.local(tmp_path / "data", Limits(), fake_engine)
    jobs.start()
    try:
        time.sleep(1.5)
        assert jobs.runner.worker_pids() == []
        job_id = _submit(jobs, vs.avi(tmp_path, n=4))
        rec = wait_for(lambda: _finished(jobs, job_id))
        assert rec.status == "succeeded"
        assert len(jobs.runner.worker_pids()) == 1  # and it stays, warm
        # the record says which process ran the frames: the worker, not the service
        assert rec.result["ran_on"] == {
            "runner": "local",
            "hostname": socket.gethostname(),
            "pid": jobs.runner.worker_pids()[0],
        }
        assert rec.result["ran_on"]["pid"] != os.getpid()
    finally:
        jobs.stop()


@pytest.mark.slow
def test_a_box_moved_up_then_down_left_has_those_two_main_directions(tmp_path):
    """Known truth through the shipped engine and the job: 90 deg then 225 deg, 2 and 2.8 px/frame,
    and nothing in between (the old summary, a mean direction, said 161 deg for such a clip)."""
    from v1motion.service.jobs.engines import engine_factory

    src = vs.box_up_then_down_left(tmp_path / "box.avi")
    result = process_video(src, tmp_path / "out", engine_factory("default"), Limits())
    main = result["main_directions"]
    found = sorted(m["direction_deg"] for m in main)
    assert len(found) == 2 and found == pytest.approx([90, 225], abs=20), main
    assert all(m["share"] >= 0.2 for m in main)
    for m in main:
        truth = 2.0 if abs(m["direction_deg"] - 90) < 45 else 2.0 * np.sqrt(2)
        assert m["median_speed_px_per_frame"] == pytest.approx(truth, rel=0.5)
    assert all(abs(f - 161) > 45 for f in found)
    summary = json.loads((tmp_path / "out" / "motion.json").read_text())["summary"]
    assert summary["main_directions"] == main


def test_job_workers_run_below_the_live_streams_priority(tmp_path):
    """On shared cores a video job gives way to the live engines (Unix niceness, added)."""
    jobs = VideoJobs.local(tmp_path / "data", Limits(), fake_engine, niceness=7)
    jobs.start()
    try:
        job_id = _submit(jobs, vs.avi(tmp_path, n=4))
        assert wait_for(lambda: _finished(jobs, job_id)).status == "succeeded"
        (pid,) = jobs.runner.worker_pids()
        assert os.getpriority(os.PRIO_PROCESS, pid) == os.getpriority(os.PRIO_PROCESS, 0) + 7
    finally:
        jobs.stop()


def test_the_summary_title_says_the_size_its_speeds_are_in():
    """A 1280x720 video's 4 px/frame read '2 px/frame' under a title of 1280x720."""
    from types import SimpleNamespace

    from v1motion.service.jobs.process import _summary_title

    shrunk = SimpleNamespace(width=1280, height=720, fps=30.0, out_width=640, out_height=360)
    assert _summary_title(90, shrunk) == (
        "90 frames, 1280x720 at 30 fps; speeds in px of the 640x360 frames analysed"
    )
    kept = SimpleNamespace(width=640, height=480, fps=25.0, out_width=640, out_height=480)
    assert _summary_title(10, kept) == "10 frames, 640x480 at 25 fps"
    assert _summary_title(10, kept, variable=True) == (
        "10 frames, 640x480 at a variable 25 fps on average"
    )


def test_a_variable_frame_rate_video_is_said_so_and_timed_by_its_frames(tmp_path):
    src = tmp_path / "input.bin"
    src.write_bytes(vs.variable_rate_mp4(tmp_path, n=12, slow_from=6))
    result = process_video(src, tmp_path / "out", fake_engine, Limits())
    assert result["variable_frame_rate"] is True
    frames = json.loads((tmp_path / "out" / "motion.json").read_text())["frames"]
    assert [f["time_s"] for f in frames][5:9] == pytest.approx([0.5, 0.6, 0.9, 1.2], abs=1e-3)
    # its mean rate over its frames' times (11 steps over 2.1 s), not the header's 5 fps: a file
    # with dropped frames declared 15 fps over frames 0.33-0.73 s apart, its px/s 6.6 times too high
    assert result["fps"] == pytest.approx(11 / 2.1, rel=1e-3)
    if result["overlay_codec"] == "h264":  # each frame shown at its time (mp4v: at the mean rate)
        import av

        with av.open(str(tmp_path / "out" / "overlay.mp4")) as c:
            shown = [float(f.time) for f in c.decode(video=0)]
        times = [f["time_s"] for f in frames]
        assert shown == pytest.approx([t - times[0] for t in times], abs=2e-3)
    steady = tmp_path / "steady.bin"
    steady.write_bytes(vs.avi(tmp_path, n=6))
    assert (
        process_video(steady, tmp_path / "out2", fake_engine, Limits())["variable_frame_rate"]
        is False
    )


def test_auto_overlays_are_h264_where_pyav_is_installed_and_mp4v_without(monkeypatch):
    """The container image leaves PyAV out (about 100 MB): its overlays are mp4v, not an error."""
    import importlib.util

    from pydantic import ValidationError

    from v1motion.service.jobs.process import overlay_codec
    from v1motion.service.settings import Settings

    assert overlay_codec("auto") == "h264" and overlay_codec("mp4v") == "mp4v"
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "av" else real(n))
    assert overlay_codec("auto") == "mp4v"
    with pytest.raises(ValidationError, match="h264 overlays need PyAV"):
        Settings(video_overlay_codec="h264")
    assert Settings(video_overlay_codec="auto").video_overlay_codec == "auto"


def test_a_store_that_cannot_record_a_jobs_end_keeps_the_slot_and_the_queue_going(tmp_path):
    """On a full data volume the job failed, SQLite could not record it ("database or disk is
    full"), and the exception killed the only slot's thread: the job stayed "running" and every
    job behind it "queued", for good. Now the end is recorded once the store can (retried)."""
    import sqlite3

    from v1motion.service.jobs.runners import Runner

    class Writer(Runner):
        def _execute(self, slot, job, should_stop):
            if job.id.startswith("a"):
                raise OSError(28, "No space left on device")
            return "ok", {"frames": 3}

    store = JobStore(tmp_path / "jobs.sqlite3")
    for first in "ab":
        store.create(first * 32, "a.mp4", "video/mp4", 10)
    real, refused = store.fail, []

    def full(job_id, reason):
        if len(refused) < 2:
            refused.append(job_id)
            raise sqlite3.OperationalError("database or disk is full")
        real(job_id, reason)

    store.fail = full
    runner = Writer(store, tmp_path / "videos", Limits(), slots=1)
    runner.start()
    try:
        deadline = time.monotonic() + 30
        while store.get("b" * 32).status != "succeeded":
            assert time.monotonic() < deadline, "the job behind it never ran"
            time.sleep(0.05)
    finally:
        runner.stop()
    first = store.get("a" * 32)
    assert refused == ["a" * 32] * 2
    assert first.status == "failed" and "disk has no room for this video's results" in first.error


def test_a_stop_leaves_behind_a_slot_stuck_in_a_call_that_never_returns(tmp_path):
    """With V1MOTION_RAY_ADDRESS naming a cluster that does not answer, ray.init never returned,
    and SIGTERM left the service at "Waiting for application shutdown." until SIGKILL (12 min)."""
    import threading

    from v1motion.service.jobs.runners import Runner

    entered, never = threading.Event(), threading.Event()

    class Stuck(Runner):
        abandon_after_s = 0.5

        def _setup_slot(self, slot):
            entered.set()
            never.wait()  # ray.init to an address that does not answer
            return True

    runner = Stuck(JobStore(tmp_path / "jobs.sqlite3"), tmp_path / "videos", Limits(), slots=2)
    runner.start()
    assert entered.wait(10)
    assert all(t.daemon for t in runner._threads)  # they do not hold the process at exit
    t0 = time.monotonic()
    runner.stop()
    assert time.monotonic() - t0 < 5
    never.set()


def test_the_ray_runner_connects_only_when_a_job_waits(tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    from v1motion.service.jobs.engines import engine_factory
    from v1motion.service.jobs.ray_runner import RayRunner

    calls = []
    monkeypatch.setattr(ray, "init", lambda *a, **k: calls.append(k) or time.sleep(3600))
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    store = JobStore(tmp_path / "jobs.sqlite3")
    runner = RayRunner(
        store, tmp_path / "videos", Limits(), engine_factory("random"), address="10.0.0.1:6379"
    )
    runner.abandon_after_s = 0.5
    runner.start()
    time.sleep(1.5)
    assert calls == []  # an idle service never blocks on an absent cluster
    store.create("a" * 32, "a.mp4", "video/mp4", 10)
    runner.wake()
    deadline = time.monotonic() + 10
    while not calls:
        assert time.monotonic() < deadline, "a waiting job did not connect"
        time.sleep(0.05)
    assert calls[0]["address"] == "10.0.0.1:6379"
    t0 = time.monotonic()
    runner.stop()  # the connection never answers: the stop does not wait for it
    assert time.monotonic() - t0 < 5


# ----------------------------------------------------------------------- what the store keeps


def test_a_finished_jobs_upload_is_removed_and_its_results_kept(tmp_path):
    """Finished and failed jobs kept their whole upload (up to 512 MB) until a client deleted
    them: a store whose clients never delete filled the disk with videos nobody could fetch."""
    jobs = VideoJobs.local(tmp_path / "data", Limits(overlay=False), fake_engine, workers=1)
    jobs.start()
    try:
        good = _submit(jobs, vs.avi(tmp_path, n=6))
        bad = _submit(jobs, b"RIFF but not a video")
        for job_id, status in ((good, "succeeded"), (bad, "failed")):
            assert wait_for(lambda job_id=job_id: _finished(jobs, job_id)).status == status
            upload = JobLayout.of(jobs.jobs_dir, job_id).input
            wait_for(lambda upload=upload: not upload.exists(), timeout=10)
        assert JobLayout.of(jobs.jobs_dir, good).result("motion.json").is_file()
    finally:
        jobs.stop()


class _IdleRunner:
    """A runner that runs nothing (the store and its folders are what is tested)."""

    def __init__(self, *args):
        pass

    def start(self):
        pass

    def stop(self):
        pass

    def wake(self):
        pass

    def cancel(self, job_id, timeout=30.0):
        pass


def _stored_job(jobs: VideoJobs, status: str, ended_days_ago: float = 0.0) -> str:
    """A job record in ``status`` with its upload and, when it succeeded, its results."""
    job_id, folder = jobs.new_folder()
    (folder / "input.bin").write_bytes(b"video")
    jobs.store.create(job_id, "clip.mp4", "video/mp4", 5)
    if status in ("succeeded", "failed"):
        jobs.store.claim_next()
        if status == "succeeded":
            (folder / "out").mkdir()
            (folder / "out" / "motion.json").write_text("{}")
            jobs.store.succeed(job_id, {})
        else:
            jobs.store.fail(job_id, "no video")
        ended = time.time() - ended_days_ago * 86400.0
        jobs.store._db.execute("UPDATE jobs SET finished_at = ? WHERE id = ?", (ended, job_id))
    return job_id


def test_a_job_that_published_its_results_before_a_crash_is_recorded_succeeded(tmp_path):
    """The process ended between the results' rename and the store's record of it: on its last
    attempt the job was failed with its results kept but unreachable (409), on others re-run."""
    first = VideoJobs(tmp_path, Limits(), _IdleRunner, max_attempts=1)
    published, unpublished = (_stored_job(first, "queued") for _ in range(2))
    for job_id in (published, unpublished):
        first.store.claim_next()
        assert first.store.get(job_id).status == "running"
    work = JobLayout.of(first.jobs_dir, published).results.begin()
    (work / "motion.json").write_text("{}")
    (work / "result.json").write_text(json.dumps({"frames": 7, "fps": 25.0}))
    JobLayout.of(first.jobs_dir, published).results.publish()
    half = JobLayout.of(first.jobs_dir, unpublished).results.begin()  # killed while writing
    (half / "result.json").write_text("{}")
    first.store.close()
    jobs = VideoJobs(tmp_path, Limits(), _IdleRunner, max_attempts=1)
    jobs.start()
    try:
        done = jobs.get(published)
        assert done.status == "succeeded" and done.result["frames"] == 7
        assert done.result["fps"] == 25.0 and "unknown" in done.result["ran_on"]["runner"]
        assert done.frames_done == 7
        assert jobs.result_path(published, "motion.json").is_file()
        assert not JobLayout.of(jobs.jobs_dir, published).input.exists()  # ended: upload freed
        assert jobs.get(unpublished).status == "failed"  # its attempts used up, nothing published
    finally:
        jobs.stop()


def test_a_worker_that_dies_after_publishing_leaves_its_job_succeeded(tmp_path, monkeypatch):
    """Its worker ended between the results' rename and its answer: the job was failed ("the worker
    process died") with whole results on the disk that no client could reach."""
    from v1motion.service.jobs.runners import LocalWorkerPool

    def publish_then_die(self, slot, job, should_stop):
        layout = JobLayout.of(self.jobs_dir, job.id)
        process_video(layout.input, layout.results.out, fake_engine, Limits())
        return "failed", "the worker process died (exit code -9) while processing this video"

    monkeypatch.setattr(LocalWorkerPool, "_execute", publish_then_die)
    jobs = VideoJobs.local(tmp_path, Limits(), fake_engine, workers=1)
    jobs.start()
    try:
        job_id = _submit(jobs, vs.avi(tmp_path, n=6))
        rec = wait_for(lambda: _finished(jobs, job_id))
        assert rec.status == "succeeded" and rec.result["frames"] == 6
        assert "unknown" in rec.result["ran_on"]["runner"]
        assert jobs.result_path(job_id, "motion.json").is_file()
    finally:
        jobs.stop()


def test_a_start_removes_the_uploads_of_jobs_that_ended_before_it(tmp_path):
    first = VideoJobs(tmp_path, Limits(), _IdleRunner)
    done, failed, queued = (_stored_job(first, s) for s in ("succeeded", "failed", "queued"))
    first.store.close()
    jobs = VideoJobs(tmp_path, Limits(), _IdleRunner)
    jobs.start()
    try:
        layout = {j: JobLayout.of(jobs.jobs_dir, j) for j in (done, failed, queued)}
        assert not layout[done].input.exists() and not layout[failed].input.exists()
        assert layout[queued].input.exists()  # still to run
        assert layout[done].result("motion.json").is_file()  # the results stay
    finally:
        jobs.stop()


@pytest.mark.parametrize("keep_days", [0.0, 1.0])
def test_finished_jobs_are_deleted_after_the_days_they_are_kept(tmp_path, keep_days):
    jobs = VideoJobs(tmp_path, Limits(), _IdleRunner, keep_days=keep_days)
    old = [_stored_job(jobs, s, ended_days_ago=2) for s in ("succeeded", "failed")]
    recent = _stored_job(jobs, "succeeded", ended_days_ago=0.5)
    waiting = _stored_job(jobs, "queued")
    jobs.start()
    try:
        expired = old if keep_days else []
        for job_id in old + [recent, waiting]:
            gone = job_id in expired
            assert (jobs.get(job_id) is None) is gone
            assert (not (jobs.jobs_dir / job_id).exists()) is gone
        later = _stored_job(jobs, "failed", ended_days_ago=3)
        assert jobs.expire() == ([later] if keep_days else [])
        assert (jobs.get(later) is None) is bool(keep_days)
    finally:
        jobs.stop()


def test_the_days_jobs_are_kept_are_a_setting(tmp_path, monkeypatch):
    from pydantic import ValidationError

    from v1motion.service.settings import Settings

    assert Settings().video_keep_days == 0
    monkeypatch.setenv("V1MOTION_VIDEO_KEEP_DAYS", "7")
    jobs = VideoJobs.from_settings(Settings(data_dir=tmp_path))
    assert jobs.keep_days == 7
    jobs.store.close()
    monkeypatch.setenv("V1MOTION_VIDEO_KEEP_DAYS", "-1")
    with pytest.raises(ValidationError):
        Settings()


def test_deleting_a_job_on_a_full_disk_frees_its_files_and_then_forgets_it(tmp_path):
    """A full disk has no room for the store's record of a deletion: DELETE answered 507 "retry once
    space is freed" and removed nothing, so a client could not make room (a user's probe)."""
    import sqlite3

    jobs = VideoJobs.local(tmp_path / "data", Limits(), fake_engine, workers=1)
    jobs.start()
    try:
        job_id = _submit(jobs, vs.avi(tmp_path, n=6))
        assert wait_for(lambda: _finished(jobs, job_id)).status == "succeeded"
        folder = jobs.jobs_dir / job_id
        real, tries = jobs.store.delete, []

        def delete(job_id, why):  # no room for the journal while the job's files take it
            tries.append(folder.exists())
            if folder.exists():
                exc = sqlite3.OperationalError("database or disk is full")
                exc.sqlite_errorcode = sqlite3.SQLITE_FULL
                raise exc
            real(job_id, why)

        jobs.store.delete = delete
        assert jobs.delete(job_id) is True
        assert tries == [True, False] and not folder.exists() and jobs.get(job_id) is None
    finally:
        jobs.stop()


def test_what_the_api_reports_done_is_on_the_disk(tmp_path, monkeypatch):
    """A job reported succeeded 15 s before a crash (ext4, its journal aborted) was gone after it:
    WAL's synchronous=NORMAL lets the last commits go, and nothing was fsynced (a user's probe)."""
    import v1motion.service.disk as disk

    store = JobStore(tmp_path / "jobs.sqlite3")
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    synced = []
    real = os.fsync

    def fsync(fd):
        synced.append(os.fstat(fd).st_ino)
        real(fd)

    monkeypatch.setattr(disk.os, "fsync", fsync)
    results = JobLayout.of(tmp_path, "a" * 32).results
    (results.work / "maps").mkdir(parents=True)
    for name in ("motion.json", "maps/direction_deg.npy"):
        (results.work / name).write_bytes(b"x" * 100)
    results.publish()  # a worker process calls it before the job is recorded succeeded
    files = [p for p in results.out.rglob("*") if p.is_file()]
    assert len(files) == 2 and all(p.stat().st_ino in synced for p in files)
    assert results.out.stat().st_ino in synced  # its entries
    assert results.out.parent.stat().st_ino in synced  # and the rename


def test_a_job_on_a_read_only_disk_fails_saying_so_without_a_server_path(tmp_path, monkeypatch):
    """The kernel remounted the data folder read-only mid-job: the clean-up failed too, and its
    error, naming a file of the server, replaced the first as the job's reason (a user's probe)."""
    import errno

    from v1motion.service.jobs import process
    from v1motion.service.jobs.runners import failure_reason

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp_path / "out.tmp" / "x.npy"))

    src = tmp_path / "input.bin"
    src.write_bytes(vs.avi(tmp_path, n=12))
    monkeypatch.setattr(process._Results, "remove", read_only)
    with pytest.raises(DecodeError, match="^frame 5: frame contains NaN"):  # the first error
        process_video(src, tmp_path / "out", _PickyEngine, Limits())
    reason = failure_reason("a" * 32, _raised(read_only))
    assert reason.startswith("the server could not write this video's results (Read-only")
    assert str(tmp_path) not in reason
    other = failure_reason("a" * 32, OSError(errno.EBADF, "Bad file descriptor", "/srv/x"))
    assert other == "internal error: OSError: Bad file descriptor"


def _raised(fn) -> BaseException:
    try:
        fn()
    except BaseException as exc:
        return exc
    raise AssertionError("it did not raise")
