"""Slow, obviously-right references for the spike models (loops over neurons, bins and states)."""

import itertools
import math

import numpy as np


def correlated_poisson_loglik(y_bin, A, b, cap=1.0):
    """log p(y) of one bin by the chain rule, one neuron at a time with explicit sums (exp link).

    Counts enter the coupling as ``min(y, cap)`` (``cap=None``: unchanged)."""
    total = 0.0
    for i in range(len(y_bin)):
        eta = b[i]
        for j in range(i):
            eta += A[i][j] * (y_bin[j] if cap is None else min(y_bin[j], cap))
        rate = math.exp(eta)
        total += y_bin[i] * eta - rate - math.lgamma(y_bin[i] + 1)
    return total


def enumerate_states(n_neurons, max_count):
    """All count vectors with entries 0..max_count."""
    return [np.array(s, float) for s in itertools.product(range(max_count + 1), repeat=n_neurons)]


def rglm_eta(y, W0, R, C, A, b, cap=1.0):
    """R-GLM linear predictor for one trial, by explicit loops over bins (inputs ``min(y, cap)``)."""
    T, n = y.shape
    x = np.zeros(R.shape[0])
    eta = np.zeros((T, n))
    for t in range(T):
        g = y[t] if cap is None else np.array([min(v, cap) for v in y[t]])
        eta[t] = C @ x + A @ g + b
        x = W0 @ g + R @ x
    return eta


def glm_eta(y, filters, A, b, cap=1.0):
    """Spike-history GLM predictor, one trial: ``eta_i^t = b_i + sum_j sum_l filters[i,j,l-1] g_j^{t-l} + (A g^t)_i``
    with ``g = min(y, cap)``."""
    T, n = y.shape
    if cap is not None:
        y = np.array([[min(v, cap) for v in row] for row in y])
    n_lags = filters.shape[2]
    eta = np.tile(b, (T, 1)).astype(float)
    for t in range(T):
        for i in range(n):
            for j in range(n):
                for lag in range(1, n_lags + 1):
                    if t - lag >= 0:
                        eta[t, i] += filters[i, j, lag - 1] * y[t - lag, j]
            eta[t, i] += A[i] @ y[t]
    return eta


def linear_recursion(drive, R):
    """``x^t = drive^t + R x^{t-1}``, one trial and bin at a time with numpy products."""
    X = np.zeros_like(drive)
    for k in range(drive.shape[0]):
        x = np.zeros(drive.shape[2])
        for t in range(drive.shape[1]):
            x = drive[k, t] + R @ x
            X[k, t] = x
    return X


def adjoint_recursion(direct, R):
    """``lam^t = direct^{t+1} + R^T lam^{t+1}``, ``lam^{T-1} = 0``, by explicit backward loops."""
    lam = np.zeros_like(direct)
    for k in range(direct.shape[0]):
        for t in range(direct.shape[1] - 2, -1, -1):
            lam[k, t] = direct[k, t + 1] + R.T @ lam[k, t + 1]
    return lam


def stable_recurrence(r_real, r_mod, r_angle, angle_scale=None):
    """Block-diagonal R entry by entry: ``tanh`` real eigenvalues, then rotation blocks scaled by a sigmoid
    (angle ``r_angle (1 - m)``, or ``r_angle angle_scale[j]`` when the unit is given)."""
    d = len(r_real) + 2 * len(r_mod)
    R = np.zeros((d, d))
    for k, p in enumerate(r_real):
        R[k, k] = math.tanh(p)
    for j, (q, a) in enumerate(zip(r_mod, r_angle, strict=True)):
        m = 1.0 / (1.0 + math.exp(-q))
        # the angle in units of the decay per bin, or of a given constant
        a = a * ((1.0 - m) if angle_scale is None else angle_scale[j])
        i = len(r_real) + 2 * j
        R[i, i], R[i, i + 1] = m * math.cos(a), -m * math.sin(a)
        R[i + 1, i], R[i + 1, i + 1] = m * math.sin(a), m * math.cos(a)
    return R


def block_tridiag_dense(D, B):
    """The dense (T k, T k) matrix of one trial's diagonal blocks ``D`` (T, k, k) and sub-diagonal blocks
    ``B[t] = H[t, t-1]`` (``B[0]`` unused), written block by block."""
    T, k = D.shape[0], D.shape[1]
    H = np.zeros((T * k, T * k))
    for t in range(T):
        H[t * k : (t + 1) * k, t * k : (t + 1) * k] = D[t]
        if t > 0:
            H[t * k : (t + 1) * k, (t - 1) * k : t * k] = B[t]
            H[(t - 1) * k : t * k, t * k : (t + 1) * k] = B[t].T
    return H


def poisson_lds_filter(y, F, Q, C, d, mu0, V0):
    """The Poisson LDS's approximate filter for one trial, written from its definition: predict
    ``N(m, P)``, record ``c_i'm + d_i`` and ``c_i'P c_i``, then the mode of ``log N(s; m, P) + log p(y | s)``
    by scipy's BFGS and ``P_f = (P^{-1} + C' diag(exp(C s + d)) C)^{-1}`` there."""
    from scipy.optimize import minimize

    T, n = y.shape
    mean, var = np.zeros((T, n)), np.zeros((T, n))
    mf, Pf = None, None
    for t in range(T):
        m = mu0 if t == 0 else F @ mf
        P = V0 if t == 0 else F @ Pf @ F.T + Q
        for i in range(n):
            mean[t, i] = C[i] @ m + d[i]
            var[t, i] = C[i] @ P @ C[i]
        Pinv = np.linalg.inv(P)

        def neg(s, m=m, Pinv=Pinv, yt=y[t]):
            eta = C @ s + d
            r = s - m
            value = -(yt @ eta - np.exp(eta).sum()) + 0.5 * r @ Pinv @ r
            return value, -(C.T @ (yt - np.exp(eta))) + Pinv @ r

        s = minimize(neg, m, jac=True, method="BFGS", options={"gtol": 1e-12}).x
        mf = s
        Pf = np.linalg.inv(Pinv + C.T @ np.diag(np.exp(C @ s + d)) @ C)
    return mean, var


def previous_states(inputs, W0, R):
    """``[x^{t-1}, 1]`` of every bin, trials stacked: ``x^t = W0 inputs^t + R x^{t-1}``, ``x^{-1} = 0``,
    one bin at a time with numpy products."""
    n_trials, n_bins, _ = inputs.shape
    d = W0.shape[0]
    out = np.zeros((n_trials, n_bins, d + 1))
    for k in range(n_trials):
        x = np.zeros(d)
        for t in range(n_bins):
            out[k, t, :d] = x
            out[k, t, d] = 1.0
            x = W0 @ inputs[k, t] + R @ x
    return out.reshape(n_trials * n_bins, d + 1)


def adjoint_grads(direct, inputs, W0, R):
    """``dL/dR = sum_t lam^t x^{t-1}^T`` and ``dL/dW0 = sum_t lam^t inputs^t^T`` with
    ``lam^t = direct^{t+1} + R^T lam^{t+1}`` (``lam^{T-1} = 0``), the states run forward with numpy
    products, the adjoints backward, every outer product written out."""
    n_trials, n_bins, _ = inputs.shape
    d = W0.shape[0]
    gR, gW0 = np.zeros((d, d)), np.zeros_like(W0)
    for k in range(n_trials):
        xs = [np.zeros(d)]  # xs[t] = x^{t-1}
        for t in range(n_bins):
            xs.append(W0 @ inputs[k, t] + R @ xs[-1])
        lam = np.zeros(d)
        for t in range(n_bins - 1, -1, -1):
            if t < n_bins - 1:
                lam = direct[k, t + 1] + R.T @ lam
            gR += np.outer(lam, xs[t])
            gW0 += np.outer(lam, inputs[k, t])
    return gR, gW0
