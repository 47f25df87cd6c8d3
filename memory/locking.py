"""One process at a time per embedded data directory, with a one-line error naming the process that holds it.

Milvus Lite and Kuzu each refuse a second process on their files, with errors that say little; this lock is
taken first and says which process has the data.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from memory.errors import StoreBusyError


class DataDirLock:
    """An exclusive advisory lock on `<data_dir>/memory.lock`, holding the owner's pid."""

    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = data_dir / "memory.lock"
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(self._fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(self._fd)
            raise StoreBusyError(f"the memory data in {data_dir} is in use by process {owner}; close it or set "
                                 "MEMORY_DATA_DIR to another directory") from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, str(os.getpid()).encode(), 0)

    def release(self) -> None:
        """Release the lock (idempotent)."""
        if self._fd >= 0:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1
