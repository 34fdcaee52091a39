"""One process per role per lake: an OS advisory lock (``flock``) on a file in the lake root.

The kernel releases the lock when the holder dies, even by ``kill -9``, so a crash never leaves a
stale lock behind; a second process asking for the same role gets LakeLockedError at once. The lock
file is opened with ``O_NOFOLLOW`` and never truncated: a symlink (or another file's hard link) planted
at its path is refused with LakeError, and the target is left as it was.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
from pathlib import Path
from types import TracebackType
from typing import Final

from utils.errors import LakeError, LakeLockedError

PID_WIDTH: Final = 20  # the holder's pid, space-padded: each holder overwrites the same bytes, no truncation
OPEN_FLAGS: Final = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


class LakeLock:
    """An exclusive, non-blocking lock for one role (``pipeline`` or ``compactor``) on one lake."""

    def __init__(self, root: Path, filename: str, role: str) -> None:
        self.path = Path(root) / filename
        self.role = role
        self._fd: int | None = None

    def acquire(self) -> LakeLock:
        """Take the lock or raise LakeLockedError naming the holder's pid."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = self._open(os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, PID_WIDTH + 1, 0).decode(errors="replace").split()
            os.close(fd)
            raise LakeLockedError(
                f"another {self.role} (pid {holder[0] if holder else 'unknown'}) already runs on the lake "
                f"{self.path.parent}; stop it first (at most one {self.role} per lake)"
            ) from None
        os.pwrite(fd, f"{os.getpid():<{PID_WIDTH}}\n".encode(), 0)
        self._fd = fd
        return self

    def _open(self, create: int = 0) -> int:
        """The lock file's descriptor; LakeError if its path is a symlink or not a file of its own."""
        try:
            fd = os.open(self.path, OPEN_FLAGS | create, 0o644)
        except OSError as exc:  # ELOOP: a symlink at the path; ENXIO and the like: a socket, a device
            raise LakeError(f"cannot use {self.path} as the {self.role} lock ({exc.strerror}); remove it") from exc
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            os.close(fd)
            what = "a regular file" if stat.S_ISREG(info.st_mode) else "not a regular file"
            raise LakeError(
                f"cannot use {self.path} as the {self.role} lock ({what} with {info.st_nlink} links); remove it"
            )
        return fd

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
        fd = self._open()
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
