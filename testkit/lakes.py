"""Build realistic test lakes without the generator service: badge records made with numpy, published whole.

The records look like the stream's: a stable population of employees (each with one department and a
home building they mostly use), arrivals peaking in the morning over several days, sessions mostly a
working day with about a quarter under four hours, about 2 % denied attempts (``badge_out == badge_in``),
microsecond timestamps, and event ids in stream order: sorted by badge-out, the event time, as the
generator service emits them. Same arguments, same
records. :func:`publish` commits what it writes to the lake's Delta table (as the pipeline and the
compactor would), so every reader sees it through the log. Tests compute their ground truth from the
returned tables, never from the queries under test.
"""

from __future__ import annotations

import itertools
import json
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import cast

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from lake import layout
from lake.filestats import FileStats
from lake.parquet import badge_metadata, write_file
from lake.quarantine import commit_refused
from lake.storage import FileInfo, LocalStorage
from lake.table import LakeTable
from testkit.landing import commit_files
from testkit.records import TEST_IDENTITY, Population, assemble
from utils.records import BUILDINGS, QUARANTINE_SCHEMA, RECORD_SCHEMA, with_duration

US_PER_S = 1_000_000
US_PER_DAY = 86_400 * US_PER_S
EPOCH = datetime(1970, 1, 1)
DEFAULT_START = datetime(2025, 3, 3)  # a Monday, midnight UTC


def to_us(moment: datetime) -> int:
    """Microseconds since the epoch of a naive-UTC datetime."""
    return (moment - EPOCH) // timedelta(microseconds=1)


def badge_in_times(rows: int, *, seed: int, start: datetime, days: int) -> np.ndarray:
    """Sorted badge-in instants (int64 microseconds): 90 % around a 08:45 arrival, 10 % round the clock."""
    rng = np.random.default_rng([seed, 2])
    day = rng.integers(0, max(1, days), size=rows)
    office = rng.random(rows) < 0.9
    tod_s = np.where(
        office,
        np.clip(rng.normal(8.75 * 3600, 1.25 * 3600, size=rows), 5 * 3600, 14 * 3600),
        rng.uniform(0, 86_400, size=rows),
    )
    t = to_us(start) + day * US_PER_DAY + (tod_s * US_PER_S).astype(np.int64) + rng.integers(0, US_PER_S, size=rows)
    t.sort()
    return t


def session_lengths(rows: int, granted: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Microseconds: 75 % a working day (4 h to 13 h), 25 % a short visit (1 min to just under 4 h), 0 if denied."""
    short = rng.random(rows) < 0.25
    full_day = np.clip(rng.normal(8.3 * 3600, 3600, size=rows), 4 * 3600, 13 * 3600)
    visit = rng.uniform(60, 4 * 3600, size=rows)
    length = (np.where(short, visit, full_day) * US_PER_S).astype(np.int64)
    length = np.where(short, np.minimum(length, 4 * 3600 * US_PER_S - 1), length)
    return np.where(granted, length, 0)


def columns(rows: int, *, seed: int, start: datetime, days: int, population: Population) -> dict[str, np.ndarray]:
    """Every record's fields as arrays, in stream order: sorted by badge-out (the event time), like the service."""
    rng = np.random.default_rng([seed, 3])
    badge_in = badge_in_times(rows, seed=seed, start=start, days=days)
    who = rng.integers(0, len(population.dept_idx), size=rows)
    away = rng.random(rows) < 0.15
    building = np.where(away, rng.integers(0, len(BUILDINGS), size=rows), population.home_idx[who])
    granted = rng.random(rows) >= 0.02
    badge_out = badge_in + session_lengths(rows, granted, rng)
    order = np.argsort(badge_out, kind="stable")
    return {
        "who": who[order],
        "building": building[order],
        "granted": granted[order],
        "badge_in": badge_in[order],
        "badge_out": badge_out[order],
    }


def records(cols: dict[str, np.ndarray], lo: int, hi: int, population: Population) -> pa.Table:
    """A RECORD_SCHEMA table of the stream's records ``lo``..``hi - 1`` (event id = position)."""
    return assemble(
        ids=np.arange(lo, hi, dtype=np.int64),
        who=cols["who"][lo:hi],
        building=cols["building"][lo:hi],
        badge_in_us=cols["badge_in"][lo:hi],
        badge_out_us=cols["badge_out"][lo:hi],
        granted=cols["granted"][lo:hi],
        people=population,
    )


def generate(
    rows: int,
    *,
    seed: int = 7,
    start: datetime = DEFAULT_START,
    days: int = 3,
    users: int = 3000,
    chunk_rows: int = 1_000_000,
) -> Iterator[pa.Table]:
    """The stream as RECORD_SCHEMA tables of at most ``chunk_rows`` rows, in event-id (= badge-out) order."""
    population = Population.make(users, seed)
    cols = columns(rows, seed=seed, start=start, days=days, population=population)
    for lo in range(0, rows, chunk_rows):
        yield records(cols, lo, min(rows, lo + chunk_rows), population)


def make_table(rows: int, **kwargs: object) -> pa.Table:
    """All ``rows`` records as one LAKE_SCHEMA table (for small test lakes)."""
    chunks = [with_duration(t) for t in generate(rows, **kwargs)]  # type: ignore[arg-type]
    return pa.concat_tables(chunks) if chunks else with_duration(RECORD_SCHEMA.empty_table())


def edge_cases(first_event_id: int, start: datetime) -> pa.Table:
    """Sessions on the four-hour boundary and across hour/midnight boundaries, as a LAKE_SCHEMA table.

    Durations: 4 h - 1 us (premature, floors to 14399 s), exactly 4 h (compliant), 4 h + 1 us, 3 h 59 min
    spanning 5 hour boundaries (the original's hour-boundary count called it 5 h), 4 h 0 min 30 s over midnight.
    """
    base = to_us(start)
    ins = [
        base + 9 * 3600 * US_PER_S,
        base + 9 * 3600 * US_PER_S + 17,
        base + 10 * 3600 * US_PER_S,
        base + (10 * 3600 + 59 * 60) * US_PER_S + 30 * US_PER_S,
        base + (22 * 3600 - 15) * US_PER_S,
    ]
    lengths = [4 * 3600 * US_PER_S - 1, 4 * 3600 * US_PER_S, 4 * 3600 * US_PER_S + 1, (4 * 3600 - 60) * US_PER_S]
    lengths.append((4 * 3600 + 30) * US_PER_S)
    n = len(ins)
    table = pa.Table.from_pydict(
        {
            "event_id": list(range(first_event_id, first_event_id + n)),
            "user_id": ["00000000-0000-4000-8000-0000000ed9e0"] * n,
            "dept": ["Engineering", "Engineering", "Sales", "Finance", "Leadership"],
            "building_location": ["Sonic", "Grace", "Grace", "Maverick", "Re-invent"],
            "badge_in_timestamp": [EPOCH + timedelta(microseconds=t) for t in ins],
            "badge_out_timestamp": [EPOCH + timedelta(microseconds=t + d) for t, d in zip(ins, lengths, strict=True)],
            "access_granted": [True] * n,
        },
        schema=RECORD_SCHEMA,
    )
    return with_duration(table)


@dataclass
class BuiltLake:
    """A lake on disk and the records its table must show (the ground truth)."""

    storage: LocalStorage
    table: pa.Table  # LAKE_SCHEMA, every record of the table exactly once
    landing: list[FileInfo]  # landing files in the table
    compacted: list[FileInfo]  # compacted files in the table
    replaced: list[FileInfo]  # landing files a compaction removed from the table, still on disk


def split(table: pa.Table, parts: int) -> list[pa.Table]:
    """``table`` cut into ``parts`` contiguous slices of nearly equal size (no empty slice)."""
    parts = max(1, min(parts, table.num_rows))
    edges = np.linspace(0, table.num_rows, parts + 1).astype(int)
    return [table.slice(int(a), int(b - a)) for a, b in itertools.pairwise(edges)]


def compact(storage: LocalStorage, sources: Sequence[FileInfo]) -> FileInfo:
    """Rewrite the committed files ``sources`` into one compacted file and commit the swap, as the compactor does.

    One commit removes every source and adds the output (``dataChange=false``); the output's footer names
    the sources in ``badge.sources`` (for people, and the dashboard's merge hint). The sources stay on disk.
    """
    table = LakeTable.open(storage)
    held = {f.key: f for f in table.snapshot().files}
    rows = pa.concat_tables([pq.read_table(storage.path(s.key)) for s in sources])
    out = write_file(
        storage, rows, layout.COMPACTED, "compacted", {layout.META_SOURCES: json.dumps([s.key for s in sources])}
    )
    table.replace([held[s.key] for s in sources], [(out, FileStats.of_footer(pq.read_metadata(storage.path(out.key))))])
    return out


def publish(
    storage: LocalStorage,
    table: pa.Table,
    *,
    landing_files: int = 6,
    compacted_share: float = 0.5,
    compacted_files: int = 1,
    keep_replaced: bool = True,
) -> BuiltLake:
    """Publish ``table`` (LAKE_SCHEMA) and commit it to the lake's table so it holds each row once.

    The first ``compacted_share`` of the rows go into ``compacted_files`` compacted files, each committed
    the way the compactor does it: three landing files committed first, then one commit replacing them
    with the compacted file. Those landing files stay on disk (out of the table, awaiting clean-up) when
    ``keep_replaced``. The rest become ``landing_files`` committed landing files. The table is created
    for TEST_IDENTITY if the lake has none, unpartitioned (its files span dates: see
    :func:`testkit.landing.ensure_table`); the pipeline's position ends at the last event id.
    """
    storage.ensure_layout()
    LakeTable.open_or_create(storage, TEST_IDENTITY, partitioned=False)
    cut = int(table.num_rows * compacted_share)
    head, tail = table.slice(0, cut), table.slice(cut)
    compacted: list[FileInfo] = []
    replaced: list[FileInfo] = []
    if head.num_rows:
        for part in split(head, compacted_files):
            sources = [write_file(storage, piece, layout.LANDING, "landing") for piece in split(part, 3)]
            commit_files(storage, sources)
            compacted.append(compact(storage, sources))
            if keep_replaced:
                replaced.extend(sources)
            else:
                for s in sources:
                    storage.delete(s.key)
    landing = [write_file(storage, part, layout.LANDING, "landing") for part in split(tail, landing_files)]
    if not tail.num_rows:
        landing = []
    commit_files(storage, landing)
    return BuiltLake(storage, table, landing, compacted, replaced)


def add_quarantine(storage: LocalStorage, reasons: Sequence[str], *, first_event_id: int = 0) -> FileInfo:
    """Refused records, one QUARANTINE_SCHEMA record per reason (ids from ``first_event_id``), committed
    to the lake's quarantine table."""
    n = len(reasons)
    columns: dict[str, list[object]] = {name: [None] * n for name in QUARANTINE_SCHEMA.names}
    columns["event_id"] = list(range(first_event_id, first_event_id + n))
    columns["reason"] = list(reasons)
    return commit_refused(storage, pa.Table.from_pydict(columns, schema=QUARANTINE_SCHEMA))


def add_forged_files(storage: LocalStorage, built: BuiltLake) -> list[str]:
    """Files no commit added, each made to fool a reader that trusts listings or footers (issue 11's findings).

    A zero-row compacted file whose ``badge.sources`` names three landing files of the table; a 10-row
    landing file repeating ids 0..9 whose footer claims ids up to 9,999,999; a byte-for-byte copy of a
    file of the table under a new compacted name. Returns their keys.
    """
    named = [f.key for f in built.landing[:3]]
    empty = write_file(
        storage, built.table.slice(0, 0), layout.COMPACTED, "compacted", {layout.META_SOURCES: json.dumps(named)}
    )
    inflated = write_file(
        storage, built.table.slice(0, 10), layout.LANDING, "landing", badge_metadata(0, 9_999_999, 10)
    )
    original = (built.compacted or built.landing)[0]
    copy = f"{layout.COMPACTED}/{layout.new_file_name('compacted', 0, built.table.num_rows - 1)}"
    shutil.copyfile(storage.path(original.key), storage.path(copy))
    return [empty.key, inflated.key, copy]


def add_foreign_file(storage: LocalStorage, name: str = "foreign.parquet", zone: str = layout.LANDING) -> str:
    """A file in ``zone`` that no commit added (not even Parquet): the table does not hold it, no reader reads it."""
    key = f"{zone}/{name}"
    storage.path(key).write_bytes(b"PAR1 not really parquet")
    return key


# -- ground truth -------------------------------------------------------------------------------------
# Computed with pandas from the raw timestamps (never from duration_s or the SQL under test).

FOUR_HOURS_US = 4 * 3600 * US_PER_S


def truth_frame(table: pa.Table) -> pd.DataFrame:
    """The records as a DataFrame with ``elapsed_us``, ``premature`` and integer badge-out microseconds."""
    df: pd.DataFrame = table.select(
        ["user_id", "dept", "building_location", "badge_in_timestamp", "badge_out_timestamp", "access_granted"]
    ).to_pandas()
    out_us = table.column("badge_out_timestamp").cast(pa.int64()).to_numpy()
    in_us = table.column("badge_in_timestamp").cast(pa.int64()).to_numpy()
    df["out_us"] = out_us
    df["in_us"] = in_us
    df["elapsed_us"] = out_us - in_us
    df["premature"] = df["access_granted"] & (df["elapsed_us"] < FOUR_HOURS_US)
    return df


def select(
    df: pd.DataFrame,
    start: datetime | None = None,
    end: datetime | None = None,
    depts: Sequence[str] | None = None,
    buildings: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Rows with ``start <= badge_out < end`` (naive UTC) in the given departments and buildings."""
    keep = np.ones(len(df), dtype=bool)
    if start is not None:
        keep &= df["out_us"].to_numpy() >= to_us(start)
    if end is not None:
        keep &= df["out_us"].to_numpy() < to_us(end)
    if depts:
        keep &= df["dept"].isin(list(depts)).to_numpy()
    if buildings:
        keep &= df["building_location"].isin(list(buildings)).to_numpy()
    return df[keep]


def truth_kpis(df: pd.DataFrame) -> dict[str, int | None]:
    granted = df[df["access_granted"]]
    return {
        "total_events": len(df),
        "denied": int((~df["access_granted"]).sum()),
        "sessions": len(granted),
        "premature": int(granted["premature"].sum()),
        "compliant": int(len(granted) - granted["premature"].sum()),
        "newest_out_us": int(df["out_us"].max()) if len(df) else None,
    }


def truth_access(df: pd.DataFrame) -> dict[str, int]:
    counts = df["access_granted"].value_counts()
    return {("Granted" if k else "Denied"): int(v) for k, v in counts.items()}


def truth_premature(df: pd.DataFrame) -> dict[tuple[str, str], tuple[int, int]]:
    """(dept, building) -> (premature, granted sessions)."""
    granted = df[df["access_granted"]]
    grouped = granted.groupby(["dept", "building_location"])["premature"].agg(["sum", "count"])
    out: dict[tuple[str, str], tuple[int, int]] = {}
    for key, r in grouped.iterrows():
        d, b = cast(tuple[str, str], key)
        out[(str(d), str(b))] = (int(r["sum"]), int(r["count"]))
    return out


def truth_traffic(df: pd.DataFrame, bucket_minutes: int) -> dict[datetime, tuple[int, int]]:
    """Bucket start (naive UTC) -> (events, denied), bucketed on badge-out."""
    size = bucket_minutes * 60 * US_PER_S
    starts = (df["out_us"] // size) * size
    out: dict[datetime, tuple[int, int]] = {}
    for start, group in df.groupby(starts):
        out[EPOCH + timedelta(microseconds=int(start))] = (len(group), int((~group["access_granted"]).sum()))
    return out


def truth_heatmap(df: pd.DataFrame) -> dict[tuple[str, int], int]:
    """(building, badge-in hour of day UTC) -> events."""
    hours = (df["in_us"] // (3600 * US_PER_S)) % 24
    grouped = df.groupby([df["building_location"], hours]).size()
    out: dict[tuple[str, int], int] = {}
    for key, n in grouped.items():
        b, h = cast(tuple[str, int], key)
        out[(str(b), int(h))] = int(n)
    return out


def truth_denial(df: pd.DataFrame) -> dict[tuple[str, str], tuple[int, int]]:
    """("Building"|"Department", value) -> (events, denied)."""
    out: dict[tuple[str, str], tuple[int, int]] = {}
    for dimension, column in (("Building", "building_location"), ("Department", "dept")):
        for value, group in df.groupby(column):
            out[(dimension, str(value))] = (len(group), int((~group["access_granted"]).sum()))
    return out


def truth_compliance_by_dept(df: pd.DataFrame) -> dict[str, tuple[int, int, int]]:
    """dept -> (granted sessions, compliant, premature)."""
    granted = df[df["access_granted"]]
    out: dict[str, tuple[int, int, int]] = {}
    for dept, group in granted.groupby("dept"):
        premature = int(group["premature"].sum())
        out[str(dept)] = (len(group), len(group) - premature, premature)
    return out


def truth_repeat(df: pd.DataFrame, min_premature: int, limit: int) -> tuple[list[tuple[str, str, int, int]], int]:
    """Employees with >= min_premature premature sessions: [(user, dept, sessions, premature)] top ``limit``
    by premature desc then id, and how many qualify in all."""
    granted = df[df["access_granted"]]
    per_user: dict[str, list[int | str]] = {}
    for user, dept, premature in zip(granted["user_id"], granted["dept"], granted["premature"], strict=True):
        entry = per_user.setdefault(user, [dept, 0, 0])
        entry[0] = min(str(entry[0]), dept)
        entry[1] = int(entry[1]) + 1
        entry[2] = int(entry[2]) + int(premature)
    rows = [(u, str(e[0]), int(e[1]), int(e[2])) for u, e in per_user.items() if int(e[2]) >= min_premature]
    rows.sort(key=lambda r: (-r[3], r[0]))
    return rows[:limit], len(rows)
