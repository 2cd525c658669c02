"""The application's state: every stateful object of a running service, built by the lifespan.

``create_app`` hangs one :class:`AppState` on ``app.state.services`` when the lifespan starts and closes
it when the lifespan ends; routes reach its parts only through the typed dependencies of
:mod:`v1motion.service.deps`.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import HTTPException, status

from v1motion.service.live.engine import EngineHolder
from v1motion.service.live.pipeline import StreamManager
from v1motion.service.metrics import Metrics
from v1motion.service.settings import Settings
from v1motion.service.spikes_state import SpikeModelStore, SpikeWorker

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
    event loop; beyond that ``hold`` answers 503 with ``Retry-After`` (no unbounded queue)."""

    def __init__(self, running: int, waiting: int, what: str) -> None:
        self.running, self.waiting, self.what = running, waiting, what
        self._slots = asyncio.Semaphore(running)
        self.queued = 0

    @contextlib.asynccontextmanager
    async def hold(self):
        if self._slots.locked() and self.queued >= self.waiting:
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE,
                detail=f"{self.running} {self.what} running and {self.queued} waiting; retry shortly",
                headers={"Retry-After": "1"},
            )
        self.queued += 1
        try:
            await self._slots.acquire()
        finally:
            self.queued -= 1
        try:
            yield
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
    websockets: weakref.WeakSet[WebSocket] = field(default_factory=weakref.WeakSet)
