"""The shipped weights: the engine reports the true direction of motion it never saw in training."""

import numpy as np
import pytest

from tests import naive
from v1motion.models.motion.engine import DEFAULT_WEIGHTS, MotionEngine, to_grey
from v1motion.models.motion.readout import angular_error
from v1motion.models.motion.stimuli import load_still, pan_sequence


@pytest.fixture(scope="module")
def engine():
    e = MotionEngine.load_default()
    e.warmup()
    return e


def test_shipped_weights_are_small_and_complete():
    assert DEFAULT_WEIGHTS.stat().st_size < 5e6
    control = DEFAULT_WEIGHTS.with_name("ssrnn_shuffled_control.npz")
    assert control.exists() and control.stat().st_size < 5e6


@pytest.mark.parametrize("image", ["chelsea", "rocket"])
def test_direction_of_held_out_pans(engine, image):
    img = load_still(image)
    errors = []
    for direction in np.arange(8) * np.pi / 4:
        frames = pan_sequence(
            img, (img.shape[1] / 2, img.shape[0] / 2), direction, 1.5, 15, (128, 128)
        )
        state = engine.new_state()
        for f in frames:
            mf = engine.step(state, (f * 255).astype(np.uint8))
        errors.append(np.rad2deg(angular_error(mf.global_direction, direction)))
    assert np.mean(errors) < 35, errors
    assert max(errors) < 90, errors


def test_tuning_report_describes_every_unit(engine):
    rep = engine.tuning_report()
    assert rep["n_units"] == engine.model.n_units == len(rep["units"])
    unit = rep["units"][0]
    assert len(unit["direction_tuning"]) == len(rep["directions_deg"]) == 16
    assert len(unit["speed_tuning"]) == len(rep["speeds"])
    assert sum(u["di"] > 0.5 and u["responsive"] for u in rep["units"]) > 0.2 * rep["n_units"]


def test_codes_of_a_pan_match_the_naive_reference(engine):
    """The shipped network on a real moving sequence: the same active units, values within 1e-5, at
    every level of every frame, as the level-by-level numpy reference (so the read-out, which only sees
    the codes, is unchanged)."""
    img = load_still("chelsea")
    frames = pan_sequence(img, (img.shape[1] / 2, img.shape[0] / 2), 0.6, 1.5, 8, (120, 168))
    state = engine.new_state()
    state.shape, state.prev, state.rms = (120, 168), [None] * engine.levels, [None] * engine.levels
    ref_state = {}
    active = 0
    for f in frames:
        grey = to_grey((f * 255).astype(np.uint8))
        codes = engine.encode(state, grey)
        for (code, _, _), want in zip(codes, naive.encode(engine, ref_state, grey), strict=True):
            assert len(code.cnt) == len(want)
            for m, (units, vals) in enumerate(want):
                n = code.cnt[m]
                assert list(code.idx[m, :n]) == list(units), f"patch {m}"
                np.testing.assert_allclose(code.val[m, :n], vals, rtol=1e-5, atol=1e-6)
            active += int(code.cnt.sum())
    assert active > 100
