import os

import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


# The test client sends ``Host: testserver``; the service answers only to its own names (DNS rebinding),
# so the tests configure that name the way a deployment would configure its own.
os.environ.setdefault("V1MOTION_ALLOWED_HOSTS", '["testserver"]')
