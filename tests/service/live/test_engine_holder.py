"""v1motion.service.live.engine.EngineHolder: the live engine, loaded in the background."""

from __future__ import annotations

import gc
import os
import time

import pytest
from engine_double import FakeEngine
from fastapi.testclient import TestClient

from v1motion.service.app import create_app
from v1motion.service.live.engine import EngineHolder
from v1motion.service.settings import Settings


@pytest.fixture
def unfrozen():
    """Leave the test process's objects in the garbage collector's reach, whatever a test froze."""
    gc.unfreeze()
    yield
    gc.unfreeze()


@pytest.mark.parametrize("freeze", [True, False])
def test_the_heap_is_frozen_once_the_engine_is_ready_when_asked(unfrozen, freeze):
    holder = EngineHolder()
    holder.load(FakeEngine, freeze_heap=freeze)
    assert holder.ready.is_set() and isinstance(holder.engine, FakeEngine)
    # the engine and everything alive before it is ready is out of the full collections' walk
    assert (gc.get_freeze_count() > 0) is freeze


def test_a_failed_load_freezes_nothing(unfrozen):
    def broken():
        raise RuntimeError("no weights")

    holder = EngineHolder()
    holder.load(broken, freeze_heap=True)
    assert holder.failed.is_set() and holder.error == "RuntimeError: no weights"
    assert gc.get_freeze_count() == 0


@pytest.mark.parametrize("freeze", [True, False])
def test_the_app_freezes_as_its_settings_say(unfrozen, freeze):
    app = create_app(Settings(gc_freeze=freeze), engine_factory=FakeEngine)
    with TestClient(app) as c:
        deadline = time.monotonic() + 10
        while c.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert c.get("/readyz").status_code == 200
        assert (gc.get_freeze_count() > 0) is freeze


def test_servers_freeze_by_default_and_tests_do_not(monkeypatch):
    assert os.environ["V1MOTION_GC_FREEZE"] == "false" and not Settings().gc_freeze
    monkeypatch.delenv("V1MOTION_GC_FREEZE")
    assert Settings().gc_freeze
