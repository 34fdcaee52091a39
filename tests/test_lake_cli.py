from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa

from lake import layout
from lake.audit import stats, verify
from lake.parquet import badge_metadata, open_writer, write_file
from lake.storage import LocalStorage
from testkit.processes import ROOT

T0 = datetime(2026, 11, 2, 9, 0, 0)


def _table(ids: list[int]) -> pa.Table:
    times = [T0 + timedelta(seconds=i) for i in ids]
    return pa.table(
        {
            "event_id": pa.array(ids, pa.int64()),
            "badge_out_timestamp": pa.array(times, pa.timestamp("us")),
        }
    )


def _landing(storage: LocalStorage, lo: int, hi: int) -> str:
    return write_file(storage, _table(list(range(lo, hi + 1))), layout.LANDING, "landing").key


def _run_cli(lake: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATA_LAKE_PATH": str(lake)}
    return subprocess.run(
        [sys.executable, "-m", "lake", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def test_whole_lake_verifies_and_stats_count_zones(storage: LocalStorage) -> None:
    a = _landing(storage, 0, 9)
    b = _landing(storage, 10, 19)
    write_file(
        storage, _table(list(range(20))), layout.COMPACTED, "compacted", {layout.META_SOURCES: json.dumps([a, b])}
    )
    _landing(storage, 20, 24)
    report = verify(storage, grace_seconds=2)
    assert report.ok, report.problems
    assert report.live_rows == 25 and report.max_event_id == 24
    assert any("awaiting deletion" in n for n in report.notes)

    now = T0 + timedelta(seconds=30)
    data = stats(storage, now=now.replace(tzinfo=UTC))
    assert data["zones"]["landing"] == {"files": 3, "rows": 25, "bytes": data["zones"]["landing"]["bytes"]}
    assert data["zones"]["compacted"]["rows"] == 20
    assert data["live"]["rows"] == 25 and data["live"]["files"] == 2
    assert data["newest_event_time"] == (T0 + timedelta(seconds=24)).replace(tzinfo=UTC).isoformat()
    assert data["freshness_lag_seconds"] == 6.0


def test_duplicates_gaps_and_bad_metadata_fail(storage: LocalStorage) -> None:
    _landing(storage, 0, 9)
    _landing(storage, 5, 12)  # overlaps: 5..9 twice
    report = verify(storage, grace_seconds=2)
    assert not report.ok
    assert any("more than once" in p for p in report.problems)

    for f in storage.list_files(layout.LANDING):
        storage.delete(f.key)
    _landing(storage, 0, 9)
    _landing(storage, 12, 14)
    report = verify(storage, grace_seconds=2)
    assert any("2 event ids missing (the first is 10)" in p for p in report.problems)

    for f in storage.list_files(layout.LANDING):
        storage.delete(f.key)
    name = layout.new_file_name("landing", 0, 3)
    with storage.staged(name) as tmp:
        with open_writer(tmp, _table([0, 1, 2, 3]).schema, badge_metadata(0, 3, 5)) as w:
            w.write_table(_table([0, 1, 2, 3]))
        storage.publish(tmp, layout.LANDING, name)
    report = verify(storage, grace_seconds=2)
    assert any("badge.row_count=5 but the file holds 4 rows" in p for p in report.problems)


def test_quarantined_ids_are_accounted_and_orphans_flagged(storage: LocalStorage) -> None:
    _landing(storage, 0, 4)
    write_file(storage, _table([5, 6]), layout.QUARANTINE, "quarantine")
    _landing(storage, 7, 9)
    report = verify(storage, grace_seconds=2)
    assert report.ok, report.problems
    assert report.quarantined_rows == 2
    write_file(storage, _table([10]), layout.QUARANTINE, "quarantine")  # no landing file after it
    report = verify(storage, grace_seconds=2)
    assert any("unfinished flush" in p for p in report.problems)


def test_leftover_temp_and_foreign_files_fail(storage: LocalStorage) -> None:
    _landing(storage, 0, 4)
    (storage.root / "temp" / "landing-x.parquet.1234.tmp").write_bytes(b"partial")
    (storage.root / "landing" / "junk.parquet").write_bytes(b"junk")
    problems = verify(storage, grace_seconds=2).problems
    assert any("leftover file(s) in temp/" in p for p in problems)
    assert any("landing/junk.parquet: not a readable badge data file" in p for p in problems)


def test_cli_exit_codes_and_json(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    empty = _run_cli(lake, "verify")
    assert empty.returncode == 0, empty.stderr
    assert "verify OK" in empty.stdout
    storage = LocalStorage(lake)
    storage.ensure_layout()
    _landing(storage, 0, 9)
    out = _run_cli(lake, "stats", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["live"]["rows"] == 10
    assert "live set" in _run_cli(lake, "stats").stdout
    _landing(storage, 9, 10)
    bad = _run_cli(lake, "verify", "--json")
    assert bad.returncode == 1
    assert json.loads(bad.stdout)["ok"] is False


def test_cli_bad_setting_exits_2_with_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "DATA_LAKE_PATH": str(tmp_path), "COMPACTION_GRACE_SECONDS": "soon"}
    out = subprocess.run(
        [sys.executable, "-m", "lake", "stats"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0
    assert "COMPACTION_GRACE_SECONDS='soon'" in out.stderr
