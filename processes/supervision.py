"""Child processes that die with their parent, the pipeline's supervised child compactor, and waiting out an
unreachable store at start-up (:func:`until_reachable`)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

from processes.cli import EXIT_LOCKED
from utils.config import Settings
from utils.errors import (
    CorruptFileError,
    FencedError,
    LakeError,
    LakeLockedError,
    LeaseLostError,
    StaleInputsError,
    UnmigratedLakeError,
    one_line,
)
from utils.retry import Backoff

log = logging.getLogger(__name__)

ROOT: Final = Path(__file__).resolve().parent.parent
COMPACTOR_SCRIPT: Final = ROOT / "compaction_monitoring.py"

CHILD_RESTART_SECONDS: Final = 2.0
CHILD_RESTART_MAX_SECONDS: Final = 30.0
CHILD_LOCKED_RECHECK_SECONDS: Final = 10.0
CHILD_STOP_TIMEOUT_SECONDS: Final = 15.0


# Run in the child before it becomes the compactor: ask the kernel for SIGTERM when the parent dies
# (PR_SET_PDEATHSIG = 1, kept across execve), give up if the parent is already gone, then exec the
# real command. Doing this in the child itself avoids ``preexec_fn``, which is unsafe in a process
# with threads. The death signal follows the *thread* that forked, so children are started from
# the main thread.
_DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys\n"
    "if sys.platform.startswith('linux'):\n"
    "    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    os._exit(0)\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


def die_with_parent(command: Sequence[str], parent_pid: int | None = None) -> list[str]:
    """``command`` wrapped so that the process receives SIGTERM when its parent dies, even by kill -9."""
    parent = os.getpid() if parent_pid is None else parent_pid
    return [sys.executable, "-c", _DIE_WITH_PARENT, str(parent), *command]


class ChildCompactor:
    """Runs the compaction process as a child that dies with the pipeline, restarting it if it stops.

    Exit status 3 means another compactor holds the lake's lock: that one compacts, so this just
    checks again later. Never two compactors on a lake: the compactor's own lock decides.
    """

    def __init__(
        self,
        command: Sequence[str],
        env: Mapping[str, str],
        *,
        restart_seconds: float = CHILD_RESTART_SECONDS,
        locked_recheck_seconds: float = CHILD_LOCKED_RECHECK_SECONDS,
        stop_timeout: float = CHILD_STOP_TIMEOUT_SECONDS,
    ) -> None:
        self.command = list(command)
        self.env = dict(env)
        self.restart_seconds = restart_seconds
        self.locked_recheck_seconds = locked_recheck_seconds
        self.stop_timeout = stop_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._started_at = 0.0
        self._backoff = Backoff(first=restart_seconds, factor=2.0, cap=max(restart_seconds, CHILD_RESTART_MAX_SECONDS))
        self._quick_exits = 0  # consecutive exits soon after a start
        self._restart_at: float | None = None

    @classmethod
    def for_settings(cls, settings: Settings, **kwargs: Any) -> ChildCompactor:
        return cls([sys.executable, str(COMPACTOR_SCRIPT)], {**os.environ, **settings.as_env()}, **kwargs)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def start(self) -> None:
        """Start the child (from the main thread: see :func:`die_with_parent`)."""
        self.proc = subprocess.Popen(die_with_parent(self.command), env=self.env)
        self.starts += 1
        self._started_at = time.monotonic()
        self._restart_at = None
        log.info("started the compactor (pid %d)", self.proc.pid)

    def poll(self) -> None:
        """Notice a child that stopped and restart it when its delay is over."""
        now = time.monotonic()
        if self.proc is not None and self._restart_at is None:
            status = self.proc.poll()
            if status is None:
                return
            if status == EXIT_LOCKED:
                delay = self.locked_recheck_seconds
                log.info("another compactor already runs on this lake (it compacts); checking again in %.0f s", delay)
            else:
                quick = now - self._started_at < 10 * self.restart_seconds
                self._quick_exits = self._quick_exits + 1 if quick else 0
                delay = self._backoff.delay(self._quick_exits + 1)
                log.warning(
                    "the compactor (pid %d) exited with status %s; restarting in %.0f s", self.proc.pid, status, delay
                )
            self._restart_at = now + delay
        if self._restart_at is not None and now >= self._restart_at:
            self.start()

    def stop(self) -> int | None:
        """SIGTERM the child and wait for it (SIGKILL after the timeout); returns its exit status."""
        self._restart_at = None
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                log.warning("the compactor did not stop within %.0f s; killing it", self.stop_timeout)
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


# -- starting up while the lake's store is unreachable ---------------------------------------------------
STARTUP_RETRY: Final = Backoff(first=0.5, factor=2.0, cap=30.0, jitter=0.5)
# LakeErrors that no retry clears: everything else (a failed request to the store, a log that could not be
# read) may pass, so a process starting during an outage waits it out instead of exiting.
PERMANENT_LAKE_ERRORS: Final = (
    UnmigratedLakeError,
    LakeLockedError,
    FencedError,
    CorruptFileError,
    StaleInputsError,
    LeaseLostError,
)
T = TypeVar("T")


def until_reachable(
    what: str, step: Callable[[], T], stop: threading.Event, retry: Backoff = STARTUP_RETRY
) -> T | None:
    """``step()``, run again after a LakeError that a retry may clear, until it returns or ``stop`` is set.

    Returns what ``step`` returned, or None if ``stop`` was set while waiting. Each failure is logged in
    one line with the delay before the next attempt; a permanent error (PERMANENT_LAKE_ERRORS) and any
    other exception propagate at once.
    """
    failures = 0
    while True:
        try:
            return step()
        except PERMANENT_LAKE_ERRORS:
            raise
        except LakeError as exc:
            failures += 1
            delay = retry.delay(failures)
            log.warning("%s failed (attempt %d): %s; retrying in %.1f s", what, failures, one_line(exc), delay)
            if stop.wait(delay):
                return None
