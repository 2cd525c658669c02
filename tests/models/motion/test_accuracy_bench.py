"""bench/accuracy.py's engine settings: --tau reaches the engine and is recorded with the figures."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[3] / "bench" / "accuracy.py"
_spec = importlib.util.spec_from_file_location("accuracy_bench", _PATH)
acc = importlib.util.module_from_spec(_spec)
_environ = dict(os.environ)
try:
    _spec.loader.exec_module(acc)  # it pins thread counts in os.environ for its own runs
finally:
    os.environ.clear()
    os.environ.update(_environ)


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
    assert json.loads(out.read_text())["tau_frames"] == 3.0
