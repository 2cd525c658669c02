"""``v1motion spikes fit|eval|sample`` on a small counts file."""

import json

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
    assert fitted["kind"] == "rglm_correlated" and np.isfinite(fitted["bits_per_spike"])
    assert main(["spikes", "eval", "--counts", str(tmp_path / "c.npz"), "--model", str(model)]) == 0
    assert np.isfinite(json.loads(capsys.readouterr().out)["bits_per_spike"])
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


def test_unknown_kind_is_refused_with_the_valid_kinds(tmp_path):
    np.savez(tmp_path / "c.npz", counts=np.ones((2, 10, 2)))
    with pytest.raises(ValueError, match="valid kinds"):
        main(
            [
                "spikes",
                "fit",
                "--counts",
                str(tmp_path / "c.npz"),
                "--kind",
                "hmm",
                "--out",
                str(tmp_path / "m"),
            ]
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
    with pytest.raises(ValueError, match="the stimulus-locked rate has 120"):
        main(["spikes", "sample", "--model", str(model), "--n-bins", "30", "--out", str(out)])
