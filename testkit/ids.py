"""The one reader of event ids for tests and benchmarks: what a zone, or the lake's table, holds.

Ground truth for exactly-once checks: tests compare these ids with the ranges they wrote, never with
figures computed by the code under test.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from lake.storage import LocalStorage
from lake.table import read_snapshot


def file_ids(paths: Iterable[Path | str]) -> np.ndarray:
    """The ``event_id`` column of every file, concatenated in the order given (int64)."""
    chunks = [pq.read_table(path, columns=["event_id"])["event_id"].to_numpy() for path in paths]
    return np.concatenate(chunks) if chunks else np.empty(0, np.int64)


def zone_ids(storage: LocalStorage, zone: str, *, prefix: str = "") -> np.ndarray:
    """Event ids of the Parquet files listed in ``zone`` (whose names start with ``prefix``), file by file."""
    return file_ids(storage.path(f.key) for f in storage.list_files(zone) if f.name.startswith(prefix))


def live_ids(storage: LocalStorage) -> np.ndarray:
    """Every event id in the table's current snapshot, in the order its files hold them (file by file)."""
    return file_ids(read_snapshot(storage).paths)


def assert_exactly_once(storage: LocalStorage, expected: range) -> None:
    """The table's snapshot holds each id of ``expected`` exactly once and nothing else."""
    ids = np.sort(live_ids(storage))
    assert len(ids) == len(expected), f"{len(ids)} rows in the table, expected {len(expected)}"
    assert np.array_equal(ids, np.arange(expected.start, expected.stop)), "the table is not the expected ids once each"
