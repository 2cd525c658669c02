"""Learning recovers planted parameters from data sampled from the ss-RNN itself; persistence."""

import numpy as np
import pytest

from v1motion.models.estimator import NotFittedError, clone
from v1motion.models.motion.mt_readout import MTReadout
from v1motion.models.motion.readout import MotionReadout
from v1motion.models.motion.ssrnn import SSRNN
from v1motion.models.motion.training import MovieSampler, TrainConfig, fit_ssrnn
from v1motion.models.motion.whitening import Whitener
from v1motion.models.stfilter.fit import RecurrentFilterFit


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _planted(seed=0, n_atoms=6, patch=4):
    rng = np.random.default_rng(seed)
    true = SSRNN(n_atoms=n_atoms, n_clones=1, patch=patch, tau_x=2.0, tau_y=0.3, kmax=4)
    q, _ = np.linalg.qr(rng.standard_normal((patch * patch, n_atoms)))
    n = true.n_units
    r = np.zeros((n, n))
    succ = rng.permutation(n)  # unit j at t-1 strongly drives unit succ[j] at t: a planted sequence
    for j in range(n):
        if true.unit_atoms()[succ[j]] != true.unit_atoms()[j]:
            r[succ[j], j] = 2.5
    true.set_weights(q, np.full(n, -3.0), r)
    return true, succ


def _sample(model, rng, batch, seq_len):
    n, d = model.n_units, model.patch**2
    filt = model.unit_filters()
    y = np.empty((batch, seq_len, d), np.float32)
    z = np.zeros((batch, n))
    for t in range(seq_len):
        h = rng.random((batch, n)) < _sigmoid(z @ model.R_.T + model.b_)
        z = h * np.abs(rng.normal(0, model.tau_x, (batch, n)))
        y[:, t] = z @ filt.T + rng.normal(0, model.tau_y, (batch, d))
    return y


@pytest.mark.slow
def test_learning_recovers_planted_dictionary_and_recurrence():
    true, succ = _planted()
    rng = np.random.default_rng(1)
    cfg = TrainConfig(
        n_atoms=6, n_clones=1, patch=4, tau_x=2.0, tau_y=0.3, kmax=4, batch=100, seq_len=20,
        steps_w=150, steps_r=400, lr_r=3.0, r_clip=5.0, b_init=-2.0, seed=0, r_density=1.0,
    )  # fmt: skip
    model, hist = fit_ssrnn(cfg, lambda: _sample(true, rng, cfg.batch, cfg.seq_len), rng, False)
    cos = true.W_.T @ model.W_  # (true atoms, learned atoms)
    match = np.abs(cos).argmax(1)
    assert len(set(match)) == true.n_atoms
    assert np.abs(cos).max(1).min() > 0.95
    # Map each planted unit to the learned unit with the same atom and polarity.
    n = true.n_units
    flip = np.sign(cos[np.arange(true.n_atoms), match])
    perm = np.empty(n, int)
    for u in range(n):
        a, s = true.unit_atoms()[u], true.unit_signs()[u]
        learned_sign = s * flip[a]
        perm[u] = match[a] * 2 + (0 if learned_sign > 0 else 1)
    r_hat = model.R_[np.ix_(perm, perm)]
    planted = true.R_ != 0
    assert np.corrcoef(true.R_.ravel(), r_hat.ravel())[0, 1] > 0.8
    assert r_hat[planted].min() > 1.0 > np.abs(r_hat[~planted]).max() - 0.5


def test_save_load_round_trip(tmp_path, rng):
    m = SSRNN(n_atoms=5, n_clones=2, patch=4).init_random(seed=3, r_scale=0.5)
    path = tmp_path / "w.npz"
    m.save(path, extra=np.arange(3))
    back = SSRNN.load(path)
    assert back.hyperparams() == m.hyperparams()
    for name in ("W_", "b_", "R_"):
        np.testing.assert_array_equal(getattr(back, name), getattr(m, name))
    np.testing.assert_array_equal(back.whitener_.kernel_, m.whitener_.kernel_)
    np.testing.assert_array_equal(back.extra_["extra"], np.arange(3))
    c = rng.standard_normal((7, 5)).astype(np.float32)
    np.testing.assert_array_equal(back.infer(c, None).idx, m.infer(c, None).idx)


def test_load_rejects_foreign_and_future_files(tmp_path):
    bad = tmp_path / "x.npz"
    np.savez(bad, a=np.zeros(2))
    with pytest.raises(ValueError, match="not a v1motion"):
        SSRNN.load(bad)
    m = SSRNN(n_atoms=2, n_clones=1, patch=4).init_random()
    m.save(tmp_path / "m.npz")
    import json

    with np.load(tmp_path / "m.npz") as f:
        arrays = dict(f)
    meta = json.loads(str(arrays["meta"]))
    meta["format_version"] = 99
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(tmp_path / "future.npz", **arrays)
    with pytest.raises(ValueError, match="format version 99"):
        SSRNN.load(tmp_path / "future.npz")


def test_prune_recurrent_keeps_the_largest_entries(rng):
    from v1motion.models.motion.ssrnn import prune_recurrent, recurrent_csr

    r = rng.standard_normal((40, 40)).astype(np.float32)
    p = prune_recurrent(r, 0.05)
    kept = p != 0
    assert kept.sum() == 80
    assert np.abs(r[kept]).min() >= np.abs(r[~kept]).max()
    np.testing.assert_array_equal(p[kept], r[kept])
    ptr, idx, val = recurrent_csr(p)
    assert ptr[-1] == 80
    dense = np.zeros_like(r)
    for j in range(40):
        dense[idx[ptr[j] : ptr[j + 1]], j] = val[ptr[j] : ptr[j + 1]]
    np.testing.assert_array_equal(dense, p)
    with pytest.raises(ValueError, match="density"):
        prune_recurrent(r, 0.0)


# ------------------------------------------------------------- the estimator (scikit-learn's manner)
_CFG = dict(
    n_atoms=6, n_clones=1, patch=4, tau_x=2.0, tau_y=0.3, kmax=4, batch=100, seq_len=20,
    steps_w=100, steps_r=10, lr_r=3.0, b_init=-2.0, seed=0, r_density=1.0,
)  # fmt: skip


def _estimator(**kw):
    cfg = TrainConfig(**(_CFG | kw))
    return SSRNN(6, 1, 4, 2.0, 0.3, 4, train_config=cfg), cfg


def _learned_order(true, model):
    """For each planted unit, the learned unit with the same atom and polarity."""
    cos = true.W_.T @ model.W_
    match = np.abs(cos).argmax(1)
    flip = np.sign(cos[np.arange(true.n_atoms), match])
    perm = np.empty(true.n_units, int)
    for u in range(true.n_units):
        a, s = true.unit_atoms()[u], true.unit_signs()[u]
        perm[u] = match[a] * 2 + (0 if s * flip[a] > 0 else 1)
    return perm


def test_fit_runs_the_learning_loop_and_returns_self_with_learned_attributes():
    true, _ = _planted()
    est, cfg = _estimator()
    data = _sample(true, np.random.default_rng(1), 200, 20)
    draw = np.random.default_rng(5)

    def batch():
        return data[draw.choice(200, cfg.batch)]

    assert est.fit(batch) is est
    draw = np.random.default_rng(5)
    ref, hist = fit_ssrnn(cfg, batch, np.random.default_rng(cfg.seed), False)
    for name in ("W_", "b_", "R_"):
        np.testing.assert_array_equal(getattr(est, name), getattr(ref, name))
    assert est.history_["r2"] == hist["r2"] and est.train_config_["steps_w"] == 100


def test_fit_on_an_array_of_sequences_recovers_the_planted_atoms():
    true, _ = _planted()
    est, _ = _estimator()
    est.fit(_sample(true, np.random.default_rng(1), 400, 20))
    assert np.abs(true.W_.T @ est.W_).max(1).min() > 0.99


def test_partial_fit_learns_online_and_recovers_the_planted_atoms_and_recurrence():
    true, _ = _planted()
    rng = np.random.default_rng(1)
    data = _sample(true, rng, 400, 20)
    est, _ = _estimator()
    assert not hasattr(est, "W_")
    for _ in range(600):
        assert est.partial_fit(data[rng.choice(400, 50)]) is est
    assert np.abs(true.W_.T @ est.W_).max(1).min() > 0.99
    order = _learned_order(true, est)
    r_hat = est.R_[np.ix_(order, order)]
    assert np.corrcoef(true.R_.ravel(), r_hat.ravel())[0, 1] > 0.9
    assert r_hat[true.R_ != 0].min() > 1.0


def test_settings_are_parameters_and_weights_are_not():
    est, cfg = _estimator()
    params = est.get_params()
    assert params["n_atoms"] == 6 and params["train_config"] is cfg and "W_" not in params
    assert est.set_params(kmax=3) is est and est.kmax == 3
    with pytest.raises(ValueError, match="invalid parameter 'W'.*n_atoms"):
        est.set_params(W=np.zeros((16, 6)))


def test_the_ss_rnn_is_an_estimator_like_the_spike_models():
    """repr, clone and the unfitted error as the spike models have them: the ss-RNN printed as
    ``<... object at 0x...>``, could not be cloned and raised a plain RuntimeError."""
    est, cfg = _estimator()
    assert repr(SSRNN(n_atoms=8)) == "SSRNN(n_atoms=8)"
    twin = clone(est)
    assert twin is not est and twin.get_params() == est.get_params() | {"train_config": cfg}
    with pytest.raises(NotFittedError, match="fit it"):
        est.gram()
    fitted = _planted()[0]
    fitted.set_params(n_atoms=9)
    with pytest.raises(NotFittedError, match=r"other settings.*n_atoms=9.*fit it again"):
        fitted.infer(np.zeros((3, fitted.n_atoms), np.float32), None)
    for use in (
        lambda: MotionReadout().predict_raw(np.zeros((1, 3))),
        lambda: MTReadout().n_features,
        lambda: Whitener().transform(np.zeros((8, 8), np.float32)),
        lambda: RecurrentFilterFit().reconstruct(),
    ):
        with pytest.raises(NotFittedError, match="not fitted"):
            use()


@pytest.mark.parametrize(
    "bad", [np.zeros((4, 20)), np.zeros((4, 20, 9)), np.full((4, 20, 16), np.nan)]
)
def test_fit_and_partial_fit_refuse_data_of_the_wrong_shape_or_with_nan(bad):
    est, _ = _estimator()
    with pytest.raises(ValueError, match="X "):
        est.fit(bad)
    with pytest.raises(ValueError, match="X "):
        est.partial_fit(bad)
    with pytest.raises(RuntimeError, match="fit it"):
        est.gram()


def test_a_fitted_model_keeps_the_whitener_it_was_given_and_saves(tmp_path):
    """``fit`` learned the weights but not the whitening filter the data went through: ``save``
    then failed with a bare AttributeError after the whole run."""
    true, _ = _planted()
    data = _sample(true, np.random.default_rng(1), 60, 20)
    est, _ = _estimator(steps_w=3, steps_r=3)
    est.fit(data)
    with pytest.raises(ValueError, match=r"no whitening filter.*fit\(\.\.\., whitener=\)"):
        est.save(tmp_path / "none.npz")
    wh = Whitener(size=3)
    with pytest.raises(ValueError, match="fitted Whitener"):
        est.fit(data, whitener=wh)
    wh.kernel_, wh.scale_ = np.full((3, 3), -1 / 8, np.float32), 2.0
    wh.kernel_[1, 1] = 1.0
    est, _ = _estimator(steps_w=3, steps_r=3)
    est.fit(data, whitener=wh)
    est.save(tmp_path / "m.npz")
    back = SSRNN.load(tmp_path / "m.npz")
    np.testing.assert_array_equal(back.whitener_.kernel_, wh.kernel_)
    assert back.whitener_.scale_ == 2.0
    online, _ = _estimator()
    online.partial_fit(data[:50], whitener=wh)
    assert online.whitener_ is wh


def test_fit_on_a_movie_samplers_batches_keeps_its_whitener():
    rng = np.random.default_rng(0)
    wh = Whitener(size=3).fit(rng.random((64, 64)), n_patches=500)
    cfg = TrainConfig(**(_CFG | {"steps_w": 2, "steps_r": 2}))
    sampler = MovieSampler(wh, {"noise": rng.random((256, 256))}, {}, cfg, rng)
    est = SSRNN(6, 1, 4, 2.0, 0.3, 4, train_config=cfg).fit(sampler.batch)
    assert est.whitener_ is wh
