"""Fan-out of a stream's encoded results: one latest-wins mailbox per viewer."""

from __future__ import annotations

import asyncio
import threading

from v1motion.service import protocol
from v1motion.service.metrics import Metrics


class Subscriber:
    """One viewer's latest-wins mailbox; lives on the event loop.

    ``missed`` counts every result published on the stream since the viewer joined that it will never
    get: replaced in its mailbox before it was sent, or never offered to it because the fan-out
    coalesced several results into the newest (the event loop was busy). ``sent + missed`` plus the
    one message that may be waiting equals the results published while it watched.
    """

    def __init__(
        self, want_flow: bool = False, max_fps: float | None = None, want_preview: bool = True
    ) -> None:
        self.pending: protocol.Outgoing | None = None
        self.event = asyncio.Event()
        self.sent = 0
        self.missed = 0
        self.want_flow = want_flow
        self.want_preview = want_preview  # the binary preview after each result (JPEG, ~15 KB)
        self.max_fps = max_fps  # the viewer's own rate: at most this many results a second, newest
        self._last_seq = 0  # seq of the last result offered; the stream numbers results 1, 2, ...

    def offer(self, msg: protocol.Outgoing) -> int:
        """Replace any unsent message; return how many results this viewer missed by it."""
        if self.pending is protocol.END:
            return 0
        missed = int(self.pending is not None)
        if self._last_seq and msg.seq > self._last_seq + 1:
            missed += msg.seq - self._last_seq - 1  # published, but coalesced before the fan-out
        self._last_seq = msg.seq  # a restarted stream counts from 1 again: no gap is counted then
        self.missed += missed
        self.pending = msg
        self.event.set()
        return missed

    async def next(self) -> protocol.Outgoing:
        await self.event.wait()
        self.event.clear()
        msg, self.pending = self.pending, None
        assert msg is not None
        return msg


class Hub:
    """Fans one encoded result out to every subscriber, coalescing wake-ups from the worker thread."""

    def __init__(self, name: str, metrics: Metrics) -> None:
        self.name = name
        self.metrics = metrics
        self.subscribers: set[Subscriber] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._latest: protocol.Outgoing | None = None
        self._scheduled = False

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def publish(self, msg: protocol.Outgoing) -> None:
        """Called from the worker thread; at most one fan-out callback is queued at a time."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with self._lock:
            self._latest = msg
            if self._scheduled:
                return
            self._scheduled = True
        try:
            loop.call_soon_threadsafe(self._fanout)
        except RuntimeError:  # loop closed during shutdown
            pass

    def _fanout(self) -> None:
        with self._lock:
            msg, self._latest, self._scheduled = self._latest, None, False
        if msg is None:
            return
        missed = 0
        for sub in self.subscribers:
            missed += sub.offer(msg)
        if missed:
            self.metrics.dropped.labels(self.name, "subscriber").inc(missed)

    def close(self) -> None:
        """On the loop: tell every subscriber the stream ended."""
        for sub in self.subscribers:
            sub.pending = protocol.END
            sub.event.set()

    @property
    def flow_wanted(self) -> bool:
        return any(s.want_flow for s in list(self.subscribers))

    @property
    def preview_wanted(self) -> bool:
        """Some viewer takes previews (or none is watching yet: the first may)."""
        subs = list(self.subscribers)
        return not subs or any(s.want_preview for s in subs)
