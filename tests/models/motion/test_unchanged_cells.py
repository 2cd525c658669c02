"""Cells whose image did not change, or appeared at once, are shown still (``UNCHANGED``)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from v1motion.models.motion import stimuli
from v1motion.models.motion.engine import MotionEngine
from v1motion.models.motion.motion_summary import MotionSummary


@pytest.fixture(scope="module")
def engine():
    e = MotionEngine.load_default()
    e.warmup()
    return e


def _still(name: str) -> np.ndarray:
    image = stimuli.load_still(name)
    centre = (image.shape[1] / 2.0, image.shape[0] / 2.0)
    frame = stimuli.pan_sequence(image, centre, 0.0, 0.0, 1, (240, 320))[0]
    return np.clip(frame * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _captioned(frame: np.ndarray, text: str) -> np.ndarray:
    out = frame.copy()
    for colour, thickness in ((0, 5), (255, 2)):  # white letters outlined in black
        cv2.putText(out, text, (30, 215), cv2.FONT_HERSHEY_SIMPLEX, 0.9, colour, thickness)
    return out


@pytest.mark.parametrize("name", ["astronaut", "coffee"])
def test_captions_coming_and_going_over_a_still_shot_are_no_motion(engine, name):
    """A still shot repeated exactly (as a video codec repeats still areas), captions changing every
    10 frames: before ``UNCHANGED`` the cells around the caption were shown moving for frames after
    each change (the read-out's averages carried it) and a video's main directions reported it."""
    still = _still(name)
    captions = [None, "Where is everybody?", None, "Over here!", "Coming.", None]
    state, summary = engine.new_state(), MotionSummary()
    peak = 0.0
    for t in range(60):
        text = captions[t // 10]
        frame = still if text is None else _captioned(still, text)
        mf = engine.step(state, frame)
        summary.update(mf.direction, mf.speed, mf.confidence)
        peak = max(peak, float(mf.confidence.max()))
    assert summary.main_directions_ == []
    assert peak <= 0.5


def test_a_pan_over_noise_free_frames_is_still_read(engine):
    image = stimuli.load_still("gravel")
    frames = stimuli.pan_sequence(image, (256.0, 256.0), 0.0, 0.5, 16, (240, 320))
    state = engine.new_state()
    read = [engine.step(state, np.clip(f * 255 + 0.5, 0, 255).astype(np.uint8)) for f in frames]
    for mf in read[8:]:
        assert mf.global_confidence > 0.9 and (mf.confidence > 0.5).mean() > 0.4
