"""The spike models as scikit-learn style estimators: parameters, clones, ``score``, integer samples."""

import inspect
import logging

import numpy as np
import pytest
from scipy import stats

from v1motion.models.spikes.base import clone
from v1motion.models.spikes.evaluation import LN2, bits_per_spike
from v1motion.models.spikes.glm import (
    CorrelatedGLM,
    IndependentPoisson,
    PSTHPoisson,
    SpikeHistoryGLM,
    StimulusLocked,
)
from v1motion.models.spikes.lds import GaussianLDS
from v1motion.models.spikes.registry import MODEL_KINDS, make_model
from v1motion.models.spikes.rglm import RGLM

KINDS = sorted(MODEL_KINDS) + ["psth"]

# small fits: a few seconds for every kind together
SMALL = {
    "glm": {"n_lags": 4, "n_basis": 2, "max_iter": 200},
    "glm_correlated": {"n_lags": 4, "n_basis": 2, "max_iter": 200},
    "glm_correlated_locked": {"n_lags": 4, "n_basis": 2, "max_iter": 200},
    "rglm": {"n_hidden": 2, "max_iter": 150},
    "rglm_correlated": {"n_hidden": 2, "max_iter": 150},
    "rglm_correlated_locked": {"n_hidden": 2, "max_iter": 150},
    "lds": {"n_latent": 1, "n_iter": 30},
    "plds": {"n_latent": 1, "n_iter": 15, "init_iter": 5},
}


def _make(kind, **options):
    if kind == "psth":
        return PSTHPoisson(**options)
    return make_model(kind, **options)


def _planted(n_trials=10, n_bins=300, n=4, seed=0):
    """Counts with every structure some kind models: a stimulus-locked rate shared by the trials,
    a slow latent shared by the neurons (within-bin correlations and a predictable past)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_bins)
    locked = 0.9 * np.sin(2 * np.pi * t / 60)[:, None] * rng.normal(1.0, 0.2, n)
    x = np.zeros((n_trials, n_bins))
    for i in range(1, n_bins):
        x[:, i] = 0.95 * x[:, i - 1] + 0.3 * rng.standard_normal(n_trials)
    eta = -1.2 + locked + x[..., None] * rng.normal(1.0, 0.2, n)
    return rng.poisson(np.exp(eta))


@pytest.fixture(scope="module")
def fitted():
    """Every kind fitted on the planted model's first 8 trials (its last 2 held out)."""
    y = _planted()
    train = y[:8]
    logging.disable(logging.WARNING)  # the small fits stop at their caps, and say so
    try:
        return {k: _make(k, **SMALL.get(k, {})).fit(train) for k in KINDS}
    finally:
        logging.disable(logging.NOTSET)


def _fitted_attrs(model) -> list[str]:
    """What a fit sets: public attributes ending in ``_`` (scikit-learn's convention)."""
    return [k for k in vars(model) if k.endswith("_") and not k.startswith("_")]


def _same(a, b) -> bool:
    """Parameter values alike: arrays by value, estimators by their own parameters."""
    if hasattr(a, "get_params"):
        return type(a) is type(b) and _same_params(a.get_params(deep=False), b.get_params(False))
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(a, b)
    return type(a) is type(b) and a == b


def _same_params(p, q) -> bool:
    return p.keys() == q.keys() and all(_same(p[k], q[k]) for k in p)


# ----------------------------------------------------------------------------- parameters


@pytest.mark.parametrize("kind", KINDS)
def test_get_params_lists_the_constructor_arguments_as_given(kind):
    m = _make(kind, **SMALL.get(kind, {}))
    names = [p for p in inspect.signature(type(m).__init__).parameters if p != "self"]
    params = m.get_params(deep=False)
    assert list(params) == names
    assert all(params[k] is getattr(m, k) for k in names)
    for k, v in SMALL.get(kind, {}).items():
        inner = m.get_params()
        assert inner.get(k, inner.get(f"model__{k}")) == v


@pytest.mark.parametrize("kind", KINDS)
def test_get_params_rebuilds_an_equal_unfitted_model(kind, fitted):
    m = fitted[kind]
    assert _fitted_attrs(m)
    params = m.get_params(deep=False)
    twin = type(m)(**params)
    assert _same_params(twin.get_params(deep=False), params)
    assert _fitted_attrs(twin) == []
    if not isinstance(m, StimulusLocked):  # no nested estimator: deep is the same
        assert _same_params(type(m)(**m.get_params()).get_params(), m.get_params())
    c = clone(m)
    assert type(c) is type(m) and _same_params(c.get_params(), m.get_params())
    assert _fitted_attrs(c) == []
    if isinstance(m, StimulusLocked):
        assert c.model is not m.model and _fitted_attrs(c.model) == []


@pytest.mark.parametrize("kind", KINDS)
def test_set_params_changes_arguments_and_returns_the_model(kind):
    m = _make(kind)
    before = m.get_params()
    assert m.set_params() is m
    name = "seed" if "seed" in before else "shrink"
    assert m.set_params(**{name: 7}) is m and getattr(m, name) == 7
    m.set_params(**before)
    assert _same_params(m.get_params(), before)


@pytest.mark.parametrize("kind", KINDS)
def test_set_params_refuses_an_unknown_name_and_lists_the_valid_ones(kind):
    m = _make(kind)
    before = m.get_params()
    valid = sorted(m.get_params(deep=False))
    with pytest.raises(ValueError, match=r"invalid parameter 'n_latnet'.*valid parameters") as e:
        m.set_params(**{valid[0]: "changed", "n_latnet": 2})
    assert str(valid) in str(e.value)
    assert _same_params(m.get_params(), before)  # nothing was set


def test_set_params_reaches_a_wrapped_model():
    m = make_model("glm_correlated_locked")
    assert m.get_params()["model__n_lags"] == 10
    m.set_params(model__n_lags=3, shrink=0.1)
    assert m.model.n_lags == 3 and m.shrink == 0.1
    with pytest.raises(ValueError, match="'smooth_bins__x'.*not an estimator"):
        m.set_params(smooth_bins__x=1)
    with pytest.raises(ValueError, match="invalid parameter 'n_lagz' for SpikeHistoryGLM"):
        m.set_params(model__n_lagz=3)


def test_set_params_drops_the_observation_model_of_the_old_obs_only(rng):
    m = CorrelatedGLM()
    assert m._obs().name == "poisson"
    assert m.set_params(obs="bernoulli")._obs().name == "bernoulli"
    # a fitted Gaussian model keeps its estimated variances through other changes
    y = rng.normal(0, 2, (2, 60, 3))
    g = CorrelatedGLM(obs="gaussian", max_iter=50).fit(y)
    ll = g.log_likelihood(y)
    assert g.set_params(max_iter=60).log_likelihood(y) == ll


def test_repr_shows_the_arguments_that_differ_from_the_defaults():
    assert repr(SpikeHistoryGLM(n_lags=5)) == "SpikeHistoryGLM(n_lags=5)"
    assert repr(IndependentPoisson()) == "IndependentPoisson()"
    assert repr(CorrelatedGLM(ordering=np.array([1, 0]), l2=1e-4)) == (
        "CorrelatedGLM(ordering=array([1, 0]))"
    )
    assert repr(make_model("rglm_correlated_locked")) == (
        "StimulusLocked(model=RGLM(l2_state=0.001))"
    )
    assert repr(GaussianLDS(n_latent=2, tol=1e-6)) == "GaussianLDS(n_latent=2)"


def test_sklearn_clone_works():
    base = pytest.importorskip("sklearn.base")
    for kind in KINDS:
        m = _make(kind, **SMALL.get(kind, {}))
        c = base.clone(m)
        assert type(c) is type(m) and _same_params(c.get_params(), m.get_params())


# ----------------------------------------------------------------------------- score


@pytest.mark.parametrize("kind", KINDS)
def test_score_is_the_held_out_log_likelihood_per_bin_and_beats_constant_rates(kind, fitted):
    test = _planted()[8:]
    m, base = fitted[kind], fitted["independent"]
    score = m.score(test)
    assert np.isclose(score, m.log_likelihood(test) / (test.shape[0] * test.shape[1]))
    if kind == "independent":
        # Poisson at each neuron's mean training count, per bin
        rate = _planted()[:8].mean(axis=(0, 1))
        ll = stats.poisson.logpmf(test, rate).sum() / (test.shape[0] * test.shape[1])
        assert np.isclose(score, ll)
    else:
        # every other kind models some of the planted structure, so scores above constant rates
        assert score > base.score(test) + 0.01
        bits = bits_per_spike(m.log_likelihood(test), base.log_likelihood(test), test.sum())
        gain = (score - base.score(test)) * test.shape[0] * test.shape[1]
        assert np.isclose(gain / (test.sum() * LN2), bits)


def test_score_of_one_trial_and_with_an_offset(fitted):
    test = _planted()[8:]
    m = fitted["glm"]
    assert np.isclose(m.score(test[0]), m.log_likelihood(test[0]) / test.shape[1])
    off = np.full(test.shape[1:], 0.5)
    with_offset = SpikeHistoryGLM(n_lags=3, max_iter=50).fit(_planted()[:8], offset=off)
    assert np.isclose(
        with_offset.score(test, offset=off),
        with_offset.log_likelihood(test, offset=off) / test[..., 0].size,
    )


def test_a_model_refuses_an_offset_or_stimulus_its_fit_did_not_have_and_the_reverse(fitted):
    """Scored without the offset it was fitted with, a GLM read -11.2 nats a bin where it reads
    -0.36 with it, without a word; a GLM "fitted with" a stimulus ignored it."""
    train, test = _planted()[:8], _planted()[8:]
    off = np.full(train.shape[1:], 0.5)
    u = np.random.default_rng(0).normal(size=train.shape[:2] + (2,))
    with_offset = SpikeHistoryGLM(n_lags=3, max_iter=50).fit(train, offset=off)
    with pytest.raises(ValueError, match="fitted with an offset"):
        with_offset.score(test)
    with pytest.raises(ValueError, match="fitted without an offset"):
        fitted["glm"].score(test, offset=off)
    for kind in ("glm", "correlated", "independent"):
        with pytest.raises(ValueError, match="takes no stimulus input"):
            clone(fitted[kind]).fit(train, u)
    rglm = RGLM(n_hidden=2, max_iter=20).fit(train, u)
    assert np.isfinite(rglm.score(test, u[:2]))
    with pytest.raises(ValueError, match="fitted with 2 stimulus inputs"):
        rglm.score(test)


def test_a_clone_of_an_rglm_started_from_a_fitted_glm_fits():
    """``clone`` rebuilt the start GLM unfitted, and the clone's fit raised NotFittedError."""
    train = _planted()[:8]
    glm = SpikeHistoryGLM(n_lags=3, max_iter=30, correlated=RGLM().correlated).fit(train)
    copy = clone(RGLM(n_hidden=2, max_iter=10, init=glm)).fit(train)
    assert copy.init is not glm and np.array_equal(copy.init.params_["b"], glm.params_["b"])


@pytest.mark.parametrize("kind", KINDS)
def test_every_estimator_says_not_fitted_the_same_way(kind):
    """Four estimators raised a plain RuntimeError, which ``except NotFittedError`` missed."""
    from v1motion.models.spikes.base import NotFittedError

    m = PSTHPoisson() if kind == "psth" else make_model(kind)
    with pytest.raises(NotFittedError, match="not fitted"):
        m.score(_planted()[:2])
    with pytest.raises(NotFittedError, match="not fitted"):
        m.sample(n_trials=1, n_bins=10)
    with pytest.raises(NotFittedError, match="not fitted"):
        m.n_params_  # noqa: B018


# ----------------------------------------------------------------------------- samples


@pytest.mark.parametrize("kind", KINDS)
def test_samples_are_integer_counts(kind, fitted):
    m = fitted[kind]
    s = m.sample(n_trials=2, n_bins=300, seed=1)
    assert s.dtype == np.int64 and s.shape == (2, 300, 4)
    assert s.min() >= 0 and s.sum() > 0


def test_bernoulli_samples_are_integers_and_gaussian_ones_floats(rng):
    y = rng.poisson(0.5, (2, 80, 3))
    b = CorrelatedGLM(obs="bernoulli", max_iter=50).fit(y > 0).sample(2, 40, seed=0)
    assert b.dtype == np.int64 and set(np.unique(b)) <= {0, 1}
    g = CorrelatedGLM(obs="gaussian", max_iter=50).fit(np.sqrt(y)).sample(2, 40, seed=0)
    assert g.dtype == np.float64 and not np.all(g == np.round(g))
    lds = GaussianLDS(n_latent=1, n_iter=5).fit(y)
    assert lds.sample(2, 40, seed=0, gaussian=True).dtype == np.float64
    assert lds.sample(2, 40, seed=0).dtype == np.int64


def test_a_non_integer_cap_caps_at_its_floor():
    m = IndependentPoisson().fit(np.full((1, 5, 2), 20))
    s = m.sample(n_trials=2, n_bins=50, seed=0, max_count=2.5)
    assert s.dtype == np.int64 and s.max() == 2


@pytest.mark.parametrize("kind", KINDS)
def test_every_estimator_counts_its_parameters(kind, fitted):
    """An information criterion needs ``n_params_`` of every kind; the PSTH baseline had none."""
    m = fitted[kind]
    assert isinstance(m.n_params_, int) and m.n_params_ > 0
    if kind == "psth":
        assert m.n_params_ == m.rate_.size
