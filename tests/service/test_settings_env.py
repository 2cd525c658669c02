"""Variables an operator sets: a mistyped one is said at start, and every setting is written down.

From an operator's probe: ``V1MOTION_DATA_DIRR=/data`` was ignored without a word, and the upgraded
service started on the default data folder, with an empty job list as the only sign."""

from __future__ import annotations

from pathlib import Path

from v1motion.service.settings import NOT_SETTINGS, Settings, unknown_variables

ROOT = Path(__file__).resolve().parents[2]


def test_a_mistyped_variable_is_named_with_the_setting_it_was_meant_for():
    said = unknown_variables(
        {
            "V1MOTION_DATA_DIRR": "/data",  # a typo: said, with the setting
            "V1MOTION_WHATEVER": "1",  # nothing like a setting: said, without one
            "V1MOTION_TOKEN": "t",  # settings, in either case, are not
            "v1motion_data_dir": "/data",
            "V1MOTION_SHARED_DATA": "../shared/data",  # read elsewhere in the project
            "HOME": "/root",
        }
    )
    assert said == [
        "V1MOTION_DATA_DIRR is not a setting and is ignored (did you mean V1MOTION_DATA_DIR?); "
        "the settings are in README.md ('Settings') and docs/security.md ('Limits')",
        "V1MOTION_WHATEVER is not a setting and is ignored; "
        "the settings are in README.md ('Settings') and docs/security.md ('Limits')",
    ]


def test_the_variables_read_elsewhere_are_read_somewhere():
    """``NOT_SETTINGS`` stays the list of what the project really reads (not a place to hush)."""
    files = [
        p
        for folder in ("service", "models", "tests", "bench", "docker")
        for p in (ROOT / folder).rglob("*")
        if p.suffix in {".py", ".sh", ".yaml"} and p.name != "settings.py"
    ]
    text = "\n".join(p.read_text(errors="replace") for p in files)
    assert [name for name in NOT_SETTINGS if name not in text] == []
    assert not set(NOT_SETTINGS) & {f"V1MOTION_{n.upper()}" for n in Settings.model_fields}


def test_every_setting_is_written_down_where_the_warning_sends_the_operator():
    readme = (ROOT / "README.md").read_text()
    limits = (ROOT / "docs" / "security.md").read_text()
    missing = [
        name.upper()
        for name in Settings.model_fields
        if f"`V1MOTION_{name.upper()}`" not in readme + limits
        and f"`{name.upper()}`" not in limits
        and f"`{name.upper()} " not in limits
    ]
    assert missing == []
