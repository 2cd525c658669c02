"""Server-side sources: synthetic ground truth, looping video files, cameras that are not there."""

from __future__ import annotations

import math
import threading

import cv2
import numpy as np
import pytest

from v1motion.service.live.sources import (
    OpenCVSource,
    SourceEnded,
    SourceError,
    SyntheticSource,
    source_factory,
)
from v1motion.service.settings import Settings, SourceSpec


def measured_shift(a, b):
    """Content displacement (dx, dy_up) from frame a to frame b by phase correlation (OpenCV)."""
    win = cv2.createHanningWindow(a.shape[::-1], cv2.CV_32F)
    (dx, dy), _ = cv2.phaseCorrelate(a.astype(np.float32), b.astype(np.float32), win)
    return dx, -dy


@pytest.mark.parametrize("segment", range(len(SyntheticSource.SCHEDULE)))
def test_synthetic_source_moves_as_its_schedule_says(segment):
    spec = SourceSpec(name="s", kind="synthetic", fps=240)
    src = SyntheticSource(spec, threading.Event())
    src.open()
    n = src._segment_frames
    src._t = segment * n + n // 2
    frames = [src.read() for _ in range(5)]
    kind, direction, speed = src.velocity_at(segment * n + n // 2)
    assert src.truth == {
        "kind": kind,
        "direction_deg": round(math.degrees(direction), 1),
        "speed_px_per_frame": speed,
    }
    assert frames[0].shape == (240, 320) and frames[0].dtype == np.uint8
    dx, dy = np.divide(measured_shift(frames[0], frames[4]), 4)  # 4 frames: sub-pixel errors shrink
    if kind == "pan":  # a pan moves the whole content: the shift is the velocity
        assert dx == pytest.approx(speed * math.cos(direction), abs=0.25)
        assert dy == pytest.approx(speed * math.sin(direction), abs=0.25)
    else:  # a grating only shows motion along its normal (the aperture problem): project on it
        along = dx * math.cos(direction) + dy * math.sin(direction)
        assert along == pytest.approx(speed, abs=0.3)


def test_synthetic_schedule_changes_velocity_every_few_seconds():
    src = SyntheticSource(SourceSpec(name="s", kind="synthetic", fps=30), threading.Event())
    seen = {src.velocity_at(t) for t in range(0, 30 * 32, 15)}
    assert len(seen) == len(SyntheticSource.SCHEDULE)
    assert src.velocity_at(0) == src.velocity_at(119) != src.velocity_at(120)


def test_video_file_source_loops(tmp_path):
    path = tmp_path / "clip.avi"
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30, (160, 120))
    for k in range(5):
        w.write(np.full((120, 160, 3), 40 * k, np.uint8))
    w.release()
    spec = SourceSpec(name="clip", kind="file", target=str(path), loop=True, fps=240)
    src = source_factory(spec, Settings())(threading.Event())
    src._pacer = None
    src.open()
    src._pacer = None  # read as fast as possible
    means = [src.read().mean() for _ in range(12)]
    src.close()
    assert len(means) == 12 and means[5] == pytest.approx(means[0], abs=3)  # wrapped around
    spec = SourceSpec(name="clip", kind="file", target=str(path), loop=False)
    src = OpenCVSource(spec, Settings())
    src.open()
    src._pacer = None
    frames = [src.read() for _ in range(5)]
    assert all(f is not None for f in frames)
    with pytest.raises(SourceEnded, match="end of"):  # a non-looping file ends: not a failure
        src.read()


def test_wide_frames_are_downscaled(tmp_path):
    path = tmp_path / "wide.avi"
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30, (1280, 720))
    w.write(np.zeros((720, 1280, 3), np.uint8))
    w.release()
    src = OpenCVSource(SourceSpec(name="w", kind="file", target=str(path)), Settings())
    src.open()
    src._pacer = None
    assert src.read().shape == (360, 640, 3)


def test_missing_camera_is_a_source_error():
    src = OpenCVSource(SourceSpec(name="cam", kind="camera", target="63"), Settings())
    with pytest.raises(SourceError, match="could not open camera 63"):
        src.open()


@pytest.fixture
def web_server(tmp_path):
    """A plain HTTP file server on tmp_path; its base URL."""
    import functools
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=tmp_path))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


@pytest.mark.parametrize("loop", [True, False])
def test_a_recorded_video_at_a_url_plays_at_its_frame_rate_as_a_file_does(
    tmp_path, web_server, loop
):
    """An mp4 on a web server (or an HLS VOD playlist) was read as fast as it decoded (300 frames
    in 0.08 s): the engine, taking the newest frame, compared frames dozens apart; and each end was
    a failure and a reconnection. It now plays at its own rate and loops (or ends) as a file does."""
    w = cv2.VideoWriter(str(tmp_path / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 25, (160, 120))
    for k in range(10):
        w.write(np.full((120, 160, 3), 20 * k, np.uint8))
    w.release()
    spec = SourceSpec(name="web", kind="url", target=f"{web_server}/clip.avi", loop=loop)
    src = OpenCVSource(spec, Settings())
    src.open()
    assert src._pacer is not None and src._pacer.period == pytest.approx(1 / 25)
    start = cv2.getTickCount()
    means = [src.read().mean() for _ in range(10)]
    seconds = (cv2.getTickCount() - start) / cv2.getTickFrequency()
    assert seconds >= 9 / 25 * 0.95  # paced: ten frames of a 25 fps video take 0.36 s or more
    assert means == sorted(means)  # in order, none skipped
    if loop:
        assert src.read().mean() == pytest.approx(means[0], abs=3)  # from the start again
    else:
        with pytest.raises(SourceEnded, match="end of"):
            src.read()
    src.close()
