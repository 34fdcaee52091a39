"""``python compaction_monitoring.py``: --once, clean stops, the lock, bad settings, and real kill -9 mid-protocol."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from lake import layout
from lake.liveset import live_set
from lake.storage import LocalStorage
from testkit.ids import assert_exactly_once
from testkit.landing import compactor_temp, publish_landing
from testkit.processes import PYTHON, ROOT, ManagedProcess, make_settings, wait_until

pytestmark = pytest.mark.integration

SCRIPT = str(ROOT / "compaction_monitoring.py")


def _env(lake: Path, **overrides: object) -> dict[str, str]:
    return make_settings(lake, **overrides).as_env()


def _run_once(lake: Path, **overrides: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, SCRIPT, "--once"],
        env={**os.environ, **_env(lake, **overrides)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_once_compacts_what_is_due_and_exits_0(storage: LocalStorage, lake_root: Path) -> None:
    sources = publish_landing(storage, 0, 1_000, 8)
    done = _run_once(lake_root)
    assert done.returncode == 0, done.stderr
    assert "compacted 8 files (8 landing + 0 compacted) -> 1 file(s): 8,000 rows" in done.stderr
    assert_exactly_once(storage, range(8_000))
    assert all(storage.exists(f.key) for f in sources)  # still in their grace period

    again = _run_once(lake_root, COMPACTION_GRACE_SECONDS=0)  # nothing due; deletions now are
    assert again.returncode == 0, again.stderr
    assert "compacted" not in again.stderr.replace("compacted/", "")
    assert not any(storage.exists(f.key) for f in sources)
    assert_exactly_once(storage, range(8_000))


def test_a_bad_setting_exits_2_naming_it(lake_root: Path) -> None:
    env = {**os.environ, **_env(lake_root), "COMPACTION_MIN_FILES": "1"}
    done = subprocess.run([PYTHON, SCRIPT, "--once"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "COMPACTION_MIN_FILES" in done.stderr and len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_watches_until_a_signal_and_one_compactor_per_lake(
    storage: LocalStorage, lake_root: Path, tmp_path: Path, sig: signal.Signals
) -> None:
    log = tmp_path / "compactor.log"
    with ManagedProcess([PYTHON, SCRIPT], env=_env(lake_root), log_path=log) as proc:
        wait_until(lambda: "watching" in proc.output(), 30, what="the compactor to start watching")
        second = _run_once(lake_root)
        assert second.returncode == 3 and "another compactor" in second.stderr

        publish_landing(storage, 0, 1_000, 8)
        wait_until(lambda: storage.list_files(layout.COMPACTED), 15, what="a compaction")
        began = time.monotonic()
        proc.signal(sig)
        assert proc.wait(10) == 0, proc.output()
        assert time.monotonic() - began < 5
    assert f"{sig.name} received" in log.read_text() and "stopped" in log.read_text()
    assert_exactly_once(storage, range(8_000))
    assert _run_once(lake_root).returncode == 0  # the lock went with the process


@pytest.mark.parametrize("step", ["writing", "written", "published", "deleting"])
def test_kill_9_at_a_protocol_step_then_restart(
    storage: LocalStorage, lake_root: Path, tmp_path: Path, step: str
) -> None:
    publish_landing(storage, 0, 1_000, 8)
    log = tmp_path / "compactor.log"
    env = {**_env(lake_root, COMPACTION_GRACE_SECONDS=0), "BADGE_COMPACTOR_PAUSE_AT": step}
    with ManagedProcess([PYTHON, SCRIPT, "--once"], env=env, log_path=log) as proc:
        wait_until(lambda: f"PAUSED at {step}" in proc.output(), 30, what=f"the compactor to pause at {step}")
        proc.kill9()
    assert_exactly_once(storage, range(8_000))
    if step in ("writing", "written"):
        assert compactor_temp(storage), "kill -9 mid-write leaves its temp file"
        assert storage.list_files(layout.COMPACTED) == []
    else:
        assert len(storage.list_files(layout.COMPACTED)) == 1

    done = _run_once(lake_root, COMPACTION_GRACE_SECONDS=0)
    assert done.returncode == 0, done.stderr
    assert compactor_temp(storage) == [] and storage.list_all(layout.TEMP) == []
    live = live_set(storage)
    assert live.replaced == () and live.in_zone(layout.LANDING) == []
    assert_exactly_once(storage, range(8_000))


PARENT = textwrap.dedent(
    """
    import ctypes, signal, subprocess, sys, time
    libc = ctypes.CDLL(None, use_errno=True)
    def die_with_parent():
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG, as pipeline.py does for its child compactor
    child = subprocess.Popen([sys.executable, sys.argv[1]], preexec_fn=die_with_parent)
    print("child", child.pid, flush=True)
    time.sleep(120)
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_stops_cleanly_when_its_parent_is_killed(lake_root: Path, tmp_path: Path) -> None:
    log = tmp_path / "parent.log"
    with ManagedProcess([PYTHON, "-c", PARENT, SCRIPT], env=_env(lake_root), log_path=log) as parent:
        wait_until(lambda: "watching" in parent.output(), 30, what="the child compactor to start")
        child = int(next(line.split()[1] for line in parent.output().splitlines() if line.startswith("child ")))
        parent.kill9()

        def child_gone() -> bool:
            try:
                state = Path(f"/proc/{child}/status").read_text()
            except FileNotFoundError:
                return True
            return "State:\tZ" in state  # exited, waiting to be reaped by whoever adopted it

        wait_until(child_gone, 10, what="the orphaned compactor to exit")
    assert "SIGTERM received" in log.read_text() and "stopped" in log.read_text()
