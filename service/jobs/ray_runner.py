"""Video jobs as Ray tasks: the same :func:`~v1motion.service.jobs.process.process_video`, on a cluster.

Used when ``V1MOTION_RAY_ADDRESS`` is set (needs the ``ray`` extra: ``pip install -e '.[ray]'``). The
input bytes travel through Ray's object store and the result files come back the same way, so the
cluster's nodes need no shared disk. The task decodes in the same capped child process as the local
worker and posts its progress to a small actor that the runner polls. The job's result says which Ray
node and host ran it (``result["ran_on"]``). The service connects to the cluster when the first job
waits and retries while the cluster is unreachable, so it starts (and is ready) before its Ray head;
a stop does not wait for a connection that never answers (``abandon_after_s``).
"""

from __future__ import annotations

import logging
import re
import socket
import tempfile
import threading
import time
from pathlib import Path

from v1motion.service.jobs.layout import INPUT_NAME, OUTPUT_DIR, JobLayout
from v1motion.service.jobs.limits import Limits
from v1motion.service.jobs.runners import JOB_GRACE_S, Runner, _Cancelled

log = logging.getLogger(__name__)

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
RAY_INSTALL_HINT = "Ray is not installed: pip install -e '.[ray]' (or unset V1MOTION_RAY_ADDRESS)"


class ProgressBoard:
    """A tiny Ray actor: tasks post (frames done, total) per job, the runner reads it."""

    def __init__(self):
        self._progress: dict[str, tuple[int, int]] = {}

    def post(self, job_id: str, done: int, total: int) -> None:
        self._progress[job_id] = (done, total)

    def take(self, job_id: str) -> tuple[int, int] | None:
        return self._progress.pop(job_id, None)


def ray_node() -> dict:
    """Where this Ray task runs: ``{"runner": "ray", "node_id", "node_ip", "hostname"}``."""
    import ray

    return {
        "runner": "ray",
        "node_id": ray.get_runtime_context().get_node_id(),
        "node_ip": ray.util.get_node_ip_address(),
        "hostname": socket.gethostname(),
    }


def run_job_on_worker(
    input_bytes: bytes, limits: Limits, engine_factory, job_id: str = "", board=None
) -> tuple:
    """Body of the Ray task: ("ok", result, {file name: bytes}) or ("failed", reason, None).

    The result carries ``ran_on`` (:func:`ray_node`): the node and host that processed the frames.
    """
    from v1motion.service.jobs.decode import DecodeError
    from v1motion.service.jobs.engines import pin_threads
    from v1motion.service.jobs.process import process_video

    pin_threads(1)  # Ray runs one task per CPU it schedules

    def progress(done: int, total: int) -> None:
        if board is not None:
            board.post.remote(job_id, done, total)

    with tempfile.TemporaryDirectory(prefix="v1motion-ray-") as tmp:
        src = Path(tmp) / INPUT_NAME
        src.write_bytes(input_bytes)
        out = Path(tmp) / OUTPUT_DIR
        try:
            result = process_video(src, out, engine_factory, limits, progress)
        except DecodeError as exc:
            return "failed", str(exc), None
        result["ran_on"] = ray_node()
        return "ok", result, {p.name: p.read_bytes() for p in out.iterdir()}


# Ray's errors when the node or worker process running a task goes away (with their subclasses).
_LOST = {
    "NodeDiedError",
    "WorkerCrashedError",
    "LocalRayletDiedError",
    "ObjectLostError",  # also ObjectReconstructionFailedError: the result died with its node
    "OwnerDiedError",
}


def ray_failure(exc: BaseException) -> str:
    """A job's failure reason from a Ray exception: its type and the last line of its message (Ray
    puts the cause there: "the node running this task died", "No module named ..."), uncoloured;
    said plainly first when the worker running the job was lost."""
    text = _ANSI.sub("", str(exc))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    detail = f": {lines[-1]}" if lines else ""
    lost = any(c.__name__ in _LOST for c in type(exc).__mro__)
    head = "the Ray worker running this job was lost; " if lost else ""
    return f"{head}the Ray task failed: {type(exc).__name__}{detail}"[:500]


class RayRunner(Runner):
    """Runs each job as a Ray task on the cluster at ``address``; ``slots`` tasks in flight at most.

    A job whose task does not finish within the decode deadline plus a grace period (a task that
    waits for a node with a free CPU counts) is cancelled and failed with that reason; a task whose
    node or worker process dies fails the job with Ray's reason (tasks are not retried: a video that
    crashed its worker would crash the next one too). Nothing stays ``running``.
    """

    name = "ray"
    lazy = True  # connect when a job waits: an idle service never blocks on an absent cluster
    # ray.init to an address that does not answer never returns (it logs "Failed to connect to GCS"
    # every ~40 s): the service's stop leaves such a slot behind instead of hanging until SIGKILL
    abandon_after_s = 10.0
    stuck_hint = "most likely connecting to a Ray cluster that does not answer"

    def __init__(self, store, jobs_dir, limits, engine_factory, address: str, slots: int = 1):
        super().__init__(store, jobs_dir, limits, slots)
        self.engine_factory, self.address = engine_factory, address
        self._task = None
        self._board = None
        self._connect_lock = threading.Lock()

    def start(self) -> None:
        try:
            import ray  # noqa: F401
        except ImportError as exc:
            raise RuntimeError(RAY_INSTALL_HINT) from exc
        super().start()

    def _slot_ready(self, slot: int) -> bool:
        return self._task is not None

    def _setup_slot(self, slot: int) -> bool:
        """Connect to the cluster once (retried with back-off by the dispatcher while it fails)."""
        with self._connect_lock:
            if self._task is not None:
                return True
            import ray

            if not ray.is_initialized():
                log.info("connecting to the Ray cluster at %s", self.address)
                ray.init(address=self.address, ignore_reinit_error=True, log_to_driver=False)
            self._board = ray.remote(num_cpus=0)(ProgressBoard).remote()
            self._task = ray.remote(max_retries=0)(run_job_on_worker)
            log.info("connected to the Ray cluster at %s", self.address)
            return True

    def _poll_progress(self, job_id: str) -> None:
        """Copy the task's posted progress to the store; progress is best effort, never fatal.

        The board actor lives on some node of the cluster; if that node goes, a new board is made
        (this job's progress stops, later jobs report theirs) and the task's outcome decides the job.
        """
        import ray

        try:
            posted = ray.get(self._board.take.remote(job_id), timeout=5)
        except ray.exceptions.RayActorError:
            log.warning("job %s: the Ray progress actor was lost; making a new one", job_id)
            self._board = ray.remote(num_cpus=0)(ProgressBoard).remote()
            return
        except Exception as exc:  # a timeout, a lost connection: the task's outcome decides
            log.debug("job %s: no progress from Ray (%s)", job_id, type(exc).__name__)
            return
        if posted is not None:
            self.store.set_progress(job_id, *posted)

    def _execute(self, slot, job, should_stop):
        import ray

        job_dir = JobLayout.of(self.jobs_dir, job.id)
        ref = self._task.remote(
            job_dir.input.read_bytes(), self.limits, self.engine_factory, job.id, self._board
        )
        limit_s = self.limits.deadline_s + JOB_GRACE_S
        deadline = time.monotonic() + limit_s
        while True:
            done, _ = ray.wait([ref], timeout=0.25)
            if done:
                break
            self._poll_progress(job.id)
            if should_stop():
                ray.cancel(ref, force=True)
                raise _Cancelled
            if time.monotonic() > deadline:
                ray.cancel(ref, force=True)
                return "failed", (
                    f"the Ray task did not finish within {limit_s:g} s and was cancelled "
                    "(is a Ray worker node with a free CPU up?)"
                )
        try:
            status, payload, files = ray.get(ref)
        except ray.exceptions.RayError as exc:
            return "failed", ray_failure(exc)
        if status != "ok":
            return status, payload
        log.info(
            "job %s: ran on Ray node %s (host %s, %s)",
            job.id,
            payload["ran_on"]["node_id"],
            payload["ran_on"]["hostname"],
            payload["ran_on"]["node_ip"],
        )
        results = job_dir.results
        work = results.begin()
        for name, data in files.items():
            (work / Path(name).name).write_bytes(data)
        results.publish()
        return "ok", payload
