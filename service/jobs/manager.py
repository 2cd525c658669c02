"""The video job service behind the router: store, job folders, runner, start-up recovery."""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from v1motion.service.disk import is_disk_full
from v1motion.service.jobs.engines import engine_factory
from v1motion.service.jobs.layout import JobLayout
from v1motion.service.jobs.limits import Limits
from v1motion.service.jobs.lock import LOCK_NAME, StoreLock
from v1motion.service.jobs.runners import LocalWorkerPool, Runner
from v1motion.service.jobs.store import BY_CLIENT, JobRecord, JobStore
from v1motion.service.logs import WORKER_LOG
from v1motion.service.settings import Settings

log = logging.getLogger(__name__)

JOB_ID = re.compile(r"^[0-9a-f]{32}$")
DB_NAME = "jobs.sqlite3"
JOBS_FOLDER = "videos"
QUEUE_RETRY_S = (1, 30)
"""The shortest and longest ``Retry-After`` of a full queue (``VideoJobs.retry_after_s``)."""


def new_job_id() -> str:
    return uuid.uuid4().hex


class VideoJobs:
    """Owns the job store, the job folders and the runner.

    Parameters
    ----------
    data_dir : Path
        ``jobs.sqlite3``, ``jobs.lock`` and ``videos/<job id>/`` live here; one started
        :class:`VideoJobs` per data directory (:mod:`v1motion.service.jobs.lock`).
    limits : Limits
    runner_factory : callable(store, jobs_dir, limits) -> Runner
    max_queued : int
        Uploads are refused (503) while this many jobs wait.
    max_attempts : int
        Starts allowed per job before a restart-interrupted job is failed.
    keep_days : float
        Finished jobs are deleted, record and results, this many days after they ended (checked at
        start and at each upload: the store only grows then); 0 keeps them until deleted.
    lock : StoreLock, optional
        The lock of ``data_dir``'s job store when the caller has taken it already; :meth:`stop`
        releases it.
    """

    def __init__(
        self,
        data_dir: Path,
        limits: Limits,
        runner_factory: Callable[[JobStore, Path, Limits], Runner],
        max_queued: int = 32,
        max_attempts: int = 2,
        keep_days: float = 0.0,
        lock: StoreLock | None = None,
    ):
        self.data_dir = Path(data_dir)
        self.jobs_dir = self.data_dir / JOBS_FOLDER
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.limits, self.max_queued, self.max_attempts = limits, max_queued, max_attempts
        self.keep_days = keep_days
        self.store = JobStore(self.data_dir / DB_NAME)
        self.lock = lock or StoreLock(self.data_dir)
        if self.lock.path.resolve() != (self.data_dir / LOCK_NAME).resolve():
            raise ValueError(f"the lock {self.lock.path} is not that of {self.data_dir}")
        self.runner = runner_factory(self.store, self.jobs_dir, limits)

    @classmethod
    def from_settings(cls, settings: Settings, lock: StoreLock | None = None) -> VideoJobs:
        """The service's jobs: local worker processes, or Ray tasks when ``ray_address`` is set;
        ``lock``, if given, is the job store's lock already held by the caller."""
        name = settings.video_engine or settings.engine
        factory = engine_factory(name, settings.video_engine_threads)
        limits = Limits(
            max_frames=settings.video_max_frames,
            max_seconds=settings.video_max_seconds,
            max_side=settings.video_max_side,
            overlay=settings.video_overlay,
            overlay_codec=settings.video_overlay_codec,
            memory_mb=settings.video_memory_mb,
            deadline_s=settings.video_deadline_s,
        )
        kw = dict(
            max_queued=settings.video_max_queued,
            max_attempts=settings.video_max_attempts,
            keep_days=settings.video_keep_days,
            lock=lock,
        )
        if settings.ray_address:
            from v1motion.service.jobs.ray_runner import RayRunner

            address, slots = settings.ray_address, settings.video_workers
            # Ray schedules one CPU per task: its engines step on one thread
            one = engine_factory(name, 1)
            return cls(
                settings.data_dir,
                limits,
                lambda s, d, lim: RayRunner(s, d, lim, one, address, slots=slots),
                **kw,
            )
        return cls.local(
            settings.data_dir,
            limits,
            factory,
            settings.video_workers,
            niceness=settings.batch_niceness,
            log=(settings.log_level, settings.log_format),
            idle_exit_s=settings.video_worker_idle_s or None,
            **kw,
        )

    @classmethod
    def local(
        cls,
        data_dir,
        limits,
        engine_factory,
        workers=1,
        lazy=True,
        niceness=0,
        log=WORKER_LOG,
        idle_exit_s=None,
        **kw,
    ) -> VideoJobs:
        def runner(s, d, lim):
            return LocalWorkerPool(
                s, d, lim, engine_factory, slots=workers, lazy=lazy, niceness=niceness, log=log,
                idle_exit_s=idle_exit_s,
            )  # fmt: skip

        return cls(data_dir, limits, runner, **kw)

    def start(self) -> None:
        """Lock the store (:class:`~v1motion.service.jobs.lock.StoreLocked` if another service holds it),
        recover interrupted jobs, start the runner."""
        self.lock.acquire()  # first: recovery would re-queue the other service's running jobs
        finished = self._record_published()
        if finished:
            log.warning(
                "%d interrupted jobs had published their results: recorded as succeeded",
                len(finished),
            )
        requeued, failed = self.store.recover(self.max_attempts)
        if requeued or failed:
            log.warning("recovered %d interrupted jobs, failed %d", len(requeued), len(failed))
        self._sweep()
        expired = self.expire()
        # a bulk deletion at start (a retention newly set on a kept volume): one WARNING with the count
        if expired:
            log.warning(
                "deleted %d jobs that ended more than %g days ago (V1MOTION_VIDEO_KEEP_DAYS; 0 "
                "keeps them)", len(expired), self.keep_days,
            )  # fmt: skip
        counts = self.store.counts()
        log.info(
            "job store %s (format %d): %d jobs, %s",
            self.store.path, self.store.format, sum(counts.values()),
            ", ".join(f"{n} {status}" for status, n in counts.items()),
        )  # fmt: skip
        self.runner.start()

    def stop(self) -> None:
        try:
            self.runner.stop()
            self.store.close()
        finally:
            self.lock.release()  # whatever failed above, the data directory is free again

    def _record_published(self) -> list[str]:
        """Record as succeeded the ``running`` jobs whose results were published (the process
        ended between the rename and the store's record of it): re-running the job would repeat
        the work, or fail it on its last attempt with its results kept but unreachable."""
        done = []
        records, _ = self.store.list(limit=1_000_000, statuses=("running",))
        for rec in records:
            result = JobLayout.of(self.jobs_dir, rec.id).results.published_result()
            if result is not None:  # else recovery re-queues or fails it
                self.store.succeed(rec.id, result)
                done.append(rec.id)
        return done

    def _sweep(self) -> None:
        """Remove job folders with no record (an upload cut off by a crash), half-written results
        and the uploads of finished jobs; fail queued jobs whose stored upload is missing."""
        known = set()
        records, _ = self.store.list(limit=1_000_000)
        for rec in records:
            known.add(rec.id)
            job_dir = JobLayout.of(self.jobs_dir, rec.id)
            job_dir.results.discard()
            if rec.status == "queued" and not job_dir.input.exists():
                self.store.fail(rec.id, "the stored upload is missing; upload the video again")
                rec = self.store.get(rec.id)
            if rec.status in ("succeeded", "failed"):  # failed by the recovery just before, too
                job_dir.input.unlink(missing_ok=True)
        for folder in self.jobs_dir.iterdir():
            if folder.name not in known:
                shutil.rmtree(folder, ignore_errors=True)

    # -- used by the router

    def queue_full(self) -> bool:
        return self.store.count("queued") >= self.max_queued

    def retry_after_s(self, now: float | None = None) -> int:
        """Seconds a client refused by a full queue should wait (``Retry-After``): until the
        running job nearest its end is likely done, by its pace so far (frames left over frames/s
        since it started), within ``QUEUE_RETRY_S``; the longest where no job has a pace yet. A
        fixed 30 s left the worker idle between short jobs (12 % of a batch probe's run)."""
        shortest, longest = QUEUE_RETRY_S
        now = time.time() if now is None else now
        soonest = float(longest)
        for rec in self.store.list(limit=100, statuses=("running",))[0]:
            elapsed = now - (rec.started_at or now)
            if rec.frames_done <= 0 or not rec.frames_total or elapsed <= 0:
                continue
            left = max(rec.frames_total - rec.frames_done, 0) * elapsed / rec.frames_done
            soonest = min(soonest, left)
        return int(min(max(math.ceil(soonest), shortest), longest))

    def new_folder(self) -> tuple[str, Path]:
        job_id = new_job_id()
        folder = self.jobs_dir / job_id
        folder.mkdir()
        return job_id, folder

    def submit(self, *args, **kw) -> JobRecord:
        """Queue a job: :meth:`JobStore.create`'s arguments (``sqlite3.IntegrityError`` if a job
        has the ``idempotency_key`` already)."""
        rec = self.store.create(*args, **kw)
        self.runner.wake()
        return rec

    def expire(self) -> list[str]:
        """Delete the jobs that ended more than ``keep_days`` ago (none when it is 0): at start and
        after each upload (the router's), as the store only grows then."""
        if not self.keep_days:
            return []
        old = self.store.finished_before(time.time() - self.keep_days * 86400.0)
        for job_id in old:
            self.delete(
                job_id,
                why=f"ended more than {self.keep_days:g} days ago (V1MOTION_VIDEO_KEEP_DAYS)",
            )
        return old

    def get(self, job_id: str) -> JobRecord | None:
        if not JOB_ID.match(job_id):
            return None
        return self.store.get(job_id)

    def result_path(self, job_id: str, name: str) -> Path:
        return JobLayout.of(self.jobs_dir, job_id).result(name)

    def data_folder_problem(self) -> str | None:
        """Why the data folder can no longer hold jobs, else None: its job store deleted or replaced
        under the running server (which went on recording jobs in the unlinked file, lost at the
        next start), or the folder read-only (the kernel's answer to an I/O error)."""
        try:
            st = os.stat(self.store.path)
        except OSError as exc:
            return f"its job store is gone ({exc.strerror}): was the data folder deleted?"
        if (st.st_dev, st.st_ino) != self.store.identity:
            return "its job store was replaced while the server ran: restart the service"
        if not os.access(self.jobs_dir, os.W_OK):
            return "its data folder cannot be written (read-only?)"
        return None

    def delete(self, job_id: str, why: str | None = None) -> bool:
        rec = self.get(job_id)
        if rec is None:
            return False
        try:
            self.store.delete(job_id, why or BY_CLIENT)  # first, so no slot can claim it any more
        except Exception as exc:
            # A full disk has no room for the record (the store's journal grows first): deleting
            # jobs is how a client makes room, and answered 507 "retry once space is freed" with
            # nothing freed. Their files go first then (no slot can claim a job either: that too
            # is a write), and the record after, in the room they left.
            if not is_disk_full(exc):
                raise
            self.runner.cancel(job_id)
            shutil.rmtree(self.jobs_dir / job_id, ignore_errors=True)
            self.store.delete(job_id, why or BY_CLIENT)
        self.runner.cancel(job_id)  # then stop it if a slot already holds it
        shutil.rmtree(self.jobs_dir / job_id, ignore_errors=True)
        log.info("job %s deleted (it was %s%s)", job_id, rec.status, f"; {why}" if why else "")
        return True
