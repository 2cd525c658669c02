"""Fixtures shared by the motion engine's tests."""

from __future__ import annotations

import threading

import pytest


@pytest.fixture
def record_encodes(monkeypatch):
    """``record_encodes(engine)``: the calls of ``engine._encode_prepared`` from then on, as
    ``(thread name, prepared, restart)`` in the order they are made, from any thread."""

    def record(engine) -> list[tuple[str, tuple, bool]]:
        calls = []
        encode = engine._encode_prepared

        def spy(state, prepared, restart=False):
            calls.append((threading.current_thread().name, prepared, restart))
            return encode(state, prepared, restart)

        monkeypatch.setattr(engine, "_encode_prepared", spy)
        return calls

    return record
