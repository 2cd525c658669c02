"""A data folder kept across versions: an older store is upgraded in place and says so, a newer
store's jobs stay readable (a rollback), and the start-up says what the folder holds.

From an operator's probe: a service a week old could not start on a folder the current one had
opened (``JobRecord(**row)`` refused the columns added since), and the current one failed the same
way on a store with one more column."""

import logging
import sqlite3
import time

from engine_double import fake_engine
from fastapi.testclient import TestClient

from v1motion.service.app import create_app
from v1motion.service.jobs.limits import Limits
from v1motion.service.jobs.manager import VideoJobs
from v1motion.service.jobs.store import STORE_VERSION, JobStore
from v1motion.service.settings import Settings

FIRST_RELEASE = """
CREATE TABLE jobs (
    id            TEXT PRIMARY KEY,
    status        TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed')),
    filename      TEXT NOT NULL,
    content_type  TEXT NOT NULL,
    size_bytes    INTEGER NOT NULL,
    created_at    REAL NOT NULL,
    started_at    REAL,
    finished_at   REAL,
    frames_done   INTEGER NOT NULL DEFAULT 0,
    frames_total  INTEGER,
    attempts      INTEGER NOT NULL DEFAULT 0,
    error         TEXT,
    result        TEXT
);
"""
JOB = "0123456789abcdef0123456789abcdef"


def _first_release_store(path, finished_days_ago=1.0):
    """A store as the first release left it: no added columns, no ``gone`` table, user_version 0,
    one succeeded job."""
    db = sqlite3.connect(path)
    db.executescript(FIRST_RELEASE)
    now = time.time()
    db.execute(
        "INSERT INTO jobs (id, status, filename, content_type, size_bytes, created_at, started_at,"
        " finished_at, frames_done, frames_total, attempts, result) VALUES"
        " (?, 'succeeded', 'clip.mp4', 'video/mp4', 10, ?, ?, ?, 60, 60, 1, '{\"frames\": 60}')",
        (JOB, now - 86400 * finished_days_ago - 5, now - 86400 * finished_days_ago - 4,
         now - 86400 * finished_days_ago),
    )  # fmt: skip
    db.commit()
    db.close()


def _user_version(path) -> int:
    db = sqlite3.connect(path)
    try:
        return db.execute("PRAGMA user_version").fetchone()[0]
    finally:
        db.close()


def test_a_first_release_store_is_upgraded_in_place_and_the_log_says_so(tmp_path, caplog):
    path = tmp_path / "jobs.sqlite3"
    _first_release_store(path)
    with caplog.at_level(logging.WARNING, logger="v1motion.service.jobs.store"):
        store = JobStore(path)
    try:
        rec = store.get(JOB)
        assert rec.status == "succeeded" and rec.result == {"frames": 60}
        assert rec.idempotency_key is None and rec.sha256 is None
        assert store.added == ["idempotency_key", "sha256"] and store.format == STORE_VERSION
    finally:
        store.close()
    assert _user_version(path) == STORE_VERSION
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "added idempotency_key, sha256" in said[0]
    assert "cannot open it any more" in said[0] and "docker/README.md" in said[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="v1motion.service.jobs.store"):
        JobStore(path).close()  # once upgraded, nothing more to say
    assert caplog.records == []


def test_a_newer_stores_jobs_stay_readable_and_writable(tmp_path, caplog):
    """A rollback: a later version added a column, a table and its format number."""
    path = tmp_path / "jobs.sqlite3"
    with caplog.at_level(logging.WARNING, logger="v1motion.service.jobs.store"):
        JobStore(path).close()
    assert caplog.records == []  # a new store: nothing upgraded
    db = sqlite3.connect(path)
    db.executescript(
        "ALTER TABLE jobs ADD COLUMN priority INTEGER;"
        "CREATE TABLE webhooks (id TEXT PRIMARY KEY, url TEXT);"
        f"PRAGMA user_version = {STORE_VERSION + 1};"
    )
    db.close()
    with caplog.at_level(logging.WARNING, logger="v1motion.service.jobs.store"):
        store = JobStore(path)
    try:
        store.create(JOB, "clip.mp4", "video/mp4", 10)
        claimed = store.claim_next()
        assert claimed.id == JOB and claimed.status == "running"
        assert [r.id for r in store.list()[0]] == [JOB]
        assert store.format == STORE_VERSION + 1
    finally:
        store.close()
    assert _user_version(path) == STORE_VERSION + 1  # not lowered: the newer version reads it again
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "from a newer v1motion" in said[0]


def test_the_service_starts_on_a_newer_store_and_lists_its_jobs(tmp_path):
    _first_release_store(tmp_path / "jobs.sqlite3")
    db = sqlite3.connect(tmp_path / "jobs.sqlite3")
    db.execute("ALTER TABLE jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0")
    db.commit()
    db.close()
    settings = Settings(data_dir=tmp_path, engine="random")
    with TestClient(create_app(settings)) as client:
        r = client.get("/v1/videos")
        assert r.status_code == 200
        assert [j["id"] for j in r.json()["data"]] == [JOB]
        assert client.get(f"/v1/videos/{JOB}").json()["status"] == "succeeded"


def test_the_start_names_the_store_and_counts_its_jobs(tmp_path, caplog):
    _first_release_store(tmp_path / "jobs.sqlite3")
    jobs = VideoJobs.local(tmp_path, Limits(), fake_engine)
    with caplog.at_level(logging.INFO, logger="v1motion.service.jobs.manager"):
        jobs.start()
    jobs.stop()
    said = [r.getMessage() for r in caplog.records]
    assert f"job store {tmp_path / 'jobs.sqlite3'} (format {STORE_VERSION}): 1 jobs, " in said[-1]
    assert "0 queued, 0 running, 1 succeeded, 0 failed" in said[-1]


def test_a_retention_that_deletes_jobs_at_start_warns_with_their_count(tmp_path, caplog):
    """From the probe: a compose upgrade set a retention of 7 days on a volume kept until then, and
    the jobs that ended more than a week ago went in the first second, each on an INFO line."""
    _first_release_store(tmp_path / "jobs.sqlite3", finished_days_ago=10)
    jobs = VideoJobs.local(tmp_path, Limits(), fake_engine, keep_days=7)
    with caplog.at_level(logging.INFO, logger="v1motion.service.jobs.manager"):
        jobs.start()
    jobs.stop()
    warned = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and r.name == "v1motion.service.jobs.manager"
    ]
    assert warned == [
        "deleted 1 jobs that ended more than 7 days ago (V1MOTION_VIDEO_KEEP_DAYS; 0 keeps them)"
    ]
    assert (
        caplog.records[-1]
        .getMessage()
        .endswith("0 jobs, 0 queued, 0 running, 0 succeeded, 0 failed")
    )
