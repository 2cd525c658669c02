"""Who runs the queued jobs: local worker processes (default) or Ray tasks (when configured).

Both share one dispatcher: a thread per slot claims the oldest queued job from the store, hands it to
its executor and records progress and the outcome. The queue is the ``queued`` rows of the store (its
length is capped where uploads come in); each slot holds at most one job.
"""

from __future__ import annotations

import errno
import logging
import multiprocessing as mp
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from v1motion.service.disk import disk_full_reason, free_mb, is_disk_full
from v1motion.service.jobs.layout import JobLayout
from v1motion.service.jobs.limits import Limits
from v1motion.service.jobs.store import JobRecord, JobStore
from v1motion.service.logs import WORKER_LOG

log = logging.getLogger(__name__)

JOB_GRACE_S = 60.0  # beyond the decode deadline, for writing results
# a worker killed by SIGBUS with less free than this wrote through a memory map onto a full disk
DISK_LOW_MB = 64
NO_ROOM = disk_full_reason(None, "this video's results")  # a job that met a full disk


class _Cancelled(Exception):
    pass


class Runner:
    """Base dispatcher: ``slots`` threads, each running one job at a time through :meth:`_execute`.

    Parameters
    ----------
    store : JobStore
    jobs_dir : Path
        Holds one folder per job.
    limits : Limits
    slots : int
        Jobs run at the same time.
    """

    name = "runner"

    def __init__(self, store: JobStore, jobs_dir: Path, limits: Limits, slots: int = 1):
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        self.store, self.jobs_dir, self.limits, self.slots = store, Path(jobs_dir), limits, slots
        self._wake = threading.Condition()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._current: dict[int, str] = {}
        self._cancel: set[str] = set()
        self._released = threading.Condition()
        self._idle_since: dict[int, float] = {}  # per slot: when its last job ended

    # -- public

    def start(self) -> None:
        for i in range(self.slots):
            t = threading.Thread(
                target=self._slot_loop,
                args=(i,),
                name=f"{self.name}-slot-{i}",
                daemon=self.abandon_after_s is not None,
            )
            t.start()
            self._threads.append(t)

    def wake(self) -> None:
        """A job was queued."""
        with self._wake:
            self._wake.notify_all()

    def cancel(self, job_id: str, timeout: float = 30.0) -> None:
        """Stop a running job and wait until no slot holds it any more."""
        with self._released:
            if job_id not in self._current.values():
                return
            self._cancel.add(job_id)
            self._released.wait_for(lambda: job_id not in self._current.values(), timeout)
            self._cancel.discard(job_id)

    def stop(self) -> None:
        """Stop the slots; jobs still running go back to the queue for the next start.

        A slot stuck in a call that cannot be interrupted (``abandon_after_s``) is left behind after
        that long, and the service stops without it."""
        self._stop.set()
        self.wake()
        deadline = None if self.abandon_after_s is None else time.monotonic() + self.abandon_after_s
        for t in self._threads:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if t.is_alive():
                log.warning(
                    "%s: %s did not stop within %.0f s (%s); stopping without it",
                    self.name,
                    t.name,
                    self.abandon_after_s,
                    self.stuck_hint,
                )
        self._threads.clear()

    # -- executor hooks

    lazy = False  # True: prepare a slot only once a job is waiting
    idle_exit_s: float | None = None  # lazy slots: tear a prepared slot down after this long idle
    # None: stop() waits for every slot; seconds: a slot still busy after that long is left behind
    # (its thread a daemon, so the process can exit), with this hint in the log
    abandon_after_s: float | None = None
    stuck_hint = ""

    def _slot_ready(self, slot: int) -> bool:
        """Whether the slot is prepared already."""
        return True

    def _setup_slot(self, slot: int) -> bool:
        """Prepare a slot; False if it cannot take jobs yet (retried)."""
        return True

    def _teardown_slot(self, slot: int) -> None:
        pass

    def _execute(
        self, slot: int, job: JobRecord, should_stop: Callable[[], bool]
    ) -> tuple[str, object]:
        """Run one job; return ("ok", result dict) or ("failed", reason). Raise _Cancelled if
        ``should_stop()`` turned true and the job was abandoned."""
        raise NotImplementedError

    # -- dispatcher

    def _slot_loop(self, slot: int) -> None:
        backoff = 1.0
        while not self._stop.is_set():
            try:
                backoff = self._slot_step(slot, backoff)
            except Exception:  # the job store failing (a full disk): the slot lives on, and waits
                log.exception("%s slot %d: the job store failed; retrying", self.name, slot)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 60.0)
        self._teardown_slot(slot)

    def _slot_step(self, slot: int, backoff: float) -> float:
        """Prepare the slot if needed and run the next queued job; the next back-off."""
        if self.lazy and not self._slot_ready(slot) and self.store.count("queued") == 0:
            with self._wake:  # no worker and nothing to do: do not start one yet
                self._wake.wait(1.0)
            return backoff
        try:
            ready = self._setup_slot(slot)
        except Exception:
            log.exception("%s slot %d could not start", self.name, slot)
            ready = False
        if not ready:
            self._stop.wait(backoff)
            return min(backoff * 2, 60.0)
        job = self.store.claim_next()
        if job is None:
            self._retire_if_idle(slot)
            with self._wake:
                self._wake.wait(1.0)
            return 1.0
        self._run_one(slot, job)
        self._idle_since[slot] = time.monotonic()
        return 1.0

    def _retire_if_idle(self, slot: int) -> None:
        """A lazy slot's worker idle for ``idle_exit_s`` is stopped (the next job starts one)."""
        now = time.monotonic()
        since = self._idle_since.setdefault(slot, now)
        if self.lazy and self.idle_exit_s and now - since >= self.idle_exit_s:
            if self._slot_ready(slot):
                self._teardown_slot(slot)
                log.info(
                    "%s worker %d stopped after %.0f s without a job (the next job starts one)",
                    self.name, slot, now - since,
                )  # fmt: skip
            self._idle_since.pop(slot, None)

    def _run_one(self, slot: int, job: JobRecord) -> None:
        with self._released:
            self._current[slot] = job.id

        def should_stop() -> bool:
            return self._stop.is_set() or job.id in self._cancel

        log.info(
            "job %s: started on %s slot %d (attempt %d)", job.id, self.name, slot, job.attempts
        )
        outcome = None  # the store's record of how the job ended
        try:
            status, payload = self._execute(slot, job, should_stop)
            if status == "ok":
                warned = "; ".join(payload.get("warnings") or [])  # a cut or damaged file's
                said = f"succeeded, but {warned}" if warned else "succeeded"
                outcome = (self.store.succeed, payload, said)
            elif (published := self._published(job.id)) is not None:
                # its worker died after publishing, before answering
                outcome = (self.store.succeed, published, "succeeded (from its published results)")
            else:
                outcome = (self.store.fail, str(payload), f"failed: {payload}")
        except _Cancelled:
            if self._stop.is_set() and job.id not in self._cancel:
                outcome = (self.store.requeue, False, "back in the queue (service stopping)")
        except Exception as exc:
            reason = failure_reason(job.id, exc)
            outcome = (self.store.fail, reason, reason)
        finally:
            # first: on a full disk, the half-written results give back the room to record it
            JobLayout.of(self.jobs_dir, job.id).results.discard()
            try:
                if outcome is not None:
                    self._record(job.id, *outcome)
            finally:
                with self._released:
                    self._current.pop(slot, None)
                    self._released.notify_all()

    def _published(self, job_id: str) -> dict | None:
        try:
            return JobLayout.of(self.jobs_dir, job_id).results.published_result()
        except Exception:  # never in the way of recording the failure
            return None

    def _record(self, job_id: str, write, arg, said: str) -> None:
        """Write how a job ended, retried while the store cannot (a full disk: SQLite's "database or
        disk is full"), so that no job stays "running": the slot died there, and every job queued
        behind it waited for ever. Given up only when the service stops; the next start's recovery
        then finds the job interrupted."""
        wait = 1.0
        while True:
            try:
                write(job_id, arg)
                # a failure is a warning: a server limit (a deadline, memory) or a file the probe
                # let through; it was at info, so an operator logging warnings never saw one
                level = logging.WARNING if write == self.store.fail else logging.INFO
                log.log(level, "job %s: %s", job_id, said)
                if write != self.store.requeue:  # it ended: its upload is of no more use
                    JobLayout.of(self.jobs_dir, job_id).input.unlink(missing_ok=True)
                return
            except Exception as exc:
                if self._stop.is_set():
                    log.error("job %s: its end (%s) could not be recorded: %s", job_id, said, exc)
                    return
                log.error(
                    "job %s: cannot record its end yet (%s); retrying in %g s", job_id, exc, wait
                )
                self._stop.wait(wait)
                wait = min(wait * 2, 30.0)


# ------------------------------------------------------------------------------ local processes


def worker_main(
    conn,
    engine_factory: Callable[[], object],
    limits: Limits,
    niceness: int = 0,
    log: tuple[str, str] = WORKER_LOG,
) -> None:
    """Body of a worker process: build the engine once, then run jobs sent over ``conn``."""
    from v1motion.service.jobs.decode import (
        die_with_parent,
        leave_signals_to_parent,
        lower_priority,
    )
    from v1motion.service.jobs.engines import pin_threads, settle_job_process
    from v1motion.service.logs import configure_worker_logging

    leave_signals_to_parent()  # a SIGTERM to the process group is for the service, which stops us
    die_with_parent()
    lower_priority(niceness)
    configure_worker_logging(*log)  # the server's level and format (JSON lines included)
    try:
        pin_threads(1)
        engine = engine_factory()
        settle_job_process()
    except Exception as exc:
        conn.send(("fatal", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", None))
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg[0] == "stop":
            return
        _, job_id, input_path, out_dir = msg

        def progress(done: int, total: int) -> None:
            conn.send(("progress", done, total))

        conn.send(run_job(job_id, Path(input_path), Path(out_dir), engine, limits, progress))


def run_job(job_id: str, input_path: Path, out_dir: Path, engine, limits: Limits, progress):
    """One job in a worker: ``("ok", result)`` or ``("failed", reason)``."""
    from v1motion.service.jobs.decode import DecodeError
    from v1motion.service.jobs.process import process_video

    try:
        result = process_video(input_path, out_dir, lambda: engine, limits, progress)
        result["ran_on"] = {"runner": "local", "hostname": socket.gethostname(), "pid": os.getpid()}
        return "ok", result
    except DecodeError as exc:
        return "failed", str(exc)
    except Exception as exc:
        return "failed", failure_reason(job_id, exc)


def failure_reason(job_id: str, exc: Exception) -> str:
    """Why a job failed, for its client, logged: a full disk said as such (a warning), anything
    else an internal error (with its traceback). Called while ``exc`` is handled."""
    if is_disk_full(exc):
        log.warning("job %s: %s", job_id, NO_ROOM)
        return NO_ROOM
    if isinstance(exc, OSError) and exc.errno in (errno.EROFS, errno.EIO):  # read-only, failing
        log.error("job %s: its results cannot be written: %s", job_id, exc)
        return (
            f"the server could not write this video's results ({exc.strerror}); "
            "retry once its operator has fixed its data folder"
        )
    log.exception("job %s: internal error", job_id)
    if isinstance(exc, OSError):  # its message names a file of the server
        return f"internal error: {type(exc).__name__}: {exc.strerror or exc.errno}"
    return f"internal error: {type(exc).__name__}: {exc}"


class LocalWorkerPool(Runner):
    """Jobs run in separate worker processes (spawned), one per slot, each with its own engine.

    Workers start when the first job is queued (``lazy``) and then stay, warm, until they have had
    no job for ``idle_exit_s`` (a worker holds its engine and decoder, about 330 MB, which an idle
    server kept for good; ``None``: for good). A worker that dies (crash, kill, out of memory)
    fails the job it held with a reason and is replaced.
    """

    name = "local"

    def __init__(
        self,
        store,
        jobs_dir,
        limits,
        engine_factory,
        slots=1,
        ready_timeout=600.0,
        lazy=True,
        niceness=0,
        log=WORKER_LOG,
        idle_exit_s=None,
    ):
        super().__init__(store, jobs_dir, limits, slots)
        self.idle_exit_s = idle_exit_s
        self.log = log  # the server's (level, format), for the workers' logging
        self.engine_factory = engine_factory
        self.niceness = niceness  # added to the workers' (Unix) niceness: live streams come first
        self.lazy = lazy  # workers start with the first queued job, not with the service
        self.ready_timeout = ready_timeout
        self._ctx = mp.get_context("spawn")
        self._workers: dict[int, tuple[mp.Process, object]] = {}

    def _slot_ready(self, slot: int) -> bool:
        return slot in self._workers and self._workers[slot][0].is_alive()

    def worker_pids(self) -> list[int]:
        return [p.pid for p, _ in self._workers.values()]

    def _setup_slot(self, slot: int) -> bool:
        if slot in self._workers and self._workers[slot][0].is_alive():
            return True
        self._teardown_slot(slot)
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(
            target=worker_main,
            args=(child, self.engine_factory, self.limits, self.niceness, self.log),
            name=f"v1motion-video-worker-{slot}",
            daemon=True,
        )
        proc.start()
        child.close()
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline and not self._stop.is_set():
            if parent.poll(0.5):
                try:
                    kind, detail = parent.recv()
                except EOFError:
                    break
                if kind == "ready":
                    self._workers[slot] = (proc, parent)
                    log.info("local worker %d ready (pid %d)", slot, proc.pid)
                    return True
                log.error("local worker %d could not build its engine: %s", slot, detail)
                break
            if not proc.is_alive():
                break
        proc.kill()
        proc.join()
        parent.close()
        return False

    def _teardown_slot(self, slot: int) -> None:
        proc, conn = self._workers.pop(slot, (None, None))
        if proc is None:
            return
        if proc.is_alive():
            proc.kill()
        proc.join()
        conn.close()

    def _execute(self, slot, job, should_stop):
        proc, conn = self._workers[slot]
        job_dir = JobLayout.of(self.jobs_dir, job.id)
        conn.send(("job", job.id, str(job_dir.input), str(job_dir.results.out)))
        # Watchdog for what the decoder's own deadline cannot see (e.g. a stuck engine step).
        deadline = time.monotonic() + self.limits.deadline_s + JOB_GRACE_S
        while True:
            if time.monotonic() > deadline:
                self._teardown_slot(slot)
                return "failed", (
                    f"the job took longer than {self.limits.deadline_s + JOB_GRACE_S:g} s and was stopped"
                )
            if should_stop():
                self._teardown_slot(slot)  # the only way to interrupt native decoding code
                raise _Cancelled
            try:
                ready = conn.poll(0.25)
                msg = conn.recv() if ready else None
            except (EOFError, OSError):
                msg, ready = None, True
            if msg is None:
                if ready or not proc.is_alive():
                    proc.join(5)
                    code = proc.exitcode
                    self._teardown_slot(slot)
                    if self._stop.is_set():  # killed by the shutdown, not by this video
                        raise _Cancelled
                    free = free_mb(self.jobs_dir)
                    if code == -signal.SIGBUS and free is not None and free < DISK_LOW_MB:
                        return "failed", NO_ROOM
                    return "failed", (
                        f"the worker process died (exit code {code}) while processing this video"
                    )
                continue
            if msg[0] == "progress":
                self.store.set_progress(job.id, msg[1], msg[2])
            elif msg[0] in ("ok", "failed"):
                return msg[0], msg[1]
