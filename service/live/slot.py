"""The latest-frame slot between a capture thread and the engine's worker thread."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

PACE_SMOOTHING = 0.1
"""Weight of the newest interval between two ``put`` calls in the slot's running frame period."""

PACE_BREAK = 4.0
"""An interval longer than this many running periods (a reconnect, a stall) is not a frame period."""

_yield_core = getattr(os, "sched_yield", None) or (lambda: time.sleep(0))
"""Give up the core (and the interpreter's lock) between looks; ``sched_yield`` is POSIX only."""


class LatestSlot:
    """A one-item mailbox between threads: ``put`` replaces, ``get`` waits for a newer item.

    The slot also keeps the pace of ``put`` (a running mean of the interval between items, every
    item counted, taken or not), so that ``get`` can poll without sleeping just before the next item
    is due (``busy_s``).
    """

    def __init__(self, clock=time.monotonic) -> None:
        self._clock = clock
        self._cond = threading.Condition()
        self._item: Any = None
        self._seq = 0
        self._last_put: float | None = None
        self.period: float | None = None
        """Running mean of the interval between items, seconds; ``None`` before the second."""

    def put(self, item: Any) -> None:
        now = self._clock()
        with self._cond:
            self._item = item
            self._seq += 1
            if self._last_put is not None:
                gap = now - self._last_put
                if self.period is None:
                    self.period = gap
                elif gap <= PACE_BREAK * self.period:
                    self.period += PACE_SMOOTHING * (gap - self.period)
            self._last_put = now
            self._cond.notify_all()

    @property
    def seq(self) -> int:
        """How many items were put: the ``seq`` of the last one."""
        return self._seq

    def due(self) -> float | None:
        """When (on the slot's clock, ``time.monotonic`` by default) the next item is expected, or ``None`` before the pace is known."""
        if self.period is None or self._last_put is None:
            return None
        return self._last_put + self.period

    def get(self, after: int, timeout: float, busy_s: float = 0.0) -> tuple[int, Any] | None:
        """Return ``(seq, item)`` with ``seq > after``, or ``None`` after ``timeout`` seconds.

        With ``busy_s > 0`` and the pace known, the caller's thread waits idle until ``busy_s``
        before the next item is due, then polls for it without sleeping (yielding the core to any
        thread that wants it, and the interpreter's lock between looks) until it comes or half a
        period after it was due, then waits idle again. A core that idles between frames can run
        the next step slower (``live_busy_poll_ms`` in the settings).
        """
        clock = self._clock
        deadline = clock() + timeout
        due = self.due() if busy_s > 0 else None
        if due is not None:
            with self._cond:
                if self._seq <= after:
                    self._cond.wait(max(0.0, min(due - busy_s, deadline) - clock()))
            until = min(due + 0.5 * (self.period or 0.0), deadline)
            while self._seq <= after and clock() < until:
                _yield_core()
        with self._cond:
            if self._seq <= after:
                self._cond.wait(max(0.0, deadline - clock()))
            if self._seq <= after:
                return None
            return self._seq, self._item


@dataclass(slots=True)
class CapturedFrame:
    image: np.ndarray
    t_capture: float  # time.monotonic()
    wall_ms: float  # time.time() * 1000, comparable across processes on one machine
    truth: dict | None = None  # the known velocity, for synthetic sources
    reopened: bool = False  # the first frame since the source was (re)opened: no motion before it
