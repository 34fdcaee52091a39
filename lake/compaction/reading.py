"""Reading compaction inputs: WRITE_SCHEMA batches, checked against their statistics, decoded ahead in a thread.

An input is either streamed whole in event-id order or refused with an error saying why (unreadable,
contradicting its statistics in the log, or unsorted and to be sorted on the next read); memory stays
bounded by a few batches. An unreadable input is never judged here: the compactor reports it and
tries again next cycle, the file stays in the table (only ``python -m lake verify`` declares damage).
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Generator, Iterator, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lake.compaction.schema import WRITE_SCHEMA
from lake.compaction.steps import CompactionStoppedError
from lake.parquet import DICTIONARY_COLUMNS, ROW_GROUP_ROWS
from lake.snapshot import DataFile
from utils.errors import LakeError
from utils.records import LAKE_SCHEMA

# Batches the reader thread may decode ahead of the writer.
PREFETCH_DEPTH: Final = 2

# Opens an input for reading: a path (pyarrow opens it natively, the fast way) or any file object
# pyarrow can read. Tests hand in a file layer that fails the way a disk or NFS does (EIO, ESTALE).
InputOpener = Callable[[Path], Any]


def open_native(path: Path) -> str:
    """The default opener: pyarrow reads the file itself (no Python in the read path)."""
    return str(path)


class UnreadableInputError(LakeError):
    """An input of the snapshot could not be read, or its rows contradict its statistics in the log.

    Retryable: an I/O error (EIO, ESTALE) may pass, and a damaged file is ``verify``'s to declare.
    """

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


class NeedsSortError(LakeError):
    """An input's rows are not in event-id order; it is read whole and sorted on the next attempt."""

    def __init__(self, key: str) -> None:
        super().__init__(f"{key}: rows not in event-id order")
        self.key = key


def _converter(schema: pa.Schema, key: str, target: pa.Schema) -> Callable[[pa.RecordBatch], pa.RecordBatch]:
    """A function bringing batches of ``schema`` to ``target`` (WRITE_SCHEMA and the table's extra fields); a
    file written before an extra field existed gets it as nulls. Raises UnreadableInputError if impossible."""
    if schema.equals(target, check_metadata=False):
        return lambda batch: batch
    names = set(schema.names)
    if not set(LAKE_SCHEMA.names) <= names or not names <= set(target.names):
        raise UnreadableInputError(key, f"columns {schema.names} differ from the table's {target.names}")
    absent = [f for f in target if f.name not in names]
    try:
        _with(pa.RecordBatch.from_pylist([], schema=schema), absent, target)
    except (pa.ArrowException, ValueError, TypeError, NotImplementedError) as exc:
        raise UnreadableInputError(key, f"schema cannot be cast to the table's ({exc})") from exc

    def convert(batch: pa.RecordBatch) -> pa.RecordBatch:
        try:
            return _with(batch, absent, target)
        except (pa.ArrowException, ValueError, TypeError) as exc:
            raise UnreadableInputError(key, f"values do not fit the table's schema ({exc})") from exc

    return convert


def _with(batch: pa.RecordBatch, absent: list[pa.Field], target: pa.Schema) -> pa.RecordBatch:
    """``batch`` with null columns for ``absent`` fields, as exactly ``target``."""
    for field in absent:
        batch = batch.append_column(field, pa.nulls(batch.num_rows, field.type))
    return batch.select(target.names).cast(target)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return f"missing from storage ({exc})"
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"I/O error ({exc})"
    return f"not readable Parquet ({type(exc).__name__}: {exc})"


def read_batches(
    key: str, open_source: Callable[[], Any], *, sort: bool = False, schema: pa.Schema = WRITE_SCHEMA
) -> Generator[pa.RecordBatch, None, None]:
    """The rows of one data file as ``schema`` batches (WRITE_SCHEMA and the table's extra fields) of at most
    ROW_GROUP_ROWS rows.

    Streams row group by row group unless ``sort`` (then the file is read whole and sorted by event_id).
    Raises UnreadableInputError for any failure to read it (I/O error, missing file, undecodable data).
    """
    with contextlib.ExitStack() as stack:
        try:
            source = open_source()  # a local path (pyarrow opens it natively) or a file object
            if hasattr(source, "close") and not isinstance(source, str):
                stack.callback(source.close)
            footer = pq.read_metadata(source)
            names = set(footer.schema.names)
            as_dictionary = [c for c in DICTIONARY_COLUMNS if c in names]
            pf = pq.ParquetFile(source, pre_buffer=True, metadata=footer, read_dictionary=as_dictionary)
            stack.callback(pf.close)
        except (OSError, pa.ArrowException, ValueError) as exc:
            raise UnreadableInputError(key, _describe(exc)) from exc
        try:
            convert = _converter(pf.schema_arrow, key, schema)
            if sort:
                table = pf.read(use_threads=True).sort_by("event_id")
                batches: Iterator[pa.RecordBatch] = iter(table.to_batches(max_chunksize=ROW_GROUP_ROWS))
            else:
                batches = pf.iter_batches(batch_size=ROW_GROUP_ROWS, use_threads=True)
            for batch in batches:
                if batch.num_rows:
                    yield convert(batch)
        except UnreadableInputError:
            raise
        except (OSError, pa.ArrowException, ValueError) as exc:
            raise UnreadableInputError(key, _describe(exc)) from exc


def checked_batches(
    batches: Iterator[pa.RecordBatch], f: DataFile, *, sorted_on_read: bool, check_stop: Callable[[], None]
) -> Iterator[tuple[pa.RecordBatch, np.ndarray]]:
    """The batches of input ``f`` with their event ids, each checked against ``f``'s statistics in the log.

    Raises NeedsSortError for rows out of event-id order (UnreadableInputError if ``sorted_on_read``: a
    duplicate id), UnreadableInputError for ids outside the statistics' range or a row count that
    differs; ``check_stop`` runs before every batch.
    """
    seen = 0
    last: int | None = None
    column = LAKE_SCHEMA.get_field_index("event_id")
    for batch in batches:
        check_stop()
        ids = batch.column(column).to_numpy()
        if (last is not None and ids[0] <= last) or bool(np.any(ids[1:] <= ids[:-1])):
            if sorted_on_read:
                raise UnreadableInputError(f.key, "the same event id appears twice")
            raise NeedsSortError(f.key)
        if ids[0] < f.event_id_min or ids[-1] > f.event_id_max:
            raise UnreadableInputError(
                f.key,
                f"holds event ids {int(ids[0])}..{int(ids[-1])} outside its statistics' "
                f"{f.event_id_min}..{f.event_id_max}",
            )
        yield batch, ids
        seen += len(ids)
        last = int(ids[-1])
    if seen != f.row_count:
        raise UnreadableInputError(f.key, f"holds {seen} rows, its statistics say {f.row_count}")


_DONE: Final = object()


class Prefetcher:
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
