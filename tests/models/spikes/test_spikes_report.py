"""The report pipeline end to end on the first bins of the retina data (skipped without the data)."""

import json

import pytest

from v1motion.models.datasets import shared_data_dir
from v1motion.models.spikes.data import RETINA_DIR


@pytest.mark.slow
@pytest.mark.skipif(
    not (shared_data_dir() / RETINA_DIR).exists(), reason="shared retina data not available"
)
def test_report_writes_results_figures_and_table(tmp_path, monkeypatch):
    from v1motion.models.reports import spikes as report

    quick = {k: {**v, "max_iter": 5} if "max_iter" in v else v for k, v in report.OPTIONS.items()}
    quick["lds"] = {"n_latent": 2, "n_iter": 3}
    quick["plds"] = {"n_latent": 2, "n_iter": 2, "init_iter": 2}
    monkeypatch.setattr(report, "OPTIONS", quick)
    res = report.run_recording("Movie1Exp1", tmp_path, n_folds=2, max_bins=150)
    report_data = report.load_retina("Movie1Exp1", 10.0)
    assert set(res["bits_per_spike"]) >= {"correlated", "glm", "lds", "rglm_correlated", "psth"}
    assert len(res["rglm_timescales_s"]) == quick["rglm_correlated"]["n_hidden"]
    assert (tmp_path / "samples_Movie1Exp1.png").stat().st_size > 1000
    assert (tmp_path / "timescales_Movie1Exp1.png").stat().st_size > 1000
    monkeypatch.setattr(report, "load_retina", lambda rec, bin_ms: report_data[:, :150])
    again = report.rerun_rows("Movie1Exp1", tmp_path, ["rglm", "plds"])
    assert len(again["bits_per_spike"]["rglm"]) == 2
    assert [f["n_iter"] for f in again["fits"]["plds"]] == [2, 2]  # how the rerun fits ended
    assert again["sample_stats"]["plds"]["mean_rate_per_bin"] > 0
    assert again["bits_per_spike"]["correlated"] == res["bits_per_spike"]["correlated"]
    redrawn = report.redraw_samples("Movie1Exp1", tmp_path)
    assert set(redrawn["sample_stats"]) == set(report.SAMPLE_KINDS) | {"data"}
    assert redrawn["bits_per_spike"] == again["bits_per_spike"]  # no row refitted
    text = report.assemble(tmp_path)
    assert "| R-GLM with correlated Poisson |" in text
    assert json.loads((tmp_path / "results_Movie1Exp1.json").read_text())["n_folds"] == 2
    assert "Near-duplicate units" in text
    # every row's fits are accounted for: 5 iterations cannot converge, and the table says so
    assert "| R-GLM with correlated Poisson | Movie1Exp1 | 0/2 | max_iter |" in text
    assert (
        "| Poisson LDS (variational EM) | Movie1Exp1 | 0/2 | max_iter | – (EM; last change" in text
    )
    assert "target met |" in text and "CCG r" in text


def test_near_duplicates_finds_copied_units(rng):
    from v1motion.models.reports.spikes import near_duplicates

    y = rng.poisson(0.2, (3, 400, 4)).astype(float)
    y[..., 3] = y[..., 1]
    assert [(i, j) for i, j, _ in near_duplicates(y)] == [(1, 3)]


def test_cross_validation_records_how_every_fit_ended(rng):
    from v1motion.models.spikes.evaluation import cross_validate
    from v1motion.models.spikes.glm import CorrelatedGLM, IndependentPoisson

    y = rng.poisson(0.3, (4, 100, 3)).astype(float)
    fits = {}
    cv = cross_validate(
        {"c": lambda: CorrelatedGLM(max_iter=2), "i": IndependentPoisson},
        y,
        n_folds=2,
        progress=False,
        fits=fits,
    )
    assert len(cv["c"]) == 2 and len(fits["c"]) == 2 and len(fits["i"]) == 2
    assert fits["c"][0]["stop_reason"] == "max_iter" and fits["c"][0]["converged"] is False
    assert fits["c"][0]["tol"] == 1e-6 and fits["c"][0]["fit_seconds"] >= 0
    assert fits["i"][0]["stop_reason"] == "closed_form" and fits["i"][0]["converged"]


def test_the_sample_and_timescale_figures_are_drawn(tmp_path):
    """Both figure writers on small made-up statistics, without touching matplotlib's backend."""
    import matplotlib
    import numpy as np

    from v1motion.models.reports.spikes import plot_samples, plot_timescales

    backend = matplotlib.get_backend()
    rng = np.random.default_rng(0)
    lags = np.arange(-5, 6)
    stats = {
        "corr": {"data": rng.normal(0, 0.1, 45), "glm": rng.normal(0, 0.1, 45)},
        "summary": {"glm": {"corr_vs_data_r": 0.5}},
        "lags": lags,
        "pairs": [(0, 1), (2, 3)],
        "ccg": {
            "data": rng.normal(0, 0.1, (2, len(lags))),
            "glm": rng.normal(0, 0.1, (2, len(lags))),
        },
    }
    plot_samples(stats, "demo", tmp_path / "samples.png")
    ev = np.array([0.9, 0.5 + 0.3j, 0.5 - 0.3j])
    plot_timescales(ev, -0.01 / np.log(np.abs(ev)), "demo", tmp_path / "timescales.png")
    for name in ("samples.png", "timescales.png"):
        assert (tmp_path / name).stat().st_size > 1000
    assert matplotlib.get_backend() == backend
