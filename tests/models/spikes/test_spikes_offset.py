"""A known offset in the spike models' linear predictor (the stimulus-locked log-rate): fused and
generic evaluations agree with it, a planted drive is recovered, samples follow it, and bad offsets
are refused (its gradient against finite differences: ``test_spikes_models.py``)."""

import numpy as np
import pytest

from v1motion.models.spikes import base as spike_base
from v1motion.models.spikes.base import ParamPacker
from v1motion.models.spikes.glm import SpikeHistoryGLM, StimulusLocked
from v1motion.models.spikes.rglm import RGLM


def _counts_and_offset(rng, n_trials=3, n_bins=23, n=5):
    y = rng.poisson(0.3, (n_trials, n_bins, n)).astype(float)
    return y, rng.normal(0, 0.7, (n_trials, n_bins, n))


def _setup(model, y, offset):
    _, yp, _ = model._prepare(y, None, fitting=True, offset=offset)
    packer = ParamPacker(model._shapes(yp.shape[-1], 0), yp.shape[-1])
    model._fitting = True
    return yp, packer


@pytest.mark.parametrize(
    "make",
    [
        lambda: SpikeHistoryGLM(n_lags=5, n_basis=3, correlated=False, l2=0.01),
        lambda: SpikeHistoryGLM(n_lags=5, n_basis=3, correlated=True, l2=0.01),
        lambda: RGLM(n_hidden=5, l2=0.01, correlated=False),
        lambda: RGLM(n_hidden=5, l2=0.01, correlated=True),
    ],
)
@pytest.mark.parametrize("chunk_bytes", [1, 10**9])
def test_fused_evaluation_with_an_offset_matches_the_generic_path(
    make, chunk_bytes, rng, monkeypatch
):
    """The Numba evaluations of the GLM and the R-GLM add the offset where the generic ``_eta`` does:
    the same loss and gradient to rounding, in any blocks of bins; and the offset changes them."""
    from v1motion.models.spikes import rglm as rglm_module

    monkeypatch.setattr(rglm_module, "CHUNK_BYTES", chunk_bytes)
    y, offset = _counts_and_offset(rng)
    model = make()
    if isinstance(model, RGLM):
        model.angle_scale_ = np.array([0.05, 0.3])
    yp, packer = _setup(model, y, offset)
    for _ in range(2):
        params = packer.unpack(rng.normal(0, 0.3, packer.size))
        loss, grads = model._nll_grad(params, yp, None)
        ref_loss, ref_grads = spike_base.SpikeModel._nll_grad(model, params, yp, None)
        assert np.isclose(loss, ref_loss, rtol=1e-12)
        for k in grads:
            np.testing.assert_allclose(grads[k], ref_grads[k], rtol=1e-10, atol=1e-13)
        saved, model._offset = model._offset, None
        assert not np.isclose(model._nll_grad(params, yp, None)[0], loss, rtol=1e-6)
        model._offset = saved


def test_a_planted_stimulus_locked_drive_is_recovered(rng):
    """Counts drawn with a known log-rate per bin and neuron plus a bias: fitted with that log-rate as
    the offset, the GLM recovers the bias and learns no coupling; without it, it fits much worse."""
    n_trials, n_bins, n = 40, 300, 3
    drive = np.log(0.05) + 1.5 * np.sin(np.linspace(0, 6 * np.pi, n_bins))[:, None] * np.ones(n)
    bias = np.array([-0.5, 0.0, 0.4])
    y = rng.poisson(np.exp(drive + bias), (n_trials, n_bins, n)).astype(float)
    model = SpikeHistoryGLM(n_lags=5, n_basis=3, correlated=True, l2=1e-4, max_iter=1000)
    model.fit(y, offset=drive)
    assert model.converged_
    np.testing.assert_allclose(model.params_["b"][np.argsort(model.order_)], bias, atol=0.1)
    assert np.abs(model.filters_).max() < 0.3 and np.abs(model.params_["A"]).max() < 0.3
    with_drive = model.log_likelihood(y, offset=drive)
    plain = SpikeHistoryGLM(n_lags=5, n_basis=3, correlated=True, l2=1e-4, max_iter=1000).fit(y)
    assert with_drive > plain.log_likelihood(y) + 0.05 * y.sum()
    # a constant offset is a shift of the bias: the same likelihood
    shift = SpikeHistoryGLM(n_lags=5, n_basis=3, correlated=True, l2=1e-4, max_iter=1000)
    shift.fit(y, offset=np.full((n_bins, n), 2.0))
    assert np.isclose(
        shift.log_likelihood(y, offset=np.full((n_bins, n), 2.0)),
        plain.log_likelihood(y),
        rtol=1e-5,
    )
    np.testing.assert_allclose(shift.params_["b"], plain.params_["b"] - 2.0, atol=1e-3)


def test_samples_follow_the_offset(rng):
    """With no history or coupling, samples are Poisson with the rate ``exp(b + offset)``, bin by bin."""
    y = rng.poisson(0.2, (2, 50, 2)).astype(float)
    model = SpikeHistoryGLM(n_lags=3, n_basis=2, correlated=True).fit(y)
    for k in model.params_:
        model.params_[k] = np.zeros_like(model.params_[k])
    offset = np.log(np.where(np.arange(50)[:, None] % 2 == 0, 0.05, 2.0) * np.ones(2))
    s = model.sample(n_trials=2000, n_bins=50, seed=3, offset=offset)
    np.testing.assert_allclose(s[:, 0::2].mean(), 0.05, rtol=0.1)
    np.testing.assert_allclose(s[:, 1::2].mean(), 2.0, rtol=0.02)


def test_stimulus_locked_model_fits_scores_and_samples_trials_of_its_stimulus(rng):
    n_bins, n = 120, 3
    rate = 0.05 * np.exp(1.2 * np.sin(np.linspace(0, 4 * np.pi, n_bins)))[:, None] * np.ones(n)
    y = rng.poisson(rate, (30, n_bins, n)).astype(float)
    model = StimulusLocked(RGLM(n_hidden=2, l2=1e-3, correlated=True, max_iter=300))
    with pytest.raises(RuntimeError, match="not fitted"):
        model.log_likelihood(y)
    model.fit(y[:20])
    assert model.kind == "rglm_locked" and model.n_iter_ >= 1  # the wrapped model's attributes
    assert np.isfinite(model.log_likelihood(y[20:]))
    assert model.log_likelihood(y[20:], per_trial=True).shape == (10,)
    s = model.sample(n_trials=50, seed=1)
    assert s.shape == (50, n_bins, n)
    # the samples follow the stimulus: their PSTH correlates with the one fitted
    r = np.corrcoef(s.mean(axis=(0, 2)), model.psth_.rate_.mean(axis=1))[0, 1]
    assert r > 0.8
    with pytest.raises(ValueError, match="bins"):
        model.log_likelihood(y[20:, :100])


@pytest.mark.parametrize(
    "offset,match",
    [(np.zeros((2, 7, 3)), "offset has shape"), (np.full((10, 3), np.inf), "finite")],
)
def test_bad_offsets_are_refused(offset, match, rng):
    y = rng.poisson(0.3, (2, 10, 3)).astype(float)
    with pytest.raises(ValueError, match=match):
        SpikeHistoryGLM(n_lags=3, n_basis=2).fit(y, offset=offset)
    model = SpikeHistoryGLM(n_lags=3, n_basis=2).fit(y, offset=np.zeros((10, 3)))
    with pytest.raises(ValueError, match=match):
        model.log_likelihood(y, offset=offset)
    assert model._offset is None  # nothing left behind by the refused call
