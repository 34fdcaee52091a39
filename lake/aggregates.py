"""Pre-aggregates: the dashboard's aggregates of a data file, defined once, computed once, and persisted.

**Definitions.** The time axis is the event time, ``badge_out_timestamp``. Four base aggregates (each an
:class:`Aggregate`), and their coarser roll-ups (:attr:`Aggregate.base` names the aggregate a roll-up
sums up, whose columns every query over the family uses):

* ``cube``: events per badge-out **minute** x department x building x access, with the premature count
  (granted and ``duration_s < 14400``) and the newest badge-out; rolled up per **hour** (``cube_hour``)
  and per **day** (``cube_day``). At most 48 cells a bucket, whatever the rows.
* ``arrivals``: events per badge-out **hour** x department x building x badge-in hour of day (the
  heatmap); per day: ``arrivals_day``.
* ``users``: granted and premature sessions per badge-out **hour** x employee x department x building;
  per day: ``users_day``.
* ``doors``: events per badge-out **hour** x department x building x door, from the records of version 2
  on (``door_id``, a column the table gained by schema evolution); per day: ``doors_day``.

Every measure is a count (sums) except the newest badge-out (a maximum): partials of the same cell merge
exactly, so a roll-up is the sum of its buckets and any set of files is the sum of its files.

**Persisted.** The compactor computes every level of a compacted file from the rows it has just written
(:func:`compute`) and stores them as one Parquet file of the **aggregates table**, a Delta table of its own
at ``<lake>/aggregates`` (:class:`lake.table.AggregatesTable`), beside the data file's relative path
(``aggregates/compacted/date=.../compacted-...~<12 hex>.parquet`` holds the aggregates of
``compacted/date=.../compacted-....parquet``). Guarantees:

* an aggregate file is used only if a commit of the aggregates table adds it (a foreign file is inert),
  only for the data file its path names (:func:`source_of`), and only if the data file is in the events
  table's snapshot the reader answers for with exactly the rows the aggregates were computed from
  (``source_rows``); its name has a random part, so a name is never used twice;
* data file names are unique and files are immutable, so an aggregate never goes stale: when its data
  file leaves the events table (compaction, retention) the aggregate is removed by the next commit of
  the aggregates table and deleted after grace like any file out of its table;
* it is committed after the events table's commit that adds its data file (never describes a file that
  is not, or not yet, in the lake); a crash in between leaves the file without aggregates, which the
  next cycle computes (:meth:`lake.compaction.Compactor.sync_aggregates`), and a reader meanwhile
  computes them itself. Missing aggregates make a reader slower, never wrong.
"""

from __future__ import annotations

import itertools
import re
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lake import grouping
from utils.records import COMPLIANCE_SECONDS, DOOR_ID

US_PER_MINUTE: Final = 60_000_000
US_PER_HOUR: Final = 3_600_000_000
US_PER_DAY: Final = 86_400_000_000
MINUTES_PER_HOUR: Final = 60

_OUT_US: Final = "epoch_us(badge_out_timestamp)"
_PREMATURE: Final = f"duration_s < {COMPLIANCE_SECONDS}"

ZONE: Final = "aggregates"  # the aggregates table's root under the lake
TABLE_NAME: Final = "badge_aggregates"
CHUNK_ROWS: Final = 262_144  # rows of a file aggregated at a time by compute_file(): its memory is a chunk
ROW_GROUP_ROWS: Final = 65_536  # of a persisted file: a reader of one level and span skips the rest
ROLLUP_BATCH_ROWS: Final = 262_144  # base rows rolled up in one query by rollups_by_file
# The lake columns the aggregates' expressions read (a file's other columns are not read for them).
SCANNED_COLUMNS: Final = frozenset(
    {
        "badge_in_timestamp",
        "badge_out_timestamp",
        "dept",
        "building_location",
        "access_granted",
        "duration_s",
        "user_id",
        DOOR_ID,
    }
)


@dataclass(frozen=True)
class Measure:
    """An aggregated column: its value per raw row, its aggregate over raw rows, and how partials merge."""

    name: str
    raw: str  # one source row's contribution
    scan: str  # the aggregate over source rows
    merge: str  # "sum" or "max": how two partials of the same cell combine
    # The same over arrays (Accumulator): the derived column (see derive()) summed, or maxed, per group; None:
    # the rows counted. Tests hold it equal to ``scan``.
    column: str | None = None
    type: pa.DataType = field(default_factory=pa.int64)


@dataclass(frozen=True)
class Aggregate:
    """One partial aggregate: grouping keys over the raw columns, measures, and which rows it covers.

    Its SQL holds only constant expressions and identifiers, never a value; every partial of it has :attr:`schema`.
    A roll-up (:meth:`rollup`) has the same keys and measures with a coarser first (time) key, and ``base``:
    the aggregate whose columns it is read in (:meth:`as_base`).
    """

    name: str
    time_column: str  # "minute", "hour" or "day": badge-out time bucket
    time_us: int
    keys: tuple[tuple[str, str, pa.DataType], ...]  # (name, expression over lake columns, type); time first
    measures: tuple[Measure, ...]
    where: str = "true"  # rows it covers
    always_keep: bool = True  # False: a reader keeps it only when much smaller than the file
    # A column of a later record version it needs (schema evolution): a file without it holds none of its
    # rows (its partial is empty, it is never read for it), and files are read with their columns by name.
    requires: str | None = None
    rows: str | None = None  # ``where`` over arrays: the derived boolean column (see derive()) of its rows
    base: Aggregate | None = None  # a roll-up: the finer aggregate it sums up (None: a base aggregate)

    @property
    def schema(self) -> pa.Schema:
        return pa.schema([(n, t) for n, _, t in self.keys] + [(m.name, m.type) for m in self.measures])

    @property
    def root(self) -> Aggregate:
        """The base aggregate of its family (itself for a base aggregate)."""
        return self if self.base is None else self.base.root

    @property
    def minutes_per_bucket(self) -> int:
        return self.time_us // US_PER_MINUTE

    @property
    def additive(self) -> bool:
        """Whether every measure is a sum (so a partly selected bucket may be the bucket minus the rest)."""
        return all(m.merge == "sum" for m in self.measures)

    def rollup(self, name: str, time_column: str, time_us: int) -> Aggregate:
        """The same aggregate over coarser buckets of ``time_us`` (a multiple of this one's)."""
        assert time_us % self.time_us == 0
        keys = ((time_column, f"{_OUT_US} // {time_us}", pa.int64()), *self.keys[1:])
        # a roll-up is small whatever the rows (one row per bucket and key): always kept
        return replace(
            self, name=name, time_column=time_column, time_us=time_us, keys=keys, base=self, always_keep=True
        )

    def raw_select(self, sign: int = 1) -> str:
        """Projection of source rows onto this aggregate's columns (one row each), for direct reads.

        ``sign=-1`` negates the (additive) measures: rows to subtract from a cached bucket.
        """
        assert sign == 1 or self.additive
        cols = [f"{expr} AS {name}" for name, expr, _ in self.keys]
        cols += [f"{'-' if sign < 0 else ''}({m.raw}) AS {m.name}" for m in self.measures]
        return ", ".join(cols)

    def as_base(self, sign: int = 1, time_column: str | None = None) -> str:
        """Projection of this aggregate's rows onto its base's columns: the bucket's first base bucket.

        ``time_column``: where this aggregate's time is (default its own name; ``bucket`` in a persisted file).
        """
        assert sign == 1 or self.additive
        root = self.root
        factor = self.time_us // root.time_us
        cols = [f"{time_column or self.time_column} * {factor} AS {root.time_column}"]
        cols += [name for name, _, _ in self.keys[1:]]
        cols += [f"{'-' if sign < 0 else ''}{m.name} AS {m.name}" for m in self.measures]
        return ", ".join(cols)

    def scan_sql(self, source: str | None = None) -> str:
        """Aggregate ``source`` per file (``file_index``) into this partial, sorted by file.

        The default source is the files ``$files`` (``file_index``: position in the list); another is a
        relation with the lake's columns and a ``file_index`` column (rows read through the storage).
        """
        source = source or self.files_source("$files")
        cols = [f"{expr} AS {name}" for name, expr, _ in self.keys] + [f"{m.scan} AS {m.name}" for m in self.measures]
        return (
            f"SELECT file_index, {', '.join(cols)} FROM {source} "  # noqa: S608 (constants only)
            f"WHERE {self.where} GROUP BY ALL ORDER BY file_index"
        )

    def files_source(self, files: str) -> str:
        """DuckDB's read of the parameter ``files`` (local paths) for this aggregate."""
        return f"read_parquet({files}, union_by_name = true)" if self.requires else f"read_parquet({files})"

    def merge_sql(self) -> str:
        """Re-aggregate table ``parts`` (partials of several files) into one partial."""
        keys = ", ".join(n for n, _, _ in self.keys)
        aggs = ", ".join(f"{m.merge}({m.name}) AS {m.name}" for m in self.measures)
        return f"SELECT {keys}, {aggs} FROM parts GROUP BY ALL"  # noqa: S608 (constant identifiers only)

    def rollup_sql(self, *, by_file: bool = False) -> str:
        """This roll-up from table ``parts`` (partials of its base); ``by_file``: per ``file_index``, sorted by it."""
        assert self.base is not None
        factor = self.time_us // self.base.time_us
        keys = [f"{self.base.time_column} // {factor} AS {self.time_column}"] + [n for n, _, _ in self.keys[1:]]
        if by_file:
            keys.insert(0, "file_index")
            aggs = ", ".join(f"{m.merge}({m.name}) AS {m.name}" for m in self.measures)
            return f"SELECT {', '.join(keys)}, {aggs} FROM parts GROUP BY ALL ORDER BY file_index"  # noqa: S608
        aggs = ", ".join(f"{m.merge}({m.name}) AS {m.name}" for m in self.measures)
        return f"SELECT {', '.join(keys)}, {aggs} FROM parts GROUP BY ALL"  # noqa: S608 (constants only)


CUBE: Final = Aggregate(
    "cube",
    "minute",
    US_PER_MINUTE,
    (
        ("minute", f"{_OUT_US} // {US_PER_MINUTE}", pa.int64()),
        ("dept", "dept", pa.string()),
        ("building", "building_location", pa.string()),
        ("granted", "access_granted", pa.bool_()),
    ),
    (
        Measure("events", "1::BIGINT", "count(*)", "sum"),
        Measure(
            "premature",
            f"(access_granted AND {_PREMATURE})::BIGINT",
            f"count(*) FILTER (WHERE access_granted AND {_PREMATURE})",
            "sum",
            column="granted_premature",
        ),
        Measure("last_out_us", _OUT_US, f"max({_OUT_US})", "max", column="out_us"),
    ),
)
ARRIVALS: Final = Aggregate(
    "arrivals",
    "hour",
    US_PER_HOUR,
    (
        ("hour", f"{_OUT_US} // {US_PER_HOUR}", pa.int64()),
        ("dept", "dept", pa.string()),
        ("building", "building_location", pa.string()),
        ("in_hour", f"((epoch_us(badge_in_timestamp) // {US_PER_HOUR}) % 24)::INTEGER", pa.int32()),
    ),
    (Measure("events", "1::BIGINT", "count(*)", "sum"),),
)
USERS: Final = Aggregate(
    "users",
    "hour",
    US_PER_HOUR,
    (
        ("hour", f"{_OUT_US} // {US_PER_HOUR}", pa.int64()),
        ("user_id", "user_id", pa.string()),
        ("dept", "dept", pa.string()),
        ("building", "building_location", pa.string()),
    ),
    (
        Measure("sessions", "1::BIGINT", "count(*)", "sum"),
        Measure(
            "premature", f"({_PREMATURE})::BIGINT", f"count(*) FILTER (WHERE {_PREMATURE})", "sum", column="premature"
        ),
    ),
    where="access_granted",  # a denied attempt is not a session
    rows="granted",
    always_keep=False,
)
DOORS: Final = Aggregate(
    "doors",
    "hour",
    US_PER_HOUR,
    (
        ("hour", f"{_OUT_US} // {US_PER_HOUR}", pa.int64()),
        ("dept", "dept", pa.string()),
        ("building", "building_location", pa.string()),
        ("door", DOOR_ID, pa.string()),
    ),
    (Measure("events", "1::BIGINT", "count(*)", "sum"),),
    where=f"{DOOR_ID} IS NOT NULL",  # record version 2 onwards: the reader the badge was presented to
    requires=DOOR_ID,
    rows="has_door",
)
CUBE_HOUR: Final = CUBE.rollup("cube_hour", "hour", US_PER_HOUR)
CUBE_DAY: Final = CUBE_HOUR.rollup("cube_day", "day", US_PER_DAY)
ARRIVALS_DAY: Final = ARRIVALS.rollup("arrivals_day", "day", US_PER_DAY)
USERS_DAY: Final = USERS.rollup("users_day", "day", US_PER_DAY)
DOORS_DAY: Final = DOORS.rollup("doors_day", "day", US_PER_DAY)

AGGREGATES: Final[tuple[Aggregate, ...]] = (CUBE, ARRIVALS, USERS, DOORS)  # the base aggregates
ROLLUPS: Final[tuple[Aggregate, ...]] = (CUBE_HOUR, CUBE_DAY, ARRIVALS_DAY, USERS_DAY, DOORS_DAY)  # bases first
LEVELS: Final[tuple[Aggregate, ...]] = AGGREGATES + ROLLUPS
# Each family's levels, coarsest first, its base last: how a query is answered (whole days, then whole
# hours, then what is left from the base).
FAMILIES: Final[dict[str, tuple[Aggregate, ...]]] = {
    CUBE.name: (CUBE_DAY, CUBE_HOUR, CUBE),
    ARRIVALS.name: (ARRIVALS_DAY, ARRIVALS),
    USERS.name: (USERS_DAY, USERS),
    DOORS.name: (DOORS_DAY, DOORS),
}
BY_NAME: Final[dict[str, Aggregate]] = {a.name: a for a in LEVELS}

# One persisted file: every level's rows, a level's own columns filled and the others null.
LEVEL: Final = "level"
BUCKET: Final = "bucket"  # the level's time bucket (minute, hour or day number since the epoch)
SOURCE_ROWS: Final = "source_rows"  # rows of the data file the aggregates were computed from
PERSISTED_SCHEMA: Final = pa.schema(
    [
        (LEVEL, pa.string()),
        (SOURCE_ROWS, pa.int64()),
        (BUCKET, pa.int64()),
        ("dept", pa.string()),
        ("building", pa.string()),
        ("granted", pa.bool_()),
        ("in_hour", pa.int32()),
        ("user_id", pa.string()),
        ("door", pa.string()),
        ("events", pa.int64()),
        ("premature", pa.int64()),
        ("last_out_us", pa.int64()),
        ("sessions", pa.int64()),
    ]
)
STATS_COLUMNS: Final[tuple[str, ...]] = (SOURCE_ROWS,)


_SUFFIX: Final = ".parquet"
_NAMED: Final = re.compile(r"(.+)~[0-9a-f]{12}\.parquet")


def file_path(source: str) -> str:
    """A new path (relative to the aggregates table) for aggregates of the data file ``source``: its path with a
    random part, so that no path is ever used twice (a name never comes back, as for data files)."""
    stem = source.removesuffix(_SUFFIX)
    return f"{stem}~{uuid.uuid4().hex[:12]}{_SUFFIX}"


def source_of(path: str) -> str | None:
    """The data file an aggregates file's path (relative to its table) describes; None if it names none."""
    named = _NAMED.fullmatch(path)
    return None if named is None else f"{named.group(1)}{_SUFFIX}"


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table``'s columns of ``schema``, in its order and types, in one chunk."""
    return table.select(schema.names).cast(schema).combine_chunks()


def merge_tables(con: duckdb.DuckDBPyConnection, aggregate: Aggregate, tables: Sequence[pa.Table]) -> pa.Table:
    """One partial from several of the same aggregate (cells summed, newest kept)."""
    filled = [t for t in tables if t.num_rows]
    if not filled:
        return aggregate.schema.empty_table()
    if len(filled) == 1:
        return filled[0]
    cur = con.cursor()
    try:
        cur.register("parts", pa.concat_tables(filled))
        return conform(cur.sql(aggregate.merge_sql()).to_arrow_table(), aggregate.schema)
    finally:
        cur.close()


def roll_up(con: duckdb.DuckDBPyConnection, level: Aggregate, base: pa.Table) -> pa.Table:
    """The roll-up ``level`` of ``base`` (a partial of ``level.base``)."""
    if base.num_rows == 0:
        return level.schema.empty_table()
    cur = con.cursor()
    try:
        cur.register("parts", base)
        return conform(cur.sql(level.rollup_sql()).to_arrow_table(), level.schema)
    finally:
        cur.close()


def split_by_file(table: pa.Table) -> dict[int, pa.Table]:
    """Rows grouped by ``file_index`` (the table is sorted by it), without that column."""
    if table.num_rows == 0:
        return {}
    codes = table.column("file_index").to_numpy()
    starts = np.concatenate([[0], np.flatnonzero(np.diff(codes)) + 1])
    ends = np.concatenate([starts[1:], [len(codes)]])
    body = table.drop_columns(["file_index"])
    return {int(codes[s]): body.slice(int(s), int(e - s)) for s, e in zip(starts, ends, strict=True)}


def rollups_by_file(
    con: duckdb.DuckDBPyConnection, bases: Mapping[str, Mapping[str, pa.Table]]
) -> dict[str, dict[str, pa.Table]]:
    """Each file's base partials (``bases``, by file key) and every roll-up of them: one query per
    roll-up level for files of up to ``ROLLUP_BATCH_ROWS`` base rows together, so many small files cost a few
    queries, not a few per file, and memory holds one batch."""
    keys = list(bases)
    out = {key: dict(bases[key]) for key in keys}
    cur = con.cursor()
    try:
        for level in ROLLUPS:
            assert level.base is not None
            base = level.base.name
            batch: list[pa.Table] = []
            rows = 0
            for i, key in enumerate(keys):
                out[key][level.name] = level.schema.empty_table()
                table = out[key][base]
                if table.num_rows:
                    batch.append(table.append_column("file_index", pa.repeat(pa.scalar(i, pa.int64()), table.num_rows)))
                    rows += table.num_rows
                if batch and (rows >= ROLLUP_BATCH_ROWS or i == len(keys) - 1):
                    cur.register("parts", pa.concat_tables(batch))
                    for index, rolled in split_by_file(
                        cur.sql(level.rollup_sql(by_file=True)).to_arrow_table()
                    ).items():
                        out[keys[index]][level.name] = conform(rolled, level.schema)
                    cur.unregister("parts")
                    batch, rows = [], 0
    finally:
        cur.close()
    return out


# The keys that are text: each is held as a code of its file's own dictionary (Accumulator).
TEXT_KEYS: Final[dict[str, str]] = {
    "dept": "dept",
    "building": "building_location",
    "user_id": "user_id",
    "door": DOOR_ID,
}
MERGE_ROWS: Final = 1 << 18  # partial rows an Accumulator holds per aggregate before it merges them


def _micros(column: pa.Array) -> np.ndarray:
    if column.null_count:
        raise ValueError("a timestamp column holds nulls")
    if column.type != pa.timestamp("us"):  # finer units truncated, as DuckDB's epoch_us does
        column = pc.cast(column, pa.timestamp("us"), safe=False)
    return np.asarray(column.view(pa.int64()).to_numpy(zero_copy_only=False), np.int64)


def _div(values: np.ndarray, by: int) -> np.ndarray:
    """``values // by`` as DuckDB's integer division: toward zero (numpy floors; they differ below zero only)."""
    quotient = values // by
    if len(values) and values.min() < 0:
        quotient += (values < 0) & (quotient * by != values)
    return quotient


def _mod(values: np.ndarray, by: int) -> np.ndarray:
    """``values % by`` as DuckDB's: the dividend's sign (numpy takes the divisor's; they differ below zero only)."""
    return np.asarray(np.fmod(values, by))


def _numbers(column: pa.Array) -> np.ndarray:
    if column.null_count:
        raise ValueError("a column the aggregates group or count by holds nulls")
    return np.asarray(column.to_numpy(zero_copy_only=False))


class _Dictionary:
    """Codes of a text column that mean the same value in every batch of a file (each batch's own dictionary
    is mapped onto them)."""

    def __init__(self) -> None:
        self.values = pa.array([], pa.string())

    def codes(self, column: pa.Array) -> tuple[np.ndarray, np.ndarray | None]:
        """(code per row, validity per row or None when every row holds a value)."""
        if not pa.types.is_dictionary(column.type):
            column = pc.dictionary_encode(column)
        dictionary = column.dictionary.cast(pa.string())
        at = pc.index_in(dictionary, value_set=self.values)
        if at.null_count:
            self.values = pa.concat_arrays([self.values, dictionary.filter(pc.is_null(at))])
            at = pc.index_in(dictionary, value_set=self.values)
        mapping = np.asarray(at.to_numpy(zero_copy_only=False), np.int64)
        if not len(mapping):  # an empty dictionary: no row holds a value
            return np.zeros(len(column), np.int64), np.zeros(len(column), bool)
        indices = np.asarray(column.indices.fill_null(0).to_numpy(zero_copy_only=False), np.int64)
        valid = None
        if column.indices.null_count or dictionary.null_count:  # a null index, or an index of a null value
            valid = np.asarray(column.indices.is_valid().to_numpy(zero_copy_only=False), bool)
            valid &= np.asarray(dictionary.is_valid().to_numpy(zero_copy_only=False), bool)[indices]
        return mapping[indices], valid

    def decode(self, codes: np.ndarray) -> pa.Array:
        return self.values.take(pa.array(codes, pa.int64()))


# One partial held as arrays: each key's values (text as codes) and each measure's, in the aggregate's order.
_Part = tuple[list[np.ndarray], list[np.ndarray]]


def _concatenated(agg: Aggregate, parts: Sequence[_Part]) -> _Part:
    """``parts`` of ``agg`` one after the other (not merged: a cell may appear in several)."""
    return (
        [np.concatenate([p[0][i] for p in parts]) for i in range(len(agg.keys))],
        [np.concatenate([p[1][i] for p in parts]) for i in range(len(agg.measures))],
    )


def _merged(agg: Aggregate, parts: Sequence[_Part], time_factor: int = 1) -> _Part:
    """``parts`` of ``agg`` (or of its base, with time keys divided by ``time_factor``) as one partial."""
    keys, values = _concatenated(agg, parts)
    if time_factor != 1:
        keys[0] = _div(keys[0], time_factor)
    groups = grouping.Groups(keys)
    measures = [
        groups.sums(v) if m.merge == "sum" else groups.maxima(v) for m, v in zip(agg.measures, values, strict=True)
    ]
    return _narrow(groups.keys), measures


def _narrow(keys: list[np.ndarray]) -> list[np.ndarray]:
    """Keys held in int32 where their values fit (codes, flags and time buckets do): partials take less memory."""
    fits = np.iinfo(np.int32)
    return [k.astype(np.int32) if len(k) and fits.min <= k.min() and k.max() <= fits.max else k for k in keys]


class Accumulator:
    """Every level of one data file's rows, fed a batch at a time (:meth:`add`), in numpy (:mod:`lake.grouping`).

    Exact: the same cells as each aggregate's SQL (``scan_sql``), which the tests hold it to. Memory: the
    batch in hand and the partials, merged whenever they pass ``MERGE_ROWS`` rows, not the rows: text keys are
    held as codes, and the time axis as bucket numbers.
    """

    def __init__(self, columns: Collection[str]) -> None:
        self._bases = tuple(a for a in AGGREGATES if a.requires is None or a.requires in columns)
        self._text = {key: _Dictionary() for key in TEXT_KEYS}
        self._parts: dict[str, list[_Part]] = {a.name: [] for a in self._bases}  # open: still merged
        self._held = dict.fromkeys(self._parts, 0)  # open partial rows held, per aggregate
        self._merged_rows = dict.fromkeys(self._parts, 0)  # of them, in the part of the last merge
        # Sealed: merged rows of buckets before the newest batch's, set aside in bucket order and never merged
        # again (rows come in time order: event ids are badge-out order). A bucket seen again after it was
        # sealed (rows out of order) only means one full merge at the end.
        self._sealed: dict[str, list[_Part]] = {a.name: [] for a in self._bases}
        self._sealed_through = dict.fromkeys(self._parts, np.iinfo(np.int64).min)  # the last sealed bucket
        self._disordered = dict.fromkeys(self._parts, False)

    def add(self, rows: pa.RecordBatch | pa.Table) -> None:
        """Aggregate ``rows`` (columns by name: those of ``SCANNED_COLUMNS`` the file has) into the partials."""
        for batch in rows.to_batches() if isinstance(rows, pa.Table) else [rows]:
            if batch.num_rows:
                self._add(batch)

    def _derive(self, batch: pa.RecordBatch) -> dict[str, np.ndarray]:
        """The keys, measures' columns and row selections of ``batch``, as arrays named as in the definitions."""
        out_us = _micros(batch.column("badge_out_timestamp"))
        in_us = _micros(batch.column("badge_in_timestamp"))
        granted = _numbers(batch.column("access_granted")).astype(bool)
        premature = _numbers(batch.column("duration_s")) < COMPLIANCE_SECONDS
        derived = {
            "out_us": out_us,
            "minute": _div(out_us, US_PER_MINUTE),
            "hour": _div(out_us, US_PER_HOUR),
            "in_hour": _mod(_div(in_us, US_PER_HOUR), 24),
            "granted": granted,
            "premature": premature.astype(np.int64),
            "granted_premature": (granted & premature).astype(np.int64),
        }
        names = batch.schema.names
        for key, column in TEXT_KEYS.items():
            if column not in names:
                continue
            codes, valid = self._text[key].codes(batch.column(column))
            if key == "door":  # a null door is no door: its rows are left out of DOORS (``rows``)
                derived["has_door"] = np.ones(len(codes), bool) if valid is None else valid
            elif valid is not None:
                raise ValueError(f"{column} holds nulls")
            derived[key] = codes
        return derived

    def _add(self, batch: pa.RecordBatch) -> None:
        derived = self._derive(batch)
        for agg in self._bases:
            chosen = None if agg.rows is None else derived[agg.rows]

            def column(name: str, chosen: np.ndarray | None = chosen) -> np.ndarray:
                values = derived[name]
                return values if chosen is None else values[chosen]

            keys = [np.asarray(column(name), np.int64) for name, _, _ in agg.keys]
            if not len(keys[0]):
                continue
            groups = grouping.Groups(keys)
            measures = [
                groups.counts()
                if m.column is None
                else groups.sums(column(m.column))
                if m.merge == "sum"
                else groups.maxima(column(m.column))
                for m in agg.measures
            ]
            part = (_narrow(groups.keys), measures)
            if int(part[0][0][0]) <= self._sealed_through[agg.name]:  # keys are sorted: [0][0] is the first bucket
                self._disordered[agg.name] = True
            self._parts[agg.name].append(part)
            self._held[agg.name] += groups.count
            # merge once the rows added since the last merge reach the merged rows (at least MERGE_ROWS): each
            # row is merged a logarithmic number of times; what is older than this batch is then sealed
            merged = self._merged_rows[agg.name]
            if self._held[agg.name] - merged >= max(MERGE_ROWS, merged):
                self._merge(agg, before=int(part[0][0][0]))

    def _merge(self, agg: Aggregate, before: int) -> None:
        """Merge the open partials of ``agg``; seal the merged rows of buckets before ``before``."""
        keys, measures = _merged(agg, self._parts[agg.name])
        cut = int(np.searchsorted(keys[0], before))  # merged rows are sorted by their keys, the bucket first
        if cut:
            self._sealed[agg.name].append(([k[:cut] for k in keys], [m[:cut] for m in measures]))
            self._sealed_through[agg.name] = int(keys[0][cut - 1])
        rest = ([k[cut:].copy() for k in keys], [m[cut:].copy() for m in measures])
        self._parts[agg.name] = [rest]
        self._held[agg.name] = self._merged_rows[agg.name] = len(rest[0][0])

    def _table(self, level: Aggregate, part: _Part | None) -> pa.Table:
        if part is None or not len(part[0][0]):
            return level.schema.empty_table()
        columns: list[pa.Array] = []
        for (name, _, type_), values in zip(level.keys, part[0], strict=True):
            if name in TEXT_KEYS:
                columns.append(self._text[name].decode(values))
            else:
                columns.append(pa.array(values.astype(type_.to_pandas_dtype()), type_))
        columns += [pa.array(values, m.type) for m, values in zip(level.measures, part[1], strict=True)]
        return pa.Table.from_arrays(columns, schema=level.schema)

    def _final(self, agg: Aggregate) -> _Part | None:
        """Every row of ``agg``, merged: the sealed ones then the open ones merged, or all merged again if a
        bucket came back after it was sealed."""
        sealed, open_ = self._sealed[agg.name], [p for p in self._parts[agg.name] if len(p[0][0])]
        if not sealed and not open_:
            return None
        last = _merged(agg, open_) if open_ else None
        if last is not None and sealed and int(last[0][0][0]) <= self._sealed_through[agg.name]:
            self._disordered[agg.name] = True
        if self._disordered[agg.name]:
            return _merged(agg, sealed + open_)
        return _concatenated(agg, sealed + ([last] if last is not None else []))  # sealed: no cell in two

    def levels(self) -> dict[str, pa.Table]:
        """Every level (base aggregates and roll-ups) of the rows added, by level name."""
        parts: dict[str, _Part | None] = {}
        for agg in AGGREGATES:
            parts[agg.name] = self._final(agg) if agg in self._bases else None
        for level in ROLLUPS:
            assert level.base is not None
            base = parts[level.base.name]
            parts[level.name] = None if base is None else _merged(level, [base], level.time_us // level.base.time_us)
        return {level.name: self._table(level, parts[level.name]) for level in LEVELS}


def compute_file(source: str | pa.NativeFile) -> dict[str, pa.Table]:
    """Every level of the Parquet file ``source`` (a local path or an open file), read once, a chunk at a time,
    only the columns the aggregates use (text columns as dictionaries: each value decoded once a chunk)."""
    schema = pq.read_schema(source)
    wanted = [n for n in schema.names if n in SCANNED_COLUMNS]
    text = [
        n for n in wanted if pa.types.is_string(schema.field(n).type) or pa.types.is_large_string(schema.field(n).type)
    ]
    accumulator = Accumulator(wanted)
    # pre_buffer=False: pyarrow would otherwise cache every row group's column chunks until the file is closed
    with pq.ParquetFile(source, read_dictionary=text, pre_buffer=False) as pf:
        for batch in pf.iter_batches(batch_size=CHUNK_ROWS, columns=wanted):
            accumulator.add(batch)
    return accumulator.levels()


def to_persisted(levels: Mapping[str, pa.Table], source_rows: int) -> pa.Table:
    """One persisted file's rows: every level of ``levels``, sorted by level and bucket (each level a chunk of
    every column: nothing is copied but a level whose rows are not in bucket order)."""
    chunks: dict[str, list[pa.Array]] = {f.name: [] for f in PERSISTED_SCHEMA}  # of each column, level by level
    for level in LEVELS:
        table = levels.get(level.name)
        if table is None or table.num_rows == 0:
            continue
        buckets = table.column(level.time_column)
        if not pc.all(pc.greater_equal(buckets.slice(1), buckets.slice(0, len(buckets) - 1))).as_py():
            table = table.sort_by([(level.time_column, "ascending")])  # stable: as sorting them all would be
        n = table.num_rows
        own = {
            LEVEL: [pa.repeat(pa.scalar(level.name), n)],
            SOURCE_ROWS: [pa.repeat(pa.scalar(source_rows, pa.int64()), n)],
            BUCKET: table.column(level.time_column).chunks,
        }
        for name in table.schema.names[1:]:
            own[name] = table.column(name).chunks
        for f in PERSISTED_SCHEMA:
            chunks[f.name] += [c.cast(f.type) for c in own[f.name]] if f.name in own else [pa.nulls(n, f.type)]
    if not chunks[LEVEL]:  # an empty data file: one row that says how many rows its aggregates are of
        marker = {name: pa.nulls(1, PERSISTED_SCHEMA.field(name).type) for name in PERSISTED_SCHEMA.names}
        marker[SOURCE_ROWS] = pa.array([source_rows], pa.int64())
        return pa.table(marker, schema=PERSISTED_SCHEMA)
    return pa.table([pa.chunked_array(chunks[f.name], f.type) for f in PERSISTED_SCHEMA], schema=PERSISTED_SCHEMA)


def write_persisted(table: pa.Table, sink: str) -> None:
    """Write a persisted file: each level in row groups of its own (of at most ROW_GROUP_ROWS rows), so a reader
    of some levels, or of one level's span, reads only those row groups."""
    with pq.ParquetWriter(sink, table.schema, compression="zstd") as writer:
        if table.num_rows == 0:
            return
        levels = table.column(LEVEL).combine_chunks()
        if levels.null_count:  # the marker row of an empty data file: one row group
            writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
            return
        changes = pc.not_equal(levels.slice(1), levels.slice(0, len(levels) - 1)).to_numpy(zero_copy_only=False)
        starts = [0, *(np.flatnonzero(changes) + 1).tolist(), len(levels)]
        for lo, hi in itertools.pairwise(starts):
            writer.write_table(table.slice(lo, hi - lo), row_group_size=ROW_GROUP_ROWS)


def _may_hold(stats: pq.Statistics | None, lo: Any, hi: Any) -> bool:
    """Whether a row group with column ``stats`` may hold a value in [lo, hi] (None: unbounded)."""
    if stats is None or not stats.has_min_max:
        return True
    return (lo is None or stats.max >= lo) and (hi is None or stats.min <= hi)


def read_levels(
    source: str | pa.NativeFile, levels: Collection[Aggregate], lo: int | None = None, hi: int | None = None
) -> pa.Table:
    """The rows of ``levels`` in buckets [lo, hi) (None: unbounded) of the persisted file ``source`` (a local path
    or an open file). Only the row groups whose statistics may hold such rows are read: rows are sorted by level
    and bucket, so a level's span is a few row groups."""
    names = sorted({level.name for level in levels})
    with pq.ParquetFile(source) as pf:
        at_level = pf.schema_arrow.get_field_index(LEVEL)
        at_bucket = pf.schema_arrow.get_field_index(BUCKET)
        groups = [
            i
            for i in range(pf.metadata.num_row_groups)
            if any(_may_hold(pf.metadata.row_group(i).column(at_level).statistics, n, n) for n in names)
            and _may_hold(pf.metadata.row_group(i).column(at_bucket).statistics, lo, None if hi is None else hi - 1)
        ]
        table = pf.read_row_groups(groups) if groups else pf.schema_arrow.empty_table()
    keep = pc.is_in(table.column(LEVEL), pa.array(names))
    bucket = table.column(BUCKET)
    if lo is not None:
        keep = pc.and_(keep, pc.greater_equal(bucket, lo))
    if hi is not None:
        keep = pc.and_(keep, pc.less(bucket, hi))
    return table.filter(keep)


def from_persisted(table: pa.Table, level: Aggregate) -> pa.Table:
    """``level``'s partial out of a persisted file's rows (all or some of its levels)."""
    rows = table.filter(pc.equal(table.column(LEVEL), level.name))
    cols = {level.time_column: rows.column(BUCKET)}
    for name in level.schema.names[1:]:
        cols[name] = rows.column(name)
    return conform(pa.table(cols), level.schema)


def persisted_rows(table: pa.Table) -> int | None:
    """The data file's rows a persisted file's aggregates are of (None: not one value: not a persisted file)."""
    if table.num_rows == 0:
        return None
    bounds = pc.min_max(table.column(SOURCE_ROWS))
    lo, hi = bounds["min"].as_py(), bounds["max"].as_py()
    return int(lo) if lo is not None and lo == hi else None


__all__ = [
    "AGGREGATES",
    "ARRIVALS",
    "ARRIVALS_DAY",
    "BUCKET",
    "CUBE",
    "CUBE_DAY",
    "CUBE_HOUR",
    "DOORS",
    "DOORS_DAY",
    "FAMILIES",
    "LEVEL",
    "LEVELS",
    "PERSISTED_SCHEMA",
    "ROLLUPS",
    "USERS",
    "USERS_DAY",
    "ZONE",
    "Accumulator",
    "Aggregate",
    "Measure",
    "compute_file",
    "conform",
    "from_persisted",
    "merge_tables",
    "roll_up",
    "to_persisted",
]
