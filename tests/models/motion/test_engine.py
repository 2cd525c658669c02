"""The per-frame engine: output contract, recurrent state, and clear errors on bad frames."""

import copy
import json
import os
import platform
import sys

import numba
import numpy as np
import pytest

from tests import naive
from v1motion.models.motion.engine import PRIME_PASSES, MotionEngine, MotionFrame, to_grey
from v1motion.models.motion.whitening import Whitener


@pytest.fixture(scope="module")
def engine():
    e = MotionEngine.random(seed=0)
    e.warmup()
    return e


def test_motion_frame_contract(engine, rng):
    state = engine.new_state()
    first = engine.step(state, rng.integers(0, 255, (120, 160, 3), dtype=np.uint8))
    # one frame holds no motion: the first of a stream shows none, on the same grid
    assert first.direction.shape == (120 // first.cell, 160 // first.cell)
    assert not first.confidence.any() and first.global_confidence == 0 and first.top_units == []
    assert first.active_per_patch > 0  # it was encoded all the same
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


def test_grey_with_a_channel_axis_and_big_endian_floats_are_read_as_plain_grey(rng):
    """(H, W, 1) is how imageio and Keras give grey, big-endian floats how FITS readers give
    frames: both were refused ("... float32 or float64, got >f4")."""
    f = rng.random((64, 96))
    for dtype in (np.float32, np.float64):
        np.testing.assert_array_equal(to_grey(f.astype(dtype).astype(f">{dtype().dtype.char}")),
                                      to_grey(f.astype(dtype)))  # fmt: skip
    g = (f * 255).astype(np.uint8)
    np.testing.assert_array_equal(to_grey(g[:, :, None]), to_grey(g))
    np.testing.assert_array_equal(to_grey(f[:, :, None]), to_grey(f))


def test_a_masked_frame_is_refused_where_pixels_are_masked_not_read_without_its_mask(rng):
    """A masked array (astropy, a dead-pixel map) was read as its data: masked pixels' values,
    often 0 or garbage, moved through the motion map as texture."""
    g = rng.integers(0, 255, (64, 96), dtype=np.uint8)
    mask = np.zeros(g.shape, bool)
    mask[10:12, 20:25] = True
    with pytest.raises(ValueError, match="10 masked pixels.*filled"):
        to_grey(np.ma.masked_array(g, mask=mask))
    np.testing.assert_array_equal(to_grey(np.ma.masked_array(g)), to_grey(g))  # nothing masked
    np.testing.assert_array_equal(to_grey(np.ma.masked_array(g, mask=mask).filled(0)),
                                  to_grey(np.where(mask, 0, g).astype(np.uint8)))  # fmt: skip


def test_to_grey_gives_the_float32_quotients_of_the_grey_levels():
    levels = np.arange(256, dtype=np.uint8)
    grey = np.repeat(levels[None], 3, 0)
    want = grey.astype(np.float32) / 255.0
    np.testing.assert_array_equal(to_grey(grey), want)
    bgr = np.repeat(grey[..., None], 3, 2)  # equal channels: grey levels as they are
    np.testing.assert_array_equal(to_grey(bgr), want)
    bgra = np.concatenate([bgr, np.zeros_like(bgr[..., :1])], 2)
    np.testing.assert_array_equal(to_grey(bgra), want)
    assert to_grey(bgr).dtype == np.float32


@pytest.mark.skipif(
    not (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"),
    reason="the heap setting is glibc's",
)
def test_engines_keep_the_heap_for_the_next_frame(engine):
    from v1motion.models.motion import engine as engine_module

    assert engine_module.keep_heap() is True


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
        (np.zeros((0, 0, 3), np.uint8), "empty"),  # was OpenCV's own error, not a ValueError
        (np.zeros((64, 0), np.uint8), "empty"),
        (np.full((64, 64), 255.0, np.float32), r"\[0, 1\].*divide 0-255 levels by 255"),
        (np.full((64, 64), 1e39, np.float64), "grey levels in"),  # overflowed to NaN outputs
        (np.full((64, 64), -0.5, np.float64), "grey levels in"),
    ],
)
def test_bad_frames_raise_clear_errors(engine, frame, message):
    with pytest.raises(ValueError, match=message):
        engine.step(engine.new_state(), frame)


def test_float_frames_may_overshoot_0_to_1_a_little():
    """Interpolation (a cubic warp) and noise step a little past [0, 1]: taken as they are."""
    frame = np.linspace(-0.2, 1.2, 64 * 64).reshape(64, 64)
    np.testing.assert_array_equal(to_grey(frame), frame.astype(np.float32))


def test_a_float_frame_of_0_to_255_levels_is_refused_not_read_as_a_scene_without_cuts(engine):
    """Taken, its scene-cut features saturated: a cut to another scene read 13 px/frame at
    confidence 0.99."""
    frame = np.random.default_rng(0).random((64, 96)) * 255
    with pytest.raises(ValueError, match="divide 0-255 levels by 255, or pass uint8"):
        engine.step(engine.new_state(), frame)
    engine.step(engine.new_state(), frame / 255)  # the same frame in [0, 1] is taken


@pytest.mark.parametrize("state", [None, {}, "state"])
def test_a_state_that_is_not_a_streams_says_where_one_comes_from(engine, state):
    frame = np.zeros((64, 64), np.uint8)
    with pytest.raises(TypeError, match=r"engine\.new_state\(\)"):
        engine.step(state, frame)
    with pytest.raises(TypeError, match=r"engine\.new_state\(\)"):
        next(engine.run(state, [frame]))


def test_an_engine_says_it_cannot_be_pickled_and_its_state_pickles(engine, rng):
    import copy
    import pickle

    with pytest.raises(TypeError, match="build one in each process"):
        pickle.dumps(engine)
    with pytest.raises(TypeError, match="build one in each process"):
        copy.deepcopy(engine)
    state = engine.new_state()
    frames = [rng.integers(0, 255, (64, 96), dtype=np.uint8) for _ in range(3)]
    engine.step(state, frames[0])
    engine.step(state, frames[1])
    resumed = pickle.loads(pickle.dumps(state))
    a, b = engine.step(state, frames[2]), engine.step(resumed, frames[2])
    np.testing.assert_array_equal(a.direction, b.direction)
    np.testing.assert_array_equal(a.confidence, b.confidence)


def test_degrees_of_a_frame_are_its_radians_in_0_to_360():
    mf = _frame(np.array([[0.0, np.pi / 2], [-np.pi / 2, -1e-14]]))
    np.testing.assert_allclose(mf.direction_deg, [[0, 90], [270, 0]], atol=1e-9)
    assert ((mf.direction_deg >= 0) & (mf.direction_deg < 360)).all()
    assert _frame(np.zeros((1, 1)), global_direction=-np.pi / 2).global_direction_deg == 270.0
    for tiny in (-1e-14, -1e-17):  # the latter's degrees % 360 round to 360
        assert 0 <= _frame(np.zeros((1, 1)), global_direction=tiny).global_direction_deg < 360


FIELDS = [
    "cell_px", "rows", "cols", "direction_deg", "speed_px_per_frame", "confidence",
    "direction_hist", "speed_hist", "top_units", "global_direction_deg",
    "global_speed_px_per_frame", "global_confidence", "active_per_patch",
]  # fmt: skip


def _frame(direction, speed=None, confidence=None, **kw) -> MotionFrame:
    """A MotionFrame with these grids (speed 1 and confidence 0.5 by default) and quiet defaults."""
    direction = np.asarray(direction, np.float32)
    ones = np.ones(direction.shape, np.float32)
    fields = dict(
        direction=direction,
        speed=ones if speed is None else np.asarray(speed, np.float32),
        confidence=0.5 * ones if confidence is None else np.asarray(confidence, np.float32),
        cell=16,
        direction_hist=np.zeros(16, np.float32),
        speed_hist=np.zeros(7, np.float32),
        top_units=[],
        global_direction=0.0,
        global_speed=0.0,
        global_confidence=0.0,
        active_per_patch=0.0,
    )
    return MotionFrame(**(fields | kw))


def test_to_dict_is_the_one_format_of_a_frames_motion(engine, rng):
    """The websocket's ``motion`` and motion.json's frames (docs/protocol.md): whole degrees, grids
    to 2 decimals, histograms to 4, the global direction to 0.1 degree, plain JSON values."""
    mf = engine.step(engine.new_state(), rng.integers(0, 255, (96, 128), dtype=np.uint8))
    d = mf.to_dict()
    assert list(d) == FIELDS
    assert (d["rows"], d["cols"]) == mf.direction.shape and d["cell_px"] == mf.cell
    assert all(type(v) is int and 0 <= v < 360 for row in d["direction_deg"] for v in row)
    # radians inside the engine, whole degrees [0, 360) outside; 0 = right, 90 = up on screen
    gap = (np.asarray(d["direction_deg"]) - np.rad2deg(mf.direction) + 180) % 360 - 180
    assert np.abs(gap).max() <= 0.5 + 1e-4
    for name, grid, decimals in [
        ("speed_px_per_frame", mf.speed, 2), ("confidence", mf.confidence, 2),
        ("direction_hist", mf.direction_hist, 4), ("speed_hist", mf.speed_hist, 4),
    ]:  # fmt: skip
        np.testing.assert_array_equal(d[name], np.round(grid.astype(np.float64), decimals))
    g_gap = (d["global_direction_deg"] - np.rad2deg(mf.global_direction) + 180) % 360 - 180
    assert abs(g_gap) <= 0.05 + 1e-9 and d["global_direction_deg"] == round(
        d["global_direction_deg"], 1
    )
    assert d["global_speed_px_per_frame"] == round(mf.global_speed, 3)
    assert d["top_units"] == [[u, round(a, 4)] for u, a in mf.top_units]
    assert json.loads(json.dumps(d, allow_nan=False)) == d


def test_to_dict_degrees_are_whole_and_in_0_to_360():
    rad = [
        [-1e-7, 0.0, 2 * np.pi, 2 * np.pi - 1e-4],  # just under 360 degrees rounds to 0
        [-np.pi / 2, np.pi / 2, 7 * np.pi, np.deg2rad(359.4)],
    ]
    assert _frame(rad).to_dict()["direction_deg"] == [[0, 0, 0, 0], [270, 90, 180, 359]]
    for g, want in [(-1e-9, 0.0), (2 * np.pi - 1e-6, 0.0), (-np.pi / 2, 270.0), (7.5, 69.7)]:
        got = _frame(rad, global_direction=g).to_dict()["global_direction_deg"]
        assert 0 <= got < 360 and got == want


def test_to_dict_turns_nan_and_infinities_into_0():
    """The engine never gives them; if it ever did, the frame is still valid JSON (the websocket
    refuses NaN) and reads as no motion there."""
    nan, inf = np.nan, np.inf
    mf = _frame(
        [[nan, inf, -inf], [0.0, np.pi / 2, np.pi]],
        speed=[[1.0, 1.0, 1.0], [nan, inf, 2.345]],
        confidence=[[0.5, nan, 0.5], [0.5, 0.5, -inf]],
        direction_hist=np.array([nan, inf] + [0.25] * 14, np.float32),
        top_units=[(3, nan), (4, 1.23456)],
        global_direction=nan,
        global_speed=inf,
        global_confidence=nan,
        active_per_patch=-inf,
    )
    d = mf.to_dict()
    assert d["direction_deg"] == [[0, 0, 0], [0, 90, 180]]
    assert d["speed_px_per_frame"] == [[1.0, 1.0, 1.0], [0.0, 0.0, 2.35]]
    assert d["confidence"] == [[0.5, 0.0, 0.5], [0.5, 0.5, 0.0]]
    assert d["direction_hist"][:3] == [0.0, 0.0, 0.25]
    assert d["top_units"] == [[3, 0.0], [4, 1.2346]]
    assert [d[k] for k in FIELDS[-4:]] == [0.0, 0.0, 0.0, 0.0]
    json.dumps(d, allow_nan=False)


def _assert_codes_match(codes, ref):
    """Same active units in the same order for every patch; values within 1e-5."""
    assert len(codes) == len(ref)
    for (code, gh, gw), want in zip(codes, ref, strict=True):
        assert gh * gw == len(want) == len(code.cnt)
        for m, (units, vals) in enumerate(want):
            n = code.cnt[m]
            assert list(code.idx[m, :n]) == list(units), f"patch {m}"
            np.testing.assert_allclose(code.val[m, :n], vals, rtol=1e-5, atol=1e-6)


def _fresh(engine, shape):
    state = engine.new_state()
    state.shape, state.prev, state.rms = shape, [None] * engine.levels, [None] * engine.levels
    return state


def test_encode_matches_the_naive_reference(engine, rng):
    """Random frames, then a constant frame and a black one, at a size that is not a multiple of the
    patch; the recurrent state carries over, so every frame depends on the previous codes."""
    shape = (101, 139)
    frames = [rng.integers(0, 255, shape, dtype=np.uint8) for _ in range(4)]
    frames += [np.full(shape, 77, np.uint8), np.zeros(shape, np.uint8), frames[0]]
    state, ref_state = _fresh(engine, shape), {}
    active = 0
    for f in frames:
        grey = to_grey(f)
        codes = engine.encode(state, grey)
        _assert_codes_match(codes, naive.encode(engine, ref_state, grey))
        active += sum(int(c.cnt.sum()) for c, _, _ in codes)
    assert active > 0


def test_prepared_levels_give_the_codes_of_encode(engine, rng):
    """``step``'s encoding, whitened ahead by ``_prepare`` then encoded with the state, gives the codes
    ``encode`` gives from the grey frame, frame after frame (the running RMS and the recurrent state
    carry over); the stream's first frame is the frame encoded ``prime_passes`` more times first
    (``PRIME_PASSES``)."""
    assert engine.prime_passes == PRIME_PASSES > 0
    shape = (101, 139)
    s1, s2 = engine.new_state(), engine.new_state()
    for k in range(3):
        frame = rng.integers(0, 255, (*shape, 3), dtype=np.uint8)
        prepared = engine._prepare(frame)
        if k == 0:
            s2.start(shape, prepared[2], engine.levels)
            for _ in range(PRIME_PASSES):
                engine.encode(s2, to_grey(frame), prepared[2])
        assert len(prepared[3]) == prepared[2]  # one whitened image per level
        _, _, _, codes, _ = engine._encode_prepared(s1, prepared)
        want = engine.encode(s2, to_grey(frame), prepared[2])
        assert len(codes) == len(want)
        for (a, ah, aw), (b, bh, bw) in zip(codes, want, strict=True):
            assert (ah, aw) == (bh, bw)
            for f in ("idx", "val", "cnt", "prior"):
                np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
        assert s1.rms == s2.rms


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs NUMBA_NUM_THREADS >= 2")
def test_threads_give_the_same_codes(rng):
    one = MotionEngine.random(seed=0)
    two = MotionEngine.random(seed=0, threads=2)
    for shape in ((96, 128), (83, 117)):
        s1, s2 = _fresh(one, shape), _fresh(two, shape)
        for _ in range(3):
            grey = to_grey(rng.integers(0, 255, shape, dtype=np.uint8))
            for (a, _, _), (b, _, _) in zip(
                one.encode(s1, grey), two.encode(s2, grey), strict=True
            ):
                for f in ("idx", "val", "cnt", "prior"):
                    np.testing.assert_array_equal(getattr(a, f), getattr(b, f))


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs NUMBA_NUM_THREADS >= 2")
def test_streams_on_several_python_threads_share_a_threaded_engine(rng):
    """Several streams step one threaded engine at once (the live service): no crash of Numba's
    threading layer, and every stream gets exactly the single-threaded engine's motion."""
    import threading

    frames = rng.integers(0, 255, (6, 96, 128), dtype=np.uint8)
    ref = MotionEngine.random(seed=0)
    state = ref.new_state()
    want = [ref.step(state, f) for f in frames]
    shared = MotionEngine.random(seed=0, threads=2, parallel_from_px=0)
    got: dict[int, list] = {}

    def stream(k):
        s = shared.new_state()
        got[k] = [shared.step(s, f) for f in frames]

    threads = [threading.Thread(target=stream, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == [0, 1, 2]
    for k in got:
        for a, b in zip(got[k], want, strict=True):
            np.testing.assert_array_equal(a.direction, b.direction)
            np.testing.assert_array_equal(a.confidence, b.confidence)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs NUMBA_NUM_THREADS >= 2")
def test_a_threaded_engine_steps_small_frames_on_one_thread(rng, monkeypatch):
    one = MotionEngine.random(seed=0)
    two = MotionEngine.random(seed=0, threads=2, parallel_from_px=112 * 160)
    serial = []
    encode = two._serial._encode_frame
    monkeypatch.setattr(two._serial, "_encode_frame", lambda *a: serial.append(1) or encode(*a))
    for shape, on_one in (((96, 128), True), ((112, 160), False)):
        s1, s2 = one.new_state(), two.new_state()
        serial.clear()
        for _ in range(3):
            frame = rng.integers(0, 255, (*shape, 3), dtype=np.uint8)
            a, b = one.step(s1, frame), two.step(s2, frame)
            np.testing.assert_array_equal(a.direction, b.direction)
            np.testing.assert_array_equal(a.confidence, b.confidence)
        assert len(serial) == (3 if on_one else 0)
    with pytest.raises(ValueError, match="frame must be a numpy array"):
        two.step(two.new_state(), [[1, 2], [3, 4]])


def test_encode_accepts_a_non_contiguous_frame(engine, rng):
    grey = to_grey(rng.integers(0, 255, (96, 256), dtype=np.uint8))
    view = grey[:, ::2]
    a = engine.encode(_fresh(engine, view.shape), view)
    b = engine.encode(_fresh(engine, view.shape), view.copy())
    for (x, _, _), (y, _, _) in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.idx, y.idx)
        np.testing.assert_array_equal(x.val, y.val)


@pytest.mark.parametrize("threads", [0, 10_000])
def test_bad_thread_counts_raise_clear_errors(threads):
    with pytest.raises(ValueError, match="threads"):
        MotionEngine.random(seed=0, threads=threads)


@pytest.mark.parametrize("size", [3, 9])
@pytest.mark.parametrize("shape", [(64, 80), (101, 139), (17, 30)])
def test_whitening_by_bands_equals_the_whole_frame(rng, shape, size):
    """The two-thread encode whitens level 0 in bands: each band must give the whole frame's values."""
    wh = Whitener(size=size)
    wh.kernel_ = rng.standard_normal((size, size)).astype(np.float32)
    wh.scale_ = 1.7
    frame = rng.random((shape[0], 2 * shape[1])).astype(np.float32)[:, ::2]  # a strided view too
    whole = wh.transform(frame)
    for cuts in ([0, shape[0] // 2, shape[0]], [0, 1, 5, shape[0] - 1, shape[0]]):
        out = np.full(shape, np.nan, np.float32)
        for r0, r1 in zip(cuts[:-1], cuts[1:], strict=True):
            wh.transform_rows(frame, out, r0, r1)
        np.testing.assert_array_equal(out, whole)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs NUMBA_NUM_THREADS >= 2")
@pytest.mark.parametrize(
    ("shape", "fast_from"), [((112, 160), None), ((112, 160), 0.05), ((56, 80), None)]
)
def test_threaded_read_gives_the_serial_motion_and_histograms(rng, monkeypatch, shape, fast_from):
    """With two threads the read splits the projection and the pooling, and the coarse read runs on
    the helper beside the fine one when the frame before took it (otherwise on this thread, only if
    the frame needs it): the same motion map, and histograms that are the same sums in another
    order. ``fast_from`` 0.05: every moving cell takes the coarse read; 56 x 80: too small for a
    coarse read."""
    import threading

    from v1motion.models.motion import engine as engine_mod

    if fast_from is not None:
        monkeypatch.setattr(engine_mod, "FAST_FROM", fast_from)
    one = MotionEngine.random(seed=0, levels=3)
    two = MotionEngine.random(seed=0, levels=3, threads=2, parallel_from_px=0)
    s1, s2 = one.new_state(), two.new_state()
    needed, decoded = set(), []
    c1, c2 = one._coarse_decode, two._coarse_decode
    monkeypatch.setattr(one, "_coarse_decode", lambda *a: needed.add(t) or c1(*a))
    on_helper = lambda: threading.current_thread() is not threading.main_thread()  # noqa: E731
    monkeypatch.setattr(
        two, "_coarse_decode", lambda *a: decoded.append((t, on_helper())) or c2(*a)
    )
    for t in range(5):
        frame = rng.integers(0, 255, shape, dtype=np.uint8)
        a, b = one.step(s1, frame), two.step(s2, frame)
        for f in ("direction", "speed", "confidence"):
            np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
        assert a.global_direction == b.global_direction
        np.testing.assert_allclose(a.direction_hist, b.direction_hist, rtol=1e-5)
        np.testing.assert_allclose(a.speed_hist, b.speed_hist, rtol=1e-5)
        assert (a.direction_hist.sum() > 0) == (t > 0)  # the first frame is not read
    if shape[0] < 64:
        assert not needed and not decoded
        return
    if fast_from is not None:
        assert needed == {1, 2, 3, 4}  # every frame after the first
    # on the helper: the first frame read and each after one that took it; here: the others it needs
    ahead = {1} | {t + 1 for t in needed}
    expected = {(t, True) for t in range(1, 5) if t in ahead} | {(t, False) for t in needed - ahead}
    assert sorted(decoded) == sorted(expected)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs NUMBA_NUM_THREADS >= 2")
def test_threaded_read_decodes_the_coarse_read_ahead_only_after_a_frame_that_took_it(
    rng, monkeypatch
):
    """Fast motion on frame 3 only: frame 3 decodes the coarse read on this thread when it finds it
    needs it, frame 4 decodes it ahead on the helper (and does not need it); the maps are one
    thread's throughout."""
    import threading

    from v1motion.models.motion import engine as engine_mod

    one = MotionEngine.random(seed=0, levels=3)
    two = MotionEngine.random(seed=0, levels=3, threads=2, parallel_from_px=0)
    s1, s2 = one.new_state(), two.new_state()
    decoded = []
    c2 = two._coarse_decode
    on_helper = lambda: threading.current_thread() is not threading.main_thread()  # noqa: E731
    monkeypatch.setattr(
        two, "_coarse_decode", lambda *a: decoded.append((t, on_helper())) or c2(*a)
    )
    for t in range(6):
        monkeypatch.setattr(engine_mod, "FAST_FROM", 0.05 if t == 3 else 1e6)
        frame = rng.integers(0, 255, (112, 160), dtype=np.uint8)
        a, b = one.step(s1, frame), two.step(s2, frame)
        for f in ("direction", "speed", "confidence"):
            np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
        assert (a.global_direction, a.global_speed) == (b.global_direction, b.global_speed)
        assert t == 0 or s2.took_coarse == (t == 3)  # the first frame is not read
    assert decoded == [(1, True), (3, False), (4, True)]


def _same_motion(a, b):
    for f in ("direction", "speed", "confidence", "direction_hist", "speed_hist"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    assert (a.global_direction, a.global_speed, a.top_units) == (
        b.global_direction,
        b.global_speed,
        b.top_units,
    )


def _encoders():
    import threading

    return [t for t in threading.enumerate() if t.name.startswith("engine-encode-ahead")]


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs NUMBA_NUM_THREADS >= 2")
@pytest.mark.parametrize("run_ahead", [1, 2, 3, 5])
def test_run_encodes_ahead_and_gives_the_steps_motion(rng, record_encodes, run_ahead):
    """``run`` with two threads: each frame after the first is encoded on the helper, up to
    ``run_ahead`` ahead of the one read, and the motion is what ``step`` gives, frame by frame,
    through a change of size (which restarts the stream: encoded here, once the frames before it
    are read, and nothing after it encoded before it) and colour frames."""
    one = MotionEngine.random(seed=0, levels=3)
    two = MotionEngine.random(seed=0, levels=3, threads=2)
    two.run_ahead = run_ahead
    frames = [rng.integers(0, 255, (112, 160), dtype=np.uint8) for _ in range(4)]
    frames += [rng.integers(0, 255, (96, 128, 3), dtype=np.uint8) for _ in range(3)]
    s1 = one.new_state()
    want = [one.step(s1, f) for f in frames]
    where = record_encodes(two._serial)
    s2 = two.new_state()
    got = list(two.run(s2, frames))
    assert len(got) == len(frames)
    for a, b in zip(got, want, strict=True):
        _same_motion(a, b)
    # the first frame and the first of the new size on this thread, the others ahead, in order
    ahead = [name.startswith("engine-encode-ahead") for name, _, _ in where]
    assert ahead == [False, True, True, True, False, True, True]
    assert [prepared[0] for _, prepared, _ in where] == [(112, 160)] * 4 + [(96, 128)] * 3
    assert s2.frames == s1.frames and s2.shape == s1.shape
    assert not _encoders()  # the helper is gone with the generator


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs NUMBA_NUM_THREADS >= 2")
@pytest.mark.parametrize("run_ahead", [1, 3])
def test_run_takes_and_encodes_up_to_run_ahead_frames_ahead(rng, monkeypatch, run_ahead):
    """In ``run``, frames are taken and whitened on the calling thread, at most ``run_ahead`` ahead
    of the one yielded, and the helper encodes them while the caller holds a frame: by the time the
    caller has the first frame, the next ``run_ahead`` get encoded without it asking for more."""
    import threading
    import time

    two = MotionEngine.random(seed=0, levels=3, threads=2)
    two.run_ahead = run_ahead
    frames = [rng.integers(0, 255, (112, 160), dtype=np.uint8) for _ in range(7)]
    events = []
    prepare, encode = two._serial._prepare, two._serial._encode_prepared

    def spy_prepare(frame):
        k = next(i for i, f in enumerate(frames) if f is frame)
        events.append(("prepare", k, threading.current_thread().name))
        return prepare(frame)

    monkeypatch.setattr(two._serial, "_prepare", spy_prepare)
    monkeypatch.setattr(
        two._serial,
        "_encode_prepared",
        lambda *a: events.append(("encode", None, threading.current_thread().name)) or encode(*a),
    )

    def source():
        for k, f in enumerate(frames):
            events.append(("take", k, None))
            yield f

    def encoded():
        return sum(e == "encode" for e, _, _ in events)

    main = threading.current_thread().name
    for k, _ in enumerate(two.run(two.new_state(), source())):
        taken = max(i for e, i, _ in events if e == "take")
        assert taken <= k + run_ahead
        prepared = [i for e, i, _ in events if e == "prepare"]
        assert prepared == list(range(min(k + run_ahead + 1, len(frames))))
        if k == 0:  # the helper goes on while this frame is held
            deadline = time.monotonic() + 30
            while encoded() < 1 + run_ahead and time.monotonic() < deadline:
                time.sleep(0.01)
            assert encoded() == 1 + run_ahead
    assert all(name == main for e, _, name in events if e == "prepare")
    helpers = [name for e, _, name in events if e == "encode"]
    assert helpers[0] == main and all(n.startswith("engine-encode-ahead") for n in helpers[1:])
    assert len(helpers) == len(frames)


def test_run_on_one_thread_is_step(engine, rng):
    frames = rng.integers(0, 255, (4, 96, 128), dtype=np.uint8)
    s1, s2 = engine.new_state(), engine.new_state()
    for a, b in zip(engine.run(s1, frames), [engine.step(s2, f) for f in frames], strict=True):
        _same_motion(a, b)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs NUMBA_NUM_THREADS >= 2")
@pytest.mark.parametrize("bad_at", [0, 1, 3, 4])
def test_run_yields_the_frames_before_a_refused_one_then_raises(rng, bad_at):
    two = MotionEngine.random(seed=0, levels=3, threads=2)
    frames = [rng.integers(0, 255, (112, 160), dtype=np.uint8) for _ in range(5)]
    frames[bad_at] = np.full((112, 160), np.nan, np.float32)
    got = []
    with pytest.raises(ValueError, match="NaN"):
        for mf in two.run(two.new_state(), frames):
            got.append(mf)
    assert len(got) == bad_at
    assert not _encoders()


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs NUMBA_NUM_THREADS >= 2")
def test_run_closed_early_leaves_no_helper_running(rng):
    two = MotionEngine.random(seed=0, levels=3, threads=2)
    frames = (rng.integers(0, 255, (112, 160), dtype=np.uint8) for _ in range(50))
    motion = two.run(two.new_state(), frames)
    for _ in range(3):
        next(motion)
    motion.close()
    assert not _encoders()


def _blas_threads() -> int:
    from threadpoolctl import threadpool_info

    return max(p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas")


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs NUMBA_NUM_THREADS >= 2")
def test_an_engine_on_two_threads_steps_and_runs_with_blas_on_one_thread_then_gives_it_back(
    rng, monkeypatch
):
    """BLAS's own threads took the cores the engine's two threads were using (0.65-0.94x one thread's
    speed): while it steps or runs frames, BLAS runs on one thread; the caller's count comes back
    after, also when two users overlap."""
    from threadpoolctl import threadpool_limits

    from v1motion.models.motion import engine as engine_mod

    two = MotionEngine.random(seed=0, levels=3, threads=2, parallel_from_px=0)
    seen = []
    decode = two._decode
    monkeypatch.setattr(
        two, "_decode", lambda *a, **k: seen.append(_blas_threads()) or decode(*a, **k)
    )
    frames = [rng.integers(0, 255, (112, 160), dtype=np.uint8) for _ in range(3)]
    with threadpool_limits(limits=2, user_api="blas"):
        state = two.new_state()
        for f in frames:
            two.step(state, f)
        assert seen and set(seen) == {1}
        assert _blas_threads() == 2
        serial_seen = []
        read = two._serial._decode
        monkeypatch.setattr(
            two._serial,
            "_decode",
            lambda *a, **k: serial_seen.append(_blas_threads()) or read(*a, **k),
        )
        assert len(list(two.run(two.new_state(), frames))) == 3
        assert serial_seen and set(serial_seen) == {1}
        assert _blas_threads() == 2
        with engine_mod.ONE_BLAS_THREAD:
            with engine_mod.ONE_BLAS_THREAD:
                assert _blas_threads() == 1
            assert _blas_threads() == 1  # the other user is still inside
        assert _blas_threads() == 2


def test_importing_the_kernels_makes_openmp_wait_passively_unless_told_otherwise():
    from import_env import env_after_import

    kernels = "v1motion.models.motion.kernels"
    assert env_after_import(kernels, "OMP_WAIT_POLICY") == "PASSIVE"
    assert env_after_import(kernels, "OMP_WAIT_POLICY", preset="ACTIVE") == "ACTIVE"


_CAN_PLACE = hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) >= 2
needs_two_cpus = pytest.mark.skipif(
    not _CAN_PLACE or numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 CPUs to place threads on"
)


@needs_two_cpus
def test_a_two_thread_step_places_its_threads_and_restores_the_callers_affinity(rng, monkeypatch):
    """``step`` runs the calling thread on the engine's first CPU and the helper on its second
    (``_Placement``); after the step the caller may run anywhere it could before."""
    from v1motion.models.motion.engine import MotionEngine as Engine

    two = MotionEngine.random(seed=0, threads=2, parallel_from_px=0)
    first, second = two._placement.cpus
    assert first != second and {first, second} <= os.sched_getaffinity(0)
    seen = []
    encode = Engine._encode_frame

    def spy(self, state, frame):
        seen.append(os.sched_getaffinity(0))
        return encode(self, state, frame)

    before = os.sched_getaffinity(0)
    state = two.new_state()
    monkeypatch.setattr(Engine, "_encode_frame", spy)
    for _ in range(2):
        two.step(state, rng.integers(0, 255, (96, 128), dtype=np.uint8))
    assert seen == [{first}, {first}]
    assert os.sched_getaffinity(0) == before
    assert two._pool.submit(os.sched_getaffinity, 0).result() == {second}
    # engines made one after the other start one CPU further on
    assert MotionEngine.random(seed=0, threads=2)._placement.cpus[0] != first


@needs_two_cpus
def test_a_placement_the_system_refuses_leaves_the_threads_where_they_are(rng, monkeypatch):
    """A CPU set changed under a running process (a container's, say) makes ``sched_setaffinity``
    fail: the step still runs, on both threads, with the numbers of an engine that places nothing."""
    placed = MotionEngine.random(seed=0, threads=2, parallel_from_px=0)
    free = MotionEngine.random(seed=0, threads=2, parallel_from_px=0, place_threads=False)
    assert placed._placement.cpus

    def refuse(pid, cpus):
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(os, "sched_setaffinity", refuse)  # before the helper thread starts
    before = os.sched_getaffinity(0)
    s1, s2 = placed.new_state(), free.new_state()
    for _ in range(3):
        frame = rng.integers(0, 255, (96, 128), dtype=np.uint8)
        a, b = placed.step(s1, frame), free.step(s2, frame)
        np.testing.assert_array_equal(a.direction, b.direction)
        np.testing.assert_array_equal(a.confidence, b.confidence)
    assert os.sched_getaffinity(0) == before
    assert placed._pool.submit(os.sched_getaffinity, 0).result() == before  # helper not placed


@needs_two_cpus
def test_threads_are_left_to_the_scheduler_when_told_or_when_cpus_are_too_few():
    from v1motion.models.motion.engine import _Placement

    assert MotionEngine.random(seed=0, threads=2, place_threads=False)._placement.cpus == []
    assert _Placement(1).cpus == []
    before = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(before)})  # a process allowed one CPU
        placement = _Placement(2)
    finally:
        os.sched_setaffinity(0, before)
    assert placement.cpus == []
    with placement.calling_thread():
        assert os.sched_getaffinity(0) == before


@needs_two_cpus
def test_only_one_thread_at_a_time_is_placed_on_an_engines_cpu():
    """Two streams stepping one engine at once: the second runs where the scheduler puts it."""
    import threading

    from v1motion.models.motion.engine import _Placement

    placement = _Placement(2)
    before = os.sched_getaffinity(0)
    other, go = [], threading.Event()

    def second():  # made before the first is placed: a new thread inherits its maker's affinity
        go.wait()
        with placement.calling_thread():
            other.append(os.sched_getaffinity(0))

    t = threading.Thread(target=second)
    t.start()
    with placement.calling_thread():
        assert os.sched_getaffinity(0) == {placement.cpus[0]}
        go.set()
        t.join()
    assert other == [before]
    assert os.sched_getaffinity(0) == before
    with placement.calling_thread():  # free again once the first has left
        assert os.sched_getaffinity(0) == {placement.cpus[0]}


def test_an_engine_refuses_a_model_without_its_whitening_filter():
    base = MotionEngine.random(seed=0)
    model = copy.deepcopy(base.model)
    del model.whitener_
    with pytest.raises(ValueError, match="no whitening filter"):
        MotionEngine(model, base.readout, base.tuning, levels=base.levels)
