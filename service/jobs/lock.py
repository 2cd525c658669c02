"""One job store per data directory, enforced: an exclusive lock held while the service runs.

The job store is SQLite in WAL mode, whose readers and writers share memory through the ``-shm`` file:
two services on one data volume work only while both run on one host's kernel, and break silently
across hosts or on network file systems. So a data directory belongs to one running service: it takes
an exclusive ``flock`` on ``<data dir>/jobs.lock`` at start and a second service refuses to start with
a :class:`StoreLocked` error that says who holds it. The kernel drops the lock when its holder exits,
killed or not, so a crashed service never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path

LOCK_NAME = "jobs.lock"


class StoreLocked(RuntimeError):
    """Another running service holds the job store of this data directory."""


class StoreLock:
    """Exclusive, non-blocking lock of a data directory's job store.

    Parameters
    ----------
    data_dir : Path
        The folder of the job store; the lock file is ``data_dir / "jobs.lock"``.
    """

    def __init__(self, data_dir: Path):
        self.path = Path(data_dir) / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock or raise :class:`StoreLocked` at once (never waits)."""
        if self._fd is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 512, 0).decode("utf-8", "replace").strip() or "unknown"
            os.close(fd)
            raise StoreLocked(
                f"the job store in {self.path.parent} is in use by another v1motion service "
                f"({holder}); one job store per data volume: give each replica its own "
                "V1MOTION_DATA_DIR volume"
            ) from None
        os.ftruncate(fd, 0)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        os.pwrite(fd, f"host {socket.gethostname()} pid {os.getpid()} since {stamp}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None
