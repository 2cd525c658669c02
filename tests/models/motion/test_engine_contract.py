"""v1motion.models.motion.contract: the engine the service types against, built by name in one place."""

from __future__ import annotations

import numpy as np
import pytest
from engine_double import FakeEngine

from v1motion.models.motion.contract import ENGINE_NAMES, Engine, make_engine
from v1motion.models.motion.engine import MotionEngine
from v1motion.service.jobs.engines import engine_factory


def test_the_engine_and_the_test_double_both_satisfy_the_contract():
    assert isinstance(make_engine("random"), Engine)
    assert isinstance(FakeEngine(), Engine)
    assert not isinstance(object(), Engine)


def test_make_engine_builds_each_name_and_refuses_others_naming_the_valid_ones():
    engine = make_engine("random", threads=1)
    assert isinstance(engine, MotionEngine) and engine.threads == 1
    assert "default" in ENGINE_NAMES and "random" in ENGINE_NAMES
    with pytest.raises(ValueError, match="default, random"):
        make_engine("trained")


def test_the_service_factory_builds_the_same_engine_as_make_engine():
    """One engine-by-name: the service's picklable factory gives what make_engine gives, warmed."""
    frames = np.random.default_rng(0).integers(0, 255, (3, 64, 96), dtype=np.uint8)
    a, b = engine_factory("random")(), make_engine("random")
    sa, sb = a.new_state(), b.new_state()
    for f in frames:
        ma, mb = a.step(sa, f), b.step(sb, f)
    np.testing.assert_array_equal(ma.direction, mb.direction)
    with pytest.raises(ValueError, match="unknown engine"):
        engine_factory("nope")


def test_thread_settings_beyond_numbas_threads_are_refused_at_start_up():
    import numba
    from pydantic import ValidationError

    from v1motion.service.settings import Settings

    with pytest.raises(ValidationError, match="NUMBA_NUM_THREADS"):
        Settings(engine_threads=numba.config.NUMBA_NUM_THREADS + 1)
    with pytest.raises(ValidationError, match="NUMBA_NUM_THREADS"):
        Settings(video_engine_threads=numba.config.NUMBA_NUM_THREADS + 1)
    assert Settings(engine_threads=1).engine_threads == 1


def test_the_service_builds_its_engines_with_the_thread_settings(tmp_path):
    """The live engine and the video workers' engines each get their own thread setting."""
    import numba

    from v1motion.service.jobs.manager import VideoJobs
    from v1motion.service.settings import Settings

    n = min(2, numba.config.NUMBA_NUM_THREADS)
    settings = Settings(
        engine="random", engine_threads=n, video_engine_threads=1, data_dir=tmp_path
    )
    jobs = VideoJobs.from_settings(settings)  # not started: nothing runs
    assert jobs.runner.engine_factory.args == ("random", 1)
    assert engine_factory(settings.engine, settings.engine_threads).args == ("random", n)
    two = Settings(engine="random", video_engine_threads=n, data_dir=tmp_path / "two")
    assert VideoJobs.from_settings(two).runner.engine_factory.args == ("random", n)
    # Ray schedules one CPU per task, so its tasks' engines run on one thread whatever the setting
    ray = Settings(
        engine="random", video_engine_threads=n, ray_address="auto", data_dir=tmp_path / "ray"
    )
    runner = VideoJobs.from_settings(ray).runner  # not started: Ray is neither imported nor asked
    assert runner.name == "ray" and runner.engine_factory.args == ("random", 1)


def test_the_live_engine_runs_with_the_configured_threads():
    import time

    import numba
    from fastapi.testclient import TestClient

    from v1motion.service.app import create_app
    from v1motion.service.settings import Settings

    n = min(2, numba.config.NUMBA_NUM_THREADS)
    with TestClient(create_app(Settings(engine="random", engine_threads=n))) as client:
        deadline = time.monotonic() + 120
        while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert client.app.state.services.engine.engine.threads == n


@pytest.mark.parametrize(("cores", "want"), [(1, 1), (2, 2), (8, 2)])
def test_the_live_engine_defaults_to_two_threads_where_there_are_two_cores(
    monkeypatch, cores, want
):
    from v1motion.service import settings as settings_mod

    monkeypatch.setattr(settings_mod, "_numba_threads", lambda: cores)
    s = settings_mod.Settings()
    assert s.engine_threads == want
    # a video job encodes frames ahead on its second thread; with more workers they share
    assert s.video_engine_threads == want
    assert settings_mod.Settings(video_workers=2).video_engine_threads == max(1, min(2, cores // 2))
    assert settings_mod.Settings(video_workers=2, video_engine_threads=1).video_engine_threads == 1
