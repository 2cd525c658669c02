"""Build the shipped engine weights from data: whitening, training, tuning and read-out, from one seed."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from v1motion.models.determinism import single_threaded
from v1motion.models.motion.calibration import fit_readout
from v1motion.models.motion.movies import load_training_movies, training_stills
from v1motion.models.motion.ssrnn import SSRNN
from v1motion.models.motion.training import TrainConfig, train_ssrnn
from v1motion.models.motion.tuning_report import measure_tuning, tuning_dict
from v1motion.models.motion.whitening import Whitener

log = logging.getLogger(__name__)

DEFAULT_NAME = "ssrnn_default.npz"
CONTROL_NAME = "ssrnn_shuffled_control.npz"


@single_threaded()
def finish_weights(model: SSRNN, levels: int, seed: int, out: Path, history: dict, seconds: float):
    """Measure tuning, fit the read-out and save everything the engine needs in one ``.npz``."""
    summary = measure_tuning(model)
    readout = fit_readout(model, levels=levels, seed=seed)
    last = slice(-50, None)
    train_info = {
        "config": getattr(model, "train_config_", {}),
        "seconds": round(seconds, 1),
        "final_active_per_patch": float(np.mean(history["active"][last])),
        "final_r2": float(np.mean(history["r2"][last])),
        "final_b_mean": history["b_mean"][-1],
        "final_r_abs_max": history["r_abs_max"][-1],
        "readout_alpha": readout.alpha_,
    }
    model.save(
        out,
        readout_coef=readout.coef_,
        readout_intercept=readout.intercept_,
        readout_levels=np.int64(levels),
        tuning=np.array(json.dumps(tuning_dict(summary))),
        train_info=np.array(json.dumps(train_info)),
    )
    return summary, readout, train_info


# Pinned here, not only in the CLI, so every caller of the library gets the weights the seed defines.
@single_threaded()
def build_all(out_dir: Path, config: TrainConfig, levels: int = 3, control: bool = True,
              progress: bool = True) -> dict:  # fmt: skip
    """Train the default model (and its time-shuffled control) and write their weights."""
    out_dir.mkdir(parents=True, exist_ok=True)
    clips = load_training_movies(max_frames=300)
    stills = training_stills()
    whitener = Whitener(config.whiten_size).fit(
        list(clips.values()) + list(stills.values()), seed=config.seed
    )
    results = {}
    runs = [(DEFAULT_NAME, config)]
    if control:
        runs.append((CONTROL_NAME, replace(config, shuffle_time=True)))
    for name, cfg in runs:
        t0 = time.perf_counter()
        model, history = train_ssrnn(cfg, whitener, stills, clips, progress=progress)
        seconds = time.perf_counter() - t0
        summary, _, info = finish_weights(model, levels, cfg.seed, out_dir / name, history, seconds)
        log.info("%s: trained in %.0f s; %s", name, seconds, summary.metrics)
        results[name] = {"train": info, "tuning": summary.metrics}
    return results
