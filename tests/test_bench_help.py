"""Every benchmark script says how it is run (``--help``) without running: the reproducibility
audit could not read two of them, whose --help started the benchmark itself."""

import runpy
import sys
from pathlib import Path

import pytest

BENCH = sorted((Path(__file__).resolve().parents[1] / "bench").glob("*.py"))


@pytest.mark.parametrize("script", BENCH, ids=[p.stem for p in BENCH])
def test_a_benchmark_answers_help_without_running(script, monkeypatch, capsys):
    assert "argparse" in script.read_text(), f"{script.name} parses no arguments"
    monkeypatch.setattr(sys, "argv", [script.name, "--help"])
    monkeypatch.syspath_prepend(str(script.parent))  # as `python bench/x.py` has it
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(script), run_name="__main__")
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith("usage:")
