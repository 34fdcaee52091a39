"""``python -m lake verify`` in bounded memory: the id space is judged window by window (lake.audit.WINDOW_IDS).

The window is shrunk here to a few hundred or thousand ids, so small lakes span many windows: files that
straddle windows, duplicates, gaps and quarantined ids across window boundaries must be found exactly as a
single pass over the whole id space finds them. Then, at the real window, a lake of a few thousand rows
whose ids span a billion must be verified without a ledger (or anything else) the size of that span.
"""

from __future__ import annotations

import errno
import tracemalloc
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lake import audit, layout
from lake import parquet as lake_parquet
from lake.filestats import FileStats
from lake.parquet import write_file
from lake.quarantine import commit_refused
from lake.storage import FileInfo, LocalStorage
from lake.table import RETENTION_APP_ID, LakeTable, read_snapshot
from testkit.fake_source import as_refused
from testkit.landing import ensure_table
from testkit.records import lake_table, make_records

GRACE = 30.0
WINDOW = 1_000  # ids per window in these tests (the real one is WINDOW_IDS, 32 Mi)
ROW_GROUP = 300  # rows per row group of the files written here: a file's row groups fall in several windows
MiB = 1024 * 1024


@pytest.fixture(autouse=True)
def small_row_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lake_parquet, "ROW_GROUP_ROWS", ROW_GROUP)


def _window(monkeypatch: pytest.MonkeyPatch, ids: int = WINDOW) -> None:
    monkeypatch.setattr(audit, "WINDOW_IDS", ids)


def _verify(storage: LocalStorage) -> audit.VerifyReport:
    return audit.verify(storage, GRACE)


def _commit(storage: LocalStorage, table: pa.Table, through: int | None = None) -> str:
    """Publish ``table`` into landing/ and commit it with its true statistics; the position never goes back."""
    lake = ensure_table(storage)
    info = write_file(storage, table, layout.LANDING, "landing")
    stats = FileStats.of_table(table)
    position = lake.committed_event_id()
    top = through if through is not None else max(stats.event_id_max or -1, -1 if position is None else position)
    lake.append(info, stats, through_event_id=top, expected=position)
    return info.key


def _refuse(storage: LocalStorage, start: int, count: int) -> FileInfo:
    return commit_refused(storage, as_refused(make_records(start, count), "dept: unknown department"))


def _sparse(ids: list[int]) -> pa.Table:
    """Lake records with exactly the event ids ``ids`` (in that order)."""
    return pa.concat_tables([lake_table(i, 1) for i in ids])


def _only_problem(report: audit.VerifyReport, *parts: str) -> str:
    assert len(report.problems) == 1, report.problems
    for part in parts:
        assert part in report.problems[0], (part, report.problems[0])
    return report.problems[0]


def _count_reads(monkeypatch: pytest.MonkeyPatch) -> Counter[tuple[str, tuple[str, ...]]]:
    """Rows handed out by the Parquet files verify opens, by (file, columns read)."""
    rows: Counter[tuple[str, tuple[str, ...]]] = Counter()
    parquet_file = pq.ParquetFile

    def counting(source: Any, *args: Any, **kwargs: Any) -> Any:
        opened = parquet_file(source, *args, **kwargs)
        iter_batches = opened.iter_batches

        def counted(*args: Any, **kwargs: Any) -> Iterator[pa.RecordBatch]:
            for batch in iter_batches(*args, **kwargs):
                rows[str(source), tuple(kwargs.get("columns") or ())] += batch.num_rows
                yield batch

        opened.iter_batches = counted
        return opened

    monkeypatch.setattr(pq, "ParquetFile", counting)
    return rows


# -- what verify finds, across windows -------------------------------------------------------------------


def test_a_whole_lake_spanning_many_windows_verifies_reading_each_file_once(
    storage: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _commit(storage, lake_table(0, 2_500))
    _refuse(storage, 2_500, 10)
    second = _commit(storage, lake_table(2_510, 3_490))  # 0..5999: six windows, both files straddle some
    whole = _verify(storage)
    assert whole.ok, whole.problems

    _window(monkeypatch)
    rows = _count_reads(monkeypatch)
    report = _verify(storage)
    assert report.ok, report.problems
    assert report.as_dict() == whole.as_dict()
    assert (report.table_rows, report.quarantined_rows, report.files_checked) == (5_990, 10, 3)
    for key, ids in ((first, np.arange(0, 2_500)), (second, np.arange(2_510, 6_000))):
        path = str(storage.path(key))
        assert rows[path, audit.EVENT_COLUMNS] == len(ids)  # read whole once, in the window of its first id
        # Then, in each later window, the event_id column of the row groups holding ids of it, and nothing else.
        again = 0
        for lo in range(0, len(ids), ROW_GROUP):
            group = ids[lo : lo + ROW_GROUP]
            again += len(group) * len(set((group // WINDOW).tolist()) - {int(ids[0]) // WINDOW})
        assert rows[path, ("event_id",)] == again
    assert {columns for _, columns in rows} == {audit.EVENT_COLUMNS, audit.QUARANTINE_COLUMNS, ("event_id",)}


def test_an_id_held_twice_across_windows_is_found(storage: LocalStorage, monkeypatch: pytest.MonkeyPatch) -> None:
    first = _commit(storage, lake_table(0, 3_200))
    second = _commit(storage, lake_table(1_800, 3_200))  # 1800..3199 twice: across windows 1, 2 and 3
    _window(monkeypatch)
    _only_problem(_verify(storage), second, "1400 event id(s) also in the table (e.g. 1800, 1801, 1802", first)


def test_an_id_twice_in_one_file_in_a_later_window_is_found(
    storage: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Read whole in window 1; 3500 is in window 3, once in the first row groups and once in the last.
    key = _commit(storage, pa.concat_tables([lake_table(1_000, 3_000), lake_table(3_500, 1)]))
    _commit(storage, lake_table(0, 1_000))
    _window(monkeypatch)
    _only_problem(_verify(storage), key, "1 event id(s) also in the table (e.g. 3500)")


def test_an_id_both_in_the_table_and_in_quarantine_across_windows_is_found(
    storage: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = _commit(storage, lake_table(0, 5_000))
    refused = _refuse(storage, 2_990, 21)  # across the boundary of windows 2 and 3
    _window(monkeypatch)
    _only_problem(_verify(storage), refused.key, "21 quarantined record(s) also in the table (e.g. 2990, 2991", held)


def test_ids_held_twice_in_quarantine_across_windows_are_found(
    storage: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    _commit(storage, lake_table(0, 1_990))
    _refuse(storage, 1_990, 30)
    again = _refuse(storage, 1_995, 10)
    _commit(storage, lake_table(2_020, 1_000))
    _window(monkeypatch)
    _only_problem(_verify(storage), again.key, "10 quarantined record(s) also in quarantine (e.g. 1995, 1996, 1997")


def test_gaps_across_windows_are_counted_and_named(storage: LocalStorage, monkeypatch: pytest.MonkeyPatch) -> None:
    first = _commit(storage, lake_table(0, 2_500))
    second = _commit(storage, lake_table(7_600, 1_400))  # 2500..7599 missing: windows 3 to 6 hold no file at all
    _commit(storage, lake_table(9_010, 990))  # 9000..9009 missing
    _window(monkeypatch)
    _only_problem(
        _verify(storage),
        "5110 event id(s) from 0 to 9999 are neither in the table nor in quarantine",
        "the first: 2500, 2501, 2502",
        f"after {first}",
        f"before {second}",
    )


def test_a_gap_on_a_window_boundary_and_at_the_committed_position(
    storage: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    _commit(storage, lake_table(0, 999))
    _commit(storage, lake_table(1_001, 1_000), through=2_500)  # 999, 1000 and 2001..2500 missing
    _window(monkeypatch)
    _only_problem(_verify(storage), "502 event id(s) from 0 to 2500", "the first: 999, 1000, 2001")


def test_ids_expired_by_retention_across_windows_are_not_missing(
    storage: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    _commit(storage, lake_table(3_500, 2_000))
    _commit(storage, lake_table(5_600, 2_400))  # 5500..5599 missing
    LakeTable.open(storage).commit([], "retention", txn=3_499, app=RETENTION_APP_ID)  # 0..3499 expired
    _window(monkeypatch)
    report = _verify(storage)
    assert report.expired_through == 3_499
    _only_problem(report, "100 event id(s) from 3500 to 7999", "the first: 5500, 5501, 5502")
    assert any("event ids 0 to 3499 are expired" in n for n in report.notes)


def test_the_ids_of_a_file_that_cannot_be_read_are_not_called_missing_in_any_window(
    storage: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    _commit(storage, lake_table(0, 1_000))
    broken = _commit(storage, lake_table(1_000, 5_000))  # windows 1..5: none read, four reached by no other file
    _commit(storage, lake_table(6_000, 1_000))
    _commit(storage, lake_table(7_500, 500))  # 7000..7499 missing all the same
    path = str(storage.path(broken))
    parquet_file = pq.ParquetFile

    def eio(source: Any, *args: Any, **kwargs: Any) -> Any:
        if str(source) == path:
            raise OSError(errno.EIO, "Input/output error", path)
        return parquet_file(source, *args, **kwargs)

    monkeypatch.setattr(pq, "ParquetFile", eio)
    _window(monkeypatch)
    report = _verify(storage)
    assert report.io_failures == [broken] and report.damaged == []
    assert len(report.problems) == 2, report.problems
    assert report.problems[0].startswith(f"{broken}: not checked") and "not damage" in report.problems[0]
    assert "500 event id(s) from 0 to 7999" in report.problems[1] and "the first: 7000, 7001" in report.problems[1]
    assert any(n.startswith("5000 event id(s) in the range of the 1 file(s)") for n in report.notes), report.notes


def test_a_file_that_fails_when_read_again_for_a_later_window_is_reported(
    storage: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    _commit(storage, lake_table(0, 1_000))
    spanning = _commit(storage, lake_table(1_000, 5_000))  # read whole in window 1, then again in 2..5
    path = str(storage.path(spanning))
    parquet_file = pq.ParquetFile
    opened: list[str] = []

    def eio_after_the_first(source: Any, *args: Any, **kwargs: Any) -> Any:
        if str(source) == path:
            opened.append(path)
            if len(opened) > 1:
                raise OSError(errno.EIO, "Input/output error", path)
        return parquet_file(source, *args, **kwargs)

    monkeypatch.setattr(pq, "ParquetFile", eio_after_the_first)
    _window(monkeypatch)
    report = _verify(storage)
    assert report.io_failures == [spanning] and report.files_checked == 2
    problem = _only_problem(report, f"{spanning}: not checked: reading it failed", "not damage")
    assert "are neither" not in problem
    # Window 1 was judged with the file's ids in it; windows 2..5 are in the range of a file that could not be read.
    assert any(n.startswith("4000 event id(s) in the range of the 1 file(s)") for n in report.notes), report.notes


def test_a_file_whose_log_understates_its_first_id_is_named(
    storage: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    _commit(storage, lake_table(0, 2_000))
    table = lake_table(2_000, 2_000)
    lake = LakeTable.open(storage)
    info = write_file(storage, pa.concat_tables([table, lake_table(500, 1)]), layout.LANDING, "landing")
    true = FileStats.of_table(table)  # the log says 2000..3999: id 500, in window 0, is not in its statistics
    stats = FileStats(true.rows + 1, true.minimum, true.maximum, true.nulls)
    lake.append(info, stats, through_event_id=3_999, expected=1_999)
    _window(monkeypatch)
    report = _verify(storage)
    lie = f"{info.key}: min event_id is 2000 in the log but 500 in the file"
    below = f"{info.key}: 1 event id(s) below the first its add action gives (e.g. 500)"
    assert any(p.startswith(lie) for p in report.problems)
    assert any(n.startswith(below) for n in report.notes)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_small_windows_give_the_report_of_a_single_window(
    storage: LocalStorage, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    """A random lake of overlapping files, quarantined ranges and gaps: every window size finds the same."""
    rng = np.random.default_rng(seed)
    cursor = 0
    while cursor < 6_000:
        length = int(rng.integers(100, 1_500))
        kind = rng.choice(["table", "quarantine", "gap", "overlap"], p=[0.55, 0.15, 0.1, 0.2])
        if kind == "quarantine":
            _refuse(storage, cursor, min(length, 60))
            cursor += min(length, 60)
        elif kind == "gap":
            cursor += int(rng.integers(1, 400))
        elif kind == "overlap" and cursor > 200:
            start = cursor - int(rng.integers(1, 200))
            _commit(storage, lake_table(start, length))
            cursor = start + length
        else:
            _commit(storage, lake_table(cursor, length))
            cursor += length
    ids = rng.integers(0, cursor, size=5).tolist()  # and a file of scattered ids, spanning nearly every window
    _commit(storage, _sparse([int(i) for i in ids]), through=read_snapshot(storage).committed_event_id)

    def outcome() -> dict[str, Any]:
        report = _verify(storage).as_dict()
        return {**report, "problems": sorted(report["problems"]), "notes": sorted(report["notes"])}

    whole = outcome()
    assert not whole["ok"]  # the scattered ids at least are held twice
    for window in (1_000, 97):
        _window(monkeypatch, window)
        assert outcome() == whole, window


# -- memory ------------------------------------------------------------------------------------------------


def _ledger_sizes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The bytes of every ledger verify makes; one bigger than a window fails at once (before it is filled)."""
    sizes: list[int] = []
    real = audit._Ledger.__init__

    def recorded(self: Any, *args: Any, **kwargs: Any) -> None:
        real(self, *args, **kwargs)
        size = max(a.nbytes for a in vars(self).values() if isinstance(a, np.ndarray))
        sizes.append(size)
        assert size <= audit.WINDOW_IDS, f"a ledger of {size} bytes"

    monkeypatch.setattr(audit._Ledger, "__init__", recorded)
    return sizes


def _peak(call: Any) -> tuple[Any, int]:
    """``call()`` and the peak of the memory Python and numpy allocated meanwhile (tracemalloc)."""
    tracemalloc.start()
    try:
        out = call()
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_lake_whose_ids_span_a_billion_is_verified_in_bounded_memory(
    storage: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    billion = 1_000_000_000
    first = _commit(storage, lake_table(0, 1_000))
    for k in range(1, 10):
        _commit(storage, lake_table(k * 100_000_000, 1_000))
    _commit(storage, lake_table(billion - 1_000, 1_000))
    sizes = _ledger_sizes(monkeypatch)
    report, peak = _peak(lambda: _verify(storage))
    assert sizes == [audit.WINDOW_IDS]  # one ledger, of one window (a byte per id would be 1 GB)
    assert peak < audit.WINDOW_IDS + 16 * MiB, f"{peak / MiB:.0f} MiB"
    _only_problem(
        report,
        f"{billion - 11_000} event id(s) from 0 to {billion - 1} are neither",
        "the first: 1000, 1001, 1002",
        f"after {first}",
    )
    assert report.table_rows == 11_000 and report.files_checked == 11


def test_one_file_of_ids_scattered_over_a_billion_is_verified_in_bounded_memory(
    storage: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    billion = 1_000_000_000
    scattered = [*range(100), *(k * 10_000_000 for k in range(1, 100)), billion - 1, 50_000_000]
    key = _commit(storage, _sparse(scattered))  # in every window; 50,000,000 twice, in its last row group
    sizes = _ledger_sizes(monkeypatch)
    report, peak = _peak(lambda: _verify(storage))
    assert sizes == [audit.WINDOW_IDS]
    assert peak < audit.WINDOW_IDS + 16 * MiB, f"{peak / MiB:.0f} MiB"
    assert report.problems[0] == f"{key}: 1 event id(s) also in the table (e.g. 50000000)"
    assert report.problems[1].startswith(f"{billion - 200} event id(s) from 0 to {billion - 1} are neither")
    assert len(report.problems) == 2 and report.table_rows == len(scattered)


def test_stats_read_the_logs_only_whatever_the_span_of_ids(
    storage: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    _commit(storage, lake_table(0, 1_000))
    _commit(storage, lake_table(999_999_000, 1_000))
    _refuse(storage, 500_000_000, 5)

    def no_data_file(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("stats opened a data file")

    for name in ("ParquetFile", "read_table", "read_metadata"):
        monkeypatch.setattr(pq, name, no_data_file)
    data, peak = _peak(lambda: audit.stats(storage))
    assert data["table"]["rows"] == 2_000 and data["table"]["max_event_id"] == 999_999_999
    assert data["zones"]["quarantine"]["rows"] == 5
    assert peak < 16 * MiB, f"{peak / MiB:.0f} MiB"
