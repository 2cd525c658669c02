"""The Ray path: the same job function as Ray tasks on a local Ray instance this test starts itself."""

import time

import numpy as np
import pytest
import video_samples as vs

from service.jobs.engines import engine_factory
from service.jobs.layout import RESULT_FILES, JobLayout
from service.jobs.limits import Limits
from service.jobs.manager import VideoJobs
from service.jobs.ray_runner import RayRunner

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
    assert np.load(out / "motion.npz")["speed_px_per_frame"].shape[0] == 300

    bad = _run(ray_jobs, vs.damaged_frames_avi(tmp_path))
    assert bad.status == "failed" and "no frame could be decoded" in bad.error
    assert not JobLayout.of(ray_jobs.jobs_dir, bad.id).results.out.exists()
