"""The R-GLM's L2 penalty on its state weights, chosen on held-out trials (issue 16).

    python bench/spikes_rglm_l2.py [--recording Movie1Exp1] [--l2-state 3e-4,1e-3,3e-3]
                                   [--n-hidden 16] [--locked]

On fold 0 of the report's 5-fold split (seed 0) only the 24 training trials are used: 19 fit the models
and 5 (a seeded choice) score them, so the report's held-out trials stay untouched. Fits the GLM with
correlated Poisson once, then the R-GLM with correlated Poisson (the report's settings, started from that
GLM) for each ``l2_state``; prints validation bits/spike (relative to the homogeneous Poisson of the same
19 trials), how each fit ended (a fit has converged when its largest gradient entry is below ``tol``)
and its wall time (the start GLM's excluded). ``--n-hidden`` takes a list of state sizes too;
``--locked`` drives both models by the PSTH of the 19 fitting trials (``StimulusLocked``, as the
report's rows "driven by the PSTH").
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from v1motion.models.reports.spikes import BIN_MS, OPTIONS
from v1motion.models.spikes.data import load_retina
from v1motion.models.spikes.evaluation import bits_per_spike, trial_folds
from v1motion.models.spikes.glm import IndependentPoisson, StimulusLocked
from v1motion.models.spikes.registry import make_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--recording", default="Movie1Exp1")
    p.add_argument("--l2-state", default="3e-4,1e-3,3e-3")
    p.add_argument("--n-validation", type=int, default=5)
    p.add_argument("--n-hidden", default="16")
    p.add_argument("--locked", action="store_true")
    args = p.parse_args()
    y = load_retina(args.recording, BIN_MS)
    test = trial_folds(y.shape[0], 5, 0)[0]
    train = np.setdiff1d(np.arange(y.shape[0]), test)
    val = np.sort(np.random.default_rng(0).permutation(train)[: args.n_validation])
    fit = np.setdiff1d(train, val)
    yf, yv = y[fit], y[val]
    base = IndependentPoisson().fit(yf)
    llb, n_spikes = base.log_likelihood(yv), float(yv.sum())
    print(f"{args.recording}: fold 0's training trials, {len(fit)} fit, {len(val)} validation")
    print(f"{'model':<48}{'bits/sp':>9}{'iters':>7}{'stop':>12}{'|grad|':>10}{'fit s':>8}")

    def show(name, model, dt):
        bits = bits_per_spike(model.log_likelihood(yv), llb, n_spikes)
        print(
            f"{name:<48}{bits:>+9.3f}{model.n_iter_:>7}{model.stop_reason_:>12}"
            f"{model.grad_norm_:>10.1e}{dt:>8.1f}",
            flush=True,
        )

    def wrap(model):
        return StimulusLocked(model) if args.locked else model

    t0 = time.perf_counter()
    glm = wrap(make_model("glm_correlated", **OPTIONS["glm_correlated"])).fit(yf)
    show("GLM + corr.", glm, time.perf_counter() - t0)
    start = glm.model if args.locked else glm  # the R-GLMs start from this fitted GLM
    for n_hidden in (int(v) for v in args.n_hidden.split(",")):
        for l2s in (float(v) for v in args.l2_state.split(",")):
            opts = {**OPTIONS["rglm_correlated"], "n_hidden": n_hidden, "l2_state": l2s}
            t0 = time.perf_counter()
            m = wrap(make_model("rglm_correlated", **{**opts, "init": start})).fit(yf)
            show(f"R-GLM + corr., {n_hidden} states, l2_state={l2s:g}", m, time.perf_counter() - t0)


if __name__ == "__main__":
    main()
