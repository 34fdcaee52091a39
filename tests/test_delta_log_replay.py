"""The lake is a Delta table any engine reads alike: a reader written here from the protocol alone (no delta-rs)
replays ``_delta_log`` and agrees with delta-rs and Polars on every figure; a directory read during the grace
period double-counts, the table never does."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from lake import layout
from lake.filestats import FileStats
from lake.parquet import write_file
from lake.snapshot import DataFile
from lake.storage import FileInfo, LocalStorage
from lake.table import APP_ID, CHECKPOINT_INTERVAL, LOG_DIR, LakeTable, read_snapshot
from testkit.landing import publish_landing
from testkit.records import lake_table

ROWS_PER_FILE = 20
COMMIT_FILE = re.compile(r"^(\d{20})\.json$")


# -- the independent reader: JSON commits and the checkpoint Parquet, nothing else --------------------------


@dataclass
class Replayed:
    """A table's state by replaying its log: the ``add`` actions alive, and each application's ``txn`` version."""

    version: int
    checkpoint: int | None
    adds: dict[str, dict[str, Any]] = field(default_factory=dict)  # path relative to the root -> add action
    txns: dict[str, int] = field(default_factory=dict)
    removed_after_checkpoint: int = 0


def replay(root: Path) -> Replayed:
    """Replay ``<root>/_delta_log``: the checkpoint ``_last_checkpoint`` names (if any), then every later commit."""
    log_dir = root / LOG_DIR
    adds: dict[str, dict[str, Any]] = {}
    txns: dict[str, int] = {}
    checkpoint: int | None = None
    pointer = log_dir / "_last_checkpoint"
    if pointer.exists():
        checkpoint = int(json.loads(pointer.read_text())["version"])
        parts = sorted(log_dir.glob(f"{checkpoint:020d}.checkpoint*.parquet"))  # one file, or n parts
        assert parts, f"_last_checkpoint names version {checkpoint} but no checkpoint file is there"
        for part in parts:
            table = pq.read_table(part)
            for row in table.select([c for c in ("add", "txn", "sidecar") if c in table.column_names]).to_pylist():
                assert row.get("sidecar") is None, "a v2 checkpoint with sidecars: not the layout this lake writes"
                if row["add"] is not None:
                    adds[unquote(row["add"]["path"])] = row["add"]
                if row["txn"] is not None:
                    txns[row["txn"]["appId"]] = int(row["txn"]["version"])
            # a checkpoint's ``remove`` rows are tombstones: already out of the state it records
    first = 0 if checkpoint is None else checkpoint + 1
    versions = sorted(
        int(m.group(1)) for p in log_dir.iterdir() if (m := COMMIT_FILE.match(p.name)) and int(m.group(1)) >= first
    )
    assert versions == list(range(first, first + len(versions))), "a gap in the log's commits"
    state = Replayed(versions[-1] if versions else first - 1, checkpoint, adds, txns)
    for version in versions:
        for line in (log_dir / f"{version:020d}.json").read_text().splitlines():
            if not line.strip():
                continue
            action = json.loads(line)
            if "add" in action:
                state.adds[unquote(action["add"]["path"])] = action["add"]
            elif "remove" in action:
                state.adds.pop(unquote(action["remove"]["path"]), None)
                state.removed_after_checkpoint += 1
            elif "txn" in action:
                state.txns[action["txn"]["appId"]] = int(action["txn"]["version"])
    return state


@dataclass(frozen=True)
class Figures:
    files: frozenset[str]
    rows: int
    id_sum: int
    id_min: int
    id_max: int


def replayed_figures(root: Path, state: Replayed) -> tuple[Figures, Figures]:
    """The figures of the replayed state: from the add actions' statistics, and from reading those files."""
    stats = [json.loads(a["stats"]) for a in state.adds.values()]
    from_stats = Figures(
        frozenset(state.adds),
        sum(s["numRecords"] for s in stats),
        -1,  # statistics carry no sums
        min(s["minValues"]["event_id"] for s in stats),
        max(s["maxValues"]["event_id"] for s in stats),
    )
    ids = [pq.read_table(root / path, columns=["event_id"])["event_id"] for path in sorted(state.adds)]
    rows = sum(len(c) for c in ids)
    from_files = Figures(
        frozenset(state.adds),
        rows,
        sum(int(pc.sum(c).as_py()) for c in ids),
        min(int(pc.min(c).as_py()) for c in ids),
        max(int(pc.max(c).as_py()) for c in ids),
    )
    return from_stats, from_files


def relative(root: Path, uri: str) -> str:
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


def test_an_independent_replay_of_the_log_agrees_with_delta_rs_and_polars(storage: LocalStorage) -> None:
    root = storage.root
    publish_landing(storage, 0, ROWS_PER_FILE, 60)
    compact(storage, list(read_snapshot(storage).in_zone(layout.LANDING)[:40]))  # tombstones in the checkpoint
    publish_landing(storage, 60 * ROWS_PER_FILE, ROWS_PER_FILE, 70)  # past the checkpoint at 100 commits
    landing = read_snapshot(storage).in_zone(layout.LANDING)
    compact(storage, list(landing[:30]))  # a compaction after the checkpoint: removes in the JSON commits
    publish_landing(storage, 130 * ROWS_PER_FILE, ROWS_PER_FILE, 5)
    total = 135 * ROWS_PER_FILE

    state = replay(root)
    assert state.checkpoint is not None and state.checkpoint >= CHECKPOINT_INTERVAL - 1
    assert state.removed_after_checkpoint == 30
    from_stats, from_files = replayed_figures(root, state)

    dt = DeltaTable(str(root))
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
    assert state.txns[APP_ID] == dt.transaction_version(APP_ID) == total - 1

    polars = (
        pl.scan_delta(str(root))
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

    snap = read_snapshot(storage)  # and the lake's own reader
    assert set(snap.keys) == from_files.files and snap.committed_event_id == state.txns[APP_ID]


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
    assert replay(root).adds.keys() == set(read_snapshot(storage).keys)
