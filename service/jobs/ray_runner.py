"""Video jobs as Ray tasks: the same :func:`~service.jobs.process.process_video`, on a cluster.

Used when ``V1MOTION_RAY_ADDRESS`` is set (needs the ``ray`` extra: ``pip install -e '.[ray]'``). The
input bytes travel through Ray's object store and the result files come back the same way, so the
cluster's nodes need no shared disk. The task decodes in the same capped child process as the local
worker and posts its progress to a small actor that the runner polls.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from service.jobs.layout import INPUT_NAME, OUTPUT_DIR, JobLayout
from service.jobs.limits import Limits
from service.jobs.runners import Runner, _Cancelled

log = logging.getLogger(__name__)

RAY_INSTALL_HINT = "Ray is not installed: pip install -e '.[ray]' (or unset V1MOTION_RAY_ADDRESS)"


class ProgressBoard:
    """A tiny Ray actor: tasks post (frames done, total) per job, the runner reads it."""

    def __init__(self):
        self._progress: dict[str, tuple[int, int]] = {}

    def post(self, job_id: str, done: int, total: int) -> None:
        self._progress[job_id] = (done, total)

    def take(self, job_id: str) -> tuple[int, int] | None:
        return self._progress.pop(job_id, None)


def run_job_on_worker(
    input_bytes: bytes, limits: Limits, engine_factory, job_id: str = "", board=None
) -> tuple:
    """Body of the Ray task: ("ok", result, {file name: bytes}) or ("failed", reason, None)."""
    from service.jobs.decode import DecodeError
    from service.jobs.engines import pin_threads
    from service.jobs.process import process_video

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
        return "ok", result, {p.name: p.read_bytes() for p in out.iterdir()}


class RayRunner(Runner):
    """Runs each job as a Ray task on the cluster at ``address``; ``slots`` tasks in flight at most."""

    name = "ray"

    def __init__(self, store, jobs_dir, limits, engine_factory, address: str, slots: int = 1):
        super().__init__(store, jobs_dir, limits, slots)
        self.engine_factory, self.address = engine_factory, address
        self._task = None
        self._board = None

    def start(self) -> None:
        try:
            import ray
        except ImportError as exc:
            raise RuntimeError(RAY_INSTALL_HINT) from exc
        if not ray.is_initialized():
            ray.init(address=self.address, ignore_reinit_error=True, log_to_driver=False)
        self._task = ray.remote(max_retries=0)(run_job_on_worker)
        self._board = ray.remote(num_cpus=0)(ProgressBoard).remote()
        super().start()

    def _execute(self, slot, job, should_stop):
        import ray

        job_dir = JobLayout.of(self.jobs_dir, job.id)
        ref = self._task.remote(
            job_dir.input.read_bytes(), self.limits, self.engine_factory, job.id, self._board
        )
        while True:
            done, _ = ray.wait([ref], timeout=0.25)
            if done:
                break
            posted = ray.get(self._board.take.remote(job.id))
            if posted is not None:
                self.store.set_progress(job.id, *posted)
            if should_stop():
                ray.cancel(ref, force=True)
                raise _Cancelled
        try:
            status, payload, files = ray.get(ref)
        except ray.exceptions.RayError as exc:
            return "failed", f"the Ray task failed: {type(exc).__name__}"
        if status != "ok":
            return status, payload
        results = job_dir.results
        work = results.begin()
        for name, data in files.items():
            (work / Path(name).name).write_bytes(data)
        results.publish()
        return "ok", payload
