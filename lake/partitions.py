"""The events table's partitions: one per UTC date of ``badge_out_timestamp``, in Hive-style directories.

A table created by this version is partitioned by the column ``date`` (Delta type ``date``): the UTC
date of each record's ``badge_out_timestamp``. Its value lives in each ``add`` action's
``partitionValues`` (``{"date": "2026-11-30"}``) and in the file's directory
(``landing/date=2026-11-30/…``, ``compacted/date=2026-11-30/…``); as the Delta protocol says, the data
files themselves do not hold the column, and every Delta reader (delta-rs, Polars, Spark, DuckDB's
``delta_scan``) adds it from the log and skips whole dates a filter on it excludes.

Guarantees: a data file of a partitioned table holds the records of one date only (:func:`split_by_date`
cuts a flush at midnight; a compaction never merges files of two dates), so removing a date from the
table (retention) removes exactly its records. A table created before partitions (``partition_columns``
empty) keeps working unpartitioned: every function here takes ``None`` for "no partition".
"""

from __future__ import annotations

import itertools
from datetime import date
from typing import Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from utils.records import LAKE_SCHEMA

COLUMN: Final = "date"  # the partition column
SOURCE_COLUMN: Final = "badge_out_timestamp"  # whose UTC date it is
# Nullable as Delta partition columns are: a file without rows has no date (its partition value is null).
TABLE_SCHEMA: Final[pa.Schema] = LAKE_SCHEMA.append(pa.field(COLUMN, pa.date32(), nullable=True))

Day = date | None  # a file's partition: its date, or None in an unpartitioned table


def directory(zone: str, day: Day) -> str:
    """Where a file of ``day`` lives in ``zone``: ``zone/date=YYYY-MM-DD`` (``zone`` itself without a partition)."""
    return zone if day is None else f"{zone}/{COLUMN}={day.isoformat()}"


def values(day: Day) -> dict[str, str | None]:
    """The ``partitionValues`` of an ``add`` action for a file of ``day``."""
    return {} if day is None else {COLUMN: day.isoformat()}


def dates_of(table: pa.Table) -> pa.Array:
    """The UTC date of each row's ``badge_out_timestamp`` (naive UTC by convention), as ``date32``."""
    return pc.cast(table.column(SOURCE_COLUMN), pa.date32())


def split_by_date(table: pa.Table) -> list[tuple[date, pa.Table]]:
    """``table``'s rows cut by date, dates ascending, each part in the table's row order.

    Records arrive in event-time order, so each date is usually one contiguous slice (zero-copy); rows
    out of order still land in their own date's part, in the order they came.
    """
    if table.num_rows == 0:
        return []
    days = dates_of(table).to_numpy(zero_copy_only=False).astype("datetime64[D]").astype(np.int64)
    if bool(np.all(days[1:] >= days[:-1])):
        cuts = np.flatnonzero(np.diff(days)) + 1
        bounds = [0, *cuts.tolist(), len(days)]
        return [(_day(int(days[lo])), table.slice(lo, hi - lo)) for lo, hi in itertools.pairwise(bounds)]
    return [(_day(int(d)), table.filter(pa.array(days == d))) for d in np.unique(days)]


def _day(days_since_epoch: int) -> date:
    return date.fromordinal(date(1970, 1, 1).toordinal() + days_since_epoch)
