"""models.motion.contract: the engine the service types against, built by name in one place."""

from __future__ import annotations

import numpy as np
import pytest
from engine_double import FakeEngine

from models.motion.contract import ENGINE_NAMES, Engine, make_engine
from models.motion.engine import MotionEngine
from service.jobs.engines import engine_factory


def test_the_engine_and_the_test_double_both_satisfy_the_contract():
    assert isinstance(make_engine("random"), Engine)
    assert isinstance(FakeEngine(), Engine)
    assert not isinstance(object(), Engine)


def test_make_engine_builds_each_name_and_refuses_others_naming_the_valid_ones():
    engine = make_engine("random", threads=1)
    assert isinstance(engine, MotionEngine) and engine.threads == 1
    assert "default" in ENGINE_NAMES and "random" in ENGINE_NAMES
    with pytest.raises(ValueError, match="default, random"):
        make_engine("trained")


def test_the_service_factory_builds_the_same_engine_as_make_engine():
    """One engine-by-name: the service's picklable factory gives what make_engine gives, warmed."""
    frames = np.random.default_rng(0).integers(0, 255, (3, 64, 96), dtype=np.uint8)
    a, b = engine_factory("random")(), make_engine("random")
    sa, sb = a.new_state(), b.new_state()
    for f in frames:
        ma, mb = a.step(sa, f), b.step(sb, f)
    np.testing.assert_array_equal(ma.direction, mb.direction)
    with pytest.raises(ValueError, match="unknown engine"):
        engine_factory("nope")
