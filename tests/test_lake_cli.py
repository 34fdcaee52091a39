"""``python -m lake stats|verify|migrate``: figures from the table's log, exit statuses, JSON, the unmigrated lake."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, timedelta
from pathlib import Path

import pyarrow.parquet as pq

from lake import layout
from lake.audit import stats
from lake.parquet import write_file
from lake.storage import LocalStorage
from lake.table import read_snapshot
from testkit import lakes as lg
from testkit.landing import publish_landing
from testkit.processes import ROOT
from testkit.records import lake_table


def _run_cli(lake: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATA_LAKE_PATH": str(lake)}
    return subprocess.run(
        [sys.executable, "-m", "lake", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def test_stats_count_what_the_log_holds(storage: LocalStorage) -> None:
    infos = publish_landing(storage, 0, 100, 3)
    compacted = lg.compact(storage, infos[:2])  # its two sources stay on disk, out of the table
    foreign = lg.add_foreign_file(storage)
    publish_landing(storage, 300, 50, 1, commit=False)  # an orphan: on disk, in no commit
    lg.add_quarantine(storage, ["bad timestamp", "missing user"], first_event_id=1_000)
    (storage.root / layout.TEMP / "x.tmp").write_bytes(b"12345")

    newest = max(lake_table(0, 300)["badge_out_timestamp"].to_pylist()).replace(tzinfo=UTC)
    data = stats(storage, now=newest + timedelta(seconds=30))

    snap = read_snapshot(storage)
    assert data["table"]["version"] == snap.version and data["table"]["committed_event_id"] == 299
    assert data["table"]["files"] == 2 and data["table"]["rows"] == 300 and data["table"]["max_event_id"] == 299
    assert data["table"]["log_entries"] >= 1 and data["table"]["checkpoints"] == 0
    assert data["table"]["stream"]["seed"] == 0
    assert data["zones"]["landing"] == {"files": 1, "rows": 100, "bytes": infos[2].size}
    assert data["zones"]["compacted"] == {"files": 1, "rows": 200, "bytes": compacted.size}
    assert data["zones"]["quarantine"]["files"] == 1 and data["zones"]["quarantine"]["rows"] == 2
    assert data["zones"]["temp"] == {"files": 1, "rows": 0, "bytes": 5}
    beside = [infos[0].key, infos[1].key, foreign]
    assert data["not_in_table"]["files"] == 4  # the two replaced files, the foreign file, the orphan
    assert data["not_in_table"]["bytes"] >= sum(storage.path(k).stat().st_size for k in beside)
    assert data["newest_event_time"] == newest.isoformat()
    assert data["freshness_lag_seconds"] == 30.0


def test_stats_of_an_empty_lake(tmp_path: Path) -> None:
    data = stats(LocalStorage(tmp_path / "nowhere"))
    assert data["table"]["version"] is None and data["table"]["rows"] == 0
    assert data["newest_event_time"] is None and data["freshness_lag_seconds"] is None


def test_cli_exit_codes_and_json(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    empty = _run_cli(lake, "verify")
    assert empty.returncode == 0, empty.stderr
    assert "verify OK" in empty.stdout
    storage = LocalStorage(lake)
    storage.ensure_layout()
    infos = publish_landing(storage, 0, 10, 1)
    lg.add_foreign_file(storage)  # not the lake: verify still passes
    out = _run_cli(lake, "stats", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["table"]["rows"] == 10
    text = _run_cli(lake, "stats").stdout
    assert "in the table" in text and "version 1" in text
    ok = _run_cli(lake, "verify")
    assert ok.returncode == 0 and "verify OK" in ok.stdout, ok.stdout + ok.stderr
    storage.delete(infos[0].key)
    bad = _run_cli(lake, "verify", "--json")
    assert bad.returncode == 1
    report = json.loads(bad.stdout)
    assert report["ok"] is False and any(infos[0].key in p for p in report["problems"])
    failed = _run_cli(lake, "verify")
    assert failed.returncode == 1 and f"problem: {infos[0].key}" in failed.stdout


def test_an_unmigrated_lake_exits_2_with_one_line_and_migrates(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    storage = LocalStorage(lake)
    storage.ensure_layout()
    table = lake_table(0, 50)
    write_file(storage, table, layout.LANDING, "landing")  # the previous layout: footers, no log
    for command in ("stats", "verify"):
        out = _run_cli(lake, command)
        assert out.returncode == 2, (command, out.stdout, out.stderr)
        assert out.stderr.strip().count("\n") == 0 and "python -m lake migrate" in out.stderr
    migrated = _run_cli(lake, "migrate", "--json", "--stream-start", "2025-03-03T00:00:00Z")
    assert migrated.returncode == 0, migrated.stderr
    assert json.loads(migrated.stdout)["rows"] == 50
    verified = _run_cli(lake, "verify", "--json")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert json.loads(verified.stdout)["table_rows"] == 50
    again = _run_cli(lake, "migrate", "--stream-start", "2025-03-03T00:00:00Z")
    assert again.returncode == 0 and "already migrated" in again.stdout
    assert pq.read_table(storage.path(read_snapshot(storage).keys[0])).num_rows == 50


def test_cli_bad_setting_exits_2_with_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "DATA_LAKE_PATH": str(tmp_path), "COMPACTION_GRACE_SECONDS": "soon"}
    out = subprocess.run(
        [sys.executable, "-m", "lake", "stats"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0
    assert "COMPACTION_GRACE_SECONDS='soon'" in out.stderr
