"""Where the read-only research data lives.

Tests, benchmarks and training read data through :func:`shared_data_dir`; the running service never
needs it. The default is ``../shared/data`` beside the project root, overridable with the environment
variable ``V1MOTION_SHARED_DATA``.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "V1MOTION_SHARED_DATA"
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """Return the folder holding ``videos/``, ``ptb/`` and the spike data sets."""
    value = os.environ.get(ENV_VAR)
    if value:
        return Path(value).expanduser().resolve()
    return (PROJECT_ROOT / ".." / "shared" / "data").resolve()


def require_shared_data(*parts: str) -> Path:
    """Return a path inside the shared data folder, or raise a clear error if it is missing."""
    path = shared_data_dir().joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: set {ENV_VAR} to the folder that holds the research data"
        )
    return path
