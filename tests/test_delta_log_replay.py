"""The lake is a Delta table any engine reads alike: a reader written from the protocol alone (no delta-rs,
``testkit.replay``) replays ``_delta_log`` and agrees with delta-rs and Polars on every figure, on a local disk
and in an S3 bucket; a directory read during the grace period double-counts, the table never does."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from lake import layout, table
from lake.filestats import FileStats
from lake.location import open_storage
from lake.parquet import write_file
from lake.snapshot import DataFile
from lake.storage import FileInfo, LocalStorage
from lake.table import CHECKPOINT_INTERVAL, LakeTable, read_snapshot
from testkit import replay as independent
from testkit.landing import publish_landing
from testkit.records import lake_table
from testkit.replay import LakeFiles, Replayed, lake_files, replay, upload
from testkit.s3 import S3Lake, s3_lake

__all__ = ["s3_lake"]  # the fixture, imported for pytest

ROWS_PER_FILE = 20


# -- figures of the replayed state (the reader itself is testkit.replay) ------------------------------------


@dataclass(frozen=True)
class Figures:
    files: frozenset[str]
    rows: int
    id_sum: int
    id_min: int
    id_max: int


def replayed_figures(files: LakeFiles, state: Replayed) -> tuple[Figures, Figures]:
    """The figures of the replayed state: from the add actions' statistics, and from reading those files."""
    stats = [json.loads(a["stats"]) for a in state.adds.values()]
    from_stats = Figures(
        frozenset(state.adds),
        sum(s["numRecords"] for s in stats),
        -1,  # statistics carry no sums
        min(s["minValues"]["event_id"] for s in stats),
        max(s["maxValues"]["event_id"] for s in stats),
    )
    ids = [pq.read_table(pa.BufferReader(files.read(p)), columns=["event_id"])["event_id"] for p in sorted(state.adds)]
    rows = sum(len(c) for c in ids)
    from_files = Figures(
        frozenset(state.adds),
        rows,
        sum(int(pc.sum(c).as_py()) for c in ids),
        min(int(pc.min(c).as_py()) for c in ids),
        max(int(pc.max(c).as_py()) for c in ids),
    )
    return from_stats, from_files


def relative(root: str, uri: str) -> str:
    """A file URI delta-rs gives, relative to the table's root (a directory or an ``s3://`` URL)."""
    if root.startswith("s3://"):
        return unquote(uri).removeprefix(f"{root}/")
    return str(Path(unquote(uri.removeprefix("file://"))).relative_to(root))


# -- building lakes through the table API -------------------------------------------------------------------


def compact(storage: LocalStorage, inputs: list[DataFile]) -> FileInfo:
    """What the compactor does: the inputs' rows into one compacted file, then one replace commit."""
    merged = lake_table(inputs[0].event_id_min, sum(f.row_count for f in inputs))
    out = write_file(storage, merged, layout.COMPACTED, "compacted")
    stats = FileStats.of_footer(pq.read_metadata(storage.path(out.key)))
    LakeTable.open(storage).replace(inputs, [(out, stats)])
    return out


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    s = LocalStorage(tmp_path / "lake")
    s.ensure_layout()
    return s


@dataclass(frozen=True)
class Where:
    """Where the lake under test is read: its root as delta-rs and Polars open it, their options, the files."""

    root: str
    options: dict[str, str] | None
    files: LakeFiles
    s3: S3Lake | None


@pytest.fixture(params=["local", "s3"])
def where(request: pytest.FixtureRequest, storage: LocalStorage) -> Iterator[Where]:
    """The lake is built on a local disk; ``s3``: then copied, key for key, into a moto bucket and read there."""
    if request.param == "local":
        yield Where(str(storage.root), None, lake_files(storage.root), None)
        return
    lake: S3Lake = request.getfixturevalue("s3_lake")
    yield Where(lake.url, lake.env, lake_files(lake), lake)


def test_the_independent_reader_names_what_the_lake_names() -> None:
    assert (independent.LOG_DIR, independent.APP_ID) == (table.LOG_DIR, table.APP_ID)
    assert independent.DATA_ZONES == layout.DATA_ZONES


def test_an_independent_replay_of_the_log_agrees_with_delta_rs_and_polars(storage: LocalStorage, where: Where) -> None:
    publish_landing(storage, 0, ROWS_PER_FILE, 60)
    compact(storage, list(read_snapshot(storage).in_zone(layout.LANDING)[:40]))  # tombstones in the checkpoint
    publish_landing(storage, 60 * ROWS_PER_FILE, ROWS_PER_FILE, 70)  # past the checkpoint at 100 commits
    landing = read_snapshot(storage).in_zone(layout.LANDING)
    compact(storage, list(landing[:30]))  # a compaction after the checkpoint: removes in the JSON commits
    publish_landing(storage, 130 * ROWS_PER_FILE, ROWS_PER_FILE, 5)
    total = 135 * ROWS_PER_FILE
    if where.s3 is not None:
        upload(storage.root, where.s3)
    root = where.root

    state = replay(where.files)
    assert state.checkpoint is not None and state.checkpoint >= CHECKPOINT_INTERVAL - 1
    assert state.removed_after_checkpoint == 30
    from_stats, from_files = replayed_figures(where.files, state)

    dt = DeltaTable(root, storage_options=where.options)
    assert state.version == dt.version()
    assert from_files.files == {relative(root, u) for u in dt.file_uris()}
    actions = pa.table(dt.get_add_actions(flatten=True)).to_pydict()
    assert set(actions["path"]) == from_files.files
    assert sum(actions["num_records"]) == from_stats.rows == from_files.rows == total
    assert min(actions["min.event_id"]) == from_stats.id_min == from_files.id_min == 0
    assert max(actions["max.event_id"]) == from_stats.id_max == from_files.id_max == total - 1
    events = dt.to_pyarrow_table(columns=["event_id"])["event_id"]
    assert (len(events), pc.sum(events).as_py()) == (from_files.rows, from_files.id_sum)
    assert from_files.id_sum == total * (total - 1) // 2
    assert state.position == dt.transaction_version(table.APP_ID) == total - 1

    polars = (
        pl.scan_delta(root, storage_options=where.options)
        .select(
            pl.len().alias("rows"),
            pl.col("event_id").sum().alias("sum"),
            pl.col("event_id").min().alias("min"),
            pl.col("event_id").max().alias("max"),
        )
        .collect()
        .row(0)
    )
    assert polars == (from_files.rows, from_files.id_sum, from_files.id_min, from_files.id_max)

    snap = read_snapshot(open_storage(root, where.options))  # and the lake's own reader, on its backend
    assert set(snap.keys) == from_files.files == state.keys and snap.committed_event_id == state.position


def test_a_directory_read_during_grace_is_no_longer_the_lakes_answer(storage: LocalStorage) -> None:
    root = storage.root
    inputs = publish_landing(storage, 0, 1_000, 3)
    compact(storage, list(read_snapshot(storage).files))
    assert all(storage.exists(info.key) for info in inputs)  # the inputs linger within the grace period

    globs = [str(root / layout.LANDING / "*.parquet"), str(root / layout.COMPACTED / "*.parquet")]
    with duckdb.connect() as con:
        by_directory = con.execute("SELECT count(*) FROM read_parquet(?)", [globs]).fetchone()
        paths = [str(p) for p in read_snapshot(storage).paths]
        by_snapshot = con.execute("SELECT count(*), count(DISTINCT event_id) FROM read_parquet(?)", [paths]).fetchone()
    dataset_rows = sum(ds.dataset(root / zone, format="parquet").count_rows() for zone in layout.DATA_ZONES)
    assert by_directory == (6_000,) and dataset_rows == 6_000  # what a plain directory read answers: twice

    assert by_snapshot == (3_000, 3_000)
    assert DeltaTable(str(root)).to_pyarrow_table(columns=["event_id"]).num_rows == 3_000
    assert pl.scan_delta(str(root)).select(pl.len()).collect().item() == 3_000
    assert replay(lake_files(root)).keys == set(read_snapshot(storage).keys)


def test_the_independent_reader_refuses_a_log_that_breaks_the_protocol(storage: LocalStorage) -> None:
    """The judge can fail: a gap in the commits, or a checkpoint named but missing, is an error, never a state."""
    root = storage.root
    publish_landing(storage, 0, ROWS_PER_FILE, 105)  # 106 commits: a checkpoint at the 100th
    files = lake_files(root)
    whole = replay(files)
    assert whole.checkpoint is not None and whole.checkpoint >= CHECKPOINT_INTERVAL - 1
    assert whole.position == 105 * ROWS_PER_FILE - 1 and len(whole.keys) == 105
    log_dir = root / independent.LOG_DIR

    after = log_dir / f"{whole.checkpoint + 2:020d}.json"
    after.rename(root / "aside.json")
    with pytest.raises(independent.ReplayError, match="a gap"):
        replay(files)
    (root / "aside.json").rename(after)

    [checkpoint] = log_dir.glob("*.checkpoint.parquet")
    checkpoint.rename(root / "aside.parquet")
    with pytest.raises(independent.ReplayError, match=f"_last_checkpoint names version {whole.checkpoint}"):
        replay(files)
    (log_dir / "_last_checkpoint").unlink()  # no hint and no checkpoint: the commits from 0 say it all
    assert replay(files).keys == whole.keys and replay(files).checkpoint is None
    (log_dir / f"{0:020d}.json").unlink()  # ... unless the first one is gone
    with pytest.raises(independent.ReplayError, match="a gap"):
        replay(files)
