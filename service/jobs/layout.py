"""Where a video job's files live, in one place.

Per job, ``<jobs_dir>/<job id>/``: the upload as ``input.bin``, and the results in ``out/``. Results are
written to ``out.tmp/`` and published by one rename, so a reader never sees half of them. The same
publish rule holds for any results folder (``v1motion motion -o <folder>`` writes ``<folder>.tmp``).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from v1motion.service.disk import make_durable

INPUT_NAME = "input.bin"
OUTPUT_DIR = "out"
RESULT_NAMES = ("motion.json", "motion.npz", "overlay.mp4", "summary.png")
"""The results a client can fetch (``GET /v1/videos/{id}/{name}``)."""
RESULT_FILES = (*RESULT_NAMES, "result.json")
"""Every file a finished job's results folder holds (``result.json`` is the job's record of it)."""


@dataclass(frozen=True)
class ResultsFolder:
    """A results folder written as ``<out>.tmp`` and published by renaming it to ``out``."""

    out: Path

    @property
    def work(self) -> Path:
        return self.out.with_name(self.out.name + ".tmp")

    def begin(self) -> Path:
        """A fresh, empty work folder (its parent must exist: a deleted job is never brought back)."""
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir()
        return self.work

    def publish(self) -> None:
        """Replace ``out`` by the finished work folder in one rename, its files and the rename
        written to the disk before the job is recorded as done (``make_durable``)."""
        make_durable(*(p for p in self.work.rglob("*") if p.is_file()), self.work)
        shutil.rmtree(self.out, ignore_errors=True)
        self.work.rename(self.out)
        make_durable(self.out.parent)

    def discard(self) -> None:
        """Remove a half-written work folder, if any."""
        shutil.rmtree(self.work, ignore_errors=True)

    def published_result(self) -> dict | None:
        """The job's record of its published results (``result.json``), or None if it published
        none: a process that ended after the rename and before the job's end was recorded left
        whole results (published by one rename, after they reached the disk)."""
        try:
            result = json.loads((self.out / "result.json").read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(result, dict) or not isinstance(result.get("frames", 0), int):
            return None
        result.setdefault(
            "ran_on", {"runner": "unknown: its end was recorded from its published results"}
        )
        return result


@dataclass(frozen=True)
class JobLayout:
    """The folder of one job: its upload and its results."""

    folder: Path

    @classmethod
    def of(cls, jobs_dir: Path, job_id: str) -> JobLayout:
        return cls(Path(jobs_dir) / job_id)

    @property
    def input(self) -> Path:
        return self.folder / INPUT_NAME

    @property
    def results(self) -> ResultsFolder:
        return ResultsFolder(self.folder / OUTPUT_DIR)

    def result(self, name: str) -> Path:
        """A published result file (``name`` must be one of :data:`RESULT_FILES`)."""
        if name not in RESULT_FILES:
            raise ValueError(f"no result named {name!r}; results: {', '.join(RESULT_FILES)}")
        return self.results.out / name
