"""Every dashboard figure against ground truth computed with pandas from the same generated records.

Both engine modes (cached per-file partials, direct Parquet reads) must give exactly the truth, for
selections that cut hours and days in the middle, over a lake's table with compacted files, and beside
it on disk replaced files awaiting clean-up, a foreign file and forged files (a zero-row compacted file
whose footer names landing files of the table, a landing file whose footer claims ids up to 9,999,999,
a copy of a file of the table): none of them is in the table, so none may change a figure.
"""

from __future__ import annotations

import json
import random
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from analytics.engine import LakeAnalytics, Snapshot
from analytics.filters import ALL, Filters
from analytics.monitor import QUERY_HISTORY
from analytics.partials import PartialCache
from analytics.presentation import freshness_status
from analytics.spans import plan_spans
from analytics.timeutil import minute_of
from lake import layout
from lake.aggregates import USERS
from lake.filestats import FileStats
from lake.parquet import write_file
from lake.storage import LocalStorage
from lake.table import LakeTable, read_snapshot
from testkit import lakes as lg
from testkit.landing import commit_files
from utils.errors import LakeError, UnmigratedLakeError
from utils.records import BUILDINGS, DEPARTMENTS, RECORD_SCHEMA, with_duration

START = lg.DEFAULT_START


@dataclass
class Lake:
    built: lg.BuiltLake
    truth: pd.DataFrame
    beside: list[str]  # files on disk that the table does not hold

    @property
    def storage(self) -> LocalStorage:
        return self.built.storage


def _build(root: Path, rows: int, users: int, seed: int) -> Lake:
    table = lg.make_table(rows, seed=seed, users=users, days=3)
    table = pa.concat_tables([table, lg.edge_cases(rows, START + timedelta(days=1))])
    built = lg.publish(LocalStorage(root), table, landing_files=5, compacted_share=0.6, compacted_files=2)
    beside = [lg.add_foreign_file(built.storage), *lg.add_forged_files(built.storage, built)]
    return Lake(built, lg.truth_frame(table), beside)


@pytest.fixture(scope="module", params=["many-users", "few-users"])
def lake(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Lake:
    # many users: per-employee partials do not compress, so files are read directly;
    # few users: they do, so whole hours come from the cache and the edges are read directly.
    users = 3000 if request.param == "many-users" else 25
    return _build(tmp_path_factory.mktemp(request.param), 40_000, users, seed=11)


@pytest.fixture(scope="module", params=["cached", "direct"])
def snap(request: pytest.FixtureRequest, lake: Lake) -> Snapshot:
    return LakeAnalytics(lake.storage, mode=request.param).snapshot()


SELECTIONS: dict[str, Filters] = {
    "all": ALL,
    "cut hours and days": Filters(
        START + timedelta(hours=20, minutes=13), START + timedelta(days=2, hours=9, minutes=47)
    ),
    "inside one hour": Filters(
        START + timedelta(days=1, hours=10, minutes=5), START + timedelta(days=1, hours=10, minutes=50)
    ),
    "departments and buildings": Filters(departments=("Sales", "HR"), buildings=("Grace",)),
    "open start, one department": Filters(end=START + timedelta(days=1, hours=16, minutes=1), departments=("Finance",)),
    "open end": Filters(start=START + timedelta(days=2, hours=3)),
    "nothing": Filters(departments=("Nobody",)),
}


def _truth(lake: Lake, f: Filters) -> pd.DataFrame:
    return lg.select(lake.truth, f.start, f.end, f.departments, f.buildings)


@pytest.mark.parametrize("name", list(SELECTIONS))
def test_every_figure_equals_ground_truth(snap: Snapshot, lake: Lake, name: str) -> None:
    f = SELECTIONS[name]
    df = _truth(lake, f)
    _check_all(snap, df, f)


def _check_all(snap: Snapshot, df: pd.DataFrame, f: Filters) -> None:
    k = snap.kpis(f)
    t = lg.truth_kpis(df)
    assert (k.total_events, k.denied, k.sessions, k.premature, k.compliant) == (
        t["total_events"],
        t["denied"],
        t["sessions"],
        t["premature"],
        t["compliant"],
    )
    newest = t["newest_out_us"]
    assert k.newest_out == (None if newest is None else lg.EPOCH.replace(tzinfo=UTC) + timedelta(microseconds=newest))

    access = snap.access_distribution(f)
    assert dict(zip(access["access"], access["events"], strict=True)) == lg.truth_access(df)

    premature = snap.premature_by_dept_building(f)
    got = {
        (d, b): (p, s)
        for d, b, p, s in premature[["dept", "building", "premature", "sessions"]].itertuples(index=False)
    }
    assert got == lg.truth_premature(df)

    compliance = snap.compliance_distribution(f)
    if t["sessions"]:
        assert list(compliance["sessions"]) == [t["compliant"], t["premature"]]
        assert list(compliance["status"]) == ["Compliant (4 h or more)", "Premature (under 4 h)"]
    else:
        assert compliance.empty

    for bucket, minutes in (("minute", 1), ("hour", 60), ("day", 1440)):
        traffic = snap.traffic(f, bucket)  # type: ignore[arg-type]
        got_t = {
            ts.to_pydatetime(): (e, d) for ts, e, d in traffic[["time", "events", "denied"]].itertuples(index=False)
        }
        assert got_t == lg.truth_traffic(df, minutes), bucket
        assert traffic.attrs["bucket_minutes"] == minutes

    heat = snap.building_hour_heatmap(f)
    assert {(b, h): e for b, h, e in heat[["building", "hour", "events"]].itertuples(index=False)} == lg.truth_heatmap(
        df
    )

    denial = snap.denial_rates(f)
    truth_denial = lg.truth_denial(df)
    assert {
        (d, v): (e, n) for d, v, e, n in denial[["dimension", "value", "events", "denied"]].itertuples(index=False)
    } == (truth_denial)
    for d, v, e, n, rate in denial[["dimension", "value", "events", "denied", "denial_rate"]].itertuples(index=False):
        assert rate == pytest.approx(n / e), (d, v)

    by_dept = snap.compliance_by_department(f)
    got_d = {
        d: (s, c, p) for d, s, c, p in by_dept[["dept", "sessions", "compliant", "premature"]].itertuples(index=False)
    }
    assert got_d == lg.truth_compliance_by_dept(df)
    for _, s, c, rate in by_dept[["dept", "sessions", "compliant", "compliance_rate"]].itertuples(index=False):
        assert rate == pytest.approx(c / s)

    for min_premature, limit in ((2, 20), (1, 5), (4, 1000)):
        rep = snap.repeat_offenders(f, min_premature=min_premature, limit=limit)
        rows, total = lg.truth_repeat(df, min_premature, limit)
        got_r = [tuple(r) for r in rep[["user_id", "dept", "sessions", "premature"]].itertuples(index=False)]
        assert got_r == rows, (min_premature, limit)
        if rows:
            assert set(rep["repeat_employees"]) == {total}

    fresh = snap.freshness(f, now=datetime(2030, 1, 1, tzinfo=UTC))
    assert fresh.newest == k.newest_out


def test_random_selections_cached_equals_truth(lake: Lake) -> None:
    snap = LakeAnalytics(lake.storage).snapshot()
    rng = random.Random(5)
    span = 3 * 24 * 60 + 13 * 60
    for _ in range(6):
        lo = rng.choice([None, rng.randrange(span)])
        hi = rng.choice([None, rng.randrange(span)])
        if lo is not None and hi is not None and lo > hi:
            lo, hi = hi, lo
        f = Filters(
            None if lo is None else START + timedelta(minutes=lo),
            None if hi is None else START + timedelta(minutes=hi),
            tuple(rng.sample(DEPARTMENTS, rng.randint(0, 3))),
            tuple(rng.sample(BUILDINGS, rng.randint(0, 2))),
        )
        _check_all(snap, _truth(lake, f), f)


def test_four_hour_boundary_is_elapsed_time(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "lake")
    edge = lg.edge_cases(0, START)
    lg.publish(storage, edge, landing_files=1, compacted_share=0)
    for mode in ("cached", "direct"):
        snap = LakeAnalytics(storage, mode=mode).snapshot()
        k = snap.kpis()
        # 4 h - 1 us and 3 h 59 min (five hour boundaries crossed) are premature; 4 h, 4 h + 1 us,
        # and 4 h 0 min 30 s across midnight are compliant.
        assert (k.sessions, k.premature, k.compliant) == (5, 2, 3), mode


def test_filters_normalize_and_are_hashable() -> None:
    aware = datetime(2025, 3, 3, 12, 30, 59, 999_999, tzinfo=UTC)
    f = Filters(aware.astimezone(), datetime(2025, 3, 3, 14, 0, 1), ["HR", "Sales", "HR"], [])  # type: ignore[arg-type]
    assert f.start == datetime(2025, 3, 3, 12, 30)
    assert f.end == datetime(2025, 3, 3, 14, 0)
    assert f.departments == ("HR", "Sales") and f.buildings is None
    assert hash(f) == hash(Filters(datetime(2025, 3, 3, 12, 30), datetime(2025, 3, 3, 14), ("Sales", "HR")))
    assert minute_of(datetime(1970, 1, 1, 0, 1, 59)) == 1


def test_filter_values_are_parameters_not_sql(lake: Lake) -> None:
    snap = LakeAnalytics(lake.storage).snapshot()
    hostile = Filters(departments=("x'); DROP TABLE cube; --",), buildings=("' OR 1=1 --",))
    assert snap.kpis(hostile).total_events == 0
    assert snap.repeat_offenders(hostile).empty
    assert snap.kpis().total_events == len(lake.truth)


@pytest.mark.parametrize("mode", ["cached", "direct"])
def test_empty_and_missing_lake_give_empty_results(tmp_path: Path, mode: str) -> None:
    for storage in (LocalStorage(tmp_path / "missing"), LocalStorage(tmp_path / "empty")):
        if storage.root.name == "empty":
            storage.ensure_layout()
        snap = LakeAnalytics(storage, mode=mode).snapshot()  # type: ignore[arg-type]
        assert snap.is_empty
        k = snap.kpis()
        assert (k.total_events, k.sessions, k.newest_out, k.compliance_rate) == (0, 0, None, None)
        for df in (
            snap.access_distribution(),
            snap.premature_by_dept_building(),
            snap.compliance_distribution(),
            snap.traffic(),
            snap.building_hour_heatmap(),
            snap.denial_rates(),
            snap.compliance_by_department(),
            snap.repeat_offenders(),
        ):
            assert df.empty
        fresh = snap.freshness()
        assert fresh.newest is None and fresh.status == "empty"
        assert snap.time_bounds() == (None, None)


def test_refresh_reads_only_new_files_and_stays_exact(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "lake")
    table = lg.make_table(30_000, seed=3, users=20)
    first, second = table.slice(0, 20_000), table.slice(20_000)
    lg.publish(storage, first, landing_files=4, compacted_share=0)
    engine = LakeAnalytics(storage)
    QUERY_HISTORY.clear()
    snap1 = engine.snapshot()
    assert QUERY_HISTORY.records("refresh")[-1].files == 4
    assert engine.snapshot() is snap1  # unchanged lake: nothing read, same snapshot
    assert QUERY_HISTORY.records("refresh")[-1].files == 0
    commit_files(storage, [write_file(storage, second, layout.LANDING, "landing")])
    snap2 = engine.snapshot()
    assert QUERY_HISTORY.records("refresh")[-1].files == 1
    _check_all(snap2, lg.truth_frame(table), ALL)
    assert snap1.kpis().total_events == 20_000  # an old snapshot still answers for its own files


def test_compaction_merges_cached_partials_without_rereading(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "lake")
    table = lg.make_table(60_000, seed=4, users=10)
    built = lg.publish(storage, table, landing_files=6, compacted_share=0)
    engine = LakeAnalytics(storage)
    engine.snapshot()
    sources = built.landing[:4]
    compacted = lg.compact(storage, sources)  # one commit: the sources out, the compacted file in
    QUERY_HISTORY.clear()
    snap = engine.snapshot()
    part = snap.partials[compacted.key] if snap.partials else None
    assert part is not None and part.derived
    assert part.table(USERS) is not None  # few employees: the merged per-employee partial compresses
    assert QUERY_HISTORY.records("refresh")[-1].files == 0  # nothing read from disk
    cut = Filters(START + timedelta(hours=30, minutes=7))
    _check_all(snap, lg.select(lg.truth_frame(table), cut.start), cut)
    for s in sources:  # the clean-up deletes the replaced files after the grace period
        storage.delete(s.key)
    _check_all(engine.snapshot(), lg.truth_frame(table), ALL)


def test_a_committed_file_whose_sources_hint_lies_is_read_not_merged(tmp_path: Path) -> None:
    # The footer's badge.sources is a hint: a file of the table naming a source whose rows do not add up
    # to its numRecords in the log gets its partials from its own rows.
    storage = LocalStorage(tmp_path / "lake")
    table = lg.make_table(10_000, seed=6, users=10)
    built = lg.publish(storage, table, landing_files=2, compacted_share=0)
    engine = LakeAnalytics(storage)
    engine.snapshot()
    bogus = write_file(  # names the first file but holds only 10 of its rows
        storage,
        _rows_of(storage, built.landing[0].key).slice(0, 10),
        layout.COMPACTED,
        "compacted",
        {layout.META_SOURCES: json.dumps([built.landing[0].key])},
    )
    lake = LakeTable.open(storage)
    first = next(f for f in lake.snapshot().files if f.key == built.landing[0].key)
    lake.replace([first], [(bogus, FileStats.of_footer(pq.read_metadata(storage.path(bogus.key))))])
    snap = engine.snapshot()
    assert snap.partials is not None and not snap.partials[bogus.key].derived
    assert snap.kpis().total_events == 10 + _rows_of(storage, built.landing[1].key).num_rows


def test_a_forged_compacted_file_hides_nothing(tmp_path: Path) -> None:
    # Issue 11's finding: a zero-row file dropped into compacted/ naming landing files in badge.sources hid
    # their rows. No commit added it, so no reader reads it, before or after the engine saw the lake.
    storage = LocalStorage(tmp_path / "lake")
    table = lg.make_table(6_000, seed=15, users=10)
    built = lg.publish(storage, table, landing_files=3, compacted_share=0)
    engine = LakeAnalytics(storage)
    before = engine.snapshot()
    forged = lg.add_forged_files(storage, built)
    for mode in ("cached", "direct"):
        snap = LakeAnalytics(storage, mode=mode).snapshot()
        assert not set(forged) & set(snap.lake.keys)
        _check_all(snap, lg.truth_frame(table), ALL)
    assert engine.snapshot() is before  # the table did not change, so neither did the answer


def _rows_of(storage: LocalStorage, key: str) -> pa.Table:
    return pq.read_table(storage.path(key))


def test_freshness_lag_and_colours(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "lake")
    table = lg.make_table(2_000, seed=9)
    lg.publish(storage, table, landing_files=2, compacted_share=0)
    snap = LakeAnalytics(storage).snapshot()
    newest = snap.kpis().newest_out
    assert newest is not None
    for lag, colour in ((5, "fresh"), (59.9, "fresh"), (60, "amber"), (299, "amber"), (300, "red")):
        fresh = snap.freshness(now=newest + timedelta(seconds=lag))
        assert fresh.lag_seconds == pytest.approx(lag)
        assert fresh.status == colour
        assert fresh.at(newest + timedelta(seconds=lag + 400)).status == "red"  # it ages with the clock
    assert freshness_status(None) == "empty"


def test_each_query_is_monitored_with_rows_and_files(lake: Lake) -> None:
    QUERY_HISTORY.clear()
    direct = LakeAnalytics(lake.storage, mode="direct").snapshot()
    direct.access_distribution()
    rec = QUERY_HISTORY.records("access distribution")[-1]
    assert rec.rows == 2 and rec.files == len(lake.built.landing) + len(lake.built.compacted) and rec.ms > 0
    cached = LakeAnalytics(lake.storage).snapshot()
    cached.premature_by_dept_building()
    rec = QUERY_HISTORY.records("premature badge-outs")[-1]
    assert rec.files == 0 and rec.rows == len(lg.truth_premature(lake.truth))


def test_queries_read_only_the_files_of_the_table(lake: Lake) -> None:
    # The replaced landing files hold the same rows as the compacted ones, the foreign file is junk and
    # the forged files repeat or hide rows: reading any of them would break the totals.
    assert lake.built.replaced and len(lake.beside) == 4
    on_disk = {f.key for zone in (layout.LANDING, layout.COMPACTED) for f in lake.storage.list_all(zone)}
    assert set(lake.beside) <= on_disk
    for mode in ("cached", "direct"):
        snap = LakeAnalytics(lake.storage, mode=mode).snapshot()
        assert set(snap.lake.keys) == {f.key for f in lake.built.landing + lake.built.compacted}
        assert snap.lake.version == read_snapshot(lake.storage).version
        assert snap.kpis().total_events == len(lake.truth)


def test_freshness_of_the_whole_lake_comes_from_the_log(lake: Lake) -> None:
    newest = lg.EPOCH.replace(tzinfo=UTC) + timedelta(microseconds=int(lake.truth["out_us"].max()))
    for mode, files in (("cached", 0), ("direct", len(lake.built.landing) + len(lake.built.compacted))):
        QUERY_HISTORY.clear()
        snap = LakeAnalytics(lake.storage, mode=mode).snapshot()  # type: ignore[arg-type]
        fresh = snap.freshness(now=datetime(2030, 1, 1, tzinfo=UTC))
        # cached: no file read, the statistics answer; direct, the reference, reads every file
        assert QUERY_HISTORY.records("freshness")[-1].files == files, mode
        assert fresh.newest == newest == snap.kpis().newest_out
        assert snap.lake.newest_event_time == newest.replace(tzinfo=None)


def test_time_bounds_cover_the_data(lake: Lake) -> None:
    snap = LakeAnalytics(lake.storage).snapshot()
    lo, hi = snap.time_bounds()
    first = lg.EPOCH + timedelta(microseconds=int(lake.truth["out_us"].min()))
    last = lg.EPOCH + timedelta(microseconds=int(lake.truth["out_us"].max()))
    assert lo == first.replace(second=0, microsecond=0) and hi == last.replace(second=0, microsecond=0)
    f = Filters(departments=("HR",))
    direct = LakeAnalytics(lake.storage, mode="direct").snapshot()
    assert snap.time_bounds(f) == direct.time_bounds(f)


def test_concurrent_callers_each_get_their_own_answer(lake: Lake) -> None:
    engine = LakeAnalytics(lake.storage)
    selections = [ALL, *(Filters(departments=(d,)) for d in DEPARTMENTS)]
    expected = {f: (len(_truth(lake, f)), lg.truth_repeat(_truth(lake, f), 2, 5)[0]) for f in selections}
    results: dict[Filters, list[tuple[int, list[tuple[str, str, int, int]]]]] = {f: [] for f in selections}
    errors: list[BaseException] = []

    def work(f: Filters) -> None:
        try:
            for _ in range(4):
                snap = engine.snapshot()
                rep = snap.repeat_offenders(f, limit=5)
                top = [tuple(r) for r in rep[["user_id", "dept", "sessions", "premature"]].itertuples(index=False)]
                results[f].append((snap.kpis(f).total_events, top))
        except BaseException as exc:  # surfaced below: a thread must not swallow a failure
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(f,)) for f in selections]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    assert results == {f: [e] * 4 for f, e in expected.items()}


def test_span_plan_covers_exactly_the_selected_minutes() -> None:
    rng = random.Random(8)
    for _ in range(600):
        size = rng.choice([1, 60, 1440])
        lo = rng.choice([None, rng.randrange(0, 5000)])
        hi = rng.choice([None, rng.randrange(0, 5000)])
        how = plan_spans(lo, hi, size, subtract=size > 1 and rng.random() < 0.7)
        universe = range(-size, 5000 + 2 * size)
        count = dict.fromkeys(universe, 0)
        for b_lo, b_hi in how.cached:
            for m in universe:
                if (b_lo is None or m // size >= b_lo) and (b_hi is None or m // size < b_hi):
                    count[m] += 1
        for s_lo, s_hi in how.plus:
            for m in range(s_lo if s_lo is not None else universe.start, s_hi if s_hi is not None else universe.stop):
                count[m] += 1
        for s_lo, s_hi in how.minus:
            for m in range(s_lo, s_hi):
                count[m] -= 1
        want = {m: int((lo is None or m >= lo) and (hi is None or m < hi)) for m in universe}
        assert count == want, (lo, hi, size, how)
        if size == 1:
            assert not how.plus and not how.minus  # whole minutes: always from the cache


def test_subtracted_minutes_do_not_leak_a_department(tmp_path: Path) -> None:
    # An employee seen under "Analyst" only in the unselected minutes of a mostly selected hour, and under
    # "Sales" in the selected ones: the answer must say Sales (the cached hour minus the rest cancels out).
    storage = LocalStorage(tmp_path / "lake")
    base = lg.make_table(20_000, seed=12, users=10)
    hour = START + timedelta(days=1, hours=10)
    outs = [hour + timedelta(minutes=m) for m in (5, 7, 40, 45, 50)]
    n = len(outs)
    leaker = pa.Table.from_pydict(
        {
            "event_id": list(range(base.num_rows, base.num_rows + n)),
            "user_id": ["00000000-0000-4000-8000-00000000beef"] * n,
            "dept": ["Analyst", "Analyst", "Sales", "Sales", "Sales"],
            "building_location": ["Grace"] * n,
            "badge_in_timestamp": [t - timedelta(hours=1) for t in outs],
            "badge_out_timestamp": outs,
            "access_granted": [True] * n,
        },
        schema=RECORD_SCHEMA,
    )
    table = pa.concat_tables([base, with_duration(leaker)])
    lg.publish(storage, table, landing_files=1, compacted_share=0)
    snap = LakeAnalytics(storage).snapshot()
    assert snap.partials is not None and all(p.table(USERS) is not None for p in snap.partials.values())
    f = Filters(hour + timedelta(minutes=20), hour + timedelta(hours=1))
    got = snap.repeat_offenders(f, min_premature=1, limit=100_000).set_index("user_id")
    assert got.loc["00000000-0000-4000-8000-00000000beef", "dept"] == "Sales"
    assert got.loc["00000000-0000-4000-8000-00000000beef", "premature"] == 3
    rows, _ = lg.truth_repeat(lg.select(lg.truth_frame(table), f.start, f.end), 1, 100_000)
    assert [
        tuple(r) for r in got.reset_index()[["user_id", "dept", "sessions", "premature"]].itertuples(index=False)
    ] == rows


def test_a_file_vanishing_mid_refresh_is_retried_with_a_newer_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # While the engine reads the files of its snapshot, a compaction commits and the clean-up deletes its
    # sources: the read fails on a missing file, and the engine takes the newer snapshot and reads that.
    storage = LocalStorage(tmp_path / "lake")
    table = lg.make_table(3_000, seed=13)
    built = lg.publish(storage, table, landing_files=3, compacted_share=0)
    real = PartialCache.ensure
    calls: list[int] = []

    def compaction_meanwhile(self: PartialCache, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            lg.compact(storage, built.landing[:2])
            for f in built.landing[:2]:
                storage.delete(f.key)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(PartialCache, "ensure", compaction_meanwhile)
    first_version = read_snapshot(storage).version
    snap = LakeAnalytics(storage).snapshot()
    assert len(calls) == 2 and snap.lake.version == read_snapshot(storage).version != first_version
    assert snap.kpis().total_events == 3_000
    _check_all(snap, lg.truth_frame(table), ALL)


def test_a_file_of_the_table_missing_from_disk_is_an_error_not_dropped(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "lake")
    built = lg.publish(storage, lg.make_table(3_000, seed=13), landing_files=2, compacted_share=0)
    storage.delete(built.landing[0].key)  # gone from disk, still in the table: no newer snapshot helps
    with pytest.raises(LakeError, match=f"{built.landing[0].key} is in the table's snapshot but missing"):
        LakeAnalytics(storage).snapshot()


def test_a_read_error_surfaces_and_no_file_is_dropped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = LocalStorage(tmp_path / "lake")
    lg.publish(storage, lg.make_table(3_000, seed=13), landing_files=2, compacted_share=0)
    real = PartialCache.ensure
    calls: list[int] = []

    def eio_once(self: PartialCache, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise duckdb.IOException("IO Error: Input/output error (EIO)")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(PartialCache, "ensure", eio_once)
    engine = LakeAnalytics(storage)
    with pytest.raises(LakeError, match="EIO"):  # every file still exists: not a newer snapshot's business
        engine.snapshot()
    assert len(calls) == 1
    assert engine.snapshot().kpis().total_events == 3_000  # the next refresh reads every file again


def test_an_unmigrated_lake_says_to_migrate(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "lake")
    storage.ensure_layout()
    write_file(storage, lg.make_table(100, seed=1), layout.LANDING, "landing")  # the previous layout: no log
    for mode in ("cached", "direct"):
        with pytest.raises(UnmigratedLakeError, match="python -m lake migrate"):
            LakeAnalytics(storage, mode=mode).snapshot()


def test_a_failing_query_raises_a_lake_error(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "lake")
    built = lg.publish(storage, lg.make_table(3_000, seed=14), landing_files=2, compacted_share=0)
    snap = LakeAnalytics(storage, mode="direct").snapshot()
    storage.delete(built.landing[0].key)  # deleted under an old snapshot's feet
    with pytest.raises(LakeError, match="cube query failed"):
        snap.kpis()
