"""v1motion.service.live.analyse: the one analysis step of the server-side streams and the browser camera."""

from __future__ import annotations

import json

import numpy as np
import pytest
from engine_double import FakeEngine

from v1motion.service.live.analyse import Analyser
from v1motion.service.live.camera import MAX_SEQ_GAP, CameraFrame, CameraSession
from v1motion.service.metrics import Metrics
from v1motion.service.settings import Settings


def frames(n=4, shape=(64, 96), step=2):
    base = np.random.default_rng(0).integers(0, 255, (shape[0], shape[1] + n * step), np.uint8)
    return [np.ascontiguousarray(base[:, i * step : i * step + shape[1]]) for i in range(n)]


def test_results_are_numbered_timed_and_carry_the_engines_motion():
    a = Analyser(FakeEngine(), "s", Metrics())
    out = [a.analyse(f, t_capture=0.0, wall_ms=1.0, dropped=3, truth={"x": 1}) for f in frames()]
    assert [r.seq for r in out] == [1, 2, 3, 4] and a.frames == 4
    msg = json.loads(out[-1].text)
    assert msg["type"] == "result" and msg["stream"] == "s" and msg["seq"] == 4
    assert msg["width"] == 96 and msg["height"] == 64 and msg["truth"] == {"x": 1}
    assert msg["timing"]["dropped"] == 3 and msg["timing"]["engine_ms"] >= 0
    # The frames move left by 2 px: the double's phase correlation says 180 degrees.
    assert msg["motion"]["global_direction_deg"] == pytest.approx(180, abs=1)
    assert msg["flow"] is None


def test_results_keep_the_version_1_names_of_the_dominant_motion_and_the_speeds():
    # Clients written against version 1 read motion.global and `speed` in truth and flow.
    a = Analyser(FakeEngine(), "s", Metrics())
    truth = {"kind": "pan", "direction_deg": 180.0, "speed_px_per_frame": 2.0}
    for f in frames():
        r = a.analyse(f, t_capture=0, wall_ms=0, dropped=0, want_flow=True, truth=truth)
    msg = json.loads(r.text)
    m = msg["motion"]
    assert m["global"] == {
        "direction_deg": m["global_direction_deg"],
        "speed": m["global_speed_px_per_frame"],
        "confidence": m["global_confidence"],
    }
    assert msg["truth"] == {**truth, "speed": 2.0}
    assert msg["flow"]["speed"] == msg["flow"]["speed_px_per_frame"]
    assert truth == {
        "kind": "pan",
        "direction_deg": 180.0,
        "speed_px_per_frame": 2.0,
    }  # not changed
    assert "speed" not in m and "cell" not in m  # the grids keep their version-2 names only


def test_flow_is_computed_only_when_wanted_and_from_the_second_frame():
    a = Analyser(FakeEngine(), "s", Metrics())
    fs = frames()
    assert (
        json.loads(a.analyse(fs[0], t_capture=0, wall_ms=0, dropped=0, want_flow=True).text)["flow"]
        is None
    )  # no previous frame yet
    msg = json.loads(a.analyse(fs[1], t_capture=0, wall_ms=0, dropped=0, want_flow=True).text)
    assert msg["flow"]["rows"] == msg["motion"]["rows"]


def test_flow_grids_are_rounded_as_the_motion_grids_and_never_infinite():
    from v1motion.service import protocol

    direction = np.array([[0.0, np.pi / 2, 2 * np.pi - 1e-4]], np.float32)
    speed = np.array([[1.234, np.inf, np.nan]], np.float32)
    flow = protocol.flow_payload(direction, speed, 16)
    assert flow == {
        "cell_px": 16, "rows": 1, "cols": 3,
        "direction_deg": [[0, 90, 0]], "speed_px_per_frame": [[1.23, 0.0, 0.0]],
    }  # fmt: skip
    assert json.loads(protocol.dumps(flow)) == flow  # no NaN or infinity left to write as null


def test_fps_is_the_inverse_of_the_smoothed_interval_between_results(monkeypatch):
    # Three readings per frame (engine start, engine end, latency), frames 0.1 s apart.
    clock = iter([0.1 * i for i in range(4) for _ in range(3)])
    monkeypatch.setattr("v1motion.service.live.analyse.time.monotonic", lambda: next(clock))
    a = Analyser(FakeEngine(), "s", Metrics())
    for f in frames(4):
        a.analyse(f, t_capture=0, wall_ms=0, dropped=0)
    # Results 0.1 s apart after each engine step: 10 frames per second.
    assert a.fps == pytest.approx(10.0)


def test_a_refused_frame_raises_and_counts_nothing():
    a = Analyser(FakeEngine(), "s", Metrics())
    with pytest.raises(ValueError):
        a.analyse(np.zeros((4, 4), np.uint8), t_capture=0, wall_ms=0, dropped=0)
    assert a.frames == 0 and a.seq == 0


def test_the_browser_camera_analyses_through_the_same_analyser():
    import cv2

    session = CameraSession(FakeEngine(), Settings(), Metrics())
    session.negotiate({"width": 96, "height": 64})
    assert isinstance(session.analyser, Analyser)
    for i, f in enumerate(frames()):
        data = cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
        assert session.check(data) is None
        msg = json.loads(session.process(CameraFrame(data, 0.0, 0.0, client_seq=10 + i)))
    assert msg["stream"] == "camera" and msg["seq"] == 4 and msg["client_seq"] == 13
    assert msg["motion"]["global_direction_deg"] == pytest.approx(180, abs=10)


def test_speeds_are_divided_by_the_source_frames_between_analysed_frames():
    a = Analyser(FakeEngine(), "s", Metrics())
    fs = frames(n=3, step=6)  # 6 px between analysed frames: 3 source frames of 2 px
    for f in fs:
        msg = json.loads(a.analyse(f, t_capture=0, wall_ms=0, dropped=0, frames_elapsed=3).text)
    assert msg["motion"]["global_speed_px_per_frame"] == pytest.approx(2.0, abs=0.2)
    assert max(map(max, msg["motion"]["speed_px_per_frame"])) == pytest.approx(2.0, abs=0.2)
    with pytest.raises(ValueError, match="frames_elapsed"):
        a.analyse(fs[0], t_capture=0, wall_ms=0, dropped=0, frames_elapsed=0)


def shifted(offsets, shape=(64, 96)):
    base = np.random.default_rng(1).integers(0, 255, (shape[0], shape[1] + max(offsets)), np.uint8)
    return [np.ascontiguousarray(base[:, o : o + shape[1]]) for o in offsets]


def test_speeds_stay_per_source_frame_when_the_gaps_between_analysed_frames_vary():
    """Content moves 2 px per source frame; the analysed frames are 1 or 2 source frames apart in
    turn. The engine averages the displacement over frames, so dividing each reading by its own gap
    would swing by -33 % / +50 %; dividing by the same running average of the gaps does not."""
    gaps = [1, 2] * 8
    frames_ = shifted(np.cumsum([0] + [2 * g for g in gaps]).tolist())
    a = Analyser(FakeEngine(average=True), "s", Metrics())
    got = []
    for f, gap in zip(frames_, [1, *gaps], strict=True):
        msg = json.loads(a.analyse(f, t_capture=0, wall_ms=0, dropped=0, frames_elapsed=gap).text)
        got.append(msg["motion"]["global_speed_px_per_frame"])
    assert got[6:] == pytest.approx([2.0] * len(got[6:]), rel=0.05)


def test_camera_speeds_count_the_camera_frames_the_page_skipped():
    """The page announces each JPEG's camera frame number (``seq``); frames it skipped between two
    analysed ones divide the displacement, so speeds stay in px per camera frame."""
    import cv2

    def run(seqs):
        session = CameraSession(FakeEngine(average=True), Settings(), Metrics())
        session.negotiate({"width": 96, "height": 64})
        for f, seq in zip(shifted([3 * i for i in range(6)]), seqs, strict=True):
            data = cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
            msg = json.loads(session.process(CameraFrame(data, 0.0, 0.0, client_seq=seq)))
        return msg["motion"]["global_speed_px_per_frame"]

    # content moving 1 px per camera frame, the page sending every third camera frame
    assert run([0, 3, 6, 9, 12, 15]) == pytest.approx(1.0, abs=0.15)
    # without frame numbers every JPEG counts as the next frame: 3 px/frame
    assert run([None] * 6) == pytest.approx(3.0, abs=0.3)


def test_camera_frames_the_page_skipped_are_counted_as_dropped():
    """The dashboard's "dropped" counts the camera frames the page never sent (the gaps in its
    frame numbers), not only the JPEGs the server replaced: a page sending every third frame of a
    30 fps camera showed 10 results/s and "0 dropped"."""
    import cv2

    metrics = Metrics()
    session = CameraSession(FakeEngine(), Settings(), metrics)
    session.negotiate({"width": 96, "height": 64})
    session.dropped = 2  # JPEGs replaced on the server before they were analysed
    for f, seq in zip(shifted([0, 3, 6, 7]), [0, 3, 6, 7], strict=True):
        data = cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
        msg = json.loads(session.process(CameraFrame(data, 0.0, 0.0, client_seq=seq)))
    assert msg["timing"]["dropped"] == 2 + 2 + 2
    from prometheus_client import generate_latest

    assert 'reason="page",stream="camera"} 4.0' in generate_latest(metrics.registry).decode()


def test_camera_frame_numbers_that_do_not_advance_count_as_one_frame():
    session = CameraSession(FakeEngine(), Settings(), Metrics())
    session.negotiate({"width": 96, "height": 64})
    steps = [session._frames_elapsed(s) for s in (5, 7, 7, 3, 3 + MAX_SEQ_GAP + 1, None, 9, 10)]
    assert steps == [1, 2, 1, 1, 1, 1, 1, 1]
    session._frames_elapsed(20)
    session.negotiate({"width": 96, "height": 64})  # a new size starts the count again
    assert session._frames_elapsed(25) == 1


def test_the_running_average_of_skipped_frames_matches_the_engines_own():
    from v1motion.models.motion.engine import MotionEngine
    from v1motion.service.live.analyse import ELAPSED_TAU

    assert MotionEngine.load_default().pooling.tau == ELAPSED_TAU
