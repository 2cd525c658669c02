"""Tuning metrics on curves with known answers; the read-out recovers a planted linear code."""

import numpy as np
import pytest

from v1motion.models.motion.readout import MotionReadout, angular_error
from v1motion.models.motion.tuning import (
    DIRECTIONS,
    GRATING_PERIODS,
    N_DIRECTIONS,
    SPEEDS,
    GratingTuning,
    NaturalTuning,
    best_condition_curves,
    circ_dist,
    direction_index,
    drifting,
    preferred_orientation,
    responsive_mask,
    summarize,
)


def test_direction_index_on_known_curves():
    flat = np.ones(N_DIRECTIONS)
    one_way = np.zeros(N_DIRECTIONS)
    one_way[3] = 2.0
    half = np.ones(N_DIRECTIONS)
    half[5] = 4.0
    half[13] = 2.0  # opposite of 5
    silent = np.zeros(N_DIRECTIONS)
    di, pref, r_pref = direction_index(np.stack([flat, one_way, half, silent], 1))
    np.testing.assert_allclose(di, [0.0, 1.0, 0.5, 0.0])
    assert pref[1] == 3 and pref[2] == 5
    np.testing.assert_allclose(r_pref, [1.0, 2.0, 4.0, 0.0])


def test_best_condition_is_the_peak_response():
    resp = np.zeros((N_DIRECTIONS, 3, 2))
    resp[2, 1, 0] = 5.0  # unit 0 peaks in condition 1
    resp[7, 2, 1] = 1.0  # unit 1 peaks in condition 2
    curves, best = best_condition_curves(resp)
    assert list(best) == [1, 2]
    assert curves[2, 0] == 5.0 and curves[7, 1] == 1.0


def test_gratings_that_flicker_or_stand_still_are_not_drifting():
    moves = drifting(GRATING_PERIODS, SPEEDS)  # periods 4-32 px, speeds 0.25-8 px/frame
    assert moves[0].tolist() == [
        True,
        True,
        True,
        False,
        False,
        False,
    ]  # 4 px: 2 px/frame is 0.5 cycle
    assert moves[1].tolist() == [
        True,
        True,
        True,
        True,
        False,
        False,
    ]  # 8 px: 4 px/frame is 0.5 cycle
    assert moves[3].all()  # 32 px drifts at every speed


def test_a_unit_strongest_on_a_counterphase_grating_is_tuned_by_the_drifting_ones():
    """The shipped tuning read such units at their strongest grating, which flickers (period 4 px
    at 2 px/frame): DI 0 and a preferred direction picked between two opposites."""
    p, s = GRATING_PERIODS.index(4.0), SPEEDS.index(2.0)
    resp = np.zeros((N_DIRECTIONS, len(GRATING_PERIODS), len(SPEEDS), 1, 3))
    resp[[3, 11], p, s, 0, 0] = 2.0  # unit 0: counterphase, both opposite directions alike...
    resp[11, p, SPEEDS.index(0.5), 0, 0] = 1.5  # ...but it prefers 11 where the grating drifts
    resp[11, p, SPEEDS.index(1.0), 0, 0] = 1.2
    resp[5, 3, :, 0, 1] = [0.1, 0.2, 0.4, 0.8, 1.0, 0.6]  # unit 1: 32 px, peaks at 4 px/frame
    resp[4, p, SPEEDS.index(8.0), 0, 2] = 3.0  # unit 2: strongest on a grating that stands still
    resp[6, 2, SPEEDS.index(1.0), 0, 2] = 1.0
    gt = GratingTuning(resp, GRATING_PERIODS, SPEEDS)
    nt = NaturalTuning(np.ones((N_DIRECTIONS, 1, 1, 3)), (1.0,))

    class Model:  # what summarize reads of the model besides the responses
        R_ = np.zeros((3, 3))

        def unit_atoms(self):
            return np.arange(3)

    t = summarize(Model(), gt, nt)
    np.testing.assert_allclose(t.di, [1.0, 1.0, 1.0])
    np.testing.assert_allclose(t.pref_dir, DIRECTIONS[[11, 5, 6]])
    np.testing.assert_allclose(t.pref_speed, [0.5, 4.0, 1.0])
    np.testing.assert_allclose(
        t.speed_curves[0, :3], [0.0, 1.5, 1.2]
    )  # 2 px/frame at 4 px left out
    np.testing.assert_allclose(t.speed_curves[1], [0.1, 0.2, 0.4, 0.8, 1.0, 0.6])
    assert np.isfinite(t.speed_curves).all()


def test_preferred_orientation_is_perpendicular_to_motion():
    curves = np.zeros((N_DIRECTIONS, 1))
    curves[0] = 1.0  # prefers rightward drift: a vertical grating, orientation 90 degrees
    curves[8] = 1.0
    assert circ_dist(preferred_orientation(curves)[0], np.pi / 2, np.pi) < 1e-6


def test_responsive_mask_is_relative_to_the_population():
    r = np.array([0.0, 1e-4, 0.5, 1.0, 1.0])
    assert list(responsive_mask(r)) == [False, False, True, True, True]
    assert not responsive_mask(np.zeros(4)).any()


def test_readout_recovers_a_planted_linear_code(rng):
    n, f = 600, 40
    direction = rng.uniform(-np.pi, np.pi, n)
    speed = np.exp(rng.uniform(np.log(0.5), np.log(4), n))
    # Features: a few units tuned to cos/sin of direction and to log speed, plus noise.
    basis = np.stack([np.cos(direction), np.sin(direction), np.log(speed)], 1)
    mix = rng.standard_normal((3, f))
    x = np.maximum(basis @ mix + 0.1 * rng.standard_normal((n, f)) + 1.0, 0)
    ro = MotionReadout().fit(x[:400], direction[:400], speed[:400])
    pdir, pspeed, conf = ro.predict(x[400:])
    assert np.rad2deg(angular_error(pdir, direction[400:])).mean() < 10
    assert np.median(np.abs(pspeed / speed[400:] - 1)) < 0.15
    assert np.all((conf >= 0) & (conf <= 1))


def test_readout_rejects_bad_use():
    with pytest.raises(RuntimeError, match="not fitted"):
        MotionReadout().predict(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="at least 8"):
        MotionReadout().fit(np.zeros((3, 2)), np.zeros(3), np.ones(3))


def test_angular_error_wraps():
    assert angular_error(0.1, 2 * np.pi - 0.1) == pytest.approx(0.2)
    assert angular_error(np.pi, -np.pi) == pytest.approx(0.0)
    assert DIRECTIONS[4] == pytest.approx(np.pi / 2)


def test_natural_pans_in_opposite_directions_show_the_same_measured_frames():
    from v1motion.models.motion.tuning import natural_pan_stimuli

    frames, keys = natural_pan_stimuli(images=("chelsea",), speeds=(2.0,), n_positions=1, size=32)
    by_dir = {d: frames[i] for i, (d, _) in enumerate(keys)}
    warm = 3
    fwd = by_dir[0][warm:]
    back = by_dir[N_DIRECTIONS // 2][warm:][::-1]
    np.testing.assert_allclose(fwd, back, atol=1e-5)


def test_without_recurrence_natural_di_is_zero():
    from v1motion.models.motion.ssrnn import SSRNN
    from v1motion.models.motion.tuning import direction_index, natural_tuning

    m = SSRNN(n_atoms=8, n_clones=2, patch=8).init_random(seed=1, r_scale=0.0, b=-1.0)
    nt = natural_tuning(m, speeds=(1.0,), images=("chelsea",), n_positions=2, size=32)
    di, _, r_pref = direction_index(nt.resp[:, 0, 0])
    assert r_pref.max() > 0
    np.testing.assert_allclose(di, 0.0, atol=1e-4)
