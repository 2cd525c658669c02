"""Training speed of the R-GLM on Penn Treebank: tokens/s by output layer, hidden size, threads.

    python bench/lm_speed.py > docs/language/speed.md

Every row trains on the same windows of the training text in this one process, after a
warm-up (JIT compilation, caches); the exact full-softmax trainer (10,000-way softmax, what the
model was trained with before the class layer) is the baseline each row is divided by, measured
at the same hidden size and thread count, so the ratios survive a loaded machine even when the
absolute tokens/s do not. BLAS threads are set with ``threadpoolctl``; the Numba kernels are
serial. Absolute numbers depend on what else the machine runs: the header records the load.
"""

from __future__ import annotations

import argparse
import os
import time

from threadpoolctl import threadpool_limits

from v1motion.models.language.data import load_ptb
from v1motion.models.language.rglm import LinearRecurrentLM

LAYERS = {
    "full": dict(n_samples=None, n_classes=None),
    "sampled": dict(n_samples=1024, n_classes=None),
    "class": dict(n_samples=None, n_classes=100),
}
LABELS = {
    "full": "exact full softmax (10,000), old trainer: baseline",
    "sampled": "sampled softmax, 1,024 shared negatives",
    "class": "class-factorised softmax, 100 frequency-binned classes",
}


def tokens_per_s(train, vocab, windows: int, repeats: int = 2, **kw) -> float:
    """Best of ``repeats`` timed runs of ``windows`` training windows (64 streams x 20 steps)."""
    model = LinearRecurrentLM(n_epochs=1, batch_size=64, bptt=20, seed=0, **kw)
    n = 64 * 20 * windows + 1
    model.fit(train[: 64 * 20 * 2 + 1], vocab)  # warm-up
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.fit(train[:n], vocab)
        best = max(best, (n - 1) / (time.perf_counter() - t0))
    return best


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()  # --help only
    vocab, data = load_ptb()
    load = os.getloadavg()
    rows = []
    for threads in (1, 2):
        with threadpool_limits(limits=threads):
            for H in (100, 200, 300):
                for layer, kw in LAYERS.items():
                    windows = 6 if layer == "full" else 40
                    tps = tokens_per_s(data["train"], vocab, windows, n_hidden=H, **kw)
                    rows.append((threads, H, layer, tps))
    end = os.getloadavg()
    full = {(t, H): tps for t, H, layer, tps in rows if layer == "full"}
    print(
        f"# R-GLM training speed (`bench/lm_speed.py`, {time.strftime('%Y-%m-%d %H:%M', time.gmtime())}"
        " UTC)\n"
    )
    print(
        f"Shared 2-core machine, loaded by other users' jobs: load average {load[0]:.1f} at the "
        f"start and {end[0]:.1f} at the end of the run. Tokens/s is the best of two timed runs; "
        "the ratio column compares with the exact full-softmax trainer at the same hidden size "
        "and thread count, measured in the same process.\n"
    )
    print("| BLAS threads | hidden | output layer | tokens/s | vs full softmax |")
    print("|---|---|---|---|---|")
    for t, H, layer, tps in rows:
        print(f"| {t} | {H} | {LABELS[layer]} | {tps:,.0f} | {tps / full[t, H]:.1f}x |")


if __name__ == "__main__":
    main()
