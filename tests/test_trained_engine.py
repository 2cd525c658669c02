"""The shipped weights: the engine reports the true direction of motion it never saw in training."""

import numpy as np
import pytest

from models.engine import DEFAULT_WEIGHTS, MotionEngine
from models.readout import angular_error
from models.stimuli import load_still, pan_sequence


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
