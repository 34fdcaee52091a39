"""``python pipeline.py`` as a process: exit statuses for a bad setting, a bad argument, a locked lake, a lake in the
previous layout and a service of another stream."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lake import layout
from lake.lock import LakeLock
from lake.parquet import write_file
from lake.storage import LocalStorage
from lake.table import LOG_DIR, QuarantineTable, read_snapshot
from testkit.landing import publish_landing
from testkit.processes import ROOT, free_port, make_settings, running_service
from testkit.records import TEST_IDENTITY, lake_table

PIPELINE = str(ROOT / "pipeline.py")


def run_pipeline(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "DATA_LAKE_PATH": str(tmp_path / "lake"), **env}
    # cwd is the temporary directory, so no .env file of the working tree is read.
    return subprocess.run(
        [sys.executable, PIPELINE, "--no-compaction", *args],
        cwd=tmp_path,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_bad_setting_exits_2_with_one_line(tmp_path: Path) -> None:
    done = run_pipeline(tmp_path, BATCH_SIZE="0")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "BATCH_SIZE" in lines[0] and "'0'" in lines[0] and "1 to 100000" in lines[0]
    assert not (tmp_path / "lake").exists()  # refused before touching anything


def test_a_bad_argument_exits_2(tmp_path: Path) -> None:
    done = run_pipeline(tmp_path, "--max-records", "-5")
    assert done.returncode == 2 and "--max-records" in done.stderr


def test_a_second_pipeline_is_refused_with_exit_3(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    with LakeLock(lake, layout.PIPELINE_LOCK, "pipeline"):
        done = run_pipeline(tmp_path)
    assert done.returncode == 3
    assert "another pipeline" in done.stderr and str(os.getpid()) in done.stderr


def test_an_unmigrated_lake_exits_2_saying_to_migrate(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "lake")
    storage.ensure_layout()
    old = write_file(storage, lake_table(0, 10), layout.LANDING, "landing")  # the previous layout: files, no log
    done = run_pipeline(tmp_path)  # no service is running: the lake is refused before the source is asked
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "python -m lake migrate" in lines[0]
    assert not (storage.root / LOG_DIR).exists() and storage.list_tree(layout.LANDING) == [old]


@pytest.mark.integration
def test_a_service_of_another_stream_exits_2_naming_both_and_writes_nothing(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "lake")
    publish_landing(storage, 0, 100, 2)  # a table of TEST_IDENTITY's stream, position 199
    before = read_snapshot(storage)
    log_before = sorted(p.name for p in (storage.root / LOG_DIR).iterdir())
    port = free_port()
    service_env = {
        **make_settings(storage.root, API_PORT=port, GENERATOR_SEED=7).as_env(),
        "GENERATOR_STREAM_START": "2025-03-03T06:30:00Z",
        "EVENTS_PER_SECOND": "0",  # a firehose: its identity is its nominal rate
    }
    with running_service(service_env, port, tmp_path / "api.log"):
        done = run_pipeline(tmp_path, EMPLOYEE_BADGE_LOGS_URL=f"http://127.0.0.1:{port}/employee-badge-logs/")
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert str(TEST_IDENTITY) in lines[0] and "seed 7" in lines[0] and "2025-03-03T06:30:00Z" in lines[0]
    assert "GENERATOR_SEED=0" in lines[0]  # and what to do
    after = read_snapshot(storage)
    assert (after.version, after.keys, after.committed_event_id) == (before.version, before.keys, 199)
    assert sorted(p.name for p in (storage.root / LOG_DIR).iterdir()) == log_before
    assert QuarantineTable.open(storage) is None and len(storage.list_tree(layout.LANDING)) == 2
