"""The Penn Treebank perplexity table: R-GLM, dynamic R-GLM, KN5, cache and tuned mixtures.

Every tunable (dynamic-evaluation learning rate, cache size, mixture weights) is chosen on the
validation split; perplexities are then reported on the requested split (test by default).
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path

import numpy as np

from models.language.data import load_ptb
from models.language.ngram import KneserNeyLM, UnigramCache, fit_mixture, mixture_log_probs
from models.language.rglm import LinearRecurrentLM

log = logging.getLogger(__name__)

# Test perplexities of the original work's table (Pachitariu & Sahani 2013 / Mikolov et al. 2011).
TARGETS = {
    "KN5": 141.2,
    "RNN": 124.7,
    "R-GLM": 102.0,
    "dynamic R-GLM": 98.4,
    "R-GLM + KN5 + cache": 94.0,
    "dynamic R-GLM + KN5 + cache": 90.7,
}
DYNAMIC_LRS = (0.001, 0.003, 0.01)
CACHE_SIZES = (100, 200, 500, 1000, 2000)
TUNE_TOKENS = 10000


def _ppl(logp: np.ndarray) -> float:
    return float(np.exp(-np.mean(logp)))


def _output_layer(model: LinearRecurrentLM) -> str:
    classes = getattr(model, "classes_", None)
    if classes is not None:
        return f"{classes.n_classes}-class softmax (exact)"
    return "full softmax"


def tune_dynamic_lr(model: LinearRecurrentLM, valid: np.ndarray, progress: bool = False) -> float:
    """Dynamic-evaluation learning rate with the best perplexity on the start of ``valid``."""
    part = valid[:TUNE_TOKENS]
    scores = {lr: _ppl(model.dynamic_log_probs(part, learning_rate=lr)) for lr in DYNAMIC_LRS}
    for lr, ppl in scores.items():
        log.info("dynamic lr %s: valid[:%s] ppl %.2f", lr, TUNE_TOKENS, ppl)
    finite = {lr: p for lr, p in scores.items() if np.isfinite(p)}
    if not finite:
        raise FloatingPointError("dynamic evaluation diverged at every learning rate tried")
    return min(finite, key=finite.get)


def ptb_table(
    model_path: str | Path,
    split: str = "test",
    dynamic: bool = True,
    dynamic_lr: float | None = None,
    baselines: bool = True,
    progress: bool = False,
) -> list[dict]:
    """Rows ``{model, ppl, target, note}`` of the PTB table for the model saved at ``model_path``."""
    if split not in ("valid", "test"):
        raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
    model = LinearRecurrentLM.load(model_path)
    vocab, data = load_ptb()
    if vocab.words != model.vocab_.words:
        raise ValueError("the model's vocabulary is not the PTB training vocabulary")
    valid, evals = data["valid"], data[split]
    rows: list[dict] = []
    meta = getattr(model, "meta_", {})
    note = (
        f"H={model.n_hidden} {model.recurrence} R, {'tied' if model.tied else 'untied'}, "
        f"{_output_layer(model)}; "
        f"trained {meta.get('train_seconds', float('nan')):.0f} s at "
        f"{meta.get('tokens_per_s', float('nan')):.0f} tok/s"
    )
    t0 = time.perf_counter()
    lp = {("rglm", "valid"): model.log_probs(valid), ("rglm", split): model.log_probs(evals)}
    rows.append(
        {"model": "R-GLM", "ppl": _ppl(lp["rglm", split]), "target": TARGETS["R-GLM"], "note": note}
    )
    log.info("static R-GLM done in %.1f s", time.perf_counter() - t0)
    if dynamic:
        lr = dynamic_lr if dynamic_lr is not None else tune_dynamic_lr(model, valid, progress)
        t0 = time.perf_counter()
        lp["dyn", split] = model.dynamic_log_probs(evals, learning_rate=lr, progress=progress)
        rows.append(
            {
                "model": "dynamic R-GLM",
                "ppl": _ppl(lp["dyn", split]),
                "target": TARGETS["dynamic R-GLM"],
                "note": f"SGD lr {lr} (tuned on valid), windows of 20 words, "
                f"{time.perf_counter() - t0:.0f} s",
            }
        )
        if baselines:
            lp["dyn", "valid"] = model.dynamic_log_probs(valid, learning_rate=lr, progress=progress)
    if baselines:
        kn = KneserNeyLM(order=5).fit(data["train"], len(vocab))
        lp["kn", "valid"], lp["kn", split] = kn.log_probs(valid), kn.log_probs(evals)
        rows.insert(
            0,
            {
                "model": "KN5",
                "ppl": _ppl(lp["kn", split]),
                "target": TARGETS["KN5"],
                "note": "interpolated modified Kneser-Ney 5-gram, this repository",
            },
        )
        # cache size: best KN5 + cache mixture on valid
        best = None
        for size in CACHE_SIZES:
            pc = UnigramCache(size).probs(valid)
            probs = np.stack([np.exp(lp["kn", "valid"]), pc])
            w = fit_mixture(probs)
            ll = mixture_log_probs(probs, w).mean()
            if best is None or ll > best[0]:
                best = (ll, size)
        size = best[1]
        cache = {s: UnigramCache(size).probs(data[s]) for s in ("valid", split)}
        mixes = [("KN5 + cache", ["kn"]), ("R-GLM + KN5 + cache", ["rglm", "kn"])]
        if dynamic:
            mixes.append(("dynamic R-GLM + KN5 + cache", ["dyn", "kn"]))
        for name, parts in mixes:
            pv = np.stack([np.exp(lp[p, "valid"]) for p in parts] + [cache["valid"]])
            w = fit_mixture(pv)
            pe = np.stack([np.exp(lp[p, split]) for p in parts] + [cache[split]])
            weights = ", ".join(f"{p} {x:.2f}" for p, x in zip([*parts, "cache"], w, strict=True))
            rows.append(
                {
                    "model": name,
                    "ppl": _ppl(mixture_log_probs(pe, w)),
                    "target": TARGETS.get(name),
                    "note": f"linear mixture, weights tuned on valid: {weights}; cache {size} words",
                }
            )
    rows.append(
        {
            "model": "RNN",
            "ppl": float("nan"),
            "target": TARGETS["RNN"],
            "note": "Mikolov's nonlinear RNN: reference row, not trained here",
        }
    )
    return rows


def plot_timescales(model: LinearRecurrentLM, path: str | Path) -> Path:
    """Histogram of the unit timescales -1/log|r| (words) on a log axis, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tau = model.timescales()
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
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
    plt.close(fig)
    return path


def write_report(folder: str | Path, rows: list[dict], model_path: str | Path) -> None:
    """``ptb_table.md``, ``ptb_table.json`` and ``timescales.png`` in ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ptb_table.json").write_text(json.dumps(rows, indent=1))
    lines = ["| model | test ppl | target | notes |", "|---|---|---|---|"]
    for r in rows:
        ppl = "—" if np.isnan(r["ppl"]) else f"{r['ppl']:.1f}"
        target = "" if r.get("target") is None else f"{r['target']:.1f}"
        lines.append(f"| {r['model']} | {ppl} | {target} | {r.get('note', '')} |")
    (folder / "ptb_table.md").write_text("\n".join(lines) + "\n")
    plot_timescales(LinearRecurrentLM.load(model_path), folder / "timescales.png")


def write_card(path: str | Path, model_path: str | Path, rows: list[dict]) -> Path:
    """The model card (markdown) of the weights at ``model_path``, with its PTB ``rows``.

    Everything is read from the weights file (configuration and training record, including the
    command that trained it) and from the table rows, so the card is regenerated with the table.
    """
    model = LinearRecurrentLM.load(model_path)
    meta = getattr(model, "meta_", {})
    model_path = Path(model_path)
    size_mb = model_path.stat().st_size / 1e6
    H = model.n_hidden
    V = len(model.vocab_)
    classes = getattr(model, "classes_", None)
    ppl = {r["model"]: r["ppl"] for r in rows}
    lr = model.learning_rate or (2e-3 if model.optimizer == "adam" else 1.0)
    command = meta.get("command", "(command not recorded in the weights file)")
    shipped = f"models/weights/{model_path.name}"
    trained_to = re.search(r"--out (\S+)", command)
    if trained_to and trained_to.group(1) != shipped:
        command += f"\ncp {trained_to.group(1)} {shipped}"
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
        if model.n_samples:
            layer += (
                f" (trained with a sampled softmax, {model.n_samples:,} shared negatives drawn "
                "from unigram^0.75, importance-corrected; every reported perplexity uses the "
                "exact full softmax)"
            )
    lines = [
        f"# Model card: `{model_path.name}` — linear recurrent language model (R-GLM) on Penn "
        "Treebank",
        "",
        "Generated by `v1motion lm eval ... --card` (the last command under Reproduce).",
        "",
        f"**What it is.** A linear recurrent language model, `h_t = R h_{{t-1}} + E[w_t]`, with "
        f"{r_text}, {out_text} ({V:,} x {H}, stored float16), a {H} x {H} output projection "
        f"`P` and as output layer {layer}. "
        f"{'`r`, `P`, the class vectors and biases' if classes is not None else '`r` and `P`'} "
        "are float32. "
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
        f"**Training.** Truncated BPTT ({model.bptt} steps) on {model.batch_size} parallel "
        f"streams, dropout {model.dropout_input} on the embeddings and {model.dropout_hidden} on "
        f"the state fed to the output, max-norm {model.max_norm} on every word vector, "
        f"{model.optimizer} (lr {lr:g}, multiplied by {model.anneal} whenever "
        "validation perplexity improves by less than 0.5 % in an epoch), gradient-norm clip 5, "
        f"seed {model.seed}; the best epoch on valid is kept.",
        "",
        "## Reproduce",
        "",
        "Resumable: the checkpoint is written every minute and when a job pauses; a run stopped "
        "at any moment and resumed with the same command ends with the same weights. Add "
        "`--time-limit SECONDS` to split it into jobs (re-run until it prints `finished`).",
        "",
        "```bash",
        command,
        f"v1motion lm eval --model {shipped} --dynamic --baselines \\",
        f"    --report docs/language --card {shipped[:-4]}.md",
        "```",
        "",
        f"**Training cost.** {meta.get('epochs_done', '?')} epochs, "
        f"{meta.get('train_seconds', float('nan')):.0f} s of training, "
        f"{meta.get('tokens_per_s', float('nan')):,.0f} tokens/s on average, single-threaded on a "
        "2-core machine shared with other users' jobs (absolute speed varies with the load).",
        "",
        "**Results (perplexity, exact, the float16 weights as shipped).** "
        f"Valid {meta.get('valid_ppl', float('nan')):.1f} (best epoch). "
        f"Test {ppl.get('R-GLM', float('nan')):.1f}",
    ]
    tail = []
    if "dynamic R-GLM" in ppl:
        tail.append(f"with dynamic evaluation {ppl['dynamic R-GLM']:.1f}")
    if "R-GLM + KN5 + cache" in ppl:
        tail.append(f"mixed with KN5 and a unigram cache {ppl['R-GLM + KN5 + cache']:.1f}")
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
