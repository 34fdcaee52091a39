"""Partition pruning: a one-day query on a month-long lake, with the date partition filter and without it.

The lake: 30 days of the generator's stream (the service's records, the same day shape), compacted into
four files per date under ``compacted/date=YYYY-MM-DD/`` and committed to a table partitioned by date,
as the compactor leaves a month of the pipeline's flushes. The query: one day's events per department,
with the premature count (the dashboard's busiest kind of figure), for the 15th day.

* **DuckDB**: the files of the day, chosen from the log by their ``partitionValues``
  (``DeltaTable.file_uris`` with a partition predicate), read by ``read_parquet``; the reference is
  the same query over every file of the table with the day as a timestamp predicate (no partition
  filter: DuckDB opens every file and skips row groups by their statistics).
* **Polars** (``scan_delta``): the query filtered on the ``date`` column; the reference filters on
  ``badge_out_timestamp`` alone (delta-rs can then skip files only by their statistics, not by date).

Each timing includes choosing the files from an open table's log. ``python -m benchmarks.bench_partitions
[--size quick|full]`` prints a table; :func:`run` returns the rows. Work happens under ``benchmarks/.work/``.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Callable
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import duckdb
import polars as pl
from deltalake import DeltaTable

from api.generators import generate_table
from benchmarks.suite import Row, repeat
from lake import layout, partitions
from lake.filestats import FileStats
from lake.identity import StreamIdentity
from lake.parquet import write_file
from lake.storage import LocalStorage
from lake.table import LakeTable
from utils.records import COMPLIANCE_SECONDS, with_duration

HERE = Path(__file__).resolve().parent
WORK = HERE / ".work"
DAYS: Final = 30
FILES_PER_DAY: Final = 4
START: Final = datetime(2026, 10, 1)
SEED: Final = 42
SIZES: dict[str, dict[str, int]] = {
    "quick": {"rows_per_day": 20_000, "runs": 3},
    "full": {"rows_per_day": 400_000, "runs": 7},
}
TARGET_SHARE: Final = 1.0  # the pruned query is faster than the unpruned one

SQL: Final = """
    SELECT dept, count(*) AS events,
           count(*) FILTER (WHERE access_granted AND duration_s < $compliance) AS premature
    FROM read_parquet($files)
    WHERE badge_out_timestamp >= $lo AND badge_out_timestamp < $hi
    GROUP BY dept ORDER BY dept
"""


def build(root: Path, rows_per_day: int) -> int:
    """A month-long partitioned lake at ``root``; returns its rows."""
    storage = LocalStorage(root)
    identity = StreamIdentity(SEED, rows_per_day / 86_400, START.strftime("%Y-%m-%dT%H:%M:%SZ"))
    table = LakeTable.open_or_create(storage, identity)
    rows = generate_table(SEED, 0, rows_per_day * DAYS, stream_start=START, events_per_second=rows_per_day / 86_400)
    lake_rows = with_duration(rows)
    published = []
    for day, part in partitions.split_by_date(lake_rows):
        zone = partitions.directory(layout.COMPACTED, day)
        step = -(-part.num_rows // FILES_PER_DAY)
        for lo in range(0, part.num_rows, step):
            piece = part.slice(lo, step)
            published.append((write_file(storage, piece, zone, "compacted"), FileStats.of_table(piece)))
    top = int(lake_rows.column("event_id")[-1].as_py())
    table.append_files(published, through_event_id=top, expected=None)
    return int(lake_rows.num_rows)


def _duckdb(dt: DeltaTable, day: date, *, pruned: bool) -> Callable[[], float]:
    lo = datetime.combine(day, datetime.min.time())
    hi = lo + timedelta(days=1)
    con = duckdb.connect()

    def query() -> float:
        started = time.perf_counter()
        predicate = [(partitions.COLUMN, "=", day.isoformat())] if pruned else None
        files = dt.file_uris(file_pruning_predicate=predicate)
        con.execute(SQL, {"files": files, "lo": lo, "hi": hi, "compliance": COMPLIANCE_SECONDS}).fetchall()
        return (time.perf_counter() - started) * 1000

    return query


def _polars(root: str, day: date, *, pruned: bool) -> Callable[[], float]:
    lo = datetime.combine(day, datetime.min.time())
    hi = lo + timedelta(days=1)

    def query() -> float:
        started = time.perf_counter()
        frame = pl.scan_delta(root)
        if pruned:
            frame = frame.filter(pl.col(partitions.COLUMN) == day)
        else:
            frame = frame.filter((pl.col("badge_out_timestamp") >= lo) & (pl.col("badge_out_timestamp") < hi))
        premature = pl.col("access_granted") & (pl.col("duration_s") < COMPLIANCE_SECONDS)
        frame.group_by("dept").agg(pl.len().alias("events"), premature.sum().alias("premature")).collect()
        return (time.perf_counter() - started) * 1000

    return query


def measure(size: str, work: Path | None = None) -> dict[str, Any]:
    cfg = SIZES[size]
    base = work or WORK
    base.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="partitions-", dir=base))
    try:
        root = scratch / "lake"
        total = build(root, cfg["rows_per_day"])
        dt = DeltaTable(str(root))
        day = (START + timedelta(days=14)).date()
        runs = cfg["runs"]
        out: dict[str, Any] = {"rows": total, "files": len(dt.file_uris())}
        out["day_files"] = len(dt.file_uris(file_pruning_predicate=[(partitions.COLUMN, "=", day.isoformat())]))
        for engine, make in (("duckdb", _duckdb), ("polars", None)):
            for pruned in (True, False):
                func = make(dt, day, pruned=pruned) if make else _polars(str(root), day, pruned=pruned)
                out[f"{engine}-{'pruned' if pruned else 'full'}"] = repeat(func, runs)
        return out
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def run(size: str = "full", work: Path | None = None) -> list[Row]:
    """Measure every figure; rows are ``figure, value, unit, reference, reference_value, ratio, target, ok``."""
    m = measure(size, work)
    lake = f"{m['rows']:,} events over {DAYS} days in {m['files']} files"
    rows: list[Row] = []
    for engine, how in (
        ("duckdb", "DuckDB over the day's partition (files by partitionValues)"),
        ("polars", "Polars scan_delta filtered on date"),
    ):
        pruned, full = m[f"{engine}-pruned"], m[f"{engine}-full"]
        ratio = pruned["value"] / full["value"]
        rows.append(
            {
                "figure": f"one-day query, {how} ({m['day_files']} files; lake of {lake})",
                **pruned,
                "unit": "ms",
                "reference": "the same query without the partition filter (the day as a timestamp predicate)",
                "reference_value": full["value"],
                "ratio": ratio,
                "target": "faster than without the partition filter",
                "ok": ratio < TARGET_SHARE,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_partitions", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=tuple(SIZES), default="full")
    args = parser.parse_args(argv)
    for r in run(args.size):
        print(
            f"{r['figure']:<110}{r['value']:>10,.1f} ms  (without: {r['reference_value']:,.1f} ms, {r['ratio']:.2f}x)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
