"""v1motion.service.jobs.layout: a job's files, and results published by one rename."""

from __future__ import annotations

from pathlib import Path

import pytest

from v1motion.service.jobs.layout import RESULT_FILES, RESULT_NAMES, JobLayout, ResultsFolder

ROOT = Path(__file__).resolve().parents[3]


def test_a_jobs_files_are_where_the_layout_says(tmp_path):
    job = JobLayout.of(tmp_path, "ab" * 16)
    assert job.input == tmp_path / ("ab" * 16) / "input.bin"
    assert job.results.out == job.folder / "out" and job.results.work == job.folder / "out.tmp"
    assert job.result("motion.json") == job.folder / "out" / "motion.json"
    assert set(RESULT_NAMES) < set(RESULT_FILES)


@pytest.mark.parametrize("name", ["input.bin", "../x", "motion.npz/.."])
def test_only_result_files_can_be_named(tmp_path, name):
    with pytest.raises(ValueError, match="no result named"):
        JobLayout.of(tmp_path, "j").result(name)


def test_results_appear_all_at_once_and_replace_old_ones(tmp_path):
    folder = ResultsFolder(tmp_path / "out")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("old")
    work = folder.begin()
    (work / "motion.json").write_text("{}")
    assert (tmp_path / "out" / "old.txt").exists()  # the old results stay until publish
    folder.publish()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["motion.json"]
    assert not folder.work.exists()


def test_begin_starts_empty_and_discard_removes_half_written_results(tmp_path):
    folder = ResultsFolder(tmp_path / "out")
    (folder.begin() / "half").write_text("x")
    assert list(folder.begin().iterdir()) == []
    folder.discard()
    assert not folder.work.exists() and not folder.out.exists()
    with pytest.raises(FileNotFoundError):  # a deleted job's folder is never brought back
        ResultsFolder(tmp_path / "gone" / "out").begin()


def test_no_other_module_spells_out_the_job_layout():
    """The upload's name, the results folder and the work folder are written in one module."""
    offenders = []
    for path in sorted((ROOT / "service" / "jobs").glob("*.py")) + [
        ROOT / "service" / "routers" / "videos.py"
    ]:
        if path.name == "layout.py":
            continue
        for line_no, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if any(f'"{word}"' in code for word in ("input.bin", "out.tmp", "out", ".tmp")):
                offenders.append(f"{path.relative_to(ROOT)}:{line_no}: {line.strip()}")
    assert not offenders, offenders
