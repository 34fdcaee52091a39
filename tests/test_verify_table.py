"""``python -m lake verify`` on the table: each way a lake can fail to be whole is found, and named.

Every lake here is built through the table's API (committed files, the pipeline's position, the
quarantine table); the damage is then done by hand, the way a bug, a forger or a disk would do it.
"""

from __future__ import annotations

import dataclasses
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lake import audit, layout
from lake.filestats import FileStats
from lake.parquet import write_file
from lake.quarantine import commit_refused
from lake.storage import FileInfo, LocalStorage
from lake.table import LakeTable, read_snapshot
from testkit import lakes as lg
from testkit.fake_source import as_refused
from testkit.landing import commit_files, ensure_table, publish_landing
from testkit.records import lake_table, make_records
from utils.errors import UnmigratedLakeError

GRACE = 30.0


def _verify(storage: LocalStorage) -> audit.VerifyReport:
    return audit.verify(storage, GRACE)


def _only_problem(report: audit.VerifyReport, *parts: str) -> str:
    """The one problem of ``report``; it must contain every one of ``parts``."""
    assert len(report.problems) == 1, report.problems
    problem = report.problems[0]
    for part in parts:
        assert part in problem, (part, problem)
    return problem


def _refuse(storage: LocalStorage, start: int, count: int, reason: str = "dept: unknown department") -> FileInfo:
    return commit_refused(storage, as_refused(make_records(start, count), reason))


def _commit(storage: LocalStorage, table: pa.Table, stats: FileStats | None = None, through: int | None = None) -> str:
    """Publish ``table`` into landing/ and commit it with ``stats`` (default: its true statistics)."""
    lake = ensure_table(storage)
    info = write_file(storage, table, layout.LANDING, "landing")
    stats = stats or FileStats.of_table(table)
    position = lake.committed_event_id()
    top = through if through is not None else max(stats.event_id_max or -1, -1 if position is None else position)
    lake.append(info, stats, through_event_id=top, expected=position)
    return info.key


def test_a_whole_lake_with_quarantine_and_files_beside_it_verifies(storage: LocalStorage) -> None:
    publish_landing(storage, 0, 100, 2)
    _refuse(storage, 200, 5)
    publish_landing(storage, 205, 95, 1)
    replaced = [f.info for f in read_snapshot(storage).files[:2]]
    lg.compact(storage, replaced)  # its sources stay on disk, out of the table, until the clean-up
    # Lying around, in no table: foreign files, forged files, an orphan landing file, an orphan quarantine file.
    lg.add_foreign_file(storage)
    lg.add_foreign_file(storage, zone=layout.COMPACTED)
    snap = read_snapshot(storage)
    built = lg.BuiltLake(
        storage,
        lake_table(0, 300),
        [f.info for f in snap.in_zone(layout.LANDING)],
        [f.info for f in snap.in_zone(layout.COMPACTED)],
        replaced,
    )
    lg.add_forged_files(storage, built)
    publish_landing(storage, 300, 50, 1, commit=False)
    write_file(storage, as_refused(make_records(350, 3), "x"), layout.QUARANTINE, "quarantine")
    (storage.root / layout.TEMP / "landing-x.parquet.1234.tmp").write_bytes(b"partial")

    report = _verify(storage)
    assert report.ok, report.problems
    assert (report.committed_event_id, report.table_rows, report.quarantined_rows) == (299, 295, 5)
    assert report.files_checked == 3  # the compacted file, the last landing file, the quarantine file
    assert any("no table holds" in n for n in report.notes)
    assert any("temp/" in n for n in report.notes)


def test_an_empty_lake_verifies(tmp_path: Path) -> None:
    for storage in (LocalStorage(tmp_path / "missing"), LocalStorage(tmp_path / "empty")):
        report = _verify(storage)
        assert report.ok and report.table_rows == 0
    storage = LocalStorage(tmp_path / "table")
    storage.ensure_layout()
    ensure_table(storage)
    assert _verify(storage).ok


def test_a_file_of_the_snapshot_deleted_from_disk_fails_by_name(storage: LocalStorage) -> None:
    infos = publish_landing(storage, 0, 100, 3)
    storage.delete(infos[1].key)
    report = _verify(storage)
    assert any(f"{infos[1].key}: in the table's log" in p and "missing from disk" in p for p in report.problems)
    assert any("100 event id(s) from 0 to 299" in p and "the first: 100, 101, 102" in p for p in report.problems)


def test_rows_that_contradict_the_log_fail_by_name(storage: LocalStorage) -> None:
    table = lake_table(0, 100)
    true = FileStats.of_table(table)
    key = _commit(storage, table, dataclasses.replace(true, rows=101))
    _only_problem(_verify(storage), key, "numRecords=101 in the log but the file holds 100 rows")

    storage2 = LocalStorage(storage.root.parent / "lake2")
    storage2.ensure_layout()
    late = true.maximum["badge_out_timestamp"] + timedelta(days=30)
    key = _commit(storage2, table, dataclasses.replace(true, maximum={**true.maximum, "badge_out_timestamp": late}))
    _only_problem(_verify(storage2), key, "max badge_out_timestamp is", "in the log but")

    storage3 = LocalStorage(storage.root.parent / "lake3")
    storage3.ensure_layout()
    inflated = dataclasses.replace(true, maximum={**true.maximum, "event_id": 9_999_999})
    key = _commit(storage3, table, inflated, through=99)
    _only_problem(_verify(storage3), key, "max event_id is 9999999 in the log but 99 in the file")


def test_a_missing_event_id_fails_naming_its_neighbours(storage: LocalStorage) -> None:
    first = _commit(storage, lake_table(0, 100))
    second = _commit(storage, lake_table(110, 90))
    _only_problem(
        _verify(storage),
        "10 event id(s) from 0 to 199 are neither in the table nor in quarantine",
        "the first: 100, 101, 102",
        f"after {first}",
        f"before {second}",
    )


def test_an_id_both_in_the_table_and_in_quarantine_fails(storage: LocalStorage) -> None:
    held = _commit(storage, lake_table(0, 200))
    refused = _refuse(storage, 50, 3)
    _only_problem(_verify(storage), refused.key, "3 quarantined record(s) also in the table (e.g. 50, 51, 52", held)


def test_an_id_in_two_files_of_the_table_fails(storage: LocalStorage) -> None:
    first = _commit(storage, lake_table(0, 100))
    second = _commit(storage, lake_table(90, 60))
    _only_problem(_verify(storage), second, "10 event id(s) also in the table (e.g. 90, 91, 92", first)


def test_the_same_file_added_twice_fails(storage: LocalStorage) -> None:
    (info,) = publish_landing(storage, 0, 100, 1)
    twin = f"{layout.LANDING}/{layout.new_file_name('landing', 0, 99)}"
    os.link(storage.path(info.key), storage.path(twin))
    lake = LakeTable.open(storage)
    st = storage.path(twin).stat()
    stats = FileStats.of_footer(pq.read_metadata(storage.path(twin)))
    lake.append(FileInfo(twin, st.st_size, st.st_mtime_ns), stats, through_event_id=99, expected=99)
    problems = _verify(storage).problems
    assert any("added twice" in p and info.key in p and twin in p for p in problems), problems
    assert any("100 event id(s) also in the table" in p for p in problems), problems


def test_ids_beyond_the_committed_position_fail(storage: LocalStorage) -> None:
    key = _commit(storage, lake_table(0, 100), through=49)
    _only_problem(_verify(storage), key, "50 event id(s) outside 0..49", "e.g. 50, 51, 52")


def test_a_quarantined_record_without_a_reason_fails(storage: LocalStorage) -> None:
    _commit(storage, lake_table(0, 10))
    refused = _refuse(storage, 10, 2, reason="  ")
    _commit(storage, lake_table(12, 10))
    _only_problem(_verify(storage), refused.key, "2 quarantined record(s) without a reason")


def test_an_unreadable_file_of_the_table_fails_by_name(storage: LocalStorage) -> None:
    infos = publish_landing(storage, 0, 100, 2)
    path = storage.path(infos[0].key)
    size = path.stat().st_size
    path.write_bytes(b"\0" * size)  # same size, not Parquet any more
    problems = _verify(storage).problems
    assert any(p.startswith(f"{infos[0].key}: unreadable") for p in problems), problems


def test_a_file_removed_by_a_compaction_mid_verify_restarts_on_the_newer_snapshot(
    storage: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    infos = publish_landing(storage, 0, 100, 3)
    real = audit._Verifier._read
    calls: list[str] = []

    def compaction_meanwhile(self: audit._Verifier, *args: Any, **kwargs: Any) -> Any:
        if not calls:
            lg.compact(storage, infos[:2])
            for info in infos[:2]:
                storage.delete(info.key)  # the clean-up, after the grace period
        calls.append(args[1].key)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(audit._Verifier, "_read", compaction_meanwhile)
    report = _verify(storage)
    assert report.ok, report.problems
    assert report.version == read_snapshot(storage).version and report.table_rows == 300
    assert calls[0] == infos[0].key and calls[1] != infos[0].key  # started over on the newer version


def test_an_unmigrated_lake_is_refused(storage: LocalStorage) -> None:
    write_file(storage, lake_table(0, 10), layout.LANDING, "landing")
    with pytest.raises(UnmigratedLakeError, match="python -m lake migrate"):
        _verify(storage)
    with pytest.raises(UnmigratedLakeError):
        audit.stats(storage)


def test_commit_files_helper_and_verify_agree_on_a_published_lake(storage: LocalStorage) -> None:
    table = lg.make_table(5_000, seed=3)
    lg.publish(storage, table, landing_files=4, compacted_share=0.5, compacted_files=2)
    infos = [write_file(storage, lake_table(5_000, 10), layout.LANDING, "landing")]
    commit_files(storage, infos)
    report = _verify(storage)
    assert report.ok, report.problems
    assert report.table_rows == 5_010 and report.committed_event_id == 5_009
