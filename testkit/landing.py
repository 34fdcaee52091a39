"""Test data for the compactor's tests: LAKE_SCHEMA tables built with numpy, published into landing/.

Event ids are consecutive from ``start``; the other columns look like badge data (a stable
population, a few departments and buildings, sessions of a few hours) so file sizes and compression
behave like the real thing. The ground truth of every test is the range of ids it published.
"""

from __future__ import annotations

import os
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lake import layout
from lake.compaction import KIND
from lake.liveset import live_set
from lake.parquet import write_file
from lake.storage import FileInfo, LocalStorage
from utils.records import BUILDINGS, DEPARTMENTS, RECORD_SCHEMA, with_duration

_POPULATION = 2_000
_RNG = np.random.default_rng(20250303)
_USERS = pa.array([str(uuid.UUID(bytes=_RNG.bytes(16), version=4)) for _ in range(_POPULATION)])
_T0_US = 1_740_960_000_000_000  # 2025-03-03 00:00 UTC


def lake_table(start: int, count: int, seed: int = 0) -> pa.Table:
    """``count`` LAKE_SCHEMA rows with event ids ``start .. start+count-1`` (same arguments, same rows)."""
    rng = np.random.default_rng([seed, start])
    ids = np.arange(start, start + count, dtype=np.int64)
    who = rng.integers(0, _POPULATION, count)
    badge_in = _T0_US + ids * 5_000_000 + rng.integers(0, 1_000_000, count)
    granted = rng.random(count) < 0.98
    length = np.where(granted, rng.integers(60, 12 * 3600, count) * 1_000_000 + rng.integers(0, 1_000_000, count), 0)
    table = pa.Table.from_arrays(
        [
            pa.array(ids),
            _USERS.take(pa.array(who)),
            pa.array(np.array(DEPARTMENTS)[who % len(DEPARTMENTS)]),
            pa.array(np.array(BUILDINGS)[rng.integers(0, len(BUILDINGS), count)]),
            pa.array(badge_in, pa.int64()).cast(pa.timestamp("us")),
            pa.array(badge_in + length, pa.int64()).cast(pa.timestamp("us")),
            pa.array(granted),
        ],
        schema=RECORD_SCHEMA,
    )
    return with_duration(table)


def publish_landing(storage: LocalStorage, start: int, rows_per_file: int, files: int) -> list[FileInfo]:
    """``files`` consecutive landing files of ``rows_per_file`` rows from event id ``start``."""
    return [
        write_file(storage, lake_table(start + i * rows_per_file, rows_per_file), layout.LANDING, "landing")
        for i in range(files)
    ]


def live_ids(storage: LocalStorage) -> np.ndarray:
    """Every event id in the live set, in the order the live files hold them (file by file)."""
    chunks = [
        pq.read_table(path, columns=["event_id"]).column("event_id").to_numpy() for path in live_set(storage).paths
    ]
    return np.concatenate(chunks) if chunks else np.empty(0, dtype=np.int64)


def assert_exactly_once(storage: LocalStorage, expected: range) -> None:
    """The live set holds each id of ``expected`` exactly once and nothing else."""
    ids = np.sort(live_ids(storage))
    assert len(ids) == len(expected), f"{len(ids)} live rows, expected {len(expected)}"
    assert np.array_equal(ids, np.arange(expected.start, expected.stop)), "live set is not the expected ids once each"


def compactor_temp(storage: LocalStorage) -> list[str]:
    """The compactor's files in temp/."""
    return [f.key for f in storage.list_all(layout.TEMP) if f.name.startswith(f"{KIND}-")]


def clone_lake(template: LocalStorage, storage: LocalStorage) -> None:
    """Hard-link every data file of ``template`` (landing/ and compacted/) into ``storage``, mtimes kept."""
    storage.ensure_layout()
    for zone in layout.DATA_ZONES:
        for info in template.list_all(zone):
            os.link(template.path(info.key), storage.path(info.key))


def clone_landing(template: LocalStorage, storage: LocalStorage, limit: int | None = None) -> list[FileInfo]:
    """Hard-link the (first ``limit``) landing files of ``template`` into ``storage`` (fast; never written)."""
    storage.ensure_layout()
    for info in template.list_files(layout.LANDING)[:limit]:
        os.link(template.path(info.key), storage.path(info.key))
    return storage.list_files(layout.LANDING)
