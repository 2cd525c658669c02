"""The recurrent filter bank's report: figure and files (``v1motion stfit``); the numbers come from
:mod:`v1motion.models.stfilter.evaluate`."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from v1motion.models.reports.plotting import new_figure
from v1motion.models.stfilter.evaluate import compare_streams, fit_summary
from v1motion.models.stfilter.fit import RecurrentFilterFit

log = logging.getLogger(__name__)


def plot_report(model: RecurrentFilterFit, bank: np.ndarray, comparison: dict | None, path) -> None:
    """Four panels: eigenvalues of R, per-filter variance explained, loss, and x-t slices of the
    worst, median and best filters next to their reconstructions."""
    nt, n, ly, lx = bank.shape
    recon = model.reconstruct()
    ve = model.variance_explained_
    fig = new_figure(figsize=(15, 8.5))
    gs = fig.add_gridspec(2, 5)

    ax = fig.add_subplot(gs[0, 0:2])
    eig = model.eigenvalues_
    circ = np.linspace(0, 2 * np.pi, 400)
    ax.plot(np.cos(circ), np.sin(circ), color="0.6", lw=1)
    ax.scatter(eig.real, eig.imag, s=4, alpha=0.6)
    ax.set_aspect("equal")
    ax.set_title(f"eigenvalues of R (N={n}, {100 * model.R_.nnz / n**2:.1f}% non-zero)")
    ax.set_xlabel("real")
    ax.set_ylabel("imaginary")

    ax = fig.add_subplot(gs[0, 2])
    ax.hist(ve, bins=40, color="C1")
    ax.axvline(model.variance_explained_total_, color="k", ls="--", label="overall")
    ax.set_title(f"variance explained per filter\noverall {model.variance_explained_total_:.3f}")
    ax.set_xlabel("variance explained")
    ax.legend()

    ax = fig.add_subplot(gs[0, 3])
    ax.semilogy(model.loss_history_)
    ax.set_title("reconstruction loss (L-BFGS)")
    ax.set_xlabel("iteration")

    ax = fig.add_subplot(gs[0, 4])
    if comparison is not None:
        ax.plot(comparison["relative_error_per_frame"])
        ax.axvline(nt, color="0.6", ls=":", label="t = nt")
        ax.set_title("RNN vs feed-forward output\nrelative error per frame")
        ax.set_xlabel("frame")
        ax.legend()
    else:
        ax.axis("off")

    order = np.argsort(ve)
    picks = [("worst", order[0]), ("median", order[len(order) // 2]), ("best", order[-1])]
    sub = gs[1, :].subgridspec(1, 6)
    for k, (label, i) in enumerate(picks):
        for j, (arr, what) in enumerate(((bank, "bank"), (recon, "R^tau W0"))):
            a = fig.add_subplot(sub[0, 2 * k + j])
            xt = arr[:, i, ly // 2, :]  # (nt, lx): the middle row through time
            lim = np.abs(bank[:, i]).max()
            a.imshow(xt, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
            a.set_title(f"{label} filter {i} ({what})\nVE {ve[i]:.3f}", fontsize=9)
            a.set_xlabel("x")
            a.set_ylabel("lag tau")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def write_report(model, bank, out_dir, params=None, video=None, video_name=None, extra=None):
    """Write ``report.json``, ``report.png`` and ``rnn.npz`` (R in CSR parts, W0) to ``out_dir``.

    Returns the report dict.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {"fit": fit_summary(model, params)}
    comparison = None
    if video is not None:
        comparison = compare_streams(model, bank, video)
        comparison["video"] = video_name
        report["stream_comparison"] = comparison
    if extra:
        report.update(extra)
    plot_report(model, bank, comparison, out_dir / "report.png")
    (out_dir / "report.json").write_text(json.dumps(report, indent=1))
    R = model.R_
    np.savez_compressed(
        out_dir / "rnn.npz",
        R_data=R.data,
        R_indices=R.indices,
        R_indptr=R.indptr,
        W0=model.W0_,
        bank_shape=np.asarray(model.bank_shape_),
    )
    log.info("stfit: report written to %s", out_dir)
    return report
