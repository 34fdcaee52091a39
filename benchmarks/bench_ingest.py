"""Ingestion benchmark: service (firehose) to landed Parquet, with Arrow and JSON transport, and freshness.

Each figure sits beside a reference measured in the same run:

* **records/s, Arrow and JSON**: the real service (``uvicorn api.main:app``, ``EVENTS_PER_SECOND=0``) in
  its own process on a loopback port, and the real pipeline loop (:func:`processes.pipeline.run` with the real
  client) in this one, timed from the first to the last committed record (each flush one commit to the
  lake's table). Reference: the *ceiling*, writing the same tables (generated in-process) straight to
  Parquet with pyarrow's defaults.
* **the table's cost**: the same Arrow runs beside runs, alternating with them, whose table commits do
  nothing (files staged, published and fsynced as before the lake was a Delta table); target >= 70 %.
* **freshness p50/p95** at a live rate (``EVENTS_PER_SECOND=2000``) with the default flush and poll
  intervals: for every record, the instant the commit adding its landing file to the table returned minus
  its event time (``badge_out_timestamp``). Reference: ``FLUSH_INTERVAL_SECONDS`` (target p95 <= interval + 1 s).
* **peak RSS under a refused-only firehose**: the pipeline (:func:`processes.pipeline.run`, default
  settings, compaction off) in a child process of its own, fed by an in-process source that answers at
  once and refuses every record (:class:`testkit.fake_source.FakeSource`, ``refuse=``), for a fixed time;
  its ``VmHWM``. Reference: the same child fed by the same source refusing nothing (the normal firehose),
  measured in the same run. Refused records count toward ``BUFFER_RECORDS`` like valid ones, so the two
  stay of one size (before issue 12 the refused-only pipeline grew without bound: 1.2 GB in 25 s).

``python -m benchmarks.bench_ingest [--size quick|full]`` prints a table; :func:`run` returns the rows.
Work happens in temporary lakes under ``benchmarks/.work/``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pyarrow.parquet as pq

from benchmarks.suite import summarize
from lake.writer import Commit
from processes.pipeline import RunOptions
from processes.pipeline import run as run_pipeline
from testkit.processes import free_port, running_service
from utils.config import Settings, load_settings

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = HERE / ".work"
BIN = Path(sys.executable).parent

SIZES: dict[str, dict[str, Any]] = {
    "quick": {"arrow": 1_000_000, "json": 300_000, "runs": 1, "fresh_s": 8.0, "ceiling": 1_000_000, "rss_s": 8.0},
    "full": {"arrow": 6_000_000, "json": 1_500_000, "runs": 3, "fresh_s": 30.0, "ceiling": 3_000_000, "rss_s": 25.0},
}
REFUSED_RSS_RATIO_TARGET = 1.5  # refused-only peak RSS at most this times the normal firehose's
ARROW_TARGET = 1_000_000
JSON_TARGET = 300_000
CEILING_SHARE_TARGET = 0.30
COMMIT_SHARE_TARGET = 0.70  # issue 11: the commit per file keeps at least 70 % of the rate without it
LIVE_RATE = 2000.0

Row = dict[str, Any]


def _settings(lake: Path, port: int, **overrides: object) -> Settings:
    env = {
        "DATA_LAKE_PATH": str(lake),
        "EMPLOYEE_BADGE_LOGS_URL": f"http://127.0.0.1:{port}/employee-badge-logs/",
        "API_PORT": str(port),
        "LOG_LEVEL": "WARNING",
    }
    env.update({k.upper(): str(v) for k, v in overrides.items()})
    return load_settings(env, env_file=None)


@contextlib.contextmanager
def _service(settings: Settings) -> Iterator[None]:
    """The generator service in its own process (one core), stopped on exit."""
    with running_service(settings.as_env(), settings.api_port):
        yield


@contextlib.contextmanager
def _lake() -> Iterator[Path]:
    WORK.mkdir(exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="ingest-", dir=WORK))
    try:
        yield root / "lake"
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def _without_table_commits() -> Iterator[None]:
    """For a reference figure only: the writer publishes its files, but its table commits do nothing.

    What a flush cost before the lake was a Delta table (stage, publish, fsync); the lake so written
    holds files no table adds, so it is thrown away with the run.
    """
    from lake.table import LakeTable

    def no_commit(*_args: object, **_kwargs: object) -> None:
        return None

    with mock.patch.object(LakeTable, "append", no_commit), mock.patch.object(LakeTable, "advance", no_commit):
        yield


def ingest_rate(records: int, *, arrow: bool, commit: bool = True) -> tuple[float, float]:
    """(records/s from the first to the last committed record, records per CPU-second of this process).

    One pipeline run against a firehose. The second figure counts every thread of the pipeline and
    is steadier than the first on a machine shared with other work. ``commit=False`` measures the
    same run without the table commits (:func:`_without_table_commits`).
    """
    from source.client import BadgeLogClient

    with _lake() as lake, contextlib.ExitStack() as stack:
        if not commit:
            stack.enter_context(_without_table_commits())
        port = free_port()
        settings = _settings(lake, port, EVENTS_PER_SECOND=0)
        commits: list[Commit] = []
        with _service(settings), BadgeLogClient(settings, prefer_arrow=arrow) as client:
            cpu = time.process_time()
            run_pipeline(
                settings, RunOptions(max_records=records, compaction=False), source=client, on_commit=commits.append
            )
            cpu = time.process_time() - cpu
        first, last = commits[0], commits[-1]
        after_first = sum(c.records for c in commits) - first.records
        return after_first / max(last.committed_at - first.committed_at, 1e-9), records / cpu


def ceiling_rate(records: int) -> float:
    """Records/s writing the same tables straight to Parquet with pyarrow, as landing files are written
    (``duration_s`` added, the lake's encodings; generation not timed, no fsync or publish)."""
    from api.generators import generate_table
    from lake.parquet import writer_options
    from utils.records import with_duration

    start = datetime(2025, 3, 3, tzinfo=UTC)
    elapsed = 0.0
    with _lake() as lake:
        lake.mkdir(parents=True)
        for i, lo in enumerate(range(0, records, 100_000)):
            table = generate_table(42, lo, min(100_000, records - lo), stream_start=start, events_per_second=0)
            began = time.perf_counter()
            lake_table = with_duration(table)  # what a landing file holds, with the lake's encodings
            pq.write_table(lake_table, lake / f"part-{i}.parquet", **writer_options(lake_table.schema))
            elapsed += time.perf_counter() - began
    return records / elapsed


def freshness(seconds: float) -> tuple[float, float, float]:
    """(p50, p95, flush interval): commit instant minus event time, over every record of a live run."""
    with _lake() as lake:
        port = free_port()
        settings = _settings(lake, port, EVENTS_PER_SECOND=LIVE_RATE)
        commits: list[Commit] = []
        with _service(settings):
            run_pipeline(settings, RunOptions(duration=seconds, compaction=False), on_commit=commits.append)
        lags = []
        for c in commits:
            for key in c.landing_keys:
                if not (lake / key).exists():
                    continue
                out = pq.read_table(lake / key, columns=["badge_out_timestamp"])["badge_out_timestamp"]
                lags.append(c.committed_at - out.cast("int64").to_numpy() / 1e6)
        lag = np.concatenate(lags)
        p50, p95 = np.percentile(lag, [50, 95])
        return float(p50), float(p95), settings.flush_interval_seconds


def _rss_child(lake: str, refuse_all: bool, seconds: float) -> None:
    """In a child process: run the pipeline on a firehose FakeSource for ``seconds``; print peak RSS and records."""
    from testkit.fake_source import FakeSource

    logging.getLogger().setLevel(logging.WARNING)
    settings = _settings(Path(lake), free_port())
    source = FakeSource(refuse=(lambda _: True) if refuse_all else None)
    commits: list[Commit] = []
    run_pipeline(settings, RunOptions(duration=seconds, compaction=False), source=source, on_commit=commits.append)
    status = Path("/proc/self/status").read_text()
    hwm_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
    print(json.dumps({"peak_mb": hwm_kb / 1024, "records": sum(c.records + c.refused for c in commits)}))


def pipeline_peak_rss(seconds: float, *, refuse_all: bool) -> tuple[float, int]:
    """(peak RSS in MB, records committed): the pipeline in a child process on an in-process firehose."""
    with _lake() as lake:
        code = f"from benchmarks.bench_ingest import _rss_child; _rss_child({str(lake)!r}, {refuse_all}, {seconds})"
        out = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True, timeout=seconds + 120
        )
        result = json.loads(out.stdout.strip().splitlines()[-1])
        return float(result["peak_mb"]), int(result["records"])


def run(size: str = "full") -> list[Row]:
    """Measure every figure; rows are ``figure, value, unit, reference, reference_value, ratio, target, ok``."""
    cfg = SIZES[size]
    logging.getLogger().setLevel(logging.WARNING)
    ceiling = summarize([ceiling_rate(cfg["ceiling"]) for _ in range(cfg["runs"])])
    rows: list[Row] = []
    # Side by side, alternating: the Arrow firehose with and without the table commit per file.
    with_commit: list[tuple[float, float]] = []
    without_commit: list[float] = []
    for _ in range(cfg["runs"]):
        with_commit.append(ingest_rate(cfg["arrow"], arrow=True))
        without_commit.append(ingest_rate(cfg["arrow"], arrow=True, commit=False)[0])
    for name, arrow, target in (("Arrow", True, ARROW_TARGET), ("JSON", False, JSON_TARGET)):
        measured = with_commit if arrow else [ingest_rate(cfg["json"], arrow=False) for _ in range(cfg["runs"])]
        rates = summarize([wall for wall, _ in measured])
        per_cpu = summarize([cpu for _, cpu in measured])
        share = rates["value"] / ceiling["value"]
        rows.append(
            {
                "figure": f"ingestion, service to landed Parquet, {name} transport",
                **rates,
                "unit": "records/s",
                "reference": "ceiling: the same tables straight to Parquet (pyarrow, the lake's encodings)",
                "reference_value": ceiling["value"],
                "ratio": share,
                "target": f">= {target:,} rec/s"
                + (f" and >= {CEILING_SHARE_TARGET:.0%} of the ceiling" if arrow else ""),
                "ok": rates["value"] >= target and (not arrow or share >= CEILING_SHARE_TARGET),
            }
        )
        if arrow:
            uncommitted = summarize(without_commit)
            rows.append(
                {
                    "figure": "ingestion, Arrow transport, with the Delta table commit per file",
                    **rates,
                    "unit": "records/s",
                    "reference": "the same runs without the table commits (files published only, as before the table)",
                    "reference_value": uncommitted["value"],
                    "ratio": rates["value"] / uncommitted["value"],
                    "target": f">= {COMMIT_SHARE_TARGET:.0%} of the rate without commits",
                    "ok": rates["value"] >= COMMIT_SHARE_TARGET * uncommitted["value"],
                }
            )
        rows.append(
            {
                "figure": f"ingestion, {name} transport, records per CPU-second of the pipeline process",
                **per_cpu,
                "unit": "records/CPU-s",
                "reference": "ceiling (single-threaded, so per CPU-second too)",
                "reference_value": ceiling["value"],
                "ratio": per_cpu["value"] / ceiling["value"],
                "target": "",
                "ok": None,
            }
        )
    normal_mb, normal_n = pipeline_peak_rss(cfg["rss_s"], refuse_all=False)
    refused_mb, refused_n = pipeline_peak_rss(cfg["rss_s"], refuse_all=True)
    rows.append(
        {
            "figure": f"pipeline peak RSS, refused-only firehose ({cfg['rss_s']:.0f} s, {refused_n:,} refused)",
            "value": refused_mb,
            "unit": "MB",
            "reference": f"the normal firehose ({normal_n:,} records)",
            "reference_value": normal_mb,
            "ratio": refused_mb / normal_mb,
            "target": f"<= {REFUSED_RSS_RATIO_TARGET}x the normal firehose's",
            "ok": refused_mb <= REFUSED_RSS_RATIO_TARGET * normal_mb,
        }
    )
    p50, p95, interval = freshness(cfg["fresh_s"])
    for label, value, target_ok in (("p50", p50, None), ("p95", p95, p95 <= interval + 1.0)):
        rows.append(
            {
                "figure": f"freshness {label} at {LIVE_RATE:,.0f} events/s (event time to live set)",
                "value": value,
                "unit": "s",
                "reference": "FLUSH_INTERVAL_SECONDS",
                "reference_value": interval,
                "ratio": value / interval,
                "target": "<= interval + 1 s" if target_ok is not None else "",
                "ok": target_ok,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_ingest", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=tuple(SIZES), default="full")
    args = parser.parse_args(argv)
    rows = run(args.size)
    print(f"{'figure':<76}{'value (min-max)':>36}  {'unit':<14}{'reference':>14}{'ratio':>7}  target: met")
    for r in rows:
        spread = f" ({r['min']:,.2f}-{r['max']:,.2f})" if "min" in r else ""
        value = f"{r['value']:,.2f}{spread}"
        met = "-" if r["ok"] is None else ("yes" if r["ok"] else "NO")
        print(
            f"{r['figure']:<76}{value:>36}  {r['unit']:<14}{r['reference_value']:>14,.2f}"
            f"{r['ratio']:>7.2f}  {r['target'] or '-'}: {met}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
