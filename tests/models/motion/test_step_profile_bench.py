"""bench/step_profile.py: the serial time it reports is the time the helper idles, and profiling leaves
the engine as it was."""

from __future__ import annotations

import numba  # noqa: F401  Numba reads its thread count when first imported: before the bench pins it
import numpy as np
import pytest
from bench_module import load_bench

from v1motion.models.motion.engine import MotionEngine

sp = load_bench("step_profile")


def test_serial_time_is_where_the_helper_idles_by_the_calling_threads_innermost_stage():
    step = (True, "step", 0.0, 10.0)
    events = [
        step,
        (True, "grey frame", 0.0, 1.0),  # helper idle: serial
        (False, "whitening (a band)", 1.0, 3.0),  # helper busy while the caller whitens too
        (True, "whitening (a band)", 1.0, 2.5),
        (True, sp.KERNEL, 3.0, 6.0),  # both threads work in the kernel
        (True, "read-out: pool and decode", 6.0, 9.0),
        (True, "read-out: units' axes", 7.0, 8.0),  # nested: the innermost stage is charged
        (False, "read-out: change gate", 6.0, 7.0),
    ]
    serial = sp.serial_time(events, [step])
    assert serial == {
        "grey frame": 1.0,
        "read-out: units' axes": 1.0,
        "read-out: pool and decode": 1.0,  # 8-9; 6-7 overlaps the helper's gate
        "(between stages)": 1.0,  # 9-10, and 2.5-3 is covered by the helper's band
    }


def test_profile_times_both_thread_counts_and_unwraps_the_engine():
    originals = [getattr(owner, name) for owner, name, _ in sp.STAGES]
    engines = {n: MotionEngine.random(seed=0, threads=n, parallel_from_px=0) for n in (1, 2)}
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (96, 128), np.uint8) for _ in range(10)]
    out = sp.profile(engines, frames, rounds=1)
    assert [getattr(owner, name) for owner, name, _ in sp.STAGES] == originals
    for n in (1, 2):
        assert out[n]["wall_ms"] > 0 and out[n]["cpu_ms"] > 0
        assert out[n]["stages"][(True, sp.KERNEL)] <= out[n]["wall_ms"]
    serial = sum(out[2]["serial"].values())
    assert 0 < serial <= out[2]["wall_ms"]
    # the bound is the serial part plus the rest of the CPU time split over the threads; not
    # compared with the CPU time itself: the serial part is wall time, which a loaded machine
    # stretches past the CPU time (CI: 3.30 > 3.21 ms)
    assert out[2]["bound_ms"] == pytest.approx(serial + (out[2]["cpu_ms"] - serial) / 2)
    text = sp.report(out, "128x96")
    assert "at most" in text and "ss-RNN kernel" in text


def test_contention_times_the_fine_decode_alone_and_beside_other_work_and_restores_all():
    import sys

    interval = sys.getswitchinterval()
    reader = MotionEngine._read_on_two_threads
    engine = MotionEngine.random(seed=1, threads=2, parallel_from_px=0)
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 256, (96, 128), np.uint8) for _ in range(4)]
    out = sp.contention(engine, frames, repeats=3)
    assert set(out) == {
        "alone",
        "beside a Numba loop (no lock held)",
        "beside the coarse read's pooling and decoding",
        "the same, switch interval 0.1 ms",
    }
    assert all(ms > 0 for ms in out.values())
    assert sys.getswitchinterval() == interval and MotionEngine._read_on_two_threads is reader
