"""The latest-frame slot between a capture thread and the engine's worker thread."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np


class LatestSlot:
    """A one-item mailbox between threads: ``put`` replaces, ``get`` waits for a newer item."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: Any = None
        self._seq = 0

    def put(self, item: Any) -> None:
        with self._cond:
            self._item = item
            self._seq += 1
            self._cond.notify_all()

    def get(self, after: int, timeout: float) -> tuple[int, Any] | None:
        """Return ``(seq, item)`` with ``seq > after``, or ``None`` after ``timeout`` seconds."""
        with self._cond:
            if self._seq <= after:
                self._cond.wait(timeout)
            if self._seq <= after:
                return None
            return self._seq, self._item


@dataclass(slots=True)
class CapturedFrame:
    image: np.ndarray
    t_capture: float  # time.monotonic()
    wall_ms: float  # time.time() * 1000, comparable across processes on one machine
    truth: dict | None = None  # the known velocity, for synthetic sources
