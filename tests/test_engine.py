"""The per-frame engine: output contract, recurrent state, and clear errors on bad frames."""

import numpy as np
import pytest

from models.engine import MotionEngine


@pytest.fixture(scope="module")
def engine():
    e = MotionEngine.random(seed=0)
    e.warmup()
    return e


def test_motion_frame_contract(engine, rng):
    state = engine.new_state()
    frame = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
    mf = engine.step(state, frame)
    gh, gw = 120 // mf.cell, 160 // mf.cell
    for name in ("direction", "speed", "confidence"):
        arr = getattr(mf, name)
        assert arr.shape == (gh, gw) and arr.dtype == np.float32 and np.isfinite(arr).all()
    assert np.all((mf.confidence >= 0) & (mf.confidence <= 1))
    assert np.all(mf.speed > 0)
    assert mf.direction_hist.shape == (len(engine.direction_bins),)
    assert mf.speed_hist.shape == (len(engine.speed_bins),)
    assert len(mf.top_units) <= 10
    d = mf.to_dict()
    assert len(d["direction_deg"]) == gh and len(d["direction_deg"][0]) == gw
    report = engine.tuning_report()
    assert report["n_units"] == len(report["units"]) == engine.model.n_units


def test_state_is_per_stream_and_resets_on_new_size(engine, rng):
    frames = rng.integers(0, 255, (3, 96, 128), dtype=np.uint8)
    a, b = engine.new_state(), engine.new_state()
    for f in frames:
        ra = engine.step(a, f)
    for f in frames:
        rb = engine.step(b, f)
    np.testing.assert_array_equal(ra.direction, rb.direction)  # deterministic, independent states
    engine.step(a, rng.integers(0, 255, (64, 64), dtype=np.uint8))
    assert a.shape == (64, 64) and a.frames == 1


def test_grey_float_and_uint8_agree(engine, rng):
    f = rng.integers(0, 255, (64, 96), dtype=np.uint8)
    r1 = engine.step(engine.new_state(), f)
    r2 = engine.step(engine.new_state(), f.astype(np.float32) / 255)
    np.testing.assert_allclose(r1.direction, r2.direction, atol=1e-5)


def test_constant_frame_has_no_confident_motion(engine):
    state = engine.new_state()
    for _ in range(3):
        mf = engine.step(state, np.full((96, 128), 128, np.uint8))
    assert mf.active_per_patch == 0
    assert mf.global_confidence < 1e-3


@pytest.mark.parametrize(
    "frame, message",
    [
        (np.zeros((64, 64), np.int32), "dtype"),
        (np.zeros((64, 64, 3), np.float32), "uint8"),
        (np.zeros((64,), np.uint8), "shape"),
        (np.zeros((2, 64, 64, 3), np.uint8), "shape"),
        (np.full((64, 64), np.nan, np.float32), "NaN"),
        (np.zeros((8, 8), np.uint8), "too small"),
        (np.zeros((5000, 40), np.uint8), "too large"),
        ([[0, 1], [2, 3]], "numpy array"),
    ],
)
def test_bad_frames_raise_clear_errors(engine, frame, message):
    with pytest.raises(ValueError, match=message):
        engine.step(engine.new_state(), frame)


def test_to_dict_and_the_websocket_payload_name_the_same_fields_in_degrees(engine, rng):
    from service.protocol import motion_payload

    mf = engine.step(engine.new_state(), rng.integers(0, 255, (96, 128), dtype=np.uint8))
    d, p = mf.to_dict(), motion_payload(mf)
    assert set(d) == set(p) - {"rows", "cols"}
    assert {"direction_deg", "speed_px_per_frame", "global_direction_deg"} <= set(d)
    # radians inside the engine, degrees [0, 360) in every output; 0 = right, 90 = up on screen
    expected = np.mod(np.rad2deg(mf.direction), 360)
    assert np.allclose(d["direction_deg"], expected, atol=1e-3)
    gap = (np.asarray(p["direction_deg"]) - expected + 180) % 360 - 180
    assert np.abs(gap).max() <= 0.5 + 1e-6
    assert 0 <= d["global_direction_deg"] < 360.001
    g_gap = (p["global_direction_deg"] - d["global_direction_deg"] + 180) % 360 - 180
    assert abs(g_gap) <= 0.06
