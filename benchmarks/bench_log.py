"""Log benchmark: commit latency and snapshot-load time stay flat as the lake's Delta log ages.

What the pipeline does at the default 1 s flush: one single-file append per second, each a commit
with the pipeline's ``txn`` (:meth:`lake.table.LakeTable.append`), and, every 100 appends
(``COMPACTION_MIN_FILES``), one compaction commit (:meth:`lake.table.LakeTable.replace`) that removes
those landing files and the open compacted file and adds their merge (tiering: a compacted file absorbs
500 compactions, about 100 MB at the default rate, before a new one starts). Each file holds 200 events.
Only the log is measured: the ``add`` actions name files that are never written (a commit never opens
its data files, and neither does loading a snapshot).

* **with log upkeep** (the lake's table, :data:`lake.table.LOG_PROPERTIES`): 400 appends measured
  early; then a day's files fast-forwarded (one commit of 100 files per compaction cycle, and the
  compaction: the same adds, removes and tombstones as a day of flushes, in fewer commits); then 1,000
  single-file appends, of which the last 400 are measured (the log then holds what 15 minutes keep).
* **reference, without log upkeep** (the same table created without LOG_PROPERTIES: delta-rs' defaults,
  30 days of log): every commit a single-file append, measured over its last 400 commits.

Log retention is a matter of time (delta-rs expires log entries by their modification time), and the
benchmark commits a hundred times faster than the pipeline. So every log entry's modification time is
set to the instant it would have been written at one commit per simulated second (re-stamped every
few commits), and the real retention of 15 minutes keeps what it keeps in the field. Snapshot-load time:
:func:`lake.table.read_snapshot` on a fresh handle (delta-rs opens the table cold; the OS cache is warm),
once after each of a phase's last ``CHECKPOINT_INTERVAL`` commits. A load replays the newest checkpoint and
every log entry after it, so its time climbs through each checkpoint cycle (measured here: about 11 ms just
after a checkpoint, 45 ms just before the next); only medians over a whole cycle compare like with like.

``python -m benchmarks.bench_log [--size quick|full]`` prints a table; :func:`run` returns the rows.
Work happens in temporary lakes under ``benchmarks/.work/``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final

from deltalake import DeltaTable, Schema
from deltalake.transaction import AddAction, RemoveAction

from benchmarks.suite import summarize
from lake import layout
from lake.filestats import STATS_COLUMNS, FileStats
from lake.identity import StreamIdentity
from lake.snapshot import DataFile
from lake.storage import FileInfo, LocalStorage
from lake.table import CHECKPOINT_INTERVAL, LOG_DIR, TABLE_NAME, LakeTable, read_snapshot
from utils.records import LAKE_SCHEMA

HERE = Path(__file__).resolve().parent
WORK = HERE / ".work"

# "commits": the pipeline's appends the upkept table sees (86,400 = a day at the default 1 s flush);
# "reference_commits": the table without upkeep, every one a real single-file commit. Its latency grows
# with its log (p50 ~20 ms at 500 commits, ~80 ms at 4,000 on a loaded 2-core machine), so a day of it
# would take hours: 5,000 shows the trend and keeps the full run within ~6 minutes.
SIZES: dict[str, dict[str, int]] = {
    "quick": {"commits": 2_000, "reference_commits": 1_000},
    "full": {"commits": 86_400, "reference_commits": 5_000},
}
EARLY: Final = 400  # commits measured at the start, and at the end of each table
STEADY: Final = 1_000  # single-file appends at the end: more than 15 simulated minutes, the log at its steady size
COMPACT_EVERY: Final = 100  # COMPACTION_MIN_FILES
TIER: Final = 500  # compactions one compacted file absorbs (~100 MB at 200 events/s) before a new one starts
EVENTS_PER_FILE: Final = 200  # a 1 s flush at the default 200 events/s
BYTES_PER_EVENT: Final = 10
RESTAMP_EVERY: Final = 10  # commits between re-stamps of the log's modification times
FLAT_TARGET: Final = 2.0  # late / early, with log upkeep
IDENTITY: Final = StreamIdentity(seed=42, events_per_second=200.0, stream_start="2025-03-03T00:00:00Z")
T0: Final = datetime(2025, 3, 3)
_VERSION = re.compile(r"^(\d{20})\.")

Row = dict[str, Any]


class SimulatedLake:
    """A table fed like the pipeline and the compactor feed it, on a simulated clock of one flush per second."""

    def __init__(self, root: Path, *, upkeep: bool, horizon: int) -> None:
        self.storage = LocalStorage(root)
        self.storage.ensure_layout()
        if upkeep:
            self.table = LakeTable.open_or_create(self.storage, IDENTITY)
        else:  # what delta-rs does by default: 30 days of log, nothing expires in this benchmark
            DeltaTable.create(
                str(root),
                Schema.from_arrow(LAKE_SCHEMA),
                mode="error",
                name=TABLE_NAME,
                configuration={"delta.dataSkippingStatsColumns": ",".join(STATS_COLUMNS), **IDENTITY.to_config()},
                raise_if_key_not_exists=False,
            )
            self.table = LakeTable.open(self.storage)
        self.upkeep = upkeep
        self.clock = 0  # simulated seconds since the stream began: one per flush
        self.epoch = time.time() - horizon  # wall-clock instant of simulated second 0
        self.stamps: dict[int, int] = {self.table.version: 0}  # log version -> simulated second it was written
        self.position: int | None = None
        self.landing: list[DataFile] = []
        self.open_compacted: DataFile | None = None
        self.absorbed = 0
        self.commits = 0

    @property
    def log_dir(self) -> Path:
        return self.storage.root / LOG_DIR

    def _file(self, zone: str, kind: str, lo: int, hi: int) -> tuple[DataFile, FileStats]:
        rows = hi - lo + 1
        first = T0 + timedelta(seconds=lo / EVENTS_PER_FILE)
        last = T0 + timedelta(seconds=hi / EVENTS_PER_FILE)
        info = FileInfo(f"{zone}/{layout.new_file_name(kind, lo, hi)}", rows * BYTES_PER_EVENT, time.time_ns())
        stats = FileStats(
            rows,
            {"event_id": lo, "badge_in_timestamp": first - timedelta(hours=8), "badge_out_timestamp": first},
            {"event_id": hi, "badge_in_timestamp": last - timedelta(hours=1), "badge_out_timestamp": last},
            dict.fromkeys(STATS_COLUMNS, 0),
        )
        return DataFile(info, lo, hi, rows), stats

    def _committed(self) -> None:
        self.commits += 1
        self.stamps[self.table.version] = self.clock
        if self.upkeep and self.commits % RESTAMP_EVERY == 0:
            self.age_log()

    def flush(self) -> float:
        """One single-file append with the pipeline's txn (compacting every 100); returns the append's seconds."""
        self.clock += 1
        lo = 0 if self.position is None else self.position + 1
        file, stats = self._file(layout.LANDING, "landing", lo, lo + EVENTS_PER_FILE - 1)
        started = time.perf_counter()
        self.table.append(file.info, stats, through_event_id=file.event_id_max, expected=self.position)
        elapsed = time.perf_counter() - started
        self.position = file.event_id_max
        self.landing.append(file)
        self._committed()
        if len(self.landing) >= COMPACT_EVERY:
            self.compact()
        return elapsed

    def fast_forward(self, files: int) -> None:
        """``files`` flushes' worth of adds, one commit per compaction cycle, each followed by the compaction."""
        while files > 0:
            count = min(COMPACT_EVERY - len(self.landing), files)
            self.clock += count
            lo = 0 if self.position is None else self.position + 1
            made = [
                self._file(layout.LANDING, "landing", lo + i * EVENTS_PER_FILE, lo + (i + 1) * EVENTS_PER_FILE - 1)
                for i in range(count)
            ]
            actions: list[AddAction | RemoveAction] = [
                AddAction(f.key, f.info.size, {}, f.info.mtime_ns // 1_000_000, True, stats.to_json())
                for f, stats in made
            ]
            self.position = made[-1][0].event_id_max
            self.table.commit(actions, "flush", txn=self.position)
            self.landing += [f for f, _ in made]
            self._committed()
            files -= count
            if len(self.landing) >= COMPACT_EVERY:
                self.compact()

    def compact(self) -> None:
        """The compactor's commit: the landing files and the open compacted file out, their merge in."""
        inputs = ([self.open_compacted] if self.open_compacted is not None else []) + self.landing
        merged, stats = self._file(
            layout.COMPACTED, "compacted", inputs[0].event_id_min, max(f.event_id_max for f in inputs)
        )
        self.table.replace(inputs, [(merged.info, stats)], removed_at_ms=int(self.wall(self.clock) * 1000))
        self.absorbed = self.absorbed + 1 if self.open_compacted is not None else 1
        self.open_compacted = merged if self.absorbed < TIER else None
        self.landing = []
        self._committed()

    def wall(self, second: int) -> float:
        """The wall-clock instant of simulated ``second``: the run's simulated day ends when the run began.

        Tombstones are stamped with it (delta-rs expires them by this timestamp), so the benchmark keeps
        the tombstones a real day would keep at the end (those of the last retention period), give or
        take the run's own duration.
        """
        return self.epoch + second

    def age_log(self) -> None:
        """Set each log entry's modification time to when it would have been written at one flush a second."""
        now = time.time()
        for entry in os.scandir(self.log_dir):
            match = _VERSION.match(entry.name)
            if match is None:
                continue
            written = self.stamps.get(int(match.group(1)), 0)
            stamp = now - (self.clock - written)
            os.utime(entry.path, (stamp, stamp))

    def flushes(self, count: int) -> tuple[list[float], dict[str, float]]:
        """``count`` flushes: each append's seconds, and the median (min, max) milliseconds of reading the snapshot
        through a fresh handle once after each of the last ``CHECKPOINT_INTERVAL`` (a whole checkpoint cycle)."""
        appends, loads = [], []
        for i in range(count):
            appends.append(self.flush())
            if i >= count - CHECKPOINT_INTERVAL:
                started = time.perf_counter()
                snap = read_snapshot(self.storage)
                loads.append((time.perf_counter() - started) * 1000)
                assert snap.committed_event_id == self.position
        return appends, summarize(loads)

    def log_facts(self) -> tuple[int, int]:
        """Entries in the log directory, and the size in bytes of the newest checkpoint (0: none)."""
        entries = list(self.log_dir.iterdir())
        checkpoints = sorted(p for p in entries if ".checkpoint" in p.name)
        newest = checkpoints[-1].stat().st_size if checkpoints else 0
        return len(entries), newest


def _percentiles(seconds: list[float]) -> tuple[float, float]:
    ms = sorted(s * 1000 for s in seconds)
    cuts = statistics.quantiles(ms, n=100, method="inclusive")
    return cuts[49], cuts[94]


def measure(commits: int, reference_commits: int) -> dict[str, Any]:
    """Both tables, in temporary lakes; the raw figures :func:`run` turns into rows."""
    WORK.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="log-", dir=WORK))
    try:
        lake = SimulatedLake(work / "upkeep", upkeep=True, horizon=commits)
        early, early_load = lake.flushes(EARLY)
        early_log = lake.log_facts()
        lake.fast_forward(max(0, commits - EARLY - STEADY))
        steady, late_load = lake.flushes(min(STEADY, commits - EARLY))
        late_log = lake.log_facts()
        upkept = {
            "early": _percentiles(early),
            "late": _percentiles(steady[-EARLY:]),
            "early_load": early_load,
            "late_load": late_load,
            "early_log": early_log,
            "late_log": late_log,
            "flushes": lake.clock,
            "commits": lake.commits,
            "version": lake.table.version,
        }
        shutil.rmtree(work / "upkeep", ignore_errors=True)
        bare = SimulatedLake(work / "bare", upkeep=False, horizon=reference_commits)
        times, bare_load = bare.flushes(reference_commits)
        reference = {
            "late": _percentiles(times[-EARLY:]),
            "late_load": bare_load,
            "late_log": bare.log_facts(),
            "flushes": bare.clock,
            "commits": bare.commits,
        }
        return {"upkeep": upkept, "reference": reference}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(size: str = "full") -> list[Row]:
    """Measure every figure; rows are ``figure, value, unit, reference, reference_value, ratio, target, ok``."""
    cfg = SIZES[size]
    m = measure(cfg["commits"], cfg["reference_commits"])
    up, ref = m["upkeep"], m["reference"]
    day = f"{up['flushes']:,} flushes"
    bare = f"{ref['flushes']:,} flushes"
    rows: list[Row] = []
    for i, label in enumerate(("p50", "p95")):
        late, early = up["late"][i], up["early"][i]
        rows.append(
            {
                "figure": f"commit latency {label}, single-file append with txn, after {day} (log upkeep)",
                "value": late,
                "unit": "ms",
                "reference": f"the same table's first {EARLY} commits",
                "reference_value": early,
                "ratio": late / early,
                "target": f"<= {FLAT_TARGET:g}x the first {EARLY}",
                "ok": late <= FLAT_TARGET * early,
            }
        )
    rows.append(
        {
            "figure": f"snapshot load (read_snapshot, fresh handle), last checkpoint cycle of {day} (log upkeep)",
            **up["late_load"],
            "unit": "ms",
            "reference": f"the same over the cycle ending at {EARLY} commits",
            "reference_value": up["early_load"]["value"],
            "ratio": up["late_load"]["value"] / up["early_load"]["value"],
            "target": f"<= {FLAT_TARGET:g}x the cycle ending at {EARLY}",
            "ok": up["late_load"]["value"] <= FLAT_TARGET * up["early_load"]["value"],
        }
    )
    for i, label in enumerate(("p50", "p95")):
        rows.append(
            {
                "figure": f"commit latency {label}, single-file append with txn, after {bare} without log upkeep",
                "value": ref["late"][i],
                "unit": "ms",
                "reference": f"with log upkeep after {day}",
                "reference_value": up["late"][i],
                "ratio": ref["late"][i] / up["late"][i],
                "target": "",
                "ok": None,
            }
        )
    rows.append(
        {
            "figure": f"snapshot load over the last {CHECKPOINT_INTERVAL} of {bare} without log upkeep",
            **ref["late_load"],
            "unit": "ms",
            "reference": f"with log upkeep after {day}",
            "reference_value": up["late_load"]["value"],
            "ratio": ref["late_load"]["value"] / up["late_load"]["value"],
            "target": "",
            "ok": None,
        }
    )
    rows.append(
        {
            "figure": f"log entries on disk after {day} (log upkeep; checkpoint every {CHECKPOINT_INTERVAL})",
            "value": up["late_log"][0],
            "unit": "files",
            "reference": f"without log upkeep after {bare}",
            "reference_value": ref["late_log"][0],
            "ratio": up["late_log"][0] / ref["late_log"][0],
            "target": "",
            "ok": None,
        }
    )
    rows.append(
        {
            "figure": f"newest checkpoint after {day} (log upkeep; live files and tombstones)",
            "value": up["late_log"][1] / 1024,
            "unit": "KB",
            "reference": f"the same over the cycle ending at {EARLY} commits",
            "reference_value": up["early_log"][1] / 1024,
            "ratio": up["late_log"][1] / up["early_log"][1] if up["early_log"][1] else None,
            "target": "",
            "ok": None,
        }
    )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_log", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=tuple(SIZES), default="full")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    rows = run(args.size)
    for r in rows:
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}"
        met = "-" if r["ok"] is None else ("yes" if r["ok"] else "NO")
        print(
            f"{r['figure']:<96}{r['value']:>12,.2f} {r['unit']:<6}{r['reference_value']:>12,.2f}"
            f"{ratio:>8}  {r['target'] or '-'}: {met}"
        )
    print(f"({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
