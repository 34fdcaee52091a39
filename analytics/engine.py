"""The query engine: DuckDB over the lake table's snapshot, filtered by time range, departments and buildings.

Two modes give identical results: ``cached`` (default) sums per-file partial aggregates (see
:mod:`analytics.partials`), scanning only new files on a refresh; ``direct`` reads the Parquet files on every
query (the reference, and the benchmark's baseline). Every query reads only the files of one snapshot of
the table's log (:class:`lake.table.SnapshotReader`, one long-lived reader per engine; a list of paths,
never a glob), on its own DuckDB connection, with every filter value passed as a parameter. A file that
no commit added (foreign, forged, orphaned, or removed by a compaction and awaiting clean-up) is never read.

The lake may be on a local disk or on object storage (any :class:`lake.storage.Storage`). Locally DuckDB
scans the files by path. On object storage a file is read through the storage, as Arrow (a small file in
one GET, a larger one in ranged GETs: :mod:`analytics.reading`), and DuckDB runs the same SQL over those
rows, so the figures are the same. In cached mode a refresh reads each new file once (a compacted file
whose aggregates the compactor persisted: only their coarse levels, from its aggregates file) and keeps
its partials (:mod:`analytics.partials`). A query over whole days reads no file at all; the whole hours
of a partly selected day, and the minutes of a partly selected hour, come from the next finer level:
held in memory, else the file's aggregates file (the row groups of that level and span), and below the
finest level the data files' rows (a large file only its row groups of that span).

A file of the snapshot missing from storage while a refresh reads it means a newer snapshot exists (a
compaction removed it and the clean-up deleted it): the refresh takes the newer snapshot and tries again,
a bounded number of times. Any other read error (on object storage: a failed request, which is worth
retrying and never taken for damage) is raised as LakeError, and nothing of that refresh is cached, so
the next refresh reads those files again; no file is ever left out.

Definitions (shared by every figure and checked against independent ground truth in the tests):

* **Duration** is elapsed time, ``badge_out - badge_in``; the lake stores ``duration_s`` = its floor in
  whole seconds. A session is **premature** if ``duration_s < 14400``, which for an integer bound is
  exactly "elapsed time under 4 h" (the original's ``DATE_DIFF('hour', ...)`` counted hour boundaries
  crossed instead, so 3 h 59 min across five boundaries passed as 5 h).
* **Denied attempts** (``access_granted = false``, ``badge_out == badge_in``) are events but not
  sessions: they count in traffic, access and denial figures, never in compliance, premature or
  per-employee figures (counting them would call every refused badge a 0-second premature exit).
* **Time** is event time, ``badge_out_timestamp`` (the stream emits a session when it closes, in that
  order). The time filter is ``start <= badge_out_timestamp < end`` with both bounds in whole UTC
  minutes (they are floored); naive timestamps are UTC, aware ones are converted. Traffic counts events
  per badge-out minute/hour; the heatmap counts arrivals by badge-in hour of day (UTC).
* **Freshness**: newest ``badge_out_timestamp`` among the selected events, against now (UTC); for the
  whole lake the dashboard's (cached) mode takes it from the files' statistics in the log
  (``lake.snapshot.Snapshot.newest_event_time``), without reading a file.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal

import duckdb
import pandas as pd
import pyarrow as pa

from analytics import reading
from analytics.filters import ALL, Filters
from analytics.monitor import note_files_scanned, sql_monitoring
from analytics.partials import FilePartial, PartialCache, holds
from analytics.results import Freshness, Kpis
from analytics.spans import plan_spans
from analytics.sql import (
    ACCESS_SQL,
    BOUNDS_SQL,
    COMPLIANCE_BY_DEPT_SQL,
    COMPLIANCE_SQL,
    DENIAL_SQL,
    DOORS_SQL,
    FRESHNESS_SQL,
    HEATMAP_SQL,
    KPIS_SQL,
    PREMATURE_SQL,
    REPEAT_SQL,
    TRAFFIC_SQL,
)
from analytics.timeutil import MINUTES_PER_DAY, moment_of_minute, moment_of_us
from lake.aggregates import (
    ARRIVALS,
    BUCKET,
    CUBE,
    DOORS,
    DOORS_DAY,
    FAMILIES,
    LEVEL,
    US_PER_MINUTE,
    USERS,
    Aggregate,
    from_persisted,
    read_levels,
)
from lake.snapshot import Snapshot as TableSnapshot
from lake.storage import LocalStorage, Storage
from lake.table import AggregatesReader, Persisted, SnapshotReader
from utils.errors import LakeError

log = logging.getLogger(__name__)

_REFRESH_ATTEMPTS: Final = 3
# DuckDB's memory limit in the dashboard (its buffers, hash tables and caches; beyond it, it spills to disk
# or fails the query): with what the engine holds per file, the process stays within about a gigabyte.
MEMORY_LIMIT_MB: Final = 512
Mode = Literal["cached", "direct"]
Bucket = Literal["auto", "minute", "hour", "day"]
BUCKET_MINUTES: Final[dict[str, int]] = {"minute": 1, "hour": 60, "day": MINUTES_PER_DAY}


class LakeAnalytics:
    """The query engine over one lake: a DuckDB database, per-file partials, and a snapshot per refresh.

    Thread-safe: each query runs on its own connection (a cursor of the shared database, the way
    DuckDB documents for using one database from several threads); refreshes are serialized, and so
    is the one table reader they share.
    """

    def __init__(
        self,
        storage: Storage,
        *,
        mode: Mode = "cached",
        threads: int | None = None,
        cache: PartialCache | None = None,
        memory_limit_mb: int = MEMORY_LIMIT_MB,
        persisted: bool = True,
    ) -> None:
        self.storage = storage
        self.mode: Mode = mode
        self.threads = threads or os.cpu_count() or 1
        self.cache = cache if cache is not None else PartialCache.for_storage(storage)
        self.memory_limit_mb = memory_limit_mb
        self._db = duckdb.connect(config={"threads": self.threads, "memory_limit": f"{memory_limit_mb}MB"})
        self._db_lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._reader = SnapshotReader(storage)
        # The aggregates table (lake.aggregates); persisted=False ignores it (the benchmark's reference).
        self._aggregates = AggregatesReader(storage) if persisted else None
        self._last: Snapshot | None = None

    def connect(self) -> duckdb.DuckDBPyConnection:
        """A new connection of the caller's own to the shared database (close it when done)."""
        with self._db_lock:
            con = self._db.cursor()
        con.execute("SET enable_progress_bar = false")
        return con

    def close(self) -> None:
        with self._db_lock:
            self._db.close()

    def _missing(self, table: TableSnapshot) -> list[str]:
        """Files of ``table`` the failed refresh was reading (not cached) that are no longer in storage.

        LakeError if asking the storage fails (a failed request: the refresh is retried later).
        """
        return [f.key for f in table.files if self.cache.get(f.info) is None and not self.storage.exists(f.key)]

    def _persisted(self) -> Mapping[str, Persisted]:
        """The aggregates table's files by data file; none if it is not used, or its log cannot be read now
        (logged: the files are then read, which is slower, never wrong)."""
        if self._aggregates is None:
            return {}
        try:
            return self._aggregates.persisted()
        except LakeError as exc:
            log.warning("the aggregates table cannot be read (%s): the data files are read instead", exc)
            return {}

    @sql_monitoring("refresh")
    def snapshot(self) -> Snapshot:
        """What the lake holds now: the table's newest snapshot and, in cached mode, the partials of its files.

        Only files not seen before are read. Over an unchanged table the previous snapshot is returned.
        Raises UnmigratedLakeError for a lake in the previous layout, LakeError if the log or a file of
        the snapshot cannot be read (after retrying with newer snapshots while files vanish).
        """
        with self._refresh_lock:
            if self.mode == "direct":
                return Snapshot(self, self._reader.snapshot(), None)
            missing: list[str] = []
            for attempt in range(_REFRESH_ATTEMPTS):
                table = self._reader.snapshot()
                stored = self._persisted()
                last = self._last
                if (
                    last is not None
                    and last.lake.version == table.version
                    and last.lake.files == table.files
                    and not last.gains(stored)
                ):
                    return last
                con = self.connect()
                try:
                    partials, read = self.cache.ensure(con, self.storage, table.files, table.columns, stored)
                except (duckdb.Error, OSError, pa.ArrowException) as exc:
                    missing = self._missing(table)
                    if not missing:
                        raise LakeError(f"reading the files of table version {table.version} failed: {exc}") from exc
                    # Removed by a compaction and cleaned up since this snapshot: a newer one exists.
                    log.debug("refresh attempt %d: %s vanished (%s)", attempt + 1, missing[0], exc)
                    continue
                finally:
                    con.close()
                note_files_scanned(read)
                self.cache.retain(f.info for f in table.files)
                snap = Snapshot(self, table, partials)
                self._last = snap
                return snap
        raise LakeError(
            f"{missing[0]} is in the table's snapshot but missing from disk, in {_REFRESH_ATTEMPTS} successive "
            "snapshots (run `python -m lake verify`)"
        )


@dataclass
class _Sources:
    """The sources of one query (``SELECT``s to union) and their parameters, on the query's connection.

    :meth:`direct` reads files: by path where the storage has paths (DuckDB's ``read_parquet``), else
    streamed through the storage (:class:`analytics.reading.BatchStream`, skipping row groups outside the
    time span); either way the same SQL selects the rows. :meth:`close` stops any stream still open.
    """

    con: duckdb.DuckDBPyConnection
    lake: TableSnapshot
    aggregate: Aggregate
    filters: Filters
    params: dict[str, Any]
    sources: list[str] = field(default_factory=list)
    read: set[str] = field(default_factory=set)
    streams: list[reading.BatchStream] = field(default_factory=list)

    def direct(self, files: list[reading.FileRef], lo: int | None, hi: int | None, tag: str, sign: int = 1) -> None:
        """Add ``files``' rows with badge-out minutes in [lo, hi) (None: unbounded), measures times ``sign``."""
        where, p = self.filters.where(raw=True, lo=lo, hi=hi, tag=tag)
        storage = self.lake.storage
        if isinstance(storage, LocalStorage):
            if self.aggregate.requires is not None:  # files written before the column hold none of its rows
                if self.aggregate.requires not in self.lake.columns:
                    return
                try:
                    files = [ref for ref in files if holds(storage, ref.key, self.aggregate.requires)]
                except OSError as exc:
                    raise LakeError(f"{self.aggregate.name} query failed: {exc}") from exc
                if not files:
                    return
            source = self.aggregate.files_source(f"${tag}files")
            self.params[f"{tag}files"] = [str(self.lake.path_of(ref.key)) for ref in files]
        else:
            span = (None if lo is None else lo * US_PER_MINUTE, None if hi is None else hi * US_PER_MINUTE)
            stream = reading.BatchStream(self.lake.storage, files, span)
            self.streams.append(stream)
            source = f"{tag}rows"
            self.con.register(source, stream.reader)
        # Only constant expressions and parameter names are formatted in; values are parameters.
        select = self.aggregate.raw_select(sign)
        self.sources.append(f"SELECT {select} FROM {source} WHERE {self.aggregate.where} AND {where}")  # noqa: S608
        self.params.update(p)
        self.read.update(ref.key for ref in files)

    def held(
        self, level: Aggregate, tables: list[pa.Table], lo: int | None, hi: int | None, *, tag: str, sign: int
    ) -> None:
        """Add the rows of ``level``'s partials ``tables`` (held in memory) in buckets [lo, hi), in base columns."""
        where, p = self.filters.where(raw=False, time_column=level.time_column, lo=lo, hi=hi, tag=tag)
        if not tables:
            return
        name = f"{tag}held"
        self.con.register(name, tables[0] if len(tables) == 1 else pa.concat_tables(tables))
        self.sources.append(f"SELECT {level.as_base(sign)} FROM {name} WHERE {where}")  # noqa: S608 (constants only)
        self.params.update(p)

    def stored(
        self, level: Aggregate, partials: list[FilePartial], lo: int | None, hi: int | None, *, tag: str, sign: int
    ) -> None:
        """Add ``level``'s rows in buckets [lo, hi) from the aggregates files of ``partials``, in the base's columns.

        Only the row groups of that level and span are read: by DuckDB from local paths; on object storage
        through the storage (ranged reads), as Arrow. A failed read is a LakeError (the query fails, nothing
        is left out).
        """
        storage = self.lake.storage
        keys = [f.persisted.info.key for f in partials if f.persisted is not None]
        self.read.update(keys)
        if not isinstance(storage, LocalStorage):
            tables: list[pa.Table] = []
            for key in keys:
                try:
                    with storage.open_input(key) as source:
                        tables.append(from_persisted(read_levels(source, [level], lo, hi), level))
                except (OSError, pa.ArrowException) as exc:
                    raise LakeError(f"{level.name} query failed reading {key}: {exc}") from exc
            self.held(level, tables, lo, hi, tag=tag, sign=sign)
            return
        where, p = self.filters.where(raw=False, time_column=BUCKET, lo=lo, hi=hi, tag=tag)
        self.params[f"{tag}files"] = [str(storage.path(key)) for key in keys]
        self.params[f"{tag}level"] = level.name
        self.sources.append(
            f"SELECT {level.as_base(sign, BUCKET)} FROM read_parquet(${tag}files) "  # noqa: S608 (constants only)
            f"WHERE {LEVEL} = ${tag}level AND {where}"
        )
        self.params.update(p)

    def close(self) -> None:
        for stream in self.streams:
            stream.close()


def _ref(partial: FilePartial) -> reading.FileRef:
    """The file a partial is of, as the readers take it: its key, rows and size according to the log."""
    return reading.FileRef(partial.info.key, partial.rows, partial.info.size)


@dataclass
class Snapshot:
    """One consistent view of the lake: every query answers for exactly these files."""

    engine: LakeAnalytics
    lake: TableSnapshot  # the table's version, files and statistics this view answers for
    partials: Mapping[str, FilePartial] | None  # None: direct mode (read the files on every query)
    taken_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    _tables: dict[str, pa.Table] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def is_empty(self) -> bool:
        return self.lake.rows == 0

    def gains(self, stored: Mapping[str, Persisted]) -> bool:
        """Whether ``stored`` has aggregates files for files this view computed itself (committed since)."""
        if self.partials is None:
            return False
        return any(
            p.persisted is None and (s := stored.get(key)) is not None and s.source_rows == p.rows
            for key, p in self.partials.items()
        )

    @property
    def num_rows(self) -> int:
        """Rows in the snapshot, from the log (what a refresh reports to the query monitor)."""
        return self.lake.rows

    def _ordered(self) -> list[FilePartial]:
        return [] if self.partials is None else [self.partials[f.key] for f in self.lake.files]

    def table(self, aggregate: Aggregate) -> pa.Table:
        """The partials of ``aggregate`` of all files that have one, concatenated (zero-copy, built once)."""
        with self._lock:
            hit = self._tables.get(aggregate.name)
            if hit is None:
                pieces = [t for p in self._ordered() if (t := p.table(aggregate)) is not None and t.num_rows]
                hit = pa.concat_tables(pieces) if pieces else aggregate.schema.empty_table()
                self._tables[aggregate.name] = hit
            return hit

    # -- plumbing -----------------------------------------------------------------------------------
    def _run(
        self,
        aggregate: Aggregate,
        body: str,
        filters: Filters,
        params: dict[str, Any] | None = None,
        grain: int | None = None,
    ) -> pd.DataFrame:
        """``body`` over ``src``: the selected rows in ``aggregate``'s columns, however they are obtained.

        ``grain``: the query groups time by buckets of this many minutes (None: not by time); a level whose
        buckets do not divide it is not used.
        """
        con = self.engine.connect()
        q = _Sources(con, self.lake, aggregate, filters, params=dict(params or {}))
        try:
            lo, hi = filters.minute_lo, filters.minute_hi
            if self.lake.is_empty:
                pass  # no DuckDB call on an empty file list: the empty partial answers
            elif self.partials is None:
                q.direct([reading.FileRef(f.key, f.row_count, f.info.size) for f in self.lake.files], lo, hi, "d_")
            else:
                levels = [lv for lv in FAMILIES[aggregate.name] if grain is None or grain % lv.minutes_per_bucket == 0]
                files = [p for p in self._ordered() if p.overlaps(lo, hi)]
                self._plan(q, levels, files, (lo, hi), sign=1, tag="q")
            if not q.sources:
                con.register(f"{aggregate.name}_empty", aggregate.schema.empty_table())
                q.sources.append(f"SELECT * FROM {aggregate.name}_empty")  # noqa: S608 (constants only)
            note_files_scanned(len(q.read))
            sql = f"WITH src AS ({' UNION ALL '.join(q.sources)}) {body}"
            try:
                result: pd.DataFrame = con.sql(sql, params=q.params).df()
            except duckdb.Error as exc:  # on object storage a failed read surfaces here too: its stream failed
                raise LakeError(f"{aggregate.name} query failed: {exc}") from exc
            return result
        finally:
            q.close()
            con.close()

    def _plan(
        self,
        q: _Sources,
        levels: list[Aggregate],
        files: list[FilePartial],
        span: tuple[int | None, int | None],
        *,
        sign: int,
        tag: str,
    ) -> None:
        """Add sources answering minutes [lo, hi) of ``files`` exactly, coarsest level first.

        Each file's whole buckets of ``levels[0]`` come from where it has that level (held in memory, else its
        aggregates file, which holds every level); the partly selected buckets go one level down (or are
        subtracted from the whole bucket, when most of it is selected and the measures are sums), and below
        the last level the data files' rows are read. Every selected minute of every file is counted once
        (:func:`analytics.spans.plan_spans` per level), whatever mix of sources the files have.
        """
        if not files:
            return
        lo, hi = span
        if not levels:
            q.direct([_ref(p) for p in files], lo, hi, f"{tag}r_", sign)
            return
        level, finer = levels[0], levels[1:]
        held = [p for p in files if p.table(level) is not None]
        stored = [p for p in files if p.table(level) is None and p.persisted is not None]  # every level is there
        rest = [p for p in files if p.table(level) is None and p.persisted is None]
        self._plan(q, finer, rest, span, sign=sign, tag=f"{tag}n")
        size = level.minutes_per_bucket
        for g, group in enumerate((held, stored)):
            if not group:
                continue
            how = plan_spans(lo, hi, size, subtract=level.additive)
            for i, (b_lo, b_hi) in enumerate(how.cached):
                if g == 0:
                    tables = [t for p in group if (t := p.table(level)) is not None and t.num_rows]
                    q.held(level, tables, b_lo, b_hi, tag=f"{tag}{g}c{i}_", sign=sign)
                else:
                    q.stored(level, group, b_lo, b_hi, tag=f"{tag}{g}c{i}_", sign=sign)
            for s_sign, spans, kind in ((sign, how.plus, "p"), (-sign, how.minus, "m")):
                for i, (s_lo, s_hi) in enumerate(spans):
                    inside = [p for p in group if p.overlaps(s_lo, s_hi)]
                    self._plan(q, finer, inside, (s_lo, s_hi), sign=s_sign, tag=f"{tag}{g}{kind}{i}")

    # -- the queries --------------------------------------------------------------------------------
    @sql_monitoring("kpis")
    def kpis(self, filters: Filters = ALL) -> Kpis:
        """Total events, denied attempts, granted sessions, premature sessions, newest badge-out."""
        row = self._run(CUBE, KPIS_SQL, filters).iloc[0]
        newest = row["newest_out_us"]
        return Kpis(
            int(row["total_events"]),
            int(row["denied"]),
            int(row["sessions"]),
            int(row["premature"]),
            None if pd.isna(newest) else moment_of_us(int(newest)),
        )

    @sql_monitoring("access distribution")
    def access_distribution(self, filters: Filters = ALL) -> pd.DataFrame:
        """Events by access outcome: ``access`` (Granted, Denied), ``events``."""
        return self._run(CUBE, ACCESS_SQL, filters)

    @sql_monitoring("premature badge-outs")
    def premature_by_dept_building(self, filters: Filters = ALL) -> pd.DataFrame:
        """Granted sessions under 4 h per department and building: ``dept, building, premature, sessions``."""
        return self._run(CUBE, PREMATURE_SQL, filters)

    @sql_monitoring("compliance distribution")
    def compliance_distribution(self, filters: Filters = ALL) -> pd.DataFrame:
        """Granted sessions, compliant (4 h or more) and premature: ``status, sessions`` (no rows if none)."""
        return self._run(CUBE, COMPLIANCE_SQL, filters)

    @sql_monitoring("traffic over time")
    def traffic(self, filters: Filters = ALL, bucket: Bucket | int = "auto") -> pd.DataFrame:
        """Events and denied attempts per badge-out bucket: ``time`` (naive UTC, bucket start), ``events``, ``denied``.

        ``auto``: minutes for up to 6 h of selected data, hours up to 14 days, days beyond.
        """
        if bucket == "auto":
            minutes = self._auto_bucket(filters)
        else:
            minutes = BUCKET_MINUTES[bucket] if isinstance(bucket, str) else int(bucket)
        df = self._run(CUBE, TRAFFIC_SQL, filters, {"bucket": minutes}, grain=minutes)
        df.insert(0, "time", pd.to_datetime(df["minute"].to_numpy(dtype="int64") * 60, unit="s"))
        df = df.drop(columns=["minute"])
        df.attrs["bucket_minutes"] = minutes
        return df

    def _auto_bucket(self, filters: Filters) -> int:
        lo, hi = self.time_bounds(filters)
        span = 0.0 if lo is None or hi is None else (hi - lo).total_seconds() / 60
        return 1 if span <= 360 else 60 if span <= 14 * MINUTES_PER_DAY else MINUTES_PER_DAY

    @sql_monitoring("building x hour heatmap")
    def building_hour_heatmap(self, filters: Filters = ALL) -> pd.DataFrame:
        """Arrivals (all attempts) per building and badge-in hour of day, UTC: ``building, hour, events``."""
        return self._run(ARRIVALS, HEATMAP_SQL, filters)

    @sql_monitoring("denial rates")
    def denial_rates(self, filters: Filters = ALL) -> pd.DataFrame:
        """Denied share of attempts per building and department: ``dimension, value, events, denied, denial_rate``."""
        return self._run(CUBE, DENIAL_SQL, filters)

    @sql_monitoring("compliance by department")
    def compliance_by_department(self, filters: Filters = ALL) -> pd.DataFrame:
        """Per department, granted sessions only: ``dept, sessions, compliant, premature, compliance_rate``."""
        return self._run(CUBE, COMPLIANCE_BY_DEPT_SQL, filters)

    @sql_monitoring("repeat non-compliant employees")
    def repeat_offenders(self, filters: Filters = ALL, *, min_premature: int = 2, limit: int = 20) -> pd.DataFrame:
        """Employees with at least ``min_premature`` premature sessions, most first (ties by id), at most ``limit``.

        Columns ``user_id, dept, sessions, premature, premature_share, repeat_employees`` (the last: how
        many employees qualify in all, before the limit).
        """
        return self._run(USERS, REPEAT_SQL, filters, {"min_premature": int(min_premature), "limit": int(limit)})

    @property
    def has_doors(self) -> bool:
        """Whether any file of the snapshot holds door ids (record version 2 onwards)."""
        if self.partials is None:  # direct mode: ask the files
            return bool(not self.busiest_doors(ALL, limit=1).empty)
        if self.table(DOORS_DAY).num_rows > 0:
            return True
        # files whose doors stay in their aggregates file (beyond the memory budget): ask them
        if any(p.table(DOORS_DAY) is None for p in self._ordered()):
            return bool(not self.busiest_doors(ALL, limit=1).empty)
        return False

    @sql_monitoring("busiest doors")
    def busiest_doors(self, filters: Filters = ALL, *, limit: int = 15) -> pd.DataFrame:
        """The doors most badged at (record version 2 onwards), most first (ties by door), at most ``limit``.

        Columns ``building, door, events, doors`` (the last: how many doors were badged at in all, before the
        limit). Events of records without a door (version 1, or access denied) are not counted.
        """
        return self._run(DOORS, DOORS_SQL, filters, {"limit": int(limit)})

    @sql_monitoring("freshness")
    def freshness(self, filters: Filters = ALL, now: datetime | None = None) -> Freshness:
        """The newest badge-out among the selected events against ``now`` (default: the clock, UTC).

        For the whole lake, in cached mode, it is the newest of the files' statistics in the log (no file
        is read); direct mode, the reference, reads the files.
        """
        newest: datetime | None
        if filters == ALL and self.partials is not None:
            stat = self.lake.newest_event_time
            newest = None if stat is None else stat.replace(tzinfo=UTC)
        else:
            value = self._run(CUBE, FRESHNESS_SQL, filters).iloc[0]["newest_out_us"]
            newest = None if pd.isna(value) else moment_of_us(int(value))
        return Freshness(newest, (now or datetime.now(UTC)).astimezone(UTC))

    def time_bounds(self, filters: Filters = ALL) -> tuple[datetime | None, datetime | None]:
        """First and last badge-out minute among the selected events (naive UTC), or (None, None)."""
        if self.partials is not None and filters == ALL:
            spans = [(p.minute_lo, p.minute_hi) for p in self._ordered() if p.minute_lo is not None]
            if not spans:
                return None, None
            return moment_of_minute(min(s[0] for s in spans if s[0] is not None)), moment_of_minute(
                max(s[1] for s in spans if s[1] is not None)
            )
        row = self._run(CUBE, BOUNDS_SQL, filters, grain=1).iloc[0]
        if pd.isna(row["lo"]):
            return None, None
        return moment_of_minute(int(row["lo"])), moment_of_minute(int(row["hi"]))


__all__ = ["BUCKET_MINUTES", "Bucket", "LakeAnalytics", "Mode", "Snapshot"]
