"""Scale benchmark (``make bench-scale``): the whole platform from an empty lake to N events, at several N.

Not part of ``make bench`` (a billion events takes a while and ~11 GB of disk). For each size N, in an
empty lake under a work directory (``--work``, default ``benchmarks/.work/``, so on the repository's disk),
the real processes run as a user runs them, each in its own process with the same settings (the defaults
unless ``--set`` says otherwise, ``EVENTS_PER_SECOND=0``: a firehose):

* the service, ``uvicorn api.main:app`` on a free 127.0.0.1 port;
* the pipeline, ``python pipeline.py --no-compaction --max-records N``;
* the compactor, ``python compaction_monitoring.py`` (``make compactor``), started as soon as the pipeline
  has created the table, as the pipeline starts its own child compactor (the same program, run apart here
  only so that it outlives the pipeline and can finish the backlog).

While they run, the table's log (``_delta_log/*.json``, the commit point of the lake) is followed entry by
entry, so every commit is seen: the pipeline's flushes, the compactor's commits and, after each, the number
of landing files in the table (the *landing backlog*); a sample (position, backlog) is kept every second.
Once the pipeline has committed N events and exited, the compactor goes on until the table holds fewer
than ``COMPACTION_MIN_FILES`` landing files (nothing is due any more); then every process is stopped
(SIGTERM) and the unchanged lake is read:

* **ingestion events/s**: flushed events after the first flush over the time from the first to the last
  flush commit (the commits' own timestamps); also over the pipeline process's life (start-up included);
* **compaction rows/s**: rows over seconds summed over every compaction the compactor logged
  (:meth:`lake.compaction.metrics.CompactionMetrics.summary`); it keeps up when this is at least the
  ingestion rate;
* **landing backlog**: the compactions committed while ingesting; the most landing files the table held
  after any commit while ingesting, and the most in the last half of the ingestion over the most in the
  first half (about 1 when bounded, growing when the compactor falls behind; above 1 whenever the whole
  ingestion is shorter than the watcher's longest wait plus one compaction, as at 20M); the catch-up
  time from the last flush to the commit that left fewer than ``COMPACTION_MIN_FILES`` landing files;
* **lake size**: the table's files (from the log) and the lake directory on disk (``du``: with the log
  and the replaced files still awaiting the clean-up after ``COMPACTION_GRACE_SECONDS``);
* **dashboard**, in a fresh Python process (its ``VmHWM`` is its peak RSS): a new
  :class:`analytics.engine.LakeAnalytics` on the lake, its first (cold) full refresh
  (:func:`benchmarks.bench_queries.refresh`: every query of the page and the lake's health), then the
  median of ``--warm-runs`` refreshes on the unchanged lake. The files were just written, so the page
  cache is warm: "cold" is the engine's state, not the disk's. Streamlit's own memory is not counted;
* **``python -m lake stats``** and **``python -m lake verify``** (as ``make stats`` / ``make verify``
  run them): wall time and peak RSS (``os.wait4``), and verify's exit status;
* the pipeline's and the compactor's peak RSS (``os.wait4`` when they exit).

Targets are judged at the largest size: cold refresh <= 2 s, warm refresh <= 150 ms, dashboard peak RSS
<= 1 GB, verify's peak RSS <= 1 GB and at most twice the smallest size's, the compactor keeping up.
The report (``benchmarks/results-scale.md`` and ``.json``) has a column per size, each value with its
ratio to the smallest size's. One run per size; on a small shared machine the timings are noisy.

``python -m benchmarks.bench_scale --scales 20M,200M,1B [--work DIR] [--keep] [--set KEY=VALUE]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.suite import fmt, machine
from testkit.processes import free_port, running_service
from utils.config import Settings, load_settings
from utils.memory import with_preferred_pool

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = HERE / ".work"
PYTHON = sys.executable
DEFAULT_SCALES = "20M,200M,1B"
WARM_RUNS = 5
POLL_SECONDS = 0.25  # how often the log is followed and the processes looked at
SAMPLE_SECONDS = 1.0  # one (position, backlog) sample kept this often
PROGRESS_SECONDS = 10.0

COLD_TARGET_MS = 2_000.0
WARM_TARGET_MS = 150.0
DASHBOARD_RSS_TARGET_MB = 1_024.0
VERIFY_RSS_TARGET_MB = 1_024.0
VERIFY_RSS_GROWTH_TARGET = 2.0  # verify's peak RSS at the largest size at most this times the smallest's
BACKLOG_GROWTH_TARGET = 1.5  # most landing files in the last half of the ingestion / in the first half

_SUFFIXES = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9}
_SCALE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMbBgG]?)\s*$")
# The compactor's line per compaction (lake/compaction/metrics.py, CompactionMetrics.summary).
_COMPACTION_LINE = re.compile(r"compacted (\d+) files .*?-> (\d+) file\(s\): ([\d,]+) rows, .*?, ([\d.]+) s \(")
# Settings the benchmark decides: the lake, the service's address, the firehose, and INFO logs (parsed).
FIXED = ("DATA_LAKE_PATH", "EMPLOYEE_BADGE_LOGS_URL", "API_PORT", "EVENTS_PER_SECOND", "LOG_LEVEL")
SHOWN_SETTINGS = (
    "BATCH_SIZE",
    "BUFFER_RECORDS",
    "FLUSH_INTERVAL_SECONDS",
    "COMPACTION_MIN_FILES",
    "COMPACTION_TARGET_MIN_MB",
    "COMPACTION_TARGET_MAX_MB",
    "COMPACTION_GRACE_SECONDS",
    "COMPACTION_SWEEP_SECONDS",
    "COMPACTION_DEBOUNCE_SECONDS",
)

Row = dict[str, Any]
Progress = Callable[[str], None]


# -- sizes --------------------------------------------------------------------------------------------------
def parse_scale(text: str) -> int:
    """Events in a size such as ``20M``, ``200k``, ``1B`` (= ``1G``), ``1.5M`` or ``5000``."""
    match = _SCALE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a size such as 200k, 20M or 1B")
    events = round(float(match.group(1)) * _SUFFIXES[match.group(2).upper()])
    if events < 1:
        raise ValueError(f"{text!r}: at least one event")
    return events


def scale_label(events: int) -> str:
    """``20_000_000`` -> ``20M``, ``1_000_000_000`` -> ``1B``, ``200_000`` -> ``200k``."""
    for suffix, unit in (("B", 10**9), ("M", 10**6), ("k", 10**3)):
        if events >= unit:
            return f"{events / unit:g}{suffix}"
    return str(events)


# -- child processes --------------------------------------------------------------------------------------
class Proc:
    """A child process in a session of its own, reaped with :func:`os.wait4` for its peak RSS and wall time.

    Its output goes to ``log`` (stdout to ``stdout`` instead, if given). Always stopped by :meth:`stop`.
    """

    def __init__(self, args: Sequence[str], env: Mapping[str, str], log: Path, stdout: Path | None = None) -> None:
        self.args = list(args)
        self.log = log
        with log.open("ab") as err, stdout.open("wb") if stdout else contextlib.nullcontext(err) as out:
            self.popen = subprocess.Popen(
                self.args, env=dict(env), cwd=ROOT, stdout=out, stderr=err, start_new_session=True
            )
        self.started = time.perf_counter()
        self.ended: float | None = None
        self.status: int | None = None
        self.peak_mb: float | None = None

    def poll(self) -> int | None:
        """The exit status once the process has ended (reaping it), else None."""
        if self.status is None:
            pid, status, usage = os.wait4(self.popen.pid, os.WNOHANG)
            if pid:
                self.ended = time.perf_counter()
                self.status = os.waitstatus_to_exitcode(status)
                self.popen.returncode = self.status  # reaped here: Popen must not wait for it again
                self.peak_mb = usage.ru_maxrss / 1024  # kB on Linux
        return self.status

    def wait(self, timeout: float, interval: float = 0.01) -> int:
        deadline = time.monotonic() + timeout
        while (status := self.poll()) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{' '.join(self.args)} did not end within {timeout:.0f} s{self.tail()}")
            time.sleep(interval)
        return status

    @property
    def wall(self) -> float:
        assert self.ended is not None
        return self.ended - self.started

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM the process's group, wait up to ``timeout``, then SIGKILL it; the exit status."""
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
            if self.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, sig)
            with contextlib.suppress(TimeoutError):
                self.wait(wait, interval=0.05)
        return self.status

    def tail(self, chars: int = 3_000) -> str:
        text = self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""
        return f"; its log ({self.log}) ends:\n{text}" if text else ""


# -- following the table's log ----------------------------------------------------------------------------
@dataclass
class LogFollower:
    """Reads the events table's log entries in version order as they appear, and keeps what they say.

    Every commit of the lake is a JSON entry ``_delta_log/<version>.json`` (docs/lake-protocol.md); read
    within a second of being written, none is missed (the log keeps entries 15 minutes). Tracks the
    table's files (path -> bytes, rows), so the landing files in the table after each commit.
    """

    lake: Path
    version: int = -1  # the last entry read
    files: dict[str, tuple[int, int]] = field(default_factory=dict)  # live path -> (bytes, rows)
    position: int | None = None  # the pipeline's committed event id (its txn)
    flushes: int = 0
    flushed_rows: int = 0
    first_flush: tuple[float, int] | None = None  # (commit time s, rows it added)
    last_flush: float | None = None
    compactions: list[float] = field(default_factory=list)  # commit time of each compaction
    compacted_rows: int = 0  # rows the compaction commits added
    # (commit time, landing files after it) for every commit after the first flush
    backlog: list[tuple[float, int]] = field(default_factory=list)

    @property
    def landing(self) -> int:
        return sum(1 for path in self.files if path.startswith("landing/"))

    def poll(self) -> int:
        """Read every entry written since the last call; how many."""
        read = 0
        log_dir = self.lake / "_delta_log"
        while True:
            entry = log_dir / f"{self.version + 1:020d}.json"
            try:
                text = entry.read_text()
            except FileNotFoundError:
                if self._checkpointed() > self.version and not entry.exists():  # a checkpoint follows its entry
                    raise RuntimeError(f"{entry} vanished before it was read: the log was cleaned meanwhile") from None
                return read
            self._apply([json.loads(line) for line in text.splitlines() if line.strip()])
            self.version += 1
            read += 1

    def _checkpointed(self) -> int:
        """The version of the log's newest checkpoint (``_last_checkpoint``), -1 if none."""
        try:
            return int(json.loads((self.lake / "_delta_log" / "_last_checkpoint").read_text())["version"])
        except (FileNotFoundError, ValueError, KeyError):
            return -1

    def _apply(self, actions: list[dict[str, Any]]) -> None:
        info: dict[str, Any] = {}
        added_rows = 0
        for action in actions:
            if "commitInfo" in action:
                info = action["commitInfo"]
            elif "add" in action:
                add = action["add"]
                rows = int(json.loads(add["stats"])["numRecords"]) if add.get("stats") else 0
                self.files[add["path"]] = (int(add["size"]), rows)
                added_rows += rows
            elif "remove" in action:
                self.files.pop(action["remove"]["path"], None)
            elif "txn" in action and action["txn"].get("appId") == "badge-pipeline":
                self.position = int(action["txn"]["version"])
        at = float(info.get("timestamp", time.time() * 1000)) / 1000
        operation = info.get("badge.operation")
        if operation == "flush":
            self.flushes += 1
            self.flushed_rows += added_rows
            if self.first_flush is None:
                self.first_flush = (at, added_rows)
            self.last_flush = at
        elif operation == "compaction":
            self.compactions.append(at)
            self.compacted_rows += added_rows
        if self.first_flush is not None:
            self.backlog.append((at, self.landing))

    def table_bytes(self) -> int:
        return sum(size for size, _ in self.files.values())

    def table_rows(self) -> int:
        return sum(rows for _, rows in self.files.values())


def compactions_logged(text: str) -> tuple[int, int, float]:
    """(compactions, rows, seconds) from the compactor's log lines (CompactionMetrics.summary)."""
    found = [(int(m.group(3).replace(",", "")), float(m.group(4))) for m in _COMPACTION_LINE.finditer(text)]
    return len(found), sum(r for r, _ in found), sum(s for _, s in found)


def backlog_halves(backlog: Sequence[tuple[float, int]], start: float, end: float) -> tuple[int, int]:
    """The most landing files after a commit in the first and in the last half of [start, end]."""
    middle = (start + end) / 2
    first = [n for at, n in backlog if start <= at <= middle]
    last = [n for at, n in backlog if middle < at <= end]
    return max(first, default=0), max(last, default=0)


def catch_up_seconds(backlog: Sequence[tuple[float, int]], last_flush: float, min_files: int) -> float:
    """Seconds from the last flush to the first commit leaving fewer than ``min_files`` landing files."""
    for at, n in backlog:
        if at >= last_flush and n < min_files:
            return max(at - last_flush, 0.0)
    raise ValueError("the backlog never fell below COMPACTION_MIN_FILES")


def disk_bytes(root: Path) -> int:
    """Bytes ``root`` takes on disk (allocated blocks, as ``du``)."""
    return sum(p.lstat().st_blocks * 512 for p in root.rglob("*") if not p.is_dir())


# -- the dashboard, in a fresh process --------------------------------------------------------------------
def _dashboard_child(lake: str, warm_runs: int) -> None:
    """In a fresh process: a new engine on ``lake``, its cold refresh and ``warm_runs`` more; prints JSON."""
    from analytics.engine import LakeAnalytics
    from analytics.filters import ALL
    from benchmarks.bench_queries import refresh
    from lake.location import open_storage

    settings = load_settings({"DATA_LAKE_PATH": lake}, env_file=None)
    engine = LakeAnalytics(open_storage(lake))

    def once() -> float:
        began = time.perf_counter()
        refresh(engine, settings, ALL)
        return (time.perf_counter() - began) * 1000

    cold = once()
    warm = [once() for _ in range(warm_runs)]
    engine.close()
    status = Path("/proc/self/status").read_text()
    hwm_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
    print(json.dumps({"cold_ms": cold, "warm_ms": warm, "peak_mb": hwm_kb / 1024}))


def dashboard(lake: Path, env: Mapping[str, str], log: Path, warm_runs: int, timeout: float) -> dict[str, Any]:
    out = log.with_suffix(".json")
    code = f"from benchmarks.bench_scale import _dashboard_child; _dashboard_child({str(lake)!r}, {warm_runs})"
    # as analytics_app.py starts the dashboard: with Arrow's jemalloc pool (utils/memory.py)
    proc = Proc([PYTHON, "-c", code], with_preferred_pool(env), log, stdout=out)
    try:
        if proc.wait(timeout) != 0:
            raise RuntimeError(f"the dashboard process exited with {proc.status}{proc.tail()}")
    finally:
        proc.stop()
    result: dict[str, Any] = json.loads(out.read_text().strip().splitlines()[-1])
    return result


# -- one size ---------------------------------------------------------------------------------------------
def scale_settings(lake: Path, port: int, overrides: Mapping[str, str]) -> Settings:
    env = {
        **overrides,
        "DATA_LAKE_PATH": str(lake),
        "EMPLOYEE_BADGE_LOGS_URL": f"http://127.0.0.1:{port}/employee-badge-logs/",
        "API_PORT": str(port),
        "EVENTS_PER_SECOND": "0",
        "LOG_LEVEL": "INFO",
    }
    return load_settings(env, env_file=None)


@dataclass
class Sampler:
    """A (seconds since start, position, landing files) sample every SAMPLE_SECONDS, a progress line now and then."""

    follower: LogFollower
    events: int
    progress: Progress
    started: float = field(default_factory=time.perf_counter)
    samples: list[tuple[float, int, int]] = field(default_factory=list)
    _next_sample: float = 0.0
    _next_progress: float = PROGRESS_SECONDS

    def tick(self, phase: str) -> None:
        self.follower.poll()
        now = time.perf_counter() - self.started
        position = -1 if self.follower.position is None else self.follower.position
        if now >= self._next_sample:
            self.samples.append((round(now, 2), position, self.follower.landing))
            self._next_sample += SAMPLE_SECONDS
        if now >= self._next_progress:
            self.progress(
                f"  {phase}: {now:,.0f} s, {position + 1:,} of {self.events:,} events committed, "
                f"{self.follower.landing} landing files in the table, {len(self.follower.compactions)} compactions"
            )
            self._next_progress += PROGRESS_SECONDS


def run_size(
    events: int,
    work: Path,
    overrides: Mapping[str, str],
    *,
    warm_runs: int = WARM_RUNS,
    keep: bool = False,
    progress: Progress = lambda _: None,
) -> dict[str, Any]:
    """Every figure of one size, from an empty lake under ``work`` (deleted afterwards unless ``keep``)."""
    work.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix=f"scale-{scale_label(events)}-", dir=work))
    lake = root / "lake"
    port = free_port()
    settings = scale_settings(lake, port, overrides)
    env = {**os.environ, **settings.as_env(), "PYTHONUNBUFFERED": "1"}
    min_files = settings.compaction_min_files
    follower = LogFollower(lake)
    sampler = Sampler(follower, events, progress)
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(running_service(settings.as_env(), port, log_path=root / "service.log"))
            pipeline = Proc(
                [PYTHON, "pipeline.py", "--no-compaction", "--max-records", str(events)], env, root / "pipeline.log"
            )
            stack.callback(pipeline.stop)
            sampler.started = pipeline.started
            # The compactor once the table exists, as the pipeline starts its own child (after opening the table).
            deadline = time.monotonic() + 120
            while follower.poll() == 0 and follower.version < 0:
                if pipeline.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the pipeline created no table{pipeline.tail()}")
                time.sleep(0.02)
            compactor = Proc([PYTHON, "compaction_monitoring.py"], env, root / "compactor.log")
            stack.callback(compactor.stop)
            deadline = time.monotonic() + 300 + events / 100_000
            while pipeline.poll() is None:
                if compactor.poll() is not None:
                    raise RuntimeError(f"the compactor exited with {compactor.status}{compactor.tail()}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the pipeline did not commit {events:,} events in time{pipeline.tail()}")
                sampler.tick("ingesting")
                time.sleep(POLL_SECONDS)
            if pipeline.status != 0:
                raise RuntimeError(f"the pipeline exited with {pipeline.status}{pipeline.tail()}")
            sampler.tick("ingested")
            if follower.position != events - 1:
                raise RuntimeError(f"the pipeline exited at position {follower.position}, not {events - 1}")
            progress(f"  ingested {events:,} events in {pipeline.wall:,.1f} s; the compactor catches up ...")
            deadline = time.monotonic() + 300 + events / 1_000_000
            while follower.landing >= min_files:
                if compactor.poll() is not None:
                    raise RuntimeError(f"the compactor exited with {compactor.status}{compactor.tail()}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{follower.landing} landing files still in the table{compactor.tail()}")
                time.sleep(POLL_SECONDS)
                sampler.tick("compacting")
            drained = time.perf_counter() - sampler.started
            if compactor.stop() != 0:
                raise RuntimeError(f"the compactor stopped with {compactor.status}{compactor.tail()}")
        # Every process stopped: the lake is unchanged from here on.
        assert follower.first_flush is not None and follower.last_flush is not None
        first_at, first_rows = follower.first_flush
        ingest_window = follower.last_flush - first_at
        start, end = first_at, follower.last_flush
        in_ingestion = [n for at, n in follower.backlog if at <= end]
        first_half, last_half = backlog_halves(follower.backlog, start, end)
        logged, logged_rows, logged_seconds = compactions_logged(compactor.log.read_text(errors="replace"))
        table_rows = follower.table_rows()
        if table_rows != events:
            raise RuntimeError(f"the table holds {table_rows:,} rows, not {events:,}")
        progress("  dashboard, stats, verify ...")
        dash = dashboard(lake, env, root / "dashboard.log", warm_runs, timeout=600 + events / 1_000_000)
        read_timeout = 600 + events / 200_000
        stats = Proc([PYTHON, "-m", "lake", "stats"], env, root / "stats.log")
        try:
            stats_status = stats.wait(read_timeout)
        finally:
            stats.stop()
        if stats_status != 0:
            raise RuntimeError(f"python -m lake stats exited with {stats_status}{stats.tail()}")
        verify = Proc([PYTHON, "-m", "lake", "verify"], env, root / "verify.log")
        try:
            verify.wait(read_timeout)
        finally:
            verify.stop()
        result: dict[str, Any] = {
            "events": events,
            "label": scale_label(events),
            "ingest_rate": (follower.flushed_rows - first_rows) / max(ingest_window, 1e-3),
            "ingest_rate_with_startup": events / pipeline.wall,
            "pipeline_wall_s": pipeline.wall,
            "flushes": follower.flushes,
            "compactions_committed": len(follower.compactions),
            "compactions_while_ingesting": sum(1 for at in follower.compactions if at <= end),
            "compacted_rows_committed": follower.compacted_rows,
            "compactions_logged": logged,
            "compaction_rate": logged_rows / logged_seconds if logged_seconds > 0 else None,
            "compaction_busy_s": logged_seconds,
            "backlog_max": max(in_ingestion, default=0),
            "backlog_first_half_max": first_half,
            "backlog_last_half_max": last_half,
            "backlog_growth": last_half / max(first_half, 1),
            "catch_up_s": catch_up_seconds(follower.backlog, end, min_files),
            "drained_after_s": drained,
            "table_files": len(follower.files),
            "landing_files_end": follower.landing,
            "landing_rows_end": sum(rows for path, (_, rows) in follower.files.items() if path.startswith("landing/")),
            "table_mb": follower.table_bytes() / 1e6,
            "table_bytes_per_event": follower.table_bytes() / events,
            "disk_mb": disk_bytes(lake) / 1e6,
            "cold_refresh_ms": dash["cold_ms"],
            "warm_refresh_ms": statistics.median(dash["warm_ms"]),
            "warm_refresh_min_ms": min(dash["warm_ms"]),
            "warm_refresh_max_ms": max(dash["warm_ms"]),
            "dashboard_peak_mb": dash["peak_mb"],
            "stats_s": stats.wall,
            "stats_peak_mb": stats.peak_mb,
            "verify_s": verify.wall,
            "verify_peak_mb": verify.peak_mb,
            "verify_status": verify.status,
            "pipeline_peak_mb": pipeline.peak_mb,
            "compactor_peak_mb": compactor.peak_mb,
            "samples": sampler.samples,
        }
        if verify.status != 0:
            progress(f"  python -m lake verify exited with {verify.status}{verify.tail()}")
        return result
    finally:
        if keep:
            progress(f"  kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


# -- the report -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Figure:
    key: str
    figure: str
    unit: str
    target: str = ""
    judge: Callable[[list[dict[str, Any]]], bool] | None = None  # on every size's results, largest last
    spread: tuple[str, str] | None = None  # keys of the min and max


def _largest(key: str, limit: float) -> Callable[[list[dict[str, Any]]], bool]:
    return lambda runs: runs[-1][key] is not None and runs[-1][key] <= limit


def _keeps_up(runs: list[dict[str, Any]]) -> bool:
    rate, ingest = runs[-1]["compaction_rate"], float(runs[-1]["ingest_rate"])
    return rate is not None and float(rate) >= ingest


def _verify_bounded(runs: list[dict[str, Any]]) -> bool:
    peak, first = float(runs[-1]["verify_peak_mb"]), float(runs[0]["verify_peak_mb"])
    return peak <= VERIFY_RSS_TARGET_MB and peak <= VERIFY_RSS_GROWTH_TARGET * first


FIGURES: tuple[Figure, ...] = (
    Figure("ingest_rate", "ingestion, service to table (first to last flush commit)", "events/s"),
    Figure("ingest_rate_with_startup", "ingestion, over the pipeline process's life (start-up included)", "events/s"),
    Figure(
        "compaction_rate",
        "compaction (rows over seconds of every compaction, from the compactor's log)",
        "rows/s",
        ">= the ingestion rate (keeps up)",
        _keeps_up,
    ),
    Figure("compactions_while_ingesting", "compactions committed while ingesting (to the last flush)", "commits"),
    Figure("backlog_max", "landing backlog: most landing files in the table while ingesting", "files"),
    Figure(
        "backlog_growth",
        "landing backlog growth: most in the last half of the ingestion / most in the first half",
        "ratio",
        f"<= {BACKLOG_GROWTH_TARGET} (bounded)",
        _largest("backlog_growth", BACKLOG_GROWTH_TARGET),
    ),
    Figure("catch_up_s", "catch-up: last flush to fewer than COMPACTION_MIN_FILES landing files", "s"),
    Figure("table_files", "files in the table at the end", "files"),
    Figure("landing_files_end", "of them landing files (the cold dashboard aggregates these itself)", "files"),
    Figure("landing_rows_end", "rows in those landing files", "rows"),
    Figure("table_mb", "lake size: the table's files", "MB"),
    Figure("table_bytes_per_event", "lake size per event (the table's files)", "bytes"),
    Figure("disk_mb", "lake on disk (du: with the log and replaced files awaiting clean-up)", "MB"),
    Figure(
        "cold_refresh_ms",
        "dashboard: first (cold) refresh, a new engine in a fresh process",
        "ms",
        f"<= {COLD_TARGET_MS:,.0f} ms",
        _largest("cold_refresh_ms", COLD_TARGET_MS),
    ),
    Figure(
        "warm_refresh_ms",
        "dashboard: refresh, lake unchanged (median of --warm-runs, min-max)",
        "ms",
        f"<= {WARM_TARGET_MS:,.0f} ms",
        _largest("warm_refresh_ms", WARM_TARGET_MS),
        ("warm_refresh_min_ms", "warm_refresh_max_ms"),
    ),
    Figure(
        "dashboard_peak_mb",
        "dashboard process peak RSS (engine, cold + warm refreshes)",
        "MB",
        f"<= {DASHBOARD_RSS_TARGET_MB:,.0f} MB",
        _largest("dashboard_peak_mb", DASHBOARD_RSS_TARGET_MB),
    ),
    Figure("stats_s", "python -m lake stats: wall time", "s"),
    Figure("stats_peak_mb", "python -m lake stats: peak RSS", "MB"),
    Figure("verify_s", "python -m lake verify: wall time", "s"),
    Figure(
        "verify_peak_mb",
        "python -m lake verify: peak RSS",
        "MB",
        f"<= {VERIFY_RSS_TARGET_MB:,.0f} MB and <= {VERIFY_RSS_GROWTH_TARGET:g}x the smallest size's (bounded)",
        _verify_bounded,
    ),
    Figure(
        "verify_status",
        "python -m lake verify: exit status",
        "status",
        "0 (the lake is whole)",
        lambda runs: all(r["verify_status"] == 0 for r in runs),
    ),
    Figure("pipeline_peak_mb", "pipeline process peak RSS", "MB"),
    Figure("compactor_peak_mb", "compactor process peak RSS", "MB"),
)


def build_rows(runs: list[dict[str, Any]]) -> list[Row]:
    """One row per figure: its value at each size (by label), the ratio largest / smallest, target, met."""
    rows: list[Row] = [
        {
            "figure": "events",
            "unit": "events",
            "values": {r["label"]: r["events"] for r in runs},
            "ratio": runs[-1]["events"] / runs[0]["events"],
            "target": "",
            "ok": None,
        }
    ]
    for f in FIGURES:
        values = {r["label"]: r[f.key] for r in runs}
        first, last = runs[0][f.key], runs[-1][f.key]
        row: Row = {
            "figure": f.figure,
            "key": f.key,
            "unit": f.unit,
            "values": values,
            "ratio": last / first if first and last is not None else None,
            "target": f.target,
            "ok": f.judge(runs) if f.judge else None,
        }
        if f.spread:
            row["spreads"] = {r["label"]: (r[f.spread[0]], r[f.spread[1]]) for r in runs}
        rows.append(row)
    return rows


def _cell(value: Any) -> str:
    """A table cell: integers whole, everything else as the suite formats it."""
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return fmt(value)


def render_markdown(
    rows: Sequence[Row], runs: Sequence[dict[str, Any]], info: dict[str, Any], command: str, settings: Mapping[str, str]
) -> str:
    libs = ", ".join(f"{k} {v}" for k, v in info["libraries"].items())
    labels = [r["label"] for r in runs]
    largest = labels[-1]
    shown = ", ".join(f"{k} {v}" for k, v in settings.items())
    lines = [
        f"Measured {info['date']} on {info['cpus']} CPUs, Python {info['python']} ({libs}).",
        f"Reproduce with `{command}`. One run per size, each from an empty lake: the service, the pipeline",
        "(firehose, `EVENTS_PER_SECOND=0`) and the compactor as separate processes until every event is committed",
        f"and the compactor has caught up, then the reads on the unchanged lake. Settings: {shown}.",
        f"After the first size each value is followed by its ratio to the {labels[0]} value (×); targets are judged",
        f"at {largest}. One run per size on a small machine shared with other work: the timings are noisy.",
        "",
        "| figure | unit | " + " | ".join(labels) + f" | target (at {largest}) | met |",
        "| --- | --- | " + " | ".join("---" for _ in labels) + " | --- | --- |",
    ]
    for r in rows:
        cells = []
        first = r["values"][labels[0]]
        for i, label in enumerate(labels):
            value = r["values"][label]
            cell = _cell(value)
            spread = r.get("spreads", {}).get(label)
            if spread is not None:
                cell += f" ({fmt(spread[0])}-{fmt(spread[1])})"
            if i > 0 and value is not None and first:
                cell += f" ×{fmt(value / first)}"
            cells.append(cell)
        lines.append(
            f"| {r['figure']} | {r['unit']} | " + " | ".join(cells) + f" | {r['target'] or '-'} | {fmt(r['ok'])} |"
        )
    return "\n".join(lines) + "\n"


# -- the command ------------------------------------------------------------------------------------------
def _setting(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    key = key.strip().upper()
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    if key in FIXED:
        raise argparse.ArgumentTypeError(f"{key} is set by the benchmark")
    return key, value.strip()


def _scales(text: str) -> list[int]:
    try:
        sizes = [parse_scale(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not sizes:
        raise argparse.ArgumentTypeError("no size given")
    return sorted(set(sizes))


@contextlib.contextmanager
def _timed(progress: Progress, what: str) -> Iterator[None]:
    began = time.perf_counter()
    yield
    progress(f"{what} done in {time.perf_counter() - began:,.0f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_scale", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--scales", type=_scales, default=_scales(DEFAULT_SCALES), help=f"events per run (default {DEFAULT_SCALES})"
    )
    parser.add_argument("--work", type=Path, default=WORK, help="where the lakes are made (default benchmarks/.work)")
    parser.add_argument("--keep", action="store_true", help="keep each lake and its processes' logs")
    parser.add_argument("--out", type=Path, default=HERE, help="where results-scale.md and .json go")
    parser.add_argument("--warm-runs", type=int, default=WARM_RUNS, help="refreshes after the cold one")
    parser.add_argument(
        "--set",
        type=_setting,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting for every process (repeatable; default: the defaults)",
    )
    args = parser.parse_args(argv)
    overrides = dict(args.set)
    work = args.work.resolve()

    def progress(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    runs: list[dict[str, Any]] = []
    for i, events in enumerate(args.scales, 1):
        progress(f"[{i}/{len(args.scales)}] {scale_label(events)} events ({events:,}) in {work} ...")
        with _timed(progress, f"[{i}/{len(args.scales)}] {scale_label(events)}"):
            runs.append(run_size(events, work, overrides, warm_runs=args.warm_runs, keep=args.keep, progress=progress))
    defaults = scale_settings(work / "lake", 8000, overrides).as_env()
    settings = {k: defaults[k] for k in SHOWN_SETTINGS}
    labels = ",".join(r["label"] for r in runs)
    command = f"make bench-scale SCALES={labels}"
    if overrides:
        command += " BENCH_SCALE_ARGS='" + " ".join(f"--set {k}={v}" for k, v in overrides.items()) + "'"
    rows = build_rows(runs)
    info = machine()
    markdown = render_markdown(rows, runs, info, command, settings)
    args.out.mkdir(parents=True, exist_ok=True)
    data = {"machine": info, "scales": [r["label"] for r in runs], "settings": settings, "rows": rows, "runs": runs}
    (args.out / "results-scale.json").write_text(json.dumps(data, indent=2))
    (args.out / "results-scale.md").write_text(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
