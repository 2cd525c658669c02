"""The PTB table and the training command, end to end through the CLI (needs the shared PTB)."""

import json

import numpy as np
import pytest

from v1motion.models.datasets import shared_data_dir
from v1motion.models.language.data import load_ptb
from v1motion.models.language.evaluate import TARGETS
from v1motion.models.language.rglm import LinearRecurrentLM
from v1motion.service.cli import main

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (shared_data_dir() / "ptb" / "ptb.train.txt.gz").exists(), reason="no Penn Treebank"
    ),
]


def test_eval_table_kn5_matches_published_and_mixtures_help(tmp_path, capsys):
    vocab, _ = load_ptb()
    model = LinearRecurrentLM(n_hidden=4, seed=0)
    model.vocab_ = vocab
    model.params_ = model.init_params(len(vocab))  # untrained: unigram bias only
    path = model.save(tmp_path / "tiny.npz")
    report = tmp_path / "report"
    assert main(["lm", "eval", "--model", str(path), "--baselines", "--report", str(report)]) == 0
    assert "KN5" in capsys.readouterr().out
    rows = {r["model"]: r for r in json.loads((report / "ptb_table.json").read_text())}
    # our modified-KN 5-gram against the published 141.2 (Mikolov et al. 2011)
    assert rows["KN5"]["ppl"] == pytest.approx(TARGETS["KN5"], rel=0.01)
    assert rows["KN5 + cache"]["ppl"] < rows["KN5"]["ppl"]
    assert rows["R-GLM + KN5 + cache"]["ppl"] <= rows["KN5 + cache"]["ppl"] * 1.001
    assert rows["RNN"]["ppl"] is None  # no number: null, as JSON has no NaN
    assert "| KN5 |" in (report / "ptb_table.md").read_text()
    assert (report / "timescales.png").stat().st_size > 1000


def test_train_command_writes_half_precision_weights_and_resumes(tmp_path, capsys):
    out, ckpt = tmp_path / "m.npz", tmp_path / "ckpt.npz"
    args = ["lm", "train", "--out", str(out), "--checkpoint", str(ckpt), "--hidden", "8"]
    args += ["--samples", "64", "--train-tokens", "20000", "--epochs", "2"]
    assert main([*args, "--time-limit", "0.01"]) == 0  # pauses after its first window
    assert "paused inside epoch 1" in capsys.readouterr().out
    assert ckpt.exists() and not out.exists()
    assert main(args) == 0
    assert "finished: 2/2 epochs" in capsys.readouterr().out
    model = LinearRecurrentLM.load(out)
    assert model.n_hidden == 8 and model.meta_["epochs_done"] == 2
    with np.load(out) as z:
        assert z["E"].dtype == np.float16
    # the finished run's command with --int8 only rewrites the weights, quantised
    history = out.with_suffix(".history.json").read_text()
    assert main([*args, "--int8"]) == 0
    assert "finished: 2/2 epochs" in capsys.readouterr().out
    assert out.with_suffix(".history.json").read_text() == history  # no further training
    quantised = LinearRecurrentLM.load(out)
    assert quantised.word_storage_ == "int8" and "--int8" in quantised.meta_["command"]
    step = np.abs(model.params_["E"]).max(axis=1, keepdims=True) / 127
    assert (np.abs(quantised.params_["E"] - model.params_["E"]) <= 0.5 * step * 1.01 + 1e-3).all()
    np.testing.assert_array_equal(quantised.params_["P"], model.params_["P"])  # float32 by default
    # and with --float16-p, P too is rewritten, rounded to float16
    assert main([*args, "--int8", "--float16-p"]) == 0
    half = LinearRecurrentLM.load(out)
    assert half.p_storage_ == "float16" and "--float16-p" in half.meta_["command"]
    assert out.with_suffix(".history.json").read_text() == history
    want = model.params_["P"].astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(half.params_["P"], want)
    np.testing.assert_array_equal(half.params_["E"], quantised.params_["E"])


@pytest.mark.parametrize(
    "extra, said",
    [
        (["--time-limit", "4"], "--time-limit pauses a run to resume it: give --checkpoint too"),
        (["--out", "DIR"], "must be a .npz file"),
        (["--out", "DIR/model"], "must be a .npz file"),
        (["--train-tokens", "5"], "5 training tokens make fewer than 2 for each of the 64"),
    ],
)
def test_train_refuses_what_it_would_lose_or_misplace(tmp_path, capsys, extra, said):
    """Paused without a checkpoint, a run's work was thrown away and called resumable; an --out
    without .npz was written beside it, under another name than the one printed."""
    extra = [x.replace("DIR", str(tmp_path)) for x in extra]
    args = ["lm", "train", "--out", str(tmp_path / "m.npz"), "--hidden", "8", *extra]
    assert main(args) == 2
    assert said in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "option", ["--hidden", "--epochs", "--train-tokens", "--lr", "--time-limit"]
)
def test_train_options_that_must_be_positive_are_refused_before_any_work(capsys, option):
    with pytest.raises(SystemExit) as stop:
        main(["lm", "train", "--out", "m.npz", option, "0"])
    assert stop.value.code == 2
    assert f"argument {option}: must be" in capsys.readouterr().err


def test_train_runs_with_the_blas_threads_it_is_given(tmp_path, monkeypatch, capsys):
    from threadpoolctl import threadpool_info

    from v1motion.service.commands import lm

    seen = []
    monkeypatch.setattr(lm, "_train", lambda args: seen.append(threadpool_info()) or 0)
    base = ["lm", "train", "--out", str(tmp_path / "m.npz")]
    assert main([*base, "--threads", "2"]) == 0
    blas = [p["num_threads"] for p in seen[0] if p["user_api"] == "blas"]
    assert blas and all(n == 2 for n in blas)
    assert main([*base, "--threads", "0"]) == 2
    assert "--threads must be >= 1" in capsys.readouterr().err


def test_train_init_fine_tunes_an_earlier_run_and_its_card_says_how(tmp_path, capsys):
    from v1motion.models.reports.language import write_card

    first = tmp_path / "first.npz"
    base = ["lm", "train", "--hidden", "8", "--train-tokens", "20000", "--epochs", "1"]
    assert main([*base, "--out", str(first), "--samples", "64", "--classes", "0"]) == 0
    start = LinearRecurrentLM.load(first)
    out = tmp_path / "tuned.npz"
    # on more of the text than the first run read (a second pass over its 20,000 words overfits)
    tune = [*base, "--out", str(out), "--classes", "0", "--samples", "0", "--lr", "3e-3"]
    tune += ["--train-tokens", "60000", "--dropout-hidden", "0.1"]
    assert main([*tune, "--init", str(first)]) == 0
    capsys.readouterr()
    tuned = LinearRecurrentLM.load(out)
    init = tuned.meta_["init"]
    assert init["n_samples"] == 64 and init["command"] == start.meta_["command"]
    assert f"--init {first.as_posix()}" in tuned.meta_["command"]
    # it started from the first run's weights and improved them
    assert tuned.meta_["valid_ppl"] < 0.95 * init["valid_ppl"] < 1000
    moved = np.abs(tuned.params_["E"] - start.params_["E"]).max()
    assert 0 < moved < 0.5 * np.abs(start.params_["E"]).max()
    rows = [{"model": "R-GLM", "ppl": 100.0, "target": 102.0}]
    card = write_card(tmp_path / "card.md", out, rows).read_text()
    assert start.meta_["command"] in card and tuned.meta_["command"] in card
    assert card.index(start.meta_["command"]) < card.index(tuned.meta_["command"])
    assert "then fine-tuned with the exact one" in card and "Then, from those weights" in card
    # a run's own card: no copying into the checkout, no command writing into docs/language
    reproduce = card[card.index("## Reproduce") :]
    assert "cp " not in reproduce and "docs/language" not in reproduce
    assert f"v1motion lm eval --model {out.as_posix()} --card {tmp_path.as_posix()}/card.md" in card
    # each run's own settings: the first run's dropout, then what the fine-tuning changed
    assert "dropout 0.1 on the embeddings and 0.25 on the state" in card
    assert "; dropout hidden 0.1)" in card
    # weights of another shape are refused with a message, not a traceback
    assert main([*tune, "--hidden", "6", "--init", str(first)]) == 2
    assert "warm_start" in capsys.readouterr().err
    assert main([*tune, "--init", str(tmp_path / "missing.npz")]) == 2
    assert "--init" in capsys.readouterr().err


def test_calibrate_command_fits_the_temperature_on_valid_and_keeps_the_storage(tmp_path, capsys):
    from v1motion.models.reports.language import write_card

    vocab, data = load_ptb()
    model = LinearRecurrentLM(n_hidden=4, seed=0)
    model.vocab_ = vocab
    unigram = np.bincount(data["train"], minlength=len(vocab)).astype(np.float64)
    model.params_ = model.init_params(len(vocab), unigram)  # a unigram model, and a little noise
    model.params_["P"] *= 3.0  # logits three times too sharp
    model.params_["c"] *= 3.0
    command = "v1motion lm train --out runs/m.npz --hidden 4"
    path = model.save(tmp_path / "m.npz", int8=True, meta={"command": command})
    out = tmp_path / "cal.npz"
    assert main(["lm", "calibrate", "--model", str(path), "--out", str(out)]) == 0
    assert "valid ppl" in capsys.readouterr().out
    cal = LinearRecurrentLM.load(out)
    done = cal.meta_["calibration"]
    assert done["valid_ppl_after"] < done["valid_ppl_before"]
    assert done["valid_ppl_before"] == pytest.approx(model.perplexity(data["valid"]), rel=1e-3)
    assert done["valid_ppl_after"] == pytest.approx(cal.perplexity(data["valid"]), rel=1e-3)
    assert done["logit_scale"] == pytest.approx(1 / 3, rel=0.05)
    assert cal.word_storage_ == "int8" and cal.p_storage_ == "float32"
    assert cal.meta_["command"] == command  # the training record travels with the weights
    np.testing.assert_array_equal(cal.params_["E"], LinearRecurrentLM.load(path).params_["E"])
    # a calibrated file is not calibrated again
    assert main(["lm", "calibrate", "--model", str(out), "--out", str(tmp_path / "x.npz")]) == 2
    assert "already calibrated" in capsys.readouterr().err
    # the card names the step and the command that made it
    card = write_card(tmp_path / "card.md", out, [{"model": "R-GLM", "ppl": 500.0}]).read_text()
    assert f"lm calibrate --model {path.as_posix()} --out {out.as_posix()}" in card
    assert "softmax temperature fitted on valid" in card and "(best epoch, calibrated)" in card


def test_the_shipped_card_is_remade_byte_for_byte_and_an_eval_card_names_its_command(
    tmp_path, capsys
):
    """The card of a user's model gave the shipped model's recipe: copy the weights into
    models/weights and regenerate the committed table into docs/language."""
    import json

    from v1motion.models import WEIGHTS_DIR
    from v1motion.models.reports.language import write_card

    root = WEIGHTS_DIR.parents[1]
    rows = json.loads((root / "docs" / "language" / "ptb_table.json").read_text())
    rows = [dict(r, ppl=float("nan") if r["ppl"] is None else r["ppl"]) for r in rows]
    card = write_card(tmp_path / "card.md", WEIGHTS_DIR / "lm_ptb_rglm.npz", rows)
    assert card.read_text() == (WEIGHTS_DIR / "lm_ptb_rglm.md").read_text()
    model = tmp_path / "m.npz"
    train = ["lm", "train", "--hidden", "4", "--train-tokens", "5000", "--epochs", "1"]
    assert main([*train, "--out", str(model), "--classes", "0", "--samples", "32"]) == 0
    mine = tmp_path / "mine.md"
    assert main(["lm", "eval", "--model", str(model), "--card", str(mine)]) == 0
    text = mine.read_text()
    reproduce = text[text.index("## Reproduce") :]
    said = f"v1motion lm eval --model {model.as_posix()} \\\n    --card {mine.as_posix()}\n```"
    assert said in reproduce
    assert "cp " not in reproduce and "docs/language" not in reproduce
