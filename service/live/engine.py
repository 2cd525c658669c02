"""The shared motion engine of the live service, loaded in the background."""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable

from v1motion.models.motion.contract import Engine

log = logging.getLogger(__name__)


class EngineHolder:
    """The shared engine, loaded and warmed in a background thread; ``ready`` is set when usable."""

    def __init__(self) -> None:
        self.engine: Engine | None = None
        self.error: str | None = None
        self.ready = threading.Event()
        self.failed = threading.Event()

    def load(self, factory: Callable[[], Engine], freeze_heap: bool = False) -> None:
        """Build the engine with ``factory`` and warm it up; then, with ``freeze_heap``, collect
        and move every object alive into the garbage collector's permanent generation
        (``Settings.gc_freeze``): the server's heap is what it will be for its life, and each full
        collection would otherwise walk all of it (100-200 ms holding every thread), while the
        streams wait for their results."""
        try:
            t0 = time.perf_counter()
            engine = factory()
            engine.warmup()
            if freeze_heap:
                gc.collect()
                gc.freeze()
            self.engine = engine
            self.ready.set()
            log.info("engine ready in %.1f s", time.perf_counter() - t0)
        except Exception as exc:  # reported by /readyz; the traceback goes to the log
            log.exception("engine failed to load")
            self.error = f"{type(exc).__name__}: {exc}"
            self.failed.set()
