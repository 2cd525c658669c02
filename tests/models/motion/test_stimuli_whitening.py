"""Stimuli move at the velocity they claim; whitening decorrelates natural patches."""

import cv2
import numpy as np
import pytest

from v1motion.models.motion import stimuli
from v1motion.models.motion.whitening import Whitener, extract_patches, patch_grid, zca_matrix


@pytest.mark.parametrize("direction_deg", [0, 30, 90, 200, 315])
@pytest.mark.parametrize("speed", [0.5, 1.7, 3.0])
def test_pan_moves_at_the_claimed_velocity(direction_deg, speed):
    img = stimuli.load_still("astronaut")
    d = np.deg2rad(direction_deg)
    frames = stimuli.pan_sequence(img, (256, 256), d, speed, 4, (128, 128)).astype(np.float64)
    win = cv2.createHanningWindow((128, 128), cv2.CV_64F)
    (dx, dy), response = cv2.phaseCorrelate(frames[0], frames[3], win)
    assert response > 0.3
    # Phase correlation's sub-pixel estimate is good to about a tenth of a pixel per frame.
    assert dx / 3 == pytest.approx(speed * np.cos(d), abs=0.15)
    assert dy / 3 == pytest.approx(-speed * np.sin(d), abs=0.15)  # rows grow downwards


@pytest.mark.parametrize("kind", ["square", "sine"])
def test_grating_drifts_along_its_direction(kind):
    d, speed, period = np.deg2rad(60), 1.5, 16.0
    f0 = stimuli.grating_frame((64, 64), d, speed, period, 0, kind)
    f1 = stimuli.grating_frame((64, 64), d, speed, period, 1, kind)
    # A grating is the same after moving one step along its direction: compare with a shifted copy.
    shifted = stimuli.grating_frame(
        (64, 64), d, 0.0, period, 0, kind, phase=-2 * np.pi * speed / period
    )
    np.testing.assert_allclose(f1, shifted, atol=1e-5)
    assert not np.allclose(f0, f1)
    assert f0.min() >= 0 and f0.max() <= 1


def test_bar_and_gabor_move_forward():
    bars = stimuli.bar_sequence((32, 32), 0.0, 2.0, 5)
    centre = [np.argmax(f.mean(0)) for f in bars]
    assert np.all(np.diff(centre) > 0)  # direction 0 = moving right
    gab = stimuli.gabor_sequence((32, 32), np.pi / 2, 1.0, 8.0, 3)
    assert gab.shape == (3, 32, 32) and np.isfinite(gab).all()


def test_unknown_names_list_the_valid_choices():
    with pytest.raises(ValueError, match="camera"):
        stimuli.load_still("no-such-image")
    with pytest.raises(ValueError, match="square"):
        stimuli.grating_frame((8, 8), 0, 1, 4, 0, kind="triangle")


def test_exact_zca_gives_identity_covariance(rng):
    x = rng.standard_normal((20000, 16)) @ rng.standard_normal((16, 16))
    z = zca_matrix(x, eps_rel=0.0)
    assert np.all(np.isfinite(z))
    w = (x - x.mean(1, keepdims=True)) @ z
    evals = np.linalg.eigvalsh(np.cov(w.T))
    # Removing each patch's mean leaves one direction with no variance: the floor gives it gain 0
    # (whatever the sign of its rounding error), every other direction comes out with variance 1.
    assert abs(evals[0]) < 1e-8
    np.testing.assert_allclose(evals[1:], 1.0, rtol=0.05)


@pytest.mark.parametrize("tiny", [-1e-15, 0.0, 1e-15])
def test_zca_floor_does_not_depend_on_the_sign_of_a_rounding_error(rng, tiny):
    # Rank-deficient patches (column 3 copies column 2): one more zero eigenvalue, nudged either way.
    x = rng.standard_normal((5000, 8))
    x[:, 3] = x[:, 2] + tiny
    z = zca_matrix(x, eps_rel=0.0)
    assert np.all(np.isfinite(z))
    w = (x - x.mean(1, keepdims=True)) @ z
    evals = np.linalg.eigvalsh(np.cov(w.T))
    assert np.all(np.abs(evals[:2]) < 1e-8)
    np.testing.assert_allclose(evals[2:], 1.0, rtol=0.05)


def test_zca_of_constant_patches_is_refused():
    with pytest.raises(ValueError, match="no variance"):
        zca_matrix(np.ones((100, 9)))


def test_convolution_whitening_decorrelates_natural_patches():
    train = [stimuli.load_still(n) for n in ("camera", "astronaut", "coffee", "grass", "brick")]
    wh = Whitener(size=9).fit(train, n_patches=20000, seed=0)
    test = stimuli.load_still("chelsea")
    raw = extract_patches(test[None], 8, 5000, np.random.default_rng(1))
    white = extract_patches(wh.transform(test)[None], 8, 5000, np.random.default_rng(1))
    corr_raw = np.corrcoef(raw.T)
    corr_white = np.corrcoef(white.T)
    off = ~np.eye(64, dtype=bool)
    assert np.abs(corr_raw[off]).mean() > 0.5  # natural images are strongly correlated...
    assert np.abs(corr_white[off]).mean() < 0.1  # ...and whitening removes nearly all of it
    var = white.var(0)
    assert var.std() / var.mean() < 0.2  # equal variance across pixels


def test_patch_grid_is_the_non_overlapping_patches(rng):
    frame = rng.standard_normal((20, 27)).astype(np.float32)
    grid = patch_grid(frame, 8)
    assert grid.shape == (2, 3, 64)
    np.testing.assert_array_equal(grid[1, 2], frame[8:16, 16:24].ravel())


def test_whitener_requires_fit_and_odd_size():
    with pytest.raises(ValueError, match="odd"):
        Whitener(size=8)
    with pytest.raises(RuntimeError, match="not fitted"):
        Whitener().transform(np.zeros((8, 8)))


def test_empty_or_broken_video_raises_a_clear_error(tmp_path):
    from v1motion.models.motion.movies import read_grey_frames

    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty.mp4"):
        read_grey_frames(empty, 10)
    junk = tmp_path / "junk.avi"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ValueError, match="junk.avi"):
        read_grey_frames(junk, 10)


def test_missing_research_data_names_the_setting(monkeypatch, tmp_path):
    from v1motion.models.datasets import require_shared_data

    monkeypatch.setenv("V1MOTION_SHARED_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="V1MOTION_SHARED_DATA"):
        require_shared_data("videos")
