"""Start and optimiser of the recurrent filter fit: variance explained vs L-BFGS iterations (issue 7).

    .venv/bin/python bench/stfit_init.py --runs lsq:0,lsq:60,random:60
    .venv/bin/python bench/stfit_init.py --t-peak 14.5 --runs lsq:60,random:60

Each run fits R (5 % non-zero) and W0 to the 12 x 12 x 30 Gabor bank from the named start with the
given number of L-BFGS iterations, and prints overall / worst-filter variance explained, the
spectral radius of R and the seconds taken. ``--t-peak`` moves the peak of the temporal envelope
(0: causal, the default bank; 14.5: centred in the 30 frames).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from v1motion.models.stfilter import RecurrentFilterFit, gabor_bank


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n-filters", type=int, default=1600)
    p.add_argument("--nt", type=int, default=30)
    p.add_argument("--t-peak", type=float, default=0.0)
    p.add_argument("--density", type=float, default=0.05)
    p.add_argument("--runs", default="lsq:0,lsq:60,random:60", help="init:iterations,...")
    args = p.parse_args(argv)
    bank, _ = gabor_bank(args.n_filters, 12, 12, args.nt, t_peak=args.t_peak)
    print(
        f"Gabor bank N={args.n_filters}, nt={args.nt}, t_peak={args.t_peak}, density {args.density}"
    )
    print(
        f"{'init':<8} {'iters':>5} {'VE overall':>11} {'VE worst':>9} {'radius R':>9} {'seconds':>8}"
    )
    for run in args.runs.split(","):
        init, iters = run.split(":")
        t0 = time.perf_counter()
        m = RecurrentFilterFit(density=args.density, init=init, max_iter=int(iters)).fit(bank)
        print(
            f"{init:<8} {int(iters):>5} {m.variance_explained_total_:>11.4f} "
            f"{np.nanmin(m.variance_explained_):>9.4f} {np.abs(m.eigenvalues_).max():>9.4f} "
            f"{time.perf_counter() - t0:>8.0f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
