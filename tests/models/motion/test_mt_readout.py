"""The MT read-out: soft speed labels, learning planted tuning, storage, and the live read matching
the features it is fitted on."""

import cv2
import numpy as np
import pytest
import video_samples

from tests import naive
from v1motion.models.motion import mt_readout, stimuli
from v1motion.models.motion.engine import CHANGE_HISTORY, MotionEngine, global_motion, to_grey
from v1motion.models.motion.mt_fit import make_sequence, pooled_units
from v1motion.models.motion.mt_readout import (
    SPEED_CLASSES,
    MTReadout,
    Pooling,
    _decode_outputs,
    _hidden_cells,
    _pool_cells,
    integrate_cells,
)
from v1motion.models.motion.readout import angular_error


def test_speed_targets_are_soft_labels_in_log_speed():
    y = MTReadout.speed_targets(np.array([0.0, 1.0, 1.5, 0.1, 40.0]))
    np.testing.assert_allclose(y.sum(1), 1.0, rtol=1e-6)
    assert y[0, 0] == 1.0  # still
    assert y[1, list(SPEED_CLASSES).index(1.0)] == 1.0  # a class centre is one class
    i1, i2 = list(SPEED_CLASSES).index(1.0), list(SPEED_CLASSES).index(2.0)
    frac = np.log2(1.5)  # 1.5 px/frame lies log2(1.5) of the way from 1 to 2
    np.testing.assert_allclose(y[2, [i1, i2]], [1 - frac, frac], rtol=1e-5)
    assert y[3, 1] == 1.0 and y[4, -1] == 1.0  # out of range: clipped to the end classes


def _units(rng, n_levels=2, n_units=24):
    """Preferred direction and log2 speed of a planted population."""
    return rng.uniform(-np.pi, np.pi, (n_levels, n_units)), rng.uniform(-2, 4, (n_levels, n_units))


def _planted(rng, n, units):
    """Rows of a population with von Mises direction and log-Gaussian speed tuning; a quarter of
    rows still (baseline activity only)."""
    pref_dir, pref_ls = units
    n_levels, n_units = pref_dir.shape
    direction = rng.uniform(-np.pi, np.pi, n)
    speed = np.exp2(rng.uniform(-2, 4, n))
    speed[: n // 4] = 0
    gain = (speed > 0)[:, None, None]
    tune = np.exp(2 * np.cos(direction[:, None, None] - pref_dir)) * np.exp(
        -((np.log2(np.maximum(speed, 1e-3))[:, None, None] - pref_ls) ** 2) / 2
    )
    x = (gain * tune + 0.3 + 0.05 * rng.standard_normal((n, n_levels, n_units))).clip(0)
    return x.astype(np.float32), x.sum(-1).astype(np.float32), direction, speed


def test_fit_recovers_planted_direction_and_speed_tuning(rng):
    units = _units(rng)
    x, total, d, s = _planted(rng, 6000, units)
    ro = MTReadout(n_hidden=32, epochs=15, seed=0).fit(x, total, d, s)
    xt, tt, dt, st = _planted(np.random.default_rng(7), 1000, units)  # held-out rows
    pd, ps, conf, pmove = ro.predict(xt, tt)
    moving = st > 0
    err = np.rad2deg(angular_error(pd[moving], dt[moving]))
    assert np.median(err) < 15
    assert np.median(np.abs(np.log2(ps[moving] / st[moving]))) < 0.5  # within ~40 %
    assert (pmove[~moving] < 0.5).mean() > 0.9 and (pmove[moving] > 0.5).mean() > 0.9
    assert conf[~moving].mean() < conf[moving].mean()


def test_fit_in_place_is_the_same_fit_and_only_then_overwrites_the_data(rng):
    x, total, d, s = _planted(rng, 500, _units(rng))
    kept = x.copy()
    a = MTReadout(n_hidden=8, epochs=2, seed=0).fit(x, total, d, s)
    np.testing.assert_array_equal(x, kept)  # copy=True (the default): the caller's data untouched
    b = MTReadout(n_hidden=8, epochs=2, seed=0).fit(x, total, d, s, copy=False)
    for name in ("proj_", "norm_", "b1_", "W2_", "b2_"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(x, kept)  # normalised and standardised where it lay
    # data it cannot overwrite (another dtype, read-only) is copied, and the fit is the same
    c = MTReadout(n_hidden=8, epochs=2, seed=0).fit(
        kept.astype(np.float64), total, d, s, copy=False
    )
    frozen = kept.copy()
    frozen.flags.writeable = False
    e = MTReadout(n_hidden=8, epochs=2, seed=0).fit(frozen, total, d, s, copy=False)
    for name in ("proj_", "W2_"):
        np.testing.assert_array_equal(getattr(a, name), getattr(c, name))
        np.testing.assert_array_equal(getattr(a, name), getattr(e, name))


def test_unfitted_readout_refuses_and_bad_shapes_are_named():
    with pytest.raises(RuntimeError, match="not fitted"):
        MTReadout().predict(np.zeros((1, 1, 2)), np.zeros((1, 1)))
    with pytest.raises(ValueError, match="must agree"):
        MTReadout().fit(np.zeros((4, 2, 3)), np.zeros((4, 3)), np.zeros(4), np.zeros(4))


def test_save_and_load_round_trip(tmp_path):
    ro = MTReadout.random(3, 10, n_hidden=5, seed=1)
    ro.save(tmp_path / "r.npz", pooling={"tau": 2.0})
    back = MTReadout.load(tmp_path / "r.npz")
    for k in MTReadout.FIELDS:
        np.testing.assert_array_equal(getattr(back, k), getattr(ro, k))
    assert back.meta_ == {"pooling": {"tau": 2.0}}
    np.savez(tmp_path / "other.npz", a=np.zeros(2))
    with pytest.raises(ValueError, match="not a v1motion MT read-out"):
        MTReadout.load(tmp_path / "other.npz")


def test_the_box_mean_twin_is_opencvs_blur_with_replicated_edges(rng):
    """What the pooling was before it became one kernel: ``cv2.blur`` with its default anchor."""
    for k in (1, 2, 3, 4, 12):
        x = rng.standard_normal((7, 9, 5)).astype(np.float32)
        want = cv2.blur(x, (k, k), borderType=cv2.BORDER_REPLICATE)
        np.testing.assert_allclose(naive.box_mean(x, k), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("k", [1, 2, 3, 4, 6, 12])
@pytest.mark.parametrize(("grid", "level"), [((12, 17), 0), ((6, 9), 1), ((3, 5), 2), ((2, 2), 3)])
def test_pool_cells_matches_its_naive_twin(rng, k, grid, level):
    pooling = Pooling(pool_px=(32, 96))
    src = rng.standard_normal((*grid, 7)).astype(np.float32)
    cells = pooling.grid((100, 140))  # 6 x 8 cells of 16 px
    ys, xs = pooling.sample_at(level, grid, cells)
    out = np.full((*cells, 7), np.nan, np.float32)
    _pool_cells(src, k, ys, xs, out)
    np.testing.assert_allclose(out, naive._pool_cells(src, k, ys, xs), rtol=1e-5, atol=1e-5)
    # rows and columns that do not rise restart the running sums: the same numbers
    back = np.full_like(out, np.nan)
    _pool_cells(src, k, ys[::-1].copy(), xs[::-1].copy(), back)
    np.testing.assert_allclose(back, out[::-1, ::-1], rtol=1e-5, atol=1e-5)


def test_cells_sample_the_patches_they_cover_or_the_one_under_their_centre():
    pooling = Pooling(patch=8, cell_px=16)
    ys, xs = pooling.sample_at(0, (7, 9), (4, 5))  # 8 px patches, 2 x 2 per cell; past the edge
    np.testing.assert_array_equal(ys, [[0, 1], [2, 3], [4, 5], [6, 6]])
    np.testing.assert_array_equal(xs, [[0, 1], [2, 3], [4, 5], [6, 7], [8, 8]])
    ys, xs = pooling.sample_at(2, (3, 4), (6, 8))  # 32 px patches: the one under each centre
    np.testing.assert_array_equal(ys[:, 0], [0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(xs[:, 0], [0, 0, 1, 1, 2, 2, 3, 3])


def test_hidden_cells_matches_its_naive_twin(rng):
    mt = MTReadout.random(n_levels=5, n_units=20, n_hidden=16, seed=2)
    pooled = rng.standard_normal((23, 5, 17)).astype(np.float32)
    pooled[..., -1] = np.abs(pooled[..., -1])
    hidden, totals = np.full((23, 16), np.nan, np.float32), np.full(23, np.nan, np.float32)
    _hidden_cells(pooled, mt.norm_, mt.b1_, hidden, totals)
    want_hidden, want_totals = naive._hidden_cells(pooled, mt.norm_, mt.b1_)
    np.testing.assert_allclose(hidden, want_hidden, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(totals, want_totals, rtol=1e-5)
    assert 0 < (hidden == 0).mean() < 1  # rectified, not all


def test_decode_outputs_matches_its_naive_twin(rng):
    classes = np.array([0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0], np.float32)
    out = (3 * rng.standard_normal((41, 10))).astype(np.float32)
    out[:5, 2] = 40.0  # certainly still: no moving probability left to average speeds over
    out[5:10, :2] *= 0.01  # short vectors: the confidence follows their length
    norm_sum, lo, hi = np.float32(2.5), 0.5, 3.0
    totals = (norm_sum * rng.uniform(0, 4, 41)).astype(np.float32)  # evidence 0 to 1 and beyond
    got = np.full((3, 41), np.nan, np.float32)
    _decode_outputs(out, totals, np.log2(classes[1:]), norm_sum, lo, hi, *got)
    want = naive._decode_outputs(out, totals, classes, norm_sum, lo, hi)
    np.testing.assert_allclose(np.cos(got[0] - want[0]), 1.0, atol=1e-10)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-5)
    np.testing.assert_allclose(got[2], want[2], rtol=1e-5, atol=1e-7)
    ratio = totals / norm_sum
    assert (ratio < lo).any() and (ratio > hi).any() and (got[2] > 0.5).any()
    assert np.all(got[2][ratio < lo] == 0) and np.all(got[2][:5] < 1e-12)
    assert np.all((got[1] >= 0.25) & (got[1] <= 16.0))


def test_decode_projected_matches_its_naive_twin_and_the_numpy_read_out(rng):
    mt = MTReadout.random(n_levels=6, n_units=20, n_hidden=16, seed=4)
    # totals from none to plenty, so the evidence runs over its whole range and beyond
    pooled = rng.standard_normal((7, 9, 6, 17)).astype(np.float32)
    pooled[..., -1] = mt.norm_ * rng.uniform(0, 8, (7, 9, 1)) * rng.uniform(0.5, 1.5, (7, 9, 6))
    direction, speed, conf = mt.decode_projected(pooled)
    assert direction.shape == speed.shape == conf.shape == (7, 9)
    assert direction.dtype == speed.dtype == conf.dtype == np.float32
    lo, hi = MTReadout.EVIDENCE_RANGE
    want = naive._decode_cells(
        pooled.reshape(-1, 6, 17), mt.norm_, mt.b1_, mt.W2_, mt.b2_, mt.speed_classes_, lo, hi
    )
    for got, ref in zip((direction, speed, conf), want, strict=True):
        np.testing.assert_allclose(got.ravel(), ref, rtol=1e-5, atol=1e-5)
    ratio = pooled[..., -1].sum(-1) / mt.norm_.sum()
    assert (ratio < lo).any() and (ratio > hi).any()
    assert np.all(conf[ratio < lo] == 0)  # no activity, no confidence
    # and the numpy read-out it fuses (used in fitting) gives the same
    d, s, c, _ = mt.decode_hidden(mt.hidden_from_projected(pooled))
    np.testing.assert_allclose(speed, s, rtol=1e-5)
    np.testing.assert_allclose(conf, c * mt.evidence(pooled[..., -1]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.cos(direction - d), 1.0, atol=1e-8)


@pytest.mark.parametrize("pool_px", [(48,), (32, 96)])
@pytest.mark.parametrize("shape", [(96, 128), (100, 140)])
def test_live_read_equals_the_readout_on_the_features_it_is_fitted_on(shape, pool_px):
    """``MotionEngine.read`` pools projected channels; fitting pools per-unit activity. Linearity
    makes them the same numbers: the read-out sees live exactly what it was fitted on."""
    engine = MotionEngine.random(
        seed=3,
        levels=3,
        pooling=Pooling(pool_px=pool_px),
        change_gate=None,
        coarse=False,
        aperture=None,
        prime_passes=0,  # the read-out is fitted on codes of streams started cold (``encode``)
        warmup_frames=0,  # the confidence as the read-out gives it (``WARMUP_FRAMES``)
    )  # the read alone: the code-change gate, the coarse and the aperture reads are tested below
    frames = stimuli.pan_sequence(stimuli.load_still("camera"), (256.0, 256.0), 0.7, 2.0, 6, shape)
    state = engine.new_state()
    live = [engine.step(state, f) for f in frames]
    n = engine.model.n_units
    for accs, got in zip(pooled_units(engine, frames, engine.pooling), live, strict=True):
        if accs is None:  # the first frame primes the recurrent state: no motion on it
            assert not got.confidence.any() and got.global_confidence == 0
            continue
        cells = engine.pooling.cells(accs, shape)
        ch, cw = cells.shape[:2]
        d, s, c, _ = engine.mt.predict(
            cells[..., :n].reshape(ch * cw, -1, n), cells[..., n].reshape(ch * cw, -1)
        )
        d, s, c = d.reshape(ch, cw), s.reshape(ch, cw), c.reshape(ch, cw)
        assert got.direction.shape == (ch, cw)
        np.testing.assert_allclose(c, got.confidence, atol=1e-4)
        # then each cell is integrated over its confident neighbours
        d_int, s_int = integrate_cells(d, s, c, engine.integration_sigma)
        np.testing.assert_allclose(s_int, got.speed, rtol=1e-3)
        backed = c.sum() > 1e-3  # direction is defined where there is some confidence
        if backed:
            assert angular_error(d_int, got.direction).max() < 1e-2
        # the dominant motion is the consensus of the integrated cells as shown
        gd, gs, gc = global_motion(got.direction, got.speed, got.confidence)
        assert gd == pytest.approx(got.global_direction, abs=1e-4)
        assert gs == pytest.approx(got.global_speed, rel=1e-4)
        assert gc == pytest.approx(got.global_confidence, abs=1e-4)


def test_global_motion_is_the_confident_cells_consensus(rng):
    direction = np.full((6, 8), 1.0, np.float32)
    speed = np.full((6, 8), 2.0, np.float32)
    conf = np.zeros((6, 8), np.float32)
    assert global_motion(direction, speed, conf) == (0.0, 0.0, 0.0)  # nothing confident
    conf[:2, :2] = 0.9  # a small object: its own direction, full confidence
    d, s, c = global_motion(direction, speed, conf)
    assert abs(d - 1.0) < 1e-6 and abs(s - 2.0) < 1e-5 and c == pytest.approx(0.9 * 1.0)
    direction[:, 4:] = 1.0 + np.pi  # two opposite motions of equal weight: no consensus
    speed[:, 4:] = 8.0
    conf[:] = 1.0
    d, s, c = global_motion(direction, speed, conf)
    assert c < 1e-6
    assert s == pytest.approx(4.0)  # geometric mean of 2 and 8


def test_faint_cells_do_not_add_up_to_a_confident_dominant_motion():
    direction = np.full((6, 8), 1.0, np.float32)
    speed = np.full((6, 8), 2.0, np.float32)
    conf = np.full((6, 8), 0.15, np.float32)  # 48 faint cells agreeing: 7 cells' worth in all
    d, s, c = global_motion(direction, speed, conf)
    assert abs(d - 1.0) < 1e-6 and c == 0.0  # a direction, but nothing shown moving
    # every cell counted fully they add up to 7 cells' worth, yet none is more than 0.15 confident
    assert global_motion(direction, speed, conf, moving=(0.0, 1e-6))[2] == pytest.approx(0.15)
    conf[:] = 0.0
    conf[:2, :2] = 0.3  # half-way up the ramp of MOVING_FROM (0.2 to 0.4): half of each counts
    assert global_motion(direction, speed, conf)[2] == pytest.approx(4 * 0.3 * 0.5 / 4.0)
    # nor do they pull the motion of the cells shown moving: 4 confident cells moving right at 2
    # px/frame among 44 faint ones moving up at 8 (which, counted by confidence, weigh more)
    direction[:], speed[:], conf[:] = np.pi / 2, 8.0, 0.15
    direction[:2, :2], speed[:2, :2], conf[:2, :2] = 0.0, 2.0, 0.9
    d, s, c = global_motion(direction, speed, conf)
    assert abs(d) < 1e-6 and s == pytest.approx(2.0) and c == pytest.approx(0.9)
    d, s, _ = global_motion(direction, speed, conf, moving=(0.0, 1e-6))
    assert d > 0.9 and s > 4.0  # every cell counted: pulled up and faster
    # many cells shown faintly and agreeing are as confident as the fourth most confident of them
    conf[:] = 0.38
    conf[0, :3] = 0.9
    assert global_motion(direction, speed, conf)[2] == pytest.approx(0.38)


@pytest.mark.parametrize("kind", ["pan", "grating", "still", "object"])
def test_training_sequences_have_truth_for_every_scored_cell(kind):
    frames, (d, s) = make_sequence(kind, np.random.default_rng(0))
    assert frames.shape == (12, 240, 320) and frames.dtype == np.float32
    assert d.shape == s.shape == (15, 20)
    assert 0 <= frames.min() and frames.max() <= 1
    if kind == "still":
        assert np.all(s == 0)
    elif kind == "object":
        assert (s == 0).any() and (s > 0).any()  # both still background and moving object cells
    else:
        assert np.all(s > 0)


def test_fitting_twice_with_one_seed_gives_identical_weights():
    """Data and fit are seeded and run single-threaded: one seed, one read-out."""
    from v1motion.models.determinism import single_threaded
    from v1motion.models.motion.mt_fit import collect

    engine = MotionEngine.random(seed=1, levels=2)

    def fit(seed):
        with single_threaded():
            x, t, d, s, w = collect(engine, 3, seed=seed, cells_per_frame=10, progress=False)
            return MTReadout(n_hidden=8, epochs=2, seed=seed).fit(x, t, d, s, weight=w)

    a, b, c = fit(0), fit(0), fit(1)
    for k in MTReadout.FIELDS:
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k))
    assert not np.array_equal(a.proj_, c.proj_)


def test_collect_keeps_no_frame_features_alive(monkeypatch):
    """The rows are copied out of each frame's cell features, which are then freed: a view kept in
    a list held every frame's features (the shipped read-out's fit peaked at 17.5 GB, 6.9 now).
    Every array made from the features (views, picked rows, copies) is tracked; what is still
    alive after ``collect`` must be a small part of the returned data."""
    import gc
    import weakref

    from v1motion.models.motion import mt_fit

    made = []

    class Tracked(np.ndarray):
        def __array_finalize__(self, obj):
            made.append(weakref.ref(self))

    held = []  # bytes of tracked arrays alive, at each frame

    def root(a):
        while isinstance(a.base, np.ndarray):
            a = a.base
        return a

    def spy(self, *a, **k):
        gc.collect()
        roots = {id(r): r.nbytes for r in (root(a) for a in (w() for w in made) if a is not None)}
        held.append(sum(roots.values()))
        return cells(self, *a, **k).view(Tracked)

    engine = MotionEngine.random(seed=1, levels=2)
    cells = type(engine.pooling).cells
    monkeypatch.setattr(type(engine.pooling), "cells", spy)
    x, t, d, s, w = mt_fit.collect(engine, 3, seed=0, cells_per_frame=10, progress=False)
    assert len(held) == 12 and len(made) > 12
    # the last frame's features are alive when the next are made; the frames before are gone (the
    # returned rows hold all frames': a tenth of them is far more than what may stay)
    assert held[1] > 0 and held[-1] - held[1] < x.nbytes / 10
    assert len(x) == len(t) == len(d) == len(s) == len(w) > 0 and np.isfinite(x).all()


# ------------------------------------------------------------- integration over neighbouring cells
def test_integration_with_sigma_zero_changes_nothing():
    from v1motion.models.motion.mt_readout import integrate_cells

    rng = np.random.default_rng(0)
    d, s, w = rng.uniform(-np.pi, np.pi, (5, 7)), rng.uniform(0.5, 4, (5, 7)), rng.random((5, 7))
    d2, s2 = integrate_cells(d, s, w, 0.0)
    np.testing.assert_allclose(d2, d, rtol=1e-6)
    np.testing.assert_allclose(s2, s, rtol=1e-6)
    with pytest.raises(ValueError, match="sigma"):
        integrate_cells(d, s, w, -1.0)


def test_a_uniform_field_is_unchanged_and_directions_average_as_vectors_across_180_degrees():
    from v1motion.models.motion.mt_readout import integrate_cells

    d = np.full((6, 8), np.deg2rad(179.0))
    d[::2, ::2] = np.deg2rad(-179.0)  # the same motion, on the other side of the +-180 cut
    s = np.full((6, 8), 2.0)
    d2, s2 = integrate_cells(d, s, np.ones((6, 8)), 2.0)
    assert np.all(np.abs(np.abs(np.rad2deg(d2)) - 180.0) < 1.01)  # not the 0 of a scalar mean
    np.testing.assert_allclose(s2, 2.0, rtol=1e-5)


def test_cells_that_each_see_one_component_integrate_to_the_common_motion():
    """An aperture-like field: cells alternately read 40 deg to either side of the truth."""
    from v1motion.models.motion.mt_readout import integrate_cells

    truth = np.deg2rad(30.0)
    sign = np.where((np.add.outer(np.arange(10), np.arange(12)) % 2) == 0, 1.0, -1.0)
    d = truth + sign * np.deg2rad(40.0)
    s = np.where(sign > 0, 1.0, 4.0)  # and speeds 1 and 4: the geometric mean is 2
    d2, s2 = integrate_cells(d, s, np.ones_like(d), 2.5)
    inner = (slice(3, -3), slice(3, -3))
    assert np.abs(np.rad2deg(d2[inner] - truth)).max() < 3.0
    np.testing.assert_allclose(s2[inner], 2.0, rtol=0.15)


def test_still_cells_lend_nothing_and_take_their_confident_neighbours_motion():
    from v1motion.models.motion.mt_readout import integrate_cells

    rng = np.random.default_rng(1)
    d = rng.uniform(-np.pi, np.pi, (9, 9))  # still background: arbitrary directions, no weight
    s = rng.uniform(0.3, 8.0, (9, 9))
    w = np.zeros((9, 9))
    d[3:6, 3:6], s[3:6, 3:6], w[3:6, 3:6] = 1.0, 3.0, 1.0  # a confident object
    d2, s2 = integrate_cells(d, s, w, 2.5)
    np.testing.assert_allclose(d2[3:6, 3:6], 1.0, atol=1e-5)  # not pulled by the background
    np.testing.assert_allclose(s2[3:6, 3:6], 3.0, rtol=1e-4)
    np.testing.assert_allclose(d2[2, 4], 1.0, atol=1e-5)  # an unconfident neighbour takes it
    d3, s3 = integrate_cells(d, s, np.zeros((9, 9)), 2.5)
    np.testing.assert_allclose(d3, d, rtol=1e-6)  # no weight anywhere: every cell keeps its own
    np.testing.assert_allclose(s3, s, rtol=1e-6)


def test_the_engine_integrates_its_cells_and_zero_turns_it_off():
    from v1motion.models.motion.engine import MotionEngine

    frames = np.random.default_rng(2).integers(0, 255, (4, 96, 128), dtype=np.uint8)
    out = {}
    for sigma in (0.0, 2.5):
        e = MotionEngine.random(seed=0, integration_sigma=sigma, aperture=None)
        st = e.new_state()
        out[sigma] = [e.step(st, f) for f in frames][-1]
    raw, smooth = out[0.0], out[2.5]
    np.testing.assert_array_equal(raw.confidence, smooth.confidence)  # what is shown as moving
    assert not np.allclose(raw.direction, smooth.direction)
    for mf in (raw, smooth):  # the dominant motion is the consensus of the map as shown
        gd, _, _ = global_motion(mf.direction, mf.speed, mf.confidence)
        assert gd == pytest.approx(mf.global_direction, abs=1e-5)
    with pytest.raises(ValueError, match="integration_sigma"):
        MotionEngine.random(seed=0, integration_sigma=-1)


# ------------------------------------------------------------- the code-change gate
def test_a_still_scene_is_shown_still_whatever_the_read_out_says():
    """The same textured frame again and again: no cell is shown moving, where without the gate the
    same engine shows confident motion on every second frame. The ss-RNN's code alternates between
    two states on this frame; compared with the previous frame only, the gate let the read-out show
    that faintly on every second frame (0.1-0.2): compared with the frame before too, nothing. (The
    image does not change at all, which ``NOISE_GATE`` shows still too: off here, to test the code's
    gate alone.)"""
    from v1motion.models.motion.motion_eval import CONFIDENT

    frame = stimuli.load_still("camera")[100:196, 100:228]
    frame = (255 * (frame - frame.min()) / np.ptp(frame)).astype(np.uint8)
    shown = {}
    for gate, previous_only in ((None, False), ((0.1, 0.3), False), ((0.1, 0.3), True)):
        e = MotionEngine.load_default(change_gate=gate)
        e.noise_gate = None
        st = e.new_state()
        confs = []
        for _ in range(12):
            if previous_only:
                st.before = st.coarse_before = ()
            confs.append(e.step(st, frame).confidence)
        shown[gate, previous_only] = max(float(c.max()) for c in confs[4:])
    assert shown[None, False] > CONFIDENT
    assert shown[(0.1, 0.3), False] < 0.01
    assert shown[(0.1, 0.3), True] > 0.05


def test_the_change_gate_ignores_a_code_that_cycles_where_the_image_is_still():
    """Per patch, the change is the smaller of the change since the previous code and since the one
    before: a code alternating A, B, A, B ... closes the gate, a code that keeps changing does not.
    Where the image is still, the codes of the two frames before those count too: a code cycling
    A, B, C, D (as on a still view at 640x480) closes it; where the image moves (a grating that
    repeats every 4 frames), they do not."""
    from v1motion.models.motion.ssrnn import SparseCode

    e = MotionEngine.random(seed=0)
    assert e.change_history == CHANGE_HISTORY == 4
    gh, gw, kmax = 4, 6, 3
    shape = (gh * e.model.patch, gw * e.model.patch)
    still_image, moving_image = np.ones(gh * gw, np.float32), np.zeros(gh * gw, np.float32)

    def code(first_unit):
        idx = np.zeros((gh * gw, kmax), np.int64)
        idx[:, :2] = [first_unit, first_unit + 1]
        val = np.zeros((gh * gw, kmax), np.float32)
        val[:, :2] = 1.0
        return SparseCode(idx, val, np.full(gh * gw, 2, np.int64), np.zeros(gh * gw))

    alternating, cycling = [0, 4] * 6, [0, 4, 8, 12] * 3
    changing = list(range(0, 48, 4))
    for units, still, closed in (
        (alternating, None, True),
        (alternating, moving_image, True),
        (changing, still_image, False),
        (cycling, still_image, True),
        (cycling, moving_image, False),
        (cycling, None, False),
    ):
        running, prev, before = None, None, ()
        for u in units:
            cur = code(u)
            gate, running = e._change_gate(running, prev, (cur, gh, gw), shape, before, still)
            if prev is not None:
                before = (prev, *before)[: e.change_history - 1]
            prev = cur
        assert (gate.max() == 0.0) if closed else (gate.min() == 1.0), (units, still)
    # compared with the previous code only, the alternating code keeps the gate open
    previous_only, _ = e._change_gate(None, code(4), (code(0), gh, gw), shape)
    assert previous_only.min() == 1.0


def test_a_still_view_at_640x480_shows_no_motion_where_the_code_cycles():
    """The same frame of ``brick`` at 640x480 again and again: the ss-RNN's code cycles through four
    states, which the gate on the last two frames took for change (about 1 % of the cells confident,
    the dominant motion 0.96); with the older frames where the image is still, nothing moves. (The
    image does not change at all, which ``NOISE_GATE`` shows still too: off here, to test the code's
    gate alone.)"""
    from v1motion.models.motion.motion_eval import CONFIDENT

    image = stimuli.load_still("brick")
    frame = stimuli.pan_sequence(image, (image.shape[1] / 2, image.shape[0] / 2), 0.7, 0.0, 1,
                                 (480, 640))[0]  # fmt: skip
    frame = (255 * frame).round().astype(np.uint8)
    shown = {}
    for history in (2, CHANGE_HISTORY):
        e = MotionEngine.load_default()
        e.change_history, e.noise_gate = history, None
        st = e.new_state()
        frames = [e.step(st, frame) for _ in range(14)][6:]
        shown[history] = (
            max(float((f.confidence > CONFIDENT).mean()) for f in frames),
            max(f.global_confidence for f in frames),
        )
    assert shown[2][0] > 0.002 and shown[2][1] > 0.5
    assert shown[CHANGE_HISTORY] == (0.0, 0.0)


def _every_cell_summed(mf) -> float:
    """The dominant motion's confidence as it was before ``MOVING_FROM`` and its cap: every cell's
    confidence summed, up to 4 cells' worth, times their agreement."""
    c = mf.confidence.astype(np.float64)
    if c.sum() <= 0:
        return 0.0
    agreement = np.hypot((c * np.cos(mf.direction)).sum(), (c * np.sin(mf.direction)).sum())
    return float(agreement / c.sum() * min(1.0, c.sum() / 4.0))


def test_a_still_camera_view_has_no_dominant_motion():
    """A textured still with camera noise (4/255 per frame, 320x240): some cells read faint motion
    on every frame, but the frame's dominant motion is not confident; counting every cell's
    confidence, as the consensus did before ``MOVING_FROM`` (and without its cap), it was. Panned
    slowly, it is. (Where noise makes cells read more than faint motion, on the astronaut still, the
    dominant motion stays confident: docs/motion/still_confidence.md.) ``NOISE_GATE`` shows those
    faint cells still too: off here, to test the consensus alone."""
    image = stimuli.load_still("gravel")
    rng = np.random.default_rng(0)
    e = MotionEngine.load_default()
    e.noise_gate = None
    shown, every_cell = [], []
    for speed in (0.0, 0.5):
        st = e.new_state()
        frames = stimuli.pan_sequence(image, (256.0, 256.0), 0.7, speed, 24, (240, 320))
        for t, f in enumerate(frames):
            mf = e.step(st, np.clip(f + rng.normal(0, 4 / 255, f.shape), 0, 1).astype(np.float32))
            if t >= 8 and speed == 0.0:
                shown.append(mf.global_confidence)
                every_cell.append(_every_cell_summed(mf))
        if speed > 0:
            assert mf.global_confidence > 0.9
    assert np.median(shown) < 0.05 and max(shown) < 0.3
    assert np.median(every_cell) > 0.15  # the same cells, every faint one counted


def _through_a_camera(image, speed, n, rng, transport, tmp_path):
    """``image`` resized to 320x240, moved left at ``speed`` px/frame, with Gaussian noise, as uint8:
    ``"jpeg"``, noise of 4/255 through JPEG of quality 80, as the dashboard's camera sends frames;
    ``"mp4v"``, noise of 6/255 through an mp4v video file (OpenCV's), whose frames between key frames
    carry the noise of the frames before."""
    img = cv2.resize(image.astype(np.float32), (320, 240), interpolation=cv2.INTER_AREA)
    noise = {"jpeg": 4.0, "mp4v": 6.0}[transport]
    frames = []
    for t in range(n):
        shift = np.float32([[1, 0, -speed * t], [0, 1, 0]])
        f = cv2.warpAffine(img, shift, (320, 240), borderMode=cv2.BORDER_REFLECT)
        u8 = np.round(np.clip(f + rng.normal(0, noise / 255, f.shape), 0, 1) * 255).astype(np.uint8)
        if transport == "jpeg":
            u8 = cv2.imdecode(cv2.imencode(".jpg", u8, [cv2.IMWRITE_JPEG_QUALITY, 80])[1], 0)
        frames.append(u8)
    if transport == "mp4v":
        frames = video_samples.through_mp4v(frames, tmp_path / f"view-{speed}.mp4")
        assert len(frames) == n
    return frames


@pytest.mark.parametrize("transport", ["jpeg", "mp4v"])
def test_a_still_view_through_camera_noise_shows_no_motion(transport, tmp_path):
    """The whole ``chelsea`` photograph, still, with camera noise through JPEG (as the dashboard's
    camera sends frames) or through an mp4v video: the code of its fur changes with the noise and
    the read-out read that as faint motion that agreed, a dominant motion 0.98-0.99 confident on
    most frames (0.49 at the median since it is capped by its fourth most confident cell). Where a
    cell's image changes as noise does (about as much over two frames as over one: ``NOISE_GATE``),
    it is shown still; panned slowly through the same camera, it is shown moving, the right way."""
    from v1motion.models.motion.engine import NOISE_GATE
    from v1motion.models.motion.motion_eval import CONFIDENT

    image = stimuli.load_still("chelsea")
    read = {}
    for gate in (None, NOISE_GATE):
        e = MotionEngine.load_default()
        e.noise_gate = gate
        for speed in (0.0, 0.5):
            st = e.new_state()
            rng = np.random.default_rng(0)
            frames = _through_a_camera(image, speed, 40, rng, transport, tmp_path)
            read[gate, speed] = [e.step(st, f) for f in frames][8:]
    without = read[None, 0.0]
    assert np.median([f.global_confidence for f in without]) > 0.3
    assert max(float(f.confidence.max()) for f in without) > CONFIDENT
    still = read[NOISE_GATE, 0.0]
    assert max(f.global_confidence for f in still) < 0.2
    assert max(float(f.confidence.max()) for f in still) < CONFIDENT
    for f in read[NOISE_GATE, 0.5]:
        assert f.global_confidence > 0.9
        assert angular_error(f.global_direction, np.pi) < np.radians(10)
        assert (f.confidence > CONFIDENT).mean() > 0.4


def test_a_repeated_frame_neither_shows_a_still_view_moving_nor_stops_a_moving_one(tmp_path):
    """A frame the same as the one before (a camera frame sent twice, a video's 24 to 30 frames/s
    conversion) changed by nothing, over one frame as over two: the noise gate cannot tell noise
    from motion on it, nor on the frame after it (``SAME_FRAME``). Without that, the still view
    through noise and JPEG showed faint motion on each repeat (its largest cell 0.38), and a pan with
    every fifth frame repeated lost a quarter of its confident cells on the frame after each."""
    from v1motion.models.motion.engine import NOISE_GATE

    frames = _through_a_camera(
        stimuli.load_still("chelsea"), 0.0, 30, np.random.default_rng(0), "jpeg", tmp_path
    )
    for t in (12, 20, 21):
        frames[t] = frames[t - 1]
    e = MotionEngine.load_default()
    st = e.new_state()
    read = [e.step(st, f) for f in frames][8:]
    assert max(float(f.confidence.max()) for f in read) < 0.2

    image = stimuli.load_still("chelsea")
    centre = (image.shape[1] / 2, image.shape[0] / 2)
    pan = list((stimuli.pan_sequence(image, centre, 0.7, 1.0, 30, (240, 320)) * 255).round())
    repeats = (12, 17, 22, 27)
    for t in repeats:
        pan[t] = pan[t - 1]
    shown = {}
    for gate in (None, NOISE_GATE):
        e = MotionEngine.load_default()
        e.noise_gate = gate
        st = e.new_state()
        shown[gate] = [float((e.step(st, f.astype(np.uint8)).confidence > 0.5).mean()) for f in pan]
    for t in repeats:
        for after in (t, t + 1):
            assert shown[NOISE_GATE][after] > 0.8 * shown[None][after], (after, shown)


def test_the_noise_gate_tells_noise_from_motion():
    """``_calm`` per cell, from the mean squared change over one frame (s1) and two (s2): noise
    (s2 = s1, small) is calm 0; motion of a pixel or two (s2 = 4 s1) 1 however small; a change as
    large over one frame as over two but larger than noise (a fast pan across texture) 1; between
    the ranges of ``NOISE_GATE``, in between."""
    e = MotionEngine.random(seed=0)
    (g_lo, g_hi), (s_lo, s_hi) = e.noise_gate
    shape = (64, 96)  # 4 x 6 cells of 16 px, 8 x 12 patches of 8
    levels = np.float32(255**2)

    def calm(s1, s2, before=None):
        one = np.full((8, 12), s1 / levels, np.float32)
        return e._calm(one, np.full((8, 12), s2 / levels, np.float32), shape, before)[0]

    assert calm(40.0, 40.0).max() == 0.0  # noise of about 4.5 grey levels
    assert calm(40.0, 160.0).min() == 1.0  # motion
    assert calm(2.0 * s_hi, 2.0 * s_hi).min() == 1.0  # large
    mid_growth = calm(40.0, 40.0 * (1 + (g_lo + g_hi) / 2))
    mid_size = calm((s_lo + s_hi) / 2, (s_lo + s_hi) / 2)
    np.testing.assert_allclose(mid_growth, 0.5, atol=1e-4)
    np.testing.assert_allclose(mid_size, 0.5, atol=1e-4)
    assert calm(0.0, 0.0).max() == 0.0  # no change at all: still
    # UNCHANGED: a change below it is still however it grows; a change at once after a rest appeared
    assert calm(0.2, 0.8).max() == 0.0 and calm(1.0, 4.0).min() == 1.0
    rest, moved = np.zeros((4, 6), np.float32), np.full((4, 6), 500.0, np.float32)
    assert calm(2.0 * s_hi, 2.0 * s_hi, rest).max() == 0.0
    assert calm(2.0 * s_hi, 2.0 * s_hi, moved).min() == 1.0
    assert calm(40.0, 160.0, rest).min() == 1.0  # motion starting from rest (it grows)


def test_moving_texture_passes_the_gate():
    e = MotionEngine.load_default()
    frames = stimuli.pan_sequence(
        stimuli.load_still("camera"), (256.0, 256.0), 0.7, 2.0, 8, (96, 128)
    )
    st = e.new_state()
    for f in frames:
        mf = e.step(st, f)
    assert (mf.confidence > 0.5).mean() > 0.3


def test_the_change_gate_is_validated():
    with pytest.raises(ValueError, match="change_gate"):
        MotionEngine.random(seed=0, change_gate=(0.3, 0.1))


@pytest.mark.parametrize("pool_px", [(48,), (32, 96)])
def test_pooling_on_a_helper_thread_gives_the_same_cells(rng, pool_px):
    from concurrent.futures import ThreadPoolExecutor

    pooling = Pooling(pool_px=pool_px)
    shape = (100, 140)
    grids = [(12, 17), (6, 9), (3, 5)]
    accs = [[rng.random((gh, gw, 5), dtype=np.float32) for _ in pool_px] for gh, gw in grids]
    serial = pooling.cells_by_scale(accs, shape)
    with ThreadPoolExecutor(1) as pool:
        threaded = pooling.cells_by_scale(accs, shape, executor=pool)
    np.testing.assert_array_equal(threaded, serial)
    # and each feature set is the box mean of its own level and scale, sampled at the cells
    lv, sc = len(grids) - 1, len(pool_px) - 1
    ys, xs = pooling.sample_at(lv, grids[lv], pooling.grid(shape))
    want = naive._pool_cells(accs[lv][sc], pooling.box(lv, sc), ys, xs)
    np.testing.assert_allclose(serial[:, :, lv * len(pool_px) + sc], want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(100, 140), (129, 161)])
@pytest.mark.parametrize("fast_from", [None, 0.05])
def test_coarse_read_is_the_read_of_the_half_size_frame_where_it_is_fast(
    shape, fast_from, monkeypatch
):
    """The coarse read is the one-scale read of the frame one octave down (``cv2.pyrDown``, as the
    pyramid makes it), by the same ss-RNN codes; a cell takes it where it reads fast motion, and it
    is decoded only when some moving cell reads at least half that fast. (A random engine seldom
    reads fast: low thresholds make it decode and take the coarse read on every frame.)"""

    from v1motion.models.motion import engine as engine_mod

    if fast_from is not None:
        monkeypatch.setattr(engine_mod, "FAST_FROM", fast_from)
        monkeypatch.setattr(engine_mod, "COARSE_CONFIDENT", 0.0)
        monkeypatch.setattr(engine_mod, "FINE_MOVING", -1.0)

    # The constraints pool each cell with its neighbours after the cells are taken from either read,
    # so they are off here: the composition holds for the steps that read each cell on its own.
    kw = dict(seed=3, levels=3, pooling=Pooling(pool_px=(32, 96)), constraints=None)
    both = MotionEngine.random(**kw)
    fine, half = MotionEngine.random(**kw, coarse=False), MotionEngine.random(**kw, coarse=False)
    frames = stimuli.pan_sequence(stimuli.load_still("camera"), (256.0, 256.0), 0.7, 6.0, 6, shape)
    s_both, s_fine, s_half = both.new_state(), fine.new_state(), half.new_state()
    decoded, taken = [], []
    for f in frames:
        got = both.step(s_both, f)
        a = fine.step(s_fine, f)
        b = half.step(s_half, cv2.pyrDown(to_grey(f)))
        want = (a.direction, a.speed, a.confidence)
        # decoded only where some moving cell reads at least half of FAST_FROM at one scale
        fast = (a.confidence > engine_mod.FINE_MOVING) & (a.speed >= engine_mod.FAST_FROM / 2)
        if fast.any():
            want = engine_mod.MotionEngine._take_fast(want, (b.direction, b.speed, b.confidence))
        decoded.append(bool(fast.any()))
        taken.append(int((got.speed != a.speed).sum()))
        for g, w in zip((got.direction, got.speed, got.confidence), want, strict=True):
            np.testing.assert_array_equal(g, w)
    assert got.direction.shape == a.direction.shape
    if fast_from is not None:
        assert all(decoded[1:]) and sum(taken) > 0
    # a frame too small for one more level is read at one scale
    small = MotionEngine.random(**kw)
    tiny = np.zeros((40, 48), np.uint8)
    assert small.step(small.new_state(), tiny).direction.shape == (2, 3)


def test_take_fast_takes_fast_confident_cells_over_moving_ones_only():
    from v1motion.models.motion.engine import COARSE_CONFIDENT, FAST_FROM, FINE_MOVING, MotionEngine

    fine = (np.zeros((4, 6)), np.full((4, 6), 1.0), np.full((4, 6), 0.5))
    fine[2][3, :] = FINE_MOVING / 2  # a still row: never takes the coarse reading
    c_speed = np.full((2, 3), FAST_FROM / 2)  # in px of the half-size image: exactly FAST_FROM
    c_speed[0, 0] = FAST_FROM / 2 - 0.5  # too slow
    c_conf = np.full((2, 3), 0.9)
    c_conf[0, 1] = COARSE_CONFIDENT / 2  # not confident
    coarse = (np.full((2, 3), np.pi), c_speed, c_conf)
    d, s, c = MotionEngine._take_fast(fine, coarse)
    take = np.ones((4, 6), bool)
    take[:2, :2] = False
    take[:2, 2:4] = False
    take[3, :] = False
    np.testing.assert_array_equal(d == np.float32(np.pi), take)
    np.testing.assert_array_equal(s, np.where(take, FAST_FROM, 1.0).astype(np.float32))
    np.testing.assert_array_equal(c, np.where(take, 0.9, fine[2]).astype(np.float32))
    # more per-cell arrays (the axes of the aperture read) come from the same cells
    *_, extra = MotionEngine._take_fast(fine, coarse, (np.zeros((4, 6)), np.full((2, 3), 7.0)))
    np.testing.assert_array_equal(extra, np.where(take, 7.0, 0.0))


# ------------------------------------------------------------- the aperture problem: one axis of motion
def test_unit_axes_are_doubled_angle_means_of_the_direction_curves():
    from v1motion.models.motion.mt_readout import unit_axes

    n = 16
    curves = np.zeros((n, 4))
    curves[[0, 8], 0] = 1.0  # moving right and left: the horizontal axis, fully selective
    curves[4, 1] = 2.0  # moving up only: the vertical axis (doubled: 180 deg)
    curves[:, 2] = 1.0  # every direction alike: no axis
    re, im = unit_axes(curves)  # unit 3 never responds
    np.testing.assert_allclose(re, [1.0, -1.0, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(im, [0.0, 0.0, 0.0, 0.0], atol=1e-6)
    assert re.dtype == im.dtype == np.float32


def _axis_field(shape, axis_deg, coherence, total=1.0):
    z = coherence * total * np.exp(2j * np.deg2rad(axis_deg))
    return np.stack(np.broadcast_arrays(z.real, z.imag, total), -1) * np.ones((*shape, 1))


def test_one_axis_keeps_the_velocity_component_along_it():
    from v1motion.models.motion.mt_readout import along_one_axis, axis_coherence

    d = np.full((4, 5), np.deg2rad(45.0))
    s = np.full((4, 5), np.sqrt(2.0))
    # Stripes along x (the axis of motion is vertical): (1, 1) px/frame measures as (0, 1).
    d2, s2 = along_one_axis(d, s, *axis_coherence(_axis_field((4, 5), 90.0, 1.0), 0.0), 0.6, 0.8)
    np.testing.assert_allclose(np.rad2deg(d2), 90.0, atol=1e-4)
    np.testing.assert_allclose(s2, 1.0, rtol=1e-5)
    # An axis at 135 deg: the component of (1, 1) along (-1, 1) is 0; along 0 deg, (1, 0).
    _, s3 = along_one_axis(d, s, *axis_coherence(_axis_field((4, 5), 135.0, 1.0), 0.0), 0.6, 0.8)
    np.testing.assert_allclose(s3, 0.0, atol=1e-5)
    d4, s4 = along_one_axis(d, s, *axis_coherence(_axis_field((4, 5), 0.0, 1.0), 0.0), 0.6, 0.8)
    np.testing.assert_allclose(np.rad2deg(d4), 0.0, atol=1e-4)
    np.testing.assert_allclose(s4, 1.0, rtol=1e-5)


def test_many_axes_leave_the_velocity_and_the_blend_is_linear_in_coherence():
    from v1motion.models.motion.mt_readout import along_one_axis, axis_coherence

    d = np.full((3, 3), np.deg2rad(45.0))
    s = np.full((3, 3), np.sqrt(2.0))
    d2, s2 = along_one_axis(
        d, s, *axis_coherence(_axis_field((3, 3), 90.0, 0.5), 1.0), 0.6, 0.8
    )  # below lo
    np.testing.assert_allclose(d2, d, rtol=1e-6)
    np.testing.assert_allclose(s2, s, rtol=1e-6)
    d3, s3 = along_one_axis(
        d, s, *axis_coherence(_axis_field((3, 3), 90.0, 0.7), 1.0), 0.6, 0.8
    )  # halfway
    vx, vy = s3 * np.cos(d3), s3 * np.sin(d3)
    np.testing.assert_allclose(vx, 0.5, rtol=1e-4)  # half of the along-stripe component stays
    np.testing.assert_allclose(vy, 1.0, rtol=1e-4)
    with pytest.raises(ValueError, match="lo < hi"):
        along_one_axis(d, s, *axis_coherence(_axis_field((3, 3), 90.0, 0.7), 1.0), 0.8, 0.6)


def test_coherence_is_measured_over_the_neighbourhood_not_the_cell():
    """A cell of one axis inside a field of another is not a grating: the blurred axes disagree."""
    from v1motion.models.motion.mt_readout import along_one_axis, axis_coherence

    field = _axis_field((9, 9), 0.0, 1.0)
    field[1::2, :] = _axis_field((4, 9), 90.0, 1.0)  # alternate rows: a plaid-like mix
    d = np.full((9, 9), np.deg2rad(30.0))
    s = np.full((9, 9), 2.0)
    d2, s2 = along_one_axis(d, s, *axis_coherence(field, 2.0), 0.6, 0.8)
    np.testing.assert_allclose(d2[2:-2, 2:-2], d[2:-2, 2:-2], rtol=1e-5)
    np.testing.assert_allclose(s2[2:-2, 2:-2], 2.0, rtol=1e-5)


@pytest.mark.parametrize("direction_deg", [90.0, 0.0])
def test_the_engine_reads_a_grating_along_its_normal(direction_deg):
    """A full-field grating drifting at 1 px/frame: the dominant motion is its normal velocity (the
    MT read-out alone wanders by 10-40 deg with the grating's phase)."""
    e = MotionEngine.load_default()
    state = e.new_state()
    errs, speeds = [], []
    for t in range(40):
        img = stimuli.grating_frame(
            (240, 320), np.deg2rad(direction_deg), 1.0, period=24.0, t=float(t)
        )
        mf = e.step(state, np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8))
        if t >= 10:
            errs.append(angular_error(mf.global_direction, np.deg2rad(direction_deg)))
            speeds.append(mf.global_speed)
    assert np.rad2deg(np.median(errs)) < 2.0  # without the aperture read: 6.5 (0 deg), 12 (90 deg)
    assert np.rad2deg(np.max(errs)) < 10.0  # without: 18 and 40
    assert 0.7 < np.median(speeds) < 1.3


@pytest.mark.parametrize(
    "direction_deg, speed", [(0.0, 1.5), (225.0, 2.0), (90.0, 1.0), (315.0, 1.5)]
)
def test_the_live_sources_gratings_read_at_their_truth(direction_deg, speed):
    """The dashboard's default source shows these gratings (period 24 px): the dominant motion is
    their normal velocity. With the aperture step blended from 0.7 to 0.9, the oblique 225-degree one
    read 5.2 degrees off (median)."""
    e = MotionEngine.load_default()
    state = e.new_state()
    errs, speeds = [], []
    for t in range(40):
        img = stimuli.grating_frame(
            (240, 320), np.deg2rad(direction_deg), speed, period=24.0, t=float(t)
        )
        mf = e.step(state, np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8))
        if t >= 10:
            errs.append(angular_error(mf.global_direction, np.deg2rad(direction_deg)))
            speeds.append(mf.global_speed)
    assert np.rad2deg(np.median(errs)) < 2.5
    assert abs(np.median(speeds) / speed - 1) < 0.25


def _velocity(direction, speed):
    return speed * np.cos(direction), speed * np.sin(direction)


def test_one_axis_cells_take_the_motion_their_neighbourhood_constrains():
    """A pan at 135 deg, (-1, 1) px/frame: the left half of the cells sees one axis only (horizontal
    strands, axis 90 deg) and reads the component across them, (0, 1); the right half sees several
    axes and reads the whole velocity. Pooled over the neighbourhood, the one-axis cells near the
    textured half take the pan's velocity; the textured cells keep theirs."""
    from v1motion.models.motion.mt_readout import pool_constraints

    rows, cols = 6, 12
    vx, vy = np.zeros((rows, cols)), np.ones((rows, cols))
    vx[:, cols // 2 :] = -1.0
    direction, speed = np.arctan2(vy, vx), np.hypot(vx, vy)
    one_axis = np.where(np.arange(cols) < cols // 2, 1.0, 0.0)[None].repeat(rows, 0)
    axis = np.full((rows, cols), np.pi / 2)
    d2, s2 = pool_constraints(
        direction, speed, np.ones((rows, cols)), one_axis, axis, 3.0, 0.05, 0.35, 0.1
    )
    ux, uy = _velocity(d2, s2)
    np.testing.assert_allclose(uy, 1.0, atol=1e-4)  # the measured component is kept everywhere
    np.testing.assert_allclose(ux[:, cols // 2 :], -1.0, atol=1e-5)  # textured cells unchanged
    near = ux[:, cols // 2 - 2 : cols // 2]
    assert np.all(near < -0.6), near  # was 0: the pan's motion along the strands is recovered
    # without a textured neighbour nothing fixes the motion along the strands
    d3, s3 = pool_constraints(
        direction[:, : cols // 2], speed[:, : cols // 2], np.ones((rows, cols // 2)),
        one_axis[:, : cols // 2], axis[:, : cols // 2], 3.0, 0.05, 0.35, 0.1,
    )  # fmt: skip
    np.testing.assert_allclose(np.rad2deg(d3), 90.0, atol=1e-3)
    np.testing.assert_allclose(s3, 1.0, rtol=1e-4)


def test_a_grating_keeps_its_normal_motion_under_the_constraints(rng):
    """Every cell sees the same axis, its estimate a few degrees off from cell to cell: nearly
    parallel constraints, which the prior keeps from swinging the motion along the stripes."""
    from v1motion.models.motion.mt_readout import pool_constraints

    shape = (15, 20)
    axis = np.deg2rad(30.0 + rng.uniform(-4, 4, shape))
    direction = axis.copy()
    speed = np.full(shape, 2.0)
    d2, s2 = pool_constraints(
        direction, speed, rng.uniform(0.5, 1, shape), np.ones(shape), axis, 8.0, 0.05, 0.35, 0.1
    )
    err = np.rad2deg(np.abs(np.angle(np.exp(1j * (d2 - np.deg2rad(30.0))))))
    assert np.median(err) < 3.0 and err.max() < 8.0, (np.median(err), err.max())
    np.testing.assert_allclose(np.median(s2), 2.0, rtol=0.05)


def test_cells_that_see_several_axes_are_left_as_they_are(rng):
    from v1motion.models.motion.mt_readout import pool_constraints

    shape = (7, 9)
    d, s = rng.uniform(-np.pi, np.pi, shape), rng.uniform(0.5, 3, shape)
    d2, s2 = pool_constraints(
        d,
        s,
        np.ones(shape),
        np.full(shape, 0.04),
        rng.uniform(0, np.pi, shape),
        4.0,
        0.05,
        0.35,
        0.1,
    )
    np.testing.assert_allclose(np.cos(d2 - d), 1.0, atol=1e-6)
    np.testing.assert_allclose(s2, s, rtol=1e-5)
    for bad in [(0.0, 0.05, 0.35, 0.1), (4.0, 0.35, 0.05, 0.1), (4.0, 0.05, 0.35, 0.0)]:
        with pytest.raises(ValueError):
            pool_constraints(d, s, np.ones(shape), np.full(shape, 0.5), d, *bad)


def test_pooled_constraints_match_the_per_cell_least_squares(rng):
    """The numpy form against the definition, cell by cell, on the cells whose Gaussian does not
    reach the edge: ``u = argmin sum_k g w_k |M_k^(1/2)(u - v_k)|^2 + lam |u - v_c|^2``."""
    from v1motion.models.motion.mt_readout import pool_constraints

    sigma, lo, hi, prior = 1.5, 0.05, 0.35, 0.1
    shape = (24, 26)
    d, s = rng.uniform(-np.pi, np.pi, shape), rng.uniform(0.2, 4, shape)
    w, one_axis, axis = (
        rng.uniform(0, 1, shape),
        rng.uniform(0, 0.5, shape),
        rng.uniform(0, np.pi, shape),
    )
    d2, s2 = pool_constraints(d, s, w, one_axis, axis, sigma, lo, hi, prior)
    ksize = int(round(sigma * 8 + 1)) | 1  # OpenCV's kernel size for float images
    g1 = cv2.getGaussianKernel(ksize, sigma).ravel()
    half = ksize // 2
    a = np.clip((one_axis - lo) / (hi - lo), 0, 1)
    vx, vy = _velocity(d, s)
    for i in range(half, shape[0] - half):
        for j in range(half, shape[1] - half):
            M, r = np.zeros((2, 2)), np.zeros(2)
            for di in range(-half, half + 1):
                for dj in range(-half, half + 1):
                    k = (i + di, j + dj)
                    n = np.array([np.cos(axis[k]), np.sin(axis[k])])
                    Mk = a[k] * np.outer(n, n) + (1 - a[k]) * np.eye(2)
                    gw = g1[di + half] * g1[dj + half] * w[k]
                    M += gw * Mk
                    r += gw * Mk @ np.array([vx[k], vy[k]])
            lam = prior * np.trace(M) / 2
            v = np.array([vx[i, j], vy[i, j]])
            u = np.linalg.solve(M + lam * np.eye(2), r + lam * v)
            want = v + a[i, j] * (u - v)
            got = np.array(_velocity(d2[i, j], s2[i, j]))
            np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)


def test_the_constraints_are_validated_and_can_be_turned_off():
    with pytest.raises(ValueError, match="constraints"):
        MotionEngine.load_default(constraints=(8.0, 0.35, 0.05, 0.1))
    with pytest.raises(ValueError, match="constraints"):
        MotionEngine.load_default(constraints=(8.0, 0.05, 0.35, 0.1, 0.0))  # local: > 0
    assert MotionEngine.load_default(constraints=(8.0, 0.05, 0.35, 0.1)).constraints[3] == 0.1
    assert MotionEngine.load_default(constraints=None).constraints is None
    assert MotionEngine.load_default(aperture=None).constraints is None  # it needs the axes


def test_the_aperture_read_is_validated_and_can_be_turned_off():
    with pytest.raises(ValueError, match="aperture"):
        MotionEngine.load_default(aperture=(0.8, 0.6))
    assert MotionEngine.load_default(aperture=None).aperture is None


def test_the_dominant_motion_weighs_cells_by_the_given_weight_and_falls_back_to_confidence():
    """Cells on one edge (high axis coherence) read 40 deg off; the textured cells read the truth."""
    d = np.zeros((4, 6))
    d[:, :2] = np.deg2rad(40.0)
    s, conf = np.ones((4, 6)), np.ones((4, 6))
    coherence = np.zeros((4, 6))
    coherence[:, :2] = 0.95
    plain = global_motion(d, s, conf)
    weighted = global_motion(d, s, conf, weight=(1 - coherence) ** 4)
    assert np.rad2deg(plain[0]) > 10.0
    assert abs(np.rad2deg(weighted[0])) < 0.01
    assert weighted[2] > plain[2]  # the cells that count agree better
    assert global_motion(d, s, conf, weight=np.zeros((4, 6))) == plain  # no weight anywhere


def test_axis_calibration_recovers_a_planted_distortion():
    from v1motion.models.motion.mt_readout import axis_offsets, calibrate_axis

    def distort(theta):  # a readout that pulls axes by up to 6 degrees, with a period of 90
        return theta + np.radians(6.0) * np.sin(4 * theta)

    grid = np.radians(np.arange(0, 180, 2.5))
    theta = np.radians(np.arange(0.7, 360, 3.3))  # off the grid, both directions of each axis
    raw = np.degrees(np.angle(np.exp(2j * (distort(theta) - theta))) / 2)
    assert np.abs(raw).max() > 5.5  # the distortion was there to correct
    offsets = axis_offsets(grid, distort(grid), n=72, fixed=())
    got = calibrate_axis(distort(theta), offsets)
    err = np.degrees(np.angle(np.exp(2j * (got - theta))) / 2)
    assert np.abs(err).max() < 0.3
    # with the cardinal axes fixed, axes read within 2.5 degrees of one are left as read, the rest
    # corrected as well as before
    offsets = axis_offsets(grid, distort(grid), n=72)
    est = np.mod(distort(theta), np.pi)
    got = calibrate_axis(distort(theta), offsets)
    near = np.min(np.abs(np.angle(np.exp(2j * (est[:, None] - [0.0, np.pi / 2]))) / 2), 1)
    np.testing.assert_allclose(got[near < np.radians(2.5)], distort(theta)[near < np.radians(2.5)])
    err = np.degrees(np.angle(np.exp(2j * (got - theta))) / 2)
    assert np.abs(err[near > np.radians(5.0)]).max() < 0.3
    np.testing.assert_array_equal(calibrate_axis(theta, None), theta)
    np.testing.assert_allclose(calibrate_axis(theta, np.zeros(72)), theta, atol=1e-6)


def test_the_engine_applies_its_axis_calibration_and_loads_it_from_json(rng, tmp_path):
    from v1motion.models.motion.engine import load_axis_calibration

    plain = MotionEngine.random(seed=0, levels=3)
    shifted = MotionEngine.random(seed=0, levels=3, axis_calibration=np.full(8, np.radians(10.0)))
    frame = rng.integers(0, 255, (112, 160), dtype=np.uint8)
    s1, s2 = plain.new_state(), shifted.new_state()
    plain.step(s1, frame)
    shifted.step(s2, frame)
    level = (s1.prev[0], 112 // 8, 160 // 8)
    c1, a1 = plain._axis_coherence(level, (7, 10))
    c2, a2 = shifted._axis_coherence(level, (7, 10))
    np.testing.assert_array_equal(c1, c2)
    np.testing.assert_allclose(np.degrees(a2 - a1), 10.0, atol=1e-4)
    path = tmp_path / "axis.json"
    path.write_text('{"offsets_deg": [1.0, -2.0, 3.0]}')
    offsets, reference = load_axis_calibration(path)
    np.testing.assert_allclose(offsets, np.radians([1.0, -2.0, 3.0]))
    assert reference is None  # a file from before the coherence reference
    path.write_text('{"offsets_deg": [1.0, -2.0], "coherence_reference": [0.9, 0.8]}')
    np.testing.assert_allclose(load_axis_calibration(path)[1], [0.9, 0.8])
    path.write_text('{"offsets_deg": [1.0]}')
    with pytest.raises(ValueError, match="offsets_deg"):
        load_axis_calibration(path)
    path.write_text('{"offsets_deg": [1.0, 2.0], "coherence_reference": [0.9, 0.0]}')
    with pytest.raises(ValueError, match="coherence_reference"):
        load_axis_calibration(path)


def test_coherence_is_taken_relative_to_a_gratings_at_the_cells_axis():
    from v1motion.models.motion.mt_readout import coherence_on_axis_scale

    reference = np.array([1.0, 0.8, 0.7, 0.8])  # axes 0, 45, 90, 135 degrees
    axis = np.radians([[0.0, 45.0, 90.0, 67.5], [180.0, 225.0, 157.5, -45.0]])
    coherence = np.full((2, 4), 0.7)
    got = coherence_on_axis_scale(coherence, axis, reference, floor=0.6)
    # [0.6, ref] stretched to [0.6, 1], at the reference of the cell's axis: on the grid; between
    # grid axes linearly (67.5: 0.75, 157.5: 0.9); periodic in pi (180 = 0, 225 = 45, -45 = 135)
    want = 0.6 + 0.1 * 0.4 / (np.array([[1.0, 0.8, 0.7, 0.75], [1.0, 0.8, 0.9, 0.8]]) - 0.6)
    np.testing.assert_allclose(got, np.minimum(want, 1.0), rtol=1e-6)
    assert got.dtype == np.float32
    assert got[0, 2] == 1.0  # a cell as coherent as the gratings of its axis
    # below the floor, nothing changes; above, never past 1
    low = coherence_on_axis_scale(np.full(4, 0.55), axis[0], reference, floor=0.6)
    np.testing.assert_allclose(low, 0.55)
    high = coherence_on_axis_scale(np.full(4, 0.95), axis[0], reference)
    np.testing.assert_allclose(high, [0.95, 1.0, 1.0, 1.0])  # a reference of 1 leaves it as it is
    assert coherence_on_axis_scale(coherence, axis, None) is coherence
    with pytest.raises(ValueError, match="positive"):
        coherence_on_axis_scale(coherence, axis, [0.5, 0.0])


def test_the_engine_reads_one_axis_relative_to_its_coherence_reference(rng, monkeypatch):
    # Relative to a reference of 1 everywhere, the coherence is as read: the same map as without one.
    # Where the scale puts every cell at 1 (a stand-in: the random engine's units hardly prefer an
    # axis), every cell counts as seeing one axis: its motion lies along its axis.
    from v1motion.models.motion import engine as engine_module
    from v1motion.models.motion.mt_readout import coherence_on_axis_scale

    def scale(coherence, axis, reference):
        if reference is not None and np.all(reference < 0.5):
            return np.ones_like(coherence)
        return coherence_on_axis_scale(coherence, axis, reference)

    monkeypatch.setattr(engine_module, "coherence_on_axis_scale", scale)
    frames = [rng.integers(0, 255, (112, 160), dtype=np.uint8) for _ in range(3)]
    out = {}
    for name, reference in (("none", None), ("one", np.ones(8)), ("tiny", np.full(8, 0.1))):
        # the aperture step alone: the constraints would then pool the cells' different axes
        engine = MotionEngine.random(
            seed=0, levels=3, coarse=False, coherence_reference=reference, constraints=None
        )
        state = engine.new_state()
        for frame in frames:
            mf = engine.step(state, frame)
        out[name] = mf, engine._axis_coherence((state.prev[0], 14, 20), mf.direction.shape)
    np.testing.assert_array_equal(out["none"][0].direction, out["one"][0].direction)
    np.testing.assert_array_equal(out["none"][0].global_direction, out["one"][0].global_direction)
    mf, (coherence, axis) = out["tiny"]
    moving = mf.speed > 1e-3
    assert moving.sum() > 10
    off_axis = np.abs(np.sin(mf.direction - axis))[moving]  # 0 when along the axis, either way
    assert off_axis.max() < 1e-3
    assert np.abs(np.sin(out["none"][0].direction - axis))[moving].max() > 0.1  # it was not before


def test_fit_axis_calibration_measures_the_uncalibrated_engine_and_fits_offsets_for_it():
    from v1motion.models.motion.mt_fit import fit_axis_calibration
    from v1motion.models.motion.mt_readout import axis_offsets

    engine = MotionEngine.random(
        seed=1, levels=3, axis_calibration=np.full(4, 0.5), coherence_reference=np.full(4, 0.5)
    )
    result = fit_axis_calibration(
        engine, step_deg=30.0, gratings=((12.0, 1.0),), shape=(64, 96), n_frames=4, progress=False
    )
    np.testing.assert_array_equal(engine.axis_calibration, np.full(4, 0.5))  # put back
    np.testing.assert_array_equal(engine.coherence_reference, np.full(4, 0.5))
    assert result["measured"]["true_axis_deg"] == [0.0, 30.0, 60.0, 90.0, 120.0, 150.0]
    est = np.array(result["measured"]["estimated_axis_deg"])
    assert np.all((est >= 0) & (est < 180))
    # measured without the engine's own calibration: the same estimates as an engine without one
    plain = fit_axis_calibration(
        MotionEngine.random(seed=1, levels=3), step_deg=30.0, gratings=((12.0, 1.0),),
        shape=(64, 96), n_frames=4, progress=False,
    )  # fmt: skip
    assert plain["measured"] == result["measured"]
    assert plain["coherence_reference"] == result["coherence_reference"]
    # the reference is the median coherence of the gratings of each axis, as the engine reads it
    # without a reference
    ref = np.array(result["coherence_reference"])
    assert ref.shape == (6,) and np.all((ref >= 0.05) & (ref <= 1.0))
    engine.axis_calibration = engine.coherence_reference = None
    state, cells, both = engine.new_state(), engine.pooling.grid((64, 96)), []
    for direction in np.radians([60.0, 240.0]):  # the axis of 60 degrees, third on the grid
        state.start((64, 96), 3, 3)
        for frame in stimuli.grating_sequence((64, 96), direction, 1.0, 12.0, 4):
            codes = engine.encode(state, to_grey(frame))
        both.append(engine._axis_coherence(codes[0], cells)[0].ravel())
    assert ref[2] == round(float(max(np.median(np.concatenate(both)), 0.05)), 4)
    want = axis_offsets(np.radians(result["measured"]["true_axis_deg"]), np.radians(est), n=6)
    np.testing.assert_allclose(result["offsets_deg"], np.degrees(want), atol=1e-3)


def _cell_maps(rng, shape=(9, 13)):
    """Random per-cell maps: direction (rad), speed (px/frame), confidence with some NaN and
    negative entries, coherence, axis (rad)."""
    d = rng.uniform(-np.pi, np.pi, shape).astype(np.float32)
    s = rng.uniform(0.0, 12.0, shape).astype(np.float32)
    s.flat[:3] = 0.0  # at and below the speed floors
    w = rng.uniform(0, 1, shape).astype(np.float32)
    w[rng.uniform(size=shape) < 0.3] = 0.0
    w.flat[3], w.flat[4] = np.nan, -0.5
    coherence = rng.uniform(0, 1, shape).astype(np.float32)
    axis = rng.uniform(-np.pi, np.pi, shape).astype(np.float32)
    return d, s, w, coherence, axis


def _assert_motion_close(got, want):
    (d, s), (d_ref, s_ref) = got, want
    assert d.dtype == s.dtype == np.float32
    np.testing.assert_allclose(np.cos(d - d_ref), 1.0, atol=1e-9)
    np.testing.assert_allclose(s, s_ref, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_per_cell_steps_match_their_naive_twins(seed):
    """``integrate_cells``, ``axis_coherence``, ``coherence_on_axis_scale``, ``along_one_axis`` and
    ``pool_constraints`` (each a compiled pass around OpenCV's blur) against the numpy expressions
    of their definitions, in float64."""
    rng = np.random.default_rng(seed)
    d, s, w, coherence, axis = _cell_maps(rng)
    d2 = d.copy()
    d2[:, :3] = 0.3  # a region of one direction, so the blur's sums do not cancel
    _assert_motion_close(integrate_cells(d2, s, w, 2.5), naive.integrate_cells(d2, s, w, 2.5))
    blank = np.zeros_like(w)
    blank[0, 0] = 1.0  # one weighed cell: the far cells have none around them and keep their own
    got = integrate_cells(d, s, blank, 0.8)
    _assert_motion_close(got, naive.integrate_cells(d, s, blank, 0.8))
    assert got[0][-1, -1] == d[-1, -1] and got[1][-1, -1] == s[-1, -1]

    sums = np.stack([rng.normal(0, 1, d.shape), rng.normal(0, 1, d.shape), np.abs(w) + 2], -1)
    sums = sums.astype(np.float32)
    offsets = np.radians(rng.uniform(-5, 5, 72))
    for sigma, off in [(2.5, offsets), (0.0, None)]:
        c, a = mt_readout.axis_coherence(sums, sigma, off)
        c_ref, a_ref = naive.axis_coherence(sums, sigma, off)
        np.testing.assert_allclose(c, c_ref, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.cos(2 * (a - a_ref)), 1.0, atol=1e-9)  # axes: modulo pi
    reference = rng.uniform(0.7, 1.0, 8)
    reference[:2] = 0.61, 0.63  # near the floor: the stretch is capped (0.05 in the denominator)
    got = mt_readout.coherence_on_axis_scale(coherence, axis, reference)
    want = naive.coherence_on_axis_scale(coherence, axis, reference)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert got.dtype == np.float32 and 0 < (got == 1.0).mean() < 1

    _assert_motion_close(
        mt_readout.along_one_axis(d, s, coherence, axis, 0.3, 0.7),
        naive.along_one_axis(d, s, coherence, axis, 0.3, 0.7),
    )
    args = (d, s, np.nan_to_num(w) + 0.05, coherence, axis, 3.0, 0.2, 0.8, 0.5)
    _assert_motion_close(mt_readout.pool_constraints(*args), naive.pool_constraints(*args))


@pytest.mark.parametrize("seed", [0, 1])
def test_pooled_constraints_asking_a_local_neighbourhood_match_their_twin(seed):
    """``pool_constraints(..., local)`` against its float64 twin, on the cells where neither of
    its two choices (is the solution within 90 degrees of the cell's own velocity?) is a tie."""
    from v1motion.models.motion import mt_readout

    d, s, w, coherence, axis = _cell_maps(np.random.default_rng(seed), (30, 40))
    args = (d, s, np.nan_to_num(w) + 0.05, coherence, axis, 3.0, 0.2, 0.8, 0.5, 1.0)
    dl, sl = mt_readout.pool_constraints(*args)
    dl_ref, sl_ref = naive.pool_constraints(*args)
    v, u, near, _ = naive.constraint_solutions(*args)

    def cos(x):
        return (x * v).sum(-1) / (np.linalg.norm(x, axis=-1) * np.linalg.norm(v, axis=-1) + 1e-12)

    clear = (np.abs(cos(u)) > 1e-3) & (np.abs(cos(near)) > 1e-3)
    asked = (cos(u) < 0) & (cos(near) > 0) & clear
    assert clear.mean() > 0.95 and asked.sum() >= 20, (clear.mean(), asked.sum())
    np.testing.assert_allclose(np.cos(dl - dl_ref)[clear], 1.0, atol=1e-9)
    np.testing.assert_allclose(sl[clear], sl_ref[clear], rtol=2e-5, atol=1e-6)
    without = mt_readout.pool_constraints(*args[:-1])
    assert not np.allclose(np.cos(dl - without[0])[asked], 1.0)  # the local solution was taken


def test_a_slower_lane_beside_an_opposite_faster_one_keeps_its_direction():
    """Two lanes of cars 6 cells wide, going opposite ways (5 px/frame right, confident; 2 px/frame
    left, less so), their cells seeing mostly the cars' long horizontal edges. The neighbourhood of
    8 cells solved the slower lane's cells as the faster lane; asking the local one (2 cells) where
    that solution turns a cell by over 90 degrees keeps them. A lone cell read the wrong way inside
    one motion is pooled as before, as its local neighbourhood turns it too."""
    from v1motion.models.motion.mt_readout import pool_constraints

    rows, cols = 12, 30
    fast = np.arange(rows) < 6
    direction = np.where(fast, 0.0, np.pi)[:, None].repeat(cols, 1)
    speed = np.where(fast, 5.0, 2.0)[:, None].repeat(cols, 1)
    weight = np.where(fast, 1.0, 0.6)[:, None].repeat(cols, 1)
    one_axis, axis = np.full((rows, cols), 0.3), np.full((rows, cols), np.pi / 2)
    direction[2, 15] = np.pi  # a wrong reading inside the fast lane
    args = (direction, speed, weight, one_axis, axis, 8.0, 0.05, 0.35, 0.1)

    def error_deg(d, truth):
        return np.degrees(np.abs(np.angle(np.exp(1j * (d - truth)))))

    d_old, _ = pool_constraints(*args)
    d_new, s_new = pool_constraints(*args, 2.0)
    assert np.median(error_deg(d_old[8:], np.pi)) > 90  # as before: read as the faster lane
    assert error_deg(d_new[8:], np.pi).max() < 30
    np.testing.assert_allclose(np.median(s_new[8:]), 2.0, rtol=0.35)
    # the fast lane as before, its lone wrong cell included (its local neighbourhood turns it too)
    np.testing.assert_array_equal(d_new[:6], d_old[:6])
