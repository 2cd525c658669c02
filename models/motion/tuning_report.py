"""The tuning report: metrics of a trained ss-RNN next to its time-shuffled control, and figures."""

from __future__ import annotations

import logging

import numpy as np

from v1motion.models.determinism import single_threaded
from v1motion.models.motion.calibration import grating_direction_error, natural_direction_error
from v1motion.models.motion.population import pooled_response
from v1motion.models.motion.ssrnn import SSRNN
from v1motion.models.motion.stimuli import gabor_sequence
from v1motion.models.motion.tuning import (
    DIRECTIONS,
    SPEEDS,
    TuningSummary,
    grating_tuning,
    natural_tuning,
    summarize,
)

log = logging.getLogger(__name__)


@single_threaded()
def measure_tuning(model: SSRNN) -> TuningSummary:
    """The tuning as shipped (training writes it, ``v1motion analyze --update-weights`` measures it
    again), on one thread so that it does not depend on the machine's core count."""
    return summarize(model, grating_tuning(model), natural_tuning(model))


def tuning_dict(summary: TuningSummary) -> dict:
    """The per-unit tuning the engine ships with (JSON-able)."""
    return {
        "pref_dir": summary.pref_dir.tolist(),
        "pref_speed": summary.pref_speed.tolist(),
        "di": summary.di.tolist(),
        "responsive": summary.responsive.tolist(),
        "direction_curves": summary.direction_curves.tolist(),
        "speed_curves": summary.speed_curves.tolist(),
        "speeds": list(SPEEDS),
    }


def build_report(model: SSRNN, control: SSRNN, readout, levels: int, control_readout=None,
                 progress=None) -> tuple[dict, dict]:  # fmt: skip
    """All report metrics; returns ``(report, artefacts for the figures)``."""
    step = progress or (lambda msg: log.info("%s", msg))
    step("tuning of the model")
    tm = measure_tuning(model)
    step("tuning of the time-shuffled control")
    tc = measure_tuning(control)
    step("read-out on held-out natural pans and gratings")
    nat = natural_direction_error(model, readout, levels)
    grat = grating_direction_error(model, readout, levels)
    report = {
        "ds_fraction": tm.metrics["ds_fraction"],
        "ds_fraction_natural": tm.metrics["ds_fraction_natural"],
        "ds_fraction_control": tc.metrics["ds_fraction"],
        "ds_fraction_natural_control": tc.metrics["ds_fraction_natural"],
        "direction_agreement": tm.metrics["direction_agreement"],
        "speed_octaves": tm.metrics["speed_octaves"],
        "coorientation_ratio": tm.metrics["coorientation_ratio"],
        "grating_direction_error_deg": grat["grating_direction_error_deg"],
        "natural_direction_error_deg": nat["natural_direction_error_deg"],
        "details": {
            "model": tm.metrics,
            "control": tc.metrics,
            "readout_natural": nat,
            "readout_gratings": grat,
            "readout_levels": levels,
        },
    }
    if control_readout is not None:
        step("read-out of the control (how much of the decodable motion is learned)")
        report["details"]["control_readout_natural"] = natural_direction_error(
            control, control_readout, levels
        )
    return report, {"model": tm, "control": tc}


def gabor_polar(model: SSRNN, units, speed=1.0, period=8.0, size=32, n_frames=15):
    frames = np.stack(
        [gabor_sequence((size, size), d, speed, period, n_frames) for d in DIRECTIONS]
    )
    resp = pooled_response(model, frames)[:, 0]  # (n_dir, N)
    return resp[:, units]
