"""Per-file statistics for the table's ``add`` actions: rows, and min/max of the event id and the timestamps.

Guarantee: the statistics a writer commits are computed from the exact rows it wrote (the Arrow table,
or the footer of the file it has just written itself), never from a file someone else put there, and
serialise to the Delta protocol's ``stats`` JSON (``numRecords``, ``minValues``, ``maxValues``,
``nullCount``; ``timestamp_ntz`` values as ISO-8601 without a zone).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

# The columns the table keeps statistics for (``delta.dataSkippingStatsColumns``).
STATS_COLUMNS: Final[tuple[str, ...]] = ("event_id", "badge_in_timestamp", "badge_out_timestamp")
QUARANTINE_STATS_COLUMNS: Final[tuple[str, ...]] = ("event_id",)


@dataclass(frozen=True)
class FileStats:
    """One file's statistics; min/max are None for an empty file or a column of nulls only."""

    rows: int
    minimum: dict[str, Any]
    maximum: dict[str, Any]
    nulls: dict[str, int]

    @property
    def event_id_min(self) -> int | None:
        value = self.minimum.get("event_id")
        return None if value is None else int(value)

    @property
    def event_id_max(self) -> int | None:
        value = self.maximum.get("event_id")
        return None if value is None else int(value)

    @classmethod
    def of_table(cls, table: pa.Table, columns: tuple[str, ...] = STATS_COLUMNS) -> FileStats:
        """Statistics of the rows of ``table`` (what a writer is about to write)."""
        minimum: dict[str, Any] = {}
        maximum: dict[str, Any] = {}
        nulls: dict[str, int] = {}
        for name in columns:
            column = table.column(name)
            bounds = pc.min_max(column)
            minimum[name] = bounds["min"].as_py()
            maximum[name] = bounds["max"].as_py()
            nulls[name] = int(column.null_count)
        return cls(int(table.num_rows), minimum, maximum, nulls)

    @classmethod
    def of_footer(cls, meta: pq.FileMetaData, columns: tuple[str, ...] = STATS_COLUMNS) -> FileStats:
        """Statistics from the row-group statistics of a Parquet file the caller has just written itself."""
        names = [meta.schema.column(i).name for i in range(meta.num_columns)]
        minimum: dict[str, Any] = {}
        maximum: dict[str, Any] = {}
        nulls: dict[str, int] = {}
        for name in columns:
            index = names.index(name)
            lows, highs, nulls[name] = [], [], 0
            for g in range(meta.num_row_groups):
                st = meta.row_group(g).column(index).statistics
                if st is None or not st.has_min_max:
                    if meta.row_group(g).num_rows:
                        raise ValueError(f"row group {g} has no statistics for {name}")
                    continue
                lows.append(st.min)
                highs.append(st.max)
                nulls[name] += int(st.null_count or 0)
            minimum[name] = min(lows) if lows else None
            maximum[name] = max(highs) if highs else None
        return cls(int(meta.num_rows), minimum, maximum, nulls)

    def to_json(self) -> str:
        """The Delta ``stats`` string of an ``add`` action."""

        def encode(value: Any) -> Any:
            return value.isoformat(timespec="microseconds") if isinstance(value, datetime) else value

        present = [name for name in self.minimum if self.minimum[name] is not None]
        return json.dumps(
            {
                "numRecords": self.rows,
                "minValues": {name: encode(self.minimum[name]) for name in present},
                "maxValues": {name: encode(self.maximum[name]) for name in present},
                "nullCount": dict(self.nulls),
            },
            separators=(",", ":"),
        )
