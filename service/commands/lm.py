"""``v1motion lm train|calibrate|eval|score``: the linear recurrent language model offline."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from v1motion.models import WEIGHTS_DIR
from v1motion.service.commands import not_negative, positive, positive_float

DEFAULT_WEIGHTS = WEIGHTS_DIR / "lm_ptb_rglm.npz"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "lm",
        help="train, evaluate and use the language model",
        description="The linear recurrent language model (R-GLM) trained on Penn Treebank: "
        "train it, print its perplexity table, or score a text with the shipped weights.",
        epilog='examples:\n  v1motion lm score "the market fell" --next 5\n'
        "  v1motion lm eval --baselines",
    )
    sub = p.add_subparsers(title="commands", dest="lm_command", required=True, metavar="COMMAND")
    t = sub.add_parser(
        "train",
        help="train an R-GLM on Penn Treebank (resumable)",
        description="Train an R-GLM on Penn Treebank (needs the research data folder). With "
        "--checkpoint, a stopped run resumes where it left off.",
        epilog="example:\n  v1motion lm train --out runs/lm.npz --checkpoint runs/lm.ckpt.npz "
        "--time-limit 3600",
    )
    t.add_argument("--out", type=Path, required=True, help="where to write the weights (.npz)")
    t.add_argument(
        "--checkpoint", type=Path, help="resumable training state (.npz) (default: none)"
    )
    t.add_argument("--hidden", type=positive, default=200, help="hidden units")
    t.add_argument(
        "--recurrence",
        choices=["diagonal", "full"],
        default="diagonal",
        help="diagonal or full recurrent matrix",
    )
    t.add_argument("--untied", action="store_true", help="separate output word vectors")
    t.add_argument(
        "--dropout-input", type=float, default=0.1, help="dropout on the word embeddings"
    )
    t.add_argument("--dropout-hidden", type=float, default=0.25, help="dropout on the hidden state")
    t.add_argument(
        "--dropout-words",
        type=float,
        default=0.0,
        help="word-type dropout: a word's embedding dropped at all its occurrences in a window",
    )
    t.add_argument(
        "--max-norm", type=float, default=3.0, help="largest word-vector norm; 0 disables it"
    )
    t.add_argument("--bptt", type=positive, default=20, help="truncated back-propagation steps")
    t.add_argument("--batch-size", type=positive, default=64, help="parallel token streams")
    t.add_argument(
        "--classes",
        type=int,
        default=100,
        help="frequency-binned classes of the output layer; 0 = a plain softmax over all words",
    )
    t.add_argument(
        "--class-power",
        type=float,
        default=1.0,
        help="classes are equal slices of cumulative count**power (1: frequency binning)",
    )
    t.add_argument(
        "--samples",
        type=int,
        default=0,
        help="sampled-softmax negatives when --classes 0; 0 = exact full softmax",
    )
    t.add_argument("--optimizer", choices=["adam", "sgd"], default="adam", help="optimiser")
    t.add_argument(
        "--lr",
        type=positive_float,
        default=None,
        help="learning rate (default: 2e-3 with adam, 1.0 with sgd)",
    )
    t.add_argument(
        "--anneal",
        type=float,
        default=0.5,
        help="learning-rate factor when validation stops improving",
    )
    t.add_argument("--epochs", type=positive, default=20, help="passes over the training text")
    t.add_argument(
        "--average-from",
        type=int,
        default=None,
        metavar="EPOCH",
        help="from this epoch (1-based) on, validate, keep and anneal on the running mean of the "
        "weights over every update (Polyak averaging) (default: no averaging)",
    )
    t.add_argument(
        "--hold-lr-while-averaging",
        action="store_true",
        help="with --average-from: keep the learning rate where it is once averaging has started "
        "(default: anneal on the averaged weights' validation perplexity)",
    )
    t.add_argument(
        "--time-limit",
        type=positive_float,
        default=None,
        help="pause (saving the checkpoint) after this many seconds of this job "
        "(default: no limit)",
    )
    t.add_argument(
        "--checkpoint-every",
        type=positive_float,
        default=60.0,
        help="seconds between checkpoints inside an epoch",
    )
    t.add_argument(
        "--train-tokens",
        type=positive,
        default=None,
        help="use only this many tokens of the training text (default: all)",
    )
    store = t.add_mutually_exclusive_group()
    store.add_argument("--float32", action="store_true", help="save word vectors as float32")
    store.add_argument(
        "--int8",
        action="store_true",
        help="save word vectors as int8 with a float32 scale per word (half the size of the "
        "default float16); re-running a finished run's command with it only rewrites the weights",
    )
    t.add_argument(
        "--float16-p",
        action="store_true",
        help="save the output projection P as float16 (default float32); like --int8, "
        "re-running a finished run's command with it only rewrites the weights",
    )
    t.add_argument(
        "--threads",
        type=int,
        default=1,
        help="BLAS threads (default 1). A run's bits depend on it: the same seed with another "
        "count gives other weights, so it is part of the printed command",
    )
    t.add_argument(
        "--init",
        type=Path,
        default=None,
        metavar="WEIGHTS",
        help="start from the weights of an earlier run (its --out) instead of fresh ones, with a "
        "fresh optimiser: e.g. fine-tune a model trained with --samples using the exact softmax "
        "(--samples 0). Its hidden size, recurrence and tying must be the ones given here; the "
        "weights are kept if training does not improve their validation perplexity "
        "(default: fresh weights)",
    )
    t.add_argument("--seed", type=not_negative, default=0, help="random seed")
    t.set_defaults(func=run_train)

    e = sub.add_parser(
        "eval",
        help="the Penn Treebank perplexity table for a trained model",
        description="Print the Penn Treebank perplexity table of a trained model, optionally "
        "with dynamic evaluation and n-gram baselines (needs the research data folder).",
        epilog="example:\n  v1motion lm eval --dynamic --baselines --report docs/language",
    )
    e.add_argument(
        "--model",
        type=Path,
        default=DEFAULT_WEIGHTS,
        help="weights (.npz) (default: the shipped lm_ptb_rglm.npz)",
    )
    e.add_argument("--split", choices=["valid", "test"], default="test", help="text to score")
    e.add_argument("--dynamic", action="store_true", help="add dynamic evaluation rows")
    e.add_argument(
        "--dynamic-lr",
        type=float,
        default=None,
        help="learning rate of the RMS-normalised dynamic evaluation, in units of each weight's "
        "gradient RMS: about 4e-5 on PTB, where a plain-SGD rate such as 0.005 diverges "
        "(default: tuned on valid among 3e-5, 4e-5, 5e-5; its decay to the fitted weights is "
        "tuned on valid either way)",
    )
    e.add_argument("--baselines", action="store_true", help="add KN5, cache and mixtures")
    e.add_argument(
        "--report",
        type=Path,
        help="write the table (markdown, json) and figure to this folder (default: print only)",
    )
    e.add_argument(
        "--card",
        type=Path,
        help="also write the model card (markdown) for --model here (default: none)",
    )
    e.set_defaults(func=run_eval)

    c = sub.add_parser(
        "calibrate",
        help="fit the softmax temperature on valid and fold it into the weights",
        description="Fit one factor on every logit of a trained model to the valid split (the "
        "softmax temperature that maximises its likelihood), fold it into the output projection "
        "P and the biases c, and write the weights in the same storage (needs the research data "
        "folder).",
        epilog="example:\n  v1motion lm calibrate --model runs/lm/m.npz "
        "--out models/weights/lm_ptb_rglm.npz",
    )
    c.add_argument("--model", type=Path, required=True, help="trained weights (.npz)")
    c.add_argument("--out", type=Path, required=True, help="where to write the calibrated weights")
    c.set_defaults(func=run_calibrate)

    s = sub.add_parser(
        "score",
        help="per-word surprisal of a text",
        description="Print the surprisal (bits) of every word of a text under the model.",
        epilog='example:\n  v1motion lm score "the market fell" --next 5',
    )
    s.add_argument("text", help="text to score")
    s.add_argument(
        "--model",
        type=Path,
        default=DEFAULT_WEIGHTS,
        help="weights (.npz) (default: the shipped lm_ptb_rglm.npz)",
    )
    s.add_argument(
        "--next",
        type=not_negative,
        default=0,
        help="also list the k most likely next words; 0 = none",
    )
    s.set_defaults(func=run_score)


def train_command(args: argparse.Namespace) -> str:
    """The ``v1motion lm train`` command that reproduces ``args``, every setting spelled out."""
    parts = [
        f"--out {args.out.as_posix()}",
        f"--checkpoint {args.checkpoint.as_posix()}" if args.checkpoint else "",
        f"--hidden {args.hidden} --recurrence {args.recurrence}",
        "--untied" if args.untied else "",
        f"--dropout-input {args.dropout_input} --dropout-hidden {args.dropout_hidden}",
        f"--dropout-words {args.dropout_words}" if args.dropout_words else "",
        f"--max-norm {args.max_norm} --bptt {args.bptt} --batch-size {args.batch_size}",
        f"--classes {args.classes} --class-power {args.class_power} --samples {args.samples}",
        f"--optimizer {args.optimizer}" + (f" --lr {args.lr}" if args.lr is not None else ""),
        f"--anneal {args.anneal} --epochs {args.epochs} --seed {args.seed}",
        f"--threads {args.threads}" if args.threads != 1 else "",
        f"--average-from {args.average_from}" if args.average_from is not None else "",
        "--hold-lr-while-averaging" if args.hold_lr_while_averaging else "",
        f"--train-tokens {args.train_tokens}" if args.train_tokens is not None else "",
        "--float32" if args.float32 else "",
        "--int8" if args.int8 else "",
        "--float16-p" if args.float16_p else "",
        f"--init {args.init.as_posix()}" if args.init is not None else "",
    ]
    return "v1motion lm train " + " \\\n    ".join(p for p in parts if p)


def eval_command(args: argparse.Namespace) -> str:
    """The ``v1motion lm eval`` command of ``args`` that writes a card: the last line of its
    Reproduce section."""
    parts = [
        f"--model {Path(args.model).as_posix()}",
        "--dynamic" if args.dynamic else "",
        f"--dynamic-lr {args.dynamic_lr}" if args.dynamic and args.dynamic_lr is not None else "",
        "--baselines" if args.baselines else "",
        f"--report {args.report.as_posix()}" if args.report else "",
        f"--card {args.card.as_posix()}",
    ]
    return "v1motion lm eval " + " \\\n    ".join(p for p in parts if p)


def run_train(args: argparse.Namespace) -> int:
    from threadpoolctl import threadpool_limits

    if args.threads < 1:
        print(f"error: --threads must be >= 1, got {args.threads}", file=sys.stderr)
        return 2
    if args.time_limit is not None and args.checkpoint is None:  # its work was lost, said resumable
        print(
            "error: --time-limit pauses a run to resume it: give --checkpoint too", file=sys.stderr
        )
        return 2
    if args.out.suffix != ".npz" or args.out.is_dir():  # numpy added .npz: written elsewhere
        print(f"error: --out {args.out} must be a .npz file", file=sys.stderr)
        return 2
    with threadpool_limits(limits=args.threads, user_api="blas"):
        return _train(args)


def _train(args: argparse.Namespace) -> int:
    from v1motion.models.language.data import load_ptb
    from v1motion.models.language.rglm import LinearRecurrentLM

    vocab, data = load_ptb()
    train = data["train"] if args.train_tokens is None else data["train"][: args.train_tokens]
    model = LinearRecurrentLM(
        n_hidden=args.hidden,
        recurrence=args.recurrence,
        tied=not args.untied,
        dropout_input=args.dropout_input,
        dropout_hidden=args.dropout_hidden,
        dropout_words=args.dropout_words,
        max_norm=args.max_norm or None,
        bptt=args.bptt,
        batch_size=args.batch_size,
        n_samples=args.samples or None,
        n_classes=args.classes or None,
        class_power=args.class_power,
        optimizer=args.optimizer,
        learning_rate=args.lr,
        anneal=args.anneal,
        n_epochs=args.epochs,
        average_from=args.average_from,
        anneal_while_averaging=not args.hold_lr_while_averaging,
        time_limit=args.time_limit,
        warm_start=args.init is not None,
        seed=args.seed,
    )
    start = None
    if args.init is not None:
        try:
            start = LinearRecurrentLM.load(args.init)
        except (OSError, ValueError, KeyError) as exc:
            print(f"error: --init {args.init}: {exc}", file=sys.stderr)
            return 2
        if start.vocab_.words != vocab.words:
            print(f"error: {args.init} was not trained on this vocabulary", file=sys.stderr)
            return 2
        model.params_ = start.params_
    t0 = time.perf_counter()
    try:
        model.fit(
            train,
            vocab,
            valid=data["valid"],
            checkpoint=args.checkpoint,
            progress=True,
            checkpoint_every=args.checkpoint_every,
        )
    except ValueError as exc:  # settings fit refuses, e.g. --init weights of another shape
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for e in model.history_:
        raw = f"  (last iterate {e['valid_ppl_raw']:.2f})" if "valid_ppl_raw" in e else ""
        print(
            f"epoch {e['epoch']:3d}  train {e['train_loss']:.3f} nats  valid ppl "
            f"{e.get('valid_ppl', float('nan')):8.2f}  {e['tokens_per_s']:8.0f} tok/s  lr {e['lr']:.2g}"
            f"{raw}"
        )
    done = model.finished_
    if not model.history_:
        print(f"paused inside epoch 1 (resume with the same command); state in {args.checkpoint}")
        return 0
    seconds = sum(e["seconds"] for e in model.history_)
    meta = {
        "train_seconds": seconds,
        "epochs_done": model.epochs_done_,
        "tokens_per_s": sum(e["tokens_per_s"] for e in model.history_) / len(model.history_),
        "valid_ppl": model.best_valid_ppl_,  # with --init, maybe the weights started from
        "command": train_command(args),
    }
    if start is not None:
        # the card's Reproduce section: the run the weights started from, then this one
        earlier = getattr(start, "meta_", {})
        meta["init"] = {
            **{k: earlier.get(k) for k in start.get_config()},
            **{k: earlier.get(k) for k in ("train_seconds", "epochs_done", "tokens_per_s")},
            "valid_ppl": earlier.get("valid_ppl"),
            "command": earlier.get("command", f"(the command that wrote {args.init})"),
        }
    path = model.save(
        args.out, half=not args.float32, meta=meta, int8=args.int8, half_p=args.float16_p
    )
    args.out.with_suffix(".history.json").write_text(json.dumps(model.history_, indent=1))
    print(
        f"{'finished' if done else 'paused (resume with the same command)'}: {model.epochs_done_}/"
        f"{model.n_epochs} epochs, best valid ppl {meta['valid_ppl']:.2f}, "
        f"{time.perf_counter() - t0:.0f} s this job; weights in {path}"
    )
    return 0


def format_table(rows: list[dict], split: str) -> str:
    """The PTB table as printed: the targets are test perplexities, so a valid split shows none; a
    row with no perplexity of its own (the published RNN's) shows a dash, as ptb_table.md does."""
    width = max(len(r["model"]) for r in rows)
    lines = [f"{'model':<{width}}  {split} ppl" + ("  target" if split == "test" else "")]
    for r in rows:
        ppl = f"{r['ppl']:8.2f}" if math.isfinite(r["ppl"]) else f"{'—':>8}"
        target = r.get("target")
        shown = "" if split != "test" or target is None else f"  {target:.1f}"
        lines.append(f"{r['model']:<{width}}  {ppl}{shown}")
    return "\n".join(lines)


def run_eval(args: argparse.Namespace) -> int:
    from v1motion.models.language.evaluate import ptb_table
    from v1motion.models.reports.language import write_card, write_report

    if args.split != "test" and (args.report or args.card):  # they said "test ppl" of valid's
        print(
            f"error: the report and the card give test perplexity: --split {args.split} prints "
            "its table only",
            file=sys.stderr,
        )
        return 2
    rows = ptb_table(
        args.model,
        split=args.split,
        dynamic=args.dynamic,
        dynamic_lr=args.dynamic_lr,
        baselines=args.baselines,
        progress=True,
    )
    print(format_table(rows, args.split))
    if args.report:
        write_report(args.report, rows, args.model)
        print(f"report written to {args.report}")
    if args.card:
        write_card(args.card, args.model, rows, eval_command=eval_command(args))
        print(f"model card written to {args.card}")
    return 0


def run_calibrate(args: argparse.Namespace) -> int:
    from v1motion.models.language.data import load_ptb
    from v1motion.models.language.rglm import LinearRecurrentLM

    try:
        model = LinearRecurrentLM.load(args.model)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    done = model.meta_.get("calibration")
    if done:
        print(
            f"error: {args.model} is already calibrated (logits x {done['logit_scale']}); "
            "calibrate the weights it was made from",
            file=sys.stderr,
        )
        return 2
    _, data = load_ptb()
    try:
        a, before, after = model.calibrate(data["valid"])
    except ValueError as exc:  # e.g. a class-factorised output layer
        print(f"error: {exc}", file=sys.stderr)
        return 2
    meta = dict(model.meta_)
    meta["calibration"] = {
        "logit_scale": round(a, 6),
        "split": "valid",
        "valid_ppl_before": before,
        "valid_ppl_after": after,
        "command": f"v1motion lm calibrate --model {args.model.as_posix()} "
        f"--out {args.out.as_posix()}",
    }
    path = model.save(args.out, meta=meta)  # stored as it was loaded
    print(
        f"logits x {a:.4f} (temperature {1 / a:.4f}): valid ppl {before:.2f} -> {after:.2f}; "
        f"weights in {path}"
    )
    return 0


def run_score(args: argparse.Namespace) -> int:
    from v1motion.models.language.scoring import LanguageScorer

    scorer = LanguageScorer.from_file(args.model)
    result = scorer.score(args.text)
    for tok in result["tokens"]:
        flag = "  (unknown -> <unk>)" if tok["unknown"] else ""
        print(f"{tok['token']:>16}  {tok['surprisal_bits']:7.2f} bits{flag}")
    print(f"perplexity {result['perplexity']:.2f} over {len(result['tokens'])} tokens")
    if args.next:
        for w in scorer.next_words(args.text, args.next):
            print(f"next: {w['word']:>16}  p={w['probability']:.4f}")
    return 0
