"""Training speed of the R-GLM on Penn Treebank: tokens/s by hidden size and output layer.

Run on a quiet machine:  .venv/bin/python bench/lm_speed.py
Prints a markdown table; the full-softmax row is the baseline the sampled softmax is compared to.
"""

from __future__ import annotations

import time

from models.language.data import load_ptb
from models.language.rglm import LinearRecurrentLM


def tokens_per_s(train, vocab, windows: int, **kw) -> float:
    model = LinearRecurrentLM(n_epochs=1, **kw)
    n = kw["batch_size"] * kw["bptt"] * windows + 1
    model.fit(train[: kw["batch_size"] * kw["bptt"] * 2 + 1], vocab)  # warm-up (JIT, caches)
    t0 = time.perf_counter()
    model.fit(train[:n], vocab)
    return (n - 1) / (time.perf_counter() - t0)


def main() -> None:
    vocab, data = load_ptb()
    base = dict(bptt=20, batch_size=64, seed=0)
    rows = []
    for H in (100, 200, 300):
        for K in (None, 512, 1024):
            windows = 6 if K is None else 40
            tps = tokens_per_s(data["train"], vocab, windows, n_hidden=H, n_samples=K, **base)
            rows.append((H, K, tps))
    full = {H: tps for H, K, tps in rows if K is None}
    print("| hidden | output layer | tokens/s | vs full softmax |")
    print("|---|---|---|---|")
    for H, K, tps in rows:
        layer = "full softmax (10,000)" if K is None else f"sampled softmax, {K} shared negatives"
        print(f"| {H} | {layer} | {tps:,.0f} | {tps / full[H]:.1f}x |")


if __name__ == "__main__":
    main()
