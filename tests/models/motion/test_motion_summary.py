"""v1motion.models.motion.motion_summary against a slow loop and planted motion."""

import numpy as np
import pytest

from v1motion.models.motion.motion_summary import (
    MotionSummary,
    circular_mean,
    direction_bin_centres,
    direction_histogram,
    histogram_peaks,
    smooth_circular,
    weighted_mean_speed,
    weighted_median,
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
    [main] = s.main_directions_
    assert main["direction_deg"] == pytest.approx(90, abs=2) and main["share"] == 1.0
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
    assert s.main_directions_ == [] and s.to_dict()["main_directions"] == []


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


def _up_then_down_left(rng, frames=20, shape=(12, 16)):
    """Grids of a box moving up (90 deg, 2 px/frame) for half the frames, then down-left (225 deg,
    4 px/frame); the box covers a quarter of the cells; the rest is still, low-confidence noise."""
    for t in range(frames):
        up = t < frames // 2
        direction = rng.uniform(0, 2 * np.pi, shape)
        speed = rng.uniform(0, 0.3, shape)
        conf = rng.uniform(0, 0.3, shape)
        box = (slice(3, 9), slice(4, 12))
        direction[box] = np.radians(90 if up else 225) + rng.normal(0, 0.08, (6, 8))
        speed[box] = (2.0 if up else 4.0) * np.exp(rng.normal(0, 0.05, (6, 8)))
        conf[box] = rng.uniform(0.7, 1.0, (6, 8))
        yield direction, speed, conf


def test_main_directions_of_up_then_down_left_are_the_two_motions(rng):
    s = MotionSummary()
    every = [g for g in _up_then_down_left(rng)]
    for g in every:
        s.update(*g)
    main = sorted(s.main_directions_, key=lambda m: m["direction_deg"])
    assert [m["direction_deg"] for m in main] == pytest.approx([90, 225], abs=4)
    assert [m["share"] for m in main] == pytest.approx([0.5, 0.5], abs=0.05)
    assert [m["median_speed_px_per_frame"] for m in main] == pytest.approx([2.0, 4.0], rel=0.1)
    # the mean of the two would point where nothing moved
    d = np.concatenate([g[0].ravel() for g in every])
    c = np.concatenate([g[2].ravel() for g in every])
    mean_deg = np.degrees(circular_mean(d, c))
    assert 140 < mean_deg < 175
    assert all(abs((m["direction_deg"] - mean_deg + 180) % 360 - 180) > 45 for m in main)


def test_main_directions_ignore_unconfident_cells_and_small_peaks(rng):
    s = MotionSummary(min_share=0.10)
    shape = (10, 10)
    for _ in range(5):
        direction = np.full(shape, np.radians(30.0))
        conf = np.full(shape, 0.9)
        direction[0, :3] = np.radians(200.0)  # 6 % of the moving mass: below min_share
        direction[5:, :] = np.radians(300.0)
        conf[5:, :] = 0.4  # not moving (confidence <= 0.5)
        s.update(direction, np.ones(shape), conf)
    [main] = s.main_directions_
    assert main["direction_deg"] == pytest.approx(30, abs=1)
    assert main["share"] == pytest.approx(47 / 50, abs=1e-3)


def test_a_peak_across_zero_degrees_is_one_peak():
    hist = np.zeros(72)
    hist[[70, 71, 0, 1, 2]] = [1, 3, 5, 3, 1]
    hist[36] = 4  # a second motion, to the left
    peaks = histogram_peaks(hist, min_share=0.0, sigma_bins=1.5)
    assert [p[0] for p in peaks] == [0, 36]
    assert [p[1] for p in peaks] == pytest.approx([13 / 17, 4 / 17])
    assert peaks[0][2][[70, 71, 0, 1, 2]].all()


def test_circular_smoothing_keeps_the_total_and_wraps(rng):
    hist = rng.uniform(0, 1, 36)
    sm = smooth_circular(hist, 2.0)
    assert sm.sum() == pytest.approx(hist.sum())
    one = np.zeros(36)
    one[0] = 1.0
    sm = smooth_circular(one, 2.0)
    assert sm[1] == pytest.approx(sm[35]) and sm[0] == sm.max()


def test_weighted_median_matches_repeated_values(rng):
    values = rng.uniform(0, 10, 15)
    counts = rng.integers(0, 5, 15)
    counts[0] = 1
    expect = np.sort(np.repeat(values, counts))[(counts.sum() - 1) // 2]
    assert weighted_median(values, counts) == pytest.approx(expect)
    assert np.isnan(weighted_median(values, np.zeros(15)))


def test_cells_count_as_the_engine_shows_them_and_a_few_confident_cells_are_no_main_direction():
    """Faint cells (below 0.2, the engine's MOVING_FROM) count nowhere: a still video's faint
    cells made its direction histogram and speed over time. A few cells confident on a frame or two
    (a still video's start) are no main direction: it reported 100 degrees, 67 %."""
    from v1motion.models.motion.engine import MOVING_FROM

    assert MotionSummary().moving_from == MOVING_FROM
    shape = (30, 40)
    s = MotionSummary()
    for t in range(60):
        direction = np.full(shape, np.radians(45.0))
        speed = np.full(shape, 3.0)
        conf = np.full(shape, 0.15)  # faint everywhere
        if t < 2:
            direction[:3, 0], speed[:3, 0], conf[:3, 0] = np.radians(100.0), 5.0, 0.9
        s.update(direction, speed, conf)
    assert s.main_directions_ == []  # 5.4 cell-frames of confident motion in 60 frames
    assert np.all(s.speed_over_time_[2:] == 0.0)
    assert s.speed_over_time_[0] == pytest.approx(5.0)
    assert int(np.argmax(s.direction_hist_)) == 4  # 100 degrees in 16 bins: only the shown cells
    # the same cells confident for longer are a main direction
    for _ in range(3):
        direction = np.full(shape, np.radians(45.0))
        conf = np.zeros(shape)
        direction[:3, 0], conf[:3, 0] = np.radians(100.0), 0.9
        s.update(direction, np.full(shape, 5.0), conf)
    [main] = s.main_directions_
    assert main["direction_deg"] == pytest.approx(100, abs=3)
