"""bench/accuracy.py's engine settings: --tau reaches the engine and is recorded with the figures."""

from __future__ import annotations

import json

import numba  # noqa: F401  Numba reads its thread count when first imported: before the bench pins it
import numpy as np
import pytest
from bench_module import load_bench

acc = load_bench("accuracy")


def test_tau_below_one_frame_is_refused():
    with pytest.raises(SystemExit, match="--tau 0.5"):
        acc.main(["--engine", "random", "--tau", "0.5", "--families", "still", "--no-flow"])


def test_tau_sets_the_read_outs_average_and_is_recorded(tmp_path, monkeypatch):
    seen = []
    evaluate = acc.me.evaluate

    def spy(methods, *a, **k):
        seen.append(methods[0].engine.pooling.tau)
        return evaluate(methods, *a, **k)

    monkeypatch.setattr(acc.me, "evaluate", spy)
    out = tmp_path / "acc.json"
    acc.main(["--engine", "random", "--quick", "--families", "still", "--no-flow", "--tau", "3",
              "--out", str(out)])  # fmt: skip
    assert seen == [3.0]
    saved = json.loads(out.read_text())
    assert saved["tau_frames"] == 3.0
    # the outputs name no machine's paths: a file outside the project by its name only
    assert str(tmp_path) not in out.read_text()
    assert saved["command"].endswith("--tau 3 --out acc.json")


def test_the_recorded_command_names_project_files_relative_to_the_project():
    inside = str(acc.ROOT / "docs" / "motion" / "accuracy.json")
    assert acc.command_args(["--out", inside, "--md=/elsewhere/acc.md", "--engine", "default",
                             "--families", "pan"]) == [
        "--out", "docs/motion/accuracy.json", "--md=acc.md", "--engine", "default",
        "--families", "pan"]  # fmt: skip


def test_an_mt_read_out_that_is_not_there_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="--mt"):
        acc.main(["--mt", str(tmp_path / "none.npz"), "--families", "still", "--no-flow"])


def test_mt_replaces_the_read_out_and_keeps_the_shipped_axis_calibration():
    from v1motion.models.motion.engine import DEFAULT_MT, MotionEngine

    shipped = MotionEngine.load_default()
    engine = acc.load_engine("default", str(DEFAULT_MT))
    np.testing.assert_array_equal(engine.mt.proj_, shipped.mt.proj_)
    np.testing.assert_array_equal(engine.axis_calibration, shipped.axis_calibration)
    np.testing.assert_array_equal(engine.coherence_reference, shipped.coherence_reference)
