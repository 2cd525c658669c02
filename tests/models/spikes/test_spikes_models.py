"""Spike models: likelihoods against brute force, gradients against finite differences, recovery."""

import re
import time

import numpy as np
import pytest
from scipy import stats
from spike_samples import bursty_counts

from tests import naive_spikes as naive
from v1motion.models.spikes import base as spike_base
from v1motion.models.spikes import observations as obs_module
from v1motion.models.spikes.base import NotFittedError, ParamPacker, neuron_order
from v1motion.models.spikes.data import as_counts, bin_spike_times
from v1motion.models.spikes.glm import (
    CorrelatedGLM,
    IndependentPoisson,
    PSTHPoisson,
    SpikeHistoryGLM,
    history_features,
    raised_cosine_basis,
)
from v1motion.models.spikes.lds import GaussianLDS
from v1motion.models.spikes.observations import get_link, get_observations
from v1motion.models.spikes.rglm import (
    RGLM,
    realise_filters,
    stable_recurrence,
    stable_recurrence_grad,
    to_block_form,
)

# ----------------------------------------------------------------------------- observation models


def test_lookup_by_name_lists_valid_names():
    with pytest.raises(ValueError, match="valid names: \\['bernoulli', 'gaussian', 'poisson'\\]"):
        get_observations("poison")
    with pytest.raises(ValueError, match="valid links"):
        get_link("relu")
    with pytest.raises(ValueError, match="valid links: \\['logistic'\\]"):
        get_observations("bernoulli", "exp")


@pytest.mark.parametrize(
    "obs,link",
    [
        ("poisson", "exp"),
        ("poisson", "softplus"),
        ("bernoulli", None),
        ("gaussian", None),
        ("gaussian", "softplus"),
    ],
)
def test_loss_grad_matches_finite_differences(obs, link, rng):
    o = get_observations(obs, link)
    eta = rng.normal(0, 1, 20)
    y = (
        rng.integers(0, 2, 20).astype(float)
        if obs == "bernoulli"
        else rng.poisson(1.5, 20).astype(float)
    )
    g = o.loss_grad(y, eta)
    h = 1e-6
    for i in range(len(eta)):
        e1, e2 = eta.copy(), eta.copy()
        e1[i] += h
        e2[i] -= h
        assert np.isclose((o.loss(y, e1) - o.loss(y, e2)) / (2 * h), g[i], rtol=1e-5, atol=1e-7)
    # the loss differs from -loglik by a constant in eta
    d = -o.log_likelihood(y, eta).sum() - o.loss(y, eta)
    d2 = -o.log_likelihood(y, eta + 0.3).sum() - o.loss(y, eta + 0.3)
    assert np.isclose(d, d2)


@pytest.mark.parametrize(
    "obs,link", [("poisson", "exp"), ("poisson", "softplus"), ("gaussian", None)]
)
def test_loss_and_grad_is_loss_and_loss_grad(obs, link, rng):
    """The fused evaluation a fit uses equals the two separate ones, scaled, including entries above the
    exp link's clip (ETA_MAX: flat loss, zero gradient), sparse and dense counts, and given spikes."""
    o = get_observations(obs, link)
    eta = rng.normal(-2, 3, (3, 50, 4))
    eta[0, 3, 1], eta[2, 7, 0] = obs_module.ETA_MAX + 2.0, obs_module.ETA_MAX + 0.5
    for lam in (0.05, 3.0):
        y = rng.poisson(lam, eta.shape).astype(float)
        for spikes in (None, obs_module.nonzero(y)):
            loss, g = o.loss_and_grad(y, eta, 0.01, spikes)
            assert np.isclose(loss, 0.01 * o.loss(y, eta), rtol=1e-12)
            np.testing.assert_allclose(g, 0.01 * o.loss_grad(y, eta), rtol=1e-12, atol=1e-300)
            assert g.shape == eta.shape
    if link == "exp":
        assert g[0, 3, 1] == 0.0 and g[2, 7, 0] == 0.0


def test_log_likelihoods_match_scipy(rng):
    eta = rng.normal(0, 1, 30)
    y = rng.poisson(1.0, 30).astype(float)
    np.testing.assert_allclose(
        get_observations("poisson").log_likelihood(y, eta), stats.poisson.logpmf(y, np.exp(eta))
    )
    sp = np.log1p(np.exp(eta))
    np.testing.assert_allclose(
        get_observations("poisson", "softplus").log_likelihood(y, eta), stats.poisson.logpmf(y, sp)
    )
    yb = (y > 0).astype(float)
    np.testing.assert_allclose(
        get_observations("bernoulli").log_likelihood(yb, eta),
        stats.bernoulli.logpmf(yb, 1 / (1 + np.exp(-eta))),
    )
    g = get_observations("gaussian")
    g.scale = 0.7
    np.testing.assert_allclose(g.log_likelihood(y, eta), stats.norm.logpdf(y, eta, np.sqrt(0.7)))


def test_observations_reject_data_outside_support():
    with pytest.raises(ValueError, match="non-negative integer"):
        get_observations("poisson").check_data(np.array([1.5]))
    with pytest.raises(ValueError, match="0 or 1"):
        get_observations("bernoulli").check_data(np.array([2.0]))


# ----------------------------------------------------------------------------- data


def test_as_counts_names_each_problem():
    with pytest.raises(ValueError, match="NaN"):
        as_counts([[1.0, np.nan]])
    with pytest.raises(ValueError, match="negative"):
        as_counts([[1, -1]])
    with pytest.raises(ValueError, match="ragged"):
        as_counts([[1, 2], [3]])
    with pytest.raises(ValueError, match="zero neurons"):
        as_counts(np.zeros((5, 0)))
    with pytest.raises(ValueError, match="too large"):
        as_counts(np.zeros((10, 10)), max_elements=50)
    with pytest.raises(ValueError, match="non-integer"):
        as_counts([[0.5]])
    with pytest.raises(ValueError, match=r"1e\+20 spikes in one bin \(trial 0, bin 1, neuron 0\)"):
        as_counts([[0, 2], [1e20, 3]])
    assert as_counts([[100_000, 0]]).max() == 100_000  # the most a bin may hold
    with pytest.raises(ValueError, match="not strings"):
        as_counts([["1", "2"]])
    with pytest.raises(ValueError, match="not true/false"):
        as_counts([[True, False]])  # JSON's true and false
    for mixed in ([[1, True], [0, 2]], [[[0.0, 1.0]], [[2.0, False]]]):  # numpy reads them as 1, 0
        with pytest.raises(ValueError, match="not true/false"):
            as_counts(mixed)
    assert as_counts(np.zeros((4, 3))).shape == (1, 4, 3)
    # an array of spike / no spike (from an .npz) is 0/1 counts
    np.testing.assert_array_equal(as_counts(np.array([[True, False]])), [[[1.0, 0.0]]])


def test_spike_times_bin_the_same_in_any_unit():
    """A spike on a bin edge belongs to the bin it starts, in seconds as in ms: 0.35 s went to bin
    34 of 0.01 s (its edge computed as 35 * 0.01 = 0.35000000000000003), 350 ms to bin 35 of 10 ms;
    on the retina data at 1 ms resolution, 118 of 9,782 spikes of ten trials moved a bin."""
    assert bin_spike_times([[0.35]], 0.01, 0.4)[0, :, 0].argmax() == 35
    rng = np.random.default_rng(0)
    ms = [np.sort(rng.integers(0, 18_000, 400)).astype(float) for _ in range(6)]
    in_ms = bin_spike_times([[list(t) for t in ms]], 10.0, 18_000.0)
    in_s = bin_spike_times([[list(t / 1000) for t in ms]], 0.01, 18.0)
    in_min = bin_spike_times([[list(t / 60_000) for t in ms]], 10 / 60_000, 0.3)
    np.testing.assert_array_equal(in_s, in_ms)
    np.testing.assert_array_equal(in_min, in_ms)
    assert in_ms.sum() == 6 * 400


def test_bin_spike_times_counts_each_spike_once():
    times = [[[0.0, 9.9, 10.0, 25.0], [5.0]], [[], [29.0, 30.0]]]
    c = bin_spike_times(times, 10.0, duration=30.0)
    assert c.shape == (2, 3, 2)
    np.testing.assert_array_equal(c[0, :, 0], [2, 1, 1])
    np.testing.assert_array_equal(c[1, :, 1], [0, 0, 2])  # the end point falls in the last bin
    with pytest.raises(ValueError, match="ragged"):
        bin_spike_times([[[1.0], [2.0]], [[1.0]]], 10.0)
    with pytest.raises(ValueError, match="negative"):
        bin_spike_times([[-1.0]], 10.0)
    with pytest.raises(ValueError, match="not strings"):
        bin_spike_times([["1.0"]], 10.0)
    with pytest.raises(ValueError, match="not true/false"):
        bin_spike_times([[True]], 10.0)
    with pytest.raises(ValueError, match="not true/false"):
        bin_spike_times([[[1.5, True], [2.0]]], 10.0)
    # a duration is a whole number of bins (to rounding) that every spike falls within
    assert bin_spike_times([[0.05, 0.95]], 0.1, duration=1.0).shape == (1, 10, 1)
    assert bin_spike_times([[0.05, 0.29]], 0.1).shape == (1, 3, 1)  # to the last spike's bin
    # a last spike on an edge starts its bin, as it does with a duration: it is not folded into
    # the bin before (was [1, 2] without a duration, [1, 1, 1] with one)
    np.testing.assert_array_equal(bin_spike_times([[0.0, 10.0, 20.0]], 10.0)[0, :, 0], [1, 1, 1])
    np.testing.assert_array_equal(
        bin_spike_times([[0.0, 10.0, 20.0]], 10.0), bin_spike_times([[0.0, 10.0, 20.0]], 10.0, 30.0)
    )
    assert bin_spike_times([[0.05, 0.3]], 0.1).shape == (1, 4, 1)  # 0.3 s starts bin 3 of 0.1 s
    with pytest.raises(ValueError, match="1 spike time.*after duration 20"):
        bin_spike_times([[5.0, 25.0]], 10.0, duration=20.0)
    with pytest.raises(ValueError, match="2.5 bins of 10, not a whole number"):
        bin_spike_times([[5.0]], 10.0, duration=25.0)


@pytest.mark.parametrize(
    "times",
    [[{"a": 1}], {"a": [1.0]}, "1.0", [], [1.0, 2.0], [None], [[[0.1]], [0.2]], [[1.0, [2.0]]]],
)
def test_bin_spike_times_names_a_wrong_nesting(times):
    with pytest.raises(ValueError, match="list over neurons of lists of times"):
        bin_spike_times(times, 1.0)


def test_retina_loader_matches_source_counts():
    from v1motion.models.datasets import shared_data_dir
    from v1motion.models.spikes.data import RETINA_DIR, load_retina

    if not (shared_data_dir() / RETINA_DIR).exists():
        pytest.skip("shared retina data not available")
    y = load_retina("Movie1Exp1")
    assert y.shape == (30, 1800, 38) and y.sum() == 26968
    with pytest.raises(ValueError, match="valid"):
        load_retina("Movie9")


# ----------------------------------------------------------------------------- correlated models


def _planted_correlated(n=3, seed=1):
    r = np.random.default_rng(seed)
    A = np.tril(r.normal(0, 0.6, (n, n)), -1)
    b = r.normal(-0.7, 0.3, n)
    return A, b


def _set_params(model, params, n, order=None, u_dim=0):
    model.n_neurons_ = n
    model.order_ = np.arange(n) if order is None else order
    model.n_inputs_ = u_dim
    model.params_ = params
    model._packer = ParamPacker(model._shapes(n, u_dim), n)
    return model


def test_correlated_poisson_normalises_by_enumeration():
    A, b = _planted_correlated()
    m = _set_params(CorrelatedGLM(), {"A": A, "b": b}, 3)
    states = np.array(naive.enumerate_states(3, 14))
    ll = m.log_likelihood(states[:, None, :], per_trial=True)
    assert np.isclose(np.exp(ll).sum(), 1.0, atol=1e-8)
    ref = [naive.correlated_poisson_loglik(s, A, b) for s in states[:200]]
    np.testing.assert_allclose(ll[:200], ref, rtol=1e-10)


def test_correlated_bernoulli_normalises_exactly():
    A, b = _planted_correlated(4)
    m = _set_params(CorrelatedGLM(obs="bernoulli"), {"A": A, "b": b}, 4)
    states = np.array(naive.enumerate_states(4, 1))
    assert np.isclose(np.exp(m.log_likelihood(states[:, None, :], per_trial=True)).sum(), 1.0)


def test_correlated_gaussian_is_full_covariance_gaussian(rng):
    n = 4
    A, b = _planted_correlated(n)
    m = _set_params(CorrelatedGLM(obs="gaussian"), {"A": A, "b": b}, n)
    scale = np.array([0.5, 1.0, 2.0, 0.3])
    m._obs().scale = scale
    # y = A y + b + e, e ~ N(0, diag(scale))  =>  y ~ N((I-A)^-1 b, (I-A)^-1 D (I-A)^-T)
    M = np.linalg.inv(np.eye(n) - A)
    y = rng.normal(0, 1, (50, n))
    ref = stats.multivariate_normal(M @ b, M @ np.diag(scale) @ M.T).logpdf(y)
    np.testing.assert_allclose(m.log_likelihood(y[:, None, :], per_trial=True), ref)


def test_neuron_by_neuron_sampler_matches_enumerated_probabilities():
    A, b = _planted_correlated()
    m = _set_params(CorrelatedGLM(), {"A": A, "b": b}, 3)
    y = m.sample(n_trials=1, n_bins=40000, seed=3)[0]
    states, counts = np.unique(y, axis=0, return_counts=True)
    top = np.argsort(-counts)[:6]
    p = np.exp(m.log_likelihood(states[top][:, None, :], per_trial=True))
    freq = counts[top] / len(y)
    assert np.all(np.abs(freq - p) < 4 * np.sqrt(p * (1 - p) / len(y)) + 1e-3)


def test_neuron_ordering_choices():
    y = np.zeros((1, 10, 3))
    y[0, :5, 2] = 1
    y[0, :2, 0] = 1
    assert list(neuron_order(y, "rate")) == [2, 0, 1]
    assert list(neuron_order(y, "rate_ascending")) == [1, 0, 2]
    assert list(neuron_order(y, "index")) == [0, 1, 2]
    assert sorted(neuron_order(y, "random")) == [0, 1, 2]
    with pytest.raises(ValueError, match="valid: \\['rate'"):
        neuron_order(y, "alphabetical")
    with pytest.raises(ValueError, match="permutation"):
        neuron_order(y, [0, 0, 1])


def test_correlated_poisson_recovers_planted_coupling():
    A, b = _planted_correlated(5, seed=4)
    A *= 0.5  # keep counts moderate (exp link with strong excitation gives heavy tails)
    true = _set_params(CorrelatedGLM(), {"A": A, "b": b}, 5)
    y = true.sample(n_trials=4, n_bins=5000, seed=5)
    fit = CorrelatedGLM(ordering="index", l2=0.0).fit(y)
    np.testing.assert_allclose(fit.params_["A"], A, atol=0.08)
    np.testing.assert_allclose(fit.params_["b"], b, atol=0.05)


def test_fitted_likelihood_is_invariant_to_input_order_bookkeeping(rng):
    # a model fitted with a non-trivial ordering evaluates the same data identically after permuting
    # nothing: log_likelihood handles order_ internally, and predict_eta returns the original order.
    A, b = _planted_correlated(4, seed=6)
    true = _set_params(CorrelatedGLM(), {"A": A, "b": b}, 4)
    y = true.sample(n_trials=2, n_bins=3000, seed=7)
    m = CorrelatedGLM(ordering="rate_ascending").fit(y)
    eta = m.predict_eta(y)
    ll = get_observations("poisson").log_likelihood(y, eta).sum()
    assert np.isclose(ll, m.log_likelihood(y))


# ----------------------------------------------------------------------------- gradients


def _check_model_grad(model, y, u=None, seed=0, offset=None):
    y, yp, u = model._prepare(y, u, fitting=True, offset=offset)
    shapes = model._shapes(yp.shape[-1], 0 if u is None else u.shape[-1])
    packer = ParamPacker(shapes, yp.shape[-1])
    r = np.random.default_rng(seed)
    theta = r.normal(0, 0.3, packer.size)
    if hasattr(model, "_feat_cache"):
        model._feat_cache = None
    _, g = model._loss_grad(theta, packer, yp, u)
    h = 1e-6
    idx = r.choice(packer.size, size=min(40, packer.size), replace=False)
    num = []
    for i in idx:
        e = np.zeros_like(theta)
        e[i] = h
        num.append(
            (
                model._loss_grad(theta + e, packer, yp, u)[0]
                - model._loss_grad(theta - e, packer, yp, u)[0]
            )
            / (2 * h)
        )
    np.testing.assert_allclose(g[idx], num, rtol=1e-4, atol=1e-7)


def _toy_counts(rng, n_trials=2, n_bins=30, n=4, binary=False):
    y = rng.poisson(0.6, (n_trials, n_bins, n)).astype(float)
    return (y > 0).astype(float) if binary else y


@pytest.mark.parametrize(
    "obs,link",
    [("poisson", None), ("poisson", "softplus"), ("bernoulli", None), ("gaussian", None)],
)
def test_correlated_gradient(obs, link, rng):
    _check_model_grad(
        CorrelatedGLM(obs=obs, link=link, l2=0.01), _toy_counts(rng, binary=obs == "bernoulli")
    )


@pytest.mark.parametrize("correlated", [False, True])
def test_glm_gradient(correlated, rng):
    _check_model_grad(
        SpikeHistoryGLM(n_lags=5, n_basis=3, correlated=correlated, l2=0.01), _toy_counts(rng)
    )


@pytest.mark.parametrize(
    "kw", [{"correlated": False}, {"correlated": True}, {"link": "softplus"}, {"obs": "bernoulli"}]
)
def test_rglm_bptt_gradient(kw, rng):
    binary = kw.get("obs") == "bernoulli"
    _check_model_grad(RGLM(n_hidden=3, l2=0.01, **kw), _toy_counts(rng, binary=binary))


@pytest.mark.parametrize("correlated", [False, True])
def test_rglm_bptt_gradient_with_a_fixed_angle_unit(correlated, rng):
    """A fit holds each pair's angle unit at its start value (``angle_scale_``): the chain rule then
    leaves the modulus out of the angle; checked by central differences on the whole loss."""
    model = RGLM(n_hidden=5, l2=0.01, correlated=correlated)
    model.angle_scale_ = np.array([0.05, 0.3])  # two pairs after one real eigenvalue
    _check_model_grad(model, _toy_counts(rng))


@pytest.mark.parametrize(
    "model",
    [
        SpikeHistoryGLM(n_lags=5, n_basis=3, correlated=True, l2=0.01),
        RGLM(n_hidden=3, l2=0.01, correlated=True),
        CorrelatedGLM(l2=0.01),
    ],
)
def test_gradient_with_an_offset_matches_finite_differences(model, rng):
    """A known offset in the linear predictor (``fit(..., offset=)``, the stimulus-locked log-rate)."""
    y = _toy_counts(rng)
    _check_model_grad(model, y, offset=rng.normal(0, 0.7, y.shape))


def test_rglm_bptt_gradient_with_stimulus(rng):
    y = _toy_counts(rng)
    u = rng.normal(0, 1, y.shape[:2] + (2,))
    _check_model_grad(RGLM(n_hidden=3, l2=0.01), y, u)


def test_rglm_and_glm_predictors_match_loop_references(rng):
    y = _toy_counts(rng, n_trials=1, n_bins=25, n=3)
    d = 2
    params = {
        "W0": rng.normal(0, 0.5, (d, 3)),
        "R": rng.normal(0, 0.4, (d, d)),
        "C": rng.normal(0, 0.5, (3, d)),
        "A": np.tril(rng.normal(0, 0.5, (3, 3)), -1),
        "b": rng.normal(0, 0.5, 3),
    }
    m = _set_params(RGLM(n_hidden=d), params, 3)
    ref = naive.rglm_eta(y[0], params["W0"], params["R"], params["C"], params["A"], params["b"])
    np.testing.assert_allclose(m.predict_eta(y)[0], ref)

    g = SpikeHistoryGLM(n_lags=4, n_basis=2, correlated=True)
    gp = {"W": rng.normal(0, 0.5, (3, 6)), "A": params["A"], "b": params["b"]}
    _set_params(g, gp, 3)
    g.basis_ = raised_cosine_basis(4, 2)
    ref = naive.glm_eta(y[0], g.filters_, params["A"], params["b"])
    np.testing.assert_allclose(g.predict_eta(y)[0], ref)


@pytest.mark.parametrize("shape", [(3, 17, 4), (1, 1, 1), (2, 5, 1)])
def test_recursion_kernels_match_numpy_twins(shape, rng):
    from v1motion.models.spikes.rglm import adjoint_recursion, linear_recursion

    drive = rng.normal(0, 1, shape)
    R = rng.normal(0, 0.5, (shape[2], shape[2]))
    np.testing.assert_allclose(
        linear_recursion(drive, R), naive.linear_recursion(drive, R), atol=1e-12
    )
    np.testing.assert_allclose(
        adjoint_recursion(drive, R), naive.adjoint_recursion(drive, R), atol=1e-12
    )
    # non-contiguous views, zeros and -0.0 are handled like any input
    view = rng.normal(0, 1, (shape[0], shape[1], 2 * shape[2]))[:, :, ::2]
    np.testing.assert_allclose(
        linear_recursion(view, R), naive.linear_recursion(view, R), atol=1e-12
    )
    z = np.full(shape, -0.0)
    assert np.all(linear_recursion(z, R) == 0) and np.all(adjoint_recursion(z, R) == 0)
    # a tridiagonal R (the fitted block form) takes the banded kernels: the same numbers
    band = np.triu(np.tril(R, 1), -1)
    np.testing.assert_allclose(
        linear_recursion(drive, band), naive.linear_recursion(drive, band), atol=1e-12
    )
    np.testing.assert_allclose(
        adjoint_recursion(drive, band), naive.adjoint_recursion(drive, band), atol=1e-12
    )


def test_banded_kernels_match_numpy_twins_on_a_block_form_recurrence(rng):
    from v1motion.models.spikes.rglm import _tridiagonal, adjoint_recursion, linear_recursion

    R = stable_recurrence(rng.normal(0, 2, 2), rng.normal(3, 1, 3), rng.normal(0, 20, 3))
    assert _tridiagonal(R) is not None and _tridiagonal(rng.normal(0, 1, (4, 4))) is None
    drive = rng.normal(0, 1, (3, 40, 8))
    np.testing.assert_allclose(
        linear_recursion(drive, R), naive.linear_recursion(drive, R), atol=1e-12
    )
    np.testing.assert_allclose(
        adjoint_recursion(drive, R), naive.adjoint_recursion(drive, R), atol=1e-12
    )


def _block_form_counts(rng, n_trials=3, n_bins=23, n=5):
    """Sparse counts with a few counts above the input cap, and a block-form R (1 real, 2 pairs)."""
    y = rng.poisson(0.3, (n_trials, n_bins, n)).astype(float)
    R = stable_recurrence(rng.normal(0, 1, 1), rng.normal(2, 1, 2), rng.normal(0, 10, 2))
    return y, R


def test_fused_band_kernels_match_numpy_twins(rng):
    from v1motion.models.spikes import rglm as rglm_module
    from v1motion.models.spikes import sparse as sparse_module

    y, R = _block_form_counts(rng)
    n_trials, n_bins, n = y.shape
    d = R.shape[0]
    inputs = np.minimum(y, 1.0)
    indptr, indices, counts, values, flat = sparse_module.spike_rows(y, inputs)
    np.testing.assert_array_equal(flat, np.flatnonzero(y))
    np.testing.assert_array_equal(counts, y.ravel()[flat])
    np.testing.assert_array_equal(values, inputs.ravel()[flat])
    for r in range(n_trials * n_bins):  # the spikes of flat bin r, in neuron order
        cols = indices[indptr[r] : indptr[r + 1]]
        np.testing.assert_array_equal(cols, np.flatnonzero(y.reshape(-1, n)[r]))
    band = rglm_module._tridiagonal(R)
    W0 = rng.normal(0, 1, (d, n))
    Xp = rglm_module._previous_states_band(
        indptr, indices, values, np.ascontiguousarray(W0.T), *band, n_bins,
        np.empty((n_trials * n_bins, d + 1)),
    )  # fmt: skip
    np.testing.assert_allclose(Xp, naive.previous_states(inputs, W0, R), atol=1e-12)
    direct = rng.normal(0, 1, (n_trials * n_bins, d))
    gl, gd, gu, gWT = rglm_module._adjoint_band_grads(
        direct, Xp, indptr, indices, values, *band, n_bins, n
    )
    gR, gW0 = naive.adjoint_grads(direct.reshape(n_trials, n_bins, d), inputs, W0, R)
    np.testing.assert_allclose(gd, np.diag(gR), atol=1e-12)
    np.testing.assert_allclose(gl[1:], np.diag(gR, -1), atol=1e-12)
    np.testing.assert_allclose(gu[:-1], np.diag(gR, 1), atol=1e-12)
    np.testing.assert_allclose(gWT.T, gW0, atol=1e-12)
    # the within-bin coupling, added only at the spikes, and its outer product with dL/deta
    A = np.tril(rng.normal(0, 1, (n, n)), -1)
    H = rng.normal(0, 1, (n_trials * n_bins, n))
    ref = H + inputs.reshape(-1, n) @ A.T
    sparse_module._add_coupling(H, np.ascontiguousarray(A.T), indptr, indices, values)
    np.testing.assert_allclose(H, ref, atol=1e-12)
    G = rng.normal(0, 1, (n_trials * n_bins, n))
    np.testing.assert_allclose(
        sparse_module._spike_outer(G, indptr, indices, values, n),
        sum(np.outer(G[r], inputs.reshape(-1, n)[r]) for r in range(len(G))),
        atol=1e-12,
    )
    # the same on a block of bins, with the count terms: y . eta, then rates minus counts and dL/dA
    a, b = 7, 40
    ptr = indptr[a : b + 1]
    Y, In = y.reshape(-1, n)[a:b], inputs.reshape(-1, n)[a:b]
    for coupled in (False, True):
        E = rng.normal(0, 1, (b - a, n))
        ref = E + In @ A.T if coupled else E.copy()
        AT = np.ascontiguousarray(A.T) if coupled else np.zeros((0, n))
        y_eta = rglm_module._coupling_at_spikes(E, AT, coupled, ptr, indices, values, counts)
        np.testing.assert_allclose(E, ref, atol=1e-12)
        assert np.isclose(y_eta, np.sum(Y * ref), rtol=1e-12)
        gAT = np.zeros((n, n))
        rglm_module._counts_out_of_rates(E, coupled, ptr, indices, values, counts, gAT)
        np.testing.assert_allclose(E, ref - Y, atol=1e-12)
        np.testing.assert_allclose(gAT.T, (ref - Y).T @ In if coupled else 0.0, atol=1e-12)


@pytest.mark.parametrize("correlated", [False, True])
@pytest.mark.parametrize("chunk_bytes", [1, 700, 10**9])
def test_fused_rglm_loss_matches_the_generic_path(correlated, chunk_bytes, rng, monkeypatch):
    """The R-GLM's fused evaluation gives the loss and gradient of the generic one (``_eta``, the
    observation model, ``_history_grad``) to rounding, whatever blocks of bins it works in (one bin,
    blocks that cross trials, all at once), and again when it reuses its arrays within a fit."""
    from v1motion.models.spikes import rglm as rglm_module

    monkeypatch.setattr(rglm_module, "CHUNK_BYTES", chunk_bytes)
    y, _ = _block_form_counts(rng)
    model = RGLM(n_hidden=5, l2=0.01, correlated=correlated)
    model.angle_scale_ = np.array([0.05, 0.3])
    _, yp, _ = model._prepare(y, None, fitting=True)
    packer = ParamPacker(model._shapes(yp.shape[-1], 0), yp.shape[-1])
    model._fitting = True
    for _ in range(2):
        params = packer.unpack(rng.normal(0, 0.3, packer.size))
        loss, grads = model._nll_grad(params, yp, None)
        ref_loss, ref_grads = spike_base.SpikeModel._nll_grad(model, params, yp, None)
        assert np.isclose(loss, ref_loss, rtol=1e-12)
        assert grads.keys() == ref_grads.keys()
        for k in grads:
            np.testing.assert_allclose(grads[k], ref_grads[k], rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("correlated", [False, True])
def test_glm_sparse_kernels_give_the_generic_loss(correlated, rng):
    """The spike-history GLM's evaluation by sparse kernels equals the generic one to rounding, and
    leaves a run-away step (a drive above ETA_MAX) to it."""
    y, _ = _block_form_counts(rng)
    model = SpikeHistoryGLM(n_lags=5, n_basis=3, correlated=correlated, l2=0.01)
    _, yp, _ = model._prepare(y, None, fitting=True)
    packer = ParamPacker(model._shapes(yp.shape[-1], 0), yp.shape[-1])
    model._fitting = True
    for big in (False, False, True):
        params = packer.unpack(rng.normal(0, 0.3, packer.size))
        if big:
            params["b"][2] = obs_module.ETA_MAX + 5.0
        loss, grads = model._nll_grad(params, yp, None)
        ref_loss, ref_grads = spike_base.SpikeModel._nll_grad(model, params, yp, None)
        assert np.isclose(loss, ref_loss, rtol=1e-12) and grads.keys() == ref_grads.keys()
        for k in grads:
            np.testing.assert_allclose(grads[k], ref_grads[k], rtol=1e-10, atol=1e-13)


def test_fused_rglm_loss_leaves_run_away_steps_to_the_generic_path(rng):
    """A step whose drive exceeds ETA_MAX gets the clipped loss and gradient of the generic path."""
    y, _ = _block_form_counts(rng)
    model = RGLM(n_hidden=3, l2=0.01)
    _, yp, _ = model._prepare(y, None, fitting=True)
    packer = ParamPacker(model._shapes(yp.shape[-1], 0), yp.shape[-1])
    params = packer.unpack(rng.normal(0, 0.3, packer.size))
    params["b"][1] = obs_module.ETA_MAX + 5.0
    loss, grads = model._nll_grad(params, yp, None)
    ref_loss, ref_grads = spike_base.SpikeModel._nll_grad(model, params, yp, None)
    assert np.isfinite(loss) and loss == ref_loss
    for k in grads:
        np.testing.assert_array_equal(grads[k], ref_grads[k])


def test_recursion_kernels_propagate_nan(rng):
    from v1motion.models.spikes.rglm import linear_recursion

    drive = rng.normal(0, 1, (1, 4, 2))
    drive[0, 1, 0] = np.nan
    X = linear_recursion(drive, np.eye(2))
    assert np.isnan(X[0, 1:, 0]).all() and not np.isnan(X[0, 0]).any()


def test_history_features_zero_before_trial(rng):
    y = rng.poisson(1, (2, 6, 2)).astype(float)
    F = history_features(y, np.eye(3))
    assert np.all(F[:, 0] == 0)
    np.testing.assert_array_equal(F[:, 3].reshape(2, 2, 3)[:, :, 0], y[:, 2])  # lag 1


# ----------------------------------------------------------------------------- recovery


def _planted_rglm(n=6, d=2, seed=8):
    """A stable planted R-GLM: the feedback through the hidden state is mostly inhibitory."""
    r = np.random.default_rng(seed)
    W0 = r.normal(0, 0.6, (d, n))
    params = {
        "W0": W0,
        "R": np.array([[0.85, 0.1], [-0.1, 0.6]])[:d, :d],
        "C": -0.6 * W0.T + r.normal(0, 0.15, (n, d)),
        "A": np.tril(r.normal(0, 0.2, (n, n)), -1),
        "b": np.full(n, -1.0),
    }
    # raw counts as inputs: at these rates (about 0.4 per bin) a cap at 1 would hide much of what
    # identifies A (with the cap, one of its 36 entries misses by 0.3)
    return _set_params(RGLM(n_hidden=d, input_cap=None), params, n)


def _kernels(p, n_lags=6):
    """Identifiable history kernels ``C R^k W0``: a hidden state is only defined up to a basis change."""
    out, M = [], np.eye(p["R"].shape[0])
    for _ in range(n_lags):
        out.append(p["C"] @ M @ p["W0"])
        M = p["R"] @ M
    return np.stack(out)


@pytest.mark.slow
def test_rglm_recovers_planted_kernels_and_coupling():
    true = _planted_rglm()
    y = true.sample(n_trials=8, n_bins=2500, seed=9)
    fit = RGLM(n_hidden=2, ordering="index", l2=1e-5, seed=1, input_cap=None).fit(y)
    kt, kf = _kernels(true.params_), _kernels(fit.params_)
    assert np.linalg.norm(kf - kt) / np.linalg.norm(kt) < 0.25
    np.testing.assert_allclose(fit.params_["A"], true.params_["A"], atol=0.15)
    ev_true = np.sort(np.abs(np.linalg.eigvals(true.params_["R"])))
    ev_fit = np.sort(np.abs(np.linalg.eigvals(fit.params_["R"])))
    np.testing.assert_allclose(ev_fit, ev_true, atol=0.15)


@pytest.mark.slow
def test_rglm_recovers_a_planted_oscillating_pair_and_converges():
    """A planted complex pair 0.9 e^{±0.4i}: the fit (its R in block form) recovers modulus and angle,
    the history kernels, and stops on a convergence criterion, not the cap."""
    n, d = 6, 2
    r = np.random.default_rng(12)
    W0 = r.normal(0, 0.5, (d, n))
    a = 0.4
    params = {
        "W0": W0,
        "R": 0.9 * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]),
        "C": -0.5 * W0.T + r.normal(0, 0.2, (n, d)),
        "b": np.full(n, -1.2),
    }
    true = _set_params(RGLM(n_hidden=d, correlated=False), params, n)
    y = true.sample(n_trials=8, n_bins=2500, seed=13)
    assert y.max() < 20  # the planted model is stable when sampled
    fit = RGLM(n_hidden=d, correlated=False, l2=1e-6, max_iter=2000, init="random", seed=1).fit(y)
    assert fit.converged_ and fit.stop_reason_ == "gtol" and fit.grad_norm_ <= fit.tol
    kt, kf = _kernels(true.params_), _kernels(fit.params_)
    assert np.linalg.norm(kf - kt) / np.linalg.norm(kt) < 0.25
    ev = np.linalg.eigvals(fit.params_["R"])
    assert np.allclose(np.abs(ev), 0.9, atol=0.06)
    assert np.allclose(np.sort(np.abs(np.angle(ev))), a, atol=0.1)


def test_glm_recovers_planted_filters():
    n = 3
    r = np.random.default_rng(10)
    true = SpikeHistoryGLM(n_lags=6, n_basis=3)
    _set_params(true, {"W": r.normal(0, 0.4, (n, n * 3)), "b": np.full(n, -1.0)}, n)
    true.basis_ = raised_cosine_basis(6, 3)
    y = true.sample(n_trials=4, n_bins=5000, seed=11)
    fit = SpikeHistoryGLM(n_lags=6, n_basis=3, l2=0.0).fit(y)
    assert np.abs(fit.filters_ - true.filters_).max() < 0.2
    np.testing.assert_allclose(fit.params_["b"], true.params_["b"], atol=0.1)


def test_independent_recovers_rates_and_psth(rng):
    rates = np.array([0.05, 0.3, 1.2])
    y = rng.poisson(rates, (20, 500, 3)).astype(float)
    m = IndependentPoisson().fit(y)
    np.testing.assert_allclose(m.rate_, rates, rtol=0.05)
    p = PSTHPoisson(smooth_bins=0, shrink=0).fit(y)
    np.testing.assert_allclose(p.rate_.mean(axis=0), rates, rtol=0.05)


def _lag_covariances(C, F, Q, r, n_lags=2):
    k = F.shape[0]
    S = np.linalg.solve(np.eye(k * k) - np.kron(F, F), Q.ravel()).reshape(
        k, k
    )  # stationary covariance
    out = [C @ S @ C.T + np.diag(r)]
    for lag in range(1, n_lags):
        out.append(C @ np.linalg.matrix_power(F, lag) @ S @ C.T)
    return out


def test_gaussian_lds_recovers_lagged_covariances():
    k, n = 2, 6
    r = np.random.default_rng(12)
    true = GaussianLDS(n_latent=k)
    true.F_ = np.array([[0.9, 0.2], [-0.2, 0.7]])
    true.Q_ = 0.1 * np.eye(k)
    true.C_ = r.normal(0, 1, (n, k))
    true.d_ = np.full(n, 2.0)
    true.r_ = np.full(n, 0.2)
    true.n_neurons_ = n
    true.V0_ = np.eye(k) * 0.3
    true.mu0_ = np.zeros(k)
    z = true.sample(n_trials=10, n_bins=400, seed=13, gaussian=True)
    y = np.round(
        np.maximum(z, 0) ** 2
    )  # the fit works on sqrt counts: give it counts whose sqrt is ~z
    fit = GaussianLDS(n_latent=k, n_iter=60).fit(y)
    assert np.all(
        np.diff(fit.loglik_) > -1e-6 * abs(fit.loglik_[0])
    )  # EM never decreases the likelihood
    zq = np.sqrt(y)
    emp0 = np.cov(zq.reshape(-1, n).T)
    emp1 = np.mean([np.cov(zq[i, 1:].T, zq[i, :-1].T)[:n, n:] for i in range(10)], axis=0)
    m0, m1 = _lag_covariances(fit.C_, fit.F_, fit.Q_, fit.r_)
    assert np.linalg.norm(m0 - emp0) / np.linalg.norm(emp0) < 0.1
    assert np.linalg.norm(m1 - emp1) / np.linalg.norm(emp1) < 0.15
    assert np.all(np.abs(np.linalg.eigvals(fit.F_)) < 1)
    t0, _ = _lag_covariances(true.C_, true.F_, true.Q_, true.r_)
    assert np.linalg.norm(m0 - t0) / np.linalg.norm(t0) < 0.3


# ----------------------------------------------------------------------------- the true model wins


def test_true_models_beat_the_baseline_on_synthetic_data():
    from v1motion.models.spikes.evaluation import held_out_bits

    true = _planted_rglm()
    y = true.sample(n_trials=6, n_bins=2000, seed=15)
    train, test = y[:4], y[4:]
    rg = held_out_bits(RGLM(n_hidden=2, seed=2), train, test)["bits_per_spike"]
    corr = held_out_bits(CorrelatedGLM(), train, test)["bits_per_spike"]
    ind = held_out_bits(IndependentPoisson(), train, test)["bits_per_spike"]
    assert ind == 0.0
    assert corr > 0.0
    assert rg > corr + 0.02  # the dynamics carry information the within-bin model cannot see


def test_rglm_timescales_and_hidden_states():
    m = _planted_rglm()
    ev, tau = m.timescales(bin_size=10.0)
    assert tau[0] >= tau[-1]
    np.testing.assert_allclose(
        np.sort(np.abs(ev)), np.sort(np.abs(np.linalg.eigvals(m.params_["R"])))
    )
    y = m.sample(n_trials=2, n_bins=50, seed=1)
    assert m.hidden_states(y).shape == (2, 50, 2)


def test_linear_decoder_reads_external_variable_from_hidden_state():
    """A slow external variable drives the population; decode it from the fitted R-GLM's hidden state."""
    from v1motion.models.spikes.evaluation import decode, fit_linear_decoder, r_squared

    r = np.random.default_rng(16)
    n, T, K = 12, 1500, 4
    v = np.zeros((K, T))
    for t in range(1, T):
        v[:, t] = 0.98 * v[:, t - 1] + 0.2 * r.standard_normal(K)
    w = r.normal(0, 0.8, n)
    y = r.poisson(np.exp(-1.5 + v[..., None] * w)).astype(float)
    m = RGLM(n_hidden=3, correlated=False, seed=0).fit(y[:3])
    X = m.hidden_states(y)
    W, c = fit_linear_decoder(X[:3], v[:3])
    r2 = r_squared(v[3:], decode(X[3:], W, c))
    Wy, cy = fit_linear_decoder(y[:3], v[:3])
    r2_counts = r_squared(v[3:], decode(y[3:], Wy, cy))
    assert r2 > 0.6
    assert r2 > r2_counts + 0.2  # the hidden state integrates the past; one bin of counts cannot


# ----------------------------------------------------------------------------- estimator hygiene


@pytest.mark.parametrize("cls", [CorrelatedGLM, SpikeHistoryGLM, RGLM, IndependentPoisson])
def test_unfitted_and_mismatched_use_is_refused(cls, rng):
    m = cls()
    with pytest.raises(NotFittedError, match="not fitted"):
        m.log_likelihood(np.zeros((5, 3)))
    m.fit(rng.poisson(0.5, (1, 60, 3)))
    with pytest.raises(ValueError, match="fitted on 3"):
        m.log_likelihood(np.zeros((5, 4)))
    assert m.sample(2, 7, seed=0).shape == (2, 7, 3)


def test_gaussian_lds_with_more_latents_than_neurons(rng):
    y = rng.poisson(0.5, (2, 200, 3)).astype(float)
    m = GaussianLDS(n_latent=5, n_iter=5).fit(y)
    assert m.C_.shape == (3, 5) and m.F_.shape == (5, 5)
    assert np.isfinite(m.log_likelihood(y)) and np.all(np.diff(m.loglik_) > -1e-6)
    assert m.sample(n_trials=1, n_bins=20, seed=1).shape == (1, 20, 3)


def test_lds_unfitted_is_refused():
    with pytest.raises(RuntimeError, match="not fitted"):
        GaussianLDS().log_likelihood(np.zeros((5, 3)))


def test_exp_link_never_overflows():
    assert np.isfinite(get_link("exp")(np.array([1e4]))).all()
    assert spike_base.ORDERINGS[0] == "rate"


def test_correlated_bernoulli_and_gaussian_recover_planted_parameters():
    A, b = _planted_correlated(4, seed=17)
    true = _set_params(CorrelatedGLM(obs="bernoulli"), {"A": A, "b": b}, 4)
    y = true.sample(n_trials=4, n_bins=5000, seed=18)
    fit = CorrelatedGLM(obs="bernoulli", ordering="index", l2=0.0).fit(y)
    np.testing.assert_allclose(fit.params_["A"], A, atol=0.12)

    g = _set_params(CorrelatedGLM(obs="gaussian"), {"A": A, "b": b}, 4)
    g._obs().scale = np.array([0.5, 1.0, 2.0, 0.3])
    yg = g.sample(n_trials=2, n_bins=5000, seed=19)
    fg = CorrelatedGLM(obs="gaussian", ordering="index", l2=0.0).fit(yg)
    np.testing.assert_allclose(fg.params_["A"], A, atol=0.05)
    np.testing.assert_allclose(fg._obs().scale, [0.5, 1.0, 2.0, 0.3], rtol=0.05)


def test_rglm_with_stimulus_recovers_input_kernel():
    """The stimulus enters through the hidden state: recover the identifiable map ``C B`` (one-bin delay)."""
    true = _planted_rglm()
    d = 2
    B = np.array([[1.0], [-0.5]])
    true.params_["B"] = B
    true.n_inputs_ = 1
    true._packer = ParamPacker(true._shapes(6, 1), 6)
    r = np.random.default_rng(20)
    u = r.normal(0, 1, (6, 2000, 1))
    y = true.sample(n_trials=6, n_bins=2000, u=u, seed=21)
    fit = RGLM(n_hidden=d, ordering="index", l2=1e-5, seed=1).fit(y, u)
    cb_true = true.params_["C"] @ B
    cb_fit = fit.params_["C"] @ fit.params_["B"]
    assert np.linalg.norm(cb_fit - cb_true) / np.linalg.norm(cb_true) < 0.2


# ----------------------------------------------------------------------------- convergence reports


def test_fit_at_the_iteration_cap_says_so_and_warns(caplog):
    y = np.random.default_rng(30).poisson(0.3, (3, 200, 4)).astype(float)
    with caplog.at_level("WARNING", logger="v1motion.models.spikes.base"):
        m = RGLM(n_hidden=2, max_iter=2).fit(y)
    assert m.converged_ is False
    assert m.stop_reason_ == "max_iter" and m.n_iter_ == 2
    assert m.grad_norm_ > m.tol
    assert any("max_iter=2" in r.getMessage() for r in caplog.records)


def test_well_posed_poisson_glm_converges_below_tol(caplog):
    y = np.random.default_rng(31).poisson([0.2, 0.5, 1.0], (2, 2000, 3)).astype(float)
    with caplog.at_level("WARNING", logger="v1motion.models.spikes.base"):
        m = SpikeHistoryGLM(n_lags=4, n_basis=2, l2=1e-3, tol=1e-4).fit(y)
    assert m.converged_ is True and m.stop_reason_ == "gtol"
    assert m.grad_norm_ <= m.tol and 0 < m.n_iter_ < m.max_iter
    assert not caplog.records
    # the reported norm is the gradient of the per-bin loss at the fitted parameters
    _, g = m._loss_grad(m._packer.pack(m.params_), m._packer, y[..., m.order_], None)
    assert np.max(np.abs(g)) == pytest.approx(m.grad_norm_)


def test_closed_form_and_em_fits_report_how_they_ended():
    y = np.random.default_rng(33).poisson(0.3, (2, 300, 3)).astype(float)
    m = IndependentPoisson().fit(y)
    assert (m.converged_, m.stop_reason_, m.grad_norm_, m.n_iter_) == (True, "closed_form", 0.0, 0)
    lds = GaussianLDS(n_latent=1, n_iter=2).fit(y)
    assert lds.stop_reason_ == "max_iter" and lds.converged_ is False and lds.grad_norm_ is None
    assert lds.final_change_ > lds.tol
    lds = GaussianLDS(n_latent=1, n_iter=1000, tol=1e-4).fit(y)
    assert lds.converged_ and lds.stop_reason_ == "ftol" and lds.n_iter_ < 1000
    assert lds.final_change_ < lds.tol
    assert np.isclose(lds.final_change_, np.diff(lds.loglik_)[-1] / y[..., 0].size)


# ----------------------------------------------------------------------------- R-GLM started from the GLM


def test_realised_filters_reproduce_the_impulse_response(rng):
    n, L = 3, 6
    K = np.einsum("ijq,lq->lij", rng.normal(0, 0.5, (n, n, 3)), raised_cosine_basis(L, 3))

    def impulse(p, lags):
        return np.stack([p["C"] @ np.linalg.matrix_power(p["R"], k) @ p["W0"] for k in range(lags)])

    full = realise_filters(K, n * L)  # a shift register of lagged counts: exact
    np.testing.assert_allclose(
        impulse(full, L + 4), np.concatenate([K, np.zeros((4, n, n))]), atol=1e-10
    )
    errs = [np.linalg.norm(impulse(realise_filters(K, d), L) - K) for d in (2, 6, 12)]
    assert errs[0] > errs[1] > errs[2]  # more states, closer
    assert np.all(np.abs(np.linalg.eigvals(realise_filters(K, 2)["R"])) <= 0.99 + 1e-12)


def _impulse(p, lags):
    return np.stack([p["C"] @ np.linalg.matrix_power(p["R"], k) @ p["W0"] for k in range(lags)])


@pytest.mark.parametrize("angle_scale", [None, np.array([0.3, 0.007])])
def test_stable_recurrence_matches_twin_and_stays_inside_the_unit_circle(angle_scale, rng):
    r_real, r_mod, r_angle = rng.normal(0, 3, 3), rng.normal(0, 3, 2), rng.normal(0, 30, 2)
    R = stable_recurrence(r_real, r_mod, r_angle, angle_scale)
    np.testing.assert_allclose(
        R, naive.stable_recurrence(r_real, r_mod, r_angle, angle_scale), atol=1e-14
    )
    assert np.all(np.abs(np.linalg.eigvals(R)) < 1)
    # however large the parameters: moduli below 1 (in floating point, up to 1)
    extreme = stable_recurrence(np.array([40.0, -40.0]), np.array([40.0]), np.array([1e3]))
    assert np.all(np.abs(np.linalg.eigvals(extreme)) <= 1 + 1e-12)
    # the chain rule, by central differences on a random linear functional of R
    G = rng.normal(0, 1, R.shape)
    g = stable_recurrence_grad(G, r_real, r_mod, r_angle, angle_scale)
    theta = np.concatenate([r_real, r_mod, r_angle])
    h, num = 1e-6, []
    for i in range(len(theta)):
        e = np.zeros_like(theta)
        e[i] = h

        def f(t):
            return np.sum(G * stable_recurrence(t[:3], t[3:5], t[5:], angle_scale))

        num.append((f(theta + e) - f(theta - e)) / (2 * h))
    np.testing.assert_allclose(np.concatenate(g), num, rtol=1e-6, atol=1e-9)


def test_block_form_keeps_the_impulse_response(rng):
    d, n = 5, 3
    R = rng.normal(0, 0.35, (d, d))  # has complex pairs (checked) and real eigenvalues
    ev = np.linalg.eigvals(R)
    assert np.any(np.abs(ev.imag) > 1e-6) and np.any(np.abs(ev.imag) < 1e-12)
    assert np.abs(ev).max() < 0.999
    W0, C = rng.normal(0, 1, (d, n)), rng.normal(0, 1, (n, d))
    b = to_block_form(W0, R, C)
    Rb = stable_recurrence(b["R_real"], b["R_mod"], b["R_angle"])
    got = _impulse({"W0": b["W0"], "R": Rb, "C": b["C"]}, 12)
    np.testing.assert_allclose(got, _impulse({"W0": W0, "R": R, "C": C}, 12), atol=1e-9)
    # modes balanced: each real mode's row of W0 and column of C have one norm
    k = len(b["R_real"])
    np.testing.assert_allclose(
        np.linalg.norm(b["W0"][:k], axis=1), np.linalg.norm(b["C"][:, :k], axis=0)
    )
    # a defective R (a nilpotent shift register) is split by a small perturbation: close, not exact
    S = np.diag(np.ones(3), -1)
    W0s, Cs = rng.normal(0, 1, (4, n)), rng.normal(0, 1, (n, 4))
    bs = to_block_form(W0s, S, Cs)
    Rs = stable_recurrence(bs["R_real"], bs["R_mod"], bs["R_angle"])
    ref = _impulse({"W0": W0s, "R": S, "C": Cs}, 6)
    err = _impulse({"W0": bs["W0"], "R": Rs, "C": bs["C"]}, 6) - ref
    assert np.abs(err).max() < 0.05 * np.abs(ref).max()


@pytest.mark.parametrize("correlated", [False, True])
def test_rglm_started_from_glm_predicts_like_its_realisation(correlated, rng):
    y = rng.poisson(0.3, (2, 300, 3)).astype(float)
    glm = SpikeHistoryGLM(n_lags=4, n_basis=2, correlated=correlated, max_iter=50).fit(y)
    m = RGLM(n_hidden=4, correlated=correlated, init=glm, max_iter=1).fit(y)
    start = m._init_params(y[..., m.order_], None)
    W = glm.params_["W"].reshape(3, 3, 2)
    real = realise_filters(np.einsum("ijq,lq->lij", W, glm.basis_), 4)
    ref = RGLM(n_hidden=4, correlated=correlated)
    _set_params(ref, {**start, **real}, 3, order=m.order_)
    m.params_ = {**start, "R": m._R(start)}
    np.testing.assert_allclose(m.predict_eta(y), ref.predict_eta(y), atol=1e-8)
    fitted = RGLM(n_hidden=2, correlated=correlated, init="glm", max_iter=20).fit(y)
    assert np.isfinite(fitted.log_likelihood(y))


@pytest.mark.parametrize("correlated", [False, True])
def test_rglm_with_history_filters_starts_as_the_glm(correlated, rng):
    y = rng.poisson(0.3, (2, 300, 3)).astype(float)
    glm = SpikeHistoryGLM(n_lags=4, n_basis=2, correlated=correlated, max_iter=50).fit(y)
    m = RGLM(n_hidden=2, n_lags=4, n_basis=2, correlated=correlated, init=glm, max_iter=1)
    m.fit(y)
    start = m._init_params(y[..., m.order_], None)
    m.params_ = {**start, "R": m._R(start)}
    np.testing.assert_allclose(m.predict_eta(y), glm.predict_eta(y), atol=1e-10)
    # and it samples: the filters' buffer and the state both run
    assert m.sample(n_trials=2, n_bins=30, seed=3).shape == (2, 30, 3)
    with pytest.raises(ValueError, match="n_lags and n_basis"):
        RGLM(n_hidden=2, n_lags=3, n_basis=2, correlated=correlated, init=glm).fit(y)


def test_rglm_with_history_filters_and_state_l2_gradient(rng):
    _check_model_grad(
        RGLM(n_hidden=3, n_lags=4, n_basis=2, l2=0.01, l2_state=0.3), _toy_counts(rng)
    )


def test_input_cap_bounds_a_self_exciting_glm():
    """One neuron exciting itself: with raw counts its samples run away, capped at 1 they cannot."""
    W = np.array([[1.5, 0.0]])  # basis 0 covers lag 1
    runs = {}
    for cap in (None, 1.0):
        g = SpikeHistoryGLM(n_lags=2, n_basis=2, input_cap=cap)
        _set_params(g, {"W": W, "b": np.array([-0.5])}, 1)
        g.basis_ = raised_cosine_basis(2, 2)
        runs[cap] = g.sample(n_trials=4, n_bins=400, seed=2, max_count=100)
    assert runs[None].max() >= 100  # exp(-0.5 + 1.5 y): each spike raises the next bin's rate
    # capped, the rate is at most exp(b + the filter's positive lags) = exp(-0.5 + 1.5 + 0.75)
    bound = np.exp(-0.5 + np.clip(g.filters_, 0, None).sum())
    assert np.isclose(bound, np.exp(1.75)) and runs[1.0].mean() < bound and runs[1.0].max() < 25


def test_rglm_refuses_an_unknown_init(rng):
    y = rng.poisson(0.3, (2, 50, 3)).astype(float)
    with pytest.raises(ValueError, match="valid: 'random', 'glm'"):
        RGLM(n_hidden=2, init="pca").fit(y)
    glm = SpikeHistoryGLM(n_lags=3, n_basis=2, correlated=False, max_iter=5).fit(y)
    with pytest.raises(ValueError, match="neuron order and correlated"):
        RGLM(n_hidden=2, correlated=True, init=glm).fit(y)


def test_lbfgs_backs_off_from_overflowing_steps():
    """Steps beyond |theta| > 0.3 overflow; the fit must back off to finite points, not stop on NaN."""

    def fun(theta):
        if np.any(np.abs(theta) > 0.3):
            return np.inf, np.full_like(theta, np.inf)
        return float(np.sum((theta - 10) ** 2)), 2 * (theta - 10)

    theta, info = spike_base.lbfgs(fun, np.zeros(3), 20, 1e-6, "toy")
    assert info["overflowing_steps"] > 0 and np.isfinite(info["loss"])
    assert info["loss"] < fun(np.zeros(3))[0] and np.all(np.abs(theta) <= 0.3)
    assert info["converged"] is False
    with pytest.raises(FloatingPointError, match="starting parameters"):
        spike_base.lbfgs(lambda th: (np.nan, th), np.zeros(2), 5, 1e-6, "toy")


class _Terminal:
    """A stderr that says it is a terminal, holding what is written to it."""

    def __init__(self, tty: bool):
        self.tty, self.text = tty, ""

    def isatty(self) -> bool:
        return self.tty

    def write(self, s: str) -> int:
        self.text += s
        return len(s)

    def flush(self) -> None:
        pass


@pytest.mark.parametrize("tty", [True, False])
def test_lbfgs_shows_a_progress_bar_on_a_terminal_only(monkeypatch, tty):
    """A long fit shows its iterations and largest gradient entry on a terminal; in a log or a
    worker process (not a terminal) nothing is written. The fit is the same either way."""
    a = np.linspace(1.0, 40.0, 30)

    def fun(theta):
        time.sleep(0.01)  # long enough for the bar to be redrawn (every 0.1 s)
        return 0.5 * float(np.sum(a * theta**2)), a * theta

    theta0 = np.ones(30)
    monkeypatch.setattr("sys.stderr", _Terminal(tty))
    import sys

    theta, info = spike_base.lbfgs(fun, theta0, maxiter=200, tol=1e-8, name="Quadratic")
    shown = sys.stderr.text
    monkeypatch.undo()
    assert info["converged"] and np.max(np.abs(theta)) < 1e-8
    if not tty:
        assert shown == ""
        return
    assert "Quadratic L-BFGS" in shown
    drawn = [int(n) for n in re.findall(r"(\d+)/200", shown)]
    assert drawn[0] == 0 and 0 < drawn[-1] <= info["n_iter"] and drawn == sorted(drawn)
    assert "stops at 1e-08" in shown


def test_fit_warns_of_overfitting_and_not_of_a_fit_that_generalises():
    from v1motion.models.spikes.registry import fit_and_score

    _, _, good = fit_and_score(bursty_counts(), "glm", {"n_lags": 5})
    assert good["bits_per_spike"] > 0.1 and good["n_params"] < 6 * 300 * 3
    assert good["warnings"] == []
    tiny = np.random.default_rng(0).poisson(0.5, (3, 12, 2)).astype(float)  # 2 trials train
    _, _, bad = fit_and_score(tiny, "rglm_correlated", {"n_lags": 3, "max_iter": 200})
    assert bad["n_params"] > 2 * 12 * 2 and bad["bits_per_spike"] < 0
    params, worse = bad["warnings"]
    assert f"{bad['n_params']} parameters for 48 training counts" in params
    assert "worse than by each neuron's constant mean rate" in worse


@pytest.mark.parametrize(
    ("kind", "options"),
    [
        ("correlated", {}),
        ("glm", {"n_lags": 5, "n_basis": 3}),
        ("glm_correlated", {"n_lags": 4}),
        ("rglm", {"n_hidden": 3, "init": "random"}),
        ("rglm_correlated", {"n_hidden": 2, "n_lags": 3, "n_basis": 2}),
        ("rglm_correlated", {"n_hidden": 2}),  # started from a 10-lag GLM of its own
        ("glm_correlated_locked", {"n_lags": 3}),
    ],
)
def test_the_parameters_a_fit_optimises_are_known_before_it(kind, options):
    """What the service checks against its limit before a fit: the size of the fit's largest
    L-BFGS run (an R-GLM from a GLM: that GLM's, if larger), as the fitted models count it."""
    from v1motion.models.spikes.registry import make_model, optimised_params

    y = np.random.default_rng(0).poisson(0.3, (2, 60, 7)).astype(float)
    model = make_model(kind, max_iter=2, **options)
    expected = optimised_params(kind, 7, **options)
    model.fit(y)
    inner = getattr(model, "model", model)  # a stimulus-locked kind drives a GLM or R-GLM
    fitted = [inner.n_params_]
    if getattr(inner, "init_glm_", None) is not None:
        fitted.append(inner.init_glm_.n_params_)
    assert expected == max(fitted) > 0
    assert optimised_params("lds", 7) == optimised_params("plds", 7) == 0  # EM, not one L-BFGS run


@pytest.mark.parametrize("kind", ["lds", "plds"])
def test_lds_fits_run_their_kalman_filter_on_one_blas_thread(kind, monkeypatch):
    """``fit`` is what ``single_blas_thread`` is for (small matrices: threads only contend); the
    decorator once slipped onto a method inserted above it, and the fits ran on every thread."""
    from threadpoolctl import threadpool_info, threadpool_limits

    from v1motion.models.spikes import lds
    from v1motion.models.spikes.registry import make_model

    seen = []
    real = lds.kalman_covariances

    def spy(*args):
        seen.append(max(p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"))
        return real(*args)

    monkeypatch.setattr(lds, "kalman_covariances", spy)
    y = np.random.default_rng(0).poisson(0.5, (2, 40, 5)).astype(float)
    with threadpool_limits(limits=2, user_api="blas"):  # more than one outside the fit
        make_model(kind, n_iter=2).fit(y)
    assert seen and set(seen) == {1}


def test_a_fit_is_warned_of_as_worse_than_constant_rates_only_beyond_rounding():
    """A model that is the constant rates (inputs capped at 1e-300) scored -1.5e-15 bits/spike and
    was told it 'overfits these data'."""
    from v1motion.models.spikes.registry import WORSE_BY, fit_warnings

    assert fit_warnings(-1.5e-15, 10, 1000) == []
    assert fit_warnings(-0.5 * WORSE_BY, 10, 1000) == []
    [said] = fit_warnings(-0.05, 10, 1000)
    assert "worse than by each neuron's constant mean rate (-0.05 bits/spike)" in said


def test_options_in_effect_are_the_defaults_with_the_given_ones():
    from v1motion.models.spikes.registry import options_in_effect

    used = options_in_effect("plds", {"n_latent": 2})
    assert used["n_latent"] == 2 and used["n_iter"] == 200  # given; the class's default
    assert used["l2_loadings"] == 10.0  # the kind's own default (KIND_DEFAULTS)
    assert options_in_effect("rglm", {})["init_timescales"] == [0.5, 0.97]  # a tuple, as JSON
    with pytest.raises(ValueError, match="unknown model kind"):
        options_in_effect("hmm", {})


@pytest.mark.parametrize(
    "kind,options",
    [
        ("independent", {}),
        ("correlated", {}),
        ("glm", {"n_lags": 3}),
        ("rglm", {"n_hidden": 2, "max_iter": 20}),
        ("glm_correlated_locked", {"n_lags": 3, "max_iter": 50}),
    ],
)
def test_a_new_fit_forgets_the_neurons_of_the_last_one(kind, options):
    from v1motion.models.spikes.registry import make_model

    y = np.random.default_rng(0).poisson(0.3, (4, 120, 3)).astype(float)
    model = make_model(kind, **options).fit(y)
    model.fit(y[..., :2])  # scikit-learn's habit: fit starts afresh (was: "fitted on 3")
    assert np.isfinite(model.log_likelihood(y[..., :2]))
    with pytest.raises(ValueError, match="fitted on 2"):
        model.log_likelihood(y)
    # and the refit is the fit of a new model
    fresh = make_model(kind, **options).fit(y[..., :2])
    assert model.log_likelihood(y[..., :2]) == pytest.approx(fresh.log_likelihood(y[..., :2]))


def test_a_density_is_not_scored_in_bits_per_spike():
    from v1motion.models.spikes.evaluation import held_out_bits
    from v1motion.models.spikes.registry import evaluate, fit_and_score

    y = np.random.default_rng(0).poisson(0.05, (10, 300, 3)).astype(float)
    # a constant Gaussian scored +7.8 bits/spike here (+87 on a retina recording): a density is not
    # a probability of counts, so the Poisson baseline's probabilities do not compare with it
    for kind in ("correlated", "glm", "rglm"):
        with pytest.raises(ValueError, match="density"):
            fit_and_score(y, kind, {"obs": "gaussian"})
    model = CorrelatedGLM(obs="gaussian", l2=1e6).fit(y[:8])
    with pytest.raises(ValueError, match="density"):
        evaluate(model, IndependentPoisson().fit(y[:8]), y[8:])
    with pytest.raises(ValueError, match="density"):
        held_out_bits(CorrelatedGLM(obs="gaussian"), y[:8], y[8:])
    # counts models are scored as before, the Gaussian LDS by its rates' Poisson probability
    _, _, report = fit_and_score((y > 0).astype(float), "correlated", {"obs": "bernoulli"})
    assert np.isfinite(report["bits_per_spike"])
    _, _, report = fit_and_score(y, "lds", {"n_latent": 1, "n_iter": 3})
    assert np.isfinite(report["bits_per_spike"])


def test_a_model_without_couplings_keeps_no_table_of_them():
    """The packer built the n^2 index table of A for every model: an independent model of 3,000
    neurons (3,000 parameters) kept 144 MB, and the service writes each fitted model to disk."""
    import pickle

    y = np.random.default_rng(0).poisson(0.1, (2, 5, 3000)).astype(float)
    assert len(pickle.dumps(IndependentPoisson().fit(y))) < 200_000
    packer = ParamPacker({"A": (4, 4), "b": (4,)}, 4)  # with couplings: their lower triangle
    params = {"A": np.tril(np.arange(16.0).reshape(4, 4), -1), "b": np.ones(4)}
    assert packer.size == 6 + 4
    np.testing.assert_array_equal(packer.unpack(packer.pack(params))["A"], params["A"])
