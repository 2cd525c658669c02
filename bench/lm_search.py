"""Measured search of R-GLM training settings on the Penn Treebank VALIDATION split.

Each named setting is trained (single-threaded; run it under ``nice``) for a fixed number of
epochs with the class-factorised output layer, and its validation perplexity after every epoch
(exact: normalised over all 10,000 words) is appended to ``docs/language/search.json``; the table
``docs/language/search.md`` is regenerated from that file. The test split is never read.

    OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1 nice -n 10 python bench/lm_search.py NAME [NAME ...]
    python bench/lm_search.py --table          # only rewrite search.md
    python bench/lm_search.py --add-run NAME runs/lm/cand.npz   # record an `lm train` run

Runs made with ``v1motion lm train`` (longer, resumable) are recorded with ``--add-run`` from their
weights file (configuration and training command) and the ``.history.json`` written next to it.

Settings are listed in ``SETTINGS``; every one starts from ``BASE`` and changes what it names.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs" / "language"

BASE = dict(
    n_hidden=200,
    recurrence="diagonal",
    tied=True,
    dropout_input=0.1,
    dropout_hidden=0.25,
    max_norm=3.0,
    bptt=20,
    batch_size=64,
    n_samples=None,
    n_classes=100,
    class_power=0.5,
    optimizer="adam",
    learning_rate=2e-3,
    anneal=0.5,
    seed=0,
)
EPOCHS = 4
PTB_TRAIN_TOKENS = 929_589  # training ids, one <eos> per sentence included

SETTINGS: dict[str, dict] = {
    "base": {},
    # hidden size
    "h100": dict(n_hidden=100),
    "h300": dict(n_hidden=300),
    "h400": dict(n_hidden=400),
    "h600": dict(n_hidden=600),
    # dropout rate and placement
    "drop0": dict(dropout_input=0.0, dropout_hidden=0.0),
    "drop-in0.25": dict(dropout_input=0.25),
    "drop-h0.5": dict(dropout_hidden=0.5),
    "drop-in0.25-h0.5": dict(dropout_input=0.25, dropout_hidden=0.5),
    # column (word-vector) normalisation
    "maxnorm-off": dict(max_norm=None),
    "maxnorm1.5": dict(max_norm=1.5),
    # recurrence
    "full-R": dict(recurrence="full"),
    # output layer
    "sampled1024": dict(n_classes=None, n_samples=1024),
    "classes-pow1": dict(class_power=1.0),
    "classes200": dict(n_classes=200),
    # embeddings
    "untied": dict(tied=False),
    # learning-rate schedule
    "lr1e-3": dict(learning_rate=1e-3),
    "lr4e-3": dict(learning_rate=4e-3),
    "anneal0.25": dict(anneal=0.25),
    # optimiser: SGD with momentum 0.9 (the step is lr x the running sum of gradients)
    "sgd-lr0.1": dict(optimizer="sgd", learning_rate=0.1),
    "sgd-lr0.3": dict(optimizer="sgd", learning_rate=0.3),
    "sgd-lr1": dict(optimizer="sgd", learning_rate=1.0),
}


def run(name: str, epochs: int) -> dict:
    from v1motion.models.language.data import load_ptb
    from v1motion.models.language.rglm import LinearRecurrentLM

    vocab, data = load_ptb()
    config = {**BASE, **SETTINGS[name], "n_epochs": epochs}
    model = LinearRecurrentLM(**config)
    t0 = time.perf_counter()
    model.fit(data["train"], vocab, valid=data["valid"], progress=True)
    seconds = time.perf_counter() - t0
    tokens = sum(1 for _ in model.history_) * ((len(data["train"]) - 1) // 64 * 64)
    return {
        "name": name,
        "changes": SETTINGS[name],
        "epochs": len(model.history_),
        "tokens_seen": tokens,
        "valid_ppl": [round(e["valid_ppl"], 2) for e in model.history_],
        "best_valid_ppl": round(min(e["valid_ppl"] for e in model.history_), 2),
        "train_loss": [round(e["train_loss"], 4) for e in model.history_],
        "tokens_per_s": round(sum(e["tokens_per_s"] for e in model.history_) / len(model.history_)),
        "seconds": round(seconds),
    }


def from_train_run(name: str, weights: Path) -> dict:
    """The record of a run made with ``v1motion lm train``: its weights and ``.history.json``."""
    import numpy as np

    with np.load(weights, allow_pickle=False) as z:
        config = json.loads(str(z["config"]))
    history = json.loads(weights.with_suffix(".history.json").read_text())
    if config.get("learning_rate") is None:
        config["learning_rate"] = 2e-3 if config.get("optimizer", "adam") == "adam" else 1.0
    skip = {"class_power"} if not config.get("n_classes") else set()
    changes = {k: config[k] for k in BASE if k not in skip and config.get(k) != BASE[k]}
    if config.get("dropout_words"):  # word-type dropout (not in BASE: off in every short run)
        changes["dropout_words"] = config["dropout_words"]
    if config.get("average_from") is not None:  # weights averaged from this epoch on
        changes["average_from"] = config["average_from"]
        if config.get("anneal_while_averaging") is False:  # the learning rate held meanwhile
            changes["anneal_while_averaging"] = False
    limit = re.search(r"--train-tokens (\d+)", config["command"])
    n_train = int(limit.group(1)) if limit else PTB_TRAIN_TOKENS
    tokens_per_epoch = (n_train - 1) // config["batch_size"] * config["batch_size"]
    record = {
        "name": name,
        "changes": changes,
        "epochs": len(history),
        "tokens_seen": len(history) * tokens_per_epoch,
        "valid_ppl": [round(e["valid_ppl"], 2) for e in history],
        "best_valid_ppl": round(min(e["valid_ppl"] for e in history), 2),
        "train_loss": [round(e["train_loss"], 4) for e in history],
        "tokens_per_s": round(sum(e["tokens_per_s"] for e in history) / len(history)),
        "seconds": round(sum(e["seconds"] for e in history)),
        "command": " ".join(config["command"].replace("\\\n", " ").split()),
    }
    init = config.get("init")
    if init:  # fine-tuned from an earlier run's weights (``lm train --init``)
        changes["init"] = re.search(r"--init (\S+)", config["command"]).group(1)
        record["init_command"] = " ".join(init["command"].replace("\\\n", " ").split())
        record["init_valid_ppl"] = round(init["valid_ppl"], 2)
    if any("valid_ppl_raw" in e for e in history):  # valid_ppl is of the averaged weights
        record["valid_ppl_last_iterate"] = [
            round(e["valid_ppl_raw"], 2) if "valid_ppl_raw" in e else None for e in history
        ]
    return record


def write_table(results: list[dict]) -> str:
    base = ", ".join(f"{k}={v}" for k, v in BASE.items())
    lines = [
        "# R-GLM settings searched on the validation split",
        "",
        "Generated by `bench/lm_search.py` from `search.json`. Validation perplexity is exact "
        "(the full softmax, or the class-factorised softmax normalised over all 10,000 words); "
        "the test split was not read. Short runs: each setting is trained for the epochs shown "
        "(one epoch = 929,536 training tokens) from seed 0, single-threaded on a shared 2-core "
        "machine loaded by other users' jobs, so the tokens/s column compares settings only "
        "roughly. Short runs favour settings that learn fast: stronger dropout and larger "
        "models are still improving when the run stops (see the per-epoch column).",
        "",
        f"Base setting: {base}.",
        "",
        "| setting | changes from base | epochs | tokens seen | valid ppl per epoch | best valid ppl"
        " | tokens/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in sorted(results, key=lambda r: r["best_valid_ppl"]):
        changes = ", ".join(f"{k}={v}" for k, v in r["changes"].items()) or "—"
        per_epoch = " / ".join(f"{p:.1f}" for p in r["valid_ppl"])
        lines.append(
            f"| {r['name']} | {changes} | {r['epochs']} | {r['tokens_seen']:,} | {per_epoch} "
            f"| **{r['best_valid_ppl']:.1f}** | {r['tokens_per_s']:,} |"
        )
    longer = [r for r in results if r.get("command")]
    if longer:
        lines += ["", "Runs made with `v1motion lm train` (not by this script), reproduced by:", ""]
        for r in longer:
            lines += [f"- {r['name']}:", "", "  ```bash", f"  {r['command']}", "  ```", ""]
            if r.get("init_command"):
                lines += [
                    f"  Started from the weights of this run (valid {r['init_valid_ppl']:.1f}); "
                    "the per-epoch column is of the fine-tuning alone:",
                    "",
                    "  ```bash",
                    f"  {r['init_command']}",
                    "  ```",
                    "",
                ]
            if r.get("valid_ppl_last_iterate"):
                raw = " / ".join(
                    "—" if p is None else f"{p:.1f}" for p in r["valid_ppl_last_iterate"]
                )
                lines += [
                    f"  From epoch {r['changes']['average_from']} the per-epoch column is the "
                    "valid ppl of the running mean of the weights (Polyak averaging); that of the "
                    f"last iterate per epoch: {raw}.",
                    "",
                ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help=f"settings to run: {', '.join(SETTINGS)}")
    ap.add_argument("--epochs", type=int, default=EPOCHS, help="epochs per setting")
    ap.add_argument("--table", action="store_true", help="only rewrite search.md")
    ap.add_argument(
        "--add-run",
        nargs=2,
        metavar=("NAME", "WEIGHTS"),
        help="record a run made with `v1motion lm train` from its weights (.npz) and history",
    )
    ap.add_argument(
        "--out-dir",
        type=Path,
        default=DOCS,
        help="folder of search.json (read and extended) and search.md (default: docs/language)",
    )
    args = ap.parse_args()
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    store = out / "search.json"
    results = json.loads(store.read_text()) if store.exists() else []
    if args.add_run:
        r = from_train_run(args.add_run[0], Path(args.add_run[1]))
        print(json.dumps(r))
        results = [x for x in results if x["name"] != r["name"]]
        results.append(r)
        store.write_text(json.dumps(results, indent=1) + "\n")
    for name in [] if args.table else args.names:
        if name not in SETTINGS:
            raise SystemExit(f"unknown setting {name!r}; valid: {', '.join(SETTINGS)}")
        r = run(name, args.epochs)
        print(json.dumps(r))
        results = [x for x in results if (x["name"], x["epochs"]) != (name, r["epochs"])]
        results.append(r)
        store.write_text(json.dumps(results, indent=1) + "\n")
        (out / "search.md").write_text(write_table(results))
    (out / "search.md").write_text(write_table(results))


if __name__ == "__main__":
    main()
