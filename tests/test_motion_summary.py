"""models.motion_summary against a slow loop and planted motion."""

import numpy as np
import pytest

from models.motion_summary import (
    MotionSummary,
    circular_mean,
    direction_bin_centres,
    direction_histogram,
    weighted_mean_speed,
)


def naive_direction_histogram(direction, weight, n_bins):
    """One cell at a time: nearest bin centre on the circle."""
    centres = direction_bin_centres(n_bins)
    hist = np.zeros(n_bins)
    for d, w in zip(np.ravel(direction), np.ravel(weight), strict=True):
        gaps = np.abs(np.angle(np.exp(1j * (d - centres))))
        hist[int(np.argmin(gaps))] += w
    return hist


@pytest.mark.parametrize("n_bins", [1, 4, 8, 16, 36])
def test_histogram_matches_loop(rng, n_bins):
    direction = rng.uniform(-10, 10, size=(7, 9))
    weight = rng.uniform(0, 1, size=(7, 9))
    np.testing.assert_allclose(
        direction_histogram(direction, weight, n_bins),
        naive_direction_histogram(direction, weight, n_bins),
    )


def test_histogram_non_contiguous_and_float32(rng):
    direction = rng.uniform(0, 7, size=(10, 12)).astype(np.float32)[::2, ::3]
    weight = rng.uniform(0, 1, size=(10, 12)).astype(np.float32)[::2, ::3]
    np.testing.assert_allclose(
        direction_histogram(direction, weight, 8),
        naive_direction_histogram(direction, weight, 8),
        rtol=1e-6,
    )


def test_planted_upward_motion_peaks_at_quarter_turn(rng):
    s = MotionSummary(n_bins=16)
    for _ in range(5):
        direction = np.pi / 2 + rng.normal(0, 0.05, size=(6, 8))
        s.update(direction, np.full((6, 8), 2.0), np.ones((6, 8)))
    assert int(np.argmax(s.direction_hist_)) == 4
    assert s.direction_hist_.sum() == pytest.approx(1.0)
    assert s.dominant_direction_ == pytest.approx(np.pi / 2, abs=0.05)
    np.testing.assert_allclose(s.speed_over_time_, 2.0)
    np.testing.assert_allclose(s.moving_fraction_, 1.0)


def test_confidence_weights_out_still_background():
    direction = np.zeros((4, 4))
    direction[0, 0] = np.pi  # the one moving cell goes left
    conf = np.zeros((4, 4))
    conf[0, 0] = 0.9
    speed = np.full((4, 4), 100.0)
    speed[0, 0] = 3.0
    s = MotionSummary(n_bins=4).update(direction, speed, conf)
    np.testing.assert_allclose(s.direction_hist_, [0, 0, 1, 0])
    assert s.speed_over_time_[0] == pytest.approx(3.0)
    assert s.moving_fraction_[0] == pytest.approx(1 / 16)


def test_nothing_moving_gives_zeros_and_nan():
    s = MotionSummary(n_bins=8).update(np.ones((3, 3)), np.ones((3, 3)), np.zeros((3, 3)))
    np.testing.assert_array_equal(s.direction_hist_, np.zeros(8))
    assert s.speed_over_time_[0] == 0.0
    assert np.isnan(s.dominant_direction_)
    assert s.to_dict()["dominant_direction_deg"] is None


def test_weighted_mean_speed_and_circular_mean(rng):
    speed = rng.uniform(0, 5, size=20)
    w = rng.uniform(0, 1, size=20)
    assert weighted_mean_speed(speed, w) == pytest.approx(np.average(speed, weights=w))
    assert circular_mean([0.1, 2 * np.pi - 0.1], [1, 1]) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize(
    "direction, weight, match",
    [
        (np.zeros(3), np.zeros(4), "same shape"),
        (np.array([np.nan, 0, 0]), np.ones(3), "finite"),
        (np.zeros(3), -np.ones(3), ">= 0"),
    ],
)
def test_bad_input_is_named(direction, weight, match):
    with pytest.raises(ValueError, match=match):
        direction_histogram(direction, weight, 4)
