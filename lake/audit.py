"""What is in the lake and whether it is whole: the logic behind ``python -m lake stats|verify``.

``stats`` reads only file listings and Parquet footers (cheap at any size). ``verify`` reads every
data file's ``event_id`` column and proves the contract's promise: the live set (together with the
quarantined records) holds every event id from 0 to its maximum exactly once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lake import layout
from lake.liveset import DataFile, LiveSet, live_set, parse_badge_metadata
from lake.lock import LakeLock
from lake.quarantine import count_quarantine
from lake.storage import LocalStorage
from utils.errors import CorruptFileError


def _zone_rows(storage: LocalStorage, zone: str) -> tuple[int, int, int]:
    """(files, rows, bytes) of a zone from footers; unreadable files count with 0 rows."""
    files = storage.list_files(zone)
    rows = 0
    for info in files:
        try:
            rows += int(storage.read_metadata(info.key).get(layout.META_ROW_COUNT, "0"))
        except (CorruptFileError, FileNotFoundError, ValueError):
            continue
    return len(files), rows, sum(f.size for f in files)


def newest_event_time(storage: LocalStorage, live: LiveSet) -> datetime | None:
    """The newest ``badge_out_timestamp`` (UTC) in the live set, from the footer statistics of the file
    holding the highest event id (records are in stream order, so it holds the newest event)."""
    candidates = [f for f in live.files if f.row_count > 0]
    if not candidates:
        return None
    top = max(candidates, key=lambda f: f.event_id_max)
    newest: datetime | None = None
    try:
        meta = storage.read_footer(top.key)
    except (FileNotFoundError, CorruptFileError):
        return None
    col = meta.schema.names.index("badge_out_timestamp") if "badge_out_timestamp" in meta.schema.names else -1
    if col < 0:
        return None
    for rg in range(meta.num_row_groups):
        stats = meta.row_group(rg).column(col).statistics
        if stats is None or not stats.has_min_max:
            continue
        value = stats.max
        if isinstance(value, datetime):
            value = value.replace(tzinfo=UTC)
            newest = value if newest is None or value > newest else newest
    return newest


def stats(storage: LocalStorage, now: datetime | None = None) -> dict[str, Any]:
    """Per zone: files, rows, bytes; the live set's totals; newest event time and freshness lag (seconds)."""
    now = now or datetime.now(UTC)
    live = live_set(storage)
    zones: dict[str, dict[str, int]] = {}
    for zone in (layout.LANDING, layout.COMPACTED):
        files, rows, size = _zone_rows(storage, zone)
        zones[zone] = {"files": files, "rows": rows, "bytes": size}
    quarantined = count_quarantine(storage)  # the one count: every quarantined file, reason files excluded
    zones[layout.QUARANTINE] = {"files": quarantined.files, "rows": quarantined.rows, "bytes": quarantined.bytes}
    temp = storage.list_all(layout.TEMP)
    zones[layout.TEMP] = {"files": len(temp), "rows": 0, "bytes": sum(f.size for f in temp)}
    newest = newest_event_time(storage, live)
    return {
        "lake": str(storage.root),
        "zones": zones,
        "live": {
            "files": len(live.files),
            "rows": live.rows,
            "bytes": live.bytes,
            "max_event_id": live.max_event_id,
            "replaced_files_pending_deletion": len(live.replaced),
            "invalid_files": list(live.invalid),
        },
        "newest_event_time": newest.isoformat() if newest else None,
        "freshness_lag_seconds": round((now - newest).total_seconds(), 3) if newest else None,
    }


@dataclass
class VerifyReport:
    """The outcome of :func:`verify`: ``ok`` only if ``problems`` is empty."""

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    live_rows: int = 0
    quarantined_rows: int = 0
    max_event_id: int | None = None
    files_checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "problems": self.problems,
            "notes": self.notes,
            "live_rows": self.live_rows,
            "quarantined_rows": self.quarantined_rows,
            "max_event_id": self.max_event_id,
            "files_checked": self.files_checked,
        }


def _event_ids(storage: LocalStorage, df: DataFile, report: VerifyReport) -> np.ndarray | None:
    """The file's event ids, after checking them against its metadata; None (and a problem) if unreadable."""
    try:
        column = pq.read_table(storage.path(df.key), columns=["event_id"]).column("event_id")
    except (OSError, ValueError, KeyError, pa.ArrowException) as exc:
        report.problems.append(f"{df.key}: unreadable ({exc})")
        return None
    ids: np.ndarray = column.to_numpy()
    report.files_checked += 1
    if len(ids) != df.row_count:
        report.problems.append(f"{df.key}: badge.row_count={df.row_count} but the file holds {len(ids)} rows")
    if len(ids) and (int(ids.min()) != df.event_id_min or int(ids.max()) != df.event_id_max):
        report.problems.append(
            f"{df.key}: badge.event_id range {df.event_id_min}..{df.event_id_max} "
            f"but the file holds {int(ids.min())}..{int(ids.max())}"
        )
    return ids


def _quarantine_files(storage: LocalStorage, report: VerifyReport) -> list[DataFile]:
    out: list[DataFile] = []
    for info in storage.list_files(layout.QUARANTINE):
        try:
            out.append(parse_badge_metadata(info, storage.read_metadata(info.key)))
        except CorruptFileError:
            # A quarantined foreign file: kept for inspection, holds no stream records.
            report.notes.append(f"{info.key}: quarantined foreign file")
    return out


def verify(storage: LocalStorage, grace_seconds: float, now: float | None = None) -> VerifyReport:
    """Check the lake is whole: every event id 0..max exactly once (live set plus quarantine), every
    data file readable Parquet whose metadata matches its content, nothing left half-done.

    Read-only; safe to run while the pipeline and compactor work.
    """
    now = time.time() if now is None else now
    report = VerifyReport()
    live = live_set(storage)
    pipeline_running = LakeLock(storage.root, layout.PIPELINE_LOCK, "pipeline").is_locked_elsewhere()
    compactor_running = LakeLock(storage.root, layout.COMPACTOR_LOCK, "compactor").is_locked_elsewhere()

    report.problems.extend(f"{key}: not a readable badge data file" for key in live.invalid)

    chunks: list[np.ndarray] = []
    for df in live.files:
        ids = _event_ids(storage, df, report)
        if ids is not None:
            chunks.append(ids)
    report.live_rows = sum(len(c) for c in chunks)
    for df in live.replaced:  # still on disk during the grace period: must be readable too
        _event_ids(storage, df, report)

    live_max = live.max_event_id
    for qf in _quarantine_files(storage, report):
        if live_max is None or qf.event_id_min > live_max:
            if not pipeline_running:
                report.problems.append(f"{qf.key}: quarantine file beyond the committed events (an unfinished flush)")
            continue
        ids = _event_ids(storage, qf, report)
        if ids is not None:
            chunks.append(ids)
            report.quarantined_rows += len(ids)

    all_ids = np.concatenate(chunks) if chunks else np.empty(0, dtype=np.int64)
    if len(all_ids):
        all_ids.sort()
        report.max_event_id = int(all_ids[-1])
        if int(all_ids[0]) != 0:
            report.problems.append(f"event ids start at {int(all_ids[0])}, not 0")
        steps = np.diff(all_ids)
        duplicates = int(np.count_nonzero(steps == 0))
        gaps = np.flatnonzero(steps > 1)
        if duplicates:
            report.problems.append(f"{duplicates} event ids appear more than once")
        if len(gaps):
            first = int(all_ids[gaps[0]]) + 1
            missing = int((steps[gaps] - 1).sum())
            report.problems.append(f"{missing} event ids missing (the first is {first})")

    if not pipeline_running and not compactor_running:
        leftovers = storage.list_all(layout.TEMP)
        if leftovers:
            report.problems.append(
                f"{len(leftovers)} leftover file(s) in temp/ with no pipeline or compactor running "
                f"(e.g. {leftovers[0].key}); a restart cleans them up"
            )
    if live.replaced:
        # Grace runs from the commit (mtime) of the compacted file that names a replaced file.
        committed_at = {src: df.info.mtime_ns / 1e9 for df in (*live.files, *live.replaced) for src in df.sources}
        due = [f for f in live.replaced if now - committed_at.get(f.key, now) > grace_seconds + 60]
        message = f"{len(live.replaced)} replaced file(s) awaiting deletion after the grace period"
        if due and not compactor_running:
            report.problems.append(f"{message}; {len(due)} long overdue and no compactor running")
        else:
            report.notes.append(message)
    return report
