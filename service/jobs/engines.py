"""Motion engines by name, as picklable factories (worker processes and Ray tasks build their own)."""

from __future__ import annotations

import functools
from collections.abc import Callable

ENGINE_NAMES = ("default", "random")


def make_engine(name: str):
    """Build a warmed-up motion engine: ``"default"`` (shipped weights) or ``"random"`` (seed 0, tests)."""
    from models.engine import MotionEngine

    if name == "default":
        engine = MotionEngine.load_default()
    elif name == "random":
        engine = MotionEngine.random(seed=0)
    else:
        raise ValueError(f"unknown engine {name!r}; choose one of {', '.join(ENGINE_NAMES)}")
    engine.warmup()
    return engine


def engine_factory(name: str) -> Callable[[], object]:
    """A picklable zero-argument callable that builds the named engine."""
    if name not in ENGINE_NAMES:
        raise ValueError(f"unknown engine {name!r}; choose one of {', '.join(ENGINE_NAMES)}")
    return functools.partial(make_engine, name)
