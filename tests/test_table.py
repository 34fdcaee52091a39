"""The lake's Delta tables: creation with the stream's identity, appends with the pipeline's position, fencing,
compaction commits, the quarantine table, and snapshots that only the log decides."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from lake import layout
from lake.filestats import FileStats
from lake.identity import StreamIdentity
from lake.parquet import write_file
from lake.storage import FileInfo, LocalStorage
from lake.table import APP_ID, LakeTable, QuarantineTable, SnapshotReader, has_log, read_snapshot
from testkit.fake_source import as_refused
from testkit.records import lake_table, make_records
from utils.errors import FencedError, LakeError, StaleInputsError, StreamMismatchError, UnmigratedLakeError

IDENTITY = StreamIdentity(seed=42, events_per_second=200.0, stream_start="2025-03-03T00:00:00Z")


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    s = LocalStorage(tmp_path / "lake")
    s.ensure_layout()
    return s


def landing(storage: LocalStorage, start: int, count: int) -> tuple[FileInfo, FileStats]:
    table = lake_table(start, count)
    return write_file(storage, table, layout.LANDING, "landing"), FileStats.of_table(table)


def test_an_empty_lake_has_an_empty_snapshot_and_no_table(storage: LocalStorage) -> None:
    snap = read_snapshot(storage)
    assert snap.version is None and snap.is_empty and snap.next_event_id == 0
    assert not has_log(storage.root)


def test_created_with_the_stream_identity_and_mismatch_refused_before_writing(storage: LocalStorage) -> None:
    table = LakeTable.open_or_create(storage, IDENTITY)
    assert table.identity == IDENTITY and table.version == 0
    other = StreamIdentity(seed=7, events_per_second=200.0, stream_start="2025-03-03T00:00:00Z")
    with pytest.raises(StreamMismatchError, match=r"seed 42.*seed 7") as info:
        LakeTable.open_or_create(storage, other)
    assert "\n" not in str(info.value)
    assert LakeTable.open(storage).version == 0  # nothing written


def test_appends_move_the_position_and_the_snapshot_is_the_log(storage: LocalStorage) -> None:
    table = LakeTable.open_or_create(storage, IDENTITY)
    expected = None
    for start in (0, 100, 200):
        info, stats = landing(storage, start, 100)
        table.append(info, stats, through_event_id=start + 99, expected=expected)
        expected = start + 99
    # a file nobody committed (foreign, forged or orphaned) is not the lake
    write_file(storage, lake_table(300, 100), layout.LANDING, "landing")
    snap = read_snapshot(storage)
    assert snap.rows == 300 and len(snap.files) == 3
    assert snap.committed_event_id == 299 and snap.next_event_id == 300
    assert [(f.event_id_min, f.event_id_max, f.row_count) for f in snap.files] == [
        (0, 99, 100),
        (100, 199, 100),
        (200, 299, 100),
    ]
    newest = max(lake_table(0, 300)["badge_out_timestamp"].to_pylist())
    assert snap.newest_event_time == newest
    assert DeltaTable(str(storage.root)).transaction_version(APP_ID) == 299


def test_a_stale_writer_is_fenced_not_duplicated(storage: LocalStorage) -> None:
    first = LakeTable.open_or_create(storage, IDENTITY)
    zombie = LakeTable.open(storage)  # both at position None
    info, stats = landing(storage, 0, 100)
    first.append(info, stats, through_event_id=99, expected=None)
    info2, stats2 = landing(storage, 0, 100)  # the zombie re-fetched the same records
    with pytest.raises(FencedError):
        zombie.append(info2, stats2, through_event_id=99, expected=None)
    snap = read_snapshot(storage)
    assert snap.rows == 100 and snap.keys == [info.key]


def test_a_commit_that_landed_before_its_error_is_not_committed_twice(
    storage: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = LakeTable.open_or_create(storage, IDENTITY)
    info, stats = landing(storage, 0, 100)
    real_refresh = table.refresh
    calls = {"n": 0}

    def refresh_fails_once() -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise LakeError("injected: the log could not be read after the commit")
        real_refresh()

    monkeypatch.setattr(table, "refresh", refresh_fails_once)
    with pytest.raises(LakeError, match="injected"):
        table.append(info, stats, through_event_id=99, expected=None)
    table.append(info, stats, through_event_id=99, expected=None)  # the retry sees it landed
    snap = read_snapshot(storage)
    assert snap.keys == [info.key] and snap.committed_event_id == 99


def test_compaction_replaces_in_one_commit_and_refuses_stale_inputs(storage: LocalStorage) -> None:
    table = LakeTable.open_or_create(storage, IDENTITY)
    expected = None
    for start in range(0, 300, 100):
        info, stats = landing(storage, start, 100)
        table.append(info, stats, through_event_id=start + 99, expected=expected)
        expected = start + 99
    inputs = table.snapshot().files
    merged = lake_table(0, 300)
    out = write_file(storage, merged, layout.COMPACTED, "compacted")
    table.replace(inputs[:3], [(out, FileStats.of_footer(pq.read_metadata(storage.path(out.key))))])
    snap = read_snapshot(storage)
    assert snap.keys == [out.key] and snap.rows == 300 and snap.committed_event_id == 299
    with pytest.raises(StaleInputsError):
        table.replace(inputs[:1], [])
    assert read_snapshot(storage).keys == [out.key]


def test_footer_stats_equal_table_stats(storage: LocalStorage) -> None:
    table = lake_table(1_000, 5_000)
    info = write_file(storage, table, layout.LANDING, "landing")
    from_footer = FileStats.of_footer(pq.read_metadata(storage.path(info.key)))
    assert from_footer == FileStats.of_table(table)
    stats = json.loads(from_footer.to_json())
    assert stats["numRecords"] == 5_000
    assert stats["minValues"]["event_id"] == 1_000 and stats["maxValues"]["event_id"] == 5_999
    assert "T" in stats["minValues"]["badge_in_timestamp"] and "Z" not in stats["minValues"]["badge_in_timestamp"]


def test_the_quarantine_table(storage: LocalStorage) -> None:
    assert QuarantineTable.open(storage) is None
    table = QuarantineTable.open(storage, create=True)
    assert table is not None
    refused = as_refused(make_records(10, 5), "dept: unknown department")
    info = write_file(storage, refused, layout.QUARANTINE, "quarantine")
    stats = FileStats.of_table(refused, ("event_id",))
    table.append(info, stats)
    table.append(info, stats)  # idempotent
    files = table.data_files()
    assert [(f.key, f.event_id_min, f.event_id_max, f.row_count) for f in files] == [(info.key, 10, 14, 5)]
    table.remove(files, "orphan")
    assert QuarantineTable.open(storage) is not None
    assert table.data_files() == ()


def test_a_lake_in_the_previous_layout_must_be_migrated(storage: LocalStorage) -> None:
    write_file(storage, lake_table(0, 10), layout.LANDING, "landing")
    with pytest.raises(UnmigratedLakeError, match="python -m lake migrate"):
        read_snapshot(storage)
    with pytest.raises(UnmigratedLakeError):
        LakeTable.open_or_create(storage, IDENTITY)


def test_a_snapshot_reader_follows_new_commits(storage: LocalStorage) -> None:
    reader = SnapshotReader(storage)
    assert reader.snapshot().is_empty
    table = LakeTable.open_or_create(storage, IDENTITY)
    info, stats = landing(storage, 0, 10)
    table.append(info, stats, through_event_id=9, expected=None)
    assert reader.snapshot().rows == 10
    info, stats = landing(storage, 10, 10)
    table.append(info, stats, through_event_id=19, expected=9)
    assert reader.snapshot().rows == 20
