"""Object-storage benchmark: the lake on a local S3 endpoint beside the same lake on the local disk, one run.

The S3 endpoint is moto's server (:mod:`processes.local_s3`, as ``make run LAKE=s3`` starts it) in a
process of its own on a loopback port: it speaks the S3 API, so every request the lake makes is real, but
it is a Python server on this machine, not S3. Its figures show what the lake's object-storage path costs
here (a PUT per file, commits as PUTs, ranged GETs through pyarrow's S3 file system), not S3's own
throughput or latency.

* **ingestion records/s, Arrow transport**: the real service and pipeline (firehose,
  ``EVENTS_PER_SECOND=0``, compaction off), timed from the first to the last commit, into an ``s3://`` lake
  and, alternating, into a local one. Reference: the local lake.
* **compaction rows/s**: one compaction (:meth:`lake.compaction.Compactor.compact`) of the files each
  ingestion run just landed. Reference: the local lake.
* **dashboard refresh**: a new engine (:class:`analytics.engine.LakeAnalytics`) on the compacted lake,
  its first full refresh (every query of the page and the lake's health; each file read once) and the
  median of five more with the lake unchanged. Reference: the local lake.
* **requests per hour at the default rate**: a live pipeline at the default 200 events/s and 1 s flush
  into an ``s3://`` lake (moto in-process, where every request is logged) for a while, a warm compactor's
  cycle with nothing due (the sweep, every ``COMPACTION_SWEEP_SECONDS``) and its lease's renewals:
  requests per flush and per sweep, by kind (PUT, GET, HEAD, LIST), scaled to an hour. The dashboard's
  requests come on top: one LIST and a GET per new log entry per refresh, and each new file read once.

``python -m benchmarks.bench_s3 [--size quick|full]`` prints a table; :func:`run` returns the rows.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

from analytics.engine import LakeAnalytics
from analytics.filters import ALL
from benchmarks.bench_queries import refresh
from benchmarks.suite import summarize, timed
from lake.compaction import Compactor
from lake.lease import DEFAULT_TTL_S, RENEW_FRACTION
from lake.location import open_storage
from lake.writer import Commit
from processes.local_s3 import BUCKET, environment, local_s3
from processes.pipeline import RunOptions
from processes.pipeline import run as run_pipeline
from testkit.processes import free_port, running_service
from testkit.s3 import Request, moto_s3
from utils.config import Settings, load_settings

HERE = Path(__file__).resolve().parent
WORK = HERE / ".work"
SIZES: dict[str, dict[str, Any]] = {
    "quick": {"records": 300_000, "runs": 1, "live_s": 5.0},
    "full": {"records": 4_000_000, "runs": 2, "live_s": 30.0},
}
WARM_RUNS = 5
Row = dict[str, Any]


def _settings(lake: str, port: int, **overrides: object) -> Settings:
    env = {
        "DATA_LAKE_PATH": lake,
        "EMPLOYEE_BADGE_LOGS_URL": f"http://127.0.0.1:{port}/employee-badge-logs/",
        "API_PORT": str(port),
        "LOG_LEVEL": "WARNING",
        **{k.upper(): str(v) for k, v in overrides.items()},
    }
    return load_settings(env, env_file=None)


def ingest_then_compact(lake: str, env: dict[str, str], records: int) -> tuple[float, float, float, float]:
    """For one firehose run into ``lake``, one compaction of it, then the dashboard over it: (ingestion
    records/s, compaction rows/s, the first dashboard refresh in ms, an unchanged refresh in ms)."""
    from source.client import BadgeLogClient

    with mock.patch.dict(os.environ, env):
        port = free_port()
        settings = _settings(lake, port, EVENTS_PER_SECOND=0)
        commits: list[Commit] = []
        with running_service(settings.as_env(), port), BadgeLogClient(settings, prefer_arrow=True) as client:
            run_pipeline(
                settings, RunOptions(max_records=records, compaction=False), source=client, on_commit=commits.append
            )
        first, last = commits[0], commits[-1]
        ingest = (sum(c.records for c in commits) - first.records) / max(last.committed_at - first.committed_at, 1e-9)
        storage = open_storage(lake)
        files = len(storage.list_tree("landing"))
        compaction = settings.replace(compaction_min_files=max(2, files), compaction_grace_seconds=3600)
        began = time.perf_counter()
        metrics = Compactor(storage, compaction).compact()
        seconds = time.perf_counter() - began
        assert metrics is not None and metrics.rows == records
        engine = LakeAnalytics(open_storage(lake))  # a dashboard started on the compacted lake
        cold = timed(lambda: refresh(engine, settings, ALL))
        warm = statistics.median(timed(lambda: refresh(engine, settings, ALL)) for _ in range(WARM_RUNS))
        return ingest, metrics.rows / seconds, cold * 1000, warm * 1000


def _kind(request: Request) -> str:
    """A request's kind for the bill: LIST (a GET with ``list-type``), else its method."""
    return "LIST" if request.method == "GET" and "list-type" in request.query else request.method


def requests_per_hour(seconds: float) -> dict[str, float]:
    """Requests by kind per hour at the default rate, in the steady state: the pipeline's flushes (counted
    after its first commit), the compactor's sweeps (a warm compactor's cycle with nothing due) and the
    renewals of its lease (one PUT every ``DEFAULT_TTL_S * RENEW_FRACTION`` seconds)."""
    with moto_s3() as lake, mock.patch.dict(os.environ, lake.env):
        port = free_port()
        settings = _settings(lake.url, port)  # the defaults: 200 events/s, 1 s flush, sweep every 10 s
        commits: list[Commit] = []

        def counted(commit: Commit) -> None:
            commits.append(commit)
            if len(commits) == 1:
                lake.requests.clear()  # from here on: the steady state (start-up requests not counted)

        with running_service(settings.as_env(), port):
            run_pipeline(settings, RunOptions(duration=seconds, compaction=False), on_commit=counted)
        flushes = Counter(_kind(r) for r in lake.requests.entries())
        compactor = Compactor(open_storage(lake.url), settings.replace(compaction_min_files=10_000))
        compactor.run_cycle()  # the first cycle: start-up reads
        lake.requests.clear()
        compactor.run_cycle()  # a sweep with nothing due
        sweep = Counter(_kind(r) for r in lake.requests.entries())
    flushes_per_hour = 3600 / settings.flush_interval_seconds
    sweeps_per_hour = 3600 / settings.compaction_sweep_seconds
    hourly: dict[str, float] = {}
    for kind in set(flushes) | set(sweep) | {"PUT"}:
        per_flush = flushes.get(kind, 0) / max(len(commits) - 1, 1)
        hourly[kind] = per_flush * flushes_per_hour + sweep.get(kind, 0) * sweeps_per_hour
    hourly["PUT"] += 3600 / (DEFAULT_TTL_S * RENEW_FRACTION)
    return hourly


@contextlib.contextmanager
def _local_lake() -> Iterator[str]:
    WORK.mkdir(exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="s3-local-", dir=WORK))
    try:
        yield str(root / "lake")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run(size: str = "full") -> list[Row]:
    """Measure every figure; rows are ``figure, value, unit, reference, reference_value, ratio, target, ok``."""
    cfg = SIZES[size]
    logging.getLogger().setLevel(logging.WARNING)
    s3: list[tuple[float, float, float, float]] = []
    local: list[tuple[float, float, float, float]] = []
    with local_s3(free_port()) as endpoint:
        env = environment(endpoint)
        for i in range(cfg["runs"]):
            s3.append(ingest_then_compact(f"s3://{BUCKET}/run-{i}", env, cfg["records"]))
            with _local_lake() as lake:
                local.append(ingest_then_compact(lake, {}, cfg["records"]))
    rows: list[Row] = []
    figures = (
        (0, "ingestion, Arrow transport", "records/s"),
        (1, "compaction", "rows/s"),
        (2, "dashboard's first refresh (every file read once)", "ms"),
        (3, "dashboard refresh, lake unchanged", "ms"),
    )
    for index, what, unit in figures:
        ours = summarize([r[index] for r in s3])
        ref = summarize([r[index] for r in local])
        rows.append(
            {
                "figure": f"{what}, lake on a local S3 endpoint (moto's server, {cfg['records']:,} records)",
                **ours,
                "unit": unit,
                "reference": "the same on the local disk",
                "reference_value": ref["value"],
                "ratio": ours["value"] / ref["value"],
                "target": "",
                "ok": None,
            }
        )
    hourly = requests_per_hour(cfg["live_s"])
    total = sum(hourly.values())
    detail = ", ".join(f"{m} {n:,.0f}" for m, n in sorted(hourly.items()))
    rows.append(
        {
            "figure": f"S3 requests per hour, pipeline and compactor at the defaults (200 events/s, 1 s flush, "
            f"sweep every 10 s): {detail}",
            "value": total,
            "unit": "requests/h",
            "reference": "",
            "reference_value": None,
            "ratio": None,
            "target": "",
            "ok": None,
        }
    )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_s3", description=__doc__)
    parser.add_argument("--size", choices=sorted(SIZES), default="quick")
    args = parser.parse_args(argv)
    for row in run(args.size):
        print(f"{row['figure']}: {row['value']:,.2f} {row['unit']} (reference {row['reference_value']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
