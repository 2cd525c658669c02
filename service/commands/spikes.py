"""``v1motion spikes fit|eval|sample|report``: spike-train models offline."""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
from pathlib import Path

from v1motion.service.commands import check_output, not_negative

# The kinds of v1motion.models.spikes.MODEL_KINDS, spelled out so `v1motion --help` need not import the models
# (tests/test_spikes_cli.py checks the two lists agree).
MODEL_KIND_NAMES = (
    "correlated",
    "glm",
    "glm_correlated",
    "independent",
    "lds",
    "plds",
    "rglm",
    "rglm_correlated",
    "glm_correlated_locked",
    "rglm_correlated_locked",
)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "spikes",
        help="fit, evaluate and sample spike-train models",
        description="Spike-train models (independent and correlated Poisson, spike-history GLM, "
        "R-GLM, Gaussian and Poisson LDS) offline: fit one to binned counts, score counts with it, sample from it, or "
        "regenerate the retina report.",
        epilog="examples:\n"
        "  v1motion spikes fit --recording Movie1Exp1 --kind glm --out runs/glm.pkl\n"
        "  v1motion spikes sample --model runs/glm.pkl --n-bins 500 --out runs/sample.npz",
    )
    sub = p.add_subparsers(
        title="commands", dest="spikes_command", required=True, metavar="COMMAND"
    )

    def data_args(q):
        g = q.add_mutually_exclusive_group(required=True)
        g.add_argument(
            "--counts", type=Path, help=".npz with an array 'counts' (trials, bins, neurons)"
        )
        g.add_argument(
            "--recording", help="retina recording from the shared data (Movie1Exp1, Movie2Exp1)"
        )
        q.add_argument(
            "--bin-ms", type=float, default=10.0, help="bin size in ms, with --recording"
        )

    f = sub.add_parser(
        "fit",
        help="fit a model; print its held-out bits/spike",
        description="Fit a spike-train model on part of the trials and print its bits/spike on "
        "the held-out rest; save the fitted model.",
        epilog="example:\n"
        "  v1motion spikes fit --counts counts.npz --kind rglm --option n_hidden=4 "
        "--out runs/rglm.pkl",
    )
    data_args(f)
    f.add_argument(
        "--kind",
        default="rglm_correlated",
        metavar="KIND",
        help=f"model: {', '.join(MODEL_KIND_NAMES)}",
    )
    f.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a constructor option of the model, value as JSON, in the range the API gives it "
        "(/docs: the fit's options); repeatable (default: none)",
    )
    f.add_argument("--test-fraction", type=float, default=0.2, help="fraction of trials held out")
    f.add_argument("--seed", type=not_negative, default=0, help="random seed")
    f.add_argument(
        "--out", type=Path, required=True, help="where to write the fitted model (pickle)"
    )
    f.set_defaults(func=run_fit)

    e = sub.add_parser(
        "eval",
        help="bits/spike of counts under a fitted model",
        description="Print the bits/spike of counts under a fitted model, gained over the "
        "baseline fitted with it (each neuron's constant rate on the training trials). Every trial "
        "given is scored: the recording the model was fitted on includes its training trials, "
        "which score higher than held-out ones (`spikes fit` prints the held-out figure); give "
        "counts it was not fitted on.",
        epilog="example:\n  v1motion spikes eval --counts test.npz --model runs/glm.pkl",
    )
    data_args(e)
    e.add_argument("--model", type=Path, required=True, help="fitted model (pickle)")
    e.set_defaults(func=run_eval)

    s = sub.add_parser(
        "sample",
        help="sample counts from a fitted model",
        description="Sample spike counts from a fitted model into an .npz (array 'counts').",
        epilog="example:\n  v1motion spikes sample --model runs/glm.pkl --out sample.npz",
    )
    s.add_argument("--model", type=Path, required=True, help="fitted model (pickle)")
    s.add_argument("--n-trials", type=int, default=1, help="trials to sample")
    s.add_argument(
        "--n-bins",
        type=int,
        default=None,
        help="time bins per trial (default 1000; a _locked model samples its stimulus's length only)",
    )
    s.add_argument("--seed", type=not_negative, default=0, help="random seed")
    s.add_argument("--out", type=Path, required=True, help=".npz to write (array 'counts')")
    s.set_defaults(func=run_sample)

    r = sub.add_parser(
        "report",
        help="regenerate the bits/spike table and figures on the retina data",
        description="Regenerate the bits/spike table and figures of every model kind on the "
        "retina recordings (needs the research data folder; long).",
        epilog="example:\n  v1motion spikes report --out docs/spikes --rows glm,rglm",
    )
    r.add_argument("--out", type=Path, default=Path("docs/spikes"), help="report folder")
    r.add_argument(
        "--recording",
        action="append",
        help="only this recording, repeatable (default: Movie1Exp1 and Movie2Exp1)",
    )
    r.add_argument("--folds", type=int, default=5, help="cross-validation folds")
    r.add_argument(
        "--assemble-only", action="store_true", help="rebuild table.md from existing JSON"
    )
    r.add_argument(
        "--rows",
        help="only recompute these rows (comma-separated kinds) in existing JSON "
        "(default: all rows)",
    )
    r.add_argument(
        "--samples-only",
        action="store_true",
        help="only refit every sampled kind on fold 0, sample, redraw the figures (minutes)",
    )
    r.add_argument(
        "--duplicates-only",
        action="store_true",
        help="only the near-duplicate-unit check (seconds)",
    )
    r.add_argument(
        "--decoder-only",
        action="store_true",
        help="only the synthetic decoder check, decoder_synthetic.json (seconds)",
    )
    r.set_defaults(func=run_report)


def _load_counts(args):
    import numpy as np

    from v1motion.models.spikes.data import as_counts, load_retina

    if args.recording:
        return load_retina(args.recording, args.bin_ms)
    with open(args.counts, "rb") as fh:
        magic = fh.read(6)
    if magic[:4] != b"PK\x03\x04" and magic != b"\x93NUMPY":
        raise ValueError(
            f"{args.counts} is not a .npz (with an array 'counts') or a .npy of counts"
        )
    try:
        loaded = np.load(args.counts)  # never pickles (allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"{args.counts} cannot be read as .npz or .npy: {exc}") from None
    if isinstance(loaded, np.ndarray):  # a .npy: the counts themselves
        return as_counts(loaded)
    with loaded as z:
        if "counts" not in z:
            raise ValueError(f"{args.counts} has no array 'counts' (has: {list(z.keys())})")
        return as_counts(z["counts"])


def _parse_options(items):
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--option {item!r}: expected KEY=VALUE")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _check_option_types(kind: str, options: dict) -> None:
    """A number option given something else (``n_lags=abc``) is named here, not by a ``TypeError``
    deep in the fit."""
    import inspect

    from v1motion.models.spikes.registry import KIND_DEFAULTS, MODEL_KINDS, model_options

    cls, _ = MODEL_KINDS.get(kind, (None, None))
    if cls is None:
        return  # make_model names the kind
    params = inspect.signature(cls.__init__).parameters
    defaults = {k: params[k].default for k in model_options(kind)} | KIND_DEFAULTS.get(kind, {})
    for key, value in options.items():
        default = defaults.get(key)
        if isinstance(default, bool) or not isinstance(default, int | float):
            continue
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or (isinstance(default, int) and value != int(value)):
            want = "a whole number" if isinstance(default, int) else "a number"
            raise ValueError(f"--option {key}={value!r}: expected {want} (default {default!r})")


def _check_option_ranges(options: dict) -> None:
    """Each option within the range the service's schema gives it (``SpikeOptions``): ``n_lags=1e9``
    ended in numpy's traceback for a 30 GB array, ``l2=-1`` and ``max_iter=0`` were fitted."""
    from pydantic import ValidationError

    from v1motion.service.routers.spikes import SpikeOptions

    try:
        SpikeOptions.model_validate(options)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        key = str(err["loc"][0]) if err["loc"] else "option"
        raise ValueError(f"--option {key}={options.get(key)!r}: {err['msg']}") from None


def physical_memory_bytes() -> int:
    """This machine's memory (Linux and other POSIX systems)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _check_fits_in_memory(kind: str, y, options: dict) -> None:
    """A fit this machine cannot hold, refused with the estimate before it starts (it would fail
    with numpy's traceback after the start GLM, or swap the machine to a crawl)."""
    from v1motion.models.spikes.registry import GROWS_WITH_NEURONS, fit_bytes

    n_bins, n_neurons = y.shape[1], y.shape[2]
    need, have = fit_bytes(kind, n_bins, n_neurons, **options), physical_memory_bytes()
    if need > have:
        raise ValueError(
            f"this {kind} fit on {n_neurons} neurons and {n_bins} bins per trial needs about "
            f"{need / 1e9:,.1f} GB of memory, more than this machine's {have / 1e9:,.1f} GB; fit "
            f"fewer neurons or a smaller model ({GROWS_WITH_NEURONS})"
        )


def run_fit(args: argparse.Namespace) -> int:
    from v1motion.models.spikes.registry import fit_and_score, timescales_bins

    check_output(args.out)
    y = _load_counts(args)
    options = _parse_options(args.option)
    _check_option_types(args.kind, options)
    _check_option_ranges(options)
    _check_fits_in_memory(args.kind, y, options)
    model, baseline, report = fit_and_score(y, args.kind, options, args.test_fraction, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "wb") as fh:
        bin_ms = args.bin_ms if args.recording else None  # counts of a file: their bins unknown
        saved = {"kind": args.kind, "model": model, "baseline": baseline, "report": report}
        pickle.dump(saved | {"bin_ms": bin_ms}, fh)
    public = {
        ("held_out_bits_per_spike" if k == "bits_per_spike" else k): v for k, v in report.items()
    }
    if (tau := timescales_bins(model)) is not None:  # an R-GLM's, as the API answers them
        public["timescales_bins"] = tau
    print(json.dumps({"kind": args.kind, **public}, indent=1))  # the API's names
    return 0


def _load_model(path):
    with open(path, "rb") as fh:  # a file this CLI wrote: trusted local pickle
        try:
            saved = pickle.load(fh)
        except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError) as exc:
            raise ValueError(
                f"{path} is not a model written by `v1motion spikes fit` ({exc})"
            ) from None
    if not (isinstance(saved, dict) and {"kind", "model", "baseline"} <= saved.keys()):
        raise ValueError(f"{path} is not a model written by `v1motion spikes fit`")
    return saved


def run_eval(args: argparse.Namespace) -> int:
    from v1motion.models.spikes.registry import evaluate

    saved = _load_model(args.model)
    fitted = saved.get("bin_ms")
    if args.recording and fitted is not None and args.bin_ms != fitted:
        raise ValueError(
            f"{args.model} was fitted on bins of {fitted:g} ms; --bin-ms {args.bin_ms:g} would "
            f"score it on others (its rates are per bin): use --bin-ms {fitted:g}"
        )
    scores = evaluate(saved["model"], saved["baseline"], _load_counts(args))
    units = {k: "nats" for k in ("log_likelihood", "log_likelihood_baseline")}
    units["bits_per_spike"] = "bits per spike gained over the baseline"  # as the API's schema says
    print(json.dumps(scores | {"units": units}, indent=1))
    return 0


def run_sample(args: argparse.Namespace) -> int:
    import numpy as np

    from v1motion.models.spikes.base import SAMPLE_MAX_COUNT

    saved = _load_model(args.model)
    model = saved["model"]
    n_bins = args.n_bins
    if n_bins is None:
        psth = getattr(model, "psth_", None)  # a stimulus-locked model: its stimulus's length
        n_bins = 1000 if psth is None else psth.rate_.shape[0]
    y = model.sample(n_trials=args.n_trials, n_bins=n_bins, seed=args.seed)
    np.savez_compressed(args.out, counts=y)
    print(f"wrote {args.out}: counts {y.shape}, {int(y.sum())} spikes")
    at_cap = int(np.sum(y >= SAMPLE_MAX_COUNT))
    if at_cap:  # as the API's n_at_cap: a sample that ran away is not data-like
        print(
            f"warning: {at_cap} counts at the sampler's cap of {SAMPLE_MAX_COUNT} per bin: the "
            "sample ran away (a history-only model's self-excitation; docs/spikes/README.md), "
            "not data-like",
            file=sys.stderr,
        )
    return 0


def run_report(args: argparse.Namespace) -> int:
    from v1motion.models.reports import spikes as report

    if args.assemble_only:
        print(report.assemble(args.out))
        return 0
    recs = args.recording or ["Movie1Exp1", "Movie2Exp1"]
    if args.rows:
        for rec in recs:
            report.rerun_rows(rec, args.out, args.rows.split(","))
        print(report.assemble(args.out))
        return 0
    if args.samples_only:
        for rec in recs:
            report.redraw_samples(rec, args.out)
        print(report.assemble(args.out))
        return 0
    if args.duplicates_only:
        for rec in recs:
            print(json.dumps(report.run_duplicate_check(rec, args.out, args.folds)))
        if any(args.out.glob("results_*.json")):
            report.assemble(args.out)
        return 0
    if not args.decoder_only:
        for rec in recs:
            report.run_recording(rec, args.out, args.folds)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "decoder_synthetic.json").write_text(
        json.dumps(report.synthetic_decoder_check(), indent=1)
    )
    if any(args.out.glob("results_*.json")):
        print(report.assemble(args.out))
    return 0
