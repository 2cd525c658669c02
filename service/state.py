"""The application's state: every stateful object of a running service, built by the lifespan.

``create_app`` hangs one :class:`AppState` on ``app.state.services`` when the lifespan starts and closes
it when the lifespan ends; routes reach its parts only through the typed dependencies of
:mod:`v1motion.service.deps`.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import HTTPException, Request, status

from v1motion.service.live.engine import EngineHolder
from v1motion.service.live.pipeline import StreamManager
from v1motion.service.metrics import Metrics
from v1motion.service.settings import Settings
from v1motion.service.spikes_state import SpikeModelStore, SpikeWorker

# The status of a request whose client left before it was worked on (nginx's; never read by a client).
CLIENT_CLOSED = 499

if TYPE_CHECKING:
    from fastapi import WebSocket

    from v1motion.service.jobs.manager import VideoJobs
    from v1motion.service.jobs.upload import UploadSlots


class Capacity:
    """A counter with a ceiling, used on the event loop (browser cameras at once)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def acquire(self) -> bool:
        if self.used >= self.limit:
            return False
        self.used += 1
        return True

    def release(self) -> None:
        self.used = max(0, self.used - 1)


class QueuedSlots:
    """At most ``running`` pieces of work at once and ``waiting`` more queued for a slot, on the
    event loop; beyond that ``hold`` answers 503 with ``Retry-After`` (no unbounded queue): the
    seconds the work ahead should take, by the measured time of each piece (1 s until measured).

    A request whose client has gone by the time its slot comes is not worked on: it gives the slot
    back at once and ends with 499 (nginx's "client closed request"; no client reads it). Clients
    that time out and retry had filled the queue with work nobody read: after 18 abandoned long
    texts, a 6 ms request waited 29 s.
    """

    def __init__(self, running: int, waiting: int, what: str) -> None:
        self.running, self.waiting, self.what = running, waiting, what
        self._slots = asyncio.Semaphore(running)
        self.queued = 0
        self.seconds_each = 0.0  # running mean of a piece's time (0: none measured yet)

    def retry_after(self) -> int:
        """Whole seconds until the work running and waiting now should be done (1 to 60)."""
        ahead = (self.queued + self.running) * self.seconds_each / self.running
        return int(min(60, max(1, math.ceil(ahead))))

    @contextlib.asynccontextmanager
    async def hold(self, request: Request | None = None):
        if self._slots.locked() and self.queued >= self.waiting:
            wait = self.retry_after()
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE,
                detail=f"{self.running} {self.what} running and {self.queued} waiting; retry in "
                f"{wait} s",
                headers={"Retry-After": str(wait)},
            )
        self.queued += 1
        try:
            await self._slots.acquire()
        finally:
            self.queued -= 1
        try:
            if request is not None and await request.is_disconnected():
                raise HTTPException(CLIENT_CLOSED, detail="the client closed the request")
            start = time.perf_counter()
            yield
            took = time.perf_counter() - start
            self.seconds_each = (
                took if not self.seconds_each else 0.8 * self.seconds_each + 0.2 * took
            )
        finally:
            self._slots.release()


@dataclass(eq=False)
class AppState:
    """Everything a running service holds; one per app, built and closed by the lifespan."""

    settings: Settings
    metrics: Metrics
    engine: EngineHolder
    streams: StreamManager
    cameras: Capacity
    videos: VideoJobs
    upload_slots: UploadSlots
    video_probe_slots: asyncio.Semaphore
    language_scorer: (
        Any  # v1motion.models.language.scoring.LanguageScorer, or None when it failed to load
    )
    language_slots: QueuedSlots
    spike_store: SpikeModelStore
    spike_worker: SpikeWorker
    units_cache: dict[str, Any] = field(default_factory=dict)
    not_ready_because: str | None = None  # the last /readyz failure, logged when it changes
    websockets: weakref.WeakSet[WebSocket] = field(default_factory=weakref.WeakSet)

    def readiness(self) -> tuple[str, str | None]:
        """``("ready", None)``, ``("starting", why)`` or ``("failed", why)``: what ``/readyz``
        answers and ``v1motion_ready`` reports. Failed when the data folder no longer holds the
        job store the service opened, or the engine could not load."""
        problem = self.videos.data_folder_problem()
        if problem is None and self.engine.failed.is_set():
            problem = self.engine.error
        if problem is not None:
            return "failed", problem
        if self.engine.ready.is_set():
            return "ready", None
        return "starting", "engine loading and compiling"
