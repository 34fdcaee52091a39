"""One process per role per lake: an OS advisory lock (``flock``) on a file in the lake root.

The kernel releases the lock when the holder dies, even by ``kill -9``, so a crash never leaves a
stale lock behind; a second process asking for the same role gets LakeLockedError at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from types import TracebackType

from utils.errors import LakeLockedError


class LakeLock:
    """An exclusive, non-blocking lock for one role (``pipeline`` or ``compactor``) on one lake."""

    def __init__(self, root: Path, filename: str, role: str) -> None:
        self.path = Path(root) / filename
        self.role = role
        self._fd: int | None = None

    def acquire(self) -> LakeLock:
        """Take the lock or raise LakeLockedError naming the holder's pid."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise LakeLockedError(
                f"another {self.role} (pid {holder}) already runs on the lake {self.path.parent}; "
                f"stop it first (at most one {self.role} per lake)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def is_locked_elsewhere(self) -> bool:
        """True if another process holds this lock now (a probe that never keeps the lock)."""
        if self.held or not self.path.exists():
            return False
        fd = os.open(self.path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing drops a lock we may have just taken
        return False

    def __enter__(self) -> LakeLock:
        return self.acquire()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
