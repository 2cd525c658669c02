"""Every kind of live source is known everywhere a kind is named (one tuple: ``SOURCE_KINDS``)."""

from __future__ import annotations

import threading

import pytest

from v1motion.service.cli import build_parser
from v1motion.service.live.sources import source_factory
from v1motion.service.settings import SOURCE_KINDS, Settings, SourceSpec

TARGETS = {"synthetic": "", "camera": "0", "url": "rtsp://host.example/stream"}


def _spec(kind: str, tmp_path) -> SourceSpec:
    if kind == "file":
        (tmp_path / "walk.mp4").write_bytes(b"")
        return SourceSpec(name="s", kind=kind, target=str(tmp_path / "walk.mp4"))
    assert kind in TARGETS, f"a new kind {kind!r}: give it an example target in TARGETS here"
    return SourceSpec(name="s", kind=kind, target=TARGETS[kind])


@pytest.mark.parametrize("kind", SOURCE_KINDS)
def test_each_kind_parses_describes_itself_and_builds_a_source(kind, tmp_path):
    """A contributor's new kind was accepted and shown to clients as " stream"."""
    spec = _spec(kind, tmp_path)
    assert SourceSpec.parse(f"s={kind}:{spec.target}").kind == kind
    words = spec.describe()
    assert words and not words.startswith(" ") and "host.example" not in words  # no URL shown
    build = source_factory(spec, Settings())
    assert build(threading.Event()) is not None  # built, not opened


def test_the_serve_help_names_every_kind(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    said = " ".join(capsys.readouterr().out.split())
    missing = [kind for kind in SOURCE_KINDS if kind not in said.split("kinds: ")[1]]
    assert missing == [], "add them to --source's help in service/commands/serve.py"


def test_the_docs_name_every_kind():
    """A contributor's new kind passed every test while the README and the architecture page
    named only the old four."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    readme = (root / "README.md").read_text()
    kinds = readme.split("\nKinds: ", 1)[1].split("\n\n", 1)[0]
    assert [k for k in SOURCE_KINDS if f"`{k}`" not in kinds] == [], "README.md's Kinds: paragraph"
    page = (root / "docs" / "architecture.md").read_text().lower()
    listed = page.split("one class per kind of source (", 1)[1].split(")", 1)[0]
    assert [k for k in SOURCE_KINDS if k not in listed] == [], "docs/architecture.md's sources.py"


def test_a_kind_without_words_is_an_error_not_a_blank_description():
    spec = SourceSpec.model_construct(name="s", kind="noise", target="")
    with pytest.raises(NotImplementedError, match="noise"):
        spec.describe()
