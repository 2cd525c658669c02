"""``v1motion spikes fit|eval|sample`` on a small counts file."""

import json
import pickle

import numpy as np
import pytest

from v1motion.service.cli import main


def test_fit_eval_sample_roundtrip(tmp_path, capsys):
    counts = np.random.default_rng(0).poisson(0.4, (4, 150, 3))
    np.savez(tmp_path / "c.npz", counts=counts)
    model = tmp_path / "m.pkl"
    assert (
        main(
            [
                "spikes",
                "fit",
                "--counts",
                str(tmp_path / "c.npz"),
                "--kind",
                "rglm_correlated",
                "--option",
                "n_hidden=2",
                "--option",
                "max_iter=20",
                "--out",
                str(model),
            ]
        )
        == 0
    )
    fitted = json.loads(capsys.readouterr().out)
    assert fitted["kind"] == "rglm_correlated" and np.isfinite(fitted["held_out_bits_per_spike"])
    assert "bits_per_spike" not in fitted  # the API's name: held-out, not an evaluation's
    assert len(fitted["timescales_bins"]) == 2  # an R-GLM's, as the API answers them
    assert fitted["held_out_trials"] == [2]  # the trial the score is of (seed 0)
    assert main(["spikes", "eval", "--counts", str(tmp_path / "c.npz"), "--model", str(model)]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert np.isfinite(scored["bits_per_spike"]) and scored["units"]["log_likelihood"] == "nats"
    out = tmp_path / "s.npz"
    assert (
        main(
            [
                "spikes",
                "sample",
                "--model",
                str(model),
                "--n-trials",
                "2",
                "--n-bins",
                "30",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert np.load(out)["counts"].shape == (2, 30, 3)


def test_unknown_kind_is_refused_with_the_valid_kinds(tmp_path, capsys):
    np.savez(tmp_path / "c.npz", counts=np.ones((2, 10, 2)))
    args = ["--counts", str(tmp_path / "c.npz"), "--kind", "hmm", "--out", str(tmp_path / "m")]
    assert main(["spikes", "fit", *args]) == 2
    assert "valid kinds" in capsys.readouterr().err


def test_counts_from_a_npy_file_fit_as_from_a_npz(tmp_path, capsys):
    counts = np.random.default_rng(1).poisson(0.4, (4, 150, 3))
    np.save(tmp_path / "c.npy", counts)
    out = tmp_path / "m.pkl"
    args = ["--counts", str(tmp_path / "c.npy"), "--kind", "glm", "--option", "n_lags=3"]
    assert main(["spikes", "fit", *args, "--out", str(out)]) == 0  # was a TypeError
    assert np.isfinite(json.loads(capsys.readouterr().out)["held_out_bits_per_spike"])


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("n_lags=abc", "--option n_lags='abc': expected a whole number"),
        ('n_lags="5"', "--option n_lags='5': expected a whole number"),
        ("n_lags=2.5", "--option n_lags=2.5: expected a whole number"),
        ("l2=big", "--option l2='big': expected a number"),
        # out of the service's ranges: a 30 GB array's traceback, or fitted as given
        ("n_lags=1e9", "--option n_lags=1000000000.0: Input should be less than or equal to 100"),
        ("n_lags=-3", "--option n_lags=-3: Input should be greater than or equal to 1"),
        ("l2=-1", "--option l2=-1: Input should be greater than or equal to 0"),
        ("max_iter=0", "--option max_iter=0: Input should be greater than or equal to 1"),
    ],
)
def test_an_option_of_the_wrong_type_or_range_is_named(tmp_path, capsys, option, message):
    np.savez(tmp_path / "c.npz", counts=np.random.default_rng(0).poisson(0.4, (4, 150, 3)))
    args = ["--counts", str(tmp_path / "c.npz"), "--kind", "glm", "--option", option]
    assert main(["spikes", "fit", *args, "--out", str(tmp_path / "m")]) == 2  # was a TypeError
    assert message in capsys.readouterr().err


def test_a_file_that_is_not_counts_is_named(tmp_path, capsys):
    (tmp_path / "mk.py").write_text("print('hello')\n")
    args = ["--counts", str(tmp_path / "mk.py"), "--kind", "glm", "--out", str(tmp_path / "m")]
    assert main(["spikes", "fit", *args]) == 2
    assert "mk.py is not a .npz (with an array 'counts') or a .npy of counts" in (
        capsys.readouterr().err
    )


def test_the_kinds_offered_by_the_cli_are_the_models_kinds():
    from v1motion.models.spikes import MODEL_KINDS
    from v1motion.service.commands.spikes import MODEL_KIND_NAMES

    assert sorted(MODEL_KIND_NAMES) == sorted(MODEL_KINDS)


def test_a_stimulus_locked_model_samples_its_stimulus_length_by_default(tmp_path, capsys):
    counts = np.random.default_rng(0).poisson(0.4, (4, 120, 3))
    np.savez(tmp_path / "c.npz", counts=counts)
    model, out = tmp_path / "m.pkl", tmp_path / "s.npz"
    fit = ["spikes", "fit", "--counts", str(tmp_path / "c.npz"), "--kind", "glm_correlated_locked"]
    assert main([*fit, "--option", "n_lags=2", "--out", str(model)]) == 0
    assert json.loads(capsys.readouterr().out)["kind"] == "glm_correlated_locked"
    assert main(["spikes", "sample", "--model", str(model), "--out", str(out)]) == 0
    assert np.load(out)["counts"].shape == (1, 120, 3)
    assert (
        main(["spikes", "sample", "--model", str(model), "--n-bins", "30", "--out", str(out)]) == 2
    )
    assert "the stimulus-locked rate has 120" in capsys.readouterr().err


def test_a_missing_or_foreign_model_file_is_one_line_not_a_traceback(tmp_path, capsys):
    out = str(tmp_path / "s.npz")
    missing = str(tmp_path / "missing.pkl")
    assert main(["spikes", "sample", "--model", missing, "--n-bins", "5", "--out", out]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "missing.pkl" in err and "Traceback" not in err
    foreign = tmp_path / "notes.pkl"
    foreign.write_text("not a pickle at all")
    assert main(["spikes", "sample", "--model", str(foreign), "--n-bins", "5", "--out", out]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert "notes.pkl is not a model written by `v1motion spikes fit`" in err
    foreign.write_bytes(pickle.dumps([1, 2, 3]))  # a pickle, but not of a fitted model
    assert main(["spikes", "eval", "--model", str(foreign), "--counts", out]) == 2
    assert "is not a model written by" in capsys.readouterr().err


def test_a_counts_file_without_counts_and_a_bad_option_are_one_line(tmp_path, capsys):
    np.savez(tmp_path / "c.npz", spikes=np.zeros((2, 10, 3)))
    fit = ["spikes", "fit", "--kind", "rglm_correlated", "--out", str(tmp_path / "m.pkl")]
    assert main([*fit, "--counts", str(tmp_path / "c.npz")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "has no array 'counts' (has: ['spikes'])" in err
    np.savez(tmp_path / "c.npz", counts=np.zeros((2, 10, 3), int))
    assert main([*fit, "--counts", str(tmp_path / "c.npz"), "--option", "n_hidden"]) == 2
    assert "--option 'n_hidden': expected KEY=VALUE" in capsys.readouterr().err
    assert not (tmp_path / "m.pkl").exists()


def test_a_fit_larger_than_the_machine_is_refused_before_it_starts(tmp_path, capsys, monkeypatch):
    """With 2 GB of memory, a correlated GLM on 1,000 neurons (4.5 million parameters, about 10 GB)
    is one line naming both, before any fitting; 3 neurons fit."""
    from v1motion.service.commands import spikes as spikes_cli

    monkeypatch.setattr(spikes_cli, "physical_memory_bytes", lambda: 2_000_000_000)
    np.savez(tmp_path / "c.npz", counts=np.random.default_rng(0).poisson(0.5, (2, 20, 1000)))
    fit = ["spikes", "fit", "--kind", "glm_correlated", "--out", str(tmp_path / "m.pkl")]
    assert main([*fit, "--counts", str(tmp_path / "c.npz")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: this glm_correlated fit on 1000 neurons") and "10.4 GB" in err
    assert "this machine's 2.0 GB" in err and not (tmp_path / "m.pkl").exists()
    np.savez(tmp_path / "c.npz", counts=np.random.default_rng(0).poisson(0.5, (2, 20, 3)))
    assert main([*fit, "--counts", str(tmp_path / "c.npz"), "--option", "max_iter=5"]) == 0


class _RunawayModel:
    """A model whose samples all sit at the sampler's cap (a history-only model that ran away)."""

    def sample(self, n_trials, n_bins, seed):
        from v1motion.models.spikes.base import SAMPLE_MAX_COUNT

        return np.full((n_trials, n_bins, 2), float(SAMPLE_MAX_COUNT))


def test_a_sample_that_ran_away_to_the_cap_is_said(tmp_path, capsys):
    """The API said so (n_at_cap); the command printed only the shape and the spike total."""
    model = tmp_path / "m.pkl"
    saved = {"kind": "glm", "model": _RunawayModel(), "baseline": None, "bin_ms": 10.0}
    model.write_bytes(pickle.dumps(saved))
    out = tmp_path / "s.npz"
    args = ["spikes", "sample", "--model", str(model), "--n-trials", "2", "--n-bins", "5"]
    assert main([*args, "--out", str(out)]) == 0
    assert "warning: 20 counts at the sampler's cap of 100" in capsys.readouterr().err


def test_a_model_is_scored_on_the_bins_it_was_fitted_on(tmp_path, capsys):
    """Scored at 20 ms, a model fitted at 10 ms read 0.906 bits/spike and no warning."""
    from v1motion.models.datasets import shared_data_dir

    if not (shared_data_dir() / "spikes_retina_salamander_onken2016").exists():
        pytest.skip("no shared retina data")
    model = tmp_path / "m.pkl"
    fit = ["spikes", "fit", "--recording", "Movie1Exp1", "--kind", "independent"]
    assert main([*fit, "--out", str(model)]) == 0
    capsys.readouterr()
    scored = ["spikes", "eval", "--recording", "Movie1Exp1", "--model", str(model)]
    assert main([*scored, "--bin-ms", "20"]) == 2
    assert "fitted on bins of 10 ms" in capsys.readouterr().err
    assert main(scored) == 0


def test_the_decoder_check_alone_remakes_its_file_and_the_committed_one_is_current(tmp_path):
    """Only the 50-minute report wrote decoder_synthetic.json, and the committed one was stale."""
    from pathlib import Path

    assert main(["spikes", "report", "--decoder-only", "--out", str(tmp_path)]) == 0
    made = json.loads((tmp_path / "decoder_synthetic.json").read_text())
    assert (
        made["r2_hidden_state"] > 2 * made["r2_counts_same_bin"] > 0.3
    )  # the hidden state decodes
    committed = Path(__file__).resolve().parents[2] / "docs" / "spikes" / "decoder_synthetic.json"
    assert json.loads(committed.read_text()) == pytest.approx(made, abs=1e-4)  # it was 5e-4 off
