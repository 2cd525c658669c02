"""Does starting the R-GLM from the fitted GLM help? One fold of one retina recording (issue 16).

    python bench/spikes_rglm_init.py --recording Movie1Exp1 --fold 0 [--max-iter 1000] [--independent]

Fits, on the training trials of one fold of the report's 5-fold split (seed 0) and with the report's
settings: the GLM with correlated Poisson, and the R-GLM with correlated Poisson from a random start
(``init="random"``, the default before issue 16) and from a GLM it fits first (``init="glm"``: the GLM's
``b`` and ``A``, and its coupling filters realised by ``n_hidden`` recurrent states; the time includes that
GLM fit). Prints held-out bits/spike (relative to the homogeneous Poisson), how each fit ended, and its
wall time, the parameter block holding the largest gradient entry and the spectral radius of ``R``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from v1motion.models.reports.spikes import BIN_MS, OPTIONS
from v1motion.models.spikes.data import load_retina
from v1motion.models.spikes.evaluation import bits_per_spike, trial_folds
from v1motion.models.spikes.glm import IndependentPoisson
from v1motion.models.spikes.registry import make_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--recording", default="Movie1Exp1")
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--n-folds", type=int, default=5)
    p.add_argument("--max-iter", type=int, default=OPTIONS["rglm_correlated"]["max_iter"])
    p.add_argument("--glm-max-iter", type=int, default=OPTIONS["glm_correlated"]["max_iter"])
    p.add_argument(
        "--independent", action="store_true", help="the independent-noise GLM and R-GLM instead"
    )
    args = p.parse_args()
    glm_kind, rglm_kind = (
        ("glm", "rglm") if args.independent else ("glm_correlated", "rglm_correlated")
    )
    noise = "independent" if args.independent else "correlated"
    y = load_retina(args.recording, BIN_MS)
    test = trial_folds(y.shape[0], args.n_folds, 0)[args.fold]
    train = np.setdiff1d(np.arange(y.shape[0]), test)
    ytr, yte = y[train], y[test]
    base = IndependentPoisson().fit(ytr)
    llb, n_spikes = base.log_likelihood(yte), float(yte.sum())

    def run(name, model):
        t0 = time.perf_counter()
        model.fit(ytr)
        dt = time.perf_counter() - t0
        bits = bits_per_spike(model.log_likelihood(yte), llb, n_spikes)
        # where the remaining gradient is, and how close R's slowest mode is to 1
        packer = model._packer
        _, g = model._loss_grad(packer.pack(model.params_), packer, ytr[..., model.order_], None)
        blocks = {k: np.abs(v).max() for k, v in packer.unpack(g).items()}
        worst = max(blocks, key=blocks.get)
        R = model.params_.get("R")
        rho = f"{np.abs(np.linalg.eigvals(R)).max():.3f}" if R is not None else "-"
        print(
            f"{name:<34}{bits:>+9.3f}{model.n_iter_:>7}{model.stop_reason_:>12}"
            f"{model.grad_norm_:>10.1e}{worst:>6}{rho:>8}{dt:>8.1f}",
            flush=True,
        )

    print(f"{args.recording} fold {args.fold}/{args.n_folds}: {len(train)} train, {len(test)} test")
    print(
        f"{'model':<34}{'bits/sp':>9}{'iters':>7}{'stop':>12}{'|grad|':>10}{'in':>6}{'rho(R)':>8}"
        f"{'fit s':>8}"
    )
    run(
        f"GLM, {noise}",
        make_model(glm_kind, **{**OPTIONS[glm_kind], "max_iter": args.glm_max_iter}),
    )
    rg = {**OPTIONS[rglm_kind], "max_iter": args.max_iter}
    for init in ("random", "glm"):
        run(f"R-GLM, {noise}, init={init}", make_model(rglm_kind, **rg, init=init))


if __name__ == "__main__":
    main()
