"""The pipeline's child compactor: restarted when it dies, rechecked when another holds the lock, dies with us."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lake.identity import StreamIdentity
from lake.storage import LocalStorage
from processes.pipeline import RunOptions, run
from processes.supervision import ChildCompactor
from testkit.fake_source import FakeSource
from testkit.ids import assert_exactly_once
from testkit.landing import publish_landing
from testkit.processes import ROOT, make_settings, wait_until
from utils.errors import StreamMismatchError

SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]


def alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie waiting to be reaped counts as dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def restarts(child: ChildCompactor) -> int:
    child.poll()
    return child.starts


def test_a_child_that_dies_is_restarted_and_stop_terminates_it() -> None:
    child = ChildCompactor(SLEEPER, os.environ, restart_seconds=0.1)
    child.start()
    try:
        first = child.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: restarts(child) == 2, 10, what="the restart")
        second = child.pid
        assert second is not None and second != first and alive(second)
    finally:
        status = child.stop()
    assert status == -signal.SIGTERM
    assert not alive(second)


def test_exit_status_3_means_another_compactor_holds_the_lake(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="processes.supervision")
    child = ChildCompactor([sys.executable, "-c", "raise SystemExit(3)"], os.environ, locked_recheck_seconds=0.6)
    child.start()
    try:
        assert child.proc is not None
        child.proc.wait(10)
        child.poll()
        assert "another compactor already runs on this lake" in caplog.text
        child.poll()
        assert child.starts == 1  # not at once: it checks again after the delay
        wait_until(lambda: restarts(child) == 2, 5, what="the later check")
    finally:
        child.stop()


def test_the_child_gets_the_pipeline_settings(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "lake", COMPACTION_MIN_FILES=9)
    child = ChildCompactor.for_settings(settings)
    assert child.command[-1].endswith("compaction_monitoring.py")
    assert child.env["DATA_LAKE_PATH"] == str(tmp_path / "lake")
    assert child.env["COMPACTION_MIN_FILES"] == "9"


def test_the_child_dies_with_the_pipeline_even_on_kill_9(tmp_path: Path) -> None:
    parent_script = textwrap.dedent(
        f"""
        import os, sys, time
        from processes.supervision import ChildCompactor
        child = ChildCompactor({SLEEPER!r}, os.environ)
        child.start()
        print(child.pid, flush=True)
        time.sleep(120)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_script], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        child_pid = int(parent.stdout.readline())
        # Wait until the child runs the real command (past the death-signal set-up), then kill the parent.
        cmdline = Path(f"/proc/{child_pid}/cmdline")
        wait_until(lambda: b"execvp" not in cmdline.read_bytes(), 10, what="the child's command")
        parent.kill()
        parent.wait(10)
        wait_until(lambda: not alive(child_pid), 10, what="the child to die with its parent")
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(10)
        assert parent.stdout is not None
        parent.stdout.close()
        if alive(child_pid):
            os.kill(child_pid, signal.SIGKILL)


def test_the_pipeline_starts_and_stops_its_child(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "lake")
    child = ChildCompactor(SLEEPER, os.environ)
    assert run(settings, RunOptions(max_records=50, compaction=True), source=FakeSource(), compactor=child) == 0
    assert child.starts == 1
    assert child.proc is not None and child.proc.returncode == -signal.SIGTERM
    assert_exactly_once(LocalStorage(tmp_path / "lake"), range(50))  # committed before the child was stopped


def test_no_child_is_started_for_a_lake_the_pipeline_refuses(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "lake")
    publish_landing(storage, 0, 10, 1)
    other = StreamIdentity(seed=9, events_per_second=1.0, stream_start="2025-03-03T00:00:00Z")
    child = ChildCompactor(SLEEPER, os.environ)
    with pytest.raises(StreamMismatchError):
        run(
            make_settings(storage.root), RunOptions(compaction=True), source=FakeSource(identity=other), compactor=child
        )
    assert child.starts == 0
