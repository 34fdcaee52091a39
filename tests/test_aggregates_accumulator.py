"""The aggregates of a file computed in numpy a batch at a time (lake.aggregates.Accumulator, lake.grouping), and
as the compactor writes its rows (lake.compaction.aggregating.OutputAggregator).

Every level equals what each aggregate's own SQL gives in DuckDB (an independent statement of the same
definition), with and without the column of a later record version, whatever the batches; wide key spaces
(rows spread over decades, many employees) take the ranking path and stay exact; fed a row group at a time
beside the writing, the aggregation gives the same levels, waits when its queue is full, and neither a
cancelled output nor a failing aggregation ever leaves the writer waiting or a thread behind.
"""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from lake import aggregates, grouping
from lake.compaction import aggregating
from lake.compaction.aggregating import AggregateSync, OutputAggregator
from lake.storage import LocalStorage
from testkit import lakes as lg
from utils.records import DOOR_ID


def _rows(with_doors: bool, rows: int = 30_000, seed: int = 5, days: int = 2) -> pa.Table:
    table = lg.make_table(rows, seed=seed, users=60, days=days)
    table = pa.concat_tables([table, lg.edge_cases(rows, lg.DEFAULT_START)])
    if with_doors:
        rng = np.random.default_rng(seed)
        doors = rng.choice(np.array(["D1", "D2", "D3"], dtype=object), table.num_rows)
        granted = table.column("access_granted").to_numpy()
        doors[~granted | (rng.random(table.num_rows) < 0.1)] = None  # denied (and a few others): no door
        table = table.append_column(DOOR_ID, pa.array(doors, pa.string()))
    return table


def _sorted(table: pa.Table) -> pa.Table:
    return table.sort_by([(n, "ascending") for n in table.schema.names])


def _by_sql(table: pa.Table) -> dict[str, pa.Table]:
    """Every level the SQL way: each base aggregate's own query in DuckDB, then its roll-ups."""
    con = duckdb.connect()
    cur = con.cursor()
    cur.register("file_rows", table.append_column("file_index", pa.repeat(pa.scalar(0, pa.int64()), table.num_rows)))
    bases = {}
    for agg in aggregates.AGGREGATES:
        if agg.requires is not None and agg.requires not in table.schema.names:
            bases[agg.name] = agg.schema.empty_table()
            continue
        result = cur.sql(agg.scan_sql("file_rows")).to_arrow_table().drop_columns(["file_index"])
        bases[agg.name] = aggregates.conform(result, agg.schema)
    return aggregates.rollups_by_file(con, {"file": bases})["file"]


def _assert_same(got: dict[str, pa.Table], expected: dict[str, pa.Table]) -> None:
    assert set(got) == {level.name for level in aggregates.LEVELS}
    for level in aggregates.LEVELS:
        assert got[level.name].schema == level.schema, level.name
        assert _sorted(got[level.name]).equals(_sorted(expected[level.name])), level.name


def _accumulate(table: pa.Table, batch_rows: int) -> dict[str, pa.Table]:
    accumulator = aggregates.Accumulator(table.schema.names)
    for batch in table.to_batches(max_chunksize=batch_rows):
        accumulator.add(batch)
    return accumulator.levels()


@pytest.mark.parametrize("with_doors", [True, False])
@pytest.mark.parametrize("batch_rows", [1_000, 1 << 20])
def test_every_level_equals_each_aggregates_own_sql(with_doors: bool, batch_rows: int) -> None:
    table = _rows(with_doors)
    got = _accumulate(table, batch_rows)
    _assert_same(got, _by_sql(table))
    assert got["users"].num_rows and got["cube"].num_rows and got["users_day"].num_rows  # not trivially equal
    assert (got["doors"].num_rows > 0) == with_doors


def test_batches_without_a_single_door_count_none() -> None:
    # files from before record version 2 carry door_id as nulls only (an empty dictionary in the compactor)
    table = _rows(True)
    doors = table.column(DOOR_ID).to_pylist()
    doors[:10_000] = [None] * 10_000
    table = table.set_column(table.schema.get_field_index(DOOR_ID), DOOR_ID, pa.array(doors, pa.string()))
    accumulator = aggregates.Accumulator(table.schema.names)
    for batch in table.to_batches(max_chunksize=5_000):
        rows = pa.Table.from_batches([batch])
        accumulator.add(
            rows.set_column(rows.schema.get_field_index(DOOR_ID), DOOR_ID, rows[DOOR_ID].dictionary_encode())
        )
    _assert_same(accumulator.levels(), _by_sql(table))


def _shifted(table: pa.Table, by: timedelta) -> pa.Table:
    for name in ("badge_in_timestamp", "badge_out_timestamp"):
        at = table.schema.get_field_index(name)
        table = table.set_column(at, name, pc.add(table.column(name), pa.scalar(by, pa.duration("us"))))
    return table


def test_rows_before_1970_are_bucketed_as_duckdb_does() -> None:
    # DuckDB's integer division and remainder go toward zero, numpy's floor: the same cells all the same
    table = _shifted(_rows(True, rows=8_000), -timedelta(days=365 * 56))
    assert pc.min(table.column("badge_out_timestamp")).value < 0
    _assert_same(_accumulate(table, 3_000), _by_sql(table))


def test_timestamps_of_other_units_are_truncated_to_microseconds_as_duckdb_does() -> None:
    table = _rows(False, rows=8_000)
    for name in ("badge_in_timestamp", "badge_out_timestamp"):
        at = table.schema.get_field_index(name)
        ns = pc.add(
            table.column(name).cast(pa.timestamp("ns")), pa.scalar(timedelta(microseconds=0), pa.duration("ns"))
        )
        ns = pc.add(ns, pa.array(np.arange(table.num_rows) % 1_000, pa.duration("ns")))  # sub-microsecond parts
        table = table.set_column(at, name, ns)
    _assert_same(_accumulate(table, 3_000), _by_sql(table))


def test_a_null_in_a_door_dictionary_is_no_door() -> None:
    table = _rows(True)
    accumulator = aggregates.Accumulator(table.schema.names)
    for batch in table.to_batches(max_chunksize=5_000):
        rows = pa.Table.from_batches([batch])
        doors = pc.dictionary_encode(rows[DOOR_ID].combine_chunks(), null_encoding="encode")  # null as a value
        assert doors.dictionary.null_count == 1 or doors.null_count == 0
        accumulator.add(rows.set_column(rows.schema.get_field_index(DOOR_ID), DOOR_ID, doors))
    _assert_same(accumulator.levels(), _by_sql(table))


@pytest.mark.parametrize("order", ["in time order", "shuffled"])
def test_partials_merged_and_sealed_along_the_way_stay_exact(monkeypatch: pytest.MonkeyPatch, order: str) -> None:
    # merged after nearly every batch, older buckets sealed; rows out of time order make a bucket come back
    monkeypatch.setattr(aggregates, "MERGE_ROWS", 500)
    table = _rows(True).sort_by("badge_out_timestamp")  # as a data file's rows are (event ids: badge-out order)
    batches = table.to_batches(max_chunksize=2_000)
    if order == "shuffled":
        batches = [batches[i] for i in np.random.default_rng(9).permutation(len(batches))]
    accumulator = aggregates.Accumulator(table.schema.names)
    for batch in batches:
        accumulator.add(batch)
    assert accumulator._sealed["users"]  # the sealing did happen
    assert accumulator._disordered["users"] == (order == "shuffled")  # and the full merge only when needed
    _assert_same(accumulator.levels(), _by_sql(table))


def test_wide_key_spaces_are_ranked_and_stay_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    # rows spread over decades: minutes far apart; and a dense limit small enough that every grouping ranks
    table = _rows(True, rows=5_000, days=30 * 365)
    monkeypatch.setattr(grouping, "DENSE_LIMIT", 64)
    _assert_same(_accumulate(table, 1_500), _by_sql(table))


def test_grouping_sums_refuse_what_float_weights_cannot_hold_exactly() -> None:
    groups = grouping.Groups([np.array([1, 1, 2])])
    assert groups.sums(np.array([2, 3, 4])).tolist() == [5, 4]
    assert groups.maxima(np.array([2, 3, 4])).tolist() == [3, 4]
    with pytest.raises(OverflowError):
        groups.sums(np.array([1 << 52, 1 << 52, 1]))


def test_a_file_is_aggregated_a_chunk_at_a_time(tmp_path: Path) -> None:
    table = _rows(True)
    path = tmp_path / "f.parquet"
    pq.write_table(table, path, row_group_size=7_000)  # several row groups
    got = aggregates.compute_file(str(path))
    _assert_same(got, _by_sql(table))
    with pa.OSFile(str(path)) as source:  # an open file (an object store's) the same
        opened = aggregates.compute_file(source)
    assert all(_sorted(opened[n]).equals(_sorted(got[n])) for n in got)


def test_the_aggregator_gives_the_levels_of_the_row_groups_fed() -> None:
    table = _rows(True)
    aggregator = OutputAggregator(table.schema.names)
    for batch in table.to_batches(max_chunksize=5_000):  # as the compactor's row groups: text as dictionaries
        rows = pa.Table.from_batches([batch])
        text = {"user_id", "dept", "building_location"}
        columns = [rows.column(n).dictionary_encode() if n in text else rows.column(n) for n in rows.schema.names]
        aggregator.feed(pa.table(columns, names=rows.schema.names))
    _assert_same(aggregator.finish(), _by_sql(table))


def test_an_aggregator_fed_nothing_gives_empty_levels() -> None:
    got = OutputAggregator(aggregates.SCANNED_COLUMNS).finish()
    assert {n: t.num_rows for n, t in got.items()} == {level.name: 0 for level in aggregates.LEVELS}


def _aggregator_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "compactor-aggregates"]


def test_a_cancelled_aggregator_ends_its_thread_and_never_blocks() -> None:
    table = _rows(False)
    aggregator = OutputAggregator(table.schema.names)
    batches = table.to_batches(max_chunksize=1_000)
    aggregator.feed(pa.Table.from_batches(batches[:1]))
    aggregator.cancel()
    assert not _aggregator_threads()
    for batch in batches[1:]:  # more than the queue holds: a cancelled aggregator takes them without waiting
        aggregator.feed(pa.Table.from_batches([batch]))
    aggregator.cancel()  # idempotent


def test_a_failing_aggregation_never_blocks_the_writer_and_is_reported(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(self: aggregates.Accumulator, rows: pa.RecordBatch | pa.Table) -> None:
        raise ValueError("no room left")

    monkeypatch.setattr(aggregates.Accumulator, "add", broken)
    storage = LocalStorage(tmp_path / "lake")
    storage.ensure_layout()
    sync = AggregateSync(storage)
    table = _rows(False)
    aggregator = sync.aggregator(table.schema.names)
    for batch in table.to_batches(max_chunksize=1_000):  # 31 row groups, the queue holds 2
        aggregator.feed(pa.Table.from_batches([batch]))
    output = storage.new_temp_path("compacted-x.parquet")
    assert sync.store(aggregator, output, table.num_rows) is None
    assert "not computed" in caplog.text and "no room left" in caplog.text
    assert not _aggregator_threads()
    assert not [p for p in (storage.root / "temp").iterdir() if aggregates.ZONE in p.name]  # nothing staged
    sync.close()


def test_an_aggregation_ended_by_a_base_exception_never_blocks_the_writer(monkeypatch: pytest.MonkeyPatch) -> None:
    def leaves(self: aggregates.Accumulator, rows: pa.RecordBatch | pa.Table) -> None:
        raise SystemExit(3)

    monkeypatch.setattr(aggregates.Accumulator, "add", leaves)
    table = _rows(False)
    aggregator = OutputAggregator(table.schema.names)

    def writer() -> None:
        for batch in table.to_batches(max_chunksize=1_000):
            aggregator.feed(pa.Table.from_batches([batch]))

    feeder = threading.Thread(target=writer)
    feeder.start()
    feeder.join(20)
    assert not feeder.is_alive()
    with pytest.raises(RuntimeError, match="SystemExit"):  # an Exception for the caller, not an exit
        aggregator.finish()
    assert not _aggregator_threads()


def test_the_writer_waits_while_the_queue_is_full(monkeypatch: pytest.MonkeyPatch) -> None:
    """Memory is bounded: at most QUEUE_DEPTH row groups wait for a slow aggregation, then the writer waits."""
    release = threading.Event()
    real = aggregates.Accumulator.add

    def slow(self: aggregates.Accumulator, rows: pa.RecordBatch | pa.Table) -> None:
        release.wait(30)
        real(self, rows)

    monkeypatch.setattr(aggregates.Accumulator, "add", slow)
    table = _rows(False)
    aggregator = OutputAggregator(table.schema.names)
    groups = [pa.Table.from_batches([b]) for b in table.to_batches(max_chunksize=1_000)]
    fed: list[int] = []

    def writer() -> None:
        for i, rows in enumerate(groups):
            aggregator.feed(rows)
            fed.append(i)

    feeder = threading.Thread(target=writer)
    feeder.start()
    try:
        feeder.join(1.0)
        assert feeder.is_alive()  # waiting: the queue is full
        assert len(fed) == aggregating.QUEUE_DEPTH + 1  # one taken (held by the slow aggregation) and two queued
    finally:
        release.set()
        feeder.join(30)
    assert not feeder.is_alive()
    got = aggregator.finish()
    assert sum(got["cube"].column("events").to_pylist()) == table.num_rows
