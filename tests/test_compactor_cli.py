"""``python compaction_monitoring.py``: --once, clean stops, the lock, bad settings, a lake without a table or in the
previous layout, and real kill -9 at each step of the protocol."""

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
from lake.cleanup import IN_FLIGHT_SECONDS
from lake.parquet import write_file
from lake.storage import LocalStorage
from lake.table import has_log
from testkit.ids import assert_exactly_once
from testkit.landing import compactor_temp, disk_keys, publish_landing, table_keys
from testkit.processes import PYTHON, ROOT, ManagedProcess, make_settings, wait_until
from testkit.records import lake_table

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
    assert "Arrow memory pool: jemalloc; malloc arenas: 1" in done.stderr  # freed memory goes back (utils.memory)
    assert_exactly_once(storage, range(8_000))
    assert all(storage.exists(f.key) for f in sources)  # still in their grace period

    again = _run_once(lake_root, COMPACTION_GRACE_SECONDS=0)  # nothing due; deletions now are
    assert again.returncode == 0, again.stderr
    assert "compacted" not in again.stderr.replace("compacted/", "")
    assert not any(storage.exists(f.key) for f in sources)
    assert disk_keys(storage) == table_keys(storage)
    assert_exactly_once(storage, range(8_000))


def test_a_lake_without_a_table_is_waited_for(lake_root: Path) -> None:
    done = _run_once(lake_root)
    assert done.returncode == 0, done.stderr
    assert "error" not in done.stderr.lower() and not has_log(lake_root)


def test_a_lake_in_the_previous_layout_exits_2_with_one_line(storage: LocalStorage, lake_root: Path) -> None:
    old = write_file(storage, lake_table(0, 10), layout.LANDING, "landing")  # data files, no log
    done = _run_once(lake_root)
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert "python -m lake migrate" in line
    assert storage.exists(old.key) and not has_log(lake_root)  # nothing written


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
        wait_until(lambda: storage.list_tree(layout.COMPACTED), 15, what="a compaction")
        began = time.monotonic()
        proc.signal(sig)
        assert proc.wait(10) == 0, proc.output()
        assert time.monotonic() - began < 5
    assert f"{sig.name} received" in log.read_text() and "stopped" in log.read_text()
    assert_exactly_once(storage, range(8_000))
    assert _run_once(lake_root).returncode == 0  # the lock went with the process


def _age(storage: LocalStorage, seconds: float = 2 * IN_FLIGHT_SECONDS) -> None:
    """Make every data file on disk ``seconds`` older (the clean-up never deletes a file younger than in-flight)."""
    past = time.time() - seconds
    for zone in layout.DATA_ZONES:
        for info in storage.list_files(zone):
            os.utime(storage.path(info.key), (past, past))


@pytest.mark.parametrize("step", ["snapshot", "writing", "written", "published", "committed", "deleting"])
def test_kill_9_at_a_protocol_step_then_restart(
    storage: LocalStorage, lake_root: Path, tmp_path: Path, step: str
) -> None:
    sources = [f.key for f in publish_landing(storage, 0, 1_000, 8)]
    _age(storage)  # older than a file in flight, so a zero grace period deletes them at once
    log = tmp_path / "compactor.log"
    env = {**_env(lake_root, COMPACTION_GRACE_SECONDS=0), "BADGE_COMPACTOR_PAUSE_AT": step}
    with ManagedProcess([PYTHON, SCRIPT, "--once"], env=env, log_path=log) as proc:
        wait_until(lambda: f"PAUSED at {step}" in proc.output(), 30, what=f"the compactor to pause at {step}")
        proc.kill9()
    assert_exactly_once(storage, range(8_000))  # whatever the step, the table holds each event once
    outputs = [f.key for f in storage.list_tree(layout.COMPACTED)]
    if step in ("snapshot", "writing", "written"):
        assert bool(compactor_temp(storage)) == (step != "snapshot"), "kill -9 mid-write leaves its temp file"
        assert outputs == [] and table_keys(storage) == sources
    elif step == "published":
        assert len(outputs) == 1 and table_keys(storage) == sources  # published, not committed: not the lake
    else:
        assert len(outputs) == 1 and table_keys(storage) == outputs  # committed

    _age(storage)
    done = _run_once(lake_root, COMPACTION_GRACE_SECONDS=0)
    assert done.returncode == 0, done.stderr
    assert compactor_temp(storage) == [] and storage.list_all(layout.TEMP) == []
    keys = table_keys(storage)
    assert len(keys) == 1 and keys[0].startswith(f"{layout.COMPACTED}/")
    assert disk_keys(storage) == keys  # the sources and any uncommitted output are gone
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
