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
