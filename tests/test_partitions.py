"""Date partitions and retention: one partition per UTC date of badge-out, never mixed; old dates leave whole.

The end-to-end tests feed a lake from the real service for three simulated days (a stream start three
days back at a low rate), compact it, expire it with ``RETENTION_DAYS=1``, and judge it by reading the
log (delta-rs, Polars) and the files themselves, and by ``verify``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from lake import layout, partitions, retention
from lake.audit import verify
from lake.cleanup import IN_FLIGHT_SECONDS
from lake.compaction import Compactor
from lake.storage import LocalStorage
from lake.table import LOG_DIR, RETENTION_APP_ID, LakeTable, QuarantineTable, read_snapshot
from lake.writer import BufferedWriter, FlushThresholds
from processes.pipeline import RunOptions, run
from testkit.fake_source import as_refused
from testkit.ids import live_ids
from testkit.processes import free_port, make_settings, running_service
from testkit.records import TEST_IDENTITY, make_records
from utils.config import Settings
from utils.errors import LakeError

RATE = 0.5  # events per second: three days are about 130,000 events


def utc_dates(table: pa.Table) -> set[date]:
    return set(partitions.dates_of(table).to_pylist())


def test_split_by_date_cuts_at_midnight_and_keeps_each_dates_rows_in_order() -> None:
    times = pa.array(
        [datetime(2026, 11, 29, 23, 59, 59), datetime(2026, 11, 30, 0, 0), datetime(2026, 11, 30, 8)],
        pa.timestamp("us"),
    )
    table = pa.table({"event_id": [1, 2, 3], "badge_out_timestamp": times})
    parts = partitions.split_by_date(table)
    assert [(d, t.column("event_id").to_pylist()) for d, t in parts] == [
        (date(2026, 11, 29), [1]),
        (date(2026, 11, 30), [2, 3]),
    ]
    shuffled = table.take([2, 0, 1])  # out of time order: each row still in its own date, order kept
    assert [(d, t.column("event_id").to_pylist()) for d, t in partitions.split_by_date(shuffled)] == [
        (date(2026, 11, 29), [1]),
        (date(2026, 11, 30), [3, 2]),
    ]
    assert partitions.split_by_date(table.slice(0, 0)) == []


def test_a_flush_spanning_midnight_is_one_commit_of_one_file_per_date(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "lake")
    table = LakeTable.open_or_create(storage, TEST_IDENTITY)
    assert table.partitioned
    records = make_records(17_200, 200)  # badge-ins every 5 s from 2025-03-03: these cross into 2025-03-04
    days = utc_dates(records)
    assert len(days) >= 2
    before = table.version
    with BufferedWriter(storage, FlushThresholds(1_000, 60), table=table, position=None) as writer:
        writer.add(records)
    table.refresh()
    assert table.version == before + 1  # one commit
    files = read_snapshot(storage).files
    assert {f.partition for f in files} == days and len(files) == len(days)
    for f in files:
        assert f.key.startswith(f"{layout.LANDING}/date={f.partition}/")
        assert utc_dates(pq.read_table(storage.path(f.key))) == {f.partition}
    adds = [json.loads(line)["add"] for line in _log_lines(storage, table.version) if "add" in json.loads(line)]
    assert sorted(a["partitionValues"]["date"] for a in adds) == sorted(d.isoformat() for d in days)
    assert sorted(live_ids(storage).tolist()) == list(range(17_200, 17_400))  # each once


def test_a_table_from_before_partitions_keeps_working_unpartitioned(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "lake")
    table = LakeTable.open_or_create(storage, TEST_IDENTITY, partitioned=False)
    with BufferedWriter(storage, FlushThresholds(1_000, 60), table=table, position=None) as writer:
        writer.add(make_records(17_200, 200))
    [f] = read_snapshot(storage).files
    assert f.partition is None and f.key.count("/") == 1  # landing/<name>: one file across both dates
    assert not LakeTable.open(storage).partitioned


def _log_lines(storage: LocalStorage, version: int) -> list[str]:
    return (storage.root / LOG_DIR / f"{version:020d}.json").read_text().splitlines()


# -- three simulated days, end to end ------------------------------------------------------------------
@pytest.fixture(scope="module")
def three_days(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, dict[str, str], int]]:
    """A lake fed by the pipeline from the real service whose stream started at noon three dates back."""
    root = tmp_path_factory.mktemp("three-days") / "lake"
    today = datetime.now(UTC).date()
    start = datetime.combine(today - timedelta(days=3), datetime.min.time()).replace(hour=12)
    port = free_port()
    env = {
        "GENERATOR_SEED": "7",
        "EVENTS_PER_SECOND": str(RATE),
        "GENERATOR_STREAM_START": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "DATA_LAKE_PATH": str(root),
    }
    settings = make_settings(
        root,
        EMPLOYEE_BADGE_LOGS_URL=f"http://127.0.0.1:{port}/employee-badge-logs/",
        BATCH_SIZE=20_000,
        BUFFER_RECORDS=7_000,
        COMPACTION_MIN_FILES=4,
        COMPACTION_GRACE_SECONDS=0,
        **{k: v for k, v in env.items() if k != "DATA_LAKE_PATH"},
    )
    with running_service(env, port):
        # What the stream holds by now (its arrival rate follows the working day), less 1,000 left for later.
        available = int(httpx.get(f"http://127.0.0.1:{port}/").json()["stream"]["available"]) - 1_000
        assert available > 50_000
        assert run(settings, RunOptions(max_records=available, compaction=False)) == 0
    yield settings, env, available


def test_three_days_land_in_one_partition_per_date_and_compact_within_dates(
    three_days: tuple[Settings, dict[str, str], int],
) -> None:
    settings, _, available = three_days
    storage = LocalStorage(settings.local_lake_path("test"))
    snap = read_snapshot(storage)
    # noon three dates back and two whole dates (and today, unless the run is just after midnight UTC: the
    # last 1,000 events of the stream are left for later)
    assert len({f.partition for f in snap.files}) >= 3
    for f in snap.files:
        assert f.partition is not None and f"/date={f.partition.isoformat()}/" in f.key
        assert utc_dates(pq.read_table(storage.path(f.key), columns=["badge_out_timestamp"])) == {f.partition}

    compactor = Compactor(storage, settings)
    while compactor.run_cycle().compactions:
        pass
    snap = read_snapshot(storage)
    compacted = snap.in_zone(layout.COMPACTED)
    assert compacted and {f.partition for f in compacted} == {f.partition for f in snap.files}
    for f in compacted:  # no compacted file mixes dates, and each sits in its date's directory
        assert f.key.startswith(f"{layout.COMPACTED}/date={f.partition}/")
        assert utc_dates(pq.read_table(storage.path(f.key), columns=["badge_out_timestamp"])) == {f.partition}
    assert live_ids(storage).tolist() == list(range(available))
    assert verify(storage, grace_seconds=0).ok

    # Every engine reads the partition column from the log, and prunes by it.
    root = str(storage.root)
    frame = pl.read_delta(root)
    assert frame.height == available
    assert (frame["date"] == frame["badge_out_timestamp"].dt.date()).all()
    day = sorted(f.partition for f in compacted if f.partition is not None)[1]
    dt = DeltaTable(root)
    pruned = dt.file_uris(file_pruning_predicate=[(partitions.COLUMN, "=", day.isoformat())])
    assert pruned and all(f"date={day}" in uri for uri in pruned)
    one_day = pl.scan_delta(root).filter(pl.col("date") == day).select(pl.len()).collect().item()
    assert one_day == int((frame["date"] == day).sum()) > 0


def test_retention_removes_whole_old_dates_and_verify_knows_them_expired(
    three_days: tuple[Settings, dict[str, str], int],
) -> None:
    settings, env, available = three_days
    storage = LocalStorage(settings.local_lake_path("test"))
    today = datetime.now(UTC).date()
    first_kept = today - timedelta(days=1)
    kept_rows = int(
        pc.sum(pc.greater_equal(partitions.dates_of(_all_rows(storage)), pa.scalar(first_kept, pa.date32()))).as_py()
    )
    settings = settings.model_copy(update={"retention_days": 1})
    compactor = Compactor(storage, settings)
    report = compactor.run_cycle()
    assert report.expiry is not None and report.expiry.horizon == first_kept
    snap = read_snapshot(storage)
    assert snap.files and all(f.partition is not None and f.partition >= first_kept for f in snap.files)
    assert snap.rows == kept_rows
    expired = snap.expired_through
    assert expired is not None and min(f.event_id_min for f in snap.files) == expired + 1
    assert DeltaTable(str(storage.root)).transaction_version(RETENTION_APP_ID) == expired
    assert set(live_ids(storage).tolist()) == set(range(expired + 1, available))
    report_ok = verify(storage, grace_seconds=0)
    assert report_ok.ok, report_ok.problems
    assert report_ok.expired_through == expired
    # The files of the old dates leave the disk after grace (here 0 s; and never a file younger than
    # lake.cleanup.IN_FLIGHT_SECONDS), their directories with them.
    time.sleep(IN_FLIGHT_SECONDS + 0.1)
    compactor.run_cycle()
    for zone in layout.DATA_ZONES:
        left = {p.name for p in (storage.root / zone).iterdir()}
        assert all(date.fromisoformat(name.split("=")[1]) >= first_kept for name in left), left
    assert compactor.run_cycle().expiry is None  # nothing more is due: idempotent

    # The pipeline resumes after its position: it never fetches an expired event again.
    port = free_port()
    more = settings.model_copy(update={"employee_badge_logs_url": f"http://127.0.0.1:{port}/employee-badge-logs/"})
    with running_service({**env, "DATA_LAKE_PATH": str(storage.root)}, port):
        assert run(more, RunOptions(max_records=500, compaction=False)) == 0
    ids = live_ids(storage)
    assert ids.min() == expired + 1 and ids.max() == available + 499 and len(np.unique(ids)) == len(ids)
    assert verify(storage, grace_seconds=0).ok


def _all_rows(storage: LocalStorage) -> pa.Table:
    return pa.concat_tables(
        pq.read_table(storage.path(f.key), columns=["badge_out_timestamp"]) for f in read_snapshot(storage).files
    )


def test_retention_takes_the_refused_records_of_the_expired_dates_and_survives_a_failed_expiry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = LocalStorage(tmp_path / "lake")
    table = LakeTable.open_or_create(storage, TEST_IDENTITY)
    # Badge-ins every 5 s from 2025-03-03 (a bit over two days and a half), numbered in badge-out order as the
    # service numbers its records: ids then expire as a prefix (lake.retention).
    records = make_records(0, 40_000).sort_by("badge_out_timestamp")
    records = records.set_column(0, "event_id", pa.array(np.arange(40_000, dtype=np.int64)))
    bad = pa.array([i % 1_000 == 7 for i in range(40_000)])
    with BufferedWriter(storage, FlushThresholds(5_000, 60), table=table, position=None) as writer:
        for lo in range(0, 40_000, 5_000):
            chunk = records.slice(lo, 5_000)
            mask = bad.slice(lo, 5_000)
            writer.add(chunk.filter(pc.invert(mask)), as_refused(chunk.filter(mask), "bad"))
    first_kept = date(2025, 3, 5)
    quarantine = QuarantineTable.open(storage)
    assert quarantine is not None and len(quarantine.data_files()) == 8

    # A failed expiry is logged and tried again next cycle: compaction and clean-up go on meanwhile.
    settings = make_settings(storage.root, COMPACTION_MIN_FILES=4, RETENTION_DAYS=1)
    day_after = datetime.combine(first_kept + timedelta(days=1), datetime.min.time(), UTC).timestamp()
    compactor = Compactor(storage, settings, clock=lambda: day_after)

    def broken(*_: object, **__: object) -> None:
        raise LakeError("the log could not be written")

    monkeypatch.setattr(retention, "expire", broken)
    report = compactor.run_cycle()
    assert report.expiry is None and report.compactions
    monkeypatch.undo()
    report = compactor.run_cycle()
    assert report.expiry is not None and report.expiry.horizon == first_kept
    mark = report.expiry.expired_through
    snap = read_snapshot(storage)
    assert all(f.partition is not None and f.partition >= first_kept for f in snap.files)
    assert mark is not None and min(f.event_id_min for f in snap.files) == mark + 1
    left = QuarantineTable.open(storage)
    assert left is not None and all(f.event_id_max > mark for f in left.data_files())
    assert report.expiry.quarantine_files  # the refused records of the expired dates went with them
    outcome = verify(storage, grace_seconds=0)
    assert outcome.ok, outcome.problems
