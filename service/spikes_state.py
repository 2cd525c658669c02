"""The spike endpoints' state, built by the lifespan: fitted models by id and the bounded fit pool."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

from fastapi import HTTPException

log = logging.getLogger(__name__)


class SpikeModelStore:
    """Fitted models by id, at most ``max_models`` (least recently created dropped first).

    Each record gets a ``lock``: a model is used by one request at a time (:func:`use_model`), since
    a call may hold per-call state on the model (a stimulus-locked model's offset)."""

    def __init__(self, max_models: int):
        self.max_models = max_models
        self._items: OrderedDict[str, dict] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, record: dict) -> str:
        record.setdefault("lock", threading.Lock())
        with self._lock:
            self._items[record["id"]] = record
            while len(self._items) > self.max_models:
                dropped, _ = self._items.popitem(last=False)
                log.info("spike model store full: dropped %s", dropped)
        return record["id"]

    def get(self, model_id: str) -> dict:
        with self._lock:
            rec = self._items.get(model_id)
        if rec is None:
            raise HTTPException(404, detail=f"no spike model with id {model_id!r}")
        return rec

    def __len__(self) -> int:
        return len(self._items)


def use_model(record: dict, fn, *args):
    """``fn(*args)`` while holding the model's lock (run it in the worker, never on the event loop)."""
    with record["lock"]:
        return fn(*args)


class SpikeWorker:
    """A bounded thread pool for fits and samples: work runs off the event loop."""

    def __init__(self, workers: int, max_pending: int):
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="spikes-fit")
        self.max_pending = max_pending
        self._pending = 0
        self._lock = threading.Lock()

    async def run(self, fn, *args):
        with self._lock:
            if self._pending >= self.max_pending:
                raise HTTPException(
                    429, detail=f"{self._pending} spike jobs already queued; retry later"
                )
            self._pending += 1
        try:
            return await asyncio.wrap_future(self.pool.submit(fn, *args))
        finally:
            with self._lock:
                self._pending -= 1

    def close(self):
        self.pool.shutdown(wait=False, cancel_futures=True)
