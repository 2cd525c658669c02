"""The Numba inference kernel against its numpy twin, and the greedy step against the objective."""

from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
import pytest

from tests import naive
from v1motion.models.motion.ssrnn import SSRNN, SparseCode


def _random_model(seed, n_atoms=12, n_clones=3, patch=4, r_scale=0.8, b=-1.0):
    m = SSRNN(n_atoms=n_atoms, n_clones=n_clones, patch=patch, tau_x=2.0, tau_y=0.5, kmax=5)
    m.init_random(seed=seed, r_scale=r_scale, b=b)
    rng = np.random.default_rng(seed + 100)
    m.b_ = (b + 0.7 * rng.standard_normal(m.n_units)).astype(np.float32)
    return m


def _assert_same_code(a, b):
    for f in ("idx", "val", "cnt", "prior"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)


def _compare(model, C, prev):
    out = model.infer(C, prev)
    dense = model.infer_dense(C, prev)
    np.testing.assert_array_equal(dense.cnt, out.cnt)
    np.testing.assert_array_equal(dense.idx, out.idx)
    np.testing.assert_allclose(dense.val, out.val, rtol=1e-5)
    # The parallel driver, on uneven chunks (one of them empty), gives exactly the serial code.
    m = len(C)
    for bounds in ([0, m], [0, m // 3, m // 3, m], np.linspace(0, m, 5).astype(np.int64)):
        _assert_same_code(model.infer(C, prev, bounds=np.asarray(bounds, np.int64)), out)
        # ... and so do the chunks shared by this thread and an executor's (the engine's way)
        for threads in (2, 3):
            with ThreadPoolExecutor(threads - 1) as ex:
                got = model.infer(
                    C, prev, bounds=np.asarray(bounds, np.int64), executor=ex, threads=threads
                )
            _assert_same_code(got, out)
    ref = naive._ssrnn_infer_frame(
        C, model.gram(), model.R_, model.b_, prev.idx, prev.val, prev.cnt, model.n_clones,
        1 / (2 * model.tau_y**2), model.lam, model.kappa, model.kmax,
    )  # fmt: skip
    for m, (units, vals) in enumerate(ref):
        got_units = out.idx[m, : out.cnt[m]]
        assert list(got_units) == list(units), f"patch {m}"
        np.testing.assert_allclose(out.val[m, : out.cnt[m]], vals, rtol=1e-5, atol=1e-5)
    return out


@pytest.mark.parametrize(
    ("seed", "n_clones"), [(s, 3) for s in range(5)] + [(5, 4), (6, 1), (7, 4)]
)
def test_kernel_matches_numpy_twin_over_a_sequence(seed, n_clones):
    model = _random_model(seed, n_clones=n_clones)
    rng = np.random.default_rng(seed)
    prev = SparseCode.empty(40, model.kmax)
    n_active = 0
    for _ in range(4):
        C = (2.5 * rng.standard_normal((40, model.n_atoms))).astype(np.float32)
        prev = _compare(model, C, prev)
        n_active += prev.cnt.sum()
    assert n_active > 0


def test_kernel_edge_cases():
    model = _random_model(7)
    prev = SparseCode.empty(6, model.kmax)
    C = np.zeros((6, model.n_atoms), np.float32)
    C[1] = -0.0
    C[2, 3] = 50.0  # one strong feature
    C[3] = 1e-6
    C[4] = np.linspace(-20, 20, model.n_atoms)
    out = _compare(model, C, prev)
    assert out.cnt[0] == 0 and out.cnt[1] == 0  # nothing to explain: nothing switches on
    assert out.cnt[2] >= 1
    # Non-contiguous input view behaves like its copy.
    wide = np.zeros((6, 2 * model.n_atoms), np.float32)
    wide[:, ::2] = C
    out2 = model.infer(wide[:, ::2], prev)
    np.testing.assert_array_equal(out2.cnt, out.cnt)


@pytest.mark.parametrize("n_clones", [1, 2, 3, 4, 5])
def test_best_clones_match_numpy_twin_first_on_ties(rng, n_clones):
    from v1motion.models.motion.kernels import _best_clones

    n_groups = 14
    for pi in (
        rng.standard_normal(n_groups * n_clones),
        rng.integers(-2, 2, n_groups * n_clones).astype(np.float64),  # many ties
        np.full(n_groups * n_clones, -1.5),
    ):
        best_pi, best_u = np.empty(n_groups), np.empty(n_groups, np.int64)
        _best_clones(pi, n_clones, best_pi, best_u)
        want_pi, want_u = naive._best_clones(pi, n_clones)
        np.testing.assert_array_equal(best_u, want_u)
        np.testing.assert_array_equal(best_pi, want_pi)


@pytest.mark.skipif(numba.config.DISABLE_JIT, reason="checks the compiled dispatcher")
def test_kernel_rejects_wrong_dtypes_instead_of_compiling_them():
    from v1motion.models.motion.kernels import _ssrnn_infer_frame

    model = _random_model(2)
    C = np.zeros((4, model.n_atoms))  # float64, the wrapper would have made it float32
    prev, out = SparseCode.empty(4, model.kmax), SparseCode.empty(4, model.kmax)
    ptr, idx, val = (
        np.zeros(model.n_units + 1, np.int64),
        np.zeros(0, np.int64),
        np.zeros(0, np.float32),
    )
    with pytest.raises(TypeError, match="No matching definition"):
        _ssrnn_infer_frame(
            C, model.gram(), ptr, idx, val, model.b_, *prev.arrays()[:3], model.n_clones,
            1.0, model.lam, model.kappa, model.kmax, *out.arrays(),
        )  # fmt: skip
    assert len(_ssrnn_infer_frame.signatures) == 1


@pytest.mark.parametrize("shape, p", [((24, 40), 8), ((29, 37), 8), ((13, 9), 4)])
def test_scaled_patches_match_numpy_twin(rng, shape, p):
    from v1motion.models.motion.kernels import _scaled_patches

    wide = rng.standard_normal((shape[0], 2 * shape[1])).astype(np.float32)
    wide[0, :6] = -0.0
    wide[1] = 0.0
    for frame in (wide[:, ::2], np.ascontiguousarray(wide[:, ::2])):  # a strided view and its copy
        want = naive._scaled_patches(frame, 0.37, p)
        got = np.full(want.shape, np.nan, np.float32)
        _scaled_patches(frame, np.float32(0.37), p, got)
        np.testing.assert_array_equal(got, want)  # the same float32 products, bit for bit
        assert np.array_equal(np.signbit(got), np.signbit(want))


def test_parallel_bounds_must_cover_the_patches():
    model = _random_model(1)
    C = np.zeros((10, model.n_atoms), np.float32)
    for bounds in ([0, 5], [1, 10], [0, 6, 4, 10]):
        with pytest.raises(ValueError, match="bounds"):
            model.infer(C, None, bounds=np.array(bounds))


def test_kernel_respects_kmax_and_nonnegativity(rng):
    model = _random_model(3, b=3.0)  # a permissive prior: many units want to be on
    C = (10 * rng.standard_normal((30, model.n_atoms))).astype(np.float32)
    out = model.infer(C, None)
    assert out.cnt.max() <= model.kmax
    for m in range(30):
        assert np.all(out.val[m, : out.cnt[m]] > 0)
        atoms = out.idx[m, : out.cnt[m]] // (2 * model.n_clones)
        assert len(set(atoms)) == len(atoms)  # at most one unit per atom


def test_no_greedy_step_lowers_the_objective(rng):
    """Each accepted addition raises L^t: replay the pursuit with kmax = 1, 2, ... and compare."""
    model = _random_model(11)
    d = model.patch**2
    y = (rng.standard_normal((25, d)) * 1.5).astype(np.float32)
    C = y @ model.W_
    prev = SparseCode.empty(25, model.kmax)
    prev_code = model.infer(C, prev)  # some realistic t-1 activity
    pi = model.b_[None, :].astype(np.float64) + prev_code.dense(model.n_units) @ model.R_.T
    kmax = model.kmax
    last = model.objective(y.astype(np.float64), SparseCode.empty(25, kmax), pi)
    for k in range(1, kmax + 1):
        model.kmax = k
        code = model.infer(C, prev_code)
        code.idx = np.pad(code.idx, ((0, 0), (0, kmax - k)))
        code.val = np.pad(code.val, ((0, 0), (0, kmax - k)))
        now = model.objective(y.astype(np.float64), code, pi)
        assert np.all(now >= last - 1e-6)
        last = now
    model.kmax = kmax


def test_bad_inputs_raise_clear_errors():
    model = _random_model(0)
    with pytest.raises(ValueError, match="shape"):
        model.infer(np.zeros((3, model.n_atoms + 1), np.float32), None)
    with pytest.raises(RuntimeError, match="no parameters"):
        SSRNN().infer(np.zeros((1, 64), np.float32), None)


@pytest.mark.parametrize("n_scales, n_out", [(1, 1), (1, 16), (2, 3), (3, 5)])
def test_projection_kernel_matches_numpy_twin(rng, n_scales, n_out):
    from v1motion.models.motion.mt_readout import _project_frame

    model = _random_model(5)
    n = model.n_units
    proj = rng.standard_normal((n, n_scales * n_out)).astype(np.float32)
    dir_bin = rng.integers(0, 16, n)
    speed_bin = rng.integers(0, 7, n)
    ds_weight = rng.uniform(0, 1, n).astype(np.float32)
    acc = np.full((n_scales, 50, n_out + 1), np.nan, np.float32)  # every entry must be written
    bare = acc.copy()  # the same averages, the histograms not counted
    want_acc = None
    for frame, alpha in enumerate([1.0, 0.5, 0.3]):  # the first frame overwrites, then averages
        code = model.infer((3 * rng.standard_normal((50, model.n_atoms))).astype(np.float32), None)
        hists = np.zeros(16, np.float32), np.zeros(7, np.float32), np.zeros(n, np.float32)
        args = code.idx, code.val, code.cnt, proj, dir_bin, speed_bin, ds_weight, alpha
        _project_frame(*args, acc, *hists, True)
        untouched = np.full(16, 7, np.float32), np.full(7, 7, np.float32), np.full(n, 7, np.float32)
        _project_frame(*args, bare, *untouched, False)
        np.testing.assert_array_equal(bare, acc)
        assert all((u == 7).all() for u in untouched)
        ref = naive._project_frame(
            code.idx, code.val, code.cnt, proj, dir_bin, speed_bin, ds_weight, 16, 7
        )
        contrib = ref[0]  # (M, S * K + 1): every scale's block, then the total
        per_scale = np.stack(
            [
                np.concatenate([contrib[:, s * n_out : (s + 1) * n_out], contrib[:, -1:]], 1)
                for s in range(n_scales)
            ]
        )
        want_acc = per_scale if frame == 0 else (1 - alpha) * want_acc + alpha * per_scale
        np.testing.assert_allclose(acc, want_acc, rtol=1e-5, atol=1e-5)
        for got, want in zip(hists, ref[1:], strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        assert code.cnt.sum() > 0


def _random_code(rng, m, kmax, n_units, fill=0.7):
    from v1motion.models.motion.ssrnn import SparseCode

    code = SparseCode.empty(m, kmax)
    for i in range(m):
        k = int(rng.integers(0, kmax + 1)) if rng.random() < fill else 0
        code.idx[i, :k] = rng.choice(n_units, k, replace=False)
        code.val[i, :k] = rng.uniform(0.1, 3.0, k)
        code.cnt[i] = k
    return code


@pytest.mark.parametrize("n_units", [6, 40])
def test_code_change_matches_numpy_twin(rng, n_units):
    """Random codes over few units (many shared) and over many (few shared), some patches empty."""
    from v1motion.models.motion.kernels import _code_change

    m, kmax = 300, 5
    prev, cur = _random_code(rng, m, kmax, n_units), _random_code(rng, m, kmax, n_units)
    cur.idx[::3], cur.val[::3], cur.cnt[::3] = prev.idx[::3], prev.val[::3], prev.cnt[::3]
    cur.val[1::3] = prev.val[1::3] * 1.5  # the same units with other values (where the ids agree)
    got = np.full(m, -1.0, np.float32)
    _code_change(prev.idx, prev.val, prev.cnt, cur.idx, cur.val, cur.cnt, got)
    want = naive.code_change(prev, cur, n_units)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert np.all(got[::3] == 0.0)  # an unchanged code
    assert np.all((got >= 0) & (got <= 1 + 1e-6))
    # only where asked: the twin's value there, 1 elsewhere
    from v1motion.models.motion.kernels import _code_change_where

    where = rng.uniform(-1, 1, m).astype(np.float32)
    some = np.full(m, -1.0, np.float32)
    _code_change_where(prev.idx, prev.val, prev.cnt, cur.idx, cur.val, cur.cnt, where, some)
    np.testing.assert_allclose(some, np.where(where > 0, want, 1.0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(48, 64), (53, 70)])
def test_image_change_matches_numpy_twin(rng, shape):
    """Random frames, sides a multiple of the patch and not (the last pixels beyond whole patches
    are left out); the same frame as ``prev`` and ``older`` gives no change at all."""
    from v1motion.models.motion.kernels import _image_change

    p = 8
    grey, prev, older = (rng.uniform(0, 1, shape).astype(np.float32) for _ in range(3))
    rows, cols = shape[0] // p, shape[1] // p
    got = np.full((3, rows, cols), -1.0, np.float32)
    _image_change(grey, prev, older, p, got)
    want = naive.image_change(grey, prev, older, p, rows, cols)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    assert not np.allclose(got[1], got[2])  # the two comparisons are of different frames
    _image_change(grey, grey, grey, p, got)
    assert np.all(got == 0.0)


def test_code_change_edge_cases():
    from v1motion.models.motion.kernels import _code_change
    from v1motion.models.motion.ssrnn import SparseCode

    prev, cur = SparseCode.empty(3, 2), SparseCode.empty(3, 2)
    prev.idx[1, 0], prev.val[1, 0], prev.cnt[1] = 4, 2.0, 1  # patch 1: a unit stops
    prev.idx[2, 0], prev.val[2, 0], prev.cnt[2] = 4, 2.0, 1  # patch 2: another unit takes over
    cur.idx[2, 0], cur.val[2, 0], cur.cnt[2] = 5, 1.0, 1
    out = np.full(3, -1.0, np.float32)
    _code_change(prev.idx, prev.val, prev.cnt, cur.idx, cur.val, cur.cnt, out)
    np.testing.assert_array_equal(out, [0.0, 1.0, 1.0])  # no activity at all counts as no change


@pytest.mark.parametrize("n_units", [6, 40])
@pytest.mark.parametrize("f", [1, 2])
def test_axis_cell_sums_match_numpy_twin(rng, n_units, f):
    """Random codes (some patches empty) and random unit axes, on a grid with a row and a column of
    patches past the last whole cell (left out)."""
    from v1motion.models.motion.kernels import _axis_cell_sums

    cells = (4, 6)
    grid = (cells[0] * f + 1, cells[1] * f + 1)
    code = _random_code(rng, grid[0] * grid[1], 5, n_units)
    axis_re = rng.uniform(-1, 1, n_units).astype(np.float32)
    axis_im = rng.uniform(-1, 1, n_units).astype(np.float32)
    got = np.full((*cells, 3), -1.0, np.float32)
    _axis_cell_sums(code.idx, code.val, code.cnt, axis_re, axis_im, grid[1], f, got)
    want = naive.axis_cell_sums(code, axis_re, axis_im, n_units, grid, f, cells)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    empty = code.cnt.reshape(grid)[: cells[0] * f, : cells[1] * f]
    empty = empty.reshape(cells[0], f, cells[1], f).sum(axis=(1, 3)) == 0
    assert np.all(got[empty] == 0.0) and (~empty).any()


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_interleaved_chunks_give_each_thread_chunks_from_all_over_the_frame(threads):
    from v1motion.models.motion.ssrnn import interleaved_chunks

    bounds = np.array([0, 3, 3, 7, 12, 20, 21, 30, 40], np.int64)  # 8 chunks, one empty
    starts, ends = interleaved_chunks(bounds, threads)
    # every chunk exactly once
    assert sorted(zip(starts.tolist(), ends.tolist(), strict=True)) == list(
        zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True)
    )
    # in the order 0, T, 2T, ..., 1, 1 + T, ...: a contiguous run of iterations spans the frame
    chunk = {int(s): c for c, s in enumerate(bounds[:-1]) if bounds[c] != bounds[c + 1]}
    got = [chunk[int(s)] for s, e in zip(starts, ends, strict=True) if s != e]
    want = [c for r in range(threads) for c in range(r, 8, threads) if bounds[c] != bounds[c + 1]]
    assert got == want
    assert starts.flags.c_contiguous and ends.flags.c_contiguous
