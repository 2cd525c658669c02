"""The ground-truth families and the scores of v1motion.models.motion.motion_eval, checked independently of the engine."""

import cv2
import numpy as np
import pytest

from v1motion.models.datasets import shared_data_dir
from v1motion.models.motion import motion_eval as me
from v1motion.models.motion.engine import MotionEngine

SMALL = (128, 96)  # width, height


def shift_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Image-coordinate shift ``(dx, dy)`` of ``b`` relative to ``a``: OpenCV's DIS optical flow (an
    independent third-party estimate), median over the interior."""
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    flow = dis.calc(np.uint8(a), np.uint8(b), None)[12:-12, 12:-12]
    return np.median(flow.reshape(-1, 2), axis=0)


def warp(img: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """``img`` moved by ``(dx, dy)`` image pixels (bilinear)."""
    m = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(np.float32(img), m, img.shape[::-1], flags=cv2.INTER_LINEAR)


# ---------------------------------------------------------------- conventions and pooling
def test_flow_to_polar_uses_up_as_positive_angle():
    flow = np.array([[1.0, 0.0], [0.0, -1.0], [-1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    direction, speed = me.flow_to_polar(flow)
    err = me.angular_error_deg(direction[:4], np.deg2rad([0, 90, 180, 270]))
    np.testing.assert_allclose(err, 0.0, atol=1e-9)
    np.testing.assert_allclose(speed, [1, 1, 1, 1, 0])
    assert np.isnan(direction[4])  # a zero vector has no direction
    assert me.angular_error_deg(direction[4], 0.0) == 90.0


def test_angular_error_wraps():
    np.testing.assert_allclose(me.angular_error_deg(np.deg2rad(350), np.deg2rad(10)), 20.0)
    np.testing.assert_allclose(me.angular_error_deg(np.pi, -np.pi), 0.0, atol=1e-9)
    np.testing.assert_allclose(me.angular_error_deg(0.0, np.pi), 180.0)


@pytest.mark.parametrize("how", ["mean", "median"])
def test_pooling_a_uniform_flow_scores_zero_error(how):
    v_up = me._velocity(np.deg2rad(30), 3.0)
    flow = np.empty((100, 130, 2), np.float32)  # not a multiple of 16: partial cells are dropped
    flow[..., 0], flow[..., 1] = v_up[0], -v_up[1]
    pooled = me.pool_flow(flow, 16, how)
    assert pooled.shape == (6, 8, 2)
    direction, speed = me.flow_to_polar(pooled)
    assert me.angular_error_deg(direction, np.deg2rad(30)).max() < 1e-4
    np.testing.assert_allclose(speed, 3.0, rtol=1e-6)


def test_pooling_follows_the_cell_layout():
    flow = np.zeros((32, 48, 2))
    flow[16:32, 32:48, 0] = 2.0  # only cell (1, 2) moves
    pooled = me.pool_flow(flow, 16)
    expected = np.zeros((2, 3, 2))
    expected[1, 2, 0] = 2.0
    np.testing.assert_array_equal(pooled, expected)
    with pytest.raises(ValueError, match="mean.*median"):
        me.pool_flow(flow, 16, "max")


# ---------------------------------------------------------------- generators
@pytest.mark.parametrize("direction_deg, speed", [(0, 2.0), (90, 0.5), (225, 4.0), (300, 1.0)])
def test_pan_moves_at_the_claimed_velocity(direction_deg, speed):
    d = np.deg2rad(direction_deg)
    seq = next(me.pan_family(SMALL, n_directions=1, speeds=(speed,), n_frames=6, seed=1))
    img, _ = me.still_for_travel("chelsea", (SMALL[1], SMALL[0]), speed * 6)
    v = np.tile(me._velocity(d, speed), (6, 1))
    frames = me._to_u8(me.path_sequence(img, v, (SMALL[1], SMALL[0]), np.random.default_rng(1)))
    shift = shift_between(frames[2], frames[3])
    np.testing.assert_allclose(shift, [v[3, 0], -v[3, 1]], atol=0.05)
    # The family's own sequence (direction 0 here) is as claimed too, also after uint8 rounding.
    np.testing.assert_allclose(seq.velocity[3], [speed, 0.0])
    np.testing.assert_allclose(shift_between(seq.frames[2], seq.frames[3]), [speed, 0.0], atol=0.05)


def test_pan_family_truth_and_layout():
    seqs = list(me.family_sequences("pan", SMALL, quick=True))
    assert len(seqs) == 8
    seq = seqs[0]
    assert seq.frames.dtype == np.uint8 and seq.frames.shape == (12, 96, 128)
    assert seq.scored == (8, 10)
    vel, label = me.cell_truth(seq, 8)
    assert vel.shape == (6, 8, 2) and (label == 1).all()
    np.testing.assert_allclose(vel[..., 0], seq.params["speed"])


def test_families_are_deterministic_for_a_seed():
    a = next(me.family_sequences("object", SMALL, quick=True, seed=3))
    b = next(me.family_sequences("object", SMALL, quick=True, seed=3))
    c = next(me.family_sequences("object", SMALL, quick=True, seed=4))
    np.testing.assert_array_equal(a.frames, b.frames)
    assert not np.array_equal(a.frames, c.frames)


def test_ioc_solves_the_constraints():
    v = np.array([1.5, -0.7])
    dirs = np.deg2rad([10.0, 75.0, 200.0])
    speeds = [v @ [np.cos(d), np.sin(d)] for d in dirs]
    np.testing.assert_allclose(me.ioc_velocity(dirs[:2], speeds[:2]), v)
    np.testing.assert_allclose(me.ioc_velocity(dirs, speeds), v)
    with pytest.raises(ValueError, match="parallel"):
        me.ioc_velocity([0.3, 0.3 + np.pi], [1.0, -1.0])


@pytest.mark.parametrize("kind", list(me.PLAID_TYPES))
def test_plaid_moves_rigidly_at_the_ioc_velocity(kind):
    seq = next(me.plaid_family(SMALL, n_directions=1, speeds=(2.0,), types=(kind,), n_frames=2))
    truth = seq.velocity[1]
    np.testing.assert_allclose(truth, [2.0, 0.0], atol=1e-9)  # direction 0, speed 2
    # Independent check: the whole pattern moves by the truth, not by the vector average.
    off = np.deg2rad(me.PLAID_TYPES[kind])
    comps = [(o, 2.0 * np.cos(o), p) for o, p in zip(off, (16.0, 24.0), strict=True)]
    f = me.plaid_frames((96, 128), comps, 2, (0.3, 1.1))
    inner = np.s_[8:-8, 8:-8]
    ioc_res = np.abs(warp(f[0], truth[0], -truth[1]) - f[1])[inner].mean()
    va = np.mean([c[1] * np.array([np.cos(c[0]), np.sin(c[0])]) for c in comps], 0)
    va_res = np.abs(warp(f[0], va[0], -va[1]) - f[1])[inner].mean()
    assert ioc_res < 0.01 < va_res


def test_object_mask_matches_where_pixels_change():
    for seq in me.family_sequences("object", (160, 120), quick=True):
        for t in range(1, len(seq.frames)):
            changed = seq.frames[t] != seq.frames[t - 1]
            covered = (seq.mask[t] > 0) | (seq.mask[t - 1] > 0)
            assert not (changed & ~covered).any()  # the background never changes
            inside = (seq.mask[t] == 1) & (seq.mask[t - 1] == 1)
            assert changed[inside].mean() > 0.5  # the textured object does
        vel, label = me.cell_truth(seq, 8)
        frac = me.cell_mean(seq.mask[8])
        assert (label == 1).sum() > 0 and (label == 0).sum() > 0
        assert (frac[label == 1] >= 0.75).all() and (frac[label == 0] == 0).all()
        np.testing.assert_allclose(vel[label == 1], np.broadcast_to(seq.velocity[8], vel[label == 1].shape))  # fmt: skip


def test_object_mask_area():
    sq = me.object_mask((64, 64), (30.3, 31.7), 20.0, "square")
    disc = me.object_mask((64, 64), (30.3, 31.7), 20.0, "disc")
    assert sq.sum() == pytest.approx(400.0, rel=1e-6)
    assert disc.sum() == pytest.approx(np.pi * 100, rel=0.01)


def test_abrupt_turn_truth():
    seq = next(me.abrupt_family(SMALL, n_directions=1, turns_deg=(135.0,), n_before=5, n_after=6))
    assert seq.change_frame == 5
    before, after = seq.velocity[4], seq.velocity[5]
    turn = me.angular_error_deg(np.arctan2(after[1], after[0]), np.arctan2(before[1], before[0]))
    assert turn == pytest.approx(135.0)
    np.testing.assert_allclose(shift_between(seq.frames[6], seq.frames[7]), [after[0], -after[1]], atol=0.05)  # fmt: skip


def test_unknown_family_lists_the_valid_names():
    with pytest.raises(ValueError, match="pan, grating"):
        me.family_sequences("spiral")


@pytest.mark.skipif(
    not (shared_data_dir() / "videos" / "box.mp4").exists(), reason="no shared videos"
)
def test_clip_truth_thresholds():
    seq = next(me.family_sequences("clip", (320, 240), quick=True))
    t = seq.scored[0]
    vel, label = me.cell_truth(seq, t)
    speed = np.hypot(vel[..., 0], vel[..., 1])
    assert (speed[label == 1] > 1.0).all() and (speed[label == 0] < 0.2).all()
    assert ((speed >= 0.2) & (speed <= 1.0) == (label == -1)).all()


# ---------------------------------------------------------------- scores
def test_frames_to_recover():
    truth = np.deg2rad(90)
    est = np.deg2rad([0, 30, 60, 75, 95, 90])
    assert me.frames_to_recover(est, truth) == 4  # 75° is the first within 20°
    assert me.frames_to_recover(np.deg2rad([0, 10]), truth) is None


def test_calibration_bins_by_confidence():
    rng = np.random.default_rng(0)
    conf = rng.uniform(0, 1, 1000)
    err = 90 * (1 - conf)  # more confident, more accurate
    cal = me.calibration_by_decile(conf, err)
    assert len(cal) == 10 and sum(c["n_cells"] for c in cal) == 1000
    medians = [c["dir_err_median_deg"] for c in cal]
    assert medians == sorted(medians, reverse=True)


def test_speed_relative_error():
    np.testing.assert_allclose(me.speed_relative_error([2.0, 1.0, 0.0], [1.0, 1.0, 4.0]), [1, 0, 1])
    with pytest.raises(ValueError):
        me.speed_relative_error([1.0], [0.0])


def test_flow_baseline_recovers_a_pan_and_a_turn():
    dis = next(m for m in me.flow_methods() if m.name == "DIS medium")
    pans = me.family_sequences("pan", SMALL, n_directions=2, speeds=(2.0,), n_frames=4, warmup=2)
    s = me.evaluate([dis], pans)["DIS medium"]
    assert s["cell_dir_err_median_deg"] < 2 and s["speed_rel_err_median"] < 0.05
    turns = me.abrupt_family(SMALL, n_directions=1, turns_deg=(180.0,), n_before=3, n_after=3)
    s = me.evaluate([dis], turns)["DIS medium"]
    assert s["frames_to_recover_median"] == 1


class _Rightwards:
    """A method that shows every cell moving right at 1 px/frame."""

    name = "right"

    def reset(self) -> None:
        pass

    def step(self, frame, want):
        rows, cols = frame.shape[0] // me.CELL_PX, frame.shape[1] // me.CELL_PX
        one = np.ones((rows, cols))
        return me.CellMotion(np.zeros((rows, cols)), one, one, one.astype(bool), 0.0, 1.0)


def test_a_range_pools_the_sequences_of_its_values_and_no_others():
    seqs = list(
        me.family_sequences(
            "pan", SMALL, n_directions=4, speeds=(1.0, 2.0, 4.0), n_frames=4, warmup=2
        )
    )
    ranged = me.evaluate([_Rightwards()], seqs, by="speed", ranges={"1-2": (1.0, 2.0)})["right"]
    inside = [q for q in seqs if q.params["speed"] <= 2.0]
    alone = me.evaluate([_Rightwards()], inside)["right"]
    pooled = ranged["ranges"]["1-2"]
    assert pooled["n_sequences"] == len(inside) == 8 and pooled["n_frames"] == alone["n_frames"]
    for key in ("global_dir_err_median_deg", "cell_dir_err_median_deg", "speed_rel_err_median"):
        assert pooled[key] == alone[key]
    # speeds 1 and 2 read as 1: a pooled median over both, not the median of one of them
    assert pooled["speed_rel_err_median"] != ranged["by"]["1.0"]["speed_rel_err_median"]
    with pytest.raises(ValueError, match="ranges need"):
        me.evaluate([_Rightwards()], seqs, ranges={"1-2": (1.0, 2.0)})


def test_still_cells_count_as_false_motion_when_shown_moving():
    seq = next(me.still_family(SMALL, crops_per_still=1, n_frames=4, warmup=2))
    out = me.CellMotion(
        np.zeros((6, 8)), np.ones((6, 8)), np.ones((6, 8)), np.ones((6, 8), bool), 0.0, 1.0
    )
    tally = me.Tally()
    vel, label = me.cell_truth(seq, 2)
    tally.add_frame(out, vel, label, seq.velocity[2])
    s = tally.summary()
    assert s["false_motion_rate"] == 1.0 and s["n_moving_cells"] == 0
    assert s["global_dir_err_median_deg"] is None  # no global direction when nothing moves


def test_shown_cells_error_counts_only_the_cells_shown_moving():
    truth = np.zeros((2, 3, 2))
    truth[..., 0] = 1.0  # everything moves right
    label = np.ones((2, 3), int)
    direction = np.array(
        [[0.0, 0.0, np.pi], [0.0, np.pi / 2, np.pi]]
    )  # errors 0, 0, 180, 0, 90, 180
    shown = np.array([[True, True, False], [True, True, False]])  # the 180s are not shown
    out = me.CellMotion(direction, np.ones((2, 3)), shown.astype(float), shown, 0.0, 1.0)
    tally = me.Tally()
    tally.add_frame(out, truth, label, np.array([1.0, 0.0]))
    s = tally.summary()
    assert s["cell_dir_err_median_deg"] == pytest.approx(45.0)  # median of 0, 0, 0, 90, 180, 180
    assert s["shown_cell_dir_err_median_deg"] == pytest.approx(0.0)  # median of 0, 0, 0, 90


def test_textured_cells_need_brightness_changes_in_every_direction():
    rng = np.random.default_rng(0)
    h, w = 48, 64
    flat = np.full((h, w), 200.0)
    noise = flat + rng.normal(0, 20, (h, w))  # varies in every direction
    stripes = np.tile(128 + 60 * np.sin(np.arange(w) / 2.0), (h, 1))  # varies along x only
    ramp = (
        np.tile(np.arange(w) * 3.0, (h, 1)) + np.arange(h)[:, None] * 3.0
    )  # a plane: one gradient
    assert me.textured_cells(noise).all()
    for img in (flat, stripes, ramp):
        assert not me.textured_cells(img).any()
    # the threshold is on the smaller eigenvalue in (grey levels / px)^2: a 2-D texture of amplitude a
    # (gradients up to a/2 per px here) passes at 40 grey levels and fails at half a grey level
    y, x = np.mgrid[0:h, 0:w]
    for amp, want in ((0.5, False), (40.0, True)):
        img = 128 + amp * np.sin(x / 2.0) * np.sin(y / 2.0)
        assert me.textured_cells(img).all() == want and me.textured_cells(img).any() == want


def test_textured_cells_error_counts_only_the_textured_moving_cells():
    truth = np.zeros((2, 3, 2))
    truth[..., 0] = 1.0
    label = np.array([[1, 1, 1], [1, 1, 0]])  # one still cell
    direction = np.array([[0.0, np.pi, np.pi / 2], [0.0, np.pi, 0.0]])  # 0, 180, 90, 0, 180, -
    textured = np.array([[True, False, True], [True, False, True]])  # the 180s are blank
    out = me.CellMotion(
        direction, np.ones((2, 3)), np.ones((2, 3)), np.ones((2, 3), bool), 0.0, 1.0
    )
    tally = me.Tally()
    tally.add_frame(out, truth, label, None, textured)
    s = tally.summary()
    assert s["cell_dir_err_median_deg"] == pytest.approx(90.0)  # 0, 0, 90, 180, 180
    assert s["textured_cell_dir_err_median_deg"] == pytest.approx(0.0)  # 0, 0, 90
    assert s["textured_moving_share"] == pytest.approx(3 / 5)
    plain = me.Tally()
    plain.add_frame(out, truth, label, None)
    assert plain.summary()["textured_cell_dir_err_median_deg"] is None


def test_evaluate_family_runs_an_engine_on_small_inputs():
    engine = MotionEngine.random(seed=0)
    s = me.evaluate_family(engine, "pan", size="96x64", quick=True, speeds=(1.0,), n_frames=10)
    assert s["n_sequences"] == 4 and s["n_frames"] == 4 * 1
    assert s["n_moving_cells"] == 4 * 1 * 4 * 6
    assert 0 <= s["cell_dir_err_median_deg"] <= 180
    assert me.evaluate_family(engine, "still", size=(96, 64))["false_motion_rate"] is not None


@pytest.mark.skipif(
    not (shared_data_dir() / "videos" / "box.mp4").exists(), reason="no shared videos"
)
def test_load_clip_start_skips_frames():
    from v1motion.models.motion.movies import load_clip

    whole = load_clip("box.mp4", max_frames=7, scale=0.25)
    window = load_clip("box.mp4", max_frames=2, scale=0.25, start=5)
    np.testing.assert_array_equal(window, whole[5:7])
