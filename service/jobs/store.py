"""Job records in SQLite (WAL mode), one file under the data directory.

States: ``queued`` → ``running`` → ``succeeded`` | ``failed``. A job is claimed atomically, so two
dispatchers never run the same one. :meth:`JobStore.recover` runs at start-up: jobs left ``running`` by
a dead service are re-queued (up to ``max_attempts`` starts) or failed with a reason; nothing stays
``running`` and nothing vanishes.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, fields
from pathlib import Path

log = logging.getLogger(__name__)

STATUSES = ("queued", "running", "succeeded", "failed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
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
CREATE INDEX IF NOT EXISTS jobs_status_created ON jobs (status, created_at);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created_at DESC, id);
CREATE TABLE IF NOT EXISTS gone (
    id          TEXT PRIMARY KEY,
    deleted_at  REAL NOT NULL,
    why         TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS gone_deleted ON gone (deleted_at);
"""
BY_CLIENT = "deleted by a client"
GONE_KEEP_DAYS = 30.0
"""How long the id of a deleted job is remembered (a 410 that says when and why, not the 404 of an
id that never existed); older ones are forgotten when jobs are deleted."""
STORE_VERSION = 2
"""The store's format, kept in SQLite's ``user_version``: 1 is the first release's table (0 in its
files, which set none), 2 adds ``_ADDED``. A version only adds nullable columns and tables, and
reads only the columns it knows, so this service and later ones can open a newer store (a
rollback); the ones before it refuse columns they do not know (docker/README.md)."""
# Columns added after the first release: a store written by an older service gets them at open.
_ADDED = {
    "idempotency_key": "TEXT",  # the client's Idempotency-Key header, if it sent one
    "sha256": "TEXT",  # of the upload, to tell a retry of the same POST from another file
}
_KEY_INDEX = (
    "CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency_key ON jobs (idempotency_key)"
    " WHERE idempotency_key IS NOT NULL"
)


@dataclass(frozen=True)
class JobRecord:
    id: str
    status: str
    filename: str
    content_type: str
    size_bytes: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    frames_done: int
    frames_total: int | None
    attempts: int
    error: str | None
    result: dict | None
    idempotency_key: str | None = None
    sha256: str | None = None


_FIELDS = frozenset(f.name for f in fields(JobRecord))


def _record(row: sqlite3.Row | None) -> JobRecord | None:
    """The row's job; columns this version does not know (a newer service's) are left out."""
    if row is None:
        return None
    d = {k: row[k] for k in row.keys() if k in _FIELDS}
    d["result"] = json.loads(d["result"]) if d["result"] else None
    return JobRecord(**d)


class JobStore:
    """Thread-safe access to the jobs table.

    Parameters
    ----------
    path : Path
        The SQLite file (created with its folder if missing).
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on the disk when it returns. NORMAL (WAL's usual) can lose the last
        # commits at a power cut: a job reported succeeded 15 s before was gone after one, and the
        # start-up sweep then removed its surviving results. A job makes a few commits.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=5000")
        new = not self._db.execute("SELECT 1 FROM sqlite_master WHERE name = 'jobs'").fetchone()
        self._db.executescript(_SCHEMA)
        found = self._db.execute("PRAGMA user_version").fetchone()[0]
        have = {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}
        added = [column for column in _ADDED if column not in have]
        for column in added:
            self._db.execute(f"ALTER TABLE jobs ADD COLUMN {column} {_ADDED[column]}")
        self.added = [] if new else added  # to a store an older service wrote
        self._db.execute(_KEY_INDEX)
        if found > STORE_VERSION:
            log.warning(
                "job store %s has format %d, from a newer v1motion than this one (format %d): "
                "reading and writing the columns this version knows",
                self.path, found, STORE_VERSION,
            )  # fmt: skip
        else:
            self._db.execute(f"PRAGMA user_version = {STORE_VERSION}")
        if self.added:
            log.warning(
                "job store %s: format %d → %d (added %s); a v1motion older than format %d "
                "cannot open it any more (docker/README.md, 'Upgrades, backups and rollbacks')",
                self.path, max(found, 1), STORE_VERSION, ", ".join(self.added), STORE_VERSION,
            )  # fmt: skip
        self.format = max(found, STORE_VERSION)
        st = os.stat(self.path)
        self.identity = (st.st_dev, st.st_ino)  # the file this store opened (data_folder_problem)
        # jobs this process saw end, by status: counters for alerts on a failure rate (the counts
        # of jobs kept by status fall when a client deletes one)
        self.ended = {"succeeded": 0, "failed": 0}

    @property
    def journal_mode(self) -> str:
        with self._lock:
            return self._db.execute("PRAGMA journal_mode").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def create(
        self,
        job_id: str,
        filename: str,
        content_type: str,
        size_bytes: int,
        idempotency_key: str | None = None,
        sha256: str | None = None,
        frames_total: int | None = None,
    ) -> JobRecord:
        """A queued job; ``sqlite3.IntegrityError`` if a job already has ``idempotency_key``.
        ``frames_total``: the probe's estimate, so that a queued job's progress says its size."""
        with self._lock:
            self._db.execute(
                "INSERT INTO jobs (id, status, filename, content_type, size_bytes, created_at,"
                " idempotency_key, sha256, frames_total) VALUES (?, 'queued', ?, ?, ?, ?, ?, ?, ?)",
                (
                    job_id, filename, content_type, size_bytes, time.time(), idempotency_key,
                    sha256, frames_total,
                ),
            )  # fmt: skip
        return self.get(job_id)

    def by_key(self, idempotency_key: str) -> JobRecord | None:
        """The job created with this ``Idempotency-Key`` (None if none is left)."""
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM jobs WHERE idempotency_key = ?", (idempotency_key,)
            ).fetchone()
        return _record(row)

    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _record(row)

    def list(
        self,
        limit: int = 100,
        offset: int = 0,
        statuses: tuple[str, ...] | None = None,
        after: tuple[float, str] | None = None,
    ) -> tuple[list[JobRecord], int]:
        """Newest first (ties by id), with the count of all jobs in ``statuses`` (every job when
        None). ``after``: the ``(created_at, id)`` of the last job of the page before, so that the
        jobs created or deleted meanwhile do not move the next page (offsets do)."""
        where, args = [], []
        if statuses:
            where.append(f"status IN ({', '.join('?' * len(statuses))})")
            args.extend(statuses)
        filtered = " AND ".join(where)
        if after is not None:
            where.append("(created_at < ? OR (created_at = ? AND id > ?))")
            args.extend((after[0], after[0], after[1]))
        page = f" WHERE {' AND '.join(where)}" if where else ""
        with self._lock:
            rows = self._db.execute(
                f"SELECT * FROM jobs{page} ORDER BY created_at DESC, id LIMIT ? OFFSET ?",
                (*args, limit, offset),
            ).fetchall()
            total = self._db.execute(
                f"SELECT COUNT(*) FROM jobs{' WHERE ' + filtered if filtered else ''}",
                tuple(statuses or ()),
            ).fetchone()[0]
        return [_record(r) for r in rows], total

    def count(self, status: str) -> int:
        with self._lock:
            return self._db.execute(
                "SELECT COUNT(*) FROM jobs WHERE status = ?", (status,)
            ).fetchone()[0]

    def counts(self) -> dict[str, int]:
        """Jobs kept, by status (every status, 0 where none)."""
        with self._lock:
            rows = self._db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
        return {s: 0 for s in STATUSES} | {status: n for status, n in rows}

    def claim_next(self) -> JobRecord | None:
        """Atomically move the oldest queued job to ``running`` and return it (None if none)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(
                    "SELECT id FROM jobs WHERE status = 'queued' ORDER BY created_at, id LIMIT 1"
                ).fetchone()
                if row is not None:
                    self._db.execute(
                        "UPDATE jobs SET status = 'running', started_at = ?, attempts = attempts + 1,"
                        " frames_done = 0 WHERE id = ?",
                        (time.time(), row["id"]),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return self.get(row["id"]) if row is not None else None

    def set_progress(self, job_id: str, frames_done: int, frames_total: int | None) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET frames_done = ?, frames_total = ? WHERE id = ? AND status = 'running'",
                (frames_done, frames_total, job_id),
            )

    def succeed(self, job_id: str, result: dict) -> None:
        frames = int(result.get("frames", 0))
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET status = 'succeeded', finished_at = ?, result = ?,"
                " frames_done = ?, frames_total = ?, error = NULL WHERE id = ?",
                (time.time(), json.dumps(result), frames, frames, job_id),
            )
            self.ended["succeeded"] += 1

    def fail(self, job_id: str, reason: str) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET status = 'failed', finished_at = ?, error = ? WHERE id = ?",
                (time.time(), reason, job_id),
            )
            self.ended["failed"] += 1

    def requeue(self, job_id: str, count_attempt: bool = True) -> None:
        """Put a running job back in the queue (a graceful shutdown does not count as an attempt)."""
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET status = 'queued', started_at = NULL, frames_done = 0,"
                " attempts = attempts - ? WHERE id = ?",
                (0 if count_attempt else 1, job_id),
            )

    def finished_before(self, cutoff: float) -> list[str]:
        """The jobs that ended (succeeded or failed) before ``cutoff`` (``time.time()`` seconds)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id FROM jobs WHERE status IN ('succeeded', 'failed') AND finished_at < ?",
                (cutoff,),
            ).fetchall()
        return [r[0] for r in rows]

    def delete(self, job_id: str, why: str = BY_CLIENT) -> bool:
        """Delete the record, remembering for :data:`GONE_KEEP_DAYS` that it was (:meth:`gone`)."""
        now = time.time()
        with self._lock:
            cur = self._db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
            if cur.rowcount > 0:
                self._db.execute(
                    "INSERT OR REPLACE INTO gone (id, deleted_at, why) VALUES (?, ?, ?)",
                    (job_id, now, why),
                )
                self._db.execute(
                    "DELETE FROM gone WHERE deleted_at < ?", (now - GONE_KEEP_DAYS * 86400.0,)
                )
        return cur.rowcount > 0

    def gone(self, job_id: str) -> tuple[float, str] | None:
        """When and why a job deleted in the last :data:`GONE_KEEP_DAYS` went (None otherwise)."""
        with self._lock:
            row = self._db.execute(
                "SELECT deleted_at, why FROM gone WHERE id = ?", (job_id,)
            ).fetchone()
        return (row[0], row[1]) if row is not None else None

    def recover(self, max_attempts: int) -> tuple[list[str], list[str]]:
        """Handle jobs a previous process left ``running``.

        Returns
        -------
        requeued, failed : list of str
            Job ids put back in the queue, and those failed because they had used up their attempts.
        """
        with self._lock:
            rows = self._db.execute(
                "SELECT id, attempts FROM jobs WHERE status = 'running'"
            ).fetchall()
        requeued, failed = [], []
        for row in rows:
            if row["attempts"] < max_attempts:
                self.requeue(row["id"])
                requeued.append(row["id"])
            else:
                self.fail(
                    row["id"],
                    f"interrupted by a service restart {row['attempts']} times; not retried again",
                )
                failed.append(row["id"])
        return requeued, failed
