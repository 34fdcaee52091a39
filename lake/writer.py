"""The buffered writer: Arrow tables in, whole landing (and quarantine) files out, on size or age.

:class:`BufferedWriter` is a context manager with two named thresholds (:class:`FlushThresholds`):
a flush starts when ``records`` (valid and refused alike) are buffered, or ``interval_seconds`` after
the oldest buffered record arrived (for valid records from the live head of the stream, after its event
time if that is sooner, so the wait for the poll counts against the interval: see
:meth:`BufferedWriter.add`). Refused records count as much as valid ones, so memory stays bounded
whatever the mix, a source that sends only refused records included.
Two threads own all writing, so the time-based flush fires whatever the caller is doing
(waiting on a slow source, sleeping through an outage), and writing one file overlaps fetching
the next batch: the flusher cuts flushes and publishes their files, and the committer commits them
one at a time in the order they were cut, so publishing flush N+1 overlaps committing flush N.
Leaving the ``with`` block normally flushes everything; leaving it by an exception does not (nothing
half-written survives either way).

A flush commits in a fixed order (the lake's protocol, ``docs/lake-protocol.md``):

1. the refused records below the flush's last valid event id are published into ``quarantine/`` and
   appended to the quarantine table (:class:`~lake.table.QuarantineTable`, created on first use);
2. the valid records are published as one landing file (LAKE_SCHEMA, rows in event_id order, Snappy,
   staged in ``temp/`` and linked into ``landing/`` whole), or in a table partitioned by date
   (:mod:`lake.partitions`) one file per date they span, each in ``landing/date=YYYY-MM-DD/``;
3. one commit to the events table adds those files and moves the pipeline's position (the ``txn`` of
   :data:`lake.table.APP_ID`) from where this writer last put it to the flush's last valid event id.

Publishing (1's file, 2) happens ahead on the flusher thread; the commits (1's append, 3) follow on
the committer thread, after every commit of the flushes before. A published file is inert until its
commit, so what the order guarantees is unchanged: every quarantine entry is committed before the
commit that moves the position past it, and positions only move forward.

A flush with refused records and no valid one (the refused records after the last valid one, once
they are due on their own) skips step 2, and step 3 is a commit that adds no file and only moves the
position to its last refused event id (:meth:`~lake.table.LakeTable.advance`). Only step 3 makes the
records part of the lake, and every quarantine entry is confirmed by the commit right after it; a
crash before that commit leaves an orphan (a landing file no reader sees, a quarantine entry beyond
the position) that the next start removes (:mod:`ingestion.resume`).

A failed step (``OSError`` such as ENOSPC, ``CommitError``, a ``LakeError`` from the log) leaves
nothing partial: the records stay held, the failure is logged, and the flush is retried with a
capped backoff, resuming at the step that failed with the files already published (so a retry
leaves no second copy behind, and :meth:`~lake.table.LakeTable.append` is idempotent across
failures). :class:`~utils.errors.FencedError` is different: another writer moved the position, so
this one is a zombie; the flusher stops at once and never retries (retrying could duplicate what the
other writer commits), and the error is the writer's :attr:`BufferedWriter.fatal_error`. While a
flush is failing, no new flush starts and :meth:`BufferedWriter.add` blocks once a full buffer is
waiting (back-pressure instead of unbounded memory). Memory holds at most the buffer and two flushes
in progress (one being published, one being committed): about three times ``records``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Final

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from lake import layout, partitions, quarantine
from lake import parquet as lake_parquet
from lake.filestats import FileStats
from lake.storage import FileInfo, Storage
from lake.table import LakeTable, QuarantineTable, column_problem
from utils.config import Settings
from utils.errors import CommitError, FencedError, LakeError
from utils.records import LAKE_SCHEMA, QUARANTINE_SCHEMA, RECORD_SCHEMA, with_duration
from utils.retry import Backoff

log = logging.getLogger(__name__)

LANDING_KIND: Final = "landing"  # landing files and their temp files start with this
OWN_KINDS: Final[tuple[str, ...]] = (LANDING_KIND, quarantine.KIND)

FLUSH_RETRY: Final = Backoff(first=0.2, factor=2.0, cap=5.0)  # a failed flush is retried after these delays
# Names an extra field may not take (any letter case): the lake's own columns and the partition column.
_RESERVED: Final = frozenset(name.lower() for name in partitions.TABLE_SCHEMA.names)
_EXACT_IN_FLOAT: Final = 2**53  # integers up to this magnitude are exact in a float64
CLOSE_TIMEOUT_SECONDS: Final = 30.0


def file_name(kind: str, table: pa.Table) -> str:
    """A new, never-colliding name for a file of ``kind`` holding ``table`` (lake.layout's grammar)."""
    lo, hi = lake_parquet.event_id_range(table)
    return layout.new_file_name(kind, lo, hi)


def publish_table(
    storage: Storage, table: pa.Table, zone: str, name: str, extra_metadata: dict[str, str] | None = None
) -> FileInfo:
    """Write ``table`` as ``zone/name``: staged in temp/, published whole, with the badge metadata.

    Idempotent by name: if ``zone/name`` exists, an earlier call published it and then failed after
    the link (a directory fsync): it is made durable and returned, never written a second time.
    Nothing partial survives a failure (CommitError/OSError).
    """
    published = storage.published(f"{zone}/{name}")
    if published is not None:
        return published
    return lake_parquet.write_file(storage, table, zone, name.split("-", 1)[0], extra_metadata, name=name)


def write_landing(storage: Storage, table: pa.Table, name: str | None = None, day: partitions.Day = None) -> FileInfo:
    """Publish a LAKE_SCHEMA table as one landing file (not yet part of the lake: a commit adds it), in the
    directory of its date partition ``day`` (``landing/date=YYYY-MM-DD/``; ``landing/`` for None).

    Carries ``badge.event_id_min/max`` and ``badge.row_count`` (for humans: nothing reads them);
    ``name`` (default: a new one) makes a retry find the file an earlier attempt published.
    """
    zone = partitions.directory(layout.LANDING, day)
    return publish_table(storage, table, zone, name or file_name(LANDING_KIND, table))


def write_quarantine(storage: Storage, table: pa.Table, name: str | None = None) -> FileInfo:
    """Publish refused records (QUARANTINE_SCHEMA) as one file in ``quarantine/``, as :func:`write_landing`."""
    table = quarantine.conform(table)
    reason = {layout.META_REASON: quarantine.reason_summary(table)}
    return publish_table(storage, table, layout.QUARANTINE, name or file_name(quarantine.KIND, table), reason)


class WriterClosedError(LakeError):
    """Records were offered to a writer that is closing or closed; they were not taken."""


@dataclass(frozen=True)
class FlushThresholds:
    """When the writer flushes: at ``records`` buffered, or ``interval_seconds`` after the oldest arrived."""

    records: int
    interval_seconds: float

    def __post_init__(self) -> None:
        if self.records < 1 or self.interval_seconds <= 0:
            raise ValueError(f"invalid flush thresholds {self}")

    @classmethod
    def from_settings(cls, settings: Settings) -> FlushThresholds:
        return cls(settings.buffer_records, settings.flush_interval_seconds)


@dataclass(frozen=True)
class Commit:
    """One finished flush: the files its commits added, and the wall-clock instant it became visible."""

    landing_keys: tuple[str, ...]  # one per date in a partitioned table; none for refused records only
    quarantine_key: str | None
    records: int
    refused: int
    event_id_max: int
    newest_event_time: datetime | None  # max badge_out_timestamp of the landing file (naive UTC)
    committed_at: float  # time.time()


@dataclass(frozen=True)
class WriterStats:
    """A consistent snapshot of the writer's counters."""

    buffered: int  # records held (valid + refused), including a flush in progress
    records_committed: int
    refused_committed: int
    files_written: int  # landing files
    quarantine_files: int
    failed_attempts: int
    next_event_id: int | None  # one past the highest committed event id (None before the first flush)
    newest_event_time: datetime | None


@dataclass
class _Piece:
    """One landing file of a flush: its rows (LAKE_SCHEMA, one date in a partitioned table), chosen once."""

    table: pa.Table
    day: partitions.Day
    stats: FileStats
    name: str
    info: FileInfo | None = None  # published into landing/


@dataclass
class _Flush:
    """A cut of the buffer being committed; survives failed attempts so a retry resumes where it stopped.

    The file names are chosen once, so a retry after a failure past a publish's link finds that file
    instead of publishing a second copy; a published file is reused until its commit lands.
    """

    valid: pa.Table  # RECORD_SCHEMA, event_id order; no rows for a flush of refused records only
    refused: pa.Table | None  # QUARANTINE_SCHEMA: ids below valid's last id, or all of them if no valid
    event_id_min: int
    event_id_max: int
    pieces: list[_Piece] | None = None  # its landing files: one per date (partitioned table) or one
    quarantine_name: str | None = None
    quarantine: FileInfo | None = None  # published into quarantine/
    quarantine_done: bool = False  # appended to the quarantine table
    committed: bool = False  # the landing files are in the events table
    attempts: int = 0

    @property
    def rows(self) -> int:
        refused: int = self.refused.num_rows if self.refused is not None else 0
        return int(self.valid.num_rows) + refused


class BufferedWriter:
    """Buffers Arrow tables of records and commits them as whole files on size, age, request or close.

    ``table`` is the open events table (the flusher thread uses it from then on: give the writer a
    handle of its own) and ``position`` the pipeline's committed position when the writer starts (the
    last event id committed, None for none): each commit moves it, and fails with FencedError if
    another writer moved it meanwhile. The quarantine table is opened (created) on the first refused
    records. Thread-safe: one thread (or several, in event_id order) calls :meth:`add`; the flusher
    thread writes. Guarantees: files hold rows in event_id order; every committed record is committed
    exactly once; a failed flush leaves nothing partial and is retried; a fenced one is not.
    """

    def __init__(
        self,
        storage: Storage,
        thresholds: FlushThresholds,
        *,
        table: LakeTable,
        position: int | None,
        on_commit: Callable[[Commit], None] | None = None,
        retry: Backoff = FLUSH_RETRY,
    ) -> None:
        self.storage = storage
        self.thresholds = thresholds
        self._table = table
        self._partitioned = table.partitioned  # read here, once: the handle is the committer's from now on
        # The extra fields' types (schema evolution): the table's columns, then each new field as first seen.
        self._extras: dict[str, pa.DataType] = {f.name: f.type for f in table.extra_fields()}
        self._position = position  # the flusher's: the last event id this writer knows committed
        self._quarantine_table: QuarantineTable | None = None
        self._on_commit = on_commit
        self._retry = retry
        self._cond = threading.Condition()
        self._valid: list[pa.Table] = []
        self._refused: list[pa.Table] = []
        self._valid_rows = 0
        self._refused_rows = 0
        self._deadline: float | None = None  # monotonic instant the buffered valid records are due
        self._refused_deadline: float | None = None  # the same for the buffered refused records
        self._last_valid_id: int | None = None
        self._last_seen_id: int | None = position  # records at or below the position are committed already
        self._preparing: _Flush | None = None  # cut, its files being written by the flusher thread
        self._committing: _Flush | None = None  # its files written, being committed by the committer thread
        self._flusher_done = False  # the flusher thread has exited: nothing more reaches the committer
        self._committer_done = False  # the committer thread has exited (gave up, fenced or done)
        self._retrying = False  # the committer's last attempt failed: no new flush starts until it lands
        self._flush_requested = False
        self._closing = False
        self._abort = False
        self._close_deadline = float("inf")
        self._fatal: BaseException | None = None
        self._threads: tuple[threading.Thread, ...] = ()
        # counters (under _cond)
        self._records_committed = 0
        self._refused_committed = 0
        self._files_written = 0
        self._quarantine_files = 0
        self._failed_attempts = 0
        self._next_event_id: int | None = None
        self._newest_event_time: datetime | None = None

    # -- life cycle ---------------------------------------------------------------------------------
    def start(self) -> BufferedWriter:
        """Start the flusher and the committer threads (idempotent)."""
        if not self._threads:
            self._threads = (
                threading.Thread(target=self._run_flusher, name="lake-flusher", daemon=True),
                threading.Thread(target=self._run_committer, name="lake-committer", daemon=True),
            )
            for thread in self._threads:
                thread.start()
        return self

    def __enter__(self) -> BufferedWriter:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def close(self, timeout: float = CLOSE_TIMEOUT_SECONDS) -> None:
        """Flush everything flushable, retrying failures for up to ``timeout`` seconds, and stop.

        Raises CommitError if records could not be committed in time (they were not published, so a
        restarted pipeline fetches them again), or the error that stopped the flusher.
        """
        self.start()  # so that close() always flushes, even if the thread was never started
        with self._cond:
            self._closing = True
            self._close_deadline = time.monotonic() + timeout
            self._cond.notify_all()
        self._join()
        with self._cond:
            if self._fatal is not None:
                raise self._fatal
            left = self._held_rows()
            if left:
                raise CommitError(
                    f"gave up after {timeout:.0f} s: {left:,} buffered records were not committed "
                    "(nothing partial was published; a restarted pipeline fetches them again)"
                )

    def abort(self) -> None:
        """Stop without flushing (after an exception): a flush in progress finishes, nothing new starts."""
        with self._cond:
            self._closing = True
            self._abort = True
            self._cond.notify_all()
        self._join()

    def _join(self) -> None:
        for thread in self._threads:
            thread.join()

    # -- input --------------------------------------------------------------------------------------
    def add(self, valid: pa.Table, refused: pa.Table | None = None, *, live: bool = False, block: bool = True) -> None:
        """Buffer ``valid`` (RECORD_SCHEMA) and ``refused`` (QUARANTINE_SCHEMA) records of one source range.

        Ids must be strictly increasing and above everything added before. Blocks while a full buffer
        is already waiting to be written (back-pressure); raises WriterClosedError once closing.

        The buffer is due ``interval_seconds`` after its oldest record arrived. ``live=True``
        says the records are the head of a live stream (the source had no more): they are then due
        at the latest ``interval_seconds`` after their *event time* (``badge_out_timestamp``, naive
        UTC) too, so the time a record waited for the poll counts against the interval, and the
        event-to-lake latency stays near max(interval, poll interval) rather than their sum.
        """
        refused = self._conform(refused, QUARANTINE_SCHEMA) if refused is not None and refused.num_rows else None
        with self._cond:
            valid, changed = self._admit(valid)
        if changed is not None:  # refused for a field whose type changed: with the others, in id order
            refused = changed if refused is None else pa.concat_tables([refused, changed]).sort_by("event_id")
        first = self._check_order(valid, refused)
        with self._cond:
            while block and self._full() and not self._closing:
                self._cond.wait()
            if self._closing:
                raise WriterClosedError("the writer is closing; records not taken")
            if self._fatal is not None:
                raise self._fatal
            if self._last_seen_id is not None and first is not None and first <= self._last_seen_id:
                raise ValueError(f"event ids go backwards: {first} after {self._last_seen_id}")
            now = time.monotonic()
            if valid.num_rows:
                self._valid.append(valid)
                self._valid_rows += valid.num_rows
                self._last_valid_id = int(valid.column("event_id")[-1].as_py())
                due = now + self.thresholds.interval_seconds
                if live:
                    due = min(due, self._event_time_deadline(valid, now))
                self._deadline = due if self._deadline is None else min(self._deadline, due)
            if refused is not None:
                self._refused.append(refused)
                self._refused_rows += refused.num_rows
                if self._refused_deadline is None:
                    self._refused_deadline = now + self.thresholds.interval_seconds
            last = self._last_of(valid, refused)
            if last is not None:
                self._last_seen_id = last
            self._cond.notify_all()

    def flush(self, timeout: float = CLOSE_TIMEOUT_SECONDS) -> bool:
        """Ask for an immediate flush of everything flushable and wait for it; True if it was committed."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._flush_requested = True
            self._cond.notify_all()
            while self._held_rows() and self._fatal is None:
                left = deadline - time.monotonic()
                if left <= 0 or not self._threads or not all(t.is_alive() for t in self._threads):
                    return False
                self._cond.wait(left)
            return self._fatal is None

    # -- state --------------------------------------------------------------------------------------
    def stats(self) -> WriterStats:
        with self._cond:
            return WriterStats(
                buffered=self._held_rows(),
                records_committed=self._records_committed,
                refused_committed=self._refused_committed,
                files_written=self._files_written,
                quarantine_files=self._quarantine_files,
                failed_attempts=self._failed_attempts,
                next_event_id=self._next_event_id,
                newest_event_time=self._newest_event_time,
            )

    @property
    def fatal_error(self) -> BaseException | None:
        """The error that stopped the flusher, if any: FencedError, or an unexpected one (retryable errors never do)."""
        with self._cond:
            return self._fatal

    # -- helpers ------------------------------------------------------------------------------------
    def _admit(self, valid: pa.Table) -> tuple[pa.Table, pa.Table | None]:
        """Under the lock: ``valid`` as RECORD_SCHEMA followed by the extra fields it carries (schema
        evolution), and the records refused for an extra field the table cannot take (QUARANTINE_SCHEMA).

        An extra field keeps its type for good from the first value seen (the table's column, or the first
        batch with a value: a field with nulls only is not a column yet). A value of another type refuses its
        record with a reason naming the field and both types, never a silent cast; the one conversion made is
        the exact one, integers into a float64 column (JSON does not tell ``1.0`` from ``1``). So is refused a
        value of a type no Delta column holds, and a field whose name is a table column's in another letter
        case. Nulls fit any type.
        """
        base = self._conform(valid.select(RECORD_SCHEMA.names), RECORD_SCHEMA)
        extras = [f for f in valid.schema if f.name not in RECORD_SCHEMA.names]
        if not extras:
            return base, None
        refused = np.zeros(valid.num_rows, dtype=bool)
        reasons = np.full(valid.num_rows, None, dtype=object)

        def refuse(rows: npt.NDArray[np.bool_], reason: str) -> None:
            nonlocal refused
            reasons[rows & ~refused] = reason
            refused = refused | rows

        for field in extras:
            column = valid.column(field.name)
            known = self._extras.get(field.name)
            if known is None and column.null_count == len(column):
                continue  # no value yet: no type to fix, and a missing column reads as these nulls
            present = column.is_valid().to_numpy(zero_copy_only=False)
            twins = [name for name in self._extras if name.lower() == field.name.lower() and name != field.name]
            problem = None
            if field.name.lower() in _RESERVED:
                problem = "its name is taken by one of the table's own columns"
            elif known is None and twins:
                problem = f"its name differs from the column {twins[0]} only in letter case"
            elif known is None:
                problem = column_problem(field)
                if problem is None:
                    known = self._extras[field.name] = field.type
            elif known != field.type and pa.types.is_float64(known) and pa.types.is_integer(field.type):
                inexact = pc.fill_null(pc.greater(pc.abs(column), _EXACT_IN_FLOAT), False)
                refuse(inexact.to_numpy(zero_copy_only=False), f"field {field.name}: beyond a float64's exact integers")
                column = pc.if_else(inexact, pa.scalar(None, field.type), column).cast(known)
            elif known != field.type:
                problem = f"its type changed: {field.type} where the table holds {known}"
            if problem is not None:
                refuse(present, f"field {field.name}: {problem}")
                if known is None:
                    continue  # never stored: no column for it
                column = pa.nulls(len(column), known)
            base = base.append_column(pa.field(field.name, known, nullable=True), column)
        if not refused.any():
            return base, None
        mask = pa.array(refused)
        out = quarantine.from_records(valid.filter(mask).select(RECORD_SCHEMA.names), reasons[refused].tolist())
        return base.filter(pc.invert(mask)), out

    @staticmethod
    def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
        if table.schema.equals(schema, check_metadata=False):
            return table
        return table.select(schema.names).cast(schema)

    @staticmethod
    def _check_order(valid: pa.Table, refused: pa.Table | None) -> int | None:
        """Check each table's ids strictly increase; return the first id of the two (None if no ids)."""
        firsts: list[int] = []
        for table in (valid, refused):
            if table is None or not table.num_rows:
                continue
            ids = table.column("event_id")
            if ids.null_count:
                ids = ids.drop_null()
            arr = np.asarray(ids.to_numpy(), dtype=np.int64)
            if len(arr) > 1 and not bool(np.all(arr[1:] > arr[:-1])):
                raise ValueError("event ids within a batch must strictly increase")
            if len(arr):
                firsts.append(int(arr[0]))
        return min(firsts) if firsts else None

    @staticmethod
    def _last_of(valid: pa.Table, refused: pa.Table | None) -> int | None:
        lasts = []
        if valid.num_rows:
            lasts.append(int(valid.column("event_id")[-1].as_py()))
        if refused is not None:
            m = pc.max(refused.column("event_id")).as_py()
            if m is not None:
                lasts.append(int(m))
        return max(lasts) if lasts else None

    def _stopped(self) -> bool:
        """Under the lock: aborted, fatally stopped, or the committer gave up: no flush may start or pass on."""
        return self._abort or self._fatal is not None or self._committer_done

    def _held_rows(self) -> int:
        """Under the lock: the records not committed yet, buffered or in one of the two flushes in progress."""
        in_progress = sum(f.rows for f in (self._preparing, self._committing) if f is not None)
        return self._valid_rows + self._refused_rows + in_progress

    def _full(self) -> bool:
        """Under the lock: a whole flush is waiting (valid and refused records count alike)."""
        return self._valid_rows + self._refused_rows >= self.thresholds.records

    def _due(self) -> bool:
        """Under the lock: is a flush due now? On size, age, request or close, whatever the mix."""
        if not self._valid_rows and not self._refused_rows:
            return False
        if self._closing or self._flush_requested or self._full():
            return True
        due = self._next_due()
        return due is not None and time.monotonic() >= due

    def _next_due(self) -> float | None:
        """Under the lock: the instant the oldest buffered record is due (None with nothing buffered)."""
        deadlines = [d for d in (self._deadline, self._refused_deadline) if d is not None]
        return min(deadlines) if deadlines else None

    def _wait_time(self) -> float | None:
        due = self._next_due()
        return None if due is None else max(0.0, due - time.monotonic())

    def _event_time_deadline(self, valid: pa.Table, now: float) -> float:
        """The monotonic instant ``interval_seconds`` after the oldest event time in ``valid``."""
        oldest_us = pc.min(valid.column("badge_out_timestamp")).cast(pa.int64()).as_py()
        return float(now + (oldest_us / 1e6 + self.thresholds.interval_seconds - time.time()))

    def _cut(self) -> _Flush:
        """Under the lock: take the flushable part of the buffer.

        With valid records: them and the refused records below the last of them (a refused tail after it
        stays, due on its own). Without: every refused record, for a flush that only moves the position.
        """
        refused: pa.Table | None = None
        tail: pa.Table | None = None
        everything = pa.concat_tables(self._refused) if self._refused else None
        if self._valid_rows:
            # Tables with and without a later field (schema evolution) concatenate with nulls where it is absent.
            valid = pa.concat_tables(self._valid, promote_options="default") if len(self._valid) > 1 else self._valid[0]
            hi = self._last_valid_id
            assert hi is not None
            if everything is not None:
                # Null ids (unparseable) travel with the flush they arrived before.
                below = pc.less(pc.fill_null(everything.column("event_id"), -1), hi)
                refused = everything.filter(below)
                tail = everything.filter(pc.invert(below))
                refused = refused if refused.num_rows else None
                tail = tail if tail.num_rows else None
            lo = int(valid.column("event_id")[0].as_py())
        else:
            assert everything is not None
            valid, refused = RECORD_SCHEMA.empty_table(), everything
            top = pc.max(everything.column("event_id")).as_py()
            # Ids are null only where a caller bypassed placement; the position then stays where it is.
            hi = int(top) if top is not None else (self._position if self._position is not None else -1)
            lo = hi
        if refused is not None:
            rmin = pc.min(refused.column("event_id")).as_py()
            lo = min(lo, int(rmin)) if rmin is not None else lo
        self._valid = []
        self._valid_rows = 0
        self._deadline = None
        self._refused = [tail] if tail is not None else []
        self._refused_rows = tail.num_rows if tail is not None else 0
        if tail is None:
            self._refused_deadline = None
            self._flush_requested = False  # a requested flush also takes the tail, in a flush of its own
        self._cond.notify_all()  # room for add()
        return _Flush(valid=valid, refused=refused, event_id_min=lo, event_id_max=hi)

    # -- the flusher and the committer ---------------------------------------------------------------
    # Two threads, so that writing one flush's files overlaps committing the flush before it (the
    # commit, a refresh of the log and the Parquet encoding each release the GIL). The flusher cuts a
    # flush and publishes its files; the committer commits flushes one at a time, in the order they
    # were cut, retrying each until it lands (or is fenced): commits stay in event-id order, and at most
    # two flushes are in progress beside the buffer.
    def _run_flusher(self) -> None:
        try:
            while True:
                with self._cond:
                    while True:
                        if self._stopped():
                            return
                        if not self._due():
                            if self._closing:
                                return
                            self._cond.wait(self._wait_time())
                        elif self._retrying:  # due, but wait for the failing commit: memory stays bounded
                            self._cond.wait()
                        else:
                            flush = self._preparing = self._cut()
                            break
                self._prepare(flush)
                with self._cond:
                    while self._committing is not None and not self._stopped():
                        self._cond.wait()
                    if self._stopped():
                        return  # its files stay uncommitted: inert, cleaned up after grace; its records held
                    self._committing, self._preparing = flush, None
                    self._cond.notify_all()
        except Exception as exc:  # a bug or an unexpected library error: stop loudly, never loop on it
            log.exception("the flusher stopped on an unexpected error")
            self._stop_on(exc)
        finally:
            with self._cond:
                self._flusher_done = True
                self._cond.notify_all()

    def _prepare(self, flush: _Flush) -> None:
        """Publish the flush's files ahead of its commit; a failure counts as a failed attempt of the
        flush, and the committer retries it."""
        try:
            self._publish(flush)
        except (OSError, LakeError) as exc:
            with self._cond:
                self._failed_attempts += 1
                flush.attempts += 1
            log.warning(
                "publishing events %d..%d failed (attempt %d): %s; records kept, the committer retries",
                flush.event_id_min,
                flush.event_id_max,
                flush.attempts,
                exc,
            )

    def _run_committer(self) -> None:
        try:
            self._commit_in_order()
        finally:
            with self._cond:
                self._committer_done = True
                self._cond.notify_all()

    def _commit_in_order(self) -> None:
        failures = 0  # consecutive failed attempts
        while True:
            with self._cond:
                while self._committing is None:
                    # The flusher leaves a flush behind only when stopped (abort, fatal): nothing more will come.
                    if self._abort or self._fatal is not None or self._flusher_done:
                        return
                    self._cond.wait()
                flush = self._committing
            try:
                commit = self._commit(flush)
            except FencedError as exc:  # a zombie: another writer owns the position; never retried
                log.error(
                    "flush of events %d..%d refused: %s (its records were not committed by this writer)",
                    flush.event_id_min,
                    flush.event_id_max,
                    exc,
                )
                self._stop_on(exc)
                return
            except (OSError, LakeError) as exc:
                with self._cond:
                    self._failed_attempts += 1
                    self._retrying = True
                    flush.attempts += 1
                    failures += 1
                    delay = self._retry.delay(failures)
                    give_up = self._abort or (self._closing and time.monotonic() >= self._close_deadline)
                    log.warning(
                        "flush of events %d..%d failed (attempt %d): %s; %s",
                        flush.event_id_min,
                        flush.event_id_max,
                        flush.attempts,
                        exc,
                        "giving up (shutting down)" if give_up else f"records kept, retrying in {delay:.1f} s",
                    )
                    if give_up:
                        return
                    retry_at = time.monotonic() + delay
                    while not self._abort and (left := retry_at - time.monotonic()) > 0:
                        self._cond.wait(left)
                continue
            except Exception as exc:  # a bug or an unexpected library error: stop loudly, never loop on it
                log.exception("the committer stopped on an unexpected error")
                self._stop_on(exc)
                return
            failures = 0
            self._count(commit)
            if self._on_commit is not None:
                self._on_commit(commit)

    def _stop_on(self, exc: BaseException) -> None:
        """Stop the flusher for good: ``exc`` becomes the writer's fatal error, add() refuses from now on."""
        with self._cond:
            self._fatal = exc
            self._closing = True
            self._cond.notify_all()

    def _count(self, commit: Commit) -> None:
        """The flush is done: count it, and make room for the next one."""
        with self._cond:
            self._committing = None
            self._retrying = False
            self._records_committed += commit.records
            self._refused_committed += commit.refused
            self._files_written += len(commit.landing_keys)
            self._quarantine_files += 1 if commit.quarantine_key else 0
            self._next_event_id = commit.event_id_max + 1
            if commit.newest_event_time is not None:
                newest = self._newest_event_time
                self._newest_event_time = (
                    commit.newest_event_time if newest is None else max(newest, commit.newest_event_time)
                )
            self._cond.notify_all()

    def _quarantine(self) -> QuarantineTable:
        """The quarantine table, opened (and created if the lake has none) on first use by the flusher."""
        if self._quarantine_table is None:
            self._quarantine_table = QuarantineTable.open(self.storage, create=True)
            assert self._quarantine_table is not None  # create=True
        return self._quarantine_table

    def _still_there(self, info: FileInfo) -> bool:
        """Whether a published, not yet committed file still exists (it is published again if not)."""
        if self.storage.exists(info.key):
            return True
        log.warning("%s was removed before its commit (clean-up of uncommitted files); publishing it again", info.key)
        return False

    def _publish(self, flush: _Flush) -> None:
        """Steps 1a and 2 of a flush: publish its quarantine file and its landing files (none yet committed).

        Each file is published once and reused until its commit lands; one that has disappeared since
        (cleaned up as an orphan while its commit waited or failed for long) is published again.
        """
        if flush.quarantine is not None and not flush.quarantine_done and not self._still_there(flush.quarantine):
            flush.quarantine = None
        if flush.refused is not None and not flush.quarantine_done and flush.quarantine is None:
            flush.quarantine_name = flush.quarantine_name or file_name(quarantine.KIND, flush.refused)
            flush.quarantine = write_quarantine(self.storage, flush.refused, flush.quarantine_name)
        if not flush.valid.num_rows or flush.committed:
            return
        if flush.pieces is None:
            rows = with_duration(flush.valid.select(RECORD_SCHEMA.names))
            for name in flush.valid.column_names[len(RECORD_SCHEMA) :]:  # extra fields, after the lake's own
                rows = rows.append_column(flush.valid.schema.field(name), flush.valid.column(name))
            parts = partitions.split_by_date(rows) if self._partitioned else [(None, rows)]
            flush.pieces = [
                _Piece(part, day, FileStats.of_table(part), file_name(LANDING_KIND, part)) for day, part in parts
            ]
        for piece in flush.pieces:
            if piece.info is not None and not self._still_there(piece.info):
                piece.info = None
            if piece.info is None:
                piece.info = write_landing(self.storage, piece.table, piece.name, piece.day)

    def _commit(self, flush: _Flush) -> Commit:
        """Run the flush's steps in the protocol's order, skipping those an earlier attempt finished.

        (1) publish the refused records and append them to the quarantine table; (2) publish the
        landing files (one per date in a partitioned table); (3) commit them to the events table in one
        transaction, moving the position to the flush's last
        valid event id. A flush without valid records skips (2), and (3) only moves the position (to
        its last refused event id). Raises FencedError if another writer moved the position, OSError
        or LakeError (retryable) if a step failed.
        """
        self._publish(flush)  # usually done by the flusher already: then this only checks the files are there
        if flush.refused is not None and not flush.quarantine_done:
            assert flush.quarantine is not None
            self._quarantine().append(flush.quarantine, quarantine.refused_stats(flush.refused))
            flush.quarantine_done = True
        if not flush.valid.num_rows:
            return self._advance(flush)
        assert flush.pieces is not None
        landed = [(piece.info, piece.stats) for piece in flush.pieces if piece.info is not None]
        assert len(landed) == len(flush.pieces)
        if not flush.committed:
            extras = [f for f in flush.pieces[0].table.schema if f.name not in LAKE_SCHEMA.names]
            if extras:
                # The schema first: no commit adds a file with an unknown column.
                self._table.add_columns(extras, expected=self._position)
            self._table.append_files(landed, through_event_id=flush.event_id_max, expected=self._position)
            flush.committed = True
            self._position = flush.event_id_max
        newest = [p.stats.maximum.get("badge_out_timestamp") for p in flush.pieces]
        return Commit(
            landing_keys=tuple(info.key for info, _ in landed),
            quarantine_key=flush.quarantine.key if flush.quarantine is not None else None,
            records=flush.valid.num_rows,
            refused=flush.refused.num_rows if flush.refused is not None else 0,
            event_id_max=flush.event_id_max,
            newest_event_time=max((t for t in newest if t is not None), default=None),
            committed_at=time.time(),
        )

    def _advance(self, flush: _Flush) -> Commit:
        """Step 3 of a flush of refused records only: a commit that moves the position and adds no file."""
        assert flush.refused is not None
        moves = pc.max(flush.refused.column("event_id")).as_py() is not None
        if moves and not flush.committed:
            self._table.advance(through_event_id=flush.event_id_max, expected=self._position)
            self._position = flush.event_id_max
        flush.committed = True
        return Commit(
            landing_keys=(),
            quarantine_key=flush.quarantine.key if flush.quarantine is not None else None,
            records=0,
            refused=flush.refused.num_rows,
            event_id_max=flush.event_id_max,
            newest_event_time=None,
            committed_at=time.time(),
        )
