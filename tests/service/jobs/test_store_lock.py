"""One job store per data directory: a second service on the same data volume refuses to start."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest
from engine_double import fake_engine
from fastapi.testclient import TestClient

from v1motion.service.app import create_app
from v1motion.service.jobs.limits import Limits
from v1motion.service.jobs.lock import LOCK_NAME, StoreLock, StoreLocked
from v1motion.service.jobs.manager import VideoJobs
from v1motion.service.settings import Settings

HOLD = textwrap.dedent(
    """
    import sys, time
    from v1motion.service.jobs.lock import StoreLock
    lock = StoreLock(sys.argv[1])
    lock.acquire()
    print("held", flush=True)
    time.sleep(600)
    """
)


def _holder(data_dir):
    """A separate process that holds the lock of ``data_dir`` until it is killed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(data_dir)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_lock_is_refused_with_the_holder_named_and_free_after_release(tmp_path):
    first, second = StoreLock(tmp_path), StoreLock(tmp_path)
    first.acquire()
    with pytest.raises(StoreLocked, match=f"pid {os.getpid()}") as err:
        second.acquire()
    assert "one job store per data volume" in str(err.value)
    assert "V1MOTION_DATA_DIR" in str(err.value)
    assert not second.held
    first.release()
    second.acquire()  # free again
    assert second.held
    second.release()


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    proc = _holder(tmp_path)
    try:
        with pytest.raises(StoreLocked, match=f"pid {proc.pid}"):
            StoreLock(tmp_path).acquire()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    lock = StoreLock(tmp_path)
    lock.acquire()  # the kernel dropped the dead holder's lock
    assert (tmp_path / LOCK_NAME).read_text().startswith("host ")
    lock.release()


def test_second_video_jobs_on_one_data_dir_does_not_start_or_touch_the_jobs(tmp_path):
    first = VideoJobs.local(tmp_path, Limits(), fake_engine)
    first.start()
    try:
        job_id, folder = first.new_folder()
        first.store.create(job_id, "clip.avi", "video/x-msvideo", 10)
        first.store.claim_next()  # "running" in the first service
        second = VideoJobs.local(tmp_path, Limits(), fake_engine)
        with pytest.raises(StoreLocked):
            second.start()
        second.store.close()
        # recovery did not run: the first service's running job was not re-queued under it
        assert first.store.get(job_id).status == "running"
    finally:
        first.stop()
    third = VideoJobs.local(tmp_path, Limits(), fake_engine)
    third.start()  # the first one stopped: the store is free
    third.stop()


def test_the_service_refuses_to_start_on_a_data_dir_in_use(tmp_path, caplog):
    proc = _holder(tmp_path)
    try:
        app = create_app(Settings(data_dir=tmp_path, engine="random"))
        with pytest.raises(StoreLocked), TestClient(app):
            pass
        assert "cannot start: the job store" in caplog.text
    finally:
        proc.kill()
        proc.wait()
    with TestClient(create_app(Settings(data_dir=tmp_path, engine="random"))) as client:
        assert client.get("/healthz").status_code == 200  # the holder is gone: it starts


def test_an_app_given_the_held_lock_runs_on_it_and_frees_it_when_it_stops(tmp_path):
    """``v1motion serve`` takes the lock before it binds its port and hands it over: the app must
    start on it (not refuse it as another service's) and release it when it stops."""
    lock = StoreLock(tmp_path)
    lock.acquire()
    app = create_app(Settings(data_dir=tmp_path, engine="random"), store_lock=lock)
    with TestClient(app) as client:
        assert client.get("/healthz").status_code == 200
        with pytest.raises(StoreLocked):
            StoreLock(tmp_path).acquire()
    assert not lock.held
    with TestClient(create_app(Settings(data_dir=tmp_path, engine="random"))) as client:
        assert client.get("/healthz").status_code == 200


def test_jobs_refuse_the_lock_of_another_data_dir(tmp_path):
    with pytest.raises(ValueError, match="is not that of"):
        VideoJobs.local(tmp_path / "a", Limits(), fake_engine, lock=StoreLock(tmp_path / "b"))


def test_a_start_that_fails_after_locking_leaves_the_data_dir_free(tmp_path, monkeypatch):
    """Anything failing after the store is locked (here the language model) releases the lock."""
    from v1motion.service.routers import language

    def broken(settings):
        raise RuntimeError("no model")

    monkeypatch.setattr(language, "load_scorer", broken)
    with (
        pytest.raises(RuntimeError, match="no model"),
        TestClient(create_app(Settings(data_dir=tmp_path, engine="random"))),
    ):
        pass
    monkeypatch.undo()
    with TestClient(create_app(Settings(data_dir=tmp_path, engine="random"))) as client:
        assert client.get("/healthz").status_code == 200
