"""The dashboard on S3-compatible object storage (moto's S3 server): the engine reads each data file once,
through the storage, and answers exactly what it answers over a local lake holding the same records.

Both lakes are filled by the real pipeline (FakeSource: the same records for the same cursor) and
compacted by the real compactor; the S3 server's request log says which files a refresh read.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from analytics import reading
from analytics.engine import LakeAnalytics, Snapshot
from analytics.filters import ALL, Filters
from analytics.health import lake_health
from analytics.partials import PartialCache
from analytics.timeutil import minute_of, moment_of_minute
from lake import aggregates, layout
from lake import parquet as lake_parquet
from lake.aggregates import AGGREGATES
from lake.filestats import FileStats
from lake.location import open_storage
from lake.objectstore import ObjectStorage
from lake.parquet import write_file, writer_options
from lake.snapshot import DataFile
from lake.storage import FileInfo, LocalStorage, Storage
from lake.table import LakeTable
from processes import compactor as compactor_process
from processes.pipeline import RunOptions, run
from testkit.fake_source import FakeSource
from testkit.processes import ROOT, make_settings
from testkit.records import TEST_IDENTITY, lake_table
from testkit.s3 import S3Lake, s3_lake
from utils.config import Settings, get_settings
from utils.errors import LakeError

pytestmark = pytest.mark.integration
__all__ = ["s3_lake"]  # the fixture, imported for pytest

APP = str(ROOT / "analytics_app.py")
TIMEOUT = 60
NOW = datetime(2030, 1, 1, tzinfo=UTC)  # freshness is compared at a fixed instant


def lake_settings(location: Path | str) -> Settings:
    """Landing files of 1,000 records, compacted from 8 files on; the clean-up deletes replaced files at once."""
    return make_settings(location, BATCH_SIZE=500, BUFFER_RECORDS=1_000, COMPACTION_GRACE_SECONDS=0)


def land(settings: Settings, records: int) -> None:
    """``records`` more records of FakeSource's stream (from where the lake's position is), landed, not compacted."""
    assert run(settings, RunOptions(max_records=records, compaction=False), source=FakeSource()) == 0


def compact(settings: Settings) -> None:
    assert compactor_process.run(settings, once=True) == 0


def fill(settings: Settings) -> None:
    """12,000 records landed and compacted, then 3,000 more landed: compacted and landing files in the table."""
    land(settings, 12_000)
    compact(settings)
    land(settings, 3_000)


def data_reads(lake: S3Lake) -> list[tuple[str, str]]:
    """``(method, key)`` of each GET or HEAD of an events data file the server answered since the last clear."""
    head = f"/{lake.bucket}/{lake.prefix}/"
    return [
        (r.method, r.path.removeprefix(head))
        for r in lake.requests.entries()
        if r.method in ("GET", "HEAD") and r.path.endswith(".parquet") and f"/{layout.QUARANTINE}/" not in r.path
    ]


def data_gets(lake: S3Lake) -> list[str]:
    """Keys of the events data files the server answered a GET or HEAD for since the last clear."""
    return [key for _, key in data_reads(lake)]


def selections(snap: Snapshot) -> dict[str, Filters]:
    """Selections over the lake's time span: whole and cut hours, one hour's inside, sets, open ends."""
    first, _ = snap.time_bounds()
    assert first is not None
    base = first.replace(minute=0)
    return {
        "all": ALL,
        "cut hours": Filters(base + timedelta(hours=2, minutes=13), base + timedelta(hours=9, minutes=47)),
        "inside one hour": Filters(base + timedelta(hours=5, minutes=5), base + timedelta(hours=5, minutes=50)),
        "departments and buildings": Filters(departments=("Sales", "HR"), buildings=("Grace",)),
        "open start, one department": Filters(end=base + timedelta(hours=6, minutes=1), departments=("Finance",)),
        "open end": Filters(start=base + timedelta(hours=7, minutes=31)),
        "nothing": Filters(departments=("Nobody",)),
    }


def figures(snap: Snapshot, f: Filters) -> dict[str, Any]:
    """Every figure of the dashboard's page for ``f`` (KPIs, each chart's aggregate, freshness, bounds)."""
    return {
        "kpis": snap.kpis(f),
        "access": snap.access_distribution(f),
        "premature": snap.premature_by_dept_building(f),
        "compliance": snap.compliance_distribution(f),
        "traffic auto": snap.traffic(f),
        "traffic minute": snap.traffic(f, "minute"),
        "traffic hour": snap.traffic(f, "hour"),
        "heatmap": snap.building_hour_heatmap(f),
        "denial": snap.denial_rates(f),
        "compliance by department": snap.compliance_by_department(f),
        "repeat offenders": snap.repeat_offenders(f),
        "every employee": snap.repeat_offenders(f, min_premature=1, limit=100_000),
        "freshness": snap.freshness(f, now=NOW),
        "bounds": snap.time_bounds(f),
    }


def assert_same(got: dict[str, Any], expected: dict[str, Any], where: str) -> None:
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        if isinstance(value, pd.DataFrame):
            pd.testing.assert_frame_equal(got[name], value, obj=f"{where}: {name}")
            assert got[name].attrs == value.attrs, f"{where}: {name}"
        else:
            assert got[name] == value, f"{where}: {name}"


@pytest.fixture
def local_twin(tmp_path: Path) -> Settings:
    """A local lake filled exactly as :func:`fill` fills the S3 one."""
    settings = lake_settings(tmp_path / "lake")
    fill(settings)
    return settings


def test_the_engine_on_s3_gives_exactly_the_local_figures(s3_lake: S3Lake, local_twin: Settings) -> None:
    settings = lake_settings(s3_lake.url)
    fill(settings)
    storage = open_storage(s3_lake.url)
    assert isinstance(storage, ObjectStorage)
    local = LakeAnalytics(LocalStorage(local_twin.data_lake_path)).snapshot()
    s3 = LakeAnalytics(storage).snapshot()
    s3_direct = LakeAnalytics(storage, mode="direct").snapshot()
    # Both tables hold compacted and landing files, and the same 15,000 events.
    for snap in (local, s3):
        assert snap.lake.in_zone(layout.COMPACTED) and snap.lake.in_zone(layout.LANDING)
        assert snap.lake.rows == 15_000 and snap.kpis().total_events == 15_000
        # the compactor persisted its outputs' aggregates: read from there (their fine levels: locally from the
        # aggregates files, on S3 from the data files' rows of the cut hours), never computed from the rows
        assert snap.partials is not None
        assert all(snap.partials[f.key].persisted is not None for f in snap.lake.in_zone(layout.COMPACTED))
    chosen = selections(local)
    assert chosen.keys() == selections(s3).keys()
    for name, f in chosen.items():
        expected = figures(local, f)
        assert_same(figures(s3, f), expected, f"s3 cached, {name}")
        assert_same(figures(s3_direct, f), expected, f"s3 direct, {name}")
    # Lake health reads the same table the same way on both backends.
    health, local_health = lake_health(s3.lake, settings), lake_health(local.lake, local_twin)
    assert (health.table_rows, health.table_files, health.landing_files) == (
        local_health.table_rows,
        local_health.table_files,
        local_health.landing_files,
    )
    assert health.temp_files == 0 and health.quarantined_records == 0


def test_a_refresh_on_s3_reads_only_files_new_to_the_snapshot(s3_lake: S3Lake) -> None:
    settings = lake_settings(s3_lake.url)
    land(settings, 12_000)
    engine = LakeAnalytics(open_storage(s3_lake.url))
    s3_lake.requests.clear()
    first = engine.snapshot()
    landed = set(first.lake.keys)
    # 12 flushes, cut at midnight into one file per date
    assert len(landed) >= 12 and sorted(data_reads(s3_lake)) == sorted(("GET", key) for key in landed)  # once each
    s3_lake.requests.clear()
    figures(first, ALL)
    assert data_gets(s3_lake) == []  # every figure of the whole lake from the partials: no file read
    assert engine.snapshot() is first and data_gets(s3_lake) == []  # an unchanged table: nothing read

    land(settings, 3_000)
    s3_lake.requests.clear()
    second = engine.snapshot()
    new = set(second.lake.keys) - landed
    assert len(new) >= 3 and sorted(data_reads(s3_lake)) == sorted(("GET", key) for key in new)  # not the old ones
    assert second.kpis().total_events == 15_000

    compact(settings)  # the landing files become one compacted file per date; the clean-up deletes them (grace 0)
    s3_lake.requests.clear()
    third = engine.snapshot()
    outputs = third.lake.in_zone(layout.COMPACTED)
    assert outputs and not third.lake.in_zone(layout.LANDING)
    # the compactor persisted their aggregates: each is read from its aggregates file (one GET), no data file
    assert third.partials is not None and all(third.partials[o.key].persisted is not None for o in outputs)
    stored = {p.info.key for o in outputs if (p := third.partials[o.key].persisted) is not None}
    assert set(data_gets(s3_lake)) == stored and all(k.startswith(f"{aggregates.ZONE}/") for k in stored)
    assert third.kpis() == second.kpis()
    assert_same(figures(third, ALL), figures(second, ALL), "after the compaction")


def test_a_cut_hour_reads_only_the_files_that_hold_it(s3_lake: S3Lake) -> None:
    settings = lake_settings(s3_lake.url)
    land(settings, 12_000)
    snap = LakeAnalytics(open_storage(s3_lake.url)).snapshot()
    assert snap.partials is not None
    f = selections(snap)["cut hours"]
    s3_lake.requests.clear()
    for query in (snap.kpis, snap.traffic, snap.denial_rates, snap.compliance_by_department):
        query(f)  # minute partials answer whole minutes: never a file
    assert data_gets(s3_lake) == []
    heatmap = snap.building_hour_heatmap(f)  # hourly: the cut hours' minutes come from the files holding them
    read = set(data_gets(s3_lake))
    assert f.minute_lo is not None and f.minute_hi is not None
    edges = [(m // 60 * 60, m // 60 * 60 + 60) for m in (f.minute_lo, f.minute_hi)]  # the two cut hours
    holding = {p.info.key for p in snap.partials.values() if any(p.overlaps(lo, hi) for lo, hi in edges)}
    assert read and read <= holding and len(holding) < len(snap.lake.files)
    assert heatmap["events"].sum() == snap.kpis(f).total_events


@pytest.mark.parametrize("how", ["whole object", "ranged"])
def test_a_failed_request_on_s3_is_an_error_to_retry_never_a_dropped_file(
    s3_lake: S3Lake, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    # A request that fails as each read path reports it: obstore's GET of a whole object through the storage
    # (LakeError), pyarrow's S3 file system for ranged reads (OSError).
    settings = lake_settings(s3_lake.url)
    land(settings, 3_000)
    storage = open_storage(s3_lake.url)
    failures: list[str] = []
    if how == "ranged":
        monkeypatch.setattr(reading, "WHOLE_OBJECT_BYTES", 0)
    method, error = ("read_bytes", LakeError) if how == "whole object" else ("open_input", OSError)
    real = getattr(storage, method)

    def fails_once_when_armed(key: str) -> Any:
        if not failures:
            failures.append(key)
            raise error(f"{key}: request failed (connection reset by peer)")
        return real(key)

    monkeypatch.setattr(storage, method, fails_once_when_armed)
    engine = LakeAnalytics(storage)
    with pytest.raises(LakeError, match="connection reset"):  # every file is there: an error, not a vanished file
        engine.snapshot()
    assert failures and len(engine.cache) == 0  # nothing of the failed refresh is kept
    snap = engine.snapshot()  # the next refresh reads every file again
    assert snap.kpis().total_events == 3_000

    # A read that fails during a query (a cut hour read from the files) fails that query, as a LakeError.
    failures.clear()
    first, _ = snap.time_bounds()
    assert first is not None
    base = first.replace(minute=0)
    inside = Filters(base + timedelta(hours=1, minutes=5), base + timedelta(hours=1, minutes=50))
    with pytest.raises(LakeError, match=r"query failed.*connection reset"):
        snap.building_hour_heatmap(inside)
    assert failures
    assert snap.building_hour_heatmap(inside)["events"].sum() == snap.kpis(inside).total_events  # and then works


def test_a_file_of_the_table_missing_from_s3_is_an_error_not_dropped(s3_lake: S3Lake) -> None:
    settings = lake_settings(s3_lake.url)
    land(settings, 3_000)
    storage = open_storage(s3_lake.url)
    gone = LakeAnalytics(storage).snapshot().lake.keys[0]
    s3_lake.boto3_client().delete_object(Bucket=s3_lake.bucket, Key=f"{s3_lake.prefix}/{gone}")
    with pytest.raises(LakeError, match=f"{gone} is in the table's snapshot but missing"):
        LakeAnalytics(storage).snapshot()


def put_file(storage: Storage, name: str, table: pa.Table, row_group_rows: int) -> DataFile:
    """``table`` as a landing file of row groups of ``row_group_rows`` rows (not in any table: read directly)."""
    buffer = io.BytesIO()
    pq.write_table(table, buffer, row_group_size=row_group_rows, **writer_options(table.schema))
    data = buffer.getvalue()
    key = f"{layout.LANDING}/{name}"
    assert storage.write_new(key, data)
    ids = table.column("event_id")
    return DataFile(FileInfo(key, len(data), 0), pc.min(ids).as_py(), pc.max(ids).as_py(), table.num_rows)


def by_keys(table: pa.Table) -> pa.Table:
    """Rows sorted by every column (dictionary-encoded ones, as the engine holds employee ids, decoded first)."""
    plain = pa.schema([f.with_type(f.type.value_type) if pa.types.is_dictionary(f.type) else f for f in table.schema])
    return table.cast(plain).sort_by([(name, "ascending") for name in table.schema.names])


@pytest.mark.parametrize("whole_object_bytes", [reading.WHOLE_OBJECT_BYTES, 0], ids=["whole objects", "ranged"])
def test_files_read_in_pieces_give_the_partials_duckdb_reads_from_disk(
    s3_lake: S3Lake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, whole_object_bytes: int
) -> None:
    # Pieces of one 1,500-row group and batches of about 2,000 rows: files span batches and batches span files.
    monkeypatch.setattr(reading, "CHUNK_ROWS", 2_000)
    monkeypatch.setattr(reading, "BATCH_ROWS", 2_000)
    monkeypatch.setattr(reading, "WHOLE_OBJECT_BYTES", whole_object_bytes)
    tables = [lake_table(0, 10_000), lake_table(10_000, 700), lake_table(10_700, 9_000)]
    tables = [t.sort_by("badge_out_timestamp") for t in tables]  # in event time, as the stream lands them
    local = LocalStorage(tmp_path / "lake")
    local.ensure_layout()
    s3 = open_storage(s3_lake.url)
    on_disk = [put_file(local, f"f{i}.parquet", t, 1_500) for i, t in enumerate(tables)]
    on_s3 = [put_file(s3, f"f{i}.parquet", t, 1_500) for i, t in enumerate(tables)]
    con = duckdb.connect()
    expected, _ = PartialCache(users_max_share=1.0).ensure(con, local, on_disk)
    s3_lake.requests.clear()
    got, read = PartialCache(users_max_share=1.0).ensure(con, s3, on_s3)
    assert read == 3 and set(data_gets(s3_lake)) == {f.key for f in on_s3}
    if whole_object_bytes:  # one GET each
        assert sorted(data_reads(s3_lake)) == sorted(("GET", f.key) for f in on_s3)
    else:  # each opened once (pyarrow asks an object's size once per open), then ranged GETs
        assert sorted(key for method, key in data_reads(s3_lake) if method == "HEAD") == sorted(f.key for f in on_s3)
    for f in on_s3:
        assert (got[f.key].minute_lo, got[f.key].minute_hi) == (expected[f.key].minute_lo, expected[f.key].minute_hi)
        for agg in AGGREGATES:
            mine, theirs = got[f.key].table(agg), expected[f.key].table(agg)
            assert mine is not None and theirs is not None
            assert by_keys(mine).equals(by_keys(theirs)), (f.key, agg.name)

    # A time span reads only the row groups whose statistics may overlap it, and loses no row of it.
    ref = reading.FileRef(on_s3[0].key, on_s3[0].row_count, on_s3[0].info.size)
    whole = reading.read_whole(s3, ref)
    out = pc.cast(whole.column("badge_out_timestamp"), pa.int64())
    lo, hi = out[2_900].as_py(), out[4_600].as_py()

    def within(t: pa.Table) -> pa.Table:
        us = pc.cast(t.column("badge_out_timestamp"), pa.int64())
        return t.filter(pc.and_(pc.greater_equal(us, lo), pc.less(us, hi)))

    part = reading.read_whole(s3, ref, (lo, hi))
    assert part.num_rows == 3 * 1_500  # row groups 1, 2 and 3 of the seven
    assert within(part).equals(within(whole)) and within(part).num_rows == 4_600 - 2_900
    assert reading.read_whole(s3, ref, (None, pc.min(out).as_py())).num_rows == 0


def commit_landing(storage: Storage, tables: list[pa.Table]) -> list[FileInfo]:
    """Each table as a landing file committed to the lake's table, one commit each (as the pipeline does)."""
    storage.ensure_layout()
    lake = LakeTable.open_or_create(storage, TEST_IDENTITY, partitioned=False)  # files across dates
    infos = []
    for table in tables:
        info = write_file(storage, table, layout.LANDING, "landing")
        stats = FileStats.of_footer(storage.read_footer(info.key))
        through = pc.max(table.column("event_id")).as_py()
        lake.append(info, stats, through_event_id=through, expected=lake.committed_event_id())
        infos.append(info)
    return infos


def test_cut_minutes_skip_row_groups_on_s3_and_lose_no_row(
    s3_lake: S3Lake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Files in event-time order (as the stream lands them) with row groups of 500 rows: a cut hour's
    # minutes are read from the few row groups whose statistics overlap them, the same rows DuckDB reads
    # from a local copy. Each selection starts in the last minute of a row group and ends in the first
    # minute of another, so a row group skipped one minute too eagerly changes the figures.
    monkeypatch.setattr(lake_parquet, "ROW_GROUP_ROWS", 500)
    records = lake_table(0, 20_000).sort_by("badge_out_timestamp")
    tables = [records.slice(0, 10_000), records.slice(10_000)]
    s3 = open_storage(s3_lake.url)
    (first, _) = commit_landing(s3, tables)
    commit_landing(LocalStorage(tmp_path / "lake"), tables)
    local = LakeAnalytics(LocalStorage(tmp_path / "lake")).snapshot()
    engines = {"s3 cached": LakeAnalytics(s3).snapshot(), "s3 direct": LakeAnalytics(s3, mode="direct").snapshot()}
    footer = s3.read_footer(first.key)
    column = footer.schema.names.index("badge_out_timestamp")
    bounds = [footer.row_group(i).column(column).statistics for i in range(footer.num_row_groups)]
    assert len(bounds) == 20
    offsets = set()
    for k in range(0, 14, 2):
        start = minute_of(bounds[k].max)  # row group k ends in this minute
        end = minute_of(bounds[k + 5].min) + 1  # row group k + 5 starts in the minute before this one
        offsets.add(start % 60 >= 30)
        f = Filters(moment_of_minute(start), moment_of_minute(end))
        assert local.kpis(f).total_events > 0
        expected = {
            "heatmap": local.building_hour_heatmap(f),
            "every employee": local.repeat_offenders(f, min_premature=1, limit=100_000),
            "kpis": local.kpis(f),
        }
        for name, snap in engines.items():
            got = {
                "heatmap": snap.building_hour_heatmap(f),
                "every employee": snap.repeat_offenders(f, min_premature=1, limit=100_000),
                "kpis": snap.kpis(f),
            }
            assert_same(got, expected, f"{name}, minutes {start}-{end}")
    assert offsets == {True, False}  # both ends of an hour were cut: read as added minutes and as subtracted ones


@pytest.fixture
def app_on(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Point the app's settings at a lake (``DATA_LAKE_PATH``, read through get_settings())."""

    def point(location: str) -> AppTest:
        monkeypatch.setenv("DATA_LAKE_PATH", location)
        get_settings.cache_clear()
        at = AppTest.from_file(APP, default_timeout=TIMEOUT)
        at.run(timeout=TIMEOUT)
        assert not at.exception, [e.value for e in at.exception]
        return at

    yield point
    get_settings.cache_clear()
    st.cache_resource.clear()


def test_the_dashboard_opens_an_s3_lake(s3_lake: S3Lake, app_on: Any) -> None:
    assert os.environ["AWS_ENDPOINT_URL"] == s3_lake.endpoint  # the app finds the store as every process does
    at = app_on(s3_lake.url)  # nothing written yet
    text = " ".join(i.value for i in at.info)
    assert "No badge data yet" in text and s3_lake.url in text and "folder" not in text
    assert not at.error

    settings = lake_settings(s3_lake.url)
    land(settings, 3_000)
    at = app_on(s3_lake.url)
    metrics = {m.label: m.value for m in at.metric}
    kpis = LakeAnalytics(open_storage(s3_lake.url)).snapshot().kpis()
    assert metrics["Total logs"] == f"{kpis.total_events:,}" == "3,000"
    assert metrics["Access denied"] == f"{kpis.denied:,}"
    assert metrics["Compliant sessions"] == f"{kpis.compliant:,}"
    assert len(at.get("plotly_chart")) == 10 and not at.error
