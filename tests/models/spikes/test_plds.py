"""The Poisson LDS: block-tridiagonal algebra against dense numpy, derivatives against finite differences,
the filter against its numpy twin, and recovery of a planted model."""

import logging

import numpy as np
import pytest
from scipy import integrate, stats

from tests import naive_spikes as naive
from v1motion.models.spikes.glm import IndependentPoisson
from v1motion.models.spikes.plds import (
    PoissonLDS,
    block_tridiag_cholesky,
    block_tridiag_inverse_blocks,
    block_tridiag_logdet,
    block_tridiag_solve,
    fit_transition_stationary,
    laplace_filter,
    poisson_lognormal_logpmf,
    stationary_dynamics,
    stationary_parameter,
    transition_objective,
    whiten_latents,
)


def _random_block_tridiag(rng, n_trials, n_bins, k):
    """Positive definite block-tridiagonal matrices: diagonal blocks dominate the off-diagonal ones."""
    B = rng.normal(0, 0.5, (n_trials, n_bins, k, k))
    A = rng.normal(0, 1, (n_trials, n_bins, k, k))
    D = A @ A.transpose(0, 1, 3, 2) + (1 + 2 * k) * np.eye(k)
    return D, B


@pytest.mark.parametrize("shape", [(3, 9, 3), (2, 1, 2), (1, 6, 1), (2, 5, 4)])
def test_block_tridiagonal_algebra_matches_dense_numpy(shape, rng):
    D, B = _random_block_tridiag(rng, *shape)
    g = rng.normal(size=shape)
    L, M = block_tridiag_cholesky(D, B)
    x = block_tridiag_solve(L, M, g)
    S, So = block_tridiag_inverse_blocks(L, M)
    logdet = block_tridiag_logdet(L)
    n_trials, T, k = shape
    for r in range(n_trials):
        H = naive.block_tridiag_dense(D[r], B[r])
        np.testing.assert_allclose(x[r].ravel(), np.linalg.solve(H, g[r].ravel()), atol=1e-12)
        Hi = np.linalg.inv(H)
        for t in range(T):
            np.testing.assert_allclose(
                S[r, t], Hi[t * k : (t + 1) * k, t * k : (t + 1) * k], atol=1e-12
            )
            if t > 0:
                blk = Hi[t * k : (t + 1) * k, (t - 1) * k : t * k]
                np.testing.assert_allclose(So[r, t], blk, atol=1e-12)
        assert np.all(So[r, 0] == 0)
        assert logdet[r] == pytest.approx(np.linalg.slogdet(H)[1], rel=1e-12)


def test_block_tridiagonal_solver_takes_views_and_refuses_indefinite(rng):
    D, B = _random_block_tridiag(rng, 2, 6, 2)
    g = rng.normal(size=(2, 12, 2))[:, ::2]  # a non-contiguous view
    L, M = block_tridiag_cholesky(D, B)
    H = naive.block_tridiag_dense(D[1], B[1])
    x = block_tridiag_solve(L, M, g)
    np.testing.assert_allclose(x[1].ravel(), np.linalg.solve(H, g[1].ravel()), atol=1e-12)
    D[1, 3] = -np.eye(2)
    with pytest.raises(np.linalg.LinAlgError, match="trial 1, bin 3"):
        block_tridiag_cholesky(D, B)


def _planted(seed=0, n=10, rate=-1.0):
    """k = 2 latents rotating slowly (eigenvalues 0.97 e^{+-0.1i}), ``n`` neurons."""
    r = np.random.default_rng(seed)
    th = 0.1
    m = PoissonLDS(n_latent=2, seed=seed)
    m.F_ = 0.97 * np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    m.Q_ = (1 - 0.97**2) * np.eye(2)
    m.C_ = r.normal(0, 1, (n, 2))
    m.d_ = np.full(n, rate)
    m.mu0_, m.V0_, m.n_neurons_ = np.zeros(2), np.eye(2), n
    return m


def test_e_step_gradient_and_hessian_match_finite_differences(rng):
    m = _planted(n=4)
    p = m._params()
    y = m.sample(n_trials=2, n_bins=6, seed=3)
    s = rng.normal(0, 0.5, (2, 6, 2))
    g = PoissonLDS.log_posterior_grad(s, y, p)
    D, Bp = PoissonLDS.neg_hessian_blocks(s, p)
    h = 1e-5
    num_g = np.zeros_like(s)
    num_h = np.zeros((2, 12, 12))
    for idx in np.ndindex(s.shape):
        e = np.zeros_like(s)
        e[idx] = h
        r = idx[0]
        up, dn = PoissonLDS.log_posterior(s + e, y, p), PoissonLDS.log_posterior(s - e, y, p)
        num_g[idx] = (up[r] - dn[r]) / (2 * h)
        dg = PoissonLDS.log_posterior_grad(s + e, y, p) - PoissonLDS.log_posterior_grad(s - e, y, p)
        num_h[r, :, idx[1] * 2 + idx[2]] = -dg[r].ravel() / (2 * h)
    np.testing.assert_allclose(g, num_g, rtol=1e-6, atol=1e-6)
    for r in range(2):
        dense = naive.block_tridiag_dense(D[r], np.broadcast_to(Bp, (6, 2, 2)))
        np.testing.assert_allclose(dense, num_h[r], rtol=1e-5, atol=1e-6)


def test_expected_poisson_loglik_of_the_m_step_and_its_newton_steps(rng):
    """The (C, d) objective against its definition, and the Newton steps reach its maximum."""
    N, k, n = 200, 2, 3
    m = rng.normal(size=(N, k))
    A = rng.normal(0, 0.3, (N, k, k))
    V = A @ A.transpose(0, 2, 1) + 0.05 * np.eye(k)
    C, d = rng.normal(0, 0.5, (n, k)), rng.normal(-1, 0.3, n)
    y = rng.poisson(np.exp(m @ C.T + d)).astype(float)
    obj = PoissonLDS.expected_loglik_cd(C, d, m, V, y)
    lin = m @ C.T + d
    quad = np.einsum("tab,na,nb->tn", V, C, C)
    np.testing.assert_allclose(obj, np.sum(y * lin - np.exp(lin + quad / 2), axis=0), rtol=1e-12)
    fit = PoissonLDS()
    fit.newton_tol = 1e-14  # Newton to rounding, so the gradient check below is tight
    C1, d1 = fit._update_cd(C, d, m, V, y, 30)
    h = 1e-6
    for i, j in np.ndindex(C1.shape):
        E = np.zeros_like(C1)
        E[i, j] = h
        up = PoissonLDS.expected_loglik_cd(C1 + E, d1, m, V, y)[i]
        dn = PoissonLDS.expected_loglik_cd(C1 - E, d1, m, V, y)[i]
        assert (
            abs(up - dn) / (2 * h) < 1e-4
        )  # a stationary point of a concave objective: the maximum
    assert np.all(PoissonLDS.expected_loglik_cd(C1, d1, m, V, y) >= obj)


def test_filter_matches_its_numpy_twin():
    m = _planted(seed=4, n=4)
    y = m.sample(n_trials=2, n_bins=25, seed=5)
    mean, var = laplace_filter(y, m.F_, m.Q_, m.C_, m.d_, m.mu0_, m.V0_, tol=1e-16)
    for r in range(2):
        ref_mean, ref_var = naive.poisson_lds_filter(y[r], m.F_, m.Q_, m.C_, m.d_, m.mu0_, m.V0_)
        np.testing.assert_allclose(mean[r], ref_mean, atol=1e-6)
        np.testing.assert_allclose(var[r], ref_var, atol=1e-6)


def test_poisson_lognormal_pmf_against_numerical_integration():
    """Against scipy's adaptive quadrature, including a wide log-rate with spikes (the integrand's peak far
    in the tail of the Gaussian) and a zero variance (the Poisson)."""
    cases = [
        (0, -3.0, 2.0),
        (1, -1.0, 0.5),
        (4, 0.5, 1.5),
        (0, -4.3, 5.0),
        (2, -4.3, 5.0),
        (3, -2.0, 9.0),
    ]
    for y, mu, var in cases:
        sd = np.sqrt(var)
        ref = integrate.quad(
            lambda e, y=y, mu=mu, sd=sd: (
                stats.poisson.pmf(y, np.exp(e)) * stats.norm.pdf(e, mu, sd)
            ),
            mu - 14 * sd,
            mu + 14 * sd,
            points=[np.log(y + 0.5)],
            limit=500,
            epsabs=1e-15,
        )[0]
        got = poisson_lognormal_logpmf(np.array([y]), np.array([mu]), np.array([var]))[0]
        assert got == pytest.approx(np.log(ref), abs=1e-5)
    assert poisson_lognormal_logpmf(3.0, 0.2, 0.0) == pytest.approx(
        stats.poisson.logpmf(3, np.exp(0.2))
    )
    total = np.exp(poisson_lognormal_logpmf(np.arange(80.0), np.full(80, 0.3), np.full(80, 0.25)))
    assert total.sum() == pytest.approx(1.0, abs=1e-6)


def test_variational_em_recovers_the_planted_dynamics_and_rates():
    true = _planted(seed=0)
    y = true.sample(n_trials=8, n_bins=500, seed=1)
    fit = PoissonLDS(n_latent=2, n_iter=300).fit(y)
    assert fit.converged_ and fit.stop_reason_ == "ftol" and abs(fit.final_change_) < fit.tol
    # variational EM ascends the ELBO (a partial E-step included), up to rounding
    assert np.all(np.diff(fit.loglik_) > -1e-9 * abs(fit.loglik_[-1]))
    ev_true = np.sort_complex(np.linalg.eigvals(true.F_))
    ev_fit = np.sort_complex(np.linalg.eigvals(fit.F_))
    np.testing.assert_allclose(ev_fit, ev_true, atol=0.02)  # 0.965 +- 0.097i

    # the rates: the fitted model's one-step-ahead predicted rates on fresh trials follow the true model's
    fresh = true.sample(n_trials=2, n_bins=500, seed=2)
    r_true, r_fit = true.predict_rate(fresh), fit.predict_rate(fresh)
    assert np.corrcoef(np.log(r_fit).ravel(), np.log(r_true).ravel())[0, 1] > 0.95
    np.testing.assert_allclose(r_fit.mean(axis=(0, 1)), r_true.mean(axis=(0, 1)), rtol=0.15)


def test_true_model_beats_the_homogeneous_poisson_held_out():
    from v1motion.models.spikes.evaluation import bits_per_spike

    true = _planted(seed=7)
    y = true.sample(n_trials=6, n_bins=400, seed=8)
    base = IndependentPoisson().fit(y[:4])
    test = y[4:]
    ll_true = true.log_likelihood(test)
    gain = bits_per_spike(ll_true, base.log_likelihood(test), test.sum())
    assert gain > 0.1
    assert np.all(
        true.log_likelihood(test, per_trial=True) > base.log_likelihood(test, per_trial=True)
    )
    rate = true.predict_rate(test)
    assert rate.shape == test.shape and np.all(np.isfinite(rate)) and np.all(rate > 0)


def test_the_cap_and_the_tolerance_are_reported(caplog):
    y = _planted(seed=2).sample(n_trials=3, n_bins=150, seed=3)
    with caplog.at_level("WARNING", logger="v1motion.models.spikes.plds"):
        m = PoissonLDS(n_latent=2, n_iter=2, init_iter=2).fit(y)
    assert (m.converged_, m.stop_reason_, m.n_iter_, m.grad_norm_) == (False, "max_iter", 2, None)
    assert np.isfinite(m.final_change_) and abs(m.final_change_) > m.tol
    assert any("n_iter=2" in r.getMessage() for r in caplog.records)
    loose = PoissonLDS(n_latent=2, n_iter=50, tol=1.0, init_iter=2).fit(y)
    assert loose.converged_ and loose.stop_reason_ == "ftol" and loose.n_iter_ == 2


def test_laplace_em_runs_and_smoothed_latents_have_their_shape():
    y = _planted(seed=5).sample(n_trials=2, n_bins=120, seed=6)
    quiet = logging.getLogger("v1motion.models.spikes")
    quiet.setLevel(logging.ERROR)  # its 3 iterations' warning; not left for the tests after it
    try:
        m = PoissonLDS(n_latent=2, n_iter=3, init_iter=2, method="laplace", latent_scale="free")
        m.fit(y)
    finally:
        quiet.setLevel(logging.NOTSET)
    assert np.isfinite(m.log_likelihood(y)) and np.isfinite(
        m.log_likelihood(y, predictive="poisson")
    )
    assert m.smoothed_latents(y).shape == (2, 120, 2)
    assert m.n_params_ == 4 + 3 + 10 * 2 + 10 + 2 + 3


def test_samples_have_their_shape_and_stay_finite():
    m = _planted(seed=9)
    s = m.sample(n_trials=3, n_bins=400, seed=1)
    assert s.shape == (3, 400, 10) and np.all(np.isfinite(s)) and np.all(s >= 0)
    assert np.array_equal(s, m.sample(n_trials=3, n_bins=400, seed=1))
    assert np.all(s == np.round(s))


def test_samples_are_capped_as_the_other_models_samples_are(caplog):
    m = _planted(seed=9, rate=6.0)  # e^6 = 403 counts per bin on average: far above the cap
    with caplog.at_level("WARNING", logger="v1motion.models.spikes.plds"):
        s = m.sample(n_trials=2, n_bins=50, seed=1, max_count=100)
    assert s.max() == 100
    assert any("hit the cap of 100" in r.getMessage() for r in caplog.records)
    free = m.sample(n_trials=2, n_bins=50, seed=1, max_count=None)
    assert free.max() > 100
    assert np.array_equal(s, np.minimum(free, 100))  # the same draws, capped
    with pytest.raises(ValueError, match="max_count"):
        m.sample(max_count=0)


def test_unfitted_wrong_shape_and_bad_options_are_refused(rng):
    with pytest.raises(RuntimeError, match="not fitted"):
        PoissonLDS().log_likelihood(np.zeros((5, 3)))
    with pytest.raises(ValueError, match="valid: \\['variational', 'laplace'\\]"):
        PoissonLDS(method="gibbs").fit(np.zeros((5, 3)))
    m = _planted(n=3)
    with pytest.raises(ValueError, match="fitted on 3"):
        m.log_likelihood(np.zeros((5, 4)))
    with pytest.raises(ValueError, match="valid: \\['lognormal', 'poisson'\\]"):
        m.log_likelihood(np.zeros((5, 3)), predictive="mean")


# ----------------------------------------------------------------------------- latent_scale="stationary"
def _transition_stats(rng, k=2, n_bins=400):
    """Sufficient statistics of a random latent path (a 'posterior' with random covariances)."""
    F = 0.8 * np.linalg.qr(rng.normal(size=(k, k)))[0]
    s = np.zeros((n_bins, k))
    for t in range(1, n_bins):
        s[t] = F @ s[t - 1] + rng.normal(0, 0.7, k)
    A = rng.normal(0, 0.2, (n_bins, k, k))
    V = A @ A.transpose(0, 2, 1)
    S00 = s[:-1].T @ s[:-1] + V[:-1].sum(axis=0)
    S11 = s[1:].T @ s[1:] + V[1:].sum(axis=0)
    S10 = s[1:].T @ s[:-1] + 0.5 * (V[1:] + V[:-1]).sum(axis=0) @ F.T
    return S00, S10, S11, n_bins - 1


def test_stationary_dynamics_keep_the_latents_at_unit_scale(rng):
    for scale in (0.01, 1.0, 30.0, 1e4):
        B = rng.normal(0, scale, (4, 4))
        F, Q = stationary_dynamics(B)
        np.testing.assert_allclose(F @ F.T + Q, np.eye(4), atol=1e-10)
        assert np.linalg.norm(F, 2) < 1 and np.all(np.linalg.eigvalsh(Q) > 0)
        if scale < 1e4:  # the inverse map, away from ||F|| = 1
            np.testing.assert_allclose(stationary_parameter(F), B, rtol=1e-6, atol=1e-8)


def test_transition_objective_and_its_gradient(rng):
    S00, S10, S11, N = _transition_stats(rng, k=3)
    B = rng.normal(size=(3, 3))
    F, Q = stationary_dynamics(B)
    val, grad = transition_objective(B, S00, S10, S11, N)
    Qi = np.linalg.inv(Q)
    ref = -N / 2 * np.linalg.slogdet(Q)[1] - 0.5 * np.trace(
        Qi @ (S11 - F @ S10.T - S10 @ F.T + F @ S00 @ F.T)
    )
    assert val == pytest.approx(ref, rel=1e-12)
    h = 1e-6
    num = np.zeros_like(B)
    for idx in np.ndindex(B.shape):
        E = np.zeros_like(B)
        E[idx] = h
        up = transition_objective(B + E, S00, S10, S11, N)[0]
        dn = transition_objective(B - E, S00, S10, S11, N)[0]
        num[idx] = (up - dn) / (2 * h)
    np.testing.assert_allclose(grad, num, rtol=1e-6, atol=1e-6 * np.abs(grad).max())


def test_stationary_m_step_raises_its_objective_to_the_brute_force_maximum(rng):
    from scipy.optimize import minimize

    S00, S10, S11, N = _transition_stats(rng, k=2)
    B0 = rng.normal(0, 0.3, (2, 2))
    B1 = fit_transition_stationary(B0, S00, S10, S11, N)
    v0 = transition_objective(B0, S00, S10, S11, N)[0]
    v1 = transition_objective(B1, S00, S10, S11, N)[0]
    assert v1 > v0
    assert np.linalg.norm(stationary_dynamics(B1)[0], 2) < 1

    def neg(f):  # directly over F, Q = I - F F' (a different parametrisation), derivative-free
        F = f.reshape(2, 2)
        Q = np.eye(2) - F @ F.T
        ev = np.linalg.eigvalsh(Q)
        if ev.min() <= 1e-12:
            return 1e12
        Qi = np.linalg.inv(Q)
        R = S11 - F @ S10.T - S10 @ F.T + F @ S00 @ F.T
        return N / 2 * np.sum(np.log(ev)) + 0.5 * np.sum(Qi * R)

    best = min(
        (
            minimize(
                neg,
                x0,
                method="Nelder-Mead",
                options={"xatol": 1e-10, "fatol": 1e-10, "maxiter": 20000},
            )  # fmt: skip
            for x0 in (np.zeros(4), 0.5 * np.eye(2).ravel(), rng.normal(0, 0.3, 4))
        ),
        key=lambda r: r.fun,
    )
    assert v1 == pytest.approx(-best.fun, abs=1e-6 * abs(v1))
    np.testing.assert_allclose(stationary_dynamics(B1)[0].ravel(), best.x, atol=1e-4)
    # a prior on B shrinks it
    Bp = fit_transition_stationary(B0, S00, S10, S11, N, l2=10.0 * N)
    assert np.linalg.norm(Bp) < np.linalg.norm(B1)
    # warm-started at its maximum it stays there
    assert transition_objective(fit_transition_stationary(B1, S00, S10, S11, N), S00, S10, S11, N)[
        0
    ] >= v1 - 1e-9 * abs(v1)


def test_whitening_is_an_exact_change_of_variables(rng):
    m = _planted(seed=3, n=6)
    m.F_ = np.array([[0.9, 0.3], [-0.1, 0.7]])
    m.Q_ = np.array([[2.0, 0.4], [0.4, 0.5]])
    m.mu0_, m.V0_ = np.array([0.3, -1.0]), np.array([[1.5, 0.2], [0.2, 0.8]])
    m.C_ = 0.3 * m.C_
    y = m.sample(n_trials=2, n_bins=200, seed=4)
    w = _planted(seed=3, n=6)
    w.F_, w.Q_, w.C_, w.mu0_, w.V0_, L = whiten_latents(m.F_, m.Q_, m.C_, m.mu0_, m.V0_)
    w.d_ = m.d_
    np.testing.assert_allclose(w.F_ @ w.F_.T + w.Q_, np.eye(2), atol=1e-12)
    assert np.linalg.norm(w.F_, 2) < 1
    np.testing.assert_allclose(L @ L.T, m.F_ @ L @ L.T @ m.F_.T + m.Q_, atol=1e-12)
    assert w.log_likelihood(y) == pytest.approx(m.log_likelihood(y), rel=1e-9)
    # the log-posterior of correspondingly transformed paths differs by a constant (the Jacobian)
    s = rng.normal(size=(2, 200, 2))
    sw = s @ np.linalg.inv(L).T
    diff = PoissonLDS.log_posterior(sw, y, w._params()) - PoissonLDS.log_posterior(
        s, y, m._params()
    )
    np.testing.assert_allclose(
        diff, 0.0, atol=1e-8 * np.abs(PoissonLDS.log_posterior(s, y, m._params())).max()
    )


@pytest.mark.parametrize("l2", [0.0, 1.0])
def test_stationary_scale_recovers_the_planted_model(l2):
    """As the free fit above: eigenvalues of F, and the predicted rates on fresh trials."""
    true = _planted(seed=0)
    y = true.sample(n_trials=8, n_bins=500, seed=1)
    fit = PoissonLDS(n_latent=2, n_iter=300, latent_scale="stationary", l2_loadings=l2).fit(y)
    assert fit.converged_ and fit.stop_reason_ == "ftol" and abs(fit.final_change_) < fit.tol
    assert np.all(np.diff(fit.loglik_) > -1e-9 * abs(fit.loglik_[-1]))  # the penalised ELBO ascends
    np.testing.assert_allclose(fit.F_ @ fit.F_.T + fit.Q_, np.eye(2), atol=1e-9)
    ev_true = np.sort_complex(np.linalg.eigvals(true.F_))
    np.testing.assert_allclose(np.sort_complex(np.linalg.eigvals(fit.F_)), ev_true, atol=0.02)
    fresh = true.sample(n_trials=2, n_bins=500, seed=2)
    r_true, r_fit = true.predict_rate(fresh), fit.predict_rate(fresh)
    assert np.corrcoef(np.log(r_fit).ravel(), np.log(r_true).ravel())[0, 1] > 0.95
    np.testing.assert_allclose(r_fit.mean(axis=(0, 1)), r_true.mean(axis=(0, 1)), rtol=0.15)
    # the true loadings are in units of the true latents' stationary sd (1): recovered up to a rotation
    CC = true.C_ @ true.C_.T
    np.testing.assert_allclose(fit.C_ @ fit.C_.T, CC, atol=0.2 * np.abs(CC).max())
    assert fit.n_params_ == 4 + 10 * 2 + 10 + 2 + 3


def test_constrained_m_step_alone_ascends_and_the_penalty_shrinks_the_loadings():
    """With the parameter-expanded step switched off (every M-step the L-BFGS step for B), EM still
    ascends the penalised ELBO and keeps F F' + Q = I; a strong L2 shrinks the loadings."""
    y = _planted(seed=2).sample(n_trials=3, n_bins=200, seed=3)

    class Constrained(PoissonLDS):
        def _px_step(self, *args):
            return None

    fit = Constrained(n_latent=2, n_iter=15, latent_scale="stationary", l2_loadings=1.0).fit(y)
    assert fit.px_steps_ == 0
    assert np.all(np.diff(fit.loglik_) > -1e-9 * abs(fit.loglik_[-1]))
    np.testing.assert_allclose(fit.F_ @ fit.F_.T + fit.Q_, np.eye(2), atol=1e-9)
    assert np.linalg.norm(fit.F_, 2) < 1
    both = PoissonLDS(n_latent=2, n_iter=15, latent_scale="stationary", l2_loadings=1.0).fit(y)
    assert both.px_steps_ > 0 and np.all(np.diff(both.loglik_) > -1e-9 * abs(both.loglik_[-1]))
    # a prior on B too: still monotone, and it keeps F further from ||F|| = 1
    dyn = Constrained(
        n_latent=2, n_iter=15, latent_scale="stationary", l2_loadings=1.0, l2_dynamics=1e3
    ).fit(y)
    assert np.all(np.diff(dyn.loglik_) > -1e-9 * abs(dyn.loglik_[-1]))
    assert np.linalg.norm(dyn.F_, 2) < np.linalg.norm(fit.F_, 2)
    opts = {"n_latent": 2, "n_iter": 15, "latent_scale": "stationary"}
    weak = PoissonLDS(**opts).fit(y)
    strong = PoissonLDS(**opts, l2_loadings=1e3).fit(y)
    assert np.linalg.norm(strong.C_) < 0.5 * np.linalg.norm(weak.C_)


def test_penalised_newton_step_reaches_the_penalised_maximum(rng):
    N, k, n = 200, 2, 3
    m = rng.normal(size=(N, k))
    V = np.broadcast_to(0.05 * np.eye(k), (N, k, k)).copy()
    C, d = rng.normal(0, 0.5, (n, k)), rng.normal(-1, 0.3, n)
    y = rng.poisson(np.exp(m @ C.T + d)).astype(float)
    fit = PoissonLDS(l2_loadings=20.0)
    fit.newton_tol = 1e-14
    C1, d1 = fit._update_cd(C, d, m, V, y, 30)
    obj = PoissonLDS.expected_loglik_cd(C1, d1, m, V, y) - 10.0 * np.sum(C1**2, axis=1)
    h = 1e-6
    for i, j in np.ndindex(C1.shape):
        E = np.zeros_like(C1)
        E[i, j] = h
        up = PoissonLDS.expected_loglik_cd(C1 + E, d1, m, V, y)[i] - 10.0 * np.sum((C1 + E)[i] ** 2)
        dn = PoissonLDS.expected_loglik_cd(C1 - E, d1, m, V, y)[i] - 10.0 * np.sum((C1 - E)[i] ** 2)
        assert abs(up - dn) / (2 * h) < 1e-4
    free = PoissonLDS()._update_cd(C, d, m, V, y, 30)[0]
    assert np.all(np.linalg.norm(C1, axis=1) < np.linalg.norm(free, axis=1))
    assert np.all(np.isfinite(obj))


@pytest.mark.parametrize("scale", ["stationary", "free"])
def test_the_cap_and_the_tolerance_are_reported_for_both_scales(scale):
    y = _planted(seed=2).sample(n_trials=3, n_bins=150, seed=3)
    m = PoissonLDS(n_latent=2, n_iter=2, init_iter=2, latent_scale=scale, l2_loadings=1.0).fit(y)
    assert (m.converged_, m.stop_reason_, m.n_iter_) == (False, "max_iter", 2)
    assert abs(m.final_change_) > m.tol
    loose = PoissonLDS(n_latent=2, n_iter=50, tol=1.0, init_iter=2, latent_scale=scale).fit(y)
    assert loose.converged_ and loose.stop_reason_ == "ftol" and loose.n_iter_ == 2


def test_bad_scale_options_are_refused():
    with pytest.raises(ValueError, match="valid: \\['stationary', 'free'\\]"):
        PoissonLDS(latent_scale="unit").fit(np.zeros((5, 3)))
    with pytest.raises(ValueError, match="l2_loadings"):
        PoissonLDS(l2_loadings=-1.0).fit(np.zeros((5, 3)))
