"""What is in the lake and whether it is whole: the logic behind ``python -m lake stats|verify``.

Both read the lake's Delta tables (:mod:`lake.table`) through :class:`~lake.storage.Storage`, so they run
alike on a local directory and on S3-compatible object storage: what the lake holds is what the log
says, never a listing or a footer. ``stats`` reads only the logs (files, rows, bytes and statistics of
the ``add`` actions) plus the listings of what lies in the zones beside the table. ``verify`` reads
every file of the snapshot and of the quarantine table and proves the issue's promise: every event id
from 0 to the pipeline's committed position (the ``txn`` version) is in the table or in quarantine
exactly once; every file exists, is readable and matches its statistics; no file is held twice; every
quarantined record has a reason. Each failure names the file and the error. Files that no commit added
(foreign, orphaned, or replaced and awaiting clean-up) are not the lake: they are noted, never read.

A file that cannot be read is classified, never guessed at: *missing* (not in storage), an *I/O
failure* (the OS or a request to the store failed: not damage, verify again), or *damaged* (its bytes
were read whole and are not the Parquet its add action promises). On a local lake pyarrow reads each
file natively by its path (an ``OSError`` carrying an errno is the OS failing); on object storage every
byte comes through :meth:`~lake.storage.Storage.open_input` wrapped in a recorder, so a failure of a read
itself is told apart exactly from a decoding failure of bytes that did arrive.

Memory is bounded whatever the lake's size (a billion events or more): ``verify`` sweeps the id space
0..committed position in windows of WINDOW_IDS ids, keeping one byte per id of the current window only (the
ledger), and streams each file batch by batch (ranged reads on object storage, never a whole object). A
file is read whole once, in the window of its first event id (by its add action); the row groups holding
ids of later windows are recorded then, and only their ``event_id`` column is read again, in those windows
(a file within one window, most of them, is read once; one spanning several has the event ids of its part
beyond the first window read once more, a row group straddling a boundary once per window it reaches).
Each window is judged (its absent ids counted, the first few named) before the next begins; a run of
windows no file reaches is judged by arithmetic, allocating nothing. In each window the files of the table
are read before those of quarantine, each table's in its order, so an id held twice is reported on the
same file as a single pass would report it. (A file holding ids below the first its add action gives, a
lie of its statistics reported as such, has those ids noted, not checked: their window was judged before.)

So memory is at most WINDOW_IDS bytes (32 MiB) for the ledger, plus one batch of BATCH_ROWS rows of the
columns read and the Parquet reader's buffers for one row group, plus at most 3 MiB of temporaries per
_CHUNK_IDS ids judged: under 100 MiB above the interpreter and its libraries, whatever the number of events
or the span of their ids. What grows with the lake is per *file* only: the logs' metadata (the snapshot,
one entry per file, as every reader of the table holds it) and a few words per file being verified.
``stats`` reads the logs and listings only: it holds per-file metadata, never anything per event or row.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lake import layout
from lake.filestats import QUARANTINE_STATS_COLUMNS, STATS_COLUMNS
from lake.lease import DEFAULT_MAX_SKEW_S, LEASE_KEY, Lease
from lake.lock import LakeLock
from lake.objectstore import ObjectStorage
from lake.quarantine import count_quarantine
from lake.reads import ReadFailed, RecordedReads, read_failed
from lake.snapshot import DataFile, Snapshot
from lake.storage import FileInfo, LocalStorage, Storage
from lake.table import APP_ID, LakeTable, QuarantineTable, describe_log, ensure_migrated, read_snapshot
from utils.errors import LakeError, one_line

BATCH_ROWS: Final = 256 * 1024  # rows per streamed batch: memory per file stays flat whatever its size
# Event ids judged at a time: the ledger's size in bytes (32 MiB), whatever the lake's size or its ids' span.
WINDOW_IDS: Final = 32 * 1024 * 1024
_CHUNK_IDS: Final = 256 * 1024  # ids of a window counted at a time (temporaries: at most 3 MiB)
_ATTEMPTS: Final = 3  # verifications restarted on a newer snapshot when a file of the old one is gone
_READ_TRIES: Final = 2  # a failed read of a file gets one more try before it is reported
_GIVE_UP_AFTER: Final = 3  # files in a row that failed with an I/O error: the rest are not read (the store is down)
_EXAMPLES: Final = 3  # ids named in a message

# What the id ledger holds per event id.
_ABSENT: Final = 0
_IN_TABLE: Final = 1
_IN_QUARANTINE: Final = 2

EVENT_COLUMNS: Final[tuple[str, ...]] = STATS_COLUMNS  # read from each file of the table: what its stats cover
QUARANTINE_COLUMNS: Final[tuple[str, ...]] = (*QUARANTINE_STATS_COLUMNS, "reason")


def _aware(moment: datetime | None) -> datetime | None:
    return None if moment is None else moment.replace(tzinfo=UTC)


def _beside(storage: Storage, held: set[str]) -> list[FileInfo]:
    """Files in landing/ and compacted/ that the table does not hold (awaiting clean-up)."""
    return [info for zone in layout.DATA_ZONES for info in storage.list_tree(zone, suffix="") if info.key not in held]


def stats(storage: Storage, now: datetime | None = None) -> dict[str, Any]:
    """Per zone: files, rows, bytes from the log; the table's version and log; newest event and freshness lag.

    Works alike on every backend: it reads the two tables' logs and lists the zones, never a data file,
    so a local lake and an object-storage lake holding the same commits give the same figures (``lake``
    aside, the location as written). Raises UnmigratedLakeError for a lake in the previous layout,
    LakeError if a log or a listing cannot be read; an empty lake (no table) is all zeros.
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
        "lake": storage.location,
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
    """The outcome of :func:`verify`: ``ok`` only if ``problems`` is empty; each problem names its file.

    ``damaged`` and ``io_failures`` list the keys of the files that could not be read, by cause (each also
    has its problem): damaged means bytes were read and are not what the log promises; an I/O failure
    means the disk or a request failed, which proves nothing about the file (verify again).
    """

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    version: int | None = None
    committed_event_id: int | None = None
    expired_through: int | None = None  # retention's mark: ids at or below it are expired, not missing
    table_rows: int = 0
    quarantined_rows: int = 0
    files_checked: int = 0
    damaged: list[str] = field(default_factory=list)
    io_failures: list[str] = field(default_factory=list)

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
            "expired_through": self.expired_through,
            "table_rows": self.table_rows,
            "quarantined_rows": self.quarantined_rows,
            "files_checked": self.files_checked,
            "damaged": self.damaged,
            "io_failures": self.io_failures,
        }


class _Vanished(Exception):
    """A file of the snapshot left the table (and storage) while it was verified: start over on a newer one."""


@dataclass
class _Opened:
    """One file opened for verification: what pyarrow reads (a local path, or recorded reads of the store)."""

    source: Path | pa.NativeFile
    size: int
    inode: tuple[int, int] | None = None  # (device, inode) on a local file system
    reads: RecordedReads | None = None

    def close(self) -> None:
        if self.reads is not None:
            self.reads.close()


def _ids(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """The non-null event ids of ``column`` as int64."""
    ids: np.ndarray = column.drop_null().to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    return ids


class _Ledger:
    """One byte per event id of one window ``base``..``last`` of the id space: absent, in the table, or in quarantine.

    Its buffer is allocated once, the size of the largest window (at most WINDOW_IDS bytes), and cleared for
    each window in turn: it never grows with the lake's id range.
    """

    def __init__(self, size: int) -> None:
        self.buffer = np.zeros(max(0, size), dtype=np.uint8)
        self.base, self.last = 0, -1
        self.marks = self.buffer[:0]

    def start(self, base: int, last: int) -> None:
        """Begin the window ``base``..``last`` (no wider than the buffer), every id in it absent."""
        if last - base + 1 > len(self.buffer):
            raise ValueError(f"a window of {last - base + 1} ids in a ledger of {len(self.buffer)}")
        self.base, self.last = base, last
        self.marks = self.buffer[: max(0, last - base + 1)]
        self.marks.fill(_ABSENT)

    def add(self, ids: np.ndarray, mark: int) -> tuple[np.ndarray, np.ndarray]:
        """Record ``ids`` (every one in the window); return (ids already in the table, ids already in quarantine),
        an id twice in ``ids`` counting once more as already held by ``mark``'s side."""
        offsets = ids - self.base
        ordered = np.sort(ids)
        again = ordered[1:][np.diff(ordered) == 0]  # twice within this batch
        before = self.marks[offsets]
        in_table = np.concatenate([ids[before == _IN_TABLE], again if mark == _IN_TABLE else again[:0]])
        in_quarantine = np.concatenate([ids[before == _IN_QUARANTINE], again if mark == _IN_QUARANTINE else again[:0]])
        self.marks[offsets] = mark
        return in_table, in_quarantine


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
    """What one file turned out to hold, accumulated batch by batch (and window by window)."""

    rows: int = 0
    minimum: dict[str, Any] = field(default_factory=dict)
    maximum: dict[str, Any] = field(default_factory=dict)
    outside: _Found = field(default_factory=_Found)  # ids outside 0..committed position
    in_table: _Found = field(default_factory=_Found)  # ids the table already held
    in_quarantine: _Found = field(default_factory=_Found)  # ids quarantine already held
    early: _Found = field(default_factory=_Found)  # ids of windows judged before it was read (below its log's min)
    later: dict[int, set[int]] = field(default_factory=dict)  # window -> row groups with ids of it, to mark then
    null_ids: int = 0
    no_reason: int = 0

    def bound(self, name: str, column: pa.Array) -> None:
        mm = pc.min_max(column)
        lo, hi = mm["min"].as_py(), mm["max"].as_py()
        if lo is not None and (self.minimum.get(name) is None or lo < self.minimum[name]):
            self.minimum[name] = lo
        if hi is not None and (self.maximum.get(name) is None or hi > self.maximum[name]):
            self.maximum[name] = hi


@dataclass(eq=False)
class _Item:
    """One file to verify, in the sweep's order: the window of its first event id, the events table before
    quarantine, then its place in its table (by first event id)."""

    first: int  # the window it is read whole in
    phase: int  # 0: a file of the events table; 1: of the quarantine table
    index: int  # its place among its table's files, sorted by first event id
    table: LakeTable | QuarantineTable
    f: DataFile
    seen: _Seen | None = None  # what it held, once read whole

    @property
    def quarantine(self) -> bool:
        return self.phase == 1

    @property
    def columns(self) -> tuple[str, ...]:
        return QUARANTINE_COLUMNS if self.quarantine else EVENT_COLUMNS

    @property
    def stats_columns(self) -> tuple[str, ...]:
        return QUARANTINE_STATS_COLUMNS if self.quarantine else STATS_COLUMNS

    @property
    def mark(self) -> int:
        return _IN_QUARANTINE if self.quarantine else _IN_TABLE


class _Actions:
    """A table's add actions at its handle's version, looked up by path: one Arrow table, no Python dict per file."""

    def __init__(self, table: LakeTable | QuarantineTable | None) -> None:
        self.actions = pa.table({}) if table is None else table.add_actions()
        paths = self.actions.column("path").to_pylist() if "path" in self.actions.column_names else []
        self.row = {path: i for i, path in enumerate(paths)}

    def of(self, path: str) -> dict[str, Any]:
        i = self.row.get(path)
        return {} if i is None else dict(self.actions.slice(i, 1).to_pylist()[0])


class _Verifier:
    """One verification of one version of the events table (and the quarantine table read after it)."""

    def __init__(self, storage: Storage, grace_seconds: float, now: float) -> None:
        self.storage = storage
        self.grace_seconds = grace_seconds
        self.now = now
        self.report = VerifyReport()
        self.table = LakeTable.open(storage)
        self.snap: Snapshot = self.table.snapshot(refresh=False)
        # Read after the events table: every quarantine entry the pipeline committed before its position is in it.
        self.quarantine = QuarantineTable.open(storage)
        self.actions = (_Actions(self.table), _Actions(self.quarantine))  # by phase
        self.inodes: dict[tuple[int, int], str] = {}
        local = isinstance(storage, LocalStorage)
        self.place = "disk" if local else "the bucket"  # where files lie, for messages
        self.at = "on disk" if local else "in the bucket"
        self.unread: list[DataFile] = []  # files that failed with an I/O error or were skipped: their ids unchecked
        self.failed_in_a_row = 0  # files in a row that failed with an I/O error
        self.skipped = 0  # files not read once _GIVE_UP_AFTER failed in a row
        self.window = max(1, int(WINDOW_IDS))  # read at each verification (tests shrink it)
        self.top = -1  # the last event id that must be held: the committed position
        self.windows = 1  # windows of the id space 0..top
        self.expired: int | None = None
        self.missing = _Found()  # ids neither in the table nor in quarantine (nor expired), in id order
        self.unchecked = 0  # absent ids in the range of a file that could not be read: not called missing

    def run(self) -> VerifyReport:
        report, snap = self.report, self.snap
        report.version, report.committed_event_id = snap.version, snap.committed_event_id
        report.expired_through = self.expired = expired = snap.expired_through
        top = snap.committed_event_id
        if top is None:
            if snap.files:
                report.problems.append(
                    f"the table holds {len(snap.files)} file(s) but no committed pipeline position "
                    f"(application transaction {APP_ID})"
                )
            top = snap.max_event_id if snap.max_event_id is not None else -1
        self.top = top
        self.windows = top // self.window + 1 if top >= 0 else 1
        self._check_held_once(snap.files, "table")
        items = [self._item(0, i, self.table, f) for i, f in enumerate(snap.files)]
        pending = 0
        if self.quarantine is not None:
            files = self.quarantine.data_files()
            self._check_held_once(files, "quarantine table")
            for i, f in enumerate(files):
                if f.row_count and f.event_id_min > top:
                    pending += f.row_count  # beyond the committed position: not confirmed yet (or an orphan)
                else:
                    items.append(self._item(1, i, self.quarantine, f))
        self._sweep(sorted(items, key=lambda it: (it.first, it.phase, it.index)))
        if pending:
            report.notes.append(
                f"{pending} quarantined record(s) beyond the committed position: a flush in progress, "
                "or the orphan of one that the pipeline's next start removes"
            )
        if expired is not None:
            report.notes.append(f"event ids 0 to {expired} are expired by retention (RETENTION_DAYS): not missing")
            early = [f.key for f in snap.files if f.row_count and f.event_id_min <= expired]
            if early:
                report.problems.append(
                    f"retention expired the ids through {expired}, but {len(early)} file(s) of the table still hold "
                    f"some (e.g. {early[0]}): an expiry removed only part of them"
                )
        if self.unchecked:
            report.notes.append(
                f"{self.unchecked} event id(s) in the range of the {len(self.unread)} file(s) that could not "
                "be read were not checked"
            )
        if self.skipped:
            report.problems.append(
                f"{self.skipped} file(s) not read: the {_GIVE_UP_AFTER} files before them failed with I/O errors in "
                f"a row ({self.place} is not answering); not damage: verify again"
            )
        if self.missing.count:
            report.problems.append(
                f"{self.missing.count} event id(s) from {0 if expired is None else expired + 1} to {top} are neither "
                "in the table nor in quarantine "
                f"(the first: {self.missing.named()}{self._between(self.missing.examples[0])})"
            )
        self._note_beside()
        return report

    # -- the sweep of the id space ----------------------------------------------------------------------
    def _item(self, phase: int, index: int, table: LakeTable | QuarantineTable, f: DataFile) -> _Item:
        """``f`` to be read whole in the window of its first event id (by its add action)."""
        first = min(max(f.event_id_min, 0) // self.window, self.windows - 1)
        return _Item(first, phase, index, table, f)

    def _sweep(self, items: Sequence[_Item]) -> None:
        """Read the files of ``items`` (sorted by the window they are read whole in) and judge 0..top window by window.

        In each window: the files of the events table, then those of quarantine, each in its table's order
        (as a single pass over the whole id space would read them, so each id is held first by the same file);
        a file read whole in an earlier window has the row groups that hold ids of this one read again (their
        ``event_id`` column only). Then the window's absent ids are counted and the ledger is cleared for the
        next one. Windows that no file reaches are judged together, by arithmetic.
        """
        ledger = _Ledger(self.window if self.windows > 1 else self.top + 1)
        queue = deque(items)
        spanning: dict[tuple[int, int], _Item] = {}  # read whole, with ids of later windows to mark
        window = 0
        while window < self.windows:
            upcoming = [min(it.seen.later) for it in spanning.values() if it.seen is not None]
            if queue:
                upcoming.append(queue[0].first)
            reached = min(upcoming, default=self.windows)
            if reached > window:
                self._judge_span(window * self.window, min(self.top, reached * self.window - 1))
                window = reached
                continue
            base = window * self.window
            ledger.start(base, min(self.top, base + self.window - 1))
            due = [it for it in spanning.values() if it.seen is not None and window in it.seen.later]
            while queue and queue[0].first == window:
                due.append(queue.popleft())
            for it in sorted(due, key=lambda it: (it.phase, it.index)):
                if it.seen is None:
                    it.seen = self._read_whole(it, ledger)
                    if it.seen is None:
                        continue
                else:
                    self._read_again(it, window, ledger)
                if it.seen.later:
                    spanning[it.phase, it.index] = it
                    continue
                spanning.pop((it.phase, it.index), None)
                self._judge_ids(it.f, it.seen, quarantine=it.quarantine)
            self._judge_window(ledger)
            window += 1

    def _read_whole(self, it: _Item, ledger: _Ledger) -> _Seen | None:
        """Read ``it``'s file whole, mark its ids of the ledger's window, and compare it with its add action."""
        seen = self._read(it.table, it.f, it.columns, ledger, it.mark)
        if seen is None:
            return None
        if it.quarantine:
            self.report.quarantined_rows += seen.rows
        else:
            self.report.table_rows += seen.rows
        self._compare(it.f, self.actions[it.phase].of(it.table.path_of(it.f.key)), seen, it.stats_columns)
        if seen.no_reason:
            self.report.problems.append(f"{it.f.key}: {seen.no_reason} quarantined record(s) without a reason")
        if seen.early.count:
            self.report.notes.append(
                f"{it.f.key}: {seen.early.count} event id(s) below the first its add action gives (e.g. "
                f"{seen.early.named()}), among ids judged before it was read: not checked against the other files"
            )
        return seen

    def _read_again(self, it: _Item, window: int, ledger: _Ledger) -> None:
        """Mark ``it``'s ids of ``window``: the ``event_id`` column of the row groups its whole read found holding
        some. If that fails (one problem naming the file), its later windows are dropped: their ids unchecked."""
        seen = it.seen
        assert seen is not None
        row_groups = sorted(seen.later.pop(window))
        marked = False

        def ids_of_window(parquet: pq.ParquetFile) -> None:
            nonlocal marked
            for batch in parquet.iter_batches(batch_size=BATCH_ROWS, row_groups=row_groups, columns=["event_id"]):
                ids = _ids(batch.column("event_id"))
                ids = ids[(ids >= ledger.base) & (ids <= ledger.last)]
                marked = marked or bool(len(ids))
                self._mark(ids, seen, ledger, it.mark)

        if not self._attempt(it.table, it.f, ids_of_window, lambda: marked, identify=False):
            seen.later.clear()

    def _judge_window(self, ledger: _Ledger) -> None:
        """Count the ledger's absent ids (expired ones and those in the range of a file that could not be read
        aside), naming the first few, _CHUNK_IDS ids at a time; the window can then be dropped."""
        start = ledger.base if self.expired is None else max(ledger.base, self.expired + 1)
        for lo in range(start, ledger.last + 1, _CHUNK_IDS):
            hi = min(ledger.last, lo + _CHUNK_IDS - 1)
            absent = ledger.marks[lo - ledger.base : hi - ledger.base + 1] == _ABSENT
            count = int(np.count_nonzero(absent))
            if not count:
                continue
            unread = self._unread_in(lo, hi)
            if not unread and len(self.missing.examples) >= _EXAMPLES:
                self.missing.count += count
                continue
            ids = np.flatnonzero(absent)
            ids += lo
            if unread:
                unchecked = np.zeros(len(ids), dtype=bool)
                for a, b in unread:
                    unchecked |= (ids >= a) & (ids <= b)
                self.unchecked += int(np.count_nonzero(unchecked))
                ids = ids[~unchecked]
            self.missing.add(ids)

    def _judge_span(self, lo: int, hi: int) -> None:
        """Judge the ids ``lo``..``hi`` that no file reaches: every one is absent but the expired ones and those in
        the range of a file that could not be read. Counted by arithmetic: nothing is allocated per id."""
        if self.expired is not None:
            lo = max(lo, self.expired + 1)
        if lo > hi:
            return
        merged: list[list[int]] = []
        for a, b in sorted(self._unread_in(lo, hi)):
            if merged and a <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        covered = sum(b - a + 1 for a, b in merged)
        self.unchecked += covered
        self.missing.count += hi - lo + 1 - covered
        at = lo
        for a, b in [*merged, [hi + 1, hi + 1]]:
            while at < a and len(self.missing.examples) < _EXAMPLES:
                self.missing.examples.append(at)
                at += 1
            at = max(at, b + 1)

    def _unread_in(self, lo: int, hi: int) -> list[tuple[int, int]]:
        """The event-id ranges (by their add actions) of the files that could not be read, within ``lo``..``hi``."""
        return [
            (max(g.event_id_min, lo), min(g.event_id_max, hi))
            for g in self.unread
            if g.row_count and g.event_id_min <= hi and g.event_id_max >= lo
        ]

    # -- reading ----------------------------------------------------------------------------------------
    def _open(self, f: DataFile) -> _Opened:
        """``f`` ready for pyarrow, with its size: FileNotFoundError if it is not there, ReadFailed if the OS or
        the store failed to say (nothing is decoded here).

        On a local lake pyarrow reads the path itself (natively, as fast as it reads any file); elsewhere the
        reads go through :meth:`Storage.open_input` and a :class:`RecordedReads`.
        """
        storage = self.storage
        if isinstance(storage, LocalStorage):
            path = storage.path(f.key)
            try:
                st = path.stat()
            except FileNotFoundError:
                raise
            except OSError as exc:
                raise read_failed(exc) from exc
            return _Opened(path, st.st_size, inode=(st.st_dev, st.st_ino))
        try:
            native = storage.open_input(f.key)  # one request, for the object's size
        except FileNotFoundError:
            raise
        except (OSError, LakeError, pa.ArrowException) as exc:
            raise read_failed(exc) from exc
        reads = RecordedReads(native, f.key)
        return _Opened(pa.PythonFile(reads, mode="r"), reads.size(), reads=reads)

    def _identify(self, f: DataFile, opened: _Opened) -> None:
        """Its size against its add action; on a local file system, not the same file as another key (a link)."""
        if opened.size != f.info.size:
            self.report.problems.append(
                f"{f.key}: {opened.size} bytes {self.at} but {f.info.size} in its add action (the file was changed)"
            )
        if opened.inode is not None:
            if opened.inode in self.inodes:
                self.report.problems.append(f"{f.key}: the same file as {self.inodes[opened.inode]} (added twice)")
            self.inodes[opened.inode] = f.key

    def _read(
        self, table: LakeTable | QuarantineTable, f: DataFile, columns: Sequence[str], ledger: _Ledger, mark: int
    ) -> _Seen | None:
        """Stream ``f``'s columns, row group by row group, marking its ids of the ledger's window (and noting the
        row groups with ids of later windows); None (and one problem naming the file and why) if it cannot be.

        A failed read is tried once more (unless part of the file is in the ledger already: a second pass
        would count it twice). What is then reported is what is known: missing from storage; an I/O failure
        (the OS or a request failed: listed in ``io_failures``, never called damage); or damaged (bytes read
        that do not decode: listed in ``damaged``). A file missing from storage that a newer version no
        longer holds raises _Vanished (a newer snapshot exists). After _GIVE_UP_AFTER files in a row failed
        with I/O errors, the remaining files are not read, only counted.
        """
        attempts: list[_Seen] = []

        def whole(parquet: pq.ParquetFile) -> None:
            seen = _Seen()
            attempts.append(seen)
            for group in range(parquet.num_row_groups):
                for batch in parquet.iter_batches(batch_size=BATCH_ROWS, row_groups=[group], columns=list(columns)):
                    self._take(batch, seen, ledger, mark, group)

        if not self._attempt(table, f, whole, lambda: bool(attempts and attempts[-1].rows), identify=True):
            return None
        self.report.files_checked += 1
        return attempts[-1]

    def _attempt(
        self,
        table: LakeTable | QuarantineTable,
        f: DataFile,
        body: Callable[[pq.ParquetFile], None],
        progressed: Callable[[], bool],
        *,
        identify: bool,
    ) -> bool:
        """Open ``f`` and run ``body`` on it: True if that went through; False, with one problem, if it did not
        (see :meth:`_read`). A failure is tried once more unless ``progressed()``; ``identify`` checks the file
        against its add action first (its size, and on a local disk that it is no other key's file)."""
        if self.failed_in_a_row >= _GIVE_UP_AFTER:
            self.skipped += 1
            self.unread.append(f)
            return False
        error: BaseException | None = None
        io = False
        for _ in range(_READ_TRIES):
            opened: _Opened | None = None
            try:
                opened = self._open(f)
                if identify:
                    self._identify(f, opened)
                    identify = False
                with pq.ParquetFile(opened.source) as parquet:
                    body(parquet)
            except FileNotFoundError as exc:
                if not progressed():
                    self._missing(table, f)
                    return False
                error, io = exc, True
                break
            except (ReadFailed, OSError, ValueError, KeyError, pa.ArrowException) as exc:
                error, io = exc, _is_io(exc, opened)
                if progressed():
                    break
                continue
            finally:
                if opened is not None:
                    opened.close()
            self.failed_in_a_row = 0
            return True
        assert error is not None  # the loop ends early only after a failure
        detail = str(error) if isinstance(error, ReadFailed) else f"{type(error).__name__}: {one_line(error)}"
        if io:
            self._io_failure(f, f"not checked: reading it failed ({detail}); an I/O failure, not damage: verify again")
        else:
            self.failed_in_a_row = 0
            self.report.damaged.append(f.key)
            self.report.problems.append(
                f"{f.key}: unreadable: damaged, its bytes were read and do not decode as its table's Parquet ({detail})"
            )
        return False

    def _missing(self, table: LakeTable | QuarantineTable, f: DataFile) -> None:
        """``f`` is not in storage: gone with a newer version (raise _Vanished), or lost from the table (a problem)."""
        try:
            table.refresh()
            held = f.key in {g.key for g in table.data_files()}
        except LakeError as exc:
            self._io_failure(
                f,
                f"missing from {self.place}, and the newest version of the log could not be read to tell whether a "
                f"compaction removed it ({one_line(exc)}): an I/O failure, not damage: verify again",
            )
            return
        if not held:
            raise _Vanished(f.key)
        self.failed_in_a_row = 0
        self.report.problems.append(
            f"{f.key}: in the table's log (version {table.version}) but missing from {self.place}"
        )

    def _io_failure(self, f: DataFile, what: str) -> None:
        self.failed_in_a_row += 1
        self.unread.append(f)
        self.report.io_failures.append(f.key)
        self.report.problems.append(f"{f.key}: {what}")

    def _take(self, batch: pa.RecordBatch, seen: _Seen, ledger: _Ledger, mark: int, row_group: int) -> None:
        """One batch of a whole read: its statistics, and its ids sorted out by where they fall."""
        column = batch.column("event_id")
        seen.rows += batch.num_rows
        seen.null_ids += column.null_count
        ids = _ids(column)
        for name in batch.schema.names:
            if name != "reason":
                seen.bound(name, batch.column(name))
        if "reason" in batch.schema.names:
            reasons = pc.utf8_trim_whitespace(batch.column("reason"))
            seen.no_reason += int(pc.sum(pc.or_kleene(pc.is_null(reasons), pc.equal(reasons, ""))).as_py() or 0)
        outside = (ids < 0) | (ids > self.top)
        if outside.any():
            seen.outside.add(ids[outside])
            ids = ids[~outside]
        early = ids < ledger.base
        if early.any():
            seen.early.add(ids[early])
            ids = ids[~early]
        late = ids > ledger.last
        if late.any():
            for window in np.unique(ids[late] // self.window).tolist():
                seen.later.setdefault(int(window), set()).add(row_group)
            ids = ids[~late]
        self._mark(ids, seen, ledger, mark)

    @staticmethod
    def _mark(ids: np.ndarray, seen: _Seen, ledger: _Ledger, mark: int) -> None:
        in_table, in_quarantine = ledger.add(ids, mark)
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

    def _judge_ids(self, f: DataFile, seen: _Seen, *, quarantine: bool) -> None:
        top = self.top
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

    def _note_beside(self) -> None:
        try:
            beside = _beside(self.storage, set(self.snap.keys))
            if self.quarantine is not None:
                held = {f.key for f in self.quarantine.data_files()}
                beside += [f for f in self.storage.list_files(layout.QUARANTINE) if f.key not in held]
            leftovers = self.storage.list_all(layout.TEMP)
        except LakeError as exc:
            self.report.notes.append(f"files beside the tables not looked for: listing failed ({one_line(exc)})")
            return
        if beside:
            overdue = [f for f in beside if self.now - f.mtime_ns / 1e9 > self.grace_seconds + 60]
            message = (
                f"{len(beside)} file(s) {self.at} that no table holds (replaced, orphaned or foreign): "
                "never read, deleted after the grace period"
            )
            if overdue:
                message += self._overdue(len(overdue))
            self.report.notes.append(message)
        if leftovers:
            self.report.notes.append(
                f"{len(leftovers)} file(s) in temp/ (e.g. {leftovers[0].key}): unfinished writes, "
                "removed by their process's next start"
            )

    def _overdue(self, n: int) -> str:
        """What to say of ``n`` files past the grace period: whether a compactor runs to delete them.

        Locally the compactor's lock says it. On object storage no lock can be seen from here: the lease
        (:mod:`lake.lease`, one GET) names the compactor holding it, live until its expiry plus the allowed
        clock skew; if it cannot be read, that is said instead.
        """
        storage = self.storage
        if isinstance(storage, LocalStorage):
            running = LakeLock(storage.root, layout.COMPACTOR_LOCK, "compactor").is_locked_elsewhere()
            return "" if running else f"; {n} past it with no compactor running to clean up"
        if not isinstance(storage, ObjectStorage):
            return f"; {n} past it (whether a compactor runs cannot be told on {storage.location})"
        try:
            lease = Lease(storage.store).read()
        except LakeError as exc:
            return f"; {n} past it (the compactor's lease {LEASE_KEY} could not be read: {one_line(exc)})"
        if lease is None:
            return f"; {n} past it with no compactor running to clean up (no lease {LEASE_KEY})"
        if lease.released or self.now > lease.expires_at + DEFAULT_MAX_SKEW_S:
            return f"; {n} past it with no compactor running to clean up (its lease {LEASE_KEY}: {lease.describe()})"
        return f"; {n} past it, for the compactor holding the lease to delete ({lease.describe()})"


def _is_io(error: BaseException, opened: _Opened | None) -> bool:
    """True if ``error`` is the OS or the store failing (an I/O failure), False if it is about bytes read whole."""
    if isinstance(error, ReadFailed):
        return True
    if opened is not None and opened.reads is not None:
        return opened.reads.failure is not None
    return isinstance(error, OSError) and error.errno is not None  # the OS said why: EIO, ESTALE, EACCES, ...


def verify(storage: Storage, grace_seconds: float, now: float | None = None) -> VerifyReport:
    """Check the lake is whole at one version of its table; read-only, safe while the pipeline and compactor run.

    Runs on any backend (a local directory, S3-compatible object storage), streaming each file in batches
    and judging the ids window by window (memory bounded whatever the lake's size or the span of its ids:
    see the module). Each file that cannot be read is one
    problem naming it, its cause known: missing, an I/O failure (``io_failures``: the disk or a request
    failed, which is never called damage) or damaged (``damaged``: bytes read that do not decode); after
    a few I/O failures in a row the rest is counted, not read. A file that leaves the table and storage
    while it is verified (a compaction and its clean-up) starts the verification over on the newer
    version, a bounded number of times. Raises UnmigratedLakeError for a lake in the previous layout,
    LakeError if a table's log cannot be read at all (nothing is judged then); a lake without a table is
    empty, hence whole.
    """
    now = time.time() if now is None else now
    if not ensure_migrated(storage):
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
