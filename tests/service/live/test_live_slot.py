"""The latest-frame slot: newest item wins, the pace of its items, and polling before one is due."""

from __future__ import annotations

import threading
import time

import pytest

from v1motion.service.live.slot import PACE_BREAK, LatestSlot


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_get_returns_the_newest_item_or_none_after_the_timeout():
    slot = LatestSlot()
    assert slot.get(0, timeout=0.01) is None
    slot.put("a")
    slot.put("b")
    assert slot.get(0, timeout=0.01) == (2, "b")
    assert slot.get(2, timeout=0.01) is None


def test_the_pace_is_the_running_interval_between_items_and_skips_breaks():
    clock = Clock()
    slot = LatestSlot(clock=clock)
    slot.put(0)
    assert slot.period is None and slot.due() is None
    clock.t += 0.040
    slot.put(1)
    assert slot.period == pytest.approx(0.040)
    for _ in range(60):
        clock.t += 0.030
        slot.put(2)
    assert slot.period == pytest.approx(0.030, abs=1e-4)
    clock.t += 2 * PACE_BREAK * 0.030  # a reconnect: not a frame period
    slot.put(3)
    assert slot.period == pytest.approx(0.030, abs=1e-4)
    assert slot.due() == pytest.approx(clock.t + 0.030, abs=1e-4)


def _cpu_of_get(busy_s: float) -> tuple[object, float, float]:
    """A slot paced at 100 ms whose next item comes 100 ms after the last: what ``get`` returns,
    how long it took, and the CPU time its thread used meanwhile."""
    slot = LatestSlot()
    slot.put("first")
    time.sleep(0.1)
    slot.put("second")
    threading.Timer(0.1, slot.put, args=("third",)).start()
    t0, c0 = time.monotonic(), time.thread_time()
    got = slot.get(2, timeout=2.0, busy_s=busy_s)
    return got, time.monotonic() - t0, time.thread_time() - c0


def test_busy_polling_gets_the_item_and_uses_the_core_while_it_waits():
    got, waited, cpu = _cpu_of_get(busy_s=0.09)  # polls from about 10 ms after the call
    assert got == (3, "third") and waited < 1.0
    assert cpu > 0.02  # about 90 ms of polling; a sleeping wait uses well under 1 ms
    got, waited, cpu = _cpu_of_get(busy_s=0.0)
    assert got == (3, "third") and waited < 1.0
    assert cpu < 0.02


def test_busy_polling_gives_up_half_a_period_after_the_item_was_due():
    slot = LatestSlot()
    slot.put("first")
    time.sleep(0.05)
    slot.put("second")  # paced at about 50 ms; nothing more comes
    c0 = time.thread_time()
    assert slot.get(2, timeout=0.5, busy_s=1.0) is None
    assert time.thread_time() - c0 < 0.2  # polled for about 75 ms at most, then slept


def test_polling_works_where_the_os_has_no_sched_yield(monkeypatch):
    """``os.sched_yield`` is POSIX only; elsewhere the slot sleeps for 0 s between looks."""
    import importlib
    import os

    from v1motion.service.live import slot as module

    monkeypatch.delattr(os, "sched_yield")
    reloaded = importlib.reload(module)
    try:
        s = reloaded.LatestSlot()
        s.put("first")
        time.sleep(0.02)
        s.put("second")
        threading.Timer(0.02, s.put, args=("third",)).start()
        assert s.get(2, timeout=1.0, busy_s=1.0) == (3, "third")
    finally:
        monkeypatch.undo()
        importlib.reload(module)
