"""Counts as sparse rows, and the products with them that the spike models' fused evaluations share.

The GLM (:class:`~v1motion.models.spikes.glm.SpikeHistoryGLM`) and the R-GLM
(:class:`~v1motion.models.spikes.rglm.RGLM`) take their inputs only at the spikes: the counts laid out
bin by bin (:func:`spike_rows`), added to a drive (:func:`_add_coupling`) or summed against a gradient
(:func:`_spike_outer`, :func:`_add_spike_outer`). Numpy twins in ``tests/naive_spikes.py``.
"""

from __future__ import annotations

import numpy as np
from numba import njit


def spike_rows(yp: np.ndarray, inputs: np.ndarray) -> tuple[np.ndarray, ...]:
    """The non-zero entries of the counts, bin by bin: a CSR layout of the flattened bins.

    Parameters
    ----------
    yp : ndarray of shape (n_trials, n_bins, n_neurons)
        Counts.
    inputs : ndarray of the same shape
        The counts as they enter the model (``g(y)``), zero exactly where the counts are zero.

    Returns
    -------
    indptr : int64 ndarray of shape (n_trials * n_bins + 1,)
        The entries of flat bin ``r = k * n_bins + t`` are ``indptr[r]:indptr[r + 1]``.
    indices : int64 ndarray
        Their neurons.
    counts, values : float64 ndarrays
        Their counts and their inputs.
    flat : int64 ndarray
        Their flat indices in ``yp`` (``r * n_neurons + neuron``).
    """
    n = yp.shape[-1]
    flat = np.flatnonzero(yp)
    rows, indices = np.divmod(flat, n)
    n_rows = yp.size // n if n else 0
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n_rows), out=indptr[1:])
    counts = np.asarray(yp, dtype=np.float64).ravel()[flat]
    values = np.asarray(inputs, dtype=np.float64).ravel()[flat]
    return indptr, indices.astype(np.int64), counts, values, flat


@njit(cache=True, nogil=True)
def _add_coupling(H, AT, indptr, indices, values):
    """``H += S M`` in place for the sparse ``S`` with rows ``indptr``, columns ``indices`` and entries
    ``values`` (CSR): the within-bin coupling ``A g(y)``, taken only at the spikes, with ``M = A.T`` and
    :func:`spike_rows`; the GLM's history drive with its features and ``M = W.T``."""
    n = H.shape[1]
    for r in range(H.shape[0]):
        for p in range(indptr[r], indptr[r + 1]):
            j = indices[p]
            v = values[p]
            for i in range(n):
                H[r, i] += v * AT[j, i]


@njit(cache=True, nogil=True)
def _spike_outer(G, indptr, indices, values, n_neurons):
    """``G^T S`` of shape (G.shape[1], n_neurons) for the sparse ``S`` of :func:`_add_coupling` with
    ``n_neurons`` columns: ``sum_r G[r] g(y^r)^T`` summed only at the spikes (``dL/dA`` from
    ``G = dL/deta``), or the GLM's ``dL/dW`` from its features."""
    out = np.zeros((n_neurons, G.shape[1]))
    _add_spike_outer(out, G, indptr, indices, values)
    return out.T


@njit(cache=True, nogil=True)
def _add_spike_outer(out, G, indptr, indices, values):
    """``out += (G^T S)^T`` in place, ``out`` of shape (n_neurons, G.shape[1]): what
    :func:`_spike_outer` returns (transposed), added to a running sum."""
    m = G.shape[1]
    for r in range(G.shape[0]):
        for p in range(indptr[r], indptr[r + 1]):
            j = indices[p]
            v = values[p]
            for i in range(m):
                out[j, i] += v * G[r, i]
