"""Compaction: merge the many small files of ``landing/`` into few large files in ``compacted/``, crash-safely.

The protocol (LAKE-PROTOCOL.md), each step leaving the live-set invariant true:

1. **Snapshot.** Once the live set holds at least ``COMPACTION_MIN_FILES`` landing files, take them plus
   the live compacted files under ``COMPACTION_TARGET_MIN_MB`` (tiering), ordered by first event id, cut
   into *runs* of files that are consecutive in the live set (so an output never spans a file it does
   not replace and its event-id range stays tight). Nothing outside the snapshot is ever touched.
2. **Stream.** Each run is read batch by batch (a reader thread decodes ahead, bounded to a couple of
   batches) and written into temp files of kind ``compacted``, in event-id order, in row groups of
   :data:`lake.parquet.ROW_GROUP_ROWS` rows. Output boundaries fall between input files, chosen by
   *measured* size: balanced outputs, each under ``COMPACTION_TARGET_MAX_MB``. An output that still
   ends above the ceiling is discarded and written again with fewer inputs, so the ceiling is strict
   (only a single input larger than the ceiling is published alone, as it cannot be split without
   breaking the atomic replace).
3. **Publish** into ``compacted/`` with ``badge.sources`` naming the inputs: the commit point, at which
   the sources leave the live set.
4. **Delete after grace.** A replaced file is deleted once ``COMPACTION_GRACE_SECONDS`` have passed
   since the mtime of the compacted file naming it; a replaced compacted file only once none of its
   own sources exists (leaves first). State lives in the files alone, so restarts lose nothing.
5. **Recover** on start: remove this role's temp leftovers, then carry on with step 4.

Foreign or corrupt files in ``landing/`` or ``compacted/`` are moved to ``quarantine/`` with a
``<name>.reason.json`` sidecar; compaction goes on without them. Memory stays bounded by a few row
groups whatever the input size. Every compaction returns a :class:`CompactionMetrics` and logs one line.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TextIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lake import layout
from lake.liveset import DataFile, LiveSet, live_set, parse_badge_metadata
from lake.parquet import DICTIONARY_COLUMNS, ROW_GROUP_ROWS, badge_metadata, writer_options
from lake.storage import FileInfo, LocalStorage, fsync_file
from utils.config import Settings
from utils.errors import CommitError, ConfigError, CorruptFileError, LakeError
from utils.records import LAKE_SCHEMA

log = logging.getLogger(__name__)

KIND: Final = "compacted"  # names of compacted files and of this role's temp files start with "compacted-"
SIDECAR_SUFFIX: Final = ".reason.json"

# Steps at which a hook is called (tests inject crashes there; ``pause_hook`` pauses a process there).
STEP_SNAPSHOT: Final = "snapshot"  # the snapshot is taken, nothing written yet
STEP_WRITING: Final = "writing"  # an output's temp file holds its first input (partly written)
STEP_WRITTEN: Final = "written"  # an output's temp file is complete and fsynced, not yet published
STEP_PUBLISHED: Final = "published"  # an output is committed into compacted/
STEP_DELETING: Final = "deleting"  # a replaced file whose grace has passed is about to be deleted
STEP_DELETED: Final = "deleted"  # ... and has been deleted
STEPS: Final = (STEP_SNAPSHOT, STEP_WRITING, STEP_WRITTEN, STEP_PUBLISHED, STEP_DELETING, STEP_DELETED)

StepHook = Callable[[str, str], None]  # (step, key or name it concerns)

# Outputs are planned to this share of the ceiling, leaving room for the size estimate's error.
PLAN_FILL: Final = 0.95
# A file in landing/ younger than this is not judged foreign yet (a foreign writer may still be copying it).
FOREIGN_MIN_AGE_SECONDS: Final = 2.0
# Batches the reader thread may decode ahead of the writer.
PREFETCH_DEPTH: Final = 2
# Compactions one cycle may run back to back (each one empties landing/ of what it snapshotted).
MAX_COMPACTIONS_PER_CYCLE: Final = 100
# Rows encoded in memory to learn the output density before the first output of a process is planned.
CALIBRATION_ROWS: Final = 64 * 1024
# Bytes per output besides the rows (footer, a dictionary page per row group) until measured.
DEFAULT_FIXED_BYTES: Final = 16 * 1024


def _dictionary_schema(schema: pa.Schema) -> pa.Schema:
    return pa.schema(
        [
            f.with_type(pa.dictionary(pa.int32(), f.type))
            if f.name in DICTIONARY_COLUMNS and pa.types.is_string(f.type)
            else f
            for f in schema
        ]
    )


# What flows from reader to writer: LAKE_SCHEMA with the dictionary columns kept as dictionaries. Reading
# them as dictionaries (no 36-byte string per row materialised) and writing dictionary arrays (no hashing
# per row) takes about 35 % less CPU for the same file. The files are written without the Arrow schema
# in the footer, so every reader sees plain strings: exactly LAKE_SCHEMA's names, types and nullability.
WRITE_SCHEMA: Final = _dictionary_schema(LAKE_SCHEMA)


def open_output(sink: pa.NativeFile) -> pq.ParquetWriter:
    """A ParquetWriter for a compacted file taking WRITE_SCHEMA batches (read back as LAKE_SCHEMA)."""
    return pq.ParquetWriter(sink, WRITE_SCHEMA, store_schema=False, **writer_options(LAKE_SCHEMA))


def _encoded_size(table: pa.Table) -> int:
    """Bytes ``table`` (WRITE_SCHEMA) takes as one compacted row group (written in memory)."""
    sink = pa.BufferOutputStream()
    with open_output(sink) as writer:
        writer.write_table(table.unify_dictionaries(), row_group_size=max(1, table.num_rows))
    return int(sink.getvalue().size)


@dataclass
class SizeModel:
    """Predicts a compacted file's size: ``rows * bytes_per_row + row_groups * fixed_bytes + sources``.

    ``fixed_bytes`` covers what each row group carries whatever its rows (dictionary pages, statistics,
    its share of the footer). Both are measured: first on a sample, then on every output written.
    """

    bytes_per_row: float
    fixed_bytes: float = DEFAULT_FIXED_BYTES

    def size(self, rows: int, sources_chars: int = 0) -> float:
        groups = max(1, math.ceil(rows / ROW_GROUP_ROWS))
        return rows * self.bytes_per_row + groups * self.fixed_bytes + sources_chars

    def learn(self, rows: int, size: int, sources_chars: int) -> None:
        """Update ``bytes_per_row`` from a file of ``rows`` rows that came out at ``size`` bytes."""
        if rows > 0:
            groups = max(1, math.ceil(rows / ROW_GROUP_ROWS))
            self.bytes_per_row = max(0.01, (size - groups * self.fixed_bytes - sources_chars) / rows)


def sources_chars(keys: Sequence[str]) -> int:
    """Bytes ``badge.sources`` takes in the footer (a JSON array of the keys)."""
    return sum(len(k) + 4 for k in keys) + 2


class CompactionStoppedError(LakeError):
    """A stop was requested; the compaction ended between two steps (an unpublished temp file is removed)."""


class _CorruptInputError(CorruptFileError):
    """An input turned out unreadable or inconsistent with its metadata while it was streamed."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


class _NeedsSortError(LakeError):
    """An input's rows are not in event-id order; it is read whole and sorted on the next attempt."""

    def __init__(self, key: str) -> None:
        super().__init__(f"{key}: rows not in event-id order")
        self.key = key


# -- results ------------------------------------------------------------------------------------------


@dataclass
class CompactionMetrics:
    """What one compaction did (delta-rs style): files in, rows, bytes in -> out, time."""

    snapshot_files: int = 0  # files the snapshot allowed this compaction to replace
    files_in: int = 0  # files actually replaced (published outputs name them)
    landing_in: int = 0
    compacted_in: int = 0  # tiering: compacted files under the floor merged again
    rows: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    outputs: list[str] = field(default_factory=list)
    output_sizes: list[int] = field(default_factory=list)
    predicted_sizes: list[int] = field(default_factory=list)  # the estimate at the output's start
    rewrites: int = 0  # outputs discarded for ending above the ceiling, written again smaller
    quarantined: list[str] = field(default_factory=list)
    interrupted: bool = False
    seconds: float = 0.0

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rows_per_second": self.rows_per_second}

    def summary(self) -> str:
        """The one log line of a compaction."""
        mb = 1024 * 1024
        return (
            f"compacted {self.files_in} files ({self.landing_in} landing + {self.compacted_in} compacted) "
            f"-> {len(self.outputs)} file(s): {self.rows:,} rows, {self.bytes_in / mb:.1f} MB -> "
            f"{self.bytes_out / mb:.1f} MB, {self.seconds:.2f} s ({self.rows_per_second / 1e6:.2f} M rows/s)"
            + (f", {self.rewrites} rewrite(s)" if self.rewrites else "")
            + (f", {len(self.quarantined)} quarantined" if self.quarantined else "")
            + (", interrupted" if self.interrupted else "")
        )


@dataclass
class CycleReport:
    """One cycle: foreign files quarantined, compactions run while due, replaced files deleted."""

    quarantined: list[str] = field(default_factory=list)
    compactions: list[CompactionMetrics] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "quarantined": self.quarantined,
            "compactions": [m.as_dict() for m in self.compactions],
            "deleted": self.deleted,
        }


@dataclass(frozen=True)
class Plan:
    """A snapshot: the files one compaction may read and replace, cut into runs of consecutive files."""

    runs: tuple[tuple[DataFile, ...], ...]
    overlapping: tuple[str, ...] = ()  # live files whose event ranges overlap: left alone, reported

    @property
    def inputs(self) -> list[DataFile]:
        return [f for run in self.runs for f in run]

    @property
    def keys(self) -> list[str]:
        return [f.key for f in self.inputs]


# -- reading inputs -------------------------------------------------------------------------------------


def _converter(schema: pa.Schema, key: str) -> Callable[[pa.RecordBatch], pa.RecordBatch]:
    """A function bringing batches of ``schema`` to WRITE_SCHEMA; raises _CorruptInputError if impossible."""
    if schema.equals(WRITE_SCHEMA, check_metadata=False):
        return lambda batch: batch
    if sorted(schema.names) != sorted(LAKE_SCHEMA.names):
        raise _CorruptInputError(key, f"columns {schema.names} differ from the lake's {LAKE_SCHEMA.names}")
    try:
        schema.empty_table().select(LAKE_SCHEMA.names).cast(LAKE_SCHEMA)
    except (pa.ArrowException, ValueError, TypeError, NotImplementedError) as exc:
        raise _CorruptInputError(key, f"schema cannot be cast to the lake's ({exc})") from exc

    def convert(batch: pa.RecordBatch) -> pa.RecordBatch:
        try:
            return batch.select(WRITE_SCHEMA.names).cast(WRITE_SCHEMA)
        except (pa.ArrowException, ValueError, TypeError) as exc:
            raise _CorruptInputError(key, f"values do not fit the lake's schema ({exc})") from exc

    return convert


def _is_corruption(exc: BaseException) -> bool:
    """Decoding errors (pyarrow raises them as OSError without errno, or ArrowInvalid), not system errors."""
    if isinstance(exc, FileNotFoundError):
        return False
    if isinstance(exc, OSError):
        return exc.errno is None
    return isinstance(exc, pa.ArrowException | ValueError)


def read_batches(path: Path, key: str, *, sort: bool = False) -> Generator[pa.RecordBatch, None, None]:
    """The rows of one data file as WRITE_SCHEMA batches of at most ROW_GROUP_ROWS rows.

    Streams row group by row group unless ``sort`` (then the file is read whole and sorted by event_id).
    Raises _CorruptInputError for undecodable files, LakeError if the file vanished, OSError for I/O errors.
    """
    try:
        footer = pq.read_metadata(path)
        names = set(footer.schema.names)
        as_dictionary = [c for c in DICTIONARY_COLUMNS if c in names]
        pf = pq.ParquetFile(path, pre_buffer=True, metadata=footer, read_dictionary=as_dictionary)
    except FileNotFoundError as exc:
        raise LakeError(f"{key} vanished while it was being compacted") from exc
    except (OSError, pa.ArrowException, ValueError) as exc:
        if not _is_corruption(exc):
            raise
        raise _CorruptInputError(key, f"not readable Parquet ({exc})") from exc
    try:
        convert = _converter(pf.schema_arrow, key)
        if sort:
            table = pf.read(use_threads=True).sort_by("event_id")
            batches: Iterator[pa.RecordBatch] = iter(table.to_batches(max_chunksize=ROW_GROUP_ROWS))
        else:
            batches = pf.iter_batches(batch_size=ROW_GROUP_ROWS, use_threads=True)
        for batch in batches:
            if batch.num_rows:
                yield convert(batch)
    except (OSError, pa.ArrowException, ValueError) as exc:
        if not _is_corruption(exc) or isinstance(exc, _CorruptInputError):
            raise
        raise _CorruptInputError(key, f"data pages not decodable ({exc})") from exc
    finally:
        pf.close()


_DONE: Final = object()


class _Prefetcher:
    """Decodes the inputs of a run in a background thread, at most ``depth`` batches ahead.

    pyarrow releases the GIL while decoding, so reading overlaps with encoding on another core.
    ``close()`` always stops the thread (also when the consumer gave up half way).
    """

    def __init__(
        self,
        read: Callable[[DataFile], Iterator[pa.RecordBatch]],
        files: Sequence[DataFile],
        stop: threading.Event,
        depth: int = PREFETCH_DEPTH,
    ) -> None:
        self._read = read
        self._files = list(files)
        self._stop = stop
        self._queue: queue.Queue[tuple[int, object]] = queue.Queue(maxsize=max(1, depth))
        self._cancel = threading.Event()
        self._thread = threading.Thread(target=self._run, name="compactor-reader", daemon=True)
        self._thread.start()

    def _put(self, item: tuple[int, object]) -> bool:
        while not self._cancel.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        index = 0
        try:
            for index, f in enumerate(self._files):
                for batch in self._read(f):
                    if not self._put((index, batch)):
                        return
                if not self._put((index, _DONE)):
                    return
        except Exception as exc:  # handed to the consumer, who raises it in its own thread
            self._put((index, exc))

    def batches(self, index: int) -> Iterator[pa.RecordBatch]:
        """The batches of input ``index`` (inputs must be consumed in order)."""
        while True:
            try:
                got, payload = self._queue.get(timeout=0.2)
            except queue.Empty:
                if self._stop.is_set():
                    raise CompactionStoppedError("stop requested") from None
                if not self._thread.is_alive() and self._queue.empty():
                    raise LakeError("the compaction reader thread ended unexpectedly") from None
                continue
            if isinstance(payload, BaseException):
                raise payload
            if got != index:
                raise LakeError(f"reader out of step: got input {got}, expected {index}")
            if payload is _DONE:
                return
            assert isinstance(payload, pa.RecordBatch)
            yield payload

    def close(self) -> None:
        self._cancel.set()
        with contextlib.suppress(queue.Empty):
            while True:
                self._queue.get_nowait()
        self._thread.join(timeout=30)


# -- writing outputs ------------------------------------------------------------------------------------


class _Output:
    """One compacted file being written into temp/: rows buffered into full row groups, size measured."""

    def __init__(self, storage: LocalStorage, first: int, name_hint: str, model: SizeModel) -> None:
        self.tmp = storage.new_temp_path(name_hint)
        self.first = first  # index in the run of its first input
        self.model_at_start = SizeModel(model.bytes_per_row, model.fixed_bytes)
        self.inputs: list[DataFile] = []
        self.lo: int | None = None
        self.hi: int | None = None
        self.rows_flushed = 0
        self.row_groups = 0
        self.flushed_bytes = 0  # measured after each row group (asking the sink every time is slow)
        self.size = 0
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self._sink = pa.OSFile(str(self.tmp), "wb")
        try:
            self._writer = open_output(self._sink)
        except BaseException:
            self._sink.close()
            self.tmp.unlink(missing_ok=True)
            raise
        self._open = True

    @property
    def rows(self) -> int:
        return self.rows_flushed + self._pending_rows

    def add(self, batch: pa.RecordBatch, ids: np.ndarray) -> None:
        if self.lo is None:
            self.lo = int(ids[0])
        self.hi = int(ids[-1])
        self._pending.append(batch)
        self._pending_rows += batch.num_rows
        while self._pending_rows >= ROW_GROUP_ROWS:
            self._flush(ROW_GROUP_ROWS)

    def _flush(self, rows: int) -> None:
        # one dictionary per column across the row group's batches (they come from several files)
        table = pa.Table.from_batches(self._pending, schema=WRITE_SCHEMA).unify_dictionaries()
        self._writer.write_table(table.slice(0, rows), row_group_size=rows)
        rest = table.slice(rows)
        self._pending = rest.to_batches()
        self._pending_rows = rest.num_rows
        self.rows_flushed += rows
        self.row_groups += 1
        self.flushed_bytes = int(self._sink.tell())

    def projected(self, extra_rows: int, model: SizeModel, sources: int) -> float:
        """The file's size if ``extra_rows`` more rows were added and it were closed now.

        Bytes already written are measured; once a row group is written its density (which includes
        its dictionary pages) prices the rest, before that ``model`` does; ``sources`` is the footer's
        sources list in bytes.
        """
        rows_left = self._pending_rows + extra_rows
        if not self.rows_flushed:
            return self.flushed_bytes + model.size(rows_left, sources)
        density = self.flushed_bytes / self.rows_flushed
        return self.flushed_bytes + rows_left * density + model.fixed_bytes + sources

    def close(self, metadata: dict[str, str]) -> int:
        """Write what is buffered and the footer with ``metadata``, fsync; returns the file's size."""
        if self._pending_rows:
            self._flush(self._pending_rows)
        self._writer.add_key_value_metadata(metadata)
        self._writer.close()
        self._sink.close()
        self._open = False
        fsync_file(self.tmp)
        self.size = self.tmp.stat().st_size
        return self.size

    def abandon(self) -> None:
        """Close the handles, leaving the temp file as a crash would (recovery removes it)."""
        if self._open:
            self._open = False
            with contextlib.suppress(Exception):
                self._writer.close()
            with contextlib.suppress(Exception):
                self._sink.close()

    def discard(self) -> None:
        """Close and remove the temp file: nothing of this output remains."""
        self.abandon()
        self.tmp.unlink(missing_ok=True)


# -- the compactor --------------------------------------------------------------------------------------


class Compactor:
    """Compacts one lake. Not thread-safe: one worker calls it (the lake's compactor lock ensures one process).

    Every public method leaves the live-set invariant true when it returns, raises or is killed, and is
    idempotent: running it again continues where a crash left off.
    """

    def __init__(
        self,
        storage: LocalStorage,
        settings: Settings,
        *,
        stop: threading.Event | None = None,
        hook: StepHook | None = None,
        clock: Callable[[], float] = time.time,
        foreign_min_age_seconds: float = FOREIGN_MIN_AGE_SECONDS,
        bytes_per_row: float | None = None,
    ) -> None:
        self.storage = storage
        self.min_files = settings.compaction_min_files
        self.min_bytes = settings.compaction_target_min_bytes
        self.max_bytes = settings.compaction_target_max_bytes
        self.grace_seconds = settings.compaction_grace_seconds
        self.stop_event = stop or threading.Event()
        self._hook = hook
        self._clock = clock
        self.foreign_min_age_seconds = foreign_min_age_seconds
        # Output bytes per row, learnt from every output written; until then each input's own density.
        # The output density: given (tests), else measured on a sample before the first output, then
        # learnt from every output written.
        self._model: SizeModel | None = SizeModel(bytes_per_row) if bytes_per_row is not None else None
        self._sort_keys: set[str] = set()

    # -- small helpers ---------------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask a running compaction to end at the next step boundary (safe from any thread)."""
        self.stop_event.set()

    def _step(self, step: str, detail: str = "") -> None:
        if self._hook is not None:
            self._hook(step, detail)

    def _check_stop(self) -> None:
        if self.stop_event.is_set():
            raise CompactionStoppedError("stop requested")

    def _size_model(self, f: DataFile) -> SizeModel:
        if self._model is not None:
            return self._model
        return SizeModel(f.info.size / max(1, f.row_count))  # the input's own density: a rough guess

    # -- step 1: the snapshot --------------------------------------------------------------------------
    def is_due(self, live: LiveSet | None = None) -> bool:
        """True when the live set holds at least COMPACTION_MIN_FILES landing files."""
        live = live if live is not None else live_set(self.storage)
        return len(live.in_zone(layout.LANDING)) >= self.min_files

    def plan(self, live: LiveSet) -> Plan:
        """The snapshot of ``live``: landing files and compacted files under the floor, in runs.

        A run holds files that are consecutive in the live set's event order, so an output's id range
        overlaps no other live file. A run of one compacted file is left as it is (nothing to merge).
        Files whose event ranges overlap another live file's are left out and reported.
        """
        overlapping: set[str] = set()
        previous: DataFile | None = None
        for f in live.files:
            if f.row_count == 0:
                continue
            if previous is not None and f.event_id_min <= previous.event_id_max:
                overlapping.update((f.key, previous.key))
            if previous is None or f.event_id_max > previous.event_id_max:
                previous = f
        empty: list[DataFile] = []
        runs: list[list[DataFile]] = []
        current: list[DataFile] = []
        for f in live.files:
            candidate = f.key not in overlapping and (
                f.info.zone == layout.LANDING or (f.info.zone == layout.COMPACTED and f.info.size < self.min_bytes)
            )
            if candidate and f.row_count == 0:
                empty.append(f)  # holds no rows: fits in any run without disturbing its order
            elif candidate:
                current.append(f)
            elif current:
                runs.append(current)
                current = []
        if current:
            runs.append(current)
        runs = [r for r in runs if not (len(r) == 1 and r[0].info.zone == layout.COMPACTED)]
        if empty:
            if runs:
                runs[0] = empty + runs[0]
            else:
                runs.append(empty)
        if overlapping:
            log.error(
                "live files with overlapping event ranges are left alone (the lake holds duplicates; "
                "see `python -m lake verify`): %s",
                ", ".join(sorted(overlapping)),
            )
        return Plan(tuple(tuple(r) for r in runs), tuple(sorted(overlapping)))

    # -- steps 2 and 3: stream, publish --------------------------------------------------------------------
    def compact(self) -> CompactionMetrics | None:
        """Compact the current snapshot if due; None if not due.

        Outputs are published one by one (each a commit); an interruption or a corrupt input ends the
        compaction early with what was published so far (a corrupt input is quarantined).
        """
        started = time.perf_counter()
        live = live_set(self.storage)
        if not self.is_due(live):
            return None
        plan = self.plan(live)
        metrics = CompactionMetrics(snapshot_files=len(plan.inputs))
        self._step(STEP_SNAPSHOT, "")
        try:
            for run in plan.runs:
                self._check_stop()
                self._write_run(list(run), metrics)
        except _CorruptInputError as exc:
            log.error("compaction input is corrupt: %s", exc)
            metrics.quarantined.append(self.quarantine(exc.key, exc.reason))
        except CompactionStoppedError:
            metrics.interrupted = True
        metrics.seconds = time.perf_counter() - started
        if metrics.files_in or metrics.quarantined or metrics.interrupted:
            log.info("%s", metrics.summary())
        elif not plan.inputs:
            log.warning("%d landing files are due but none can be compacted", len(live.in_zone(layout.LANDING)))
        return metrics

    def _write_run(self, run: list[DataFile], metrics: CompactionMetrics) -> None:
        start, forced_end = 0, None
        while start < len(run):
            retry = self._stream(run, start, forced_end, metrics)
            if retry is None:
                return
            start, forced_end = retry

    def _should_close(self, out: _Output, run: list[DataFile], i: int, forced_end: int | None) -> bool:
        """Whether the output ends before input ``i``: by the ceiling, or to balance the run's outputs."""
        if forced_end is not None and i >= forced_end:
            return True
        cap = self.max_bytes * PLAN_FILL
        model = self._size_model(run[i])
        sources = sources_chars([f.key for f in out.inputs])
        size_now = out.projected(0, model, sources)
        density = out.flushed_bytes / out.rows_flushed if out.rows_flushed else model.bytes_per_row
        nxt = run[i].row_count * density + len(run[i].key) + 4
        if size_now + nxt > cap:
            return True
        total = size_now + sum(f.row_count for f in run[i:]) * density
        outputs_left = math.ceil(total / cap)
        if outputs_left <= 1:
            return False
        return size_now + nxt / 2 > total / outputs_left  # midpoint rule: sizes within half an input

    def _stream(
        self, run: list[DataFile], start: int, forced_end: int | None, metrics: CompactionMetrics
    ) -> tuple[int, int | None] | None:
        """Write ``run[start:]`` into outputs, publishing each; returns where to start again, or None.

        A retry is asked for when an output ended above the ceiling (it is discarded; the retry forces
        an earlier boundary) or an input turned out unsorted (it will be sorted on reading).
        """
        if self._model is None:
            self._calibrate(run[start:])
        prefetch = _Prefetcher(self._read, run[start:], self.stop_event)
        out: _Output | None = None
        try:
            for i in range(start, len(run)):
                f = run[i]
                if out is not None and self._should_close(out, run, i, forced_end):
                    retry = self._finish(out, metrics)
                    out = None
                    if retry is not None:
                        return retry
                    forced_end = None
                if out is None:
                    self._check_stop()
                    hint = layout.new_file_name(KIND, f.event_id_min, run[-1].event_id_max)
                    out = _Output(self.storage, i, hint, self._size_model(f))
                self._copy(prefetch.batches(i - start), f, out)
                if len(out.inputs) == 1:
                    self._step(STEP_WRITING, out.tmp.name)
            if out is not None:
                retry = self._finish(out, metrics)
                out = None
                return retry
            return None
        except _NeedsSortError as exc:
            self._sort_keys.add(exc.key)
            log.warning("%s: rows are not in event-id order; reading it whole and sorting it", exc.key)
            assert out is not None
            first = out.first
            out.discard()
            out = None
            return first, None
        except Exception:
            if out is not None:
                out.discard()
                out = None
            raise
        finally:
            prefetch.close()
            if out is not None:  # a BaseException (a simulated crash, KeyboardInterrupt): leave it as a crash would
                out.abandon()

    def _calibrate(self, files: Sequence[DataFile]) -> None:
        """Measure the output's size model by encoding a sample of ``files`` in memory, twice.

        Inputs may be encoded differently (landing files use pyarrow's defaults, about twice the size),
        so their own density is a poor guide. Encoding the first half of the sample and then all of it,
        each as one row group with the output's options, separates the bytes per row (the difference)
        from the fixed bytes per row group (dictionary pages, footer). Unreadable samples are skipped:
        the input is judged when it is streamed.
        """
        batches: list[pa.RecordBatch] = []
        rows = 0
        try:
            for f in files:
                with contextlib.closing(self._read(f)) as reader:  # closes the file when we stop early
                    for batch in reader:
                        batches.append(batch.slice(0, CALIBRATION_ROWS - rows))
                        rows += batches[-1].num_rows
                        if rows >= CALIBRATION_ROWS:
                            break
                if rows >= CALIBRATION_ROWS:
                    break
        except (LakeError, OSError):
            return
        if rows < 2:
            return
        sample = pa.Table.from_batches(batches, schema=WRITE_SCHEMA)
        half = sample.slice(0, rows // 2)
        small, full = _encoded_size(half), _encoded_size(sample)
        per_row = max(0.01, (full - small) / (rows - half.num_rows))
        self._model = SizeModel(per_row, max(0.0, small - half.num_rows * per_row))
        log.debug("calibrated on %d rows: %s", rows, self._model)

    def _read(self, f: DataFile) -> Generator[pa.RecordBatch, None, None]:
        return read_batches(self.storage.path(f.key), f.key, sort=f.key in self._sort_keys)

    def _copy(self, batches: Iterator[pa.RecordBatch], f: DataFile, out: _Output) -> None:
        """Append one input to ``out``, checking its rows against its metadata on the way."""
        seen = 0
        last: int | None = None
        column = LAKE_SCHEMA.get_field_index("event_id")
        for batch in batches:
            self._check_stop()
            ids = batch.column(column).to_numpy()
            if (last is not None and ids[0] <= last) or bool(np.any(ids[1:] <= ids[:-1])):
                if f.key in self._sort_keys:
                    raise _CorruptInputError(f.key, "the same event id appears twice")
                raise _NeedsSortError(f.key)
            if ids[0] < f.event_id_min or ids[-1] > f.event_id_max:
                raise _CorruptInputError(
                    f.key,
                    f"holds event ids {int(ids[0])}..{int(ids[-1])} outside its metadata's "
                    f"{f.event_id_min}..{f.event_id_max}",
                )
            out.add(batch, ids)
            seen += len(ids)
            last = int(ids[-1])
        if seen != f.row_count:
            raise _CorruptInputError(f.key, f"holds {seen} rows, its metadata says {f.row_count}")
        out.inputs.append(f)

    def _finish(self, out: _Output, metrics: CompactionMetrics) -> tuple[int, int | None] | None:
        """Close ``out``; publish it, or discard it and ask for a retry if it ended above the ceiling."""
        sources = [f.key for f in out.inputs]
        if out.lo is None or out.hi is None:
            lo, hi = 0, -1
        else:
            lo, hi = out.lo, out.hi
        # what the model in force when the output started said it would weigh
        predicted = int(out.model_at_start.size(out.rows, sources_chars(sources)))
        size = out.close(badge_metadata(lo, hi, out.rows, sources))
        if self._model is None:
            self._model = self._size_model(out.inputs[0])
        self._model.learn(out.rows, size, sources_chars(sources))
        if size > self.max_bytes and len(out.inputs) > 1:
            n = len(out.inputs)
            keep = max(1, min(n - 1, int(n * self.max_bytes * PLAN_FILL / size)))
            log.info(
                "output of %d inputs ended at %d bytes, above the %d-byte ceiling: writing it again with %d inputs",
                n,
                size,
                self.max_bytes,
                keep,
            )
            metrics.rewrites += 1
            out.discard()
            return out.first, out.first + keep
        if size > self.max_bytes:
            log.warning("%s alone is larger than the ceiling (%d bytes); compacted on its own", sources[0], size)
        self._step(STEP_WRITTEN, out.tmp.name)
        os.utime(out.tmp)  # the grace period runs from the commit, not from when writing began
        name = layout.new_file_name(KIND, max(lo, 0), max(hi, 0))
        info = self.storage.publish(out.tmp, layout.COMPACTED, name)
        self._step(STEP_PUBLISHED, info.key)
        metrics.files_in += len(out.inputs)
        metrics.landing_in += sum(1 for f in out.inputs if f.info.zone == layout.LANDING)
        metrics.compacted_in += sum(1 for f in out.inputs if f.info.zone == layout.COMPACTED)
        metrics.rows += out.rows
        metrics.bytes_in += sum(f.info.size for f in out.inputs)
        metrics.bytes_out += info.size
        metrics.outputs.append(info.key)
        metrics.output_sizes.append(info.size)
        metrics.predicted_sizes.append(predicted)
        log.debug("published %s: %d inputs, %d rows, %d bytes", info.key, len(sources), out.rows, info.size)
        return None

    # -- step 4: deletion after grace ----------------------------------------------------------------------
    def delete_due(self) -> list[str]:
        """Delete replaced files whose grace period has passed, leaves first; returns the deleted keys.

        A replaced file is due when now >= mtime of the compacted file naming it + grace; a replaced
        compacted file is deleted only once none of the files it names exists any more.
        """
        live = live_set(self.storage)
        if not live.replaced:
            return []
        now = self._clock()
        named_at: dict[str, float] = {}
        for f in (*live.files, *live.replaced):
            for src in f.sources:
                named_at[src] = max(named_at.get(src, 0.0), f.info.mtime_ns / 1e9)
        pending = sorted(
            (f for f in live.replaced if now >= named_at.get(f.key, math.inf) + self.grace_seconds),
            key=lambda f: (f.info.mtime_ns, f.key),
        )
        deleted: list[str] = []
        progress = True
        while pending and progress and not self.stop_event.is_set():
            progress = False
            waiting: list[DataFile] = []
            for f in pending:
                if self.stop_event.is_set():
                    break
                if any(self.storage.exists(src) for src in f.sources):
                    waiting.append(f)  # a leaf it names is still there: it goes first
                    continue
                self._step(STEP_DELETING, f.key)
                self.storage.delete(f.key)
                self._step(STEP_DELETED, f.key)
                deleted.append(f.key)
                progress = True
            pending = waiting
        if deleted:
            log.info("deleted %d replaced file(s) after the %.1f s grace period", len(deleted), self.grace_seconds)
        return deleted

    # -- step 5: recovery ---------------------------------------------------------------------------------
    def recover(self) -> dict[str, list[str]]:
        """Remove this role's temp leftovers, then delete what is due. Call at start, holding the lock."""
        removed: list[str] = []
        for info in self.storage.list_all(layout.TEMP):
            if info.name.startswith(f"{KIND}-") and self.storage.delete(info.key):
                removed.append(info.key)
        if removed:
            log.info("recovery: removed %d unfinished compaction temp file(s)", len(removed))
        return {"temp_removed": removed, "deleted": self.delete_due()}

    # -- foreign and corrupt files ------------------------------------------------------------------------
    def why_invalid(self, info: FileInfo) -> str | None:
        """Why ``info`` is not a lake data file, or None if it is one (or vanished)."""
        if not info.name.endswith(layout.PARQUET_SUFFIX):
            return "not a Parquet data file (foreign name)"
        try:
            parse_badge_metadata(info, self.storage.read_metadata(info.key))
        except CorruptFileError as exc:
            return str(exc)
        except FileNotFoundError:
            return None
        return None

    def quarantine_foreign(self, live: LiveSet | None = None) -> list[str]:
        """Move foreign or corrupt files out of landing/ and compacted/ into quarantine/; returns new keys.

        Each is checked again without any cache first, and left alone while younger than
        ``foreign_min_age_seconds``.
        """
        live = live if live is not None else live_set(self.storage)
        suspects = set(live.invalid)
        listed: dict[str, FileInfo] = {}
        for zone in layout.DATA_ZONES:
            for info in self.storage.list_all(zone):
                listed[info.key] = info
                if not info.name.endswith(layout.PARQUET_SUFFIX):
                    suspects.add(info.key)
        now = self._clock()
        moved: list[str] = []
        for key in sorted(suspects):
            found = listed.get(key)
            if found is None or now - found.mtime_ns / 1e9 < self.foreign_min_age_seconds:
                continue
            reason = self.why_invalid(found)
            if reason is not None:
                moved.append(self.quarantine(key, reason))
        return moved

    def quarantine(self, key: str, reason: str) -> str:
        """Move ``key`` into quarantine/ and write ``<name>.reason.json`` beside it; returns the new key."""
        new_key = self.storage.move(key, layout.QUARANTINE)
        sidecar = {
            "file": new_key,
            "original": key,
            "reason": reason,
            "quarantined_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "by": "compactor",
        }
        tmp = self.storage.new_temp_path(f"{KIND}-sidecar")
        try:
            tmp.write_text(json.dumps(sidecar, indent=2) + "\n")
            self.storage.publish(tmp, layout.QUARANTINE, new_key.rsplit("/", 1)[-1] + SIDECAR_SUFFIX)
        except (OSError, CommitError) as exc:
            tmp.unlink(missing_ok=True)
            log.warning("could not write the reason file for %s: %s", new_key, exc)
        log.warning("quarantined %s -> %s: %s", key, new_key, reason)
        return new_key

    # -- one cycle -----------------------------------------------------------------------------------------
    def run_cycle(self) -> CycleReport:
        """Quarantine foreign files, compact while due, delete what is due. Stops early when asked."""
        report = CycleReport()
        report.quarantined = self.quarantine_foreign()
        for _ in range(MAX_COMPACTIONS_PER_CYCLE):
            if self.stop_event.is_set():
                break
            metrics = self.compact()
            if metrics is None:
                break
            report.compactions.append(metrics)
            report.quarantined.extend(metrics.quarantined)
            if metrics.interrupted or (metrics.files_in == 0 and not metrics.quarantined):
                break
        if not self.stop_event.is_set():
            report.deleted = self.delete_due()
        return report


def pause_hook(spec: str, *, seconds: float = 300.0, stream: TextIO | None = None) -> StepHook:
    """A hook that pauses the process at the n-th occurrence of a step (``"written"`` or ``"published:2"``).

    For tests that ``kill -9`` a real compactor at a chosen step; prints ``PAUSED at <step> <detail>``.
    """
    step, _, nth = spec.partition(":")
    if step not in STEPS or (nth and not nth.isdigit()):
        raise ConfigError("BADGE_COMPACTOR_PAUSE_AT", spec, "a step (" + ", ".join(STEPS) + "), optionally ':n'")
    wanted = int(nth or 1)
    seen = 0

    def hook(current: str, detail: str) -> None:
        nonlocal seen
        if current != step:
            return
        seen += 1
        if seen == wanted:
            print(f"PAUSED at {step} {detail}", file=stream or sys.stderr, flush=True)
            time.sleep(seconds)

    return hook
