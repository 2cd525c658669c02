"""Cells whose image did not change, or appeared at once, are shown still (``UNCHANGED``)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import video_samples

from v1motion.models.motion import stimuli
from v1motion.models.motion.engine import MotionEngine
from v1motion.models.motion.motion_summary import MotionSummary


@pytest.fixture(scope="module")
def engine():
    e = MotionEngine.load_default()
    e.warmup()
    return e


def _still(name: str, shape=(240, 320)) -> np.ndarray:
    image = stimuli.load_still(name)
    centre = (image.shape[1] / 2.0, image.shape[0] / 2.0)
    frame = stimuli.pan_sequence(image, centre, 0.0, 0.0, 1, shape)[0]
    return np.clip(frame * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _captioned(frame: np.ndarray, text: str) -> np.ndarray:
    out = frame.copy()
    h = frame.shape[0]
    for colour, thickness in ((0, 6), (255, 2)):  # white letters outlined in black
        cv2.putText(out, text, (40, h - 30), cv2.FONT_HERSHEY_SIMPLEX, h / 300, colour, thickness)
    return out


@pytest.mark.parametrize("name", ["coffee", "chelsea", "camera"])
def test_captions_coming_and_going_over_a_still_shot_are_no_motion(engine, name, tmp_path):
    """A still shot through a video codec (640x480, mp4v), captions changing every 10 frames: before
    ``UNCHANGED`` the cells around a caption were shown moving for frames after each change (the
    read-out's averages carried it; 29-80 confident cell-frames) and the video's main directions
    named two or three directions for a still shot."""
    still = _still(name, (480, 640))
    captions = [None, "Where is everybody?", None, "Over here!", "Coming.", None]
    shot = [still if c is None else _captioned(still, c) for c in captions for _ in range(10)]
    state, summary = engine.new_state(), MotionSummary()
    confident = 0
    for frame in video_samples.through_mp4v(shot, tmp_path / "shot.mp4"):
        mf = engine.step(state, frame)
        summary.update(mf.direction, mf.speed, mf.confidence)
        confident += int((mf.confidence > 0.5).sum())
    assert summary.main_directions_ == []
    assert confident <= 5


def test_a_pan_over_noise_free_frames_is_still_read(engine):
    image = stimuli.load_still("gravel")
    frames = stimuli.pan_sequence(image, (256.0, 256.0), 0.0, 0.5, 16, (240, 320))
    state = engine.new_state()
    read = [engine.step(state, np.clip(f * 255 + 0.5, 0, 255).astype(np.uint8)) for f in frames]
    for mf in read[8:]:
        assert mf.global_confidence > 0.9 and (mf.confidence > 0.5).mean() > 0.4


def test_a_pan_with_every_frame_shown_four_times_is_read(engine):
    """A low frame rate in a faster file (7.5 frames/s in 30): the frames that are not repeats keep
    their reading (a still view made of repeats had shown nothing at all)."""
    image = stimuli.load_still("gravel")
    frames = stimuli.pan_sequence(image, (256.0, 256.0), 0.0, 2.0, 12, (240, 320))
    state = engine.new_state()
    read = []
    for f in frames:
        frame = np.clip(f * 255 + 0.5, 0, 255).astype(np.uint8)
        read += [engine.step(state, frame) for _ in range(4)]
    new = read[32::4]  # the frames that are not repeats, after the first eight
    assert np.median([mf.global_confidence for mf in new]) > 0.9
    assert np.median([(mf.confidence > 0.5).mean() for mf in new]) > 0.4
