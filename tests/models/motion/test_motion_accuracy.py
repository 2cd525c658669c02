"""The shipped engine against ground truth, one small test per benchmark family.

Tolerances are loose enough for a small sample and tight enough to fail on the read-out this
replaced (per family, what that read-out scored on the same quick sequences is in the comment).
The full figures are in ``docs/motion/accuracy.md`` (``python bench/accuracy.py``).
"""

import pytest

from v1motion.models.motion.engine import MotionEngine
from v1motion.models.motion.motion_eval import evaluate_family


@pytest.fixture(scope="module")
def engine():
    return MotionEngine.load_default()


def test_rigid_pans_of_held_out_stills(engine):
    r = evaluate_family(engine, "pan")
    assert r["global_dir_err_median_deg"] < 10
    # Without the integration over neighbouring cells: 12.6 deg median, 67 deg p90 on these sequences.
    assert r["cell_dir_err_median_deg"] < 10
    assert r["cell_dir_err_p90_deg"] < 40
    assert r["speed_rel_err_median"] < 0.3


def test_gratings_read_along_their_normal_and_never_a_clipped_speed(engine):
    state = engine.new_state()
    from v1motion.models.motion import stimuli

    frames = stimuli.grating_sequence((240, 320), 0.3, 1.0, 16.0, 12)
    speeds = [engine.step(state, f).global_speed for f in frames]
    assert max(speeds) <= 16.0  # the fastest speed class; the old read-out showed 148
    r = evaluate_family(engine, "grating")
    assert r["global_dir_err_median_deg"] < 10
    assert r["speed_rel_err_median"] < 0.3


def test_still_frames_are_mostly_still(engine):
    r = evaluate_family(engine, "still")
    # 0.9 % without the code-change gate on these frames
    assert r["false_motion_rate"] < 0.005


def test_object_over_a_still_background(engine):
    r = evaluate_family(engine, "object")
    assert r["cell_dir_err_median_deg"] < 25
    # 7.6 % without the code-change gate on these sequences
    assert r["false_motion_rate"] < 0.04


def test_a_turn_is_followed_within_a_few_frames(engine):
    r = evaluate_family(engine, "abrupt")
    # The linear read-out took 6 frames (median) and never recovered on 5 of 24 turns. The MT
    # read-out takes 4, but on one of these four (rocket, turning to move down) it stays 25-40 deg
    # off for the 10 frames scored: a bias on that image, not a lag (see docs/motion/accuracy.md).
    assert r["frames_to_recover_median"] <= 5
    assert r["not_recovered"] <= 1
