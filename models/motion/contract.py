"""The motion engine's contract: what the service and the video jobs need of an engine.

:class:`~v1motion.models.motion.engine.MotionEngine` is the product's engine; tests use a double with the same
shape. The service types against :class:`Engine` and builds engines with :func:`make_engine`, so a
reader (or a type checker) can follow a frame from a socket into this package.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from v1motion.models.motion.engine import MotionEngine, MotionFrame

ENGINE_NAMES = ("default", "random")
"""``default``: the shipped weights; ``random``: a small untrained engine (seed 0) for tests and demos."""


@runtime_checkable
class Engine(Protocol):
    """A frame-by-frame motion engine.

    One engine serves many streams: each stream keeps its own ``state`` (from :meth:`new_state`), and
    a state is never shared between threads.
    """

    @property
    def min_side(self) -> int:
        """The smallest frame side (px) :meth:`step` accepts."""
        ...

    def new_state(self) -> Any:
        """A fresh recurrent state for one stream."""
        ...

    def warmup(self) -> None:
        """Compile and touch every code path once, so the first real frame is not slow."""
        ...

    def step(self, state: Any, frame: np.ndarray) -> MotionFrame:
        """Analyse the next frame of a stream: grey ``(H, W)`` or BGR(A) ``(H, W, 3 or 4)`` uint8,
        or grey float32/float64 levels in [0, 1]; ``state`` from ``new_state()``.

        Raises
        ------
        ValueError
            The frame cannot be analysed (shape, dtype, size, NaN, float levels outside [0, 1]);
            the message names the problem.
        TypeError
            ``state`` is not a stream's state.
        """
        ...

    def run(self, state: Any, frames: Iterable[np.ndarray]) -> Iterator[MotionFrame]:
        """:meth:`step` on each frame in turn (a video, whose frames are all at hand): the same motion
        frames in order, possibly computed faster (the shipped engine overlaps one frame's read with
        the next frame's encoding when it has two threads). A refused frame raises its ``ValueError``
        after the frames before it are yielded."""
        ...

    def tuning_report(self) -> dict:
        """Per-unit direction and speed tuning, for the dashboard's unit browser."""
        ...


def step_each(engine: Engine, state: Any, frames: Iterable[np.ndarray]) -> Iterator[MotionFrame]:
    """:meth:`Engine.run` as plain steps, one frame after the other: what an engine that has nothing
    to overlap returns from ``run``."""
    for frame in frames:
        yield engine.step(state, frame)


def make_engine(name: str, *, threads: int = 1, place_threads: bool = True) -> MotionEngine:
    """Build the named engine (not yet warmed up).

    Parameters
    ----------
    name : {"default", "random"}
        ``default`` loads the shipped weights; ``random`` builds a small untrained engine (seed 0).
    threads : int, default 1
        Threads of a step (see :class:`~v1motion.models.motion.engine.MotionEngine`).
    place_threads : bool, default True
        With ``threads > 1``, run each of a step's threads on a CPU of its own (``MotionEngine``).
    """
    from v1motion.models.motion.engine import MotionEngine

    if name == "default":
        return MotionEngine.load_default(threads=threads, place_threads=place_threads)
    if name == "random":
        return MotionEngine.random(seed=0, threads=threads, place_threads=place_threads)
    raise ValueError(f"unknown engine {name!r}; choose one of: {', '.join(ENGINE_NAMES)}")
