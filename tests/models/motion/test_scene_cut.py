"""Scene cuts (``SCENE_CUT``, ``LIGHT_ON``): what counts as one, and the stream starting anew at one
in ``step`` and ``run``."""

from __future__ import annotations

import math

import numba
import numpy as np
import pytest

from v1motion.models.motion.engine import MotionEngine, cut_features, is_scene_cut, to_grey
from v1motion.models.motion.stimuli import grating_frame, load_still, pan_sequence

SHAPE = (120, 160)


def _u8(frames) -> np.ndarray:
    return np.clip(np.asarray(frames) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _pan(name: str, direction_deg: float, speed: float, n: int) -> np.ndarray:
    image = load_still(name)
    centre = (image.shape[1] / 2.0, image.shape[0] / 2.0)
    return _u8(pan_sequence(image, centre, math.radians(direction_deg), speed, n, SHAPE))


def _grating(direction_deg: float, speed: float, n: int, period: float = 16.0) -> np.ndarray:
    d = math.radians(direction_deg)
    return _u8([grating_frame(SHAPE, d, speed, period, float(t), "sine") for t in range(n)])


def _cut(a: np.ndarray, b: np.ndarray) -> bool:
    return is_scene_cut(cut_features(to_grey(a)), cut_features(to_grey(b)))


@pytest.mark.parametrize("speed", [0.5, 2.0, 8.0, 16.0])
@pytest.mark.parametrize("name", ["camera", "astronaut", "grass"])
def test_a_pan_is_not_a_cut(name, speed):
    frames = _pan(name, 30.0, speed, 4)
    assert not any(_cut(a, b) for a, b in zip(frames, frames[1:], strict=False))


@pytest.mark.parametrize("speed", [1.0, 2.0, 4.0])
def test_a_drifting_grating_is_not_a_cut(speed):
    frames = _grating(45.0, speed, 5, period=8.0)
    assert not any(_cut(a, b) for a, b in zip(frames, frames[1:], strict=False))


def test_a_change_of_light_and_camera_noise_are_not_cuts(rng):
    frame = _pan("camera", 0.0, 1.0, 1)[0]
    darker = (frame * 0.5).astype(np.uint8)  # the histogram moves, the thumbnail does not
    noisy = np.clip(frame + rng.normal(0, 4, frame.shape), 0, 255).astype(np.uint8)
    assert not _cut(frame, darker) and not _cut(frame, noisy)


def _still(name: str, level: float, rng) -> np.ndarray:
    """A still view of ``name`` at 240x320 lit at ``level`` of its brightness, camera noise
    2/255."""
    image = load_still(name)
    centre = (image.shape[1] / 2.0, image.shape[0] / 2.0)
    frame = pan_sequence(image, centre, 0.0, 0.0, 1, (240, 320))[0] * level * 255.0
    return np.clip(frame + rng.normal(0, 2, frame.shape) + 0.5, 0, 255).astype(np.uint8)


def test_a_light_switched_on_starts_anew_flicker_and_dimming_do_not(rng):
    def lit(a, b):  # the same view, its brightness from a to b
        return _cut(_still("chelsea", a, rng), _still("chelsea", b, rng))

    assert lit(0.6, 1.0) and lit(0.3, 0.5)  # LIGHT_ON: up by 1.4 or more
    assert not lit(0.77, 1.0) and not lit(1.0, 0.6) and not lit(0.5, 0.3)


@pytest.mark.parametrize("name", ["chelsea", "astronaut"])
def test_a_still_view_lit_up_shows_no_motion(shipped, rng, name):
    """Read as motion, the frame a light came on showed 5-8 % of the cells confident and a dominant
    motion 0.82-0.87 confident (LIGHT_ON)."""
    state = shipped.new_state()
    got = [shipped.step(state, _still(name, 0.6 if t < 10 else 1.0, rng)) for t in range(14)]
    assert max(m.global_confidence for m in got) < 0.3
    assert max(float(m.confidence.max()) for m in got) <= 0.5


def test_another_scene_is_a_cut():
    pan = _pan("astronaut", 0.0, 1.0, 1)[0]
    assert _cut(pan, _grating(90.0, 1.0, 1)[0]) and _cut(_grating(90.0, 1.0, 1)[0], pan)
    assert _cut(_pan("camera", 0.0, 1.0, 1)[0], _pan("coffee", 0.0, 1.0, 1)[0])


def test_what_is_not_seen_as_a_cut():
    """Two fine gratings, flat in the thumbnail, are read as motion (a change of velocity); frames of
    two sizes are not compared (the size change starts the stream anew anyway)."""
    assert not _cut(_grating(0.0, 1.0, 1)[0], _grating(90.0, 1.0, 1)[0])
    small = _pan("camera", 0.0, 1.0, 1)[0][:64, :96]
    assert not _cut(_pan("coffee", 0.0, 1.0, 1)[0], small)


@pytest.fixture(scope="module")
def shipped():
    e = MotionEngine.load_default()
    e.warmup()
    return e


def _cut_sequence() -> np.ndarray:
    """Ten frames of a pan right, then ten of a grating moving up: a cut at frame 10."""
    return np.concatenate([_pan("astronaut", 0.0, 2.0, 10), _grating(90.0, 1.0, 10)])


def test_step_starts_the_stream_anew_at_a_cut(shipped):
    frames = _cut_sequence()
    state = shipped.new_state()
    got = [shipped.step(state, f) for f in frames]
    # before the cut as without cut detection; the cut's frame reads no motion, as a first frame
    off = MotionEngine.load_default(scene_cut=None)
    s_off = off.new_state()
    want = [off.step(s_off, f) for f in frames]
    for a, b in zip(got[:10], want[:10], strict=True):
        np.testing.assert_array_equal(a.confidence, b.confidence)
    assert want[10].global_confidence > 0.5  # without it, the cut was shown as confident motion
    assert got[10].global_confidence == 0 and not got[10].confidence.any()
    assert state.frames == 10  # counted from the cut
    # from the cut on, what a stream that starts there reads
    fresh_state = shipped.new_state()
    fresh = [shipped.step(fresh_state, f) for f in frames[10:]]
    for a, b in zip(got[10:], fresh, strict=True):
        np.testing.assert_array_equal(a.direction, b.direction)
        np.testing.assert_array_equal(a.confidence, b.confidence)
    # and soon the grating's motion (up)
    errs = [
        abs((math.degrees(m.global_direction) - 90.0 + 180.0) % 360.0 - 180.0) for m in got[12:]
    ]
    assert np.median(errs) < 20.0


def test_a_stream_of_one_scene_is_not_restarted(shipped):
    frames = _pan("grass", 120.0, 4.0, 12)
    state = shipped.new_state()
    for f in frames:
        shipped.step(state, f)
    assert state.frames == len(frames)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs NUMBA_NUM_THREADS >= 2")
def test_run_starts_anew_at_the_same_cut_as_step(shipped, record_encodes):
    two = MotionEngine.load_default(threads=2, parallel_from_px=0)
    frames = _cut_sequence()
    state = shipped.new_state()
    want = [shipped.step(state, f) for f in frames]
    where = record_encodes(two._serial)
    got = list(two.run(two.new_state(), frames))
    # the same reads: two threads sum some products in another order (1e-7 apart on one machine)
    for a, b in zip(got, want, strict=True):
        turn = np.angle(np.exp(1j * (a.direction.astype(float) - b.direction)))
        assert np.abs(turn).max() < 1e-4
        np.testing.assert_allclose(a.confidence, b.confidence, atol=1e-5)
    # the first frame and the cut encoded on this thread, once the frames before them are read
    here = [k for k, (name, _, _) in enumerate(where) if not name.startswith("engine-encode-ahead")]
    assert here == [0, 10] and [k for k, (_, _, r) in enumerate(where) if r] == [10]
