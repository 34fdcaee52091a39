"""Persisted pre-aggregates (lake.aggregates): computed by the compactor, committed in the aggregates table, read
by the dashboard instead of the data files, and exact.

Every figure over a lake whose compacted files have their aggregates persisted equals ground truth and the
in-memory reference, for selections that cut minutes, hours and days and for every traffic bucket; an
aggregates file that no commit added, or that describes other rows than its data file's, is never used; the
compactor writes them for its outputs, fills in missing ones, and removes (then deletes after grace) those of
files that left the table; the dashboard's DuckDB runs under a memory limit.
"""

from __future__ import annotations

import random
import shutil
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from analytics.engine import LakeAnalytics
from analytics.filters import ALL, Filters
from analytics.monitor import QUERY_HISTORY
from analytics.partials import BUDGETED, HELD_WHEN_PERSISTED, PartialCache
from lake import aggregates, layout
from lake.aggregates import CUBE, CUBE_DAY, CUBE_HOUR, USERS
from lake.cleanup import GraceCleanup
from lake.compaction import Compactor
from lake.compaction.aggregating import AggregateSync
from lake.filestats import FileStats
from lake.storage import LocalStorage
from lake.table import AggregatesReader, AggregatesTable, read_snapshot
from testkit import lakes as lg
from testkit.landing import publish_landing
from testkit.processes import make_settings
from utils.errors import LakeError
from utils.records import BUILDINGS, DEPARTMENTS

START = lg.DEFAULT_START
DAYS = 3


def _sync(storage: LocalStorage, backfill: int = 100) -> tuple[int, int]:
    sync = AggregateSync(storage)
    try:
        return sync.sync(read_snapshot(storage), backfill=backfill)
    finally:
        sync.close()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[lg.BuiltLake, pd.DataFrame]:
    table = lg.make_table(60_000, seed=21, users=40, days=DAYS)
    table = pa.concat_tables([table, lg.edge_cases(60_000, START + timedelta(days=1))])
    storage = LocalStorage(tmp_path_factory.mktemp("persisted") / "lake")
    built = lg.publish(storage, table, landing_files=4, compacted_share=0.7, compacted_files=3)
    assert _sync(storage) == (3, 0)
    return built, lg.truth_frame(table)


def _figures(snap: object, f: Filters) -> dict[str, object]:
    """Every figure of the page for ``f``, as plain values."""
    out: dict[str, object] = {}
    for name in (
        "kpis",
        "access_distribution",
        "premature_by_dept_building",
        "compliance_distribution",
        "building_hour_heatmap",
        "denial_rates",
        "compliance_by_department",
    ):
        value = getattr(snap, name)(f)
        out[name] = value.to_dict() if isinstance(value, pd.DataFrame) else value
    for bucket in ("minute", "hour", "day", "auto"):
        out[f"traffic {bucket}"] = snap.traffic(f, bucket=bucket).to_dict()  # type: ignore[attr-defined]
    out["repeat"] = snap.repeat_offenders(f, min_premature=1, limit=1000).to_dict()  # type: ignore[attr-defined]
    out["bounds"] = snap.time_bounds(f)  # type: ignore[attr-defined]
    out["freshness"] = snap.freshness(f).newest  # type: ignore[attr-defined]
    return out


def _selections(count: int, seed: int) -> list[Filters]:
    rng = random.Random(seed)
    span = DAYS * 24 * 60 + 13 * 60
    out = [
        ALL,
        Filters(START + timedelta(hours=20, minutes=13), START + timedelta(days=2, hours=9, minutes=47)),
        Filters(START + timedelta(days=1, hours=10, minutes=5), START + timedelta(days=1, hours=10, minutes=50)),
        Filters(START + timedelta(days=1), START + timedelta(days=2)),  # whole days
        Filters(START + timedelta(hours=3), START + timedelta(days=1, hours=23)),  # most of a day: subtracted
    ]
    for _ in range(count):
        lo, hi = sorted(rng.sample(range(span), 2))
        out.append(
            Filters(
                rng.choice([None, START + timedelta(minutes=lo)]),
                rng.choice([None, START + timedelta(minutes=hi)]),
                tuple(rng.sample(DEPARTMENTS, rng.randint(0, 2))),
                tuple(rng.sample(BUILDINGS, rng.randint(0, 2))),
            )
        )
    return out


def test_the_compacted_files_are_answered_from_their_persisted_aggregates(
    built: tuple[lg.BuiltLake, pd.DataFrame],
) -> None:
    lake, _ = built
    snap = LakeAnalytics(lake.storage).snapshot()
    assert snap.partials is not None
    compacted = {f.key for f in lake.compacted}
    for key, partial in snap.partials.items():
        if key in compacted:
            assert partial.persisted is not None and partial.persisted.source == key
            # only the coarse levels are held; the fine ones stay in the aggregates file
            assert set(partial.tables) == {level.name for level in HELD_WHEN_PERSISTED}
            assert partial.table(CUBE) is None and partial.table(USERS) is None
        else:
            assert partial.persisted is None and partial.table(CUBE) is not None  # a landing file: scanned


def test_a_cold_refresh_reads_no_compacted_data_file(built: tuple[lg.BuiltLake, pd.DataFrame]) -> None:
    lake, _ = built
    QUERY_HISTORY.clear()
    snap = LakeAnalytics(lake.storage).snapshot()
    assert QUERY_HISTORY.records("refresh")[-1].files == len(lake.landing)
    QUERY_HISTORY.clear()
    snap.kpis()
    snap.traffic()
    snap.repeat_offenders()
    assert all(r.files == 0 for name in ("kpis", "traffic over time") for r in QUERY_HISTORY.records(name))


@pytest.mark.parametrize("seed", [1, 2])
def test_every_figure_equals_ground_truth_and_the_in_memory_reference(
    built: tuple[lg.BuiltLake, pd.DataFrame], seed: int
) -> None:
    lake, truth = built
    persisted = LakeAnalytics(lake.storage).snapshot()
    reference = LakeAnalytics(lake.storage, persisted=False).snapshot()
    direct = LakeAnalytics(lake.storage, mode="direct").snapshot()
    for f in _selections(6, seed):
        got = _figures(persisted, f)
        assert got == _figures(reference, f) == _figures(direct, f), f
        df = lg.select(truth, f.start, f.end, f.departments, f.buildings)
        k = persisted.kpis(f)
        t = lg.truth_kpis(df)
        assert (k.total_events, k.denied, k.sessions, k.premature) == (
            t["total_events"],
            t["denied"],
            t["sessions"],
            t["premature"],
        )
        assert {
            (str(b), int(h)): int(e) for b, h, e in persisted.building_hour_heatmap(f).itertuples(index=False)
        } == lg.truth_heatmap(df)
        repeat = persisted.repeat_offenders(f, min_premature=2, limit=20)
        rows, total = lg.truth_repeat(df, 2, 20)
        assert [tuple(r) for r in repeat[["user_id", "dept", "sessions", "premature"]].itertuples(index=False)] == rows
        assert (int(repeat["repeat_employees"].iloc[0]) if len(repeat) else 0) == total


def test_long_windows_are_answered_from_the_day_and_hour_roll_ups(built: tuple[lg.BuiltLake, pd.DataFrame]) -> None:
    lake, _ = built
    snap = LakeAnalytics(lake.storage).snapshot()
    compacted = [p for p in (snap.partials or {}).values() if p.persisted is not None]
    day, hour = snap.table(CUBE_DAY), snap.table(CUBE_HOUR)
    # a day holds at most 48 cells, an hour too: the roll-ups are small whatever the rows
    assert 0 < day.num_rows <= 48 * (DAYS + 1) * len(snap.lake.files)
    assert hour.num_rows <= 48 * 24 * (DAYS + 1) * len(snap.lake.files)
    assert sum(p.rows for p in compacted) > 20 * sum(t.num_rows for p in compacted if (t := p.table(CUBE_DAY)))


def test_an_aggregates_file_no_commit_added_is_inert(built: tuple[lg.BuiltLake, pd.DataFrame], tmp_path: Path) -> None:
    lake, truth = built
    root = tmp_path / "lake"
    shutil.copytree(lake.storage.root, root)
    storage = LocalStorage(root)
    landing = lake.landing[0].key
    # a foreign file at the place of a landing file's aggregates, claiming a huge count
    forged = pa.table(
        {"level": ["cube_day"], "source_rows": [lake.landing[0].size], "bucket": [20_000], "events": [10**9]}
    )
    target = root / aggregates.ZONE / aggregates.file_path(landing)
    target.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(forged, target)
    snap = LakeAnalytics(storage).snapshot()
    assert snap.partials is not None and snap.partials[landing].persisted is None
    assert snap.kpis().total_events == len(truth)


def test_committed_aggregates_of_other_rows_are_not_used(
    built: tuple[lg.BuiltLake, pd.DataFrame], tmp_path: Path
) -> None:
    lake, truth = built
    root = tmp_path / "lake"
    shutil.copytree(lake.storage.root, root)
    storage = LocalStorage(root)
    table = AggregatesTable.open(storage)
    assert table is not None
    victim = lake.landing[0]
    rows = aggregates.to_persisted({CUBE_DAY.name: pa.table({"day": [20_000], "dept": ["HR"]})}, 999_999)
    tmp = storage.new_temp_path("forged")
    aggregates.write_persisted(rows, str(tmp))
    name = aggregates.file_path(victim.key).split("/")[-1]
    info = storage.publish(tmp, f"{aggregates.ZONE}/{layout.LANDING}", name)
    table.update([(info, FileStats.of_table(rows, aggregates.STATS_COLUMNS))], [])
    assert victim.key in table.persisted()
    snap = LakeAnalytics(storage).snapshot()
    assert snap.partials is not None and snap.partials[victim.key].persisted is None  # 999,999 rows: not its own
    assert snap.kpis().total_events == len(truth)


def test_the_compactor_persists_backfills_and_retires_aggregates(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "lake")
    storage.ensure_layout()
    publish_landing(storage, 0, 5_000, 12)
    settings = make_settings(storage.root, compaction_min_files=10, compaction_grace_seconds=0.0)
    compactor = Compactor(storage, settings)
    report = compactor.run_cycle()
    assert report.compactions and report.compactions[0].files_in == 12
    snapshot = read_snapshot(storage)
    outputs = {f.key for f in snapshot.in_zone(layout.COMPACTED)}
    table = AggregatesTable.open(storage)
    assert table is not None and set(table.persisted()) == outputs
    # exact: the persisted levels are those of the output's rows
    for key in outputs:
        stored = pq.read_table(storage.path(table.persisted()[key].info.key))
        direct = aggregates.compute_file(str(storage.path(key)))
        for level in aggregates.LEVELS:
            mine = aggregates.from_persisted(stored, level).sort_by([(n, "ascending") for n in level.schema.names])
            theirs = aggregates.conform(direct[level.name], level.schema).sort_by(
                [(n, "ascending") for n in level.schema.names]
            )
            assert mine.equals(theirs), level.name

    # the aggregates of a compacted file that lacks them (a crash between the two commits) are filled in
    table.update([], list(table.persisted().values()))
    assert AggregatesTable.open(storage).persisted() == {}  # type: ignore[union-attr]
    assert compactor.sync_aggregates() == (len(outputs), 0)

    # more landing files: the small compacted file is merged again; its aggregates leave the table
    publish_landing(storage, 60_000, 5_000, 12)
    before = AggregatesTable.open(storage).persisted()  # type: ignore[union-attr]
    compactor.run_cycle()
    after = AggregatesTable.open(storage).persisted()  # type: ignore[union-attr]
    now = {f.key for f in read_snapshot(storage).in_zone(layout.COMPACTED)}
    assert set(after) == now and not set(before) & set(after)
    # ... and their files go after grace, like any file out of its table
    GraceCleanup(storage, 0.0, clock=lambda: 4e9).run()
    gone = [p.info.key for p in before.values()]
    assert not any(storage.exists(k) for k in gone)
    assert all(storage.exists(p.info.key) for p in after.values())


def test_with_compaction_aggregates_off_none_are_computed_and_stale_ones_still_leave(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "lake")
    storage.ensure_layout()
    publish_landing(storage, 0, 5_000, 12)
    Compactor(storage, make_settings(storage.root, compaction_min_files=10)).run_cycle()
    before = AggregatesTable.open(storage).persisted()  # type: ignore[union-attr]
    assert len(before) == 1

    publish_landing(storage, 60_000, 5_000, 12)  # the small compacted file is merged again, aggregates off
    off = make_settings(storage.root, compaction_min_files=10, compaction_aggregates=False)
    report = Compactor(storage, off).run_cycle()
    assert report.compactions and report.compactions[0].files_in == 13
    assert AggregatesTable.open(storage).persisted() == {}  # type: ignore[union-attr]
    assert not [p for p in storage.list_tree("temp") if aggregates.ZONE in p.key]  # nothing computed or staged
    # ... and the dashboard counts every event from the data files themselves
    snap = LakeAnalytics(storage).snapshot()
    assert snap.partials is not None and all(p.persisted is None for p in snap.partials.values())
    assert snap.kpis().total_events == 24 * 5_000


def test_aggregates_that_run_out_of_memory_never_fail_the_compaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    storage = LocalStorage(tmp_path / "lake")
    storage.ensure_layout()
    publish_landing(storage, 0, 5_000, 12)

    def out_of_memory(self: aggregates.Accumulator, batch: pa.RecordBatch) -> None:
        raise MemoryError

    with monkeypatch.context() as patched:
        patched.setattr(aggregates.Accumulator, "_add", out_of_memory)
        report = Compactor(storage, make_settings(storage.root, compaction_min_files=10)).run_cycle()
    assert report.compactions and report.compactions[0].files_in == 12  # committed all the same
    assert [f.row_count for f in read_snapshot(storage).in_zone(layout.COMPACTED)] == [60_000]
    assert "not computed" in caplog.text and "not written" in caplog.text  # the output's, then the backfill's
    assert AggregatesTable.open(storage) is None or AggregatesTable.open(storage).persisted() == {}  # type: ignore[union-attr]
    # the next cycle, with memory again, fills them in
    assert Compactor(storage, make_settings(storage.root, compaction_min_files=10)).sync_aggregates() == (1, 0)


def test_backfill_is_bounded_per_cycle(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "lake")
    table = lg.make_table(9_000, seed=3, users=10, days=1)
    lg.publish(storage, table, landing_files=1, compacted_share=1.0, compacted_files=3)
    assert _sync(storage, backfill=2) == (2, 0)
    assert _sync(storage, backfill=2) == (1, 0)
    assert _sync(storage, backfill=2) == (0, 0)


def test_the_dashboards_duckdb_has_a_memory_limit(tmp_path: Path) -> None:
    engine = LakeAnalytics(LocalStorage(tmp_path), memory_limit_mb=300)
    con = engine.connect()
    try:
        limit = con.execute("SELECT current_setting('memory_limit')").fetchone()
    finally:
        con.close()
    assert limit is not None and limit[0].replace(" ", "") in {"300.0MiB", "286.1MiB", "300.0MB"}


@pytest.mark.parametrize("budget", [0, 150_000])
def test_beyond_the_memory_budget_levels_stay_in_the_aggregates_files_and_stay_exact(
    built: tuple[lg.BuiltLake, pd.DataFrame], budget: int
) -> None:
    lake, _ = built
    engine = LakeAnalytics(lake.storage, cache=PartialCache(held_budget_bytes=budget))
    snap = engine.snapshot()
    assert snap.partials is not None
    persisted = [p for p in snap.partials.values() if p.persisted is not None]
    assert engine.cache.budgeted_bytes <= budget
    dropped = [p for p in persisted if all(p.table(level) is None for level in BUDGETED)]
    if budget == 0:
        assert len(dropped) == len(persisted) == len(lake.compacted)
    else:  # room for some, not all
        assert 0 < len(dropped) < len(persisted)
    for p in persisted:
        assert p.table(CUBE_DAY) is not None and p.table(CUBE_HOUR) is not None  # the cube roll-ups always
    reference = LakeAnalytics(lake.storage, mode="direct").snapshot()
    for f in _selections(3, seed=budget + 7):
        assert _figures(snap, f) == _figures(reference, f), f
    engine.cache.retain([])
    assert engine.cache.budgeted_bytes == 0


def _copy(lake: lg.BuiltLake, tmp_path: Path) -> LocalStorage:
    root = tmp_path / "lake"
    shutil.copytree(lake.storage.root, root)
    return LocalStorage(root)


def _copy_without_aggregates(lake: lg.BuiltLake, tmp_path: Path) -> LocalStorage:
    """A copy of the lake whose aggregates table holds nothing (as if the compactor had not written them yet)."""
    storage = _copy(lake, tmp_path)
    table = AggregatesTable.open(storage)
    assert table is not None
    table.update([], table.entries())
    return storage


def test_a_commit_that_fails_after_landing_leaves_its_files(
    built: tuple[lg.BuiltLake, pd.DataFrame], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lake, truth = built
    storage = _copy_without_aggregates(lake, tmp_path)
    real = AggregatesTable.update

    def lands_then_fails(self: AggregatesTable, *args: object, **kwargs: object) -> None:
        real(self, *args, **kwargs)  # type: ignore[arg-type]
        raise LakeError("the answer to the commit was lost")

    monkeypatch.setattr(AggregatesTable, "update", lands_then_fails)
    assert _sync(storage) == (0, 0)  # logged, not raised
    monkeypatch.undo()
    committed = AggregatesTable.open(storage).persisted()  # type: ignore[union-attr]
    assert set(committed) == {f.key for f in lake.compacted}
    assert all(storage.exists(p.info.key) for p in committed.values())  # not deleted: they are in the table
    snap = LakeAnalytics(storage).snapshot()
    assert snap.partials is not None and all(snap.partials[f.key].persisted for f in lake.compacted)
    assert snap.kpis().total_events == len(truth)


def test_a_file_whose_aggregates_cannot_be_computed_does_not_hold_up_the_others(
    built: tuple[lg.BuiltLake, pd.DataFrame], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lake, _ = built
    storage = _copy_without_aggregates(lake, tmp_path)
    bad = lake.compacted[0].key
    real = AggregateSync._compute

    def fails_for_one(self: AggregateSync, f: object) -> pa.Table:
        if getattr(f, "key", None) == bad:
            raise OSError("EIO")
        return real(self, f)  # type: ignore[arg-type]

    monkeypatch.setattr(AggregateSync, "_compute", fails_for_one)
    assert _sync(storage) == (len(lake.compacted) - 1, 0)
    assert bad not in AggregatesTable.open(storage).persisted()  # type: ignore[union-attr]
    monkeypatch.undo()
    assert _sync(storage) == (1, 0)  # tried again next time


def test_unreadable_aggregates_make_the_dashboard_read_the_data_files(
    built: tuple[lg.BuiltLake, pd.DataFrame], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lake, truth = built
    storage = _copy(lake, tmp_path)
    reference = _figures(LakeAnalytics(storage, mode="direct").snapshot(), ALL)
    # one aggregates file gone from disk though committed
    gone = AggregatesTable.open(storage).persisted()[lake.compacted[0].key]  # type: ignore[union-attr]
    assert storage.delete(gone.info.key)
    snap = LakeAnalytics(storage).snapshot()
    assert snap.partials is not None and snap.partials[lake.compacted[0].key].persisted is None
    assert _figures(snap, ALL) == reference
    # the aggregates table's log unreadable
    monkeypatch.setattr(AggregatesReader, "persisted", lambda self: (_ for _ in ()).throw(LakeError("EIO")))
    snap = LakeAnalytics(storage).snapshot()
    assert snap.partials is not None and not any(p.persisted for p in snap.partials.values())
    assert snap.kpis().total_events == len(truth) and _figures(snap, ALL) == reference


def test_aggregates_committed_after_a_refresh_replace_what_it_computed(
    built: tuple[lg.BuiltLake, pd.DataFrame], tmp_path: Path
) -> None:
    lake, _ = built
    storage = _copy_without_aggregates(lake, tmp_path)
    engine = LakeAnalytics(storage)
    first = engine.snapshot()
    assert first.partials is not None and not any(p.persisted for p in first.partials.values())
    assert _sync(storage) == (len(lake.compacted), 0)  # the compactor catches up; the events table is unchanged
    second = engine.snapshot()
    assert second is not first and second.partials is not None
    assert all(second.partials[f.key].persisted is not None for f in lake.compacted)
    assert all(second.partials[f.key].table(CUBE) is None for f in lake.compacted)  # the fine levels let go
    assert _figures(second, ALL) == _figures(first, ALL)
    assert engine.snapshot() is second
