"""The spike endpoints' state, built by the lifespan: fitted models by id and the bounded fit pool."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing as mp
import pickle
import signal
import sys
import threading
from collections import OrderedDict
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from fastapi import HTTPException

from v1motion.service.disk import is_disk_full, make_durable
from v1motion.service.logs import WORKER_LOG

log = logging.getLogger(__name__)

# A spike job's 429 asks to come back after this long: about a small fit's time (a retina GLM's: 2-10 s).
RETRY_AFTER_S = 5
SPIKES_FOLDER = "spikes"  # the fitted models, under the data folder
STOP_TIMEOUT_S = 5.0  # a stopped worker process is waited for this long (SIGTERM ends it at once)


class SpikeModelStore:
    """Fitted models by id, at most ``max_models`` (least recently created dropped first).

    With ``folder`` (the service's ``<data_dir>/spikes``), each model is also written there, one
    file per model, and the models found there are loaded at start: a restart or a redeploy kept
    no model, and a fit can take minutes. Files are written whole (a temporary name, then one
    rename, both on the disk before the client is answered) and read only from this folder, which
    only the server writes (its names are ids it made). A model that cannot be written (a full or
    read-only disk) is held in memory only, and its record says so.
    """

    SUFFIX = ".pickle"
    FORMAT = 1  # of the files: one of another format is set aside, not loaded
    REQUIRED = ("id", "kind", "model", "baseline", "n_neurons", "created", "fit", "options")

    def __init__(self, max_models: int, folder: Path | None = None):
        self.max_models = max_models
        self.folder = None if folder is None else Path(folder)
        self._items: OrderedDict[str, dict] = OrderedDict()
        self._lock = threading.Lock()
        if self.folder is not None:
            self._load()

    def _load(self) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            for work in self.folder.glob(f"*{self.SUFFIX}.tmp"):  # a write cut off by a crash
                work.unlink(missing_ok=True)
            paths = sorted(self.folder.glob(f"*{self.SUFFIX}"))
        except OSError as exc:  # the job store says the same louder (/readyz)
            log.warning("spike models cannot be loaded from the data folder: %s", exc.strerror)
            return
        found = []
        for path in paths:
            try:
                with path.open("rb") as f:
                    saved = pickle.load(f)
                if not isinstance(saved, dict) or saved.get("format") != self.FORMAT:
                    raise ValueError(f"not a spike model's record of format {self.FORMAT}")
                rec = saved.get("record")
                if not isinstance(rec, dict) or f"{rec.get('id')}{self.SUFFIX}" != path.name:
                    raise ValueError("not the record its name says")
                if missing := [k for k in self.REQUIRED if k not in rec]:
                    raise ValueError(f"its record has no {', '.join(missing)}")
            except Exception as exc:  # a file of another version, or damaged: kept for the operator
                aside = path.with_name(path.name + ".unreadable")
                log.warning(
                    "spike model file %s cannot be read (%s): moved to %s",
                    path.name,
                    exc,
                    aside.name,
                )
                with contextlib.suppress(OSError):
                    path.rename(aside)
                continue
            found.append(rec)
        for rec in sorted(found, key=lambda r: r.get("created", 0.0)):
            self._items[rec["id"]] = rec
        self._trim()
        if found:
            log.info("spike models loaded from the data folder: %d", len(self._items))

    def _path(self, model_id: str) -> Path:
        return self.folder / f"{model_id}{self.SUFFIX}"

    def _save(self, rec: dict) -> None:
        """Write ``rec`` whole to the disk (OSError if it cannot)."""
        path = self._path(rec["id"])
        work = path.with_name(path.name + ".tmp")
        try:
            with work.open("wb") as f:
                pickle.dump(
                    {"format": self.FORMAT, "record": rec}, f, protocol=pickle.HIGHEST_PROTOCOL
                )
            make_durable(work)
            work.rename(path)
            make_durable(self.folder)
        except BaseException:
            work.unlink(missing_ok=True)
            raise

    def _forget(self, model_id: str) -> None:
        if self.folder is not None:
            try:
                self._path(model_id).unlink(missing_ok=True)
            except OSError as exc:
                log.warning("spike model %s: its file could not be removed (%s)", model_id, exc)

    def _trim(self) -> None:
        while len(self._items) > self.max_models:
            dropped, _ = self._items.popitem(last=False)
            self._forget(dropped)
            log.info("spike model store full: dropped %s", dropped)

    def add(self, record: dict) -> str:
        """Hold ``record`` (and write it to the folder, if any: call from a thread, not the event
        loop, as it waits for the disk)."""
        if self.folder is not None:
            try:
                self._save(record)
            except Exception as exc:  # a full or read-only disk; the fit stands all the same
                if is_disk_full(exc):
                    why = "no room on the disk"
                elif isinstance(exc, OSError):
                    why = exc.strerror or str(exc)
                else:
                    why = f"{type(exc).__name__}: {exc}"
                log.warning("spike model %s not written to the data folder: %s", record["id"], why)
                record.setdefault("warnings", []).append(
                    f"this model could not be saved on the server's disk ({why}): it is held in "
                    "memory only, and a restart of the server forgets it"
                )
        with self._lock:
            self._items[record["id"]] = record
            self._trim()
        return record["id"]

    def get(self, model_id: str) -> dict:
        with self._lock:
            rec = self._items.get(model_id)
        if rec is None:
            raise HTTPException(404, detail=self.missing(model_id))
        return rec

    def remove(self, model_id: str) -> None:
        with self._lock:
            rec = self._items.pop(model_id, None)
            if rec is not None:
                self._forget(model_id)
        if rec is None:
            raise HTTPException(404, detail=self.missing(model_id))

    def missing(self, model_id: str) -> str:
        # a model fitted before a restart answered like an id that never was (a user's probe)
        kept = (
            "kept on the server's disk across restarts, unless its fit's warnings said the disk "
            "could not take it"
            if self.folder is not None
            else "held in memory, so one fitted before the server restarted is gone too"
        )
        return (
            f"no spike model with id {model_id!r}: it was deleted, or dropped as the oldest of "
            f"the {self.max_models} models the server keeps ({kept}); fit it again"
        )

    def records(self) -> list[dict]:
        """Every model held, newest first."""
        with self._lock:
            return list(reversed(self._items.values()))

    def __len__(self) -> int:
        return len(self._items)


class SpikeWorker:
    """Fits, samples and evaluations in a bounded pool of worker processes, off the server's process;
    large JSON bodies are read in one more process of their own (:meth:`read`), so that a request's
    parsing never waits behind a long fit.

    Not threads: the samplers step bin by bin in Python, and in a thread of the server they took
    the interpreter's lock often enough to halve a live stream's analysed frame rate while they ran
    (``bench/live_beside_batch.py``). The processes are spawned with the first request (a server
    never asked about spikes never pays for them), run at a lower priority than the live engine,
    and stay. Each call gets its own copy of the model, so calls on one model cannot share per-call
    state. A process that dies (killed, out of memory) fails its request with a 503 and its pool is
    replaced with the next one.
    """

    def __init__(
        self,
        workers: int,
        max_pending: int,
        blas_threads: int | None = None,
        niceness: int = 0,
        log: tuple[str, str] = WORKER_LOG,
    ):
        self.max_pending = max_pending
        self._work = _Processes(workers, blas_threads, niceness, log)
        self._reader = _Processes(1, blas_threads, niceness, log)
        self._pending = 0  # calls running or waiting, in both pools: at most max_pending (429)
        self._lock = threading.Lock()

    async def run(self, fn, *args):
        """``fn(*args)`` in a worker process; ``fn``, its arguments and result must pickle."""
        return await self._call(self._work, fn, *args)

    async def read(self, fn, *args):
        """``fn(*args)`` in the reader process (parsing a request's body)."""
        return await self._call(self._reader, fn, *args)

    async def _call(self, processes: _Processes, fn, *args):
        with self._lock:
            if self._pending >= self.max_pending:
                raise HTTPException(
                    429,
                    detail=f"{self._pending} spike jobs (fits, evaluations, samples) already "
                    f"running or waiting; retry in {RETRY_AFTER_S} s",
                    headers={"Retry-After": str(RETRY_AFTER_S)},
                )
            self._pending += 1
        try:
            return await processes.run(fn, *args)
        finally:
            with self._lock:
                self._pending -= 1

    def close(self) -> None:
        """Stop the processes, a running fit included: the server's shutdown does not wait for it."""
        self._work.close()
        self._reader.close()


class _Processes:
    """A lazily spawned process pool that is replaced when one of its processes dies (503)."""

    def __init__(
        self,
        workers: int,
        blas_threads: int | None,
        niceness: int,
        log: tuple[str, str] = WORKER_LOG,
    ):
        self.workers = workers
        self.blas_threads = blas_threads
        self.niceness = niceness
        self.log = log  # the server's (level, format)
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None
        self._closed = False
        self._waiting: set[asyncio.Future] = set()  # the calls awaited, ended by close()

    def _executor(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._closed:
                raise _shutting_down()
            if self._pool is None:
                self._pool = ProcessPoolExecutor(
                    self.workers,
                    mp_context=mp.get_context("spawn"),
                    initializer=_init_process,
                    initargs=(self.blas_threads, self.niceness, self.log),
                )
            return self._pool

    async def run(self, fn, *args):
        pool = self._executor()
        call = asyncio.wrap_future(pool.submit(fn, *args))
        with self._lock:
            self._waiting.add(call)
        try:
            return await call
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._closed and not (task is not None and task.cancelling()):
                # ended by close(), not by the request's own cancellation: answer it
                raise _shutting_down() from None
            raise
        except MemoryError:
            log.warning("a spike request ran out of memory in its worker process")
            raise HTTPException(
                503,
                detail="the server had not enough memory for this request; retry later, or send "
                "less data or a smaller model",
            ) from None
        except BrokenProcessPool:
            if self._closed:  # its process was stopped by close(), not lost
                raise _shutting_down() from None
            self._discard(pool)
            log.error("a spike worker process died; its pool is replaced")
            raise HTTPException(
                503,
                detail="the spike worker process died during this request (out of memory?); "
                "retry, or send less data",
            ) from None
        finally:
            with self._lock:
                self._waiting.discard(call)

    def _discard(self, pool: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is pool:
                self._pool = None
        _stop(pool)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
            waiting = list(self._waiting)
        if pool is not None:
            _stop(pool)
        # The executor fails a call whose process it sees die, but not always once it has been shut
        # down: a request then waited for ever, and the server's shutdown with it. The calls still
        # awaited end here (each answers 503; one the executor has ended already is left as it is).
        for call in waiting:
            with contextlib.suppress(RuntimeError):  # its event loop is already closed
                call.get_loop().call_soon_threadsafe(call.cancel)


def _shutting_down() -> HTTPException:
    """The answer of a call refused or stopped because close() was called."""
    return HTTPException(503, detail="the server is shutting down")


def _stop(pool: ProcessPoolExecutor) -> None:
    # The executor has no public way to stop a running call before Python 3.14; its process table is
    # read before the shutdown clears it.
    procs = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
    for proc in procs:
        proc.join(STOP_TIMEOUT_S)


class _NotATerminal:
    """A worker's stderr, the server's, that does not say it is a terminal: the fits' progress bars
    (tqdm draws on a terminal only) are for `v1motion spikes`, not for the server's console, where
    they would cut into its log lines. Everything else is written through."""

    def __init__(self, stream):
        self._stream = stream

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _init_process(
    blas_threads: int | None, niceness: int, log: tuple[str, str] = WORKER_LOG
) -> None:
    """A worker process: batch work, below the live engines' priority, with the server's BLAS limit;
    gone with the server (a hard kill included), and left to it on Ctrl-C (which signals the whole
    process group): the server stops its workers itself."""
    from v1motion.service.jobs.decode import die_with_parent, lower_priority
    from v1motion.service.logs import configure_worker_logging, demote_client_fit_notes

    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    lower_priority(niceness)
    sys.stderr = _NotATerminal(sys.stderr)
    configure_worker_logging(*log)
    demote_client_fit_notes()  # the fits' notes are in their answers
    # tqdm's default write lock holds a multiprocessing lock, whose named semaphore a process
    # stopped by close() never unlinks: the server's exit then ended with Python's "leaked semaphore
    # objects" warning after any spike request. This process draws no bar others share a line with.
    from tqdm import tqdm

    tqdm.set_lock(threading.RLock())
    if blas_threads is not None:
        from threadpoolctl import threadpool_limits

        threadpool_limits(blas_threads, user_api="blas")
