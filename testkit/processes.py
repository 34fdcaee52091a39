"""Helpers for tests that start real processes: free ports, readiness waits, and processes that always stop."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

import httpx

from utils.config import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
BIN = Path(PYTHON).parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_settings(lake: Path | str, **overrides: object) -> Settings:
    """Settings for a test lake: small thresholds, never the real ./data_lake, no .env file."""
    env = {
        "DATA_LAKE_PATH": str(lake),
        "FLUSH_INTERVAL_SECONDS": "0.5",
        "COMPACTION_MIN_FILES": "8",
        "COMPACTION_TARGET_MIN_MB": "1",
        "COMPACTION_TARGET_MAX_MB": "4",
        "COMPACTION_GRACE_SECONDS": "2",
        "COMPACTION_SWEEP_SECONDS": "1",
        "COMPACTION_DEBOUNCE_SECONDS": "0.2",
        "RETRY_BACKOFF_BASE": "1.5",
        "RETRY_MAX_DELAY_SECONDS": "0.5",
        "REQUEST_TIMEOUT_SECONDS": "5",
        "POLL_INTERVAL_SECONDS": "0.2",
        "PROGRESS_INTERVAL_SECONDS": "1",
    }
    env.update({k.upper(): str(v) for k, v in overrides.items()})
    return load_settings(env, env_file=None)


def wait_until(predicate: object, timeout: float, interval: float = 0.05, what: str = "condition") -> None:
    """Poll ``predicate()`` until it is truthy; fail the test with ``what`` after ``timeout`` seconds."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


class ManagedProcess:
    """A child process in its own process group that is always stopped (SIGTERM, then SIGKILL).

    Use as a context manager; output goes to ``log_path`` so a failing test can show it.
    """

    def __init__(
        self,
        args: Sequence[str],
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
        cwd: Path = ROOT,
    ) -> None:
        self.args = list(args)
        self.env = {**os.environ, **(env or {})}
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        self.log_path = log_path
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ManagedProcess:
        out = self.log_path.open("ab") if self.log_path else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen(
                self.args, env=self.env, cwd=self.cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        finally:
            if not isinstance(out, int):
                out.close()  # the child has its own copy; ours would leak (a ResourceWarning, an error here)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def kill9(self) -> None:
        """SIGKILL the process only (not its group): a crash at an arbitrary instant."""
        self.signal(signal.SIGKILL)
        assert self.proc is not None
        self.proc.wait(10)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM the whole group, wait, then SIGKILL what is left. Returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # stragglers in the group
        if self.proc.poll() is None:
            self.proc.wait(5)
        return self.proc.returncode

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def __enter__(self) -> ManagedProcess:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def uvicorn_args(port: int) -> list[str]:
    """The command line of a real ``uvicorn api.main:app`` on 127.0.0.1:``port``."""
    return [str(BIN / "uvicorn"), "api.main:app", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]


@contextmanager
def running_service(
    env: Mapping[str, str], port: int, log_path: Path | None = None, timeout: float = 60
) -> Iterator[ManagedProcess]:
    """The generator service in its own process, answering ``/health/`` when the block starts; always stopped."""
    with ManagedProcess(uvicorn_args(port), env=env, log_path=log_path) as proc:
        try:
            wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/health/"), timeout, what="the service")
        except AssertionError:
            raise AssertionError(f"the service did not start:\n{proc.output()[-3000:]}") from None
        yield proc
