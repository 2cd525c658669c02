"""Slow, obviously-right references for the spike models (loops over neurons, bins and states)."""

import itertools
import math

import numpy as np


def correlated_poisson_loglik(y_bin, A, b):
    """log p(y) of one bin by the chain rule, one neuron at a time with explicit sums (exp link)."""
    total = 0.0
    for i in range(len(y_bin)):
        eta = b[i]
        for j in range(i):
            eta += A[i][j] * y_bin[j]
        rate = math.exp(eta)
        total += y_bin[i] * eta - rate - math.lgamma(y_bin[i] + 1)
    return total


def enumerate_states(n_neurons, max_count):
    """All count vectors with entries 0..max_count."""
    return [np.array(s, float) for s in itertools.product(range(max_count + 1), repeat=n_neurons)]


def rglm_eta(y, W0, R, C, A, b):
    """R-GLM linear predictor for one trial, by explicit loops over bins."""
    T, n = y.shape
    x = np.zeros(R.shape[0])
    eta = np.zeros((T, n))
    for t in range(T):
        eta[t] = C @ x + A @ y[t] + b
        x = W0 @ y[t] + R @ x
    return eta


def glm_eta(y, filters, A, b):
    """Spike-history GLM predictor, one trial: ``eta_i^t = b_i + sum_j sum_l filters[i,j,l-1] y_j^{t-l} + (A y^t)_i``."""
    T, n = y.shape
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
