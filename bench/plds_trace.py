"""How the Poisson LDS's EM moves, step by step, on one fold of the spike report (issue 16).

    python bench/plds_trace.py [--recording Movie2Exp1] [--fold 1] [--n-iter 400] [--every 20]
        [--latent-scale stationary|free] [--l2-loadings 1.0] [--l2-dynamics 0.0] [--validate 5]
        [--score-every 200]

Fits the report's Poisson LDS (``OPTIONS["plds"]``, the cap replaced by ``--n-iter``) on the training
trials of one fold of the report's 5-fold split (seed 0) and prints, after every ``--every``-th M-step:
the ELBO's gain per bin over the last step, the largest |eigenvalue| of F, trace Q, the largest and
median norm of a neuron's loading c_i (and whose is largest), the smallest baseline d_i and its neuron, the trace of the mean
posterior covariance, and the summed variance of the posterior means over bins and trials. ``--latent-scale``,
``--l2-loadings`` and ``--l2-dynamics`` override the report's options (``--score-every N``: also score the
held-out trials every N steps). At the end it scores the fit on the fold's test trials
(bits/spike against the homogeneous Poisson fitted on the training trials, as the report does); with
``--validate V`` it instead holds out the last ``V`` training trials, fits on the rest and scores on those
(to choose ``l2_loadings`` without touching the test trials).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from v1motion.models.reports.spikes import BIN_MS, OPTIONS
from v1motion.models.spikes.data import load_retina
from v1motion.models.spikes.evaluation import bits_per_spike, trial_folds
from v1motion.models.spikes.glm import IndependentPoisson
from v1motion.models.spikes.plds import PoissonLDS


class TracedPoissonLDS(PoissonLDS):
    """The report's Poisson LDS, printing its parameters after every ``every``-th M-step."""

    every = 20
    score_every = 0
    held = None  # (held-out counts, their homogeneous-Poisson log-likelihood)

    def _mstep(self, p, y, s, S, So):
        q = super()._mstep(p, y, s, S, So)
        it = len(self.loglik_)
        if self.score_every and it % self.score_every == 0:
            self.F_, self.Q_, self.C_, self.d_, self.mu0_, self.V0_ = (
                q[k] for k in ("F", "Q", "C", "d", "mu0", "V0")
            )
            held, ll_base = self.held
            bps = bits_per_spike(self.log_likelihood(held), ll_base, held.sum())
            print(f"      held out after step {it}: {bps:+.3f} bits/spike", flush=True)
        if it % self.every == 0 or it < 3:
            gain = np.nan
            if it > 1:
                gain = (self.loglik_[-1] - self.loglik_[-2]) / (y.shape[0] * y.shape[1])
            norms = np.linalg.norm(q["C"], axis=1)
            print(
                f"{it:5d} {gain:10.2e} {np.abs(np.linalg.eigvals(q['F'])).max():8.5f} "
                f"{np.trace(q['Q']):6.2f} {norms.max():6.2f} {int(norms.argmax()):4d} {np.median(norms):6.2f} "
                f"{q['d'].min():7.2f} {int(q['d'].argmin()):4d} "
                f"{np.trace(S.mean(axis=(0, 1))):7.2f} {s.var(axis=(0, 1)).sum():7.1f}",
                flush=True,
            )
        return q


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--recording", default="Movie2Exp1")
    p.add_argument("--fold", type=int, default=1)
    p.add_argument("--n-iter", type=int, default=400)
    p.add_argument("--every", type=int, default=20)
    p.add_argument("--latent-scale", choices=["stationary", "free"], default=None)
    p.add_argument("--l2-loadings", type=float, default=None)
    p.add_argument("--l2-dynamics", type=float, default=None)
    p.add_argument("--validate", type=int, default=0)
    p.add_argument("--score-every", type=int, default=0, help="also score held out every N steps")
    args = p.parse_args()
    y = load_retina(args.recording, BIN_MS)
    test = trial_folds(y.shape[0], 5, 0)[args.fold]
    train = np.setdiff1d(np.arange(y.shape[0]), test)
    if args.validate:
        train, test = train[: -args.validate], train[-args.validate :]
    opts = {**OPTIONS["plds"], "n_iter": args.n_iter}
    if args.latent_scale is not None:
        opts["latent_scale"] = args.latent_scale
    if args.l2_loadings is not None:
        opts["l2_loadings"] = args.l2_loadings
    if args.l2_dynamics is not None:
        opts["l2_dynamics"] = args.l2_dynamics
    model = TracedPoissonLDS(**opts)
    model.every = args.every
    model.score_every = args.score_every
    base = IndependentPoisson().fit(y[train])
    model.held = (y[test], base.log_likelihood(y[test]))
    print(f"{args.recording} fold {args.fold}: {len(train)} training trials, {opts}")
    print(" step   gain/bin max|eigF|    trQ max|c|   at med|c|   min d   at post.var mean var")
    t0 = time.perf_counter()
    model.fit(y[train])
    print(
        f"{model.n_iter_} steps, converged {model.converged_}, last gain "
        f"{model.final_change_:.2e} nats per bin, {time.perf_counter() - t0:.0f} s, "
        f"{getattr(model, 'px_steps_', 0)} parameter-expanded M-steps"
    )
    held = y[test]
    bps = bits_per_spike(model.log_likelihood(held), base.log_likelihood(held), held.sum())
    what = "validation (last training) trials" if args.validate else "test trials"
    print(f"held out on {len(test)} {what}: {bps:+.3f} bits/spike")


if __name__ == "__main__":
    main()
