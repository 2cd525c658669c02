"""What importing a module does to the process environment, seen from a fresh interpreter."""

from __future__ import annotations

import os
import subprocess
import sys


def env_after_import(module: str, name: str, preset: str | None = None) -> str:
    """``os.environ[name]`` in a fresh interpreter after ``import module``, with ``name`` unset
    (``preset=None``) or set to ``preset`` beforehand."""
    env = {k: v for k, v in os.environ.items() if k != name}
    if preset is not None:
        env[name] = preset
    code = f"import os, {module}; print(os.environ[{name!r}])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()
