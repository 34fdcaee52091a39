"""Schema evolution: a field the pipeline does not know is kept (a new nullable column), a type change is refused.

Judged by what every engine reads through the log (delta-rs, Polars), by the files themselves and by
``verify``; the end-to-end test switches the real service to the second record version mid-stream.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import httpx
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pandas.testing import assert_frame_equal

from analytics import engine as engine_module
from analytics import partials
from analytics.engine import LakeAnalytics
from analytics.filters import Filters
from lake import layout
from lake.audit import verify
from lake.compaction import Compactor
from lake.location import open_storage
from lake.storage import LocalStorage, Storage
from lake.table import LOG_DIR, LakeTable, QuarantineTable, read_snapshot
from lake.writer import BufferedWriter, FlushThresholds
from processes.pipeline import RunOptions, run
from source.client import BadgeLogClient
from testkit.ids import live_ids
from testkit.processes import free_port, make_settings, running_service
from testkit.records import TEST_IDENTITY, make_records
from testkit.s3 import S3Lake, s3_lake
from utils.config import Settings
from utils.errors import FencedError

__all__ = ["s3_lake"]  # the fixture, imported for pytest


def with_door(table: pa.Table, doors: list[str | None]) -> pa.Table:
    return table.append_column(pa.field("door_id", pa.string()), pa.array(doors, pa.string()))


def client(settings: Settings, transport: str) -> BadgeLogClient:
    return BadgeLogClient(settings, prefer_arrow=transport == "arrow")


def writer(storage: LocalStorage) -> BufferedWriter:
    table = LakeTable.open_or_create(storage, TEST_IDENTITY)
    return BufferedWriter(storage, FlushThresholds(10_000, 60), table=table, position=table.committed_event_id())


def test_a_new_field_becomes_a_nullable_column_before_any_file_holds_it(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "lake")
    with writer(storage) as w:
        w.add(make_records(0, 100))
        assert w.flush(10)
        w.add(with_door(make_records(100, 100), [f"Grace-D{i % 10:02d}" if i % 3 else None for i in range(100)]))
    table = LakeTable.open(storage)
    field = table.schema().field("door_id")
    assert field.type == pa.string() and field.nullable
    assert [f.name for f in table.extra_fields()] == ["door_id"]
    # The schema commit comes before the commit adding the first file that holds the column.
    entries = sorted((storage.root / LOG_DIR).glob("*.json"))
    actions = [[json.loads(line) for line in e.read_text().splitlines()] for e in entries]
    grew = next(i for i, a in enumerate(actions) if any("metaData" in x and "door_id" in json.dumps(x) for x in a))
    with_column = [i for i, a in enumerate(actions) for x in a if "add" in x and x["add"]["path"].count("/") >= 1]
    assert grew < max(with_column)
    assert all("door_id" in pq.read_schema(storage.path(f.key)).names for f in read_snapshot(storage).files[1:])
    frame = pl.read_delta(str(storage.root)).sort("event_id")
    assert frame.height == 200
    assert frame["door_id"][:100].null_count() == 100  # files written before read it as null
    assert frame["door_id"][100:].to_list() == [f"Grace-D{i % 10:02d}" if i % 3 else None for i in range(100)]
    assert verify(storage, grace_seconds=30).ok


def test_a_field_whose_type_changes_is_refused_with_a_reason_never_cast(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "lake")
    with writer(storage) as w:
        w.add(with_door(make_records(0, 10), ["Sonic-D01"] * 10))
        assert w.flush(10)
        changed = make_records(10, 10).append_column(
            pa.field("door_id", pa.int64()), pa.array([7, None] * 5, pa.int64())
        )
        w.add(changed)
        w.add(
            make_records(20, 5).append_column(
                pa.field("clock", pa.time64("us")), pa.array([1, None, 3, None, 5], pa.time64("us"))
            )
        )
        w.add(make_records(25, 2).append_column(pa.field("Date", pa.string()), pa.array(["x", None])))
    quarantine = QuarantineTable.open(storage)
    assert quarantine is not None
    refused = pa.concat_tables(pq.read_table(storage.path(f.key)) for f in quarantine.data_files())
    reasons = dict(zip(refused.column("event_id").to_pylist(), refused.column("reason").to_pylist(), strict=True))
    assert sorted(reasons) == [10, 12, 14, 16, 18, 20, 22, 24, 25]
    assert reasons[10] == "field door_id: its type changed: int64 where the table holds string"
    assert reasons[20].startswith("field clock: type time64[us] cannot be stored in a Delta table")
    assert reasons[25] == "field Date: its name is taken by one of the table's own columns"
    kept = pl.read_delta(str(storage.root)).sort("event_id")
    assert kept["event_id"].to_list() == [i for i in range(27) if i not in reasons]
    assert kept.filter(pl.col("event_id").is_between(11, 19))["door_id"].null_count() == 5  # nulls fit any type
    assert "clock" not in kept.columns and "Date" not in kept.columns  # never stored: no column for it
    assert LakeTable.open(storage).schema().field("door_id").type == pa.string()
    report = verify(storage, grace_seconds=30)
    assert report.ok, report.problems


def test_the_compactor_carries_extra_columns_into_its_outputs(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "lake")
    with writer(storage) as w:
        for start in range(0, 400, 50):
            doors: list[str | None] = [f"Re-invent-D{(start + i) % 8:02d}" for i in range(50)]
            w.add(with_door(make_records(start, 50), doors) if start >= 200 else make_records(start, 50))
            assert w.flush(10)
    settings = make_settings(storage.root, COMPACTION_MIN_FILES=4)
    report = Compactor(storage, settings).run_cycle()
    assert report.compactions and report.compactions[0].files_in >= 4
    snap = read_snapshot(storage)
    assert snap.in_zone(layout.COMPACTED) and not snap.in_zone(layout.LANDING)
    for f in snap.in_zone(layout.COMPACTED):
        assert "door_id" in pq.read_schema(storage.path(f.key)).names
    frame = pl.read_delta(str(storage.root)).sort("event_id")
    assert frame["event_id"].to_list() == list(range(400))
    assert frame["door_id"][:200].null_count() == 200 and frame["door_id"][200:].null_count() == 0
    assert verify(storage, grace_seconds=30).ok


@pytest.mark.parametrize("transport", ["json", "arrow"])
def test_a_service_switched_to_record_version_2_mid_stream_lands_every_record_once(
    tmp_path: Path, transport: str
) -> None:
    root = tmp_path / "lake"
    port = free_port()
    env = {"GENERATOR_SEED": "5", "EVENTS_PER_SECOND": "0", "DATA_LAKE_PATH": str(root)}
    settings = make_settings(
        root,
        EMPLOYEE_BADGE_LOGS_URL=f"http://127.0.0.1:{port}/employee-badge-logs/",
        BATCH_SIZE=3_000,
        BUFFER_RECORDS=4_000,
        GENERATOR_SEED=5,
        EVENTS_PER_SECOND=0,
    )
    options = RunOptions(max_records=10_000, compaction=False)
    with running_service({**env, "RECORD_VERSION": "1"}, port), client(settings, transport) as source:
        assert run(settings, options, source=source) == 0
    switch = read_snapshot(LocalStorage(root)).next_event_id
    with running_service({**env, "RECORD_VERSION": "2"}, port), client(settings, transport) as source:
        assert httpx.get(f"http://127.0.0.1:{port}/").json()["record_version"] == 2
        assert run(settings, options, source=source) == 0
    storage = LocalStorage(root)
    ids = live_ids(storage)
    assert sorted(ids.tolist()) == list(range(len(ids))) and len(ids) >= 20_000  # every record once
    frame = pl.read_delta(str(root)).sort("event_id")
    before, after = frame.filter(pl.col("event_id") < switch), frame.filter(pl.col("event_id") >= switch)
    assert before["door_id"].null_count() == before.height  # null before the switch
    granted = after.filter(pl.col("access_granted"))
    assert granted.height and granted["door_id"].null_count() == 0  # filled after (null where access was denied)
    assert after.filter(~pl.col("access_granted"))["door_id"].null_count() == after.height - granted.height
    door_building = granted["door_id"].str.split("-D").list.first()
    assert (door_building == granted["building_location"]).all()
    assert frame["door_id"].count() == granted.height
    assert verify(storage, grace_seconds=30).ok


# -- the dashboard uses the new column where files hold it -----------------------------------------------
def doors_lake(storage: Storage) -> None:
    """Version-1 files, then version-2 files (door_id, null where access was denied), committed as flushes."""
    table = LakeTable.open_or_create(storage, TEST_IDENTITY)
    with BufferedWriter(storage, FlushThresholds(10_000, 60), table=table, position=None) as w:
        for start in range(0, 6_000, 1_500):
            records = make_records(start, 1_500)
            if start >= 3_000:
                granted = records.column("access_granted").to_pylist()
                buildings = records.column("building_location").to_pylist()
                doors = [
                    f"{b}-D{(start + i) % 5:02d}" if g else None
                    for i, (b, g) in enumerate(zip(buildings, granted, strict=True))
                ]
                records = with_door(records, doors)
            w.add(records)
            assert w.flush(10)


def truth_doors(root: str, flt: Filters) -> list[tuple[str, str, int]]:
    frame = pl.read_delta(root).filter(pl.col("door_id").is_not_null())
    if flt.start is not None:
        frame = frame.filter(pl.col("badge_out_timestamp") >= flt.start)
    if flt.end is not None:
        frame = frame.filter(pl.col("badge_out_timestamp") < flt.end)
    if flt.departments is not None:
        frame = frame.filter(pl.col("dept").is_in(list(flt.departments)))
    counts = frame.group_by("building_location", "door_id").len().sort(["len", "door_id"], descending=[True, False])
    return [(b, d, int(n)) for b, d, n in counts.iter_rows()]


SELECTIONS = {
    "all": Filters(),
    "cut minutes, two departments": Filters(
        datetime(2025, 3, 3, 5, 17), datetime(2025, 3, 3, 7, 43), departments=("Sales", "HR")
    ),
}


def test_the_dashboard_counts_doors_where_files_hold_them_exactly_in_every_mode(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "lake")
    doors_lake(storage)
    engine = LakeAnalytics(storage)
    for mode_snap in (engine.snapshot(), LakeAnalytics(storage, mode="direct").snapshot()):
        assert mode_snap.has_doors
        for name, flt in SELECTIONS.items():
            got = mode_snap.busiest_doors(flt, limit=100)
            assert list(got[["building", "door", "events"]].itertuples(index=False, name=None)) == truth_doors(
                str(storage.root), flt
            ), name
    before = engine.snapshot().kpis()
    Compactor(storage, make_settings(storage.root, COMPACTION_MIN_FILES=2)).run_cycle()
    after = engine.snapshot()  # the compacted files' partials merged from the cached ones
    assert after.lake.in_zone(layout.COMPACTED) and after.kpis() == before
    for name, flt in SELECTIONS.items():
        got = after.busiest_doors(flt, limit=100)
        assert list(got[["building", "door", "events"]].itertuples(index=False, name=None)) == truth_doors(
            str(storage.root), flt
        ), name


def test_a_lake_without_the_column_has_no_door_figure_and_opens_no_file_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = LocalStorage(tmp_path / "lake")
    with writer(storage) as w:
        w.add(make_records(0, 500))
    looked: list[str] = []
    real = partials.holds

    def holds(storage: LocalStorage, key: str, column: str) -> bool:
        looked.append(key)
        return real(storage, key, column)

    monkeypatch.setattr(engine_module, "holds", holds)
    monkeypatch.setattr(partials, "holds", holds)
    snap = LakeAnalytics(storage).snapshot()
    assert not snap.has_doors and snap.busiest_doors().empty
    assert not LakeAnalytics(storage, mode="direct").snapshot().has_doors
    assert looked == []  # the table has no door_id column: no file's footer is read for it


def test_on_s3_the_door_figure_is_the_same_and_old_files_are_read_once(s3_lake: S3Lake, tmp_path: Path) -> None:
    s3 = open_storage(s3_lake.url)
    doors_lake(s3)
    local = LocalStorage(tmp_path / "lake")
    doors_lake(local)
    remote, here = LakeAnalytics(s3).snapshot(), LakeAnalytics(local).snapshot()
    assert remote.has_doors
    for name, flt in SELECTIONS.items():
        assert_frame_equal(remote.busiest_doors(flt, limit=100), here.busiest_doors(flt, limit=100), obj=name)


def test_a_field_seen_only_as_nulls_has_no_type_yet_and_integers_fit_a_float_column(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "lake")

    def extra(start: int, name: str, values: list[object], kind: pa.DataType) -> pa.Table:
        return make_records(start, len(values)).append_column(pa.field(name, kind), pa.array(values, kind))

    with writer(storage) as w:
        w.add(extra(0, "floor", [None, None], pa.string()))  # JSON with no value yet: typed as text by the client
        w.add(extra(2, "floor", [3, None, 4], pa.int64()))  # the first values fix the type
        w.add(extra(5, "weight", [1.5, None], pa.float64()))
        w.add(extra(7, "weight", [2, 2**60], pa.int64()))  # JSON's 2 for 2.0 is exact; 2**60 is not in a float64
        w.add(extra(9, "Floor", [1], pa.int64()))  # another letter case of a column: refused
    table = LakeTable.open(storage)
    assert table.schema().field("floor").type == pa.int64() and table.schema().field("weight").type == pa.float64()
    quarantine = QuarantineTable.open(storage)
    assert quarantine is not None
    refused = pa.concat_tables(pq.read_table(storage.path(f.key)) for f in quarantine.data_files())
    reasons = dict(zip(refused.column("event_id").to_pylist(), refused.column("reason").to_pylist(), strict=True))
    assert reasons == {
        8: "field weight: beyond a float64's exact integers",
        9: "field Floor: its name differs from the column floor only in letter case",
    }
    frame = pl.read_delta(str(storage.root)).sort("event_id")
    assert frame["floor"].to_list() == [None, None, 3, None, 4, None, None, None]
    assert frame["weight"].to_list() == [None, None, None, None, None, 1.5, None, 2.0]
    assert verify(storage, grace_seconds=30).ok


def test_a_writer_whose_position_moved_adds_no_column(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "lake")
    with writer(storage) as w:
        w.add(make_records(0, 10))
    zombie = LakeTable.open(storage)
    with writer(storage) as w:  # another writer moves the position
        w.add(make_records(10, 10))
    with pytest.raises(FencedError):
        zombie.add_columns([pa.field("door_id", pa.string())], expected=9)
    assert "door_id" not in LakeTable.open(storage).schema().names
    LakeTable.open(storage).add_columns([pa.field("door_id", pa.string())], expected=19)
    assert LakeTable.open(storage).schema().field("door_id").nullable
