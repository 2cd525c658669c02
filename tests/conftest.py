import os
import sys
from pathlib import Path

import numpy as np
import pytest

# The test modules live in folders that mirror the packages (tests/models/motion, tests/service/live,
# ...); the shared helpers (engine_double, naive twins, service_helpers, video_samples) stay here.
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


# The test client sends ``Host: testserver``; the service answers only to its own names (DNS rebinding),
# so the tests configure that name the way a deployment would configure its own.
os.environ.setdefault("V1MOTION_ALLOWED_HOSTS", '["testserver"]')
# Test apps come and go in one process: none moves the test process's objects out of the garbage
# collector's reach (Settings.gc_freeze; tests/service/live/test_engine_holder.py checks it).
os.environ.setdefault("V1MOTION_GC_FREEZE", "false")


@pytest.fixture(autouse=True)
def _own_data_dir(tmp_path_factory, monkeypatch):
    """Every test's services get their own data directory (job store, videos): a data directory
    belongs to one running service (its store is locked), and a test must not wait for the previous
    test's server to finish shutting down, nor see its jobs."""
    monkeypatch.setenv("V1MOTION_DATA_DIR", str(tmp_path_factory.mktemp("data")))
