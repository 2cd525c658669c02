"""Recurrent spatio-temporal filtering (issue 7): bank, fit, gradients, kernels and streams."""

import numpy as np
import pytest
import scipy.sparse as sp

import tests.naive_stfilter as naive
from v1motion.models.stfilter.bank import as_bank, gabor_bank, load_bank
from v1motion.models.stfilter.fit import (
    RecurrentFilterFit,
    impulse_responses,
    loss_and_grad,
    lsq_init,
    variance_explained,
)
from v1motion.models.stfilter.kernels import csr_step, masked_row_dots, temporal_ring
from v1motion.models.stfilter.stream import (
    FeedForwardStream,
    RecurrentStream,
    SeparableStream,
    frame_patches,
)


def planted_system(rng, n=24, d=9, nt=12, density=0.25, radius=0.9):
    """A sparse stable R and a W0; the bank they generate."""
    mask = rng.random((n, n)) < density
    R = rng.normal(size=(n, n)) * mask
    R *= radius / np.max(np.abs(np.linalg.eigvals(R)))
    W0 = rng.normal(size=(n, d))
    return R, W0, impulse_responses(R, W0, nt)


# --- bank ------------------------------------------------------------------------------------


def test_gabor_bank_shape_norm_and_grid():
    bank, params = gabor_bank()
    assert bank.shape == (30, 1600, 12, 12)
    assert len(params) == 1600
    norms = np.sqrt(np.sum(bank**2, axis=(0, 2, 3)))
    np.testing.assert_allclose(norms, 1.0)
    assert len({p.direction for p in params}) == 8
    assert len({p.speed for p in params}) == 5
    assert len({p.spatial_frequency for p in params}) == 5


def test_gabor_bank_subset_keeps_quadrature_pairs_and_is_seeded():
    bank, params = gabor_bank(100, nt=10, seed=3)
    assert bank.shape == (10, 100, 12, 12)
    for a, b in zip(params[::2], params[1::2], strict=True):
        assert (a.spatial_frequency, a.direction, a.speed) == (
            b.spatial_frequency,
            b.direction,
            b.speed,
        )
        assert b.phase - a.phase == pytest.approx(np.pi / 2)
    again, _ = gabor_bank(100, nt=10, seed=3)
    np.testing.assert_array_equal(bank, again)


def test_gabor_filter_prefers_its_direction_of_motion():
    """A grating drifting along a filter's direction at its speed drives its quadrature pair far
    more than the same grating drifting the opposite way."""
    bank, params = gabor_bank(1600, nt=20)
    i = next(k for k, p in enumerate(params) if p.spatial_frequency == 0.12 and p.speed == 1.0)
    p = params[i]
    xs = np.arange(12) - 5.5
    yy, xx = np.meshgrid(xs, xs, indexing="ij")
    u = xx * np.cos(p.direction) + yy * np.sin(p.direction)

    def energy(sign):
        # grating moving by sign * speed pixels/frame along the direction; frame t = 19 is newest
        video = [
            np.cos(2 * np.pi * p.spatial_frequency * (u - sign * p.speed * t)) for t in range(20)
        ]
        resp = [
            sum(np.sum(bank[tau, k] * video[19 - tau]) for tau in range(20)) for k in (i, i + 1)
        ]
        return resp[0] ** 2 + resp[1] ** 2

    assert energy(+1) > 20 * energy(-1)


def test_gabor_bank_rejects_bad_sizes():
    with pytest.raises(ValueError, match="even number between 2 and 1600"):
        gabor_bank(1601)
    with pytest.raises(ValueError, match="even number"):
        gabor_bank(3)
    with pytest.raises(ValueError, match="nt must be a positive integer"):
        gabor_bank(10, nt=0)


def test_load_any_bank(tmp_path, rng):
    arr = rng.normal(size=(5, 7, 4, 4))
    np.save(tmp_path / "b.npy", arr)
    np.testing.assert_array_equal(load_bank(tmp_path / "b.npy"), arr)
    np.savez(tmp_path / "b.npz", filters=arr.transpose(1, 0, 2, 3))
    np.testing.assert_array_equal(load_bank(tmp_path / "b.npz", key="filters", layout="ntyx"), arr)
    np.testing.assert_array_equal(as_bank(arr.reshape(5, 7, 16)), arr)
    with pytest.raises(KeyError, match="holds \\['filters'\\]"):
        load_bank(tmp_path / "b.npz")
    with pytest.raises(ValueError, match="4-D"):
        as_bank(np.ones((2, 3)))
    with pytest.raises(ValueError, match="square number"):
        as_bank(np.ones((2, 3, 5)))
    with pytest.raises(ValueError, match="layout must be"):
        as_bank(arr, layout="xytn")
    with pytest.raises(ValueError, match="NaN"):
        as_bank(np.full((2, 2, 2, 2), np.nan))
    with pytest.raises(ValueError, match="all zeros"):
        as_bank(np.zeros((2, 2, 2, 2)))


# --- fit -------------------------------------------------------------------------------------


def test_impulse_responses_are_matrix_powers(rng):
    R, W0, F = planted_system(rng)
    for tau in (0, 1, 5, 11):
        np.testing.assert_allclose(F[tau], np.linalg.matrix_power(R, tau) @ W0, atol=1e-12)
    np.testing.assert_allclose(impulse_responses(sp.csr_matrix(R), W0, 12), F, atol=1e-12)


@pytest.mark.parametrize("sparse", [False, True])
def test_gradient_matches_finite_differences(rng, sparse):
    n, d, nt = 8, 5, 6
    R = rng.normal(size=(n, n)) * 0.3
    W0 = rng.normal(size=(n, d))
    F = rng.normal(size=(nt, n, d))
    if sparse:
        mask = rng.random((n, n)) < 0.4
        R *= mask
        rows, cols = np.nonzero(mask)
        loss, gR, gW = loss_and_grad(sp.csr_matrix(R), W0, F, rows, cols)
    else:
        rows, cols = np.nonzero(np.ones((n, n)))
        loss, gR_dense, gW = loss_and_grad(R, W0, F)
        gR = gR_dense[rows, cols]
    assert loss == pytest.approx(naive.reconstruction_loss(R, W0, F), rel=1e-12)
    eps = 1e-6
    for k in rng.choice(rows.size, size=10, replace=False):
        Rp, Rm = R.copy(), R.copy()
        Rp[rows[k], cols[k]] += eps
        Rm[rows[k], cols[k]] -= eps
        fd = (naive.reconstruction_loss(Rp, W0, F) - naive.reconstruction_loss(Rm, W0, F)) / (
            2 * eps
        )
        assert gR[k] == pytest.approx(fd, rel=1e-5, abs=1e-6)
    for i, j in zip(rng.integers(0, n, 8), rng.integers(0, d, 8), strict=True):
        Wp, Wm = W0.copy(), W0.copy()
        Wp[i, j] += eps
        Wm[i, j] -= eps
        fd = (naive.reconstruction_loss(R, Wp, F) - naive.reconstruction_loss(R, Wm, F)) / (2 * eps)
        assert gW[i, j] == pytest.approx(fd, rel=1e-5, abs=1e-6)


def test_lsq_init_recovers_a_planted_sparse_R(rng):
    R, W0, F = planted_system(rng, n=24, d=9, nt=12, density=0.25)
    k = int(np.max(np.count_nonzero(R, axis=1)))
    R_hat, W0_hat, rows, cols = lsq_init(F, k, ridge=1e-12)
    np.testing.assert_allclose(R_hat, R, atol=1e-6)
    np.testing.assert_array_equal(W0_hat, W0)
    assert rows.size == cols.size == 24 * k


def test_fit_reproduces_planted_filters(rng):
    """R^tau W0 of the fit reproduces a bank generated by a known sparse R."""
    R, W0, F = planted_system(rng, n=40, d=16, nt=15, density=0.1)
    bank = F.reshape(15, 40, 4, 4)
    density = np.max(np.count_nonzero(R, axis=1)) / 40
    model = RecurrentFilterFit(density=density, max_iter=50, ridge=1e-12).fit(bank)
    assert model.variance_explained_total_ > 0.9999
    assert model.variance_explained_.min() > 0.999
    np.testing.assert_allclose(model.reconstruct(), bank, atol=1e-5 * np.abs(bank).max())
    np.testing.assert_allclose(
        np.sort(np.abs(model.eigenvalues_)), np.sort(np.abs(np.linalg.eigvals(R))), atol=1e-5
    )


def test_fit_refinement_improves_on_the_start_for_a_gabor_bank():
    bank, _ = gabor_bank(64, nt=12, seed=1)
    model = RecurrentFilterFit(density=0.1, max_iter=40).fit(bank)
    assert model.R_.nnz == 64 * round(0.1 * 64)
    assert model.loss_history_[-1] < 0.8 * model.loss_history_[0]
    assert model.variance_explained_total_ > model.init_variance_explained_total_
    assert model.variance_explained_total_ > 0.9
    ve, total = variance_explained(bank, model.reconstruct())
    assert total == pytest.approx(model.variance_explained_total_)


def test_random_init_is_worse_than_lsq():
    bank, _ = gabor_bank(64, nt=12, seed=1)
    lsq = RecurrentFilterFit(density=0.1, max_iter=20).fit(bank)
    rnd = RecurrentFilterFit(density=0.1, max_iter=20, init="random").fit(bank)
    assert lsq.variance_explained_total_ > rnd.variance_explained_total_


def test_fit_errors():
    bank, _ = gabor_bank(8, nt=4)
    with pytest.raises(ValueError, match="init must be one of \\('lsq', 'random'\\)"):
        RecurrentFilterFit(init="pca").fit(bank)
    with pytest.raises(ValueError, match="density must be in"):
        RecurrentFilterFit(density=0).fit(bank)
    with pytest.raises(ValueError, match="at least 2 lags"):
        RecurrentFilterFit().fit(bank[:1])
    with pytest.raises(RuntimeError, match="not fitted"):
        RecurrentFilterFit().reconstruct()


# --- kernels against their numpy twins ------------------------------------------------------


def test_masked_row_dots_matches_twin(rng):
    A, B = rng.normal(size=(13, 30)), rng.normal(size=(11, 30))
    rows, cols = rng.integers(0, 13, 50), rng.integers(0, 11, 50)
    np.testing.assert_allclose(
        masked_row_dots(A, B, rows, cols), naive.masked_row_dots(A, B, rows, cols), rtol=1e-12
    )
    # non-contiguous views are accepted (copied), zeros give zeros, empty support gives nothing
    At = np.asfortranarray(A)[:, ::2]
    np.testing.assert_allclose(
        masked_row_dots(At, B[:, ::2], rows, cols), naive.masked_row_dots(At, B[:, ::2], rows, cols)
    )
    assert not masked_row_dots(np.zeros_like(A), B, rows, cols).any()
    assert masked_row_dots(A, B, rows[:0], cols[:0]).shape == (0,)
    with pytest.raises(IndexError, match="rows out of range"):
        masked_row_dots(A, B, np.array([13]), np.array([0]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("block", [1, 7, 256])
@pytest.mark.parametrize("density", [0.2, 0.6])
def test_csr_step_matches_twin(rng, dtype, block, density):
    n, p = 30, 41
    Rd = rng.normal(size=(n, n)) * (rng.random((n, n)) < density)
    Rd[3] = 0.0  # an empty row
    x = rng.normal(size=(n, p)).astype(dtype)
    drive = rng.normal(size=(n, p)).astype(dtype)
    expected = naive.csr_step(Rd.astype(dtype), x, drive)
    got = csr_step(sp.csr_matrix(Rd), x, drive.copy(), block)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # zeros in, drive out; NaN in the state propagates only to the rows that read it
    np.testing.assert_array_equal(
        csr_step(sp.csr_matrix(Rd), np.zeros_like(x), drive.copy()), drive
    )
    xn = x.copy()
    xn[5, 2] = np.nan
    got = csr_step(sp.csr_matrix(Rd), xn, drive.copy(), block)
    np.testing.assert_array_equal(np.isnan(got[:, 2]), Rd[:, 5] != 0)
    with pytest.raises(ValueError, match="C-contiguous"):
        csr_step(sp.csr_matrix(Rd), np.asfortranarray(x), drive.copy())
    with pytest.raises(ValueError, match="must both be"):
        csr_step(sp.csr_matrix(Rd), x[:, :5].copy(), drive.copy())


def test_temporal_ring_matches_twin(rng):
    ring = rng.normal(size=(6, 5, 9)).astype(np.float32)
    h = rng.normal(size=(6, 5))
    for newest in (0, 3, 5):
        out = np.empty((5, 9), np.float32)
        np.testing.assert_allclose(
            temporal_ring(ring, h, newest, out),
            naive.temporal_ring(ring, h, newest),
            rtol=1e-5,
            atol=1e-5,
        )
    with pytest.raises(ValueError, match="newest must be a slot"):
        temporal_ring(ring, h, 6, out)


# --- streams ---------------------------------------------------------------------------------


def test_frame_patches_layout(rng):
    frame = rng.normal(size=(7, 9))
    P = frame_patches(frame, 3, 4, np.float64)
    assert P.shape == (12, 5 * 6)
    np.testing.assert_array_equal(P[:, 2 * 6 + 3], frame[2:5, 3:7].ravel())
    with pytest.raises(ValueError, match="smaller than"):
        frame_patches(frame, 8, 4)
    with pytest.raises(ValueError, match="2-D grey"):
        frame_patches(frame[None], 3, 3)


def test_recurrent_stream_equals_explicit_sum_of_reconstructed_filters(rng):
    """x^t from the streaming RNN = sum over all past lags of (R^tau W0) applied to y^{t-tau}."""
    n, ly, lx, T = 12, 3, 3, 9
    R = rng.normal(size=(n, n)) * (rng.random((n, n)) < 0.3)
    R *= 0.95 / np.max(np.abs(np.linalg.eigvals(R)))
    W0 = rng.normal(size=(n, ly * lx))
    video = rng.normal(size=(T, 6, 7))
    bank = impulse_responses(R, W0, T).reshape(T, n, ly, lx)  # all lags the video can reach
    expected = naive.filter_video(bank, video)
    stream = RecurrentStream(sp.csr_matrix(R), W0, ly, lx, dtype=np.float64, block=5)
    np.testing.assert_allclose(stream.run(video), expected, rtol=1e-9, atol=1e-9)
    assert stream.state_bytes == 2 * n * 4 * 5 * 8


def test_feedforward_and_separable_streams_equal_the_explicit_sum(rng):
    bank = rng.normal(size=(5, 6, 3, 4))
    video = rng.normal(size=(12, 7, 8))
    expected = naive.filter_video(bank, video)
    ff = FeedForwardStream(bank, dtype=np.float64)
    np.testing.assert_allclose(ff.run(video), expected, rtol=1e-9, atol=1e-9)
    full = SeparableStream(bank, rank=5, dtype=np.float64)  # full rank: exact
    np.testing.assert_allclose(full.run(video), expected, rtol=1e-9, atol=1e-9)
    low = SeparableStream(bank, rank=1, dtype=np.float64)
    np.testing.assert_allclose(
        low.run(video), naive.filter_video(low.approx_bank, video), atol=1e-9
    )
    assert not np.allclose(low.run(video), expected, atol=1e-3)


def test_gabor_bank_is_rank_two_separable():
    bank, _ = gabor_bank(40, nt=10)
    s = SeparableStream(bank, rank=2)
    np.testing.assert_allclose(s.approx_bank, bank, atol=1e-10)


def test_stream_memory_grows_with_nt_only_for_feedforward(rng):
    frame = rng.normal(size=(16, 16))
    sizes = {}
    for nt in (10, 20):
        bank, _ = gabor_bank(20, nt=nt, seed=0)
        model = RecurrentFilterFit(density=0.2, max_iter=0).fit(bank)
        streams = {
            "rnn": RecurrentStream(model.R_, model.W0_, 12, 12),
            "ff": FeedForwardStream(bank),
            "sep": SeparableStream(bank),
        }
        for name, s in streams.items():
            s.step(frame)
            sizes[name, nt] = s.state_bytes
    assert sizes["rnn", 10] == sizes["rnn", 20]
    assert sizes["ff", 20] == 2 * sizes["ff", 10]
    assert sizes["sep", 20] == 2 * sizes["sep", 10]


def test_stream_rejects_bad_input(rng):
    bank = rng.normal(size=(3, 4, 2, 2))
    ff = FeedForwardStream(bank)
    ff.step(np.zeros((5, 5)))
    with pytest.raises(ValueError, match="differs from the stream's"):
        ff.step(np.zeros((6, 5)))
    with pytest.raises(ValueError, match=r"\(T, H, W\)"):
        ff.run(np.zeros((5, 5)))
    with pytest.raises(ValueError, match="W0 must be"):
        RecurrentStream(np.eye(4), np.zeros((4, 5)), 2, 2)
    with pytest.raises(ValueError, match="R must be"):
        RecurrentStream(np.eye(3), np.zeros((4, 4)), 2, 2)
    with pytest.raises(ValueError, match="rank must be"):
        SeparableStream(bank, rank=0)


# --- report and CLI --------------------------------------------------------------------------


def test_stfit_cli_writes_report_and_a_loadable_rnn(tmp_path, capsys):
    import json

    from v1motion.models.stfilter.evaluate import load_rnn
    from v1motion.service.cli import main

    out = tmp_path / "rep"
    code = main(
        [
            "stfit",
            "--out",
            str(out),
            "--n-filters",
            "40",
            "--nt",
            "8",
            "--density",
            "0.1",
            "--max-iter",
            "10",
            "--frames",
            "12",
            "--video-size",
            "20x24",
        ]
    )
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    fit = report["fit"]
    assert fit["bank_shape"] == {"nt": 8, "n_filters": 40, "ly": 12, "lx": 12}
    assert fit["density"] == pytest.approx(0.1)
    assert len(fit["variance_explained_per_filter_values"]) == 40
    assert len(fit["eigenvalues_R"]["real"]) == 40
    assert set(fit["variance_explained_by_group"]) == {"spatial_frequency", "speed", "direction"}
    comp = report["stream_comparison"]
    assert comp["frames"] == 12 and comp["frame_shape"] == [20, 24]
    assert 0 < comp["relative_error_after_nt"] < 1
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    R, W0, shape = load_rnn(out / "rnn.npz")
    assert shape == (8, 40, 12, 12) and R.nnz == 40 * 4 and W0.shape == (40, 144)
    assert "variance_explained_overall" in capsys.readouterr().out


@pytest.mark.slow
def test_stfit_cli_loads_a_bank_array(tmp_path, rng, capsys):
    from v1motion.service.cli import main

    R, W0, F = planted_system(rng, n=20, d=16, nt=6, density=0.2)
    np.save(tmp_path / "bank.npy", F.reshape(6, 20, 4, 4))
    out = tmp_path / "rep"
    density = str(np.max(np.count_nonzero(R, axis=1)) / 20)  # room for the planted support
    main(["stfit", "--out", str(out), "--bank", str(tmp_path / "bank.npy"), "--density", density])
    import json

    report = json.loads((out / "report.json").read_text())
    assert report["fit"]["variance_explained_overall"] > 0.999
    assert "variance_explained_by_group" not in report["fit"]
    capsys.readouterr()
    assert main(["stfit", "--out", str(out), "--video-size", "big"]) == 2
    assert capsys.readouterr().err.startswith("error: --video-size must look like 60x80")


def test_variance_explained_definition(rng):
    F = rng.normal(size=(4, 3, 5))
    F[:, 2] = 1.0  # a constant filter has no variance to explain
    Fhat = F + 0.1 * rng.normal(size=F.shape)
    per, total = variance_explained(F, Fhat)
    a = F[:, 0].ravel()
    assert per[0] == pytest.approx(
        1 - np.sum((a - Fhat[:, 0].ravel()) ** 2) / np.sum((a - a.mean()) ** 2)
    )
    assert np.isnan(per[2])
    assert variance_explained(F[:, :2], F[:, :2])[1] == 1.0


def test_unstable_fit_warns(caplog):
    F = np.stack([np.full((2, 4), 1.1**tau) * [[1.0], [-1.0]] for tau in range(6)])
    F += np.arange(4) * 0.01  # growing filters need |eigenvalue| > 1
    with caplog.at_level("WARNING"):
        model = RecurrentFilterFit(density=1.0, max_iter=5).fit(F)
    assert np.abs(model.eigenvalues_).max() > 1
    assert "not stable" in caplog.text


def test_stream_comparison_after_nt_is_none_without_frames_after_nt(rng):
    """A video of nt frames or fewer has no frame with a full history: its "after nt" figures were
    those of all frames under the same name."""
    from v1motion.models.stfilter.evaluate import compare_streams

    bank, _ = gabor_bank(8, 6, 6, 5, seed=0)
    model = RecurrentFilterFit(density=0.2, max_iter=0).fit(bank)
    video = rng.standard_normal((7, 10, 12)).astype(np.float32)
    long_ = compare_streams(model, bank, video)
    assert 0 < long_["relative_error_after_nt"] and long_["correlation_after_nt"] is not None
    short = compare_streams(model, bank, video[:5])
    assert short["relative_error_after_nt"] is None
    assert short["output_variance_explained_after_nt"] is None
    assert short["correlation_after_nt"] is None
    assert short["relative_error_all_frames"] > 0
