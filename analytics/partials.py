"""Per-file partial aggregates: the dashboard's figures are sums over small tables held per data file.

The aggregates and their roll-ups are defined in :mod:`lake.aggregates` (minute, hour and day buckets of
badge-out time). Data files are immutable (published once, never rewritten), so a file's partials, keyed by
its key, size and modification time (from its ``add`` action in the table's log), never go stale. A refresh
obtains partials only for files it has not seen, the cheapest way that is exact:

* **persisted** (a compacted file): its aggregates file in the aggregates table, committed by the compactor
  and matching the file's key and ``numRecords`` (:class:`lake.table.Persisted`). Only the coarse levels are
  held in memory (:data:`HELD_WHEN_PERSISTED`: hour and day cubes, hourly and daily arrivals, daily users and
  doors); the fine ones (the minute cube, hourly users and doors) stay in the file, whose row groups of that
  level and span a query over a partly selected day reads (with DuckDB by path; on object storage in
  ranged reads). If its aggregates file cannot be read, the data file is scanned instead;
* **derived**: a compacted file whose sources are all held gets its partials by merging theirs: the file is
  in the table's snapshot (the log says it exists), its footer's ``badge.sources`` is read only as a hint
  naming the files it replaced, and the merge is used only if their row counts add up to the file's
  ``numRecords`` in the log;
* **scanned**: otherwise the file is read once (a landing file, mostly; the compactor's backlog bounds them).

How a file is scanned depends on where the lake lives: on a local disk DuckDB reads the files by path,
one query per aggregate; on object storage (no paths) each file is read once through the storage, as
Arrow (:mod:`analytics.reading`), and every aggregate is computed from those rows in DuckDB. Both give
the same partials. A scanned or derived file holds every level (its ``users`` only where it is much smaller
than the file); the roll-ups are computed from the bases.

Memory: what is held per file is bounded by its time span, never by its rows. For a persisted file: at
most 48 cube cells per hour and per day (about 2.5 KB per hour of events, 22 MB a year), and, while the
cache's budget allows (``held_budget_bytes``, 256 MB), its hourly arrivals and daily users and doors; beyond
the budget those stay in the aggregates file and the queries needing them read them from there. A scanned
file (the compactor's bounded landing backlog) holds every level. So the partials of a lake take at most
the budget plus the cube roll-ups plus the landing backlog's, whatever its number of events.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Collection, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Final

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from analytics import reading
from lake import layout
from lake.aggregates import (
    AGGREGATES,
    ARRIVALS,
    ARRIVALS_DAY,
    CUBE,
    CUBE_DAY,
    CUBE_HOUR,
    DOORS_DAY,
    LEVELS,
    US_PER_MINUTE,
    USERS,
    USERS_DAY,
    Aggregate,
    conform,
    from_persisted,
    merge_tables,
    read_levels,
    roll_up,
    rollups_by_file,
    split_by_file,
)
from lake.snapshot import DataFile
from lake.storage import FileInfo, LocalStorage, Storage
from lake.table import Persisted
from utils.errors import LakeError

log = logging.getLogger(__name__)

MINUTES_PER_HOUR: Final = 60
USER_ID: Final = "user_id"
KEEP_EVERY_PARTIAL: Final = 1.0  # a users_max_share that keeps every users partial (it never outgrows its file)
# The levels held in memory for a file whose aggregates are persisted; the others are read from the file.
HELD_WHEN_PERSISTED: Final[tuple[Aggregate, ...]] = (CUBE_HOUR, CUBE_DAY, ARRIVALS, ARRIVALS_DAY, USERS_DAY, DOORS_DAY)
# Of those, the levels that grow with employees or doors, not only with time: held while the cache's
# budget allows, else read from the aggregates file by the queries that need them.
BUDGETED: Final[tuple[Aggregate, ...]] = (ARRIVALS, USERS_DAY, DOORS_DAY)
HELD_BUDGET_BYTES: Final = 256 * 1024 * 1024
SCAN_BATCH_ROWS: Final = 2_000_000  # data rows aggregated per DuckDB query when files are scanned
LOAD_THREADS: Final = 2  # aggregates files read at once on a cold refresh (more: more memory held by readers)


@dataclass(frozen=True)
class FilePartial:
    """The aggregates of one immutable data file."""

    info: FileInfo
    rows: int
    tables: Mapping[str, pa.Table | None]  # by aggregate name; None = not kept, read the file directly
    minute_lo: int | None  # badge-out minutes the file covers, inclusive; None for an empty file
    minute_hi: int | None
    derived: bool = False  # merged from the partials of the files a compaction replaced
    persisted: Persisted | None = None  # its aggregates file (its fine levels are read from there)

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


def _minute_range(cube: pa.Table) -> tuple[int | None, int | None]:
    if cube.num_rows == 0:
        return None, None
    mm = pc.min_max(cube.column("minute"))
    return int(mm["min"].as_py()), int(mm["max"].as_py())


def _usable(p: Persisted | None, f: DataFile) -> bool:
    """Whether the aggregates file ``p`` describes ``f`` as the log has it (its rows)."""
    return p is not None and p.source_rows == f.row_count


def _budgeted_bytes(partial: FilePartial) -> int:
    """Bytes of the budgeted levels a persisted file's partial holds (0 for any other partial)."""
    if partial.persisted is None:
        return 0
    return sum(t.nbytes for level in BUDGETED if (t := partial.table(level)) is not None)


def _compact(tables: Mapping[str, pa.Table | None]) -> dict[str, pa.Table | None]:
    """``tables`` as held in memory: the employee ids dictionary-encoded (an index a row, each id once a table),
    which takes the per-employee partials from about 80 to about 40 bytes a row. Queries read either form."""
    return {name: _encoded(table) for name, table in tables.items()}


def _encoded(table: pa.Table | None) -> pa.Table | None:
    if table is None or USER_ID not in table.column_names or pa.types.is_dictionary(table.schema.field(USER_ID).type):
        return table
    return table.set_column(table.schema.get_field_index(USER_ID), USER_ID, pc.dictionary_encode(table.column(USER_ID)))


def _held_rollup(level: Aggregate, table: pa.Table, tables: Mapping[str, pa.Table | None]) -> pa.Table | None:
    """A roll-up as a scanned or derived file holds it: only if its base is not held, or it is much smaller (a
    small landing file's per-employee rows per day are about its rows per hour: the hourly ones answer both)."""
    assert level.base is not None
    base = tables.get(level.base.name)
    return table if base is None or 2 * table.num_rows <= base.num_rows else None


def _stat_minutes(f: DataFile, cube_hour: pa.Table | None) -> tuple[int | None, int | None]:
    """The badge-out minutes a file covers, from its statistics in the log (else its hourly cube's hours)."""
    if f.row_count == 0:
        return None, None
    if f.badge_out_min is not None and f.badge_out_max is not None:
        epoch = np.datetime64(0, "us")
        first = (np.datetime64(f.badge_out_min, "us") - epoch).astype(np.int64) // US_PER_MINUTE
        last = (np.datetime64(f.badge_out_max, "us") - epoch).astype(np.int64) // US_PER_MINUTE
        return int(first), int(last)
    if cube_hour is None or cube_hour.num_rows == 0:
        return None, None
    hours = pc.min_max(cube_hour.column("hour"))
    return int(hours["min"].as_py()) * MINUTES_PER_HOUR, (int(hours["max"].as_py()) + 1) * MINUTES_PER_HOUR - 1


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

    def __init__(self, users_max_share: float = 0.2, held_budget_bytes: int = HELD_BUDGET_BYTES) -> None:
        self.users_max_share = users_max_share
        self.held_budget_bytes = held_budget_bytes
        self._by_key: dict[str, FilePartial] = {}
        self._budgeted = 0  # bytes of BUDGETED levels held for persisted files
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
                self._budgeted -= _budgeted_bytes(self._by_key.pop(key))

    @property
    def budgeted_bytes(self) -> int:
        """Bytes of the budgeted levels held (at most ``held_budget_bytes``)."""
        with self._lock:
            return self._budgeted

    def _kept(self, aggregate: Aggregate, table: pa.Table, rows: int) -> pa.Table | None:
        return table if aggregate.always_keep or table.num_rows <= self.users_max_share * rows else None

    def ensure(
        self,
        con: duckdb.DuckDBPyConnection,
        storage: Storage,
        files: Sequence[DataFile],
        columns: Collection[str] | None = None,
        persisted: Mapping[str, Persisted] | None = None,
    ) -> tuple[dict[str, FilePartial], int]:
        """Partials for ``files`` (by key), obtaining the missing ones; also returns how many data files were read.

        ``columns``: the table's (None: not known); an aggregate requiring a column the table lacks has empty
        partials, no file is opened for it. ``persisted``: the aggregates table's files by data file; one is
        used only if its row count is the data file's. Callers serialize refreshes; concurrent calls stay
        correct but may read a file twice.
        """
        out: dict[str, FilePartial] = {}
        missing: list[DataFile] = []
        stored = persisted or {}
        for f in files:
            hit = self.get(f.info)
            # a file computed here before its aggregates were committed: their coarse levels replace its own
            fresh = hit is not None and hit.persisted is None and _usable(stored.get(f.key), f)
            if hit is not None and not fresh:
                out[f.key] = hit
            else:
                missing.append(f)
        usable = [f for f in missing if _usable(stored.get(f.key), f)]
        for f, partial in zip(usable, self._load(storage, usable, stored), strict=True):
            if partial is not None:  # else unreadable: computed from the data file below
                out[f.key] = partial
        loaded = {f.key for f in usable if f.key in out}
        try:
            rest = [f for f in missing if f.key not in loaded]
            return self._compute(con, storage, files=files, columns=columns, out=out, missing=rest, loaded=loaded)
        except BaseException:
            with self._lock:  # the budget reserved by what was loaded is not used
                self._budgeted -= sum(_budgeted_bytes(out[k]) for k in loaded)
            raise

    def _compute(
        self,
        con: duckdb.DuckDBPyConnection,
        storage: Storage,
        *,
        files: Sequence[DataFile],
        columns: Collection[str] | None,
        out: dict[str, FilePartial],
        missing: list[DataFile],
        loaded: set[str],
    ) -> tuple[dict[str, FilePartial], int]:
        """The rest of :meth:`ensure`: derive or scan ``missing``, then cache them and ``loaded``."""
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
        whole = [f for f in missing if f.key not in derived]  # every base scanned: their roll-ups in one go
        rolled = rollups_by_file(
            con,
            {f.key: {a.name: scanned[a.name].get(f.key, a.schema.empty_table()) for a in AGGREGATES} for f in whole},
        )
        for f in missing:
            if f.key in derived and f.key not in wanted[USERS.name]:
                out[f.key] = derived[f.key]
                continue
            if f.key in derived:  # only its users were read: the rest is merged
                tables = dict(derived[f.key].tables)
                users = scanned[USERS.name].get(f.key, USERS.schema.empty_table())
                tables[USERS.name] = self._kept(USERS, users, f.row_count)
                tables[USERS_DAY.name] = _held_rollup(USERS_DAY, roll_up(con, USERS_DAY, users), tables)
            else:
                levels = rolled[f.key]
                tables = {}
                for level in LEVELS:  # bases first: a roll-up is held only where it saves much over its base
                    tables[level.name] = self._kept(level, levels[level.name], f.row_count)
                    if level.base is not None:
                        tables[level.name] = _held_rollup(level, levels[level.name], tables)
            cube = tables[CUBE.name]
            assert cube is not None
            lo, hi = _minute_range(cube)
            out[f.key] = FilePartial(f.info, f.row_count, _compact(tables), lo, hi, derived=f.key in derived)
        self._store(out, loaded | {f.key for f in missing})
        if read:
            log.debug("read %d files for partial aggregates", len(read))
        return out, len(read)

    def _store(self, out: dict[str, FilePartial], keys: Iterable[str]) -> None:
        """Cache ``out[key]`` for ``keys`` (the budget of a loaded file's levels was reserved when it was read)."""
        with self._lock:
            for key in keys:
                old = self._by_key.get(key)
                if old is not None:
                    self._budgeted -= _budgeted_bytes(old)
                self._by_key[key] = out[key]

    def _load(
        self, storage: Storage, files: Sequence[DataFile], stored: Mapping[str, Persisted]
    ) -> list[FilePartial | None]:
        """The partials of ``files`` from their aggregates files (the levels held in memory only), read in parallel;
        None for a file whose aggregates file cannot be read (it is then computed from its data file).

        The budgeted levels of each are kept only if the budget has room once it is read (reserved then, so
        memory never holds much more than the budget); else they stay in its aggregates file.
        """
        if not files:
            return []

        def load(f: DataFile) -> FilePartial | None:
            p = stored[f.key]
            try:
                if isinstance(storage, LocalStorage):
                    rows = read_levels(str(storage.path(p.info.key)), HELD_WHEN_PERSISTED)
                else:  # ranged reads: the footer, then the row groups of those levels
                    with storage.open_input(p.info.key) as source:
                        rows = read_levels(source, HELD_WHEN_PERSISTED)
            except (OSError, pa.ArrowException, LakeError) as exc:
                log.warning("aggregates of %s not read (%s): computed from the data file", f.key, exc)
                return None
            tables: dict[str, pa.Table | None] = {
                level.name: from_persisted(rows, level) for level in HELD_WHEN_PERSISTED
            }
            del rows
            lo, hi = _stat_minutes(f, tables[CUBE_HOUR.name])
            partial = FilePartial(f.info, f.row_count, _compact(tables), lo, hi, persisted=p)
            size = _budgeted_bytes(partial)
            with self._lock:
                if self._budgeted + size <= self.held_budget_bytes:
                    self._budgeted += size
                    return partial
            return replace(partial, tables={**tables, **{level.name: None for level in BUDGETED}})

        with ThreadPoolExecutor(min(LOAD_THREADS, len(files))) as pool:
            return list(pool.map(load, files))

    def _derive(
        self, con: duckdb.DuckDBPyConnection, storage: Storage, f: DataFile, current: set[str]
    ) -> FilePartial | None:
        """Merge the cached partials of the files ``f`` replaced, if all are cached and the rows add up.

        Which files it replaced comes from its footer's hint; it is used only if none of them is still in
        the snapshot (``current``) and their rows add up to ``f``'s ``numRecords`` in the log. Every level
        is merged, or rolled up from the merged base where some source does not hold it; a level that is
        neither (its users: the caller reads them) is missing, and a missing cube (a source's fine levels
        are in its aggregates file) makes the file scanned instead.
        """
        hint = sources_hint(storage, f)
        if not hint or len(set(hint)) != len(hint) or current.intersection(hint):
            return None
        with self._lock:
            parts = [self._by_key.get(s) for s in hint]
        sources = [p for p in parts if p is not None]
        if len(sources) != len(parts) or sum(p.rows for p in sources) != f.row_count:
            return None
        full: dict[str, pa.Table | None] = {}
        for level in LEVELS:  # bases first
            pieces = [p.table(level) for p in sources]
            base = full.get(level.base.name) if level.base is not None else None
            if all(t is not None for t in pieces):
                full[level.name] = merge_tables(con, level, [t for t in pieces if t is not None])
            elif level.base is not None and base is not None:
                full[level.name] = roll_up(con, level, base)
            else:
                full[level.name] = None
        tables: dict[str, pa.Table | None] = {}
        for level in LEVELS:
            table = full[level.name]
            tables[level.name] = None if table is None else self._kept(level, table, f.row_count)
            if level.base is not None and table is not None:
                tables[level.name] = _held_rollup(level, table, tables)
        cube = tables[CUBE.name]
        if cube is None:
            return None
        lo, hi = _minute_range(cube)
        return FilePartial(f.info, f.row_count, _compact(tables), lo, hi, derived=True)

    def _scan(
        self,
        con: duckdb.DuckDBPyConnection,
        storage: LocalStorage,
        aggregate: Aggregate,
        files: Sequence[DataFile],
        columns: Collection[str] | None,
    ) -> dict[str, pa.Table]:
        """This aggregate's partial of each file (of those that hold the column it requires: the others have none of
        its rows; with a table that lacks it, none does), read in one DuckDB query per batch of files of about
        ``SCAN_BATCH_ROWS`` rows: few queries for many small files, and memory for one batch's result."""
        if aggregate.requires is not None:
            if columns is not None and aggregate.requires not in columns:
                return {}
            files = [f for f in files if holds(storage, f.key, aggregate.requires)]
        out: dict[str, pa.Table] = {}
        start = 0
        while start < len(files):
            end, rows = start, 0
            while end < len(files) and (end == start or rows + files[end].row_count <= SCAN_BATCH_ROWS):
                rows += files[end].row_count
                end += 1
            batch = files[start:end]
            result = con.sql(
                aggregate.scan_sql(), params={"files": [str(storage.path(f.key)) for f in batch]}
            ).to_arrow_table()
            out.update({batch[i].key: conform(t, aggregate.schema) for i, t in split_by_file(result).items()})
            start = end
        return out

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
                    for index, table in split_by_file(result).items():
                        pieces[agg.name].setdefault(index, []).append(conform(table, agg.schema))
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
