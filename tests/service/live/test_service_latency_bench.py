"""bench/service_latency.py hands the server the settings it is asked to measure."""

from __future__ import annotations

import pytest
from bench_module import load_bench

sl = load_bench("service_latency")


class _Ready:
    status_code = 200


@pytest.mark.parametrize("place", [True, False])
def test_the_server_is_started_with_the_placement_and_polling_asked_for(monkeypatch, place):
    started = {}

    def popen(cmd, env, **kwargs):
        started.update(cmd=cmd, env=env)
        return object()

    monkeypatch.setattr(sl.subprocess, "Popen", popen)
    monkeypatch.setattr(sl.httpx, "get", lambda *a, **k: _Ready())
    sources = [{"name": "s0", "kind": "synthetic", "width": 640, "height": 480, "fps": 30}]
    sl.start_server("default", sources, busy_poll_ms=15.0, place_threads=place)
    env = started["env"]
    assert env["V1MOTION_ENGINE_PLACE_THREADS"] == str(place).lower()
    assert env["V1MOTION_LIVE_BUSY_POLL_MS"] == "15.0"
    assert sl.json.loads(env["V1MOTION_SOURCES"]) == sources


def test_two_streams_run_two_640_sources_and_the_flag_reaches_each_scenario(monkeypatch, capsys):
    calls = []

    def scenario(engine, name, w, h, n_streams, n_viewers, seconds, busy_poll_ms, place):
        calls.append((name, w, h, n_streams, n_viewers, place))
        cols = ("stream fps", "fps/viewer", "received %", "worst %", "p50 ms", "p95 ms", "p99 ms",
                "max ms", "engine p50 ms", "engine p95 ms", "rest p50 ms", "server CPU")  # fmt: skip
        row = dict.fromkeys(cols, 1.0)
        row.update(scenario=name, size=f"{w}x{h}", streams=n_streams, viewers=n_viewers)
        return dict(row, missed=0, dropped=0.0)

    monkeypatch.setattr(sl, "scenario", scenario)
    monkeypatch.setattr(sl, "baseline_step_ms", lambda *a: 10.0)
    assert sl.main(["--only", "two-640", "--place-threads", "false"]) == 0
    assert calls == [("two streams", 640, 480, 2, 2, False)]
    assert "engine_place_threads false" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        sl.main(["--place-threads", "maybe"])
