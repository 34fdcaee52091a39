"""What is in the lake and whether it is whole: the logic behind ``python -m lake stats|verify``.

Both read the lake's Delta tables (:mod:`lake.table`): what the lake holds is what the log says, never
a listing or a footer. ``stats`` reads only the logs (files, rows, bytes and statistics of the ``add``
actions) plus the listings of what lies on disk beside the table. ``verify`` reads every file of the
snapshot and of the quarantine table and proves the issue's promise: every event id from 0 to the
pipeline's committed position (the ``txn`` version) is in the table or in quarantine exactly once; every
file exists, is readable and matches its statistics; no file is held twice; every quarantined record
has a reason. Each failure names the file and the error. Files that no commit added (foreign, orphaned,
or replaced and awaiting clean-up) are not the lake: they are noted, never read.

Memory is bounded by the id range (one byte per event id), not by the number of rows read: files are
streamed batch by batch.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lake import layout
from lake.filestats import QUARANTINE_STATS_COLUMNS, STATS_COLUMNS
from lake.lock import LakeLock
from lake.quarantine import count_quarantine
from lake.snapshot import DataFile, Snapshot
from lake.storage import FileInfo, LocalStorage
from lake.table import APP_ID, LakeTable, QuarantineTable, describe_log, ensure_migrated, has_log, read_snapshot

BATCH_ROWS: Final = 256 * 1024  # rows per streamed batch: memory per file stays flat whatever its size
_ATTEMPTS: Final = 3  # verifications restarted on a newer snapshot when a file of the old one is gone
_EXAMPLES: Final = 3  # ids named in a message

# What the id ledger holds per event id.
_ABSENT: Final = 0
_IN_TABLE: Final = 1
_IN_QUARANTINE: Final = 2

EVENT_COLUMNS: Final[tuple[str, ...]] = STATS_COLUMNS  # read from each file of the table: what its stats cover
QUARANTINE_COLUMNS: Final[tuple[str, ...]] = (*QUARANTINE_STATS_COLUMNS, "reason")


def _aware(moment: datetime | None) -> datetime | None:
    return None if moment is None else moment.replace(tzinfo=UTC)


def _beside(storage: LocalStorage, held: set[str]) -> list[FileInfo]:
    """Files on disk in landing/ and compacted/ that the table does not hold (awaiting clean-up)."""
    return [info for zone in layout.DATA_ZONES for info in storage.list_all(zone) if info.key not in held]


def stats(storage: LocalStorage, now: datetime | None = None) -> dict[str, Any]:
    """Per zone: files, rows, bytes from the log; the table's version and log; newest event and freshness lag.

    Raises UnmigratedLakeError for a lake in the previous layout; an empty lake (no table) is all zeros.
    """
    now = now or datetime.now(UTC)
    snap = read_snapshot(storage)
    zones: dict[str, dict[str, int]] = {}
    for zone in (layout.LANDING, layout.COMPACTED):
        files = snap.in_zone(zone)
        zones[zone] = {
            "files": len(files),
            "rows": sum(f.row_count for f in files),
            "bytes": sum(f.info.size for f in files),
        }
    quarantined = count_quarantine(storage)
    zones[layout.QUARANTINE] = {"files": quarantined.files, "rows": quarantined.rows, "bytes": quarantined.bytes}
    temp = storage.list_all(layout.TEMP)
    zones[layout.TEMP] = {"files": len(temp), "rows": 0, "bytes": sum(f.size for f in temp)}
    beside = _beside(storage, set(snap.keys))
    newest = _aware(snap.newest_event_time)
    return {
        "lake": str(storage.root),
        "table": {
            "version": snap.version,
            "files": len(snap.files),
            "rows": snap.rows,
            "bytes": snap.bytes,
            "max_event_id": snap.max_event_id,
            "committed_event_id": snap.committed_event_id,
            "stream": None if snap.identity is None else dataclasses.asdict(snap.identity),
            **describe_log(storage),
        },
        "zones": zones,
        "not_in_table": {"files": len(beside), "bytes": sum(f.size for f in beside)},
        "newest_event_time": newest.isoformat() if newest else None,
        "freshness_lag_seconds": round((now - newest).total_seconds(), 3) if newest else None,
    }


@dataclass
class VerifyReport:
    """The outcome of :func:`verify`: ``ok`` only if ``problems`` is empty; each problem names its file."""

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    version: int | None = None
    committed_event_id: int | None = None
    table_rows: int = 0
    quarantined_rows: int = 0
    files_checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "problems": self.problems,
            "notes": self.notes,
            "version": self.version,
            "committed_event_id": self.committed_event_id,
            "table_rows": self.table_rows,
            "quarantined_rows": self.quarantined_rows,
            "files_checked": self.files_checked,
        }


class _Vanished(Exception):
    """A file of the snapshot left the table (and the disk) while it was verified: start over on a newer one."""


def _examples(ids: np.ndarray) -> str:
    return ", ".join(str(int(i)) for i in ids[:_EXAMPLES])


class _Ledger:
    """One byte per event id 0..top: absent, in the table, or in quarantine."""

    def __init__(self, top: int) -> None:
        self.top = top
        self.marks = np.zeros(max(0, top + 1), dtype=np.uint8)

    def add(self, ids: np.ndarray, mark: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Record ``ids``; return (ids outside 0..top, ids already in the table, ids already in quarantine)."""
        inside = (ids >= 0) & (ids <= self.top)
        outside = ids[~inside]
        ids = ids[inside]
        ordered = np.sort(ids)
        again = ordered[1:][np.diff(ordered) == 0]  # twice within this batch
        before = self.marks[ids]
        in_table = np.concatenate([ids[before == _IN_TABLE], again if mark == _IN_TABLE else again[:0]])
        in_quarantine = np.concatenate([ids[before == _IN_QUARANTINE], again if mark == _IN_QUARANTINE else again[:0]])
        self.marks[ids] = mark
        return outside, in_table, in_quarantine

    def absent(self) -> np.ndarray:
        return np.flatnonzero(self.marks == _ABSENT)


@dataclass
class _Found:
    """Ids of one kind of trouble in one file: how many, and the first few."""

    count: int = 0
    examples: list[int] = field(default_factory=list)

    def add(self, ids: np.ndarray) -> None:
        self.count += len(ids)
        self.examples += [int(i) for i in ids[: _EXAMPLES - len(self.examples)]]

    def named(self) -> str:
        return ", ".join(map(str, self.examples))


@dataclass
class _Seen:
    """What one file turned out to hold, accumulated batch by batch."""

    rows: int = 0
    minimum: dict[str, Any] = field(default_factory=dict)
    maximum: dict[str, Any] = field(default_factory=dict)
    outside: _Found = field(default_factory=_Found)  # ids outside 0..committed position
    in_table: _Found = field(default_factory=_Found)  # ids the table already held
    in_quarantine: _Found = field(default_factory=_Found)  # ids quarantine already held
    null_ids: int = 0
    no_reason: int = 0

    def bound(self, name: str, column: pa.Array) -> None:
        mm = pc.min_max(column)
        lo, hi = mm["min"].as_py(), mm["max"].as_py()
        if lo is not None and (self.minimum.get(name) is None or lo < self.minimum[name]):
            self.minimum[name] = lo
        if hi is not None and (self.maximum.get(name) is None or hi > self.maximum[name]):
            self.maximum[name] = hi


class _Verifier:
    """One verification of one version of the events table (and the quarantine table read after it)."""

    def __init__(self, storage: LocalStorage, grace_seconds: float, now: float) -> None:
        self.storage = storage
        self.grace_seconds = grace_seconds
        self.now = now
        self.report = VerifyReport()
        self.table = LakeTable.open(storage)
        self.snap: Snapshot = self.table.snapshot(refresh=False)
        # Read after the events table: every quarantine entry the pipeline committed before its position is in it.
        self.quarantine = QuarantineTable.open(storage)
        self.inodes: dict[tuple[int, int], str] = {}

    def run(self) -> VerifyReport:
        report, snap = self.report, self.snap
        report.version, report.committed_event_id = snap.version, snap.committed_event_id
        top = snap.committed_event_id
        if top is None:
            if snap.files:
                report.problems.append(
                    f"the table holds {len(snap.files)} file(s) but no committed pipeline position "
                    f"(application transaction {APP_ID})"
                )
            top = snap.max_event_id if snap.max_event_id is not None else -1
        ledger = _Ledger(top)
        self._check_held_once(snap.files, "table")
        stats = {r["path"]: r for r in self.table.add_actions().to_pylist()}
        for f in snap.files:
            seen = self._read(self.table, f, EVENT_COLUMNS, ledger, _IN_TABLE)
            if seen is not None:
                report.table_rows += seen.rows
                self._compare(f, stats.get(self.table.path_of(f.key), {}), seen, STATS_COLUMNS)
                self._judge_ids(f, seen, top, quarantine=False)
        self._verify_quarantine(ledger, top)
        absent = ledger.absent()
        if len(absent):
            report.problems.append(
                f"{len(absent)} event id(s) from 0 to {top} are neither in the table nor in quarantine "
                f"(the first: {_examples(absent)}{self._between(int(absent[0]))})"
            )
        self._note_beside()
        return report

    # -- reading ----------------------------------------------------------------------------------------
    def _batches(self, f: DataFile, columns: Sequence[str]) -> Iterator[pa.RecordBatch]:
        with pq.ParquetFile(self.storage.path(f.key)) as parquet:
            yield from parquet.iter_batches(batch_size=BATCH_ROWS, columns=list(columns))

    def _read(
        self, table: LakeTable | QuarantineTable, f: DataFile, columns: Sequence[str], ledger: _Ledger, mark: int
    ) -> _Seen | None:
        """Stream ``f``'s columns into the ledger; None (and a problem naming the file) if it cannot be read.

        A file missing from disk that a newer version no longer holds raises _Vanished (a newer snapshot exists).
        """
        path = self.storage.path(f.key)
        try:
            st = path.stat()
        except FileNotFoundError:
            table.refresh()
            if f.key not in {g.key for g in table.data_files()}:
                raise _Vanished(f.key) from None
            self.report.problems.append(f"{f.key}: in the table's log (version {table.version}) but missing from disk")
            return None
        if st.st_size != f.info.size:
            self.report.problems.append(
                f"{f.key}: {st.st_size} bytes on disk but {f.info.size} in its add action (the file was changed)"
            )
        inode = (st.st_dev, st.st_ino)
        if inode in self.inodes:
            self.report.problems.append(f"{f.key}: the same file as {self.inodes[inode]} (added twice)")
        self.inodes[inode] = f.key
        error: Exception | None = None
        for _ in range(2):  # a transient read error gets one more try before it is declared damage
            seen = _Seen()
            try:
                for batch in self._batches(f, columns):
                    self._take(batch, seen, ledger, mark)
            except (OSError, ValueError, KeyError, pa.ArrowException) as exc:
                error = exc
                if seen.rows:  # part of it is already in the ledger: a second pass would count it twice
                    break
                continue
            self.report.files_checked += 1
            return seen
        self.report.problems.append(f"{f.key}: unreadable ({type(error).__name__}: {error})")
        return None

    def _take(self, batch: pa.RecordBatch, seen: _Seen, ledger: _Ledger, mark: int) -> None:
        column = batch.column("event_id")
        seen.rows += batch.num_rows
        seen.null_ids += column.null_count
        ids = column.drop_null().to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
        for name in batch.schema.names:
            if name != "reason":
                seen.bound(name, batch.column(name))
        if "reason" in batch.schema.names:
            reasons = pc.utf8_trim_whitespace(batch.column("reason"))
            seen.no_reason += int(pc.sum(pc.or_kleene(pc.is_null(reasons), pc.equal(reasons, ""))).as_py() or 0)
        outside, in_table, in_quarantine = ledger.add(ids, mark)
        seen.outside.add(outside)
        seen.in_table.add(in_table)
        seen.in_quarantine.add(in_quarantine)

    # -- judging --------------------------------------------------------------------------------------
    def _compare(self, f: DataFile, action: dict[str, Any], seen: _Seen, columns: Sequence[str]) -> None:
        """The file's rows against the statistics of its add action: numRecords, min/max of ``columns``."""
        claimed = action.get("num_records")
        if claimed != seen.rows:
            self.report.problems.append(f"{f.key}: numRecords={claimed} in the log but the file holds {seen.rows} rows")
        for name in columns:
            for kind, actual in (("min", seen.minimum.get(name)), ("max", seen.maximum.get(name))):
                logged = action.get(f"{kind}.{name}")
                if logged != actual:
                    self.report.problems.append(
                        f"{f.key}: {kind} {name} is {logged} in the log but {actual} in the file"
                    )

    def _judge_ids(self, f: DataFile, seen: _Seen, top: int, *, quarantine: bool) -> None:
        what = "quarantined record(s)" if quarantine else "event id(s)"
        if seen.outside.count:
            self.report.problems.append(
                f"{f.key}: {seen.outside.count} {what} outside 0..{top}, the committed position "
                f"(e.g. {seen.outside.named()})"
            )
        if seen.in_table.count:
            where = self._holders(seen.in_table.examples[0], exclude=f.key)
            self.report.problems.append(
                f"{f.key}: {seen.in_table.count} {what} also in the table (e.g. {seen.in_table.named()}{where})"
            )
        if seen.in_quarantine.count:
            self.report.problems.append(
                f"{f.key}: {seen.in_quarantine.count} {what} also in quarantine (e.g. {seen.in_quarantine.named()})"
            )
        if seen.null_ids:
            self.report.problems.append(f"{f.key}: {seen.null_ids} {what} without an event id")

    def _holders(self, event_id: int, exclude: str) -> str:
        """Files of the table whose statistics cover ``event_id`` (where a duplicate's twin lies)."""
        keys = [g.key for g in self.snap.files if g.event_id_min <= event_id <= g.event_id_max and g.key != exclude]
        return f"; by their statistics in {', '.join(keys[:_EXAMPLES])}" if keys else ""

    def _between(self, event_id: int) -> str:
        before = [g for g in self.snap.files if g.row_count and g.event_id_max < event_id]
        after = [g for g in self.snap.files if g.row_count and g.event_id_min > event_id]
        parts = []
        if before:
            parts.append(f"after {max(before, key=lambda g: g.event_id_max).key}")
        if after:
            parts.append(f"before {min(after, key=lambda g: g.event_id_min).key}")
        return f"; {', '.join(parts)}" if parts else ""

    def _check_held_once(self, files: Sequence[DataFile], what: str) -> None:
        counts = Counter(f.key for f in files)
        for key in sorted(k for k, n in counts.items() if n > 1):
            self.report.problems.append(f"{key}: added to the {what} more than once")

    def _verify_quarantine(self, ledger: _Ledger, top: int) -> None:
        if self.quarantine is None:
            return
        files = self.quarantine.data_files()
        self._check_held_once(files, "quarantine table")
        stats = {r["path"]: r for r in self.quarantine.add_actions().to_pylist()}
        pending = 0
        for f in files:
            if f.row_count and f.event_id_min > top:
                pending += f.row_count  # beyond the committed position: not confirmed yet (or an orphan)
                continue
            seen = self._read(self.quarantine, f, QUARANTINE_COLUMNS, ledger, _IN_QUARANTINE)
            if seen is None:
                continue
            self.report.quarantined_rows += seen.rows
            self._compare(f, stats.get(self.quarantine.path_of(f.key), {}), seen, QUARANTINE_STATS_COLUMNS)
            if seen.no_reason:
                self.report.problems.append(f"{f.key}: {seen.no_reason} quarantined record(s) without a reason")
            self._judge_ids(f, seen, top, quarantine=True)
        if pending:
            self.report.notes.append(
                f"{pending} quarantined record(s) beyond the committed position: a flush in progress, "
                "or the orphan of one that the pipeline's next start removes"
            )

    def _note_beside(self) -> None:
        beside = _beside(self.storage, set(self.snap.keys))
        if self.quarantine is not None:
            held = {f.key for f in self.quarantine.data_files()}
            beside += [f for f in self.storage.list_files(layout.QUARANTINE) if f.key not in held]
        if beside:
            overdue = [f for f in beside if self.now - f.mtime_ns / 1e9 > self.grace_seconds + 60]
            compactor = LakeLock(self.storage.root, layout.COMPACTOR_LOCK, "compactor").is_locked_elsewhere()
            message = (
                f"{len(beside)} file(s) on disk that no table holds (replaced, orphaned or foreign): "
                "never read, deleted after the grace period"
            )
            if overdue and not compactor:
                message += f"; {len(overdue)} past it with no compactor running to clean up"
            self.report.notes.append(message)
        leftovers = self.storage.list_all(layout.TEMP)
        if leftovers:
            self.report.notes.append(
                f"{len(leftovers)} file(s) in temp/ (e.g. {leftovers[0].key}): unfinished writes, "
                "removed by their process's next start"
            )


def verify(storage: LocalStorage, grace_seconds: float, now: float | None = None) -> VerifyReport:
    """Check the lake is whole at one version of its table; read-only, safe while the pipeline and compactor run.

    A file that leaves the table and the disk while it is verified (a compaction and its clean-up) starts
    the verification over on the newer version, a bounded number of times. Raises UnmigratedLakeError for
    a lake in the previous layout; a lake without a table is empty, hence whole.
    """
    now = time.time() if now is None else now
    ensure_migrated(storage)
    if not has_log(storage.root):
        report = VerifyReport()
        report.notes.append("no table yet: the lake is empty")
        return report
    vanished = ""
    for _ in range(_ATTEMPTS):
        try:
            return _Verifier(storage, grace_seconds, now).run()
        except _Vanished as exc:
            vanished = str(exc)
    report = VerifyReport()
    report.problems.append(
        f"the table kept changing while it was verified ({_ATTEMPTS} versions; the last file gone: {vanished})"
    )
    return report


__all__ = ["VerifyReport", "stats", "verify"]
