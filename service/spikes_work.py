"""What the spike worker processes run (:class:`~v1motion.service.spikes_state.SpikeWorker`).

Module-level functions with picklable arguments and results, importing only the models: a spawned
fit worker imports this module, not the web app. (The reader process, which parses large bodies,
imports the spike router for its request schemas: ``routers/spikes.py``'s ``_parsed_reply``.)
"""

from __future__ import annotations

import json
import time
import uuid

import numpy as np

from v1motion.models.spikes.base import SAMPLE_MAX_COUNT
from v1motion.models.spikes.registry import (
    STIMULUS_LOCKED,
    evaluate,
    fit_and_score,
    options_in_effect,
    timescales_bins,
)

__all__ = ["evaluate", "fit_record", "sample_body"]


def fit_record(y: np.ndarray, kind: str, options: dict, test_fraction: float, seed: int) -> dict:
    """Fit ``kind`` on the counts ``y``; the store's record of the model (the model included)."""
    model, baseline, report = fit_and_score(y, kind, options, test_fraction, seed)
    return {
        "id": uuid.uuid4().hex[:12],
        "kind": kind,
        "options": options,
        "options_used": options_in_effect(kind, options),
        "n_neurons": int(y.shape[-1]),
        "n_params": report["n_params"],
        "held_out_bits_per_spike": report["bits_per_spike"],
        "n_spikes_test": report["n_spikes_test"],
        "n_train_trials": report["n_train_trials"],
        "n_test_trials": report["n_test_trials"],
        "held_out_trials": report["held_out_trials"],
        "held_out_from_bin": report["held_out_from_bin"],
        "fit_seconds": report["fit_seconds"],
        "fit": report["fit"],
        "warnings": report["warnings"],
        "created": time.time(),
        "timescales_bins": timescales_bins(model),
        "stimulus_bins": int(y.shape[1]) if kind in STIMULUS_LOCKED else None,
        "model": model,
        "baseline": baseline,
    }


def sample_body(model, model_id: str, n_trials: int, n_bins: int, seed: int) -> bytes:
    """Free-running samples as the JSON body of ``SamplePublic``, encoded here and not in the server,
    whose event loop a sample of millions of counts would hold for a second."""
    y = np.rint(model.sample(n_trials=n_trials, n_bins=n_bins, seed=seed)).astype(np.int64)
    body = {
        "id": model_id,
        "counts": y.tolist(),
        "n_spikes": int(y.sum()),
        "n_at_cap": int(np.sum(y >= SAMPLE_MAX_COUNT)),
    }
    return json.dumps(body, allow_nan=False, separators=(",", ":")).encode()
