"""The README's Python examples run as written and print what their comments say."""

import math
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_the_readme_has_its_python_examples():
    assert len(BLOCKS) == 2


def _run(block: str, capsys) -> list[str]:
    exec(compile(block, str(README), "exec"), {})  # noqa: S102 - the README's own example
    return capsys.readouterr().out.splitlines()


def test_the_engine_example_reads_its_pan_right_at_2_px_per_frame(capsys):
    first, second = _run(BLOCKS[0], capsys)
    m = re.fullmatch(r"(\d+) deg at ([\d.]+) px/frame", first)
    assert m, first
    direction, speed = float(m[1]), float(m[2])
    assert min(direction, 360 - direction) <= 10  # the truth: 0 deg (moving right)
    assert speed == pytest.approx(2, rel=0.25)
    assert second == "(15, 20) (15, 20) 16"


def test_the_language_example_scores_and_suggests(capsys):
    ppl, words = _run(BLOCKS[1], capsys)
    assert 1 < float(ppl) < 100 and math.isfinite(float(ppl))  # an ordinary WSJ sentence
    assert words.startswith("[") and len(eval(words)) == 3  # noqa: S307 - a printed list
