"""Per-file partial aggregates: the dashboard's figures are sums over small tables cached per data file.

Data files are immutable (published once, never rewritten), so a file's aggregates, keyed by its key,
size and modification time (from its ``add`` action in the table's log), never go stale. A refresh
scans only files it has not seen. A compacted file whose sources are all cached gets its aggregates by
merging theirs: the file is in the table's snapshot (the log says it exists), its footer's
``badge.sources`` is read only as a hint naming the files it replaced, and the merge is used only if
their row counts add up to the file's ``numRecords`` in the log; otherwise the file is scanned.

How a file is scanned depends on where the lake lives: on a local disk DuckDB reads the files by path,
one query per aggregate; on object storage (no paths) each file is read once through the storage, as
Arrow (:mod:`analytics.reading`), and every aggregate is computed from those rows in DuckDB. Both give
the same partials.

The time axis is the **event time**, ``badge_out_timestamp``: the stream emits a session when it closes,
files are in that order (tight row-group statistics), and freshness is measured on it. Four aggregates
(each an :class:`Aggregate`):

* ``cube``: events per badge-out **minute** x department x building x access, with the premature count
  (granted and ``duration_s < 14400``) and the newest badge-out. At most 48 cells a minute, whatever
  the rows; most figures are filtered sums over it, exact for time bounds in whole minutes.
* ``arrivals``: events per badge-out **hour** x department x building x badge-in hour of day (the heatmap).
* ``users``: granted and premature sessions per badge-out **hour** x employee x department x building,
  kept only where it is much smaller than the file (a compacted file; not a small landing file).
* ``doors``: events per badge-out **hour** x department x building x door, from the records of version 2
  on (``door_id``, a column the table gained by schema evolution): a file written before it has an empty
  partial and is never read for it.

The hourly aggregates answer whole hours from the cache; the minutes of a partly selected hour, and files
without the partial, are read directly (cheap: files are sorted by badge-out, so DuckDB skips row groups).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from analytics import reading
from lake import layout
from lake.snapshot import DataFile
from lake.storage import FileInfo, LocalStorage, Storage
from utils.errors import LakeError
from utils.records import COMPLIANCE_SECONDS, DOOR_ID

log = logging.getLogger(__name__)

US_PER_MINUTE: Final = 60_000_000
US_PER_HOUR: Final = 3_600_000_000
MINUTES_PER_HOUR: Final = 60

_OUT_US: Final = "epoch_us(badge_out_timestamp)"
_PREMATURE: Final = f"duration_s < {COMPLIANCE_SECONDS}"


@dataclass(frozen=True)
class Measure:
    """An aggregated column: its value per raw row, its aggregate over raw rows, and how partials merge."""

    name: str
    raw: str  # one source row's contribution
    scan: str  # the aggregate over source rows
    merge: str  # "sum" or "max": how two partials of the same cell combine
    type: pa.DataType = field(default_factory=pa.int64)


@dataclass(frozen=True)
class Aggregate:
    """One per-file partial aggregate: grouping keys over the raw columns, measures, and which rows it covers.

    Its SQL holds only constant expressions and identifiers, never a value; every partial of it has :attr:`schema`.
    """

    name: str
    time_column: str  # "minute" or "hour": badge-out time bucket
    time_us: int
    keys: tuple[tuple[str, str, pa.DataType], ...]  # (name, expression over lake columns, type); time first
    measures: tuple[Measure, ...]
    where: str = "true"  # rows it covers
    always_keep: bool = True  # False: kept only when much smaller than the file
    # A column of a later record version it needs (schema evolution): a file without it holds none of its
    # rows (its partial is empty, it is never read for it), and files are read with their columns by name.
    requires: str | None = None

    @property
    def schema(self) -> pa.Schema:
        return pa.schema([(n, t) for n, _, t in self.keys] + [(m.name, m.type) for m in self.measures])

    @property
    def minutes_per_bucket(self) -> int:
        return self.time_us // US_PER_MINUTE

    @property
    def additive(self) -> bool:
        """Whether every measure is a sum (so a partly selected bucket may be the bucket minus the rest)."""
        return all(m.merge == "sum" for m in self.measures)

    def raw_select(self, sign: int = 1) -> str:
        """Projection of source rows onto this aggregate's columns (one row each), for direct reads.

        ``sign=-1`` negates the (additive) measures: rows to subtract from a cached bucket.
        """
        assert sign == 1 or self.additive
        cols = [f"{expr} AS {name}" for name, expr, _ in self.keys]
        cols += [f"{'-' if sign < 0 else ''}({m.raw}) AS {m.name}" for m in self.measures]
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
        ),
        Measure("last_out_us", _OUT_US, f"max({_OUT_US})", "max"),
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
        Measure("premature", f"({_PREMATURE})::BIGINT", f"count(*) FILTER (WHERE {_PREMATURE})", "sum"),
    ),
    where="access_granted",  # a denied attempt is not a session
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
)
AGGREGATES: Final[tuple[Aggregate, ...]] = (CUBE, ARRIVALS, USERS, DOORS)
KEEP_EVERY_PARTIAL: Final = 1.0  # a users_max_share that keeps every users partial (it never outgrows its file)


@dataclass(frozen=True)
class FilePartial:
    """The aggregates of one immutable data file."""

    info: FileInfo
    rows: int
    tables: Mapping[str, pa.Table | None]  # by aggregate name; None = not kept, read the file directly
    minute_lo: int | None  # badge-out minutes the file covers, inclusive; None for an empty file
    minute_hi: int | None
    derived: bool = False  # merged from the partials of the files a compaction replaced

    def table(self, aggregate: Aggregate) -> pa.Table | None:
        return self.tables.get(aggregate.name)

    def overlaps(self, lo: int | None, hi: int | None) -> bool:
        """Whether the file may hold badge-outs in minutes [lo, hi) (None = unbounded)."""
        if self.minute_lo is None or self.minute_hi is None:
            return False
        return (lo is None or self.minute_hi >= lo) and (hi is None or self.minute_lo < hi)


def holds(storage: LocalStorage, key: str, column: str) -> bool:
    """Whether the local data file ``key`` has ``column`` (its footer's schema; files without it were written
    before the field existed). OSError if it cannot be read, as for any read of it."""
    return column in pq.read_schema(storage.path(key)).names


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    return table.select(schema.names).cast(schema).combine_chunks()


def _split_by_file(table: pa.Table) -> dict[int, pa.Table]:
    """Rows grouped by ``file_index`` (the table is sorted by it), without that column."""
    if table.num_rows == 0:
        return {}
    codes = table.column("file_index").to_numpy()
    starts = np.concatenate([[0], np.flatnonzero(np.diff(codes)) + 1])
    ends = np.concatenate([starts[1:], [len(codes)]])
    body = table.drop_columns(["file_index"])
    return {int(codes[s]): body.slice(int(s), int(e - s)) for s, e in zip(starts, ends, strict=True)}


def _minute_range(cube: pa.Table) -> tuple[int | None, int | None]:
    if cube.num_rows == 0:
        return None, None
    mm = pc.min_max(cube.column("minute"))
    return int(mm["min"].as_py()), int(mm["max"].as_py())


def merge_tables(con: duckdb.DuckDBPyConnection, aggregate: Aggregate, tables: Sequence[pa.Table]) -> pa.Table:
    """One partial from several of the same aggregate (cells summed, newest kept)."""
    filled = [t for t in tables if t.num_rows]
    if not filled:
        return aggregate.schema.empty_table()
    cur = con.cursor()
    try:
        cur.register("parts", pa.concat_tables(filled))
        return _conform(cur.sql(aggregate.merge_sql()).to_arrow_table(), aggregate.schema)
    finally:
        cur.close()


def sources_hint(storage: Storage, f: DataFile) -> tuple[str, ...]:
    """The keys a compacted file's footer says it replaced (``badge.sources``): a hint, never a fact.

    Only for a file of the table's snapshot; a missing, unreadable or malformed footer gives no hint
    (the file is then scanned, and a read error surfaces there).
    """
    if f.info.zone != layout.COMPACTED:
        return ()
    try:
        raw = storage.read_metadata(f.key).get(layout.META_SOURCES)
        parsed = json.loads(raw) if raw is not None else []
    except (OSError, ValueError, LakeError):
        return ()
    if not isinstance(parsed, list) or not all(isinstance(s, str) for s in parsed):
        return ()
    return tuple(parsed)


class PartialCache:
    """Partials by file, thread-safe; entries for files that left the snapshot are dropped by :meth:`retain`.

    ``users_max_share``: a users partial is kept only if it has at most this share of the file's rows
    (small landing files would gain nothing and cost memory: they are read directly instead). At 1.0 or
    more every users partial is kept (it never has more rows than its file), so no query reads a file
    for want of one: what :meth:`for_storage` chooses on object storage, where each read is a request.
    """

    def __init__(self, users_max_share: float = 0.2) -> None:
        self.users_max_share = users_max_share
        self._by_key: dict[str, FilePartial] = {}
        self._lock = threading.Lock()

    @classmethod
    def for_storage(cls, storage: Storage) -> PartialCache:
        """The cache for a lake on ``storage``: the default share on a local disk, every partial kept elsewhere.

        On object storage a file read again for repeat offenders would cost requests on every query (and
        a read per small landing file); keeping its users partial costs memory of the order of its granted
        sessions, until a compaction merges the landing files' partials into a smaller one.
        """
        return cls() if isinstance(storage, LocalStorage) else cls(users_max_share=KEEP_EVERY_PARTIAL)

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_key)

    def get(self, info: FileInfo) -> FilePartial | None:
        with self._lock:
            hit = self._by_key.get(info.key)
        return hit if hit is not None and hit.info == info else None

    def retain(self, infos: Iterable[FileInfo]) -> None:
        """Forget every file not in ``infos`` (replaced, deleted or rewritten files)."""
        keep = {i.key: i for i in infos}
        with self._lock:
            for key in [k for k, p in self._by_key.items() if keep.get(k) != p.info]:
                del self._by_key[key]

    def _kept(self, aggregate: Aggregate, table: pa.Table, rows: int) -> pa.Table | None:
        return table if aggregate.always_keep or table.num_rows <= self.users_max_share * rows else None

    def ensure(
        self,
        con: duckdb.DuckDBPyConnection,
        storage: Storage,
        files: Sequence[DataFile],
        columns: Collection[str] | None = None,
    ) -> tuple[dict[str, FilePartial], int]:
        """Partials for ``files`` (by key), computing the missing ones; also returns how many files were read.

        ``columns``: the table's (None: not known); an aggregate requiring a column the table lacks has empty
        partials, no file is opened for it. Callers serialize refreshes; concurrent calls stay correct but may
        read a file twice.
        """
        out: dict[str, FilePartial] = {}
        missing: list[DataFile] = []
        for f in files:
            hit = self.get(f.info)
            if hit is not None:
                out[f.key] = hit
            else:
                missing.append(f)
        to_scan: dict[str, list[DataFile]] = {agg.name: [] for agg in AGGREGATES}
        derived: dict[str, FilePartial] = {}
        current = {f.key for f in files}
        for f in missing:
            merged = self._derive(con, storage, f, current)
            if merged is None:
                for agg in AGGREGATES:
                    to_scan[agg.name].append(f)
                continue
            derived[f.key] = merged
            if merged.table(USERS) is None and f.row_count > 0:
                to_scan[USERS.name].append(f)  # merged from small files that had none: read it once
        wanted = {name: {f.key for f in fs} for name, fs in to_scan.items()}
        if isinstance(storage, LocalStorage):
            scanned = {agg.name: self._scan(con, storage, agg, to_scan[agg.name], columns) for agg in AGGREGATES}
        else:
            scanned = self._scan_objects(con, storage, [f for f in missing if any(f.key in w for w in wanted.values())])
        read = set().union(*wanted.values())
        for f in missing:
            tables: dict[str, pa.Table | None] = dict(derived[f.key].tables) if f.key in derived else {}
            for agg in AGGREGATES:
                if f.key in wanted[agg.name]:
                    table = scanned[agg.name].get(f.key, agg.schema.empty_table())
                    tables[agg.name] = self._kept(agg, table, f.row_count)
            cube = tables[CUBE.name]
            assert cube is not None
            lo, hi = _minute_range(cube)
            out[f.key] = FilePartial(f.info, f.row_count, tables, lo, hi, derived=f.key in derived)
        with self._lock:
            for f in missing:
                self._by_key[f.key] = out[f.key]
        if read:
            log.debug("read %d files for partial aggregates", len(read))
        return out, len(read)

    def _derive(
        self, con: duckdb.DuckDBPyConnection, storage: Storage, f: DataFile, current: set[str]
    ) -> FilePartial | None:
        """Merge the cached partials of the files ``f`` replaced, if all are cached and the rows add up.

        Which files it replaced comes from its footer's hint; it is used only if none of them is still in
        the snapshot (``current``) and their rows add up to ``f``'s ``numRecords`` in the log.
        """
        hint = sources_hint(storage, f)
        if not hint or len(set(hint)) != len(hint) or current.intersection(hint):
            return None
        with self._lock:
            parts = [self._by_key.get(s) for s in hint]
        sources = [p for p in parts if p is not None]
        if len(sources) != len(parts) or sum(p.rows for p in sources) != f.row_count:
            return None
        tables: dict[str, pa.Table | None] = {}
        for agg in AGGREGATES:
            pieces = [p.table(agg) for p in sources]
            if any(t is None for t in pieces):
                tables[agg.name] = None
                continue
            tables[agg.name] = self._kept(
                agg, merge_tables(con, agg, [t for t in pieces if t is not None]), f.row_count
            )
        cube = tables[CUBE.name]
        if cube is None:
            return None
        lo, hi = _minute_range(cube)
        return FilePartial(f.info, f.row_count, tables, lo, hi, derived=True)

    def _scan(
        self,
        con: duckdb.DuckDBPyConnection,
        storage: LocalStorage,
        aggregate: Aggregate,
        files: Sequence[DataFile],
        columns: Collection[str] | None,
    ) -> dict[str, pa.Table]:
        """This aggregate's partial of each file, read in one DuckDB query over all of them (of those that hold the
        column it requires: the others have none of its rows; with a table that lacks it, none does)."""
        if aggregate.requires is not None:
            if columns is not None and aggregate.requires not in columns:
                return {}
            files = [f for f in files if holds(storage, f.key, aggregate.requires)]
        if not files:
            return {}
        result = con.sql(
            aggregate.scan_sql(), params={"files": [str(storage.path(f.key)) for f in files]}
        ).to_arrow_table()
        return {files[i].key: _conform(t, aggregate.schema) for i, t in _split_by_file(result).items()}

    def _scan_objects(
        self, con: duckdb.DuckDBPyConnection, storage: Storage, files: Sequence[DataFile]
    ) -> dict[str, dict[str, pa.Table]]:
        """Every aggregate's partial of each file, each file read once through ``storage`` (no local path).

        The files' rows come through :func:`analytics.reading.iter_tables` (a GET per small file, ranged
        reads of a larger one, a bounded read-ahead) and are aggregated in batches of about
        :data:`~analytics.reading.BATCH_ROWS` rows, every aggregate from the same batch; a file that spans
        batches has its pieces merged (sums added, maxima kept). Nothing is cached here: on an error the
        caller keeps nothing of this call.
        """
        pieces: dict[str, dict[int, list[pa.Table]]] = {agg.name: {} for agg in AGGREGATES}
        batch: list[pa.Table] = []
        batch_rows = 0

        def aggregate_batch() -> None:
            nonlocal batch, batch_rows
            if not batch:
                return
            cur = con.cursor()
            try:
                cur.register("file_rows", pa.concat_tables(batch))
                for agg in AGGREGATES:
                    result = cur.sql(agg.scan_sql("file_rows")).to_arrow_table()
                    for index, table in _split_by_file(result).items():
                        pieces[agg.name].setdefault(index, []).append(_conform(table, agg.schema))
            finally:
                cur.close()
            batch, batch_rows = [], 0

        refs = [reading.FileRef(f.key, f.row_count, f.info.size) for f in files]
        with contextlib.closing(reading.iter_tables(storage, refs)) as tables:  # its reads stop with an error
            for position, table in tables:
                if table.num_rows == 0:
                    continue
                index = pa.array(np.full(table.num_rows, position, dtype=np.int64))
                batch.append(table.append_column("file_index", index))
                batch_rows += table.num_rows
                if batch_rows >= reading.BATCH_ROWS:
                    aggregate_batch()
        aggregate_batch()
        out: dict[str, dict[str, pa.Table]] = {}
        for agg in AGGREGATES:
            by_file = pieces[agg.name]
            out[agg.name] = {
                files[i].key: parts[0] if len(parts) == 1 else merge_tables(con, agg, parts)
                for i, parts in by_file.items()
            }
        return out
