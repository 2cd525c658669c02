"""Figures and files of the ss-RNN's tuning report (``v1motion analyze``); the numbers come from
:mod:`v1motion.models.motion.tuning_report`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from v1motion.models.motion.ssrnn import SSRNN
from v1motion.models.motion.tuning import DIRECTIONS, SPEEDS
from v1motion.models.motion.tuning_report import gabor_polar
from v1motion.models.reports.plotting import new_figure


def write_figures(model: SSRNN, art: dict, out: Path) -> list[str]:
    tm, tc = art["model"], art["control"]
    names = []
    # 1. DI histograms, model against control.
    fig = new_figure(figsize=(10, 3.6))
    axes = fig.subplots(1, 2)
    bins = np.linspace(0, 1, 21)
    for ax, key, title in (
        (axes[0], "di", "drifting gratings"),
        (axes[1], "di_natural", "held-out natural pans"),
    ):
        mask_m = tm.responsive if key == "di" else tm.responsive_natural
        mask_c = tc.responsive if key == "di" else tc.responsive_natural
        ax.hist(getattr(tm, key)[mask_m], bins, alpha=0.7, label="ss-RNN", color="C0")
        ax.hist(
            getattr(tc, key)[mask_c], bins, alpha=0.6, label="time-shuffled control", color="C1"
        )
        ax.axvline(0.5, color="k", ls=":", lw=1)
        ax.set(xlabel="direction index", ylabel="responsive units", title=title)
        ax.legend(frameon=False)
    fig.tight_layout()
    fig.savefig(out / "di_histogram.png", dpi=110)
    names.append("di_histogram.png")
    # 2. Speed tuning curves of DS units.
    ds = np.nonzero(tm.ds)[0]
    speed_tuning_figure(tm.ds, tm.speed_curves, tm.pref_speed, out / "speed_tuning.png")
    names.append("speed_tuning.png")
    # 3. Polar plots for drifting Gabors.
    top = ds[np.argsort(tm.di[ds])[::-1][:8]] if len(ds) else np.arange(8)
    resp = gabor_polar(model, top)
    fig = new_figure(figsize=(11, 5.6))
    axes = fig.subplots(2, 4, subplot_kw={"projection": "polar"})
    theta = np.append(DIRECTIONS, DIRECTIONS[0])
    for ax, i in zip(axes.ravel(), range(len(top)), strict=False):
        r = np.append(resp[:, i], resp[0, i])
        ax.plot(theta, r, color="C0")
        ax.fill(theta, r, alpha=0.25, color="C0")
        ax.set_title(f"unit {top[i]} (DI {tm.di[top[i]]:.2f})", fontsize=9)
        ax.set_yticklabels([])
    fig.suptitle("responses to drifting Gabors (0° = rightward, counter-clockwise)")
    fig.tight_layout()
    fig.savefig(out / "gabor_polar.png", dpi=110)
    names.append("gabor_polar.png")
    # 4. Spectrum of R.
    ev = np.linalg.eigvals(model.R_.astype(np.float64))
    fig = new_figure(figsize=(4.6, 4.4))
    ax = fig.subplots()
    ax.scatter(ev.real, ev.imag, s=6, alpha=0.6)
    ax.axhline(0, color="k", lw=0.5)
    ax.axvline(0, color="k", lw=0.5)
    ax.set(xlabel="Re λ", ylabel="Im λ", title="eigenvalues of R")
    fig.tight_layout()
    fig.savefig(out / "r_spectrum.png", dpi=110)
    names.append("r_spectrum.png")
    # 5. Largest outgoing connections of a few DS units, drawn as receptive fields.
    filt = model.unit_filters()
    p = model.patch
    show = top[:4]
    fig = new_figure(figsize=(9, 1.7 * len(show) + 0.4))
    axes = fig.subplots(len(show), 6, squeeze=False)
    for row, j in enumerate(show):
        targets = np.argsort(model.R_[:, j])[::-1][:5]
        cells = [(j, f"unit {j}\npref {np.rad2deg(tm.pref_dir[j]):.0f}°")] + [
            (u, f"→{u}  R={model.R_[u, j]:.1f}") for u in targets
        ]
        for col, (u, label) in enumerate(cells):
            ax = axes[row, col]
            f = filt[:, u].reshape(p, p)
            lim = np.abs(f).max() + 1e-9
            ax.imshow(f, cmap="RdBu_r", vmin=-lim, vmax=lim)
            ax.set_title(label, fontsize=7)
            ax.axis("off")
    fig.suptitle("DS units and their strongest outgoing recurrent connections")
    fig.tight_layout()
    fig.savefig(out / "outgoing_connections.png", dpi=110)
    names.append("outgoing_connections.png")
    return names


def speed_tuning_figure(ds_mask, speed_curves, pref_speed, path: Path) -> None:
    """Speed tuning curves of 12 direction-selective units and the histogram of preferred speeds.

    ``ds_mask`` (U,) bool, ``speed_curves`` (U, len(SPEEDS)), ``pref_speed`` (U,) px/frame. The log
    axis is labelled at the measured speeds only: matplotlib's default minor-tick labels on a log axis
    (``3x10^-1``, ``4x10^-1``, ...) overlap.
    """
    ds = np.nonzero(np.asarray(ds_mask))[0]
    speed_curves, pref_speed = np.asarray(speed_curves), np.asarray(pref_speed)
    fig = new_figure(figsize=(10, 3.6))
    axes = fig.subplots(1, 2)
    rng = np.random.default_rng(0)
    for u in rng.choice(ds, min(12, len(ds)), replace=False) if len(ds) else []:
        c = speed_curves[u]
        axes[0].plot(SPEEDS, c / max(c.max(), 1e-12), marker="o", alpha=0.7)
    axes[0].set(xscale="log", xlabel="speed (px/frame)", ylabel="normalised response",
                title="speed tuning of DS units")  # fmt: skip
    axes[0].set_xticks(list(SPEEDS), [f"{s:g}" for s in SPEEDS])
    axes[0].minorticks_off()
    counts = [int((pref_speed[ds] == s).sum()) for s in SPEEDS]
    axes[1].bar([f"{s:g}" for s in SPEEDS], counts, color="C0")
    axes[1].set(xlabel="preferred speed (px/frame)", ylabel="DS units", title="preferred speeds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_report(report: dict, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "report.json"
    path.write_text(json.dumps(report, indent=2))
    return path
