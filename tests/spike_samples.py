"""Spike counts made on the fly for the spike-model tests (models and service)."""

from __future__ import annotations

import numpy as np


def bursty_counts(trials=6, bins=300, n=3, seed=0) -> np.ndarray:
    """Each neuron switches between 0.05 and 1.5 spikes/bin, staying ~20 bins in each state: its
    own recent spikes predict the next bin, which a GLM with a few lags learns."""
    rng = np.random.default_rng(seed)
    flips = rng.random((trials, bins, n)) < 0.05
    state = np.cumsum(flips, axis=1) % 2
    return rng.poisson(np.where(state > 0, 1.5, 0.05)).astype(float)
