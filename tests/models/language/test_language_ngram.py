"""Kneser-Ney, the decaying caches and mixture weights against hand-computed values."""

import numpy as np
import pytest
from scipy.optimize import minimize_scalar

from v1motion.models.language.ngram import (
    DecayingCache,
    KneserNeyLM,
    fit_mixture,
    mixture_log_probs,
    modified_kn_discounts,
)

A, B, C, D = 0, 1, 2, 3  # D never occurs in training
TOY = np.array([A, B, A, B, C, A])
# Hand-computed (see the derivation in each test). Bigram counts: ab 2, ba 1, bc 1, ca 1.
# Unigram continuation counts N1+(.w): a 2 (ba, ca), b 1 (ab), c 1 (bc), d 0 -> total 4.


def _p(model, stream):
    return np.exp(model.log_probs(np.array(stream)))


def test_bigram_kn_hand_computed():
    kn = KneserNeyLM(order=2, discounts=[(0.5, 1.0, 1.5), (0.6, 1.1, 1.6)]).fit(TOY, 4)
    # unigram level: gamma = (0.5 * 2 [b, c seen once] + 1.0 * 1 [a twice]) / 4 = 0.5
    #   p1(a) = (2 - 1.0)/4 + 0.5/4 = 0.375; p1(b) = p1(c) = 0.5/4 + 0.125 = 0.25; p1(d) = 0.125
    # context b: ba 1, bc 1 -> gamma = 0.6 * 2 / 2 = 0.6
    #   p(a|b) = 0.4/2 + 0.6 * 0.375 = 0.425
    # context a: ab 2 -> gamma = 1.1 / 2 = 0.55
    #   p(b|a) = 0.9/2 + 0.55 * 0.25 = 0.5875;  p(a|a) = 0.55 * 0.375 = 0.20625
    # unseen context d passes the unigram level through: p(c|d) = 0.25
    np.testing.assert_allclose(_p(kn, [B, A]), [0.425])
    np.testing.assert_allclose(_p(kn, [A, B, D]), [0.5875, 0.6 * 0.125])
    np.testing.assert_allclose(_p(kn, [A, A]), [0.20625])
    np.testing.assert_allclose(_p(kn, [D, C]), [0.25])


def test_trigram_kn_uses_continuation_counts_below_the_top_order():
    kn = KneserNeyLM(order=3, discounts=[(0.5, 1.0, 1.5), (0.6, 1.1, 1.6), (0.7, 1.2, 1.7)])
    kn.fit(TOY, 4)
    # trigrams aba, bab, abc, bca (once each); bigram continuation counts: ab 1 (bab; the first
    # ab has no left word), ba 1, bc 1, ca 1.
    # order 2, context a: ab 1 -> gamma 0.6: p2(b|a) = 0.4 + 0.6 * 0.25 = 0.55
    # order 2, context b: as in the bigram model: p2(a|b) = 0.425, p2(c|b) = 0.35, p2(d|b) = 0.075
    # order 3, context ab: aba 1, abc 1 -> gamma 0.7: p(a|ab) = 0.3/2 + 0.7 * 0.425 = 0.4475
    # order 3, context ba: bab 1 -> gamma 0.7: p(b|ba) = 0.3 + 0.7 * 0.55 = 0.685
    np.testing.assert_allclose(_p(kn, [A, B, A]), [0.55, 0.4475])
    np.testing.assert_allclose(_p(kn, [B, A, B]), [0.425, 0.685])
    # context cb never seen: back to p2(d|b)
    np.testing.assert_allclose(_p(kn, [C, B, D]), [0.6 * 0.25, 0.075])


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_kn_distributions_sum_to_one(rng, order):
    V = 6
    train = rng.integers(0, V - 1, 400)  # word V-1 never seen
    kn = KneserNeyLM(order=order).fit(train, V)
    for _ in range(5):
        hist = list(rng.integers(0, V, order))
        total = sum(_p(kn, [*hist, w])[-1] for w in range(V))
        assert total == pytest.approx(1.0, abs=1e-12)


def test_modified_kn_discounts_formula():
    counts = np.array([1] * 10 + [2] * 5 + [3] * 3 + [4] * 2 + [9])
    Y = 10 / (10 + 2 * 5)
    expected = (1 - 2 * Y * 5 / 10, 2 - 3 * Y * 3 / 5, 3 - 4 * Y * 2 / 3)
    np.testing.assert_allclose(modified_kn_discounts(counts), expected)


def test_kn_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        KneserNeyLM(2).fit(np.array([0, 3]), 3)
    with pytest.raises(RuntimeError, match="not fitted"):
        KneserNeyLM(2).log_probs(np.array([0, 1]))
    with pytest.raises(ValueError, match="discounts needs 2"):
        KneserNeyLM(2, discounts=[(0.5, 1, 1.5)]).fit(TOY, 4)


def _caches_naive(tokens, lu, lb):
    """The definition, summed anew for every position (O(n^2))."""
    n = len(tokens)
    out = np.zeros((2, n - 1))
    for t in range(n - 1):
        w = tokens[t + 1]
        j = np.arange(t + 1)
        weight = lu ** (t - j)
        out[0, t] = (weight * (tokens[j] == w)).sum() / weight.sum()
        j = np.arange(1, t + 1)  # the word at j followed an occurrence of tokens[t] at j - 1
        after = tokens[j - 1] == tokens[t]
        weight = lb ** (t - j) * after
        if after.any():
            out[1, t] = (weight * (tokens[j] == w)).sum() / weight.sum()
    return out


def test_decaying_caches_hand_computed():
    tokens = np.array([A, B, A, A, C])
    # no decay: the unigram cache is the share of the target among the words so far: b after {a}
    # 0; a after {a, b} 1/2; a after {a, b, a} 2/3; c 0. The bigram cache: after a, the words that
    # followed earlier a's: none yet; none yet (b followed a, but the target is a); {b}; {b, a}.
    got = DecayingCache(1.0, 1.0).probs(tokens)
    np.testing.assert_allclose(got[0], [0.0, 0.5, 2 / 3, 0.0])
    np.testing.assert_allclose(got[1], [0.0, 0.0, 0.0, 0.0])
    # a decay of 1/2 halves the weight of each older word: a after {a, b, a}: (1/4 + 1) / (7/4)
    np.testing.assert_allclose(DecayingCache(0.5, 1.0).probs(tokens)[0, 2], (0.25 + 1) / 1.75)
    # after the second a, the bigram cache has seen b follow a once: a is 0 there, b would be 1
    np.testing.assert_allclose(DecayingCache(1.0, 1.0).probs(np.array([A, B, A, B]))[1], [0, 0, 1])


@pytest.mark.parametrize("lu, lb", [(0.9, 0.8), (1.0, 0.5), (0.99, 0.995)])
def test_decaying_caches_match_their_definition_on_random_streams(rng, lu, lb):
    tokens = rng.integers(0, 6, 80)
    got = DecayingCache(lu, lb).probs(tokens)
    np.testing.assert_allclose(got, _caches_naive(tokens, lu, lb), rtol=1e-9, atol=1e-12)
    assert got.shape == (2, 79)
    assert DecayingCache().probs(np.array([A])).shape == (2, 0)
    with pytest.raises(ValueError, match="unigram_decay"):
        DecayingCache(0.0, 0.5)
    with pytest.raises(ValueError, match="bigram_decay"):
        DecayingCache(0.5, 1.5)


def test_fit_mixture_matches_direct_optimisation(rng):
    probs = rng.uniform(0.01, 1.0, (2, 500))
    w = fit_mixture(probs, n_iter=2000, tol=0)
    res = minimize_scalar(
        lambda a: -np.mean(np.log(a * probs[0] + (1 - a) * probs[1])),
        bounds=(0, 1),
        method="bounded",
        options={"xatol": 1e-10},
    )
    assert w[0] == pytest.approx(res.x, abs=1e-4)
    assert mixture_log_probs(probs, w).mean() >= -res.fun - 1e-9
