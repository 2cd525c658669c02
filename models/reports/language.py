"""The language model's report: the PTB table files, the timescale figure and the model card
(``v1motion lm eval --report/--card``); the numbers come from :mod:`v1motion.models.language.evaluate`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from v1motion.models import WEIGHTS_DIR
from v1motion.models.language.rglm import LinearRecurrentLM
from v1motion.models.reports.plotting import new_figure


def plot_timescales(model: LinearRecurrentLM, path: str | Path) -> Path:
    """Histogram of the unit timescales -1/log|r| (words) on a log axis, saved as PNG."""
    tau = model.timescales()
    fig = new_figure(figsize=(5.5, 3.5))
    ax = fig.subplots()
    bins = np.logspace(np.log10(max(tau.min(), 0.1)), np.log10(tau.max() * 1.01), 30)
    ax.hist(tau, bins=bins, color="#4477aa", edgecolor="white")
    ax.set_xscale("log")
    ax.set_xlabel("unit timescale  -1 / log|r|  (words)")
    ax.set_ylabel("hidden units")
    ax.set_title(f"R-GLM timescales (H={tau.size}, median {np.median(tau):.1f} words)")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def write_report(folder: str | Path, rows: list[dict], model_path: str | Path) -> None:
    """``ptb_table.md``, ``ptb_table.json`` and ``timescales.png`` in ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # no number (the reference RNN row) is null: NaN is not JSON, and JSON.parse refused the file
    plain = [
        {k: None if isinstance(v, float) and np.isnan(v) else v for k, v in r.items()} for r in rows
    ]
    (folder / "ptb_table.json").write_text(json.dumps(plain, indent=1, allow_nan=False))
    lines = ["| model | test ppl | target | notes |", "|---|---|---|---|"]
    for r in rows:
        ppl = "—" if np.isnan(r["ppl"]) else f"{r['ppl']:.1f}"
        target = "" if r.get("target") is None else f"{r['target']:.1f}"
        lines.append(f"| {r['model']} | {ppl} | {target} | {r.get('note', '')} |")
    (folder / "ptb_table.md").write_text("\n".join(lines) + "\n")
    plot_timescales(LinearRecurrentLM.load(model_path), folder / "timescales.png")


def _epochs(meta: dict) -> str:
    n = meta.get("epochs_done", "?")
    return f"{n} epoch{'' if n == 1 else 's'}"


def _cost(meta: dict) -> str:
    return (
        f"{_epochs(meta)}, {meta.get('train_seconds') or float('nan'):.0f} s "
        f"of training, {meta.get('tokens_per_s') or float('nan'):,.0f} tokens/s on average"
    )


_TUNABLE = ("bptt", "batch_size", "dropout_input", "dropout_hidden", "max_norm")
"""Settings a fine-tuning run (``lm train --init``) may change from the run it starts from, named
in the card when it does (its optimiser, rate and output layer are always named)."""


def _fine_tuning(model: LinearRecurrentLM, meta: dict, init: dict) -> str:
    """The card's sentence on a fine-tuning run (``lm train --init``) after the first run's."""
    output = "the sampled" if model.n_samples else "the exact"
    changed = [
        f"{k.replace('_', ' ')} {getattr(model, k)}"
        for k in _TUNABLE
        if init.get(k, getattr(model, k)) != getattr(model, k)
    ]
    return (
        f" Then, from those weights, {_epochs(meta)} with {output} softmax "
        f"({model.optimizer}, lr {model.learning_rate or 2e-3:g}, annealed the same way; a fresh "
        f"optimiser, seed {model.seed}"
        + (f"; {', '.join(changed)}" if changed else "; the other settings the same")
        + f"): valid {init.get('valid_ppl') or float('nan'):.1f} → "
        f"{meta.get('valid_ppl') or float('nan'):.1f}."
    )


def _calibration(calibration: dict) -> str:
    """The card's sentence on the temperature fitted by ``lm calibrate``."""
    return (
        f" Last, the softmax temperature fitted on {calibration['split']} (`lm calibrate`: every "
        f"logit multiplied by {calibration['logit_scale']:.3f}, folded into `P` and `c`): valid "
        f"{calibration['valid_ppl_before']:.1f} → {calibration['valid_ppl_after']:.1f}."
    )


def write_card(
    path: str | Path, model_path: str | Path, rows: list[dict], eval_command: str | None = None
) -> Path:
    """The model card (markdown) of the weights at ``model_path``, with its PTB ``rows``.

    Everything is read from the weights file (configuration and training record, including the
    command that trained it) and from the table rows, so the card is regenerated with the table.
    ``eval_command`` is the ``v1motion lm eval`` command that writes this card, the last line of
    its Reproduce section; the shipped weights' card ends with copying the trained weights into
    ``models/weights`` and the command that regenerates the committed table and card.
    """
    model = LinearRecurrentLM.load(model_path)
    meta = getattr(model, "meta_", {})
    model_path = Path(model_path)
    size_mb = model_path.stat().st_size / 1e6
    H = model.n_hidden
    V = len(model.vocab_)
    classes = getattr(model, "classes_", None)
    storage = getattr(model, "word_storage_", "float16")
    stored = "int8 with a float32 scale per word" if storage == "int8" else storage
    dense = ["`r`"] + (["`P`"] if getattr(model, "p_storage_", "float32") == "float32" else [])
    dense += ["the class vectors and biases"] if classes is not None else []
    dense_text = (
        ("`P` is float16; " if "`P`" not in dense else "")
        + (", ".join(dense[:-1]) + " and " + dense[-1] if len(dense) > 1 else dense[0])
        + (" are" if len(dense) > 1 else " is")
    )
    ppl = {r["model"]: r["ppl"] for r in rows}
    # A fine-tuned model (``lm train --init``): the run it started from trained it first
    init = meta.get("init") or {}
    first_run = ("optimizer", "learning_rate", "anneal", "n_samples", "seed", *_TUNABLE)
    base = {k: init.get(k, getattr(model, k)) for k in first_run}
    lr = base["learning_rate"] or (2e-3 if base["optimizer"] == "adam" else 1.0)
    command = meta.get("command", "(command not recorded in the weights file)")
    if init:
        command = f"{init['command']}\n{command}"
    calibration = meta.get("calibration") or {}
    if calibration:
        command += f"\n{calibration['command']}"
    shipped = f"models/weights/{model_path.name}"
    is_shipped = model_path.resolve().parent == WEIGHTS_DIR
    trained_to = re.findall(r"--out (\S+)", command)  # the last command's is the model's
    if is_shipped and trained_to and trained_to[-1] != shipped:
        command += f"\ncp {trained_to[-1]} {shipped}"
    if is_shipped:  # regenerates the committed table and this card
        command += (
            f"\nv1motion lm eval --model {shipped} --dynamic --baselines \\\n"
            f"    --report docs/language --card {shipped[:-4]}.md"
        )
    else:  # another run's card: the command that wrote it, not one that writes into the checkout
        command += "\n" + (
            eval_command
            or f"v1motion lm eval --model {model_path.as_posix()} --card {Path(path).as_posix()}"
        )
    r_text = (
        f"a diagonal `R` ({H} leaky integrators, each with its own timescale `-1/log|r|` words)"
        if model.recurrence == "diagonal"
        else f"a full {H} x {H} recurrent matrix `R`"
    )
    out_text = (
        "tied input/output word vectors `E`"
        if model.tied
        else "separate input (`E`) and output (`W`) word vectors"
    )
    if classes is not None:
        layer = (
            f"`P(w | h) = P(class(w) | h) P(w | class(w), h)` with {classes.n_classes} "
            "frequency-binned classes (words by decreasing count, equal slices of the "
            "cumulative square-root count); both softmaxes are exact, so the model is normalised "
            f"over all {V:,} words and is trained and scored with the same distribution"
        )
    else:
        layer = f"a softmax over all {V:,} words"
        if base["n_samples"]:
            layer += (
                f" (trained with a sampled softmax, {base['n_samples']:,} shared negatives drawn "
                "from unigram^0.75, importance-corrected"
                + ("" if model.n_samples else ", then fine-tuned with the exact one")
                + "; every reported perplexity uses the exact full softmax)"
            )
    averaging = ""
    if getattr(model, "average_from", None) is not None:
        held = not getattr(model, "anneal_while_averaging", True)
        averaging = (
            f"from epoch {model.average_from} on, the running mean of the weights over every "
            "update (Polyak averaging) is what is validated"
            + (", the learning rate held, " if held else ", annealed on ")
            + "and kept; "
        )
    lines = [
        f"# Model card: `{model_path.name}` — linear recurrent language model (R-GLM) on Penn "
        "Treebank",
        "",
        "Generated by `v1motion lm eval ... --card` (the last command under Reproduce).",
        "",
        f"**What it is.** A linear recurrent language model, `h_t = R h_{{t-1}} + E[w_t]`, with "
        f"{r_text}, {out_text} ({V:,} x {H}, stored {stored}), a {H} x {H} output projection "
        f"`P` and as output layer {layer}. "
        f"{dense_text} float32. "
        f"{size_mb:.2f} MB on disk. Code: `models/language/rglm.py`; served by "
        "`/v1/language/score` and `/v1/language/next`.",
        "",
        "**Data.** Penn Treebank, Mikolov's language-modelling split (929,589 training tokens "
        "including one `<eos>` per sentence, 10,000-word vocabulary), read from "
        "`shared_data_dir()/ptb`. Trained on `train`; learning-rate annealing, early stopping and "
        "every setting chosen on `valid` (`docs/language/search.md`); reported on `test`. The "
        "text derives from the LDC Penn Treebank (research use; see the data folder's "
        "`SOURCE.md`), so these weights inherit its research-use status.",
        "",
        f"**Training.** Truncated BPTT ({base['bptt']} steps) on {base['batch_size']} parallel "
        f"streams, dropout {base['dropout_input']} on the embeddings and "
        f"{base['dropout_hidden']} on the state fed to the output, max-norm {base['max_norm']} on "
        "every word vector, "
        f"{base['optimizer']} (lr {lr:g}, multiplied by {base['anneal']} whenever "
        "validation perplexity improves by less than 0.5 % in an epoch), gradient-norm clip 5, "
        f"seed {base['seed']}; {averaging}the best epoch on valid is kept."
        + (_fine_tuning(model, meta, init) if init else "")
        + (_calibration(calibration) if calibration else ""),
        "",
        "## Reproduce",
        "",
        "Resumable: the checkpoint is written every minute and when a job pauses; a run stopped "
        "at any moment and resumed with the same command ends with the same weights. Add "
        "`--time-limit SECONDS` to split it into jobs (re-run until it prints `finished`).",
        "",
        "```bash",
        command,
        "```",
        "",
        "**Training cost.** "
        + (f"{_cost(init)}, then fine-tuning {_cost(meta)}" if init else _cost(meta))
        + ", on a 2-core machine shared with other users' jobs (absolute speed varies with the "
        "load).",
        "",
        f"**Results (perplexity, exact, the {storage} weights as shipped).** "
        + (
            f"Valid {calibration['valid_ppl_after']:.1f} (best epoch, calibrated). "
            if calibration
            else f"Valid {meta.get('valid_ppl', float('nan')):.1f} (best epoch). "
        )
        + f"Test {ppl.get('R-GLM', float('nan')):.1f}",
    ]
    tail = []
    if "dynamic R-GLM" in ppl:
        tail.append(f"with dynamic evaluation {ppl['dynamic R-GLM']:.1f}")
    if "R-GLM + KN5 + cache" in ppl:
        tail.append(
            f"mixed with KN5 and decaying unigram and bigram caches {ppl['R-GLM + KN5 + cache']:.1f}"
        )
    if "dynamic R-GLM + KN5 + cache" in ppl:
        tail.append(f"and {ppl['dynamic R-GLM + KN5 + cache']:.1f} with dynamic evaluation")
    lines[-1] += ("; " + "; ".join(tail) if tail else "") + "."
    lines += [
        "",
        "| model | test ppl | target |",
        "|---|---|---|",
        *[
            f"| {r['model']} | {'—' if np.isnan(r['ppl']) else format(r['ppl'], '.1f')} | "
            f"{'' if r.get('target') is None else format(r['target'], '.1f')} |"
            for r in rows
        ],
        "",
        "**Limits.** Trained on 1989 Wall Street Journal text: surprisal of other genres is high "
        "and vocabulary coverage is poor (unknown words are scored as `<unk>` and flagged). The "
        "model reads PTB-style tokens; `models/language/data.py:tokenize` approximates that "
        "preprocessing for free text. A linear model: no nonlinear interactions between words "
        "beyond what the decaying traces provide.",
    ]
    path = Path(path)
    path.write_text("\n".join(lines) + "\n")
    return path
