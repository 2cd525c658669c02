"""Numba kernels of the language model against their numpy twins."""

import numpy as np
import pytest

import tests.naive_language as naive
from v1motion.models.language import kernels


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_diag_scan_forward_matches_twin(rng, dtype):
    x = rng.standard_normal((7, 3, 5)).astype(dtype)
    r = rng.uniform(-1, 1, 5).astype(dtype)
    h0 = rng.standard_normal((3, 5)).astype(dtype)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(
        kernels.diag_scan_forward(x, r, h0), naive.diag_scan_forward(x, r, h0), rtol=tol, atol=tol
    )


def test_diag_scan_backward_matches_twin(rng):
    x = rng.standard_normal((6, 2, 4))
    r = rng.uniform(-0.99, 0.99, 4)
    h0 = rng.standard_normal((2, 4))
    h = kernels.diag_scan_forward(x, r, h0)
    dh = rng.standard_normal(x.shape)
    dx, dr = kernels.diag_scan_backward(dh, r, h, h0)
    dx_n, dr_n = naive.diag_scan_backward(dh, r, h, h0)
    np.testing.assert_allclose(dx, dx_n, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dr, dr_n, rtol=1e-10, atol=1e-12)


def test_scan_edge_cases(rng):
    # zeros stay zero; a constant input with r = 0 is passed through; non-contiguous views work
    z = np.zeros((4, 2, 3), np.float32)
    assert not kernels.diag_scan_forward(z, np.full(3, 0.5, np.float32), z[0]).any()
    c = np.ones((4, 2, 3))
    np.testing.assert_array_equal(kernels.diag_scan_forward(c, np.zeros(3), np.zeros((2, 3))), c)
    big = rng.standard_normal((8, 4, 6))
    view = big[::2, ::2, ::2]
    r = rng.uniform(-1, 1, 3)
    np.testing.assert_allclose(
        kernels.diag_scan_forward(view, r, view[0]), naive.diag_scan_forward(view, r, view[0])
    )
    with pytest.raises(ValueError, match="r must be"):
        kernels.diag_scan_forward(big, np.zeros(5), np.zeros((4, 6)))


def test_scatter_add_rows_accumulates_repeats(rng):
    target = rng.standard_normal((6, 3))
    rows = np.array([1, 4, 1, 0, 1])
    values = rng.standard_normal((5, 3))
    expected = target.copy()
    naive.scatter_add_rows(expected, rows, values)
    kernels.scatter_add_rows(target, rows, values)
    np.testing.assert_allclose(target, expected)
    with pytest.raises(IndexError, match="out of range"):
        kernels.scatter_add_rows(target, np.array([6]), values[:1])
    with pytest.raises(ValueError, match="C-contiguous"):
        kernels.scatter_add_rows(np.zeros((3, 6)).T, rows, values)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adam_update_matches_twin_and_flushes_subnormals(rng, dtype):
    shape = (5, 4)
    p, g = rng.standard_normal(shape).astype(dtype), rng.standard_normal(shape).astype(dtype)
    m, v = rng.standard_normal(shape).astype(dtype), rng.random(shape).astype(dtype)
    g[0] = 0.0
    m[0] = 1e-36  # decays into the subnormal range without the flush
    v[0] = 1e-36
    p2, m2, v2 = p.copy(), m.copy(), v.copy()
    kernels.adam_update(p, g, m, v, 0.01)
    naive.adam_update(p2, g, m2, v2, 0.01)
    tol = 1e-6 if dtype == np.float32 else 1e-12
    for a, b in ((p, p2), (m, m2), (v, v2)):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)
    assert not m[0].any() and not v[0].any()
    with pytest.raises(ValueError, match="C-contiguous"):
        kernels.adam_update(p.T, g, m, v, 0.01)
