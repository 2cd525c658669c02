"""Fit time of the R-GLM on the 38-neuron salamander retina recording (goal: <= 60 s per R-GLM fit).

    python bench/spikes_fit.py [--recording Movie1Exp1] [--n-hidden 16] [--max-iter 4000]

Prints one row per model: wall time of ``fit`` on all 30 trials x 1800 bins (10 ms) with the report's
settings (the R-GLMs start from the GLM they fit first; its time is included), L-BFGS iterations, what
stopped the fit (gtol, ftol or max_iter) and the final gradient norm, time per iteration, and the ratio
to the correlated Poisson fit measured in the same process (absolute times drift with the machine's load).
"""

from __future__ import annotations

import argparse
import os
import time

from v1motion.models.reports.spikes import OPTIONS
from v1motion.models.spikes.data import load_retina
from v1motion.models.spikes.registry import make_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--recording", default="Movie1Exp1")
    # the table's R-GLM (with correlated Poisson) by default
    p.add_argument("--n-hidden", type=int, default=OPTIONS["rglm_correlated"]["n_hidden"])
    p.add_argument("--max-iter", type=int, default=OPTIONS["rglm_correlated"]["max_iter"])
    args = p.parse_args()
    y = load_retina(args.recording)
    print(
        f"{args.recording}: counts {y.shape}, {int(y.sum())} spikes, {os.cpu_count()} cores visible"
    )
    rows = []
    for kind, opts in [
        ("correlated", {}),
        ("glm_correlated", {"max_iter": args.max_iter}),
        ("rglm", {"n_hidden": args.n_hidden, "max_iter": args.max_iter}),
        ("rglm_correlated", {"n_hidden": args.n_hidden, "max_iter": args.max_iter}),
    ]:
        m = make_model(kind, **opts)
        t0 = time.perf_counter()
        m.fit(y)
        dt = time.perf_counter() - t0
        rows.append((kind, m.n_params_, m.n_iter_, m.stop_reason_, m.grad_norm_, dt))
    ref = rows[0][-1]
    print(
        f"{'model':<18}{'params':>8}{'iters':>7}{'stop':>10}{'|grad|':>9}{'fit s':>9}"
        f"{'ms/iter':>9}{'x corr':>8}"
    )
    for kind, n_params, iters, stop, grad, dt in rows:
        print(
            f"{kind:<18}{n_params:>8}{iters:>7}{stop:>10}{grad:>9.1e}{dt:>9.1f}"
            f"{1000 * dt / max(iters, 1):>9.0f}{dt / ref:>8.1f}"
        )
    print("goal: rglm_correlated fit <= 60 s")


if __name__ == "__main__":
    main()
