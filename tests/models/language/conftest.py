"""Fixtures of the language-model tests: a stream sampled from a planted R-GLM."""

from typing import NamedTuple

import numpy as np
import pytest

from v1motion.models.language.rglm import stream_log_probs


class Planted(NamedTuple):
    """A planted model's stream split for training, with the perplexities a fit is judged against."""

    train: np.ndarray
    held: np.ndarray
    n_words: int
    unigram_ppl: float  # add-one unigram of the training part, on the held-out part
    true_ppl: float  # the planted model itself on the held-out part


def sample_planted(V, H, n, seed=1):
    """Sample a stream from a planted untied R-GLM with strong, slow structure.

    Seed 1 gives a chain that keeps visiting every word (some random draws collapse onto a few).
    """
    rng = np.random.default_rng(seed)
    E = rng.standard_normal((V, H))
    W = rng.standard_normal((V, H))
    r = np.linspace(0.0, 0.8, H)
    c = np.zeros(V)
    out = np.empty(n, np.int64)
    out[0] = 0
    h = np.zeros(H)
    for t in range(n - 1):
        h = r * h + E[out[t]]
        z = W @ h + c
        p = np.exp(z - z.max())
        out[t + 1] = rng.choice(V, p=p / p.sum())
    return out, {"E": E, "W": W, "P": np.eye(H), "r": r, "c": c}


@pytest.fixture(scope="session")
def planted() -> Planted:
    """30,000 words of 12 from a planted model with 4 hidden units (25,000 to train on)."""
    V, H = 12, 4
    seq, params = sample_planted(V, H, 30000)
    train, held = seq[:25000], seq[25000:]
    counts = np.bincount(train, minlength=V) + 1.0
    unigram = float(np.exp(-np.mean(np.log(counts[held[1:]] / counts.sum()))))
    true = float(np.exp(-stream_log_probs(params, held)[0].mean()))
    return Planted(train, held, V, unigram, true)


@pytest.fixture(scope="session")
def planted_stream() -> tuple[np.ndarray, dict]:
    """20,000 words of 12 and the parameters of the planted model (4 hidden units) that drew them."""
    return sample_planted(12, 4, 20000)
