"""The dashboard's queries: DuckDB over the live set, filtered by time range, departments and buildings.

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
* **Freshness**: newest ``badge_out_timestamp`` among the selected events, against now (UTC).

Every query reads only the files of ``lake.liveset.live_set`` (a list, never a glob), on its own DuckDB
connection, with every filter value passed as a parameter. Two modes give identical results: ``cached``
(default) sums per-file partial aggregates (see :mod:`analytics.partials`), scanning only new files on a
refresh; ``direct`` reads the Parquet files on every query (the reference, and the benchmark's baseline).
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

import duckdb
import pandas as pd
import pyarrow as pa

from analytics.monitor import note_files_scanned, sql_monitoring
from analytics.partials import ARRIVALS, CUBE, KINDS, USERS, FilePartial, Kind, PartialCache
from lake.liveset import LiveSet, live_set
from lake.storage import LocalStorage
from utils.errors import LakeError

log = logging.getLogger(__name__)

EPOCH: Final = datetime(1970, 1, 1)
_REFRESH_ATTEMPTS: Final = 3
Mode = Literal["cached", "direct"]
Bucket = Literal["auto", "minute", "hour", "day"]
MINUTES_PER_DAY: Final = 1_440
BUCKET_MINUTES: Final[dict[str, int]] = {"minute": 1, "hour": 60, "day": MINUTES_PER_DAY}

# Freshness colours: amber past a minute, red past five (the pipeline flushes at least every 5 s).
FRESHNESS_AMBER_SECONDS: Final = 60.0
FRESHNESS_RED_SECONDS: Final = 300.0


def to_naive_utc(moment: datetime) -> datetime:
    """A naive UTC datetime (aware values converted, naive ones taken as UTC)."""
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo is not None else moment


def minute_of(moment: datetime) -> int:
    """Whole minutes since the epoch, floored."""
    return (to_naive_utc(moment) - EPOCH) // timedelta(minutes=1)


def moment_of_minute(minute: int) -> datetime:
    """The naive UTC datetime at the start of ``minute``."""
    return EPOCH + timedelta(minutes=minute)


def moment_of_us(us: int) -> datetime:
    """An aware UTC datetime from microseconds since the epoch."""
    return (EPOCH + timedelta(microseconds=us)).replace(tzinfo=UTC)


def _names(values: Sequence[str] | None) -> tuple[str, ...] | None:
    return tuple(sorted(set(values))) if values else None


@dataclass(frozen=True)
class Filters:
    """What the dashboard selects; None (or empty) means everything. Hashable, normalized on creation.

    ``start``/``end`` are floored to whole UTC minutes (naive = UTC) and applied to the event time as
    ``start <= badge_out_timestamp < end``.
    """

    start: datetime | None = None
    end: datetime | None = None
    departments: tuple[str, ...] | None = None
    buildings: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("start", "end"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, moment_of_minute(minute_of(value)))
        object.__setattr__(self, "departments", _names(self.departments))
        object.__setattr__(self, "buildings", _names(self.buildings))

    @property
    def minute_lo(self) -> int | None:
        return None if self.start is None else minute_of(self.start)

    @property
    def minute_hi(self) -> int | None:
        return None if self.end is None else minute_of(self.end)

    def where(
        self, *, raw: bool, time_column: str = "minute", lo: int | None = None, hi: int | None = None, tag: str = ""
    ) -> tuple[str, dict[str, Any]]:
        """A WHERE body and its parameters, over raw lake columns (``raw``) or a partial's columns.

        Time bounds ``lo``/``hi`` are in the partial's buckets (raw: minutes, compared as timestamps);
        only the set filters appear in the text, and their values are always parameters.
        """
        clauses: list[str] = []
        params: dict[str, Any] = {}
        time_expr = "badge_out_timestamp" if raw else time_column
        for name, op, bound in (("lo", ">=", lo), ("hi", "<", hi)):
            if bound is not None:
                clauses.append(f"{time_expr} {op} ${tag}{name}")
                params[f"{tag}{name}"] = moment_of_minute(bound) if raw else bound
        if self.departments is not None:
            clauses.append(f"list_contains(${tag}depts, dept)")
            params[f"{tag}depts"] = list(self.departments)
        if self.buildings is not None:
            clauses.append(f"list_contains(${tag}buildings, {'building_location' if raw else 'building'})")
            params[f"{tag}buildings"] = list(self.buildings)
        return (" AND ".join(clauses) or "true"), params

    def with_minutes(self, lo: int | None, hi: int | None) -> Filters:
        """The same selection restricted to badge-in minutes [lo, hi)."""
        return Filters(
            None if lo is None else moment_of_minute(lo),
            None if hi is None else moment_of_minute(hi),
            self.departments,
            self.buildings,
        )


ALL: Final = Filters()


@dataclass(frozen=True)
class Kpis:
    """The headline numbers of a selection."""

    total_events: int
    denied: int
    sessions: int  # granted attempts
    premature: int
    newest_out: datetime | None  # aware UTC

    @property
    def compliant(self) -> int:
        return self.sessions - self.premature

    @property
    def compliance_rate(self) -> float | None:
        return self.compliant / self.sessions if self.sessions else None

    def as_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            [
                {
                    "total_events": self.total_events,
                    "denied": self.denied,
                    "sessions": self.sessions,
                    "compliant": self.compliant,
                    "premature": self.premature,
                    "compliance_rate": self.compliance_rate,
                    "newest_badge_out": self.newest_out,
                }
            ]
        )


@dataclass(frozen=True)
class Freshness:
    """The newest event against a clock: lag in seconds and its colour."""

    newest: datetime | None  # aware UTC
    now: datetime  # aware UTC

    @property
    def lag_seconds(self) -> float | None:
        return None if self.newest is None else (self.now - self.newest).total_seconds()

    @property
    def status(self) -> Literal["empty", "fresh", "amber", "red"]:
        return freshness_status(self.lag_seconds)

    def at(self, now: datetime) -> Freshness:
        """The same newest event seen at another instant (the KPI ages between refreshes)."""
        return Freshness(self.newest, now)


def freshness_status(lag_seconds: float | None) -> Literal["empty", "fresh", "amber", "red"]:
    """Traffic-light colour of a freshness lag."""
    if lag_seconds is None:
        return "empty"
    if lag_seconds >= FRESHNESS_RED_SECONDS:
        return "red"
    if lag_seconds >= FRESHNESS_AMBER_SECONDS:
        return "amber"
    return "fresh"


# -- SQL over `src` ------------------------------------------------------------------------------------
# cube columns: minute, dept, building, granted, events, premature, last_out_us
KPIS_SQL: Final = """
SELECT coalesce(sum(events), 0)::BIGINT AS total_events,
       coalesce(sum(events) FILTER (WHERE NOT granted), 0)::BIGINT AS denied,
       coalesce(sum(events) FILTER (WHERE granted), 0)::BIGINT AS sessions,
       coalesce(sum(premature), 0)::BIGINT AS premature,
       max(last_out_us) AS newest_out_us
FROM src"""
ACCESS_SQL: Final = """
SELECT CASE WHEN granted THEN 'Granted' ELSE 'Denied' END AS access, sum(events)::BIGINT AS events
FROM src GROUP BY granted ORDER BY granted DESC"""
PREMATURE_SQL: Final = """
SELECT dept, building, sum(premature)::BIGINT AS premature, sum(events)::BIGINT AS sessions
FROM src WHERE granted GROUP BY dept, building ORDER BY dept, building"""
COMPLIANCE_SQL: Final = """
SELECT status, n AS sessions FROM (
    SELECT unnest([
        {'status': 'Compliant (4 h or more)', 'n': (sum(events) - sum(premature))::BIGINT, 'o': 1},
        {'status': 'Premature (under 4 h)', 'n': sum(premature)::BIGINT, 'o': 2}
    ], recursive := true), sum(events) AS total
    FROM src WHERE granted
) WHERE total > 0 ORDER BY o"""
TRAFFIC_SQL: Final = """
SELECT (minute // $bucket) * $bucket AS minute,
       sum(events)::BIGINT AS events,
       coalesce(sum(events) FILTER (WHERE NOT granted), 0)::BIGINT AS denied
FROM src GROUP BY 1 ORDER BY 1"""
DENIAL_SQL: Final = """
SELECT CASE WHEN grouping(dept) = 0 THEN 'Department' ELSE 'Building' END AS dimension,
       coalesce(dept, building) AS value,
       sum(events)::BIGINT AS events,
       coalesce(sum(events) FILTER (WHERE NOT granted), 0)::BIGINT AS denied,
       (coalesce(sum(events) FILTER (WHERE NOT granted), 0) / sum(events))::DOUBLE AS denial_rate
FROM src GROUP BY GROUPING SETS ((dept), (building)) ORDER BY dimension, value"""
COMPLIANCE_BY_DEPT_SQL: Final = """
SELECT dept,
       sum(events)::BIGINT AS sessions,
       (sum(events) - sum(premature))::BIGINT AS compliant,
       sum(premature)::BIGINT AS premature,
       ((sum(events) - sum(premature)) / sum(events))::DOUBLE AS compliance_rate
FROM src WHERE granted GROUP BY dept ORDER BY dept"""
FRESHNESS_SQL: Final = "SELECT max(last_out_us) AS newest_out_us FROM src"
BOUNDS_SQL: Final = "SELECT min(minute) AS lo, max(minute) AS hi FROM src"
# arrivals columns: hour, dept, building, in_hour, events
HEATMAP_SQL: Final = """
SELECT building, in_hour AS hour, sum(events)::BIGINT AS events FROM src GROUP BY ALL
HAVING sum(events) <> 0  -- cells cancelled by subtracted minutes are not cells
ORDER BY building, hour"""
# users columns: hour, user_id, dept, building, sessions, premature (granted sessions only)
REPEAT_SQL: Final = """
SELECT user_id, min(dept) AS dept, sum(sessions)::BIGINT AS sessions, sum(premature)::BIGINT AS premature,
       (sum(premature) / sum(sessions))::DOUBLE AS premature_share,
       count(*) OVER ()::BIGINT AS repeat_employees
FROM (
    -- per employee and department first: rows subtracted from a cached bucket cancel out here, so a
    -- department only seen in unselected minutes cannot leak into min(dept)
    SELECT user_id, dept, sum(sessions) AS sessions, sum(premature) AS premature
    FROM src GROUP BY user_id, dept HAVING sum(sessions) <> 0
)
GROUP BY user_id HAVING sum(premature) >= $min_premature
ORDER BY premature DESC, user_id LIMIT $limit"""


class LakeAnalytics:
    """The query engine over one lake: a DuckDB database, per-file partials, and a snapshot per refresh.

    Thread-safe: each query runs on its own connection (a cursor of the shared database, the way
    DuckDB documents for using one database from several threads); refreshes are serialized.
    """

    def __init__(
        self,
        storage: LocalStorage,
        *,
        mode: Mode = "cached",
        threads: int | None = None,
        cache: PartialCache | None = None,
    ) -> None:
        self.storage = storage
        self.mode: Mode = mode
        self.threads = threads or os.cpu_count() or 1
        self.cache = cache or PartialCache()
        self._db = duckdb.connect(config={"threads": self.threads})
        self._db_lock = threading.Lock()
        self._refresh_lock = threading.Lock()
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

    @sql_monitoring("refresh")
    def snapshot(self) -> Snapshot:
        """What the lake holds now: its live set and, in cached mode, the partials of its files.

        Only files not seen before are read. Over an unchanged live set the previous snapshot is returned.
        """
        if self.mode == "direct":
            return Snapshot(self, live_set(self.storage), None)
        with self._refresh_lock:
            for attempt in range(_REFRESH_ATTEMPTS):
                live = live_set(self.storage)
                last = self._last
                if last is not None and last.live.files == live.files:
                    return last
                con = self.connect()
                try:
                    partials, read = self.cache.ensure(con, self.storage, live.files)
                except (duckdb.IOException, FileNotFoundError) as exc:
                    # A file left the lake between listing and reading (a compactor's deletion): list again.
                    log.debug("refresh attempt %d: %s", attempt + 1, exc)
                    error: Exception = exc
                    continue
                finally:
                    con.close()
                note_files_scanned(read)
                self.cache.retain(f.info for f in live.files)
                snap = Snapshot(self, live, partials)
                self._last = snap
                return snap
        raise LakeError(f"the lake kept changing while it was read: {error}") from error


Span = tuple[int | None, int | None]


@dataclass(frozen=True)
class Plan:
    """How to answer minutes [lo, hi) from a partial bucketed by ``size`` minutes, exactly.

    ``cached``: bucket ranges read from the cached partial; ``plus``: minute ranges read from the files;
    ``minus``: minute ranges read from the files and subtracted (a bucket mostly selected is cheaper as
    the cached bucket minus its unselected minutes than as its selected minutes read directly).
    """

    cached: list[Span]
    plus: list[Span]
    minus: list[tuple[int, int]]


def plan(lo: int | None, hi: int | None, size: int, *, subtract: bool) -> Plan:
    """Whole buckets from the cache; each partly selected bucket read directly, or cached minus the rest."""
    b_lo = None if lo is None else -(-lo // size)
    b_hi = None if hi is None else hi // size
    partial: list[tuple[int, int]] = []  # each inside one bucket
    cached: list[Span] = []
    if b_lo is not None and b_hi is not None and b_lo > b_hi:  # lo and hi inside the same bucket
        assert lo is not None and hi is not None
        if lo < hi:
            partial.append((lo, hi))
    else:
        if b_lo is None or b_hi is None or b_lo < b_hi:
            cached.append((b_lo, b_hi))
        if lo is not None and b_lo is not None and lo < b_lo * size:
            partial.append((lo, b_lo * size))
        if hi is not None and b_hi is not None and b_hi * size < hi:
            partial.append((b_hi * size, hi))
    plus: list[Span] = []
    minus: list[tuple[int, int]] = []
    for s_lo, s_hi in partial:
        bucket = s_lo // size
        if subtract and 2 * (s_hi - s_lo) > size:
            cached.append((bucket, bucket + 1))
            minus += [(a, b) for a, b in ((bucket * size, s_lo), (s_hi, (bucket + 1) * size)) if a < b]
        else:
            plus.append((s_lo, s_hi))
    return Plan(cached, plus, minus)


@dataclass
class Snapshot:
    """One consistent view of the lake: every query answers for exactly these files."""

    engine: LakeAnalytics
    live: LiveSet
    partials: Mapping[str, FilePartial] | None  # None: direct mode (read the files on every query)
    taken_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    _tables: dict[str, pa.Table] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def is_empty(self) -> bool:
        return self.live.rows == 0

    @property
    def num_rows(self) -> int:
        """Rows in the live set (what a refresh reports to the query monitor)."""
        return self.live.rows

    def _ordered(self) -> list[FilePartial]:
        return [] if self.partials is None else [self.partials[f.key] for f in self.live.files]

    def table(self, kind: Kind) -> pa.Table:
        """The partials of ``kind`` of all files that have one, concatenated (zero-copy, built once)."""
        with self._lock:
            hit = self._tables.get(kind.name)
            if hit is None:
                pieces = [t for p in self._ordered() if (t := p.table(kind)) is not None and t.num_rows]
                hit = pa.concat_tables(pieces) if pieces else kind.schema.empty_table()
                self._tables[kind.name] = hit
            return hit

    # -- plumbing -----------------------------------------------------------------------------------
    def _run(self, kind: Kind, body: str, filters: Filters, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """``body`` over ``src``: the selected rows in ``kind``'s columns, however they are obtained."""
        con = self.engine.connect()
        try:
            sources: list[str] = []
            all_params: dict[str, Any] = dict(params or {})
            read: set[str] = set()

            def direct(files: list[str], lo: int | None, hi: int | None, tag: str, sign: int = 1) -> None:
                where, p = filters.where(raw=True, lo=lo, hi=hi, tag=tag)
                # Only constant expressions and parameter names are formatted in; values are parameters.
                select = kind.raw_select(sign)
                sql = f"SELECT {select} FROM read_parquet(${tag}files) WHERE {kind.where} AND {where}"  # noqa: S608
                sources.append(sql)
                all_params.update(p)
                all_params[f"{tag}files"] = files
                read.update(files)

            lo, hi = filters.minute_lo, filters.minute_hi
            if self.live.is_empty:
                pass  # no DuckDB call on an empty file list: the empty partial answers
            elif self.partials is None:
                direct([str(p) for p in self.live.paths], lo, hi, "d_")
            else:
                size = kind.minutes_per_bucket
                how = plan(lo, hi, size, subtract=kind.additive and size > 1)
                cached = [p for p in self._ordered() if p.table(kind) is not None]
                if cached and how.cached:
                    con.register(kind.name, self.table(kind))
                for i, (b_lo, b_hi) in enumerate(how.cached if cached else []):
                    where, p = filters.where(raw=False, time_column=kind.time_column, lo=b_lo, hi=b_hi, tag=f"c{i}_")
                    sources.append(f"SELECT * FROM {kind.name} WHERE {where}")  # noqa: S608 (constants only)
                    all_params.update(p)
                for sign, spans, tag in ((1, how.plus, "p"), (-1, how.minus, "m")):
                    for i, (s_lo, s_hi) in enumerate(spans):
                        files = [self._path(p) for p in cached if p.overlaps(s_lo, s_hi)]
                        if files:
                            direct(files, s_lo, s_hi, f"{tag}{i}_", sign)
                without = [self._path(p) for p in self._ordered() if p.table(kind) is None and p.overlaps(lo, hi)]
                if without:
                    direct(without, lo, hi, "w_")
            if not sources:
                con.register(f"{kind.name}_empty", kind.schema.empty_table())
                sources.append(f"SELECT * FROM {kind.name}_empty")  # noqa: S608 (constants only)
            note_files_scanned(len(read))
            sql = f"WITH src AS ({' UNION ALL '.join(sources)}) {body}"
            try:
                result: pd.DataFrame = con.sql(sql, params=all_params).df()
            except duckdb.Error as exc:
                raise LakeError(f"{kind.name} query failed: {exc}") from exc
            return result
        finally:
            con.close()

    def _path(self, partial: FilePartial) -> str:
        return str(self.live.storage.path(partial.info.key))

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
        df = self._run(CUBE, TRAFFIC_SQL, filters, {"bucket": minutes})
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

    @sql_monitoring("freshness")
    def freshness(self, filters: Filters = ALL, now: datetime | None = None) -> Freshness:
        """The newest badge-out among the selected events against ``now`` (default: the clock, UTC)."""
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
        row = self._run(CUBE, BOUNDS_SQL, filters).iloc[0]
        if pd.isna(row["lo"]):
            return None, None
        return moment_of_minute(int(row["lo"])), moment_of_minute(int(row["hi"]))


def percent_text(rate: float | None) -> str:
    """A rate as the dashboard shows it (one decimal), or an em dash when undefined."""
    return "—" if rate is None or math.isnan(rate) else f"{rate * 100:.1f} %"


__all__ = [
    "ALL",
    "KINDS",
    "Filters",
    "Freshness",
    "Kpis",
    "LakeAnalytics",
    "Snapshot",
    "freshness_status",
    "percent_text",
]
