"""Count-based baselines: interpolated modified Kneser-Ney n-grams, a unigram cache, and mixtures.

All models score one stream of ids: ``log_probs(tokens)`` returns log P(tokens[t+1] | tokens[:t+1])
for every t, shape (n-1,), in nats, so they can be mixed position by position with the R-GLM.
"""

from __future__ import annotations

import numpy as np


def modified_kn_discounts(counts: np.ndarray) -> tuple[float, float, float]:
    """Chen & Goodman's discounts (D1, D2, D3+) from the counts of one order's n-grams.

    With n_i the number of n-grams seen exactly i times and Y = n1 / (n1 + 2 n2):
    D1 = 1 - 2Y n2/n1, D2 = 2 - 3Y n3/n2, D3+ = 3 - 4Y n4/n3. Orders too sparse to estimate one
    (some n_i = 0) fall back to the absolute discount Y for the missing values.
    """
    counts = np.asarray(counts)
    n = [int(np.sum(counts == i)) for i in (1, 2, 3, 4)]
    if n[0] == 0 or n[0] + 2 * n[1] == 0:
        return (0.5, 0.5, 0.5)
    Y = n[0] / (n[0] + 2 * n[1])
    d1 = 1 - 2 * Y * n[1] / n[0]
    d2 = 2 - 3 * Y * n[2] / n[1] if n[1] else Y
    d3 = 3 - 4 * Y * n[3] / n[2] if n[2] else Y
    return tuple(float(np.clip(d, 0.0, k)) for d, k in zip((d1, d2, d3), (1, 2, 3), strict=True))


class KneserNeyLM:
    """Interpolated modified Kneser-Ney n-gram model (Chen & Goodman 1999).

    Parameters
    ----------
    order : int, default 5
    discounts : sequence of ``order`` triples (D1, D2, D3+) indexed by n-gram order - 1, or None
        to estimate them from counts-of-counts

    Notes
    -----
    For an order-k context ``u`` (the last k-1 words) and word ``w``::

        p_k(w | u) = max(a(uw) - D(a(uw)), 0) / S(u) + gamma(u) p_{k-1}(w | u')
        gamma(u)  = (D1 N1(u.) + D2 N2(u.) + D3 N3+(u.)) / S(u),   S(u) = sum_w a(uw)

    where ``a`` is the raw count at the highest order and the continuation count N1+(. uw) (number
    of distinct words seen before ``uw``) at lower orders, ``N_i(u.)`` counts the words with
    ``a(uw) = i``, ``u'`` drops the oldest word of ``u``, ``p_0 = 1/V``, and a context with
    ``S(u) = 0`` (never seen) passes ``p_{k-1}`` through unchanged. The training stream is read
    as one sequence, so an n-gram's words may span ``<eos>``.

    Attributes
    ----------
    codes_ : list over orders of sorted int64 n-gram codes (parent id * V + word)
    counts_ : list over orders of the counts ``a`` used at that order
    discounts_ : list over orders of (D1, D2, D3+)
    """

    def __init__(self, order: int = 5, discounts=None):
        self.order = order
        self.discounts = discounts

    def fit(self, tokens: np.ndarray, vocab_size: int) -> KneserNeyLM:
        tokens = np.asarray(tokens, dtype=np.int64)
        if self.order < 1:
            raise ValueError(f"order must be >= 1, got {self.order}")
        if tokens.ndim != 1 or tokens.size == 0:
            raise ValueError("tokens must be a non-empty 1-d array of ids")
        if tokens.min() < 0 or tokens.max() >= vocab_size:
            raise ValueError(f"token ids must lie in [0, {vocab_size})")
        V = self.V_ = int(vocab_size)
        n = tokens.size
        codes, raw, ids = [], [], []
        prev_ids = None
        for k in range(1, self.order + 1):
            code = np.full(n, -1, dtype=np.int64)
            if k == 1:
                code[:] = tokens
            else:
                ok = np.zeros(n, dtype=bool)
                ok[1:] = prev_ids[:-1] >= 0
                code[ok] = prev_ids[np.flatnonzero(ok) - 1] * V + tokens[ok]
            have = code >= 0
            uniq, inv, cnt = np.unique(code[have], return_inverse=True, return_counts=True)
            idk = np.full(n, -1, dtype=np.int64)
            idk[have] = inv
            codes.append(uniq)
            raw.append(cnt.astype(np.float64))
            ids.append(idk)
            prev_ids = idk
        counts = []
        for k in range(1, self.order + 1):
            if k == self.order:
                counts.append(raw[k - 1])
                continue
            # continuation count of a k-gram: how many distinct (k+1)-grams end with it
            longer = ids[k]
            have = longer >= 0
            suffix_of = np.empty(len(codes[k]), dtype=np.int64)
            suffix_of[longer[have]] = ids[k - 1][have]
            counts.append(np.bincount(suffix_of, minlength=len(codes[k - 1])).astype(np.float64))
        self.codes_, self.counts_ = codes, counts
        if self.discounts is not None:
            if len(self.discounts) != self.order:
                raise ValueError(f"discounts needs {self.order} triples (one per order)")
            self.discounts_ = [tuple(map(float, d)) for d in self.discounts]
        else:
            self.discounts_ = [modified_kn_discounts(c[c > 0]) for c in counts]
        # per-context totals S(u) and N1, N2, N3+ for every order
        self.ctx_stats_ = []
        for k in range(1, self.order + 1):
            parent = codes[k - 1] // V if k > 1 else np.zeros(len(codes[0]), dtype=np.int64)
            m = len(codes[k - 2]) if k > 1 else 1
            a = counts[k - 1]
            stats = np.stack(
                [
                    np.bincount(parent, weights=a, minlength=m),
                    np.bincount(parent, weights=(a == 1), minlength=m),
                    np.bincount(parent, weights=(a == 2), minlength=m),
                    np.bincount(parent, weights=(a >= 3), minlength=m),
                ]
            )
            self.ctx_stats_.append(stats)
        return self

    def _lookup(self, k: int, code: np.ndarray) -> np.ndarray:
        """Ids in the order-k table of the given codes, -1 where absent."""
        table = self.codes_[k - 1]
        out = np.full(code.shape, -1, dtype=np.int64)
        ok = code >= 0
        pos = np.searchsorted(table, code[ok])
        pos_c = np.minimum(pos, len(table) - 1)
        found = table[pos_c] == code[ok]
        out[np.flatnonzero(ok)[found]] = pos_c[found]
        return out

    def log_probs(self, tokens: np.ndarray) -> np.ndarray:
        """log P(tokens[t+1] | up to order-1 previous words of the stream), shape (n-1,)."""
        if not hasattr(self, "codes_"):
            raise RuntimeError("this KneserNeyLM is not fitted: call fit() first")
        tokens = np.asarray(tokens, dtype=np.int64)
        V = self.V_
        n = tokens.size
        if n < 2:
            return np.zeros(0)
        # ids (in the training tables) of the k-gram ending at each position
        ids = []
        prev = None
        for k in range(1, self.order):
            code = np.full(n, -1, dtype=np.int64)
            if k == 1:
                code[:] = tokens
            else:
                ok = np.zeros(n, dtype=bool)
                ok[1:] = prev[:-1] >= 0
                code[ok] = prev[np.flatnonzero(ok) - 1] * V + tokens[ok]
            prev = self._lookup(k, code)
            ids.append(prev)
        nxt = tokens[1:]
        p = np.full(n - 1, 1.0 / V)
        for k in range(1, self.order + 1):
            ctx = np.zeros(n - 1, dtype=np.int64) if k == 1 else ids[k - 2][:-1]
            valid = ctx >= 0
            stats = self.ctx_stats_[k - 1]
            S = np.where(valid, stats[0][np.maximum(ctx, 0)], 0.0)
            valid &= S > 0
            code = np.where(valid, ctx * V + nxt, -1)
            gid = self._lookup(k, code)
            a = np.where(gid >= 0, self.counts_[k - 1][np.maximum(gid, 0)], 0.0)
            d1, d2, d3 = self.discounts_[k - 1]
            D = np.select([a == 0, a == 1, a == 2], [0.0, d1, d2], d3)
            c = np.maximum(ctx, 0)
            with np.errstate(divide="ignore", invalid="ignore"):
                gamma = (d1 * stats[1][c] + d2 * stats[2][c] + d3 * stats[3][c]) / S
                p_k = np.maximum(a - D, 0.0) / S + gamma * p
            p = np.where(valid, p_k, p)
        return np.log(p)


class DecayingCache:
    """Unigram and bigram caches whose memory fades exponentially (Kuhn & De Mori's cache, with the
    bigram cache of Jelinek et al. 1991), reading a stream from its start.

    For the word after ``tokens[:t+1]``, with weights ``decay ** (t - j)`` on the word at ``j``:

    - unigram: ``P(w) = sum_j decay^(t-j) [tokens[j] = w] / sum_j decay^(t-j)`` over ``j <= t``;
    - bigram: ``P(w | tokens[t])`` = the same weighted share of ``w`` among the words that followed
      earlier occurrences of ``tokens[t]`` (weights by the position ``j`` of the following word,
      ``1 <= j <= t``), and 0 where ``tokens[t]`` has not occurred before.

    Both give probability zero to words they have not seen, so they are only useful mixed with a
    model that covers the vocabulary (:func:`fit_mixture`). Probabilities are returned, not logs.
    The counts decay lazily, one word type (or word pair) at a time, so a stream costs O(n).
    """

    def __init__(self, unigram_decay: float = 0.995, bigram_decay: float = 0.998):
        for name, d in (("unigram_decay", unigram_decay), ("bigram_decay", bigram_decay)):
            if not 0.0 < d <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {d}")
        self.unigram_decay = float(unigram_decay)
        self.bigram_decay = float(bigram_decay)

    def probs(self, tokens: np.ndarray) -> np.ndarray:
        """``(2, n-1)``: the unigram and the bigram cache's ``P(tokens[t+1] | tokens[:t+1])``."""
        tokens = np.asarray(tokens, dtype=np.int64)
        n = tokens.size
        out = np.zeros((2, max(n - 1, 0)))
        lu, lb = self.unigram_decay, self.bigram_decay
        uni: dict[int, tuple[float, int]] = {}  # word -> (decayed count, as of position)
        pair: dict[tuple[int, int], tuple[float, int]] = {}
        # word -> decayed count of the words that followed it
        ctx: dict[int, tuple[float, int]] = {}
        total = 0.0
        for t in range(n - 1):
            w, nxt = int(tokens[t]), int(tokens[t + 1])
            total = total * lu + 1.0
            c, at = uni.get(w, (0.0, t))
            uni[w] = (c * lu ** (t - at) + 1.0, t)
            if t >= 1:
                prev = int(tokens[t - 1])
                c, at = pair.get((prev, w), (0.0, t))
                pair[(prev, w)] = (c * lb ** (t - at) + 1.0, t)
                c, at = ctx.get(prev, (0.0, t))
                ctx[prev] = (c * lb ** (t - at) + 1.0, t)
            c, at = uni.get(nxt, (0.0, t))
            out[0, t] = c * lu ** (t - at) / total
            seen, at = ctx.get(w, (0.0, t))
            if seen > 0.0:
                c, at2 = pair.get((w, nxt), (0.0, t))
                out[1, t] = (c * lb ** (t - at2)) / (seen * lb ** (t - at))
        return out


def fit_mixture(probs: np.ndarray, n_iter: int = 200, tol: float = 1e-9) -> np.ndarray:
    """Mixture weights (M,) maximising the mean log of ``weights @ probs`` (EM).

    Parameters
    ----------
    probs : (M, n) probability each model gives each token of a tuning stream (e.g. valid)
    """
    probs = np.asarray(probs, dtype=np.float64)
    M = probs.shape[0]
    w = np.full(M, 1.0 / M)
    last = -np.inf
    for _ in range(n_iter):
        mix = w @ probs
        ll = np.mean(np.log(mix))
        w = (probs * w[:, None] / mix).mean(axis=1)
        if ll - last < tol:
            break
        last = ll
    return w / w.sum()


def mixture_log_probs(probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """log of the weighted mixture, (n,)."""
    return np.log(np.asarray(weights) @ np.asarray(probs))
