"""The Ray path: the same job function as Ray tasks on a local Ray instance this test starts itself."""

import socket
import time

import numpy as np
import pytest
import video_samples as vs

from v1motion.service.jobs.engines import engine_factory
from v1motion.service.jobs.layout import RESULT_FILES, JobLayout
from v1motion.service.jobs.limits import Limits
from v1motion.service.jobs.manager import VideoJobs
from v1motion.service.jobs.ray_runner import RayRunner

ray = pytest.importorskip("ray")
pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def ray_jobs(tmp_path_factory):
    ray.init(
        num_cpus=1,
        include_dashboard=False,
        object_store_memory=80 * 1024 * 1024,
        log_to_driver=False,
        configure_logging=False,
    )
    jobs = VideoJobs(
        tmp_path_factory.mktemp("data"),
        Limits(),
        lambda s, d, lim: RayRunner(s, d, lim, engine_factory("random"), address="local"),
    )
    jobs.start()
    yield jobs
    jobs.stop()
    ray.shutdown()


def _run(jobs, data: bytes, timeout=180, seen=None):
    job_id, folder = jobs.new_folder()
    (folder / "input.bin").write_bytes(data)
    jobs.submit(job_id, "clip.avi", "video/x-msvideo", len(data))
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        rec = jobs.get(job_id)
        if seen is not None and rec.status == "running":
            seen.add(rec.frames_done)
        if rec.status in ("succeeded", "failed"):
            return rec
        time.sleep(0.2)
    raise AssertionError("the Ray job did not finish")


def test_ray_runs_the_same_job_and_fails_the_same_way(ray_jobs, tmp_path):
    seen = set()
    rec = _run(ray_jobs, vs.avi(tmp_path, n=300, size=(320, 240)), seen=seen)
    assert rec.status == "succeeded", rec.error
    assert any(0 < s < 300 for s in seen), seen  # progress arrives while the task runs
    out = JobLayout.of(ray_jobs.jobs_dir, rec.id).results.out
    assert sorted(p.name for p in out.iterdir()) == sorted(RESULT_FILES)
    assert rec.result["frames"] == 300 and rec.frames_done == 300
    ran_on = rec.result["ran_on"]  # the Ray node that ran the task: here the only one
    assert ran_on["runner"] == "ray" and ran_on["hostname"] == socket.gethostname()
    assert ran_on["node_id"] == ray.get_runtime_context().get_node_id()
    assert np.load(out / "motion.npz")["speed_px_per_frame"].shape[0] == 300

    bad = _run(ray_jobs, vs.damaged_frames_avi(tmp_path))
    assert bad.status == "failed" and "no frame could be decoded" in bad.error
    assert not JobLayout.of(ray_jobs.jobs_dir, bad.id).results.out.exists()


def test_a_ray_task_that_does_not_finish_is_cancelled_and_fails_with_a_reason(
    tmp_path, monkeypatch
):
    """The watchdog: a task stuck on its node (or waiting for one) never leaves the job running."""
    import engine_double
    from engine_double import hanging_fake_engine

    import v1motion.service.jobs.ray_runner as ray_runner

    ray.cloudpickle.register_pickle_by_value(engine_double)  # not importable on the workers
    monkeypatch.setattr(ray_runner, "JOB_GRACE_S", 1.0)
    jobs = VideoJobs(
        tmp_path / "data",
        Limits(deadline_s=1.0),
        lambda s, d, lim: RayRunner(s, d, lim, hanging_fake_engine, address="local"),
    )
    jobs.start()
    try:
        rec = _run(jobs, vs.avi(tmp_path, n=4), timeout=60)
    finally:
        jobs.stop()
    assert rec.status == "failed"
    assert "did not finish within 2 s and was cancelled" in rec.error


def test_a_ray_failure_reason_is_the_cause_without_colour_codes():
    from v1motion.service.jobs.ray_runner import ray_failure

    exc = ray.exceptions.RaySystemError(
        "\x1b[36mray::run_job_on_worker()\x1b[39m (pid=1, ip=10.0.0.2)\n"
        "  File x\nModuleNotFoundError: No module named 'engine_double'"
    )
    assert ray_failure(exc) == (
        "the Ray task failed: RaySystemError: ModuleNotFoundError: No module named 'engine_double'"
    )


def test_a_lost_worker_is_said_plainly():
    from v1motion.service.jobs.ray_runner import ray_failure

    exc = ray.exceptions.ObjectReconstructionFailedError("abc")
    assert ray_failure(exc).startswith(
        "the Ray worker running this job was lost; the Ray task failed: "
        "ObjectReconstructionFailedError"
    )


def test_a_lost_progress_actor_is_replaced_not_fatal(ray_jobs):
    runner = ray_jobs.runner
    assert runner._setup_slot(0)
    old = runner._board
    ray.kill(old)
    # Wait until Ray reports the actor dead (on a loaded machine a call may first just time out).
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            ray.get(old.take.remote("x"), timeout=5)
        except ray.exceptions.RayActorError:
            break
        except ray.exceptions.GetTimeoutError:
            continue
    runner._poll_progress("f" * 32)  # the dead actor: replaced, no exception
    assert runner._board is not old
    ray.get(runner._board.post.remote("x", 3, 10))
    assert ray.get(runner._board.take.remote("x")) == (3, 10)
