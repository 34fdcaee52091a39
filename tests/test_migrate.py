"""``python -m lake migrate``: a lake in the previous layout (no log; its live set by the footers' rule) becomes
the events table and the quarantine table in place, exactly once, idempotently, and refuses a lake it cannot
trust without writing anything."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from lake import layout, legacy, migrate
from lake.filestats import FileStats
from lake.identity import StreamIdentity
from lake.lock import LakeLock
from lake.storage import FileInfo, LocalStorage
from lake.table import APP_ID, LOG_DIR, LakeTable, QuarantineTable, has_log, quarantine_files, read_snapshot
from testkit.fake_source import as_refused
from testkit.ids import file_ids, live_ids
from testkit.records import lake_table, make_records
from utils.errors import ConfigError, LakeError, LakeLockedError

IDENTITY = StreamIdentity(seed=42, events_per_second=200.0, stream_start="2025-03-03T00:00:00Z")


def old_file(
    storage: LocalStorage,
    zone: str,
    kind: str,
    table: pa.Table,
    *,
    sources: list[str] | None = None,
    claim: tuple[int, int, int] | None = None,
) -> FileInfo:
    """A file as the previous writer left it: whole, with the ``badge.*`` footer (``claim`` forges it)."""
    ids = table.column("event_id").to_pylist()
    lo, hi, rows = claim or ((min(ids), max(ids), len(ids)) if ids else (0, -1, 0))
    meta = {layout.META_EVENT_ID_MIN: str(lo), layout.META_EVENT_ID_MAX: str(hi), layout.META_ROW_COUNT: str(rows)}
    if sources is not None:
        meta[layout.META_SOURCES] = json.dumps(sources)
    name = layout.new_file_name(kind, max(lo, 0), max(hi, 0))
    path = storage.root / zone / name
    pq.write_table(table.replace_schema_metadata(meta), path, compression="snappy")
    st = path.stat()
    return FileInfo(f"{zone}/{name}", st.st_size, st.st_mtime_ns)


@dataclass(frozen=True)
class OldLake:
    storage: LocalStorage
    compacted: FileInfo
    replaced: list[FileInfo]  # still on disk, within their grace period
    refused: FileInfo  # confirmed: below the pipeline's position
    orphan_refused: FileInfo  # at or past the position: its flush never committed
    foreign: list[str]


def build_old_lake(root: Path) -> OldLake:
    """Ids 0..299 live (250..259 refused), a compaction whose sources linger, an orphan and foreign files."""
    storage = LocalStorage(root)
    storage.ensure_layout()
    replaced = [old_file(storage, layout.LANDING, "landing", lake_table(s, 100)) for s in (0, 100)]
    compacted = old_file(storage, layout.COMPACTED, "compacted", lake_table(0, 200), sources=[f.key for f in replaced])
    old_file(storage, layout.LANDING, "landing", lake_table(200, 50))
    refused = old_file(storage, layout.QUARANTINE, "quarantine", as_refused(make_records(250, 10), "dept: unknown"))
    old_file(storage, layout.LANDING, "landing", lake_table(260, 40))
    orphan = old_file(storage, layout.QUARANTINE, "quarantine", as_refused(make_records(300, 5), "dept: unknown"))
    (root / layout.LANDING / "notes.parquet").write_bytes(b"not parquet at all")
    moved = root / layout.QUARANTINE / "landing-foreign.parquet"
    pq.write_table(pa.table({"x": [1, 2]}), moved)
    (root / layout.QUARANTINE / "landing-foreign.parquet.reason.json").write_text('{"reason": "foreign"}\n')
    (root / migrate.STREAM_START_FILE).write_text("2025-03-03T00:00:00Z\n")
    foreign = ["landing/notes.parquet", "quarantine/landing-foreign.parquet"]
    return OldLake(storage, compacted, replaced, refused, orphan, foreign)


@pytest.fixture
def old(tmp_path: Path) -> OldLake:
    return build_old_lake(tmp_path / "lake")


def old_live_ids(storage: LocalStorage) -> np.ndarray:
    return np.sort(file_ids(legacy.live_set(storage, legacy.MetadataCache()).paths))


def test_the_live_set_becomes_the_table_exactly_once_with_the_position_as_txn(old: OldLake) -> None:
    storage = old.storage
    before = old_live_ids(storage)
    assert len(before) == 290 and len(np.unique(before)) == 290
    report = migrate.migrate(storage, IDENTITY)
    assert report["migrated"] is True and report["rows"] == 290 and report["committed_event_id"] == 299

    ids = np.sort(live_ids(storage))
    assert np.array_equal(ids, before)  # the old live set, each id exactly once
    snap = read_snapshot(storage)
    assert snap.committed_event_id == 299 and snap.next_event_id == 300
    assert DeltaTable(str(storage.root)).transaction_version(APP_ID) == 299
    assert old.compacted.key in snap.keys
    assert not {f.key for f in old.replaced} & set(snap.keys)
    assert not set(old.foreign) & set(snap.keys)
    assert all(storage.exists(key) for key in old.foreign)  # inert, where they were
    assert set(report["left_out"]) >= {*old.foreign, *(f.key for f in old.replaced), old.orphan_refused.key}

    refused = quarantine_files(storage)
    assert [(f.key, f.event_id_min, f.event_id_max, f.row_count) for f in refused] == [(old.refused.key, 250, 259, 10)]
    assert report["quarantine_files"] == 1 and report["quarantine_rows"] == 10
    # every id up to the position, exactly once, in the table or in quarantine
    quarantined = file_ids(storage.path(f.key) for f in refused)
    assert np.array_equal(np.sort(np.concatenate([ids, quarantined])), np.arange(300))


def test_statistics_come_from_the_rows_and_the_table_is_the_one_the_pipeline_would_create(
    old: OldLake, tmp_path: Path
) -> None:
    storage = old.storage
    migrate.migrate(storage, IDENTITY)
    table = LakeTable.open(storage)
    assert table.identity == IDENTITY
    actions = table.add_actions().to_pydict()
    for i, path in enumerate(actions["path"]):
        rows = pq.read_table(storage.path(path))
        expected = FileStats.of_table(rows)
        assert actions["num_records"][i] == rows.num_rows
        assert actions["min.event_id"][i] == expected.event_id_min
        assert actions["max.event_id"][i] == expected.event_id_max
        assert actions["max.badge_out_timestamp"][i] == expected.maximum["badge_out_timestamp"]
    # The previous layout's files span dates: the migrated table is the unpartitioned shape.
    fresh = LakeTable.open_or_create(LocalStorage(tmp_path / "fresh"), IDENTITY, partitioned=False)
    migrated = DeltaTable(str(storage.root))
    created = DeltaTable(str(fresh.root))
    assert migrated.metadata().configuration == created.metadata().configuration
    assert migrated.protocol() == created.protocol()
    assert migrated.schema() == created.schema()
    assert migrated.metadata().partition_columns == [] and not table.partitioned
    quarantine = QuarantineTable.open(storage)
    created_quarantine = QuarantineTable.open(LocalStorage(tmp_path / "fresh"), create=True)
    assert quarantine is not None and created_quarantine is not None
    assert quarantine.configuration == created_quarantine.configuration


def test_a_second_migration_does_nothing_and_says_so(old: OldLake) -> None:
    storage = old.storage
    migrate.migrate(storage, IDENTITY)
    log_before = sorted(os.listdir(storage.root / LOG_DIR))
    version = LakeTable.open(storage).version
    again = migrate.migrate(storage, IDENTITY)
    assert again["migrated"] is False and "already migrated" in again["message"]
    assert again["rows"] == 290 and again["version"] == version
    assert sorted(os.listdir(storage.root / LOG_DIR)) == log_before
    other = StreamIdentity(seed=7, events_per_second=1.0, stream_start="2030-01-01T00:00:00Z")
    assert migrate.migrate(storage, other)["migrated"] is False  # never rewrites a table's identity
    assert LakeTable.open(storage).identity == IDENTITY


def test_a_migration_that_crashed_between_its_tables_is_run_again(
    old: OldLake, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = old.storage
    expected = old_live_ids(storage)

    def crash(*args: object) -> None:
        raise KeyboardInterrupt("killed after the quarantine table was in place")

    monkeypatch.setattr(migrate, "_create_events_table", crash)
    with pytest.raises(KeyboardInterrupt):
        migrate.migrate(storage, IDENTITY)
    assert has_log(storage.root / layout.QUARANTINE) and not has_log(storage.root)
    assert legacy.live_set(storage).rows == 290  # still the old lake: every process refuses it until migrated
    monkeypatch.undo()

    report = migrate.migrate(storage, IDENTITY)
    assert report["migrated"] is True
    assert np.array_equal(np.sort(live_ids(storage)), expected)
    assert [f.key for f in quarantine_files(storage)] == [old.refused.key]
    assert not [p for p in (storage.root / layout.TEMP).iterdir() if p.name.startswith(migrate.STAGING_PREFIX)]


def test_a_migration_killed_while_staging_leaves_nothing_in_the_root(
    old: OldLake, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = old.storage
    real = migrate._install_log
    leftover = storage.root / layout.TEMP / f"{migrate.STAGING_PREFIX}leftover"

    def killed_before_the_rename(stage: Path, root: Path) -> None:
        if root == storage.root:
            shutil.copytree(stage.parent, leftover)  # what a kill -9 leaves: the staged logs in temp/
            raise KeyboardInterrupt
        real(stage, root)

    monkeypatch.setattr(migrate, "_install_log", killed_before_the_rename)
    with pytest.raises(KeyboardInterrupt):
        migrate.migrate(storage, IDENTITY)
    assert not has_log(storage.root) and has_log(leftover / "events")
    monkeypatch.undo()
    assert migrate.migrate(storage, IDENTITY)["migrated"] is True
    assert not leftover.exists()
    assert read_snapshot(storage).rows == 290 and len(quarantine_files(storage)) == 1


def test_a_footer_that_lies_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "inflated")
    storage.ensure_layout()
    old_file(storage, layout.LANDING, "landing", lake_table(0, 100))
    old_file(storage, layout.LANDING, "landing", lake_table(100, 10), claim=(100, 9_999_999, 10))
    with pytest.raises(LakeError, match=r"claims .* holds") as info:
        migrate.migrate(storage, IDENTITY)
    assert "nothing was written" in str(info.value) and "\n" not in str(info.value)
    assert not has_log(storage.root) and not has_log(storage.root / layout.QUARANTINE)


def test_a_forged_compacted_file_that_hides_rows_is_refused(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "forged")
    storage.ensure_layout()
    hidden = [old_file(storage, layout.LANDING, "landing", lake_table(s, 100)) for s in (0, 100, 200)]
    old_file(storage, layout.COMPACTED, "compacted", lake_table(0, 0), sources=[f.key for f in hidden])
    assert legacy.live_set(storage).rows == 0  # the old rule believed it
    with pytest.raises(LakeError, match="cannot have replaced them"):
        migrate.migrate(storage, IDENTITY)
    assert not has_log(storage.root)


def test_overlapping_files_are_refused(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "overlap")
    storage.ensure_layout()
    old_file(storage, layout.LANDING, "landing", lake_table(0, 100))
    old_file(storage, layout.LANDING, "landing", lake_table(50, 100))
    with pytest.raises(LakeError, match="share event ids"):
        migrate.migrate(storage, IDENTITY)
    assert not has_log(storage.root)


def test_migration_holds_both_locks(old: OldLake) -> None:
    for filename, role in ((layout.PIPELINE_LOCK, "pipeline"), (layout.COMPACTOR_LOCK, "compactor")):
        with LakeLock(old.storage.root, filename, role), pytest.raises(LakeLockedError, match=role):
            migrate.migrate(old.storage, IDENTITY)
        assert not has_log(old.storage.root)


def test_an_empty_lake_needs_no_migration_and_a_lake_of_foreign_files_gets_an_empty_table(tmp_path: Path) -> None:
    empty = LocalStorage(tmp_path / "empty")
    empty.ensure_layout()
    assert "nothing to migrate" in migrate.migrate(empty, IDENTITY)["message"]
    assert not has_log(empty.root)
    assert "no lake" in migrate.migrate(LocalStorage(tmp_path / "missing"), IDENTITY)["message"]
    assert not (tmp_path / "missing").exists()

    foreign = LocalStorage(tmp_path / "foreign")
    foreign.ensure_layout()
    (foreign.root / layout.LANDING / "x.parquet").write_bytes(b"junk")
    report = migrate.migrate(foreign, IDENTITY)
    assert report["migrated"] is True and report["files"] == 0 and report["committed_event_id"] is None
    assert read_snapshot(foreign).is_empty and report["left_out"] == ["landing/x.parquet"]


def test_the_identity_of_an_old_lake(old: OldLake) -> None:
    storage = old.storage
    assert migrate.legacy_identity(storage, 42, 200) == IDENTITY
    given = migrate.legacy_identity(storage, 42, 200.0, "2025-03-03T01:00:00+01:00")
    assert given.stream_start == "2025-03-03T00:00:00Z"
    with pytest.raises(ConfigError, match="EVENTS_PER_SECOND"):
        migrate.legacy_identity(storage, 42, 0)
    (storage.root / migrate.STREAM_START_FILE).unlink()
    with pytest.raises(ConfigError, match="GENERATOR_STREAM_START"):
        migrate.legacy_identity(storage, 42, 200)
