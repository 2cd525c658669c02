"""The bound on the excitatory drive: its gradients, what it guarantees, and samples that stay in range."""

import numpy as np
import pytest

from tests.models.spikes.test_spikes_models import _check_model_grad, _toy_counts
from v1motion.models.spikes.base import MAX_DRIVE, smooth_pos, smooth_pos_grad
from v1motion.models.spikes.glm import SpikeHistoryGLM
from v1motion.models.spikes.rglm import RGLM


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_smooth_positive_part_and_its_slope():
    x = np.array([-1.0, 0.0, 0.03, 0.05, 0.1, 2.0])
    np.testing.assert_allclose(smooth_pos(x), [0, 0, 0.0045, 0.0125, 0.05, 1.95])
    np.testing.assert_allclose(smooth_pos_grad(x), [0, 0, 0.3, 0.5, 1, 1])
    h = 1e-6
    xs = np.linspace(-0.5, 0.5, 37) + 0.0013  # off the kinks at 0 and 0.1
    np.testing.assert_allclose(
        (smooth_pos(xs + h) - smooth_pos(xs - h)) / (2 * h), smooth_pos_grad(xs), atol=1e-6
    )


@pytest.mark.parametrize("correlated", [False, True])
def test_glm_gradient_with_the_drive_bound(correlated, rng):
    # max_drive far below the random start's drive: every neuron's penalty is active
    model = SpikeHistoryGLM(n_lags=5, n_basis=3, correlated=correlated, l2=0.01, max_drive=-3.0)
    _check_model_grad(model, _toy_counts(rng))


@pytest.mark.parametrize(
    "kw", [{"correlated": False}, {"correlated": True}, {"correlated": True, "n_lags": 4}]
)
def test_rglm_gradient_with_the_drive_bound(kw, rng):
    _check_model_grad(RGLM(n_hidden=3, l2=0.01, max_drive=-3.0, **kw), _toy_counts(rng))


def test_rglm_gain_is_the_sum_of_its_kernels(rng):
    """``C (I - R)^{-1} W0`` is the drive of a sustained input: the kernels ``C R^k W0`` summed."""
    model = RGLM(n_hidden=4, max_drive=0.0)
    y, yp, _ = model._prepare(_toy_counts(rng), None, fitting=True)
    model._init_params(yp, None)  # fixes the block structure of R
    params = {
        "b": np.zeros(4),
        "A": np.zeros((4, 4)),
        "U0": rng.normal(0, 1, (4, 4)),
        "C": rng.normal(0, 1, (4, 4)),
        "R_real": rng.normal(0, 1, model._structure()[0]),
        "R_mod": rng.normal(1, 1, model._structure()[1]),
        "R_angle": rng.normal(0, 1, model._structure()[1]),
    }
    R, W0 = model._R(params), model._W0(params)
    total, M = np.zeros((4, 4)), np.eye(4)
    for _ in range(3000):
        total += params["C"] @ M @ W0
        M = R @ M
    G, _ = model._history_gains(params)
    np.testing.assert_allclose(G, total, rtol=1e-8, atol=1e-8)


def _planted_glm(n=6, n_lags=5, seed=3):
    """A planted GLM: refractory self-filters, weak excitatory coupling, ~0.03 spikes per bin."""
    r = np.random.default_rng(seed)
    model = SpikeHistoryGLM(n_lags=n_lags, n_basis=3, correlated=False, ordering="index")
    model.n_neurons_, model.order_, model.n_inputs_ = n, np.arange(n), 0
    W = np.abs(r.normal(0, 0.05, (n, n, 3)))
    W[np.arange(n), np.arange(n)] = -2.0
    model.params_ = {"b": np.full(n, -3.5), "W": W.reshape(n, n * 3)}
    model.basis_ = model._basis()
    return model


def test_a_planted_stable_glm_samples_in_range_and_a_bounded_fit_keeps_them_there():
    planted = _planted_glm()
    assert planted.excitatory_drive().max() < 0  # no pattern of the past drives a rate above 1
    y = planted.sample(n_trials=10, n_bins=800, seed=0)
    rate = y.mean()
    assert 0.01 < rate < 0.2 and y.max() < 10
    # the bound below the planted drive: the fit meets it (within the penalty's slack) and its free
    # samples stay near the data's rate
    fit = SpikeHistoryGLM(n_lags=5, n_basis=3, max_drive=-2.0, max_iter=300).fit(y)
    assert fit.excitatory_drive().max() < -2.0 + 0.5  # the penalty's slack on 8000 bins
    s = fit.sample(n_trials=10, n_bins=800, seed=1)
    assert rate / 2 < s.mean() < 2 * rate


def test_the_bound_is_inactive_below_it():
    """A fit whose drive stays below the bound is the unbounded fit (the penalty is exactly zero)."""
    y = _planted_glm().sample(n_trials=4, n_bins=400, seed=2)
    free = SpikeHistoryGLM(n_lags=5, n_basis=3, max_drive=None, max_iter=1000).fit(y)
    assert free.converged_ and free.excitatory_drive().max() < 15.0
    bounded = SpikeHistoryGLM(n_lags=5, n_basis=3, max_drive=20.0, max_iter=1000).fit(y)
    np.testing.assert_allclose(bounded.params_["W"], free.params_["W"], atol=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("recording", ["Movie1Exp1", "Movie2Exp1"])
def test_retina_glm_samples_do_not_run_away(recording):
    """The regression test of the runaway. Without the bound, the GLM with correlated Poisson fitted on
    fold 0's 24 training trials samples 1.2 (Movie1Exp1) and 2.9 (Movie2Exp1) counts per bin against the
    data's 0.013 and 0.017, with 1.1% and 2.7% of the counts at the sampler's cap of 100; with the
    bound of `MAX_DRIVE` its samples stay near the data's rate (23 and 1 of 1.6 million counts at the cap)."""
    from v1motion.models.datasets import shared_data_dir
    from v1motion.models.spikes.data import RETINA_DIR, load_retina
    from v1motion.models.spikes.evaluation import trial_folds

    if not (shared_data_dir() / RETINA_DIR).exists():
        pytest.skip("shared retina data not available")
    y = load_retina(recording)
    train = np.setdiff1d(np.arange(30), trial_folds(30, 5, 0)[0])
    model = SpikeHistoryGLM(correlated=True, max_iter=1000, max_drive=MAX_DRIVE).fit(y[train])
    assert model.excitatory_drive().max() < model.max_drive + 0.2
    s = model.sample(n_trials=len(train), n_bins=1800, seed=1)
    assert y.mean() / 3 < s.mean() < 3 * y.mean()
    assert np.mean(s >= 100) < 1e-4
