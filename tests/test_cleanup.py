"""The clean-up after grace: files out of their table are deleted only once they have been absent for the grace
period (observed through the log) and are older than it; nothing else is ever touched."""

from __future__ import annotations

import os
import threading

import numpy as np
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from lake import layout
from lake.cleanup import IN_FLIGHT_SECONDS, STEP_DELETED, STEP_DELETING, GraceCleanup
from lake.compaction import Compactor
from lake.filestats import FileStats
from lake.parquet import write_file
from lake.storage import FileInfo, LocalStorage
from lake.table import LOG_DIR, LakeTable, QuarantineTable, SnapshotReader, read_snapshot
from testkit.clock import ManualClock
from testkit.fake_source import as_refused
from testkit.ids import assert_exactly_once, file_ids
from testkit.landing import commit_files, disk_keys, forge_compacted, publish_landing, table_keys
from testkit.records import lake_table, make_records
from utils.config import Settings
from utils.errors import LakeError, UnmigratedLakeError

GRACE = 10.0


def _cleanup(storage: LocalStorage, clock: ManualClock, **kwargs: object) -> GraceCleanup:
    return GraceCleanup(storage, GRACE, clock=clock, **kwargs)  # type: ignore[arg-type]


def _compacted(storage: LocalStorage, settings: Settings) -> list[str]:
    """Compact what is due; returns the keys the compaction removed from the table."""
    before = set(table_keys(storage))
    metrics = Compactor(storage, settings).compact()
    assert metrics is not None
    return sorted(before - set(table_keys(storage)))


def test_a_file_removed_from_the_table_is_deleted_only_after_grace(storage: LocalStorage, settings: Settings) -> None:
    publish_landing(storage, 0, 1_000, 8)
    removed = _compacted(storage, settings)
    [out] = table_keys(storage)
    clock = ManualClock()
    steps: list[tuple[str, str]] = []
    cleanup = _cleanup(storage, clock, hook=lambda s, k: steps.append((s, k)))

    assert cleanup.run() == []  # first seen absent now
    clock.advance(GRACE - 0.01)
    assert cleanup.run() == []
    assert all(storage.exists(k) for k in removed)
    clock.advance(0.01)
    assert sorted(cleanup.run()) == removed
    assert disk_keys(storage) == [out]
    assert [s for s, _ in steps] == [STEP_DELETING, STEP_DELETED] * len(removed)
    assert_exactly_once(storage, range(8_000))
    assert cleanup.run() == [] and cleanup.absent_since == {}  # idempotent, nothing remembered


def test_orphans_and_foreign_files_go_only_after_grace_and_only_once_old(storage: LocalStorage) -> None:
    committed = publish_landing(storage, 0, 1_000, 3)
    orphan = publish_landing(storage, 3_000, 1_000, 1, commit=False)[0]  # a writer crashed before its commit
    forged = forge_compacted(storage, [f.key for f in committed])
    notes = storage.path("landing/notes.txt")
    notes.write_text("not a data file")
    fresh = publish_landing(storage, 4_000, 1_000, 1, commit=False)[0]
    clock = ManualClock()
    cleanup = _cleanup(storage, clock)
    # fresh: as if it had only just been published (a writer about to commit it) at every look
    assert cleanup.run() == []
    os.utime(storage.path(fresh.key), (clock.advance(GRACE), clock.now))
    deleted = cleanup.run()
    assert sorted(deleted) == sorted([orphan.key, forged.key, "landing/notes.txt"])
    assert storage.exists(fresh.key)  # absent for the grace period, but not older than it
    assert table_keys(storage) == [f.key for f in committed] and all(storage.exists(f.key) for f in committed)
    clock.advance(GRACE)
    assert cleanup.run() == [fresh.key]


def test_a_file_added_and_removed_between_two_looks_gets_its_full_grace(
    storage: LocalStorage, settings: Settings
) -> None:
    """Sampling alone would miss it: the log between the two looks shows it was in the table meanwhile."""
    publish_landing(storage, 0, 1_000, 7)
    late = publish_landing(storage, 7_000, 1_000, 1, commit=False)[0]  # published, its commit not yet made
    clock = ManualClock()
    cleanup = _cleanup(storage, clock)
    assert cleanup.run() == []
    assert late.key in cleanup.absent_since

    clock.advance(GRACE + 1)
    commit_files(storage, [late])  # the writer commits it ...
    assert late.key in _compacted(storage, settings)  # ... and a compaction removes it again, before the next look
    assert cleanup.run() == []  # removed just now as far as a reader can tell: its grace starts again
    assert storage.exists(late.key)
    clock.advance(GRACE)
    assert late.key in cleanup.run()
    assert_exactly_once(storage, range(8_000))


def test_when_the_log_between_two_looks_is_gone_every_clock_starts_again(storage: LocalStorage) -> None:
    publish_landing(storage, 0, 1_000, 2)
    orphan = publish_landing(storage, 2_000, 1_000, 1, commit=False)[0]
    clock = ManualClock()
    cleanup = _cleanup(storage, clock)
    assert cleanup.run() == []
    first = read_snapshot(storage).version
    assert first is not None
    publish_landing(storage, 3_000, 1_000, 2)
    DeltaTable(str(storage.root)).create_checkpoint()
    (storage.root / LOG_DIR / f"{first + 1:020d}.json").unlink()  # as the log clean-up does after a checkpoint
    clock.advance(GRACE + 1)
    assert cleanup.run() == []  # it cannot tell what happened in between: it waits again
    clock.advance(GRACE)
    assert cleanup.run() == [orphan.key]


def test_a_restart_starts_every_clock_again(storage: LocalStorage) -> None:
    publish_landing(storage, 0, 1_000, 2)
    orphan = publish_landing(storage, 2_000, 1_000, 1, commit=False)[0]
    clock = ManualClock()
    assert _cleanup(storage, clock).run() == []
    clock.advance(GRACE + 1)
    restarted = _cleanup(storage, clock)
    assert restarted.run() == []
    clock.advance(GRACE)
    assert restarted.run() == [orphan.key]


def _quarantine_file(storage: LocalStorage, start: int) -> tuple[FileInfo, FileStats]:
    refused = as_refused(make_records(start, 5), "dept: unknown department")
    info = write_file(storage, refused, layout.QUARANTINE, "quarantine")
    return info, FileStats.of_table(refused, ("event_id",))


def test_quarantine_files_out_of_their_table_go_and_nothing_else_is_touched(storage: LocalStorage) -> None:
    publish_landing(storage, 0, 1_000, 2)
    table = QuarantineTable.open(storage, create=True)
    assert table is not None
    kept, kept_stats = _quarantine_file(storage, 100)
    taken_back, taken_back_stats = _quarantine_file(storage, 5_000)
    table.append(kept, kept_stats)
    table.append(taken_back, taken_back_stats)
    orphan, _ = _quarantine_file(storage, 6_000)
    [entry] = [f for f in table.data_files() if f.key == taken_back.key]
    table.remove([entry], "orphan")  # a restarted pipeline takes back what its crashed self added
    untouchable = [
        storage.root / ".pipeline.lock",
        storage.root / ".compactor.lock",
        storage.root / layout.QUARANTINE / ".hidden.parquet",
        storage.root / layout.LANDING / ".partial.parquet",
        storage.root / layout.TEMP / "landing-x.parquet.1234.tmp",
        storage.root / layout.QUARANTINE / "notes.txt",
    ]
    for path in untouchable:
        path.write_text("x")
        os.utime(path, (0, 0))
    logs = sorted(p for p in storage.root.rglob("*") if LOG_DIR in p.parts)

    clock = ManualClock()
    cleanup = _cleanup(storage, clock)
    assert cleanup.run() == []
    clock.advance(GRACE)
    assert sorted(cleanup.run()) == sorted([taken_back.key, orphan.key])
    assert storage.exists(kept.key) and [f.key for f in table.data_files()] == [kept.key]
    assert all(p.exists() for p in untouchable)
    assert sorted(p for p in storage.root.rglob("*") if LOG_DIR in p.parts) == logs


def test_nothing_is_deleted_while_the_lake_has_no_table(storage: LocalStorage) -> None:
    stray = storage.path("quarantine/stray.parquet")
    stray.write_bytes(b"PAR1")
    os.utime(stray, (0, 0))
    clock = ManualClock()
    cleanup = _cleanup(storage, clock)
    assert cleanup.run() == []
    clock.advance(10 * GRACE)
    assert cleanup.run() == [] and stray.exists()
    write_file(storage, lake_table(0, 10), layout.LANDING, "landing")  # the previous layout
    with pytest.raises(UnmigratedLakeError):
        cleanup.run()


def test_a_log_that_cannot_be_read_deletes_nothing(storage: LocalStorage, monkeypatch: pytest.MonkeyPatch) -> None:
    publish_landing(storage, 0, 1_000, 2)
    orphan = publish_landing(storage, 2_000, 1_000, 1, commit=False)[0]
    clock = ManualClock()
    cleanup = _cleanup(storage, clock)
    assert cleanup.run() == []
    clock.advance(GRACE)

    def unreadable(_self: LakeTable) -> None:
        raise LakeError("injected: the log cannot be read")

    with monkeypatch.context() as patch:
        patch.setattr(LakeTable, "refresh", unreadable)
        assert cleanup.run() == []  # never "empty table, so everything goes"
    assert storage.exists(orphan.key)
    assert cleanup.run() == [orphan.key]


def test_a_stop_ends_the_deletions(storage: LocalStorage) -> None:
    publish_landing(storage, 0, 1_000, 1)
    orphans = publish_landing(storage, 1_000, 1_000, 3, commit=False)
    clock = ManualClock()
    stop = threading.Event()
    cleanup = _cleanup(storage, clock, hook=lambda s, _k: stop.set() if s == STEP_DELETED else None)
    cleanup.run()
    clock.advance(GRACE)
    assert len(cleanup.run(stop)) == 1
    assert len([f for f in orphans if storage.exists(f.key)]) == 2


def test_a_reader_holding_an_older_snapshot_reads_it_whole_throughout_the_grace_period(
    storage: LocalStorage, settings: Settings
) -> None:
    publish_landing(storage, 0, 1_000, 8)
    reader = SnapshotReader(storage)
    held = reader.snapshot()  # a reader takes its snapshot, then reads slowly
    removed = _compacted(storage, settings)
    assert sorted(held.keys) == removed
    clock = ManualClock()
    cleanup = _cleanup(storage, clock)
    for _ in range(10):  # the clean-up runs again and again during the grace period
        assert cleanup.run() == []
        assert np.array_equal(np.sort(file_ids(held.paths)), np.arange(8_000))
        clock.advance(GRACE / 10 - 0.001)
    clock.advance(0.01)
    assert sorted(cleanup.run()) == removed
    with pytest.raises(FileNotFoundError):
        pq.read_table(held.paths[0])  # past the grace period: a newer snapshot exists, take it
    assert np.array_equal(np.sort(file_ids(reader.snapshot().paths)), np.arange(8_000))


def test_the_compactor_cleans_up_each_cycle_and_at_recovery(storage: LocalStorage, settings: Settings) -> None:
    orphan = publish_landing(storage, 0, 1_000, 1, commit=False)[0]
    publish_landing(storage, 1_000, 1_000, 8)
    clock = ManualClock()
    compactor = Compactor(storage, settings, clock=clock)
    half = settings.compaction_grace_seconds / 2
    assert compactor.recover() == {"temp_removed": [], "deleted": []}
    clock.advance(half)
    report = compactor.run_cycle()
    assert len(report.compactions) == 1 and report.deleted == []
    clock.advance(half)
    assert compactor.recover()["deleted"] == [orphan.key]  # absent since the first look, its sources not yet
    clock.advance(half)
    deleted = compactor.run_cycle().deleted
    assert len(deleted) == 8 and disk_keys(storage) == table_keys(storage)
    assert_exactly_once(storage, range(1_000, 9_000))


def test_a_file_in_flight_survives_even_a_zero_grace_period(storage: LocalStorage) -> None:
    publish_landing(storage, 0, 1_000, 1)
    in_flight = publish_landing(storage, 1_000, 1_000, 1, commit=False)[0]  # published, its commit a moment away
    clock = ManualClock()
    cleanup = GraceCleanup(storage, 0.0, clock=clock)
    assert cleanup.run() == []
    clock.advance(IN_FLIGHT_SECONDS / 2)
    assert cleanup.run() == [] and storage.exists(in_flight.key)
    commit_files(storage, [in_flight])  # the commit lands: the file is the lake's and stays
    clock.advance(IN_FLIGHT_SECONDS)
    assert cleanup.run() == []
    assert_exactly_once(storage, range(2_000))
