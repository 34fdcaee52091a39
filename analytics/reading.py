"""Reading the lake's data files where DuckDB cannot open them itself: through :class:`lake.storage.Storage`.

On a local lake DuckDB scans the files by path (``read_parquet``); object storage has no paths (and DuckDB's
``httpfs`` extension is not used), so the engine reads those files here and hands DuckDB Arrow tables. A
file of at most :data:`WHOLE_OBJECT_BYTES` (by the log) is fetched whole, in one request
(:meth:`~lake.storage.Storage.read_bytes`): every column but ``event_id`` is wanted, and one GET costs less
than pyarrow's HEAD, footer and column-chunk requests. A larger file is read through
:meth:`~lake.storage.Storage.open_input` (pyarrow: ranged GETs of the footer and of the column chunks it
needs). Guarantees:

* Each call reads each file it is given at most once, and parses only :data:`COLUMNS` (every column the
  analytics use; not ``event_id``). With a time span, only the row groups whose ``badge_out_timestamp``
  statistics may overlap it are parsed (and, for a file read in ranges, fetched); a row group without
  usable statistics is kept. Rows are never filtered here: the caller's SQL selects them.
* Results come in the order of the files given, a file's pieces in row-group order, each piece at most
  ``chunk_rows`` rows or one row group. Memory is bounded: at most ``ahead`` files, of at most
  ``ahead_rows`` rows together, are read ahead (a file larger than ``chunk_rows`` is read piece by piece
  when its turn comes, never ahead).
* Errors pass through as the storage or pyarrow raised them: FileNotFoundError for a file that is not
  there; LakeError (the storage) or another OSError (pyarrow) for a failed request, retryable and never a
  sign of damage; ``pyarrow.ArrowException`` for bytes that are not the Parquet expected. Nothing read
  before an error is returned as a complete file.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Generator, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Final, NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq

from analytics.timeutil import EPOCH, to_naive_utc
from lake.parquet import DICTIONARY_COLUMNS
from lake.storage import Storage
from utils.records import DOOR_ID, LAKE_SCHEMA

COLUMNS: Final[tuple[str, ...]] = tuple(name for name in LAKE_SCHEMA.names if name != "event_id")
# Fields of later record versions, read where a file holds them and null where it does not (schema evolution).
OPTIONAL: Final[tuple[str, ...]] = (DOOR_ID,)
# The text columns the lake dictionary-encodes are read as Arrow dictionaries: decoding them into strings
# would cost more than the whole read (and DuckDB groups dictionary columns as fast as it reads Parquet).
DICTIONARY_TEXT: Final[tuple[str, ...]] = tuple(name for name in DICTIONARY_COLUMNS if name in COLUMNS)
SCHEMA: Final[pa.Schema] = pa.schema(
    [
        LAKE_SCHEMA.field(name).with_type(pa.dictionary(pa.int32(), pa.string()))
        if name in DICTIONARY_TEXT
        else LAKE_SCHEMA.field(name)
        for name in COLUMNS
    ]
    + [pa.field(name, pa.string()) for name in OPTIONAL]
)
TIME_COLUMN: Final = "badge_out_timestamp"
CHUNK_ROWS: Final = 256 * 1024  # one row group of a compacted file (lake.parquet.ROW_GROUP_ROWS)
READ_AHEAD: Final = 8  # files read concurrently ahead of the one being consumed
READ_AHEAD_ROWS: Final = 1_000_000  # rows those files may hold together (about 35 MB of COLUMNS)
# Rows a caller may gather before aggregating them (about 70 MB of COLUMNS): a file up to this size is
# aggregated whole, so its pieces need no merging afterwards.
BATCH_ROWS: Final = 2 * 1024 * 1024
WHOLE_OBJECT_BYTES: Final = 8 * 1024 * 1024  # files up to this size are fetched in one request


class FileRef(NamedTuple):
    """A data file to read, as the table's log describes it."""

    key: str
    rows: int
    size: int


Span = tuple[int | None, int | None]  # badge-out microseconds [lo, hi); None = unbounded


def _us(value: object) -> int | None:
    """A statistic's value in microseconds since the epoch, or None if it is not a datetime."""
    if not isinstance(value, datetime):
        return None
    return (to_naive_utc(value) - EPOCH) // timedelta(microseconds=1)


def row_groups(metadata: pq.FileMetaData, span: Span) -> list[int]:
    """The row groups of a file that may hold badge-outs in ``span`` (all of them for an unbounded span).

    Conservative: a row group is left out only if its min/max statistics of :data:`TIME_COLUMN` prove
    it holds no value in ``span``.
    """
    indices = list(range(metadata.num_row_groups))
    lo, hi = span
    if lo is None and hi is None:
        return indices
    names = metadata.schema.names
    if TIME_COLUMN not in names:
        return indices
    column = names.index(TIME_COLUMN)
    kept: list[int] = []
    for i in indices:
        stats = metadata.row_group(i).column(column).statistics
        low = high = None
        if stats is not None and stats.has_min_max:
            low, high = _us(stats.min), _us(stats.max)
        if low is None or high is None or ((lo is None or high >= lo) and (hi is None or low < hi)):
            kept.append(i)
    return kept


@contextlib.contextmanager
def _open(storage: Storage, ref: FileRef) -> Iterator[pq.ParquetFile]:
    if ref.size <= WHOLE_OBJECT_BYTES:
        source: pa.NativeFile = pa.BufferReader(storage.read_bytes(ref.key))
    else:
        source = storage.open_input(ref.key)
    with source:
        # pre_buffer: the column chunks of a read are fetched together, in concurrent coalesced ranged GETs.
        yield pq.ParquetFile(source, pre_buffer=True, read_dictionary=list(DICTIONARY_TEXT))


def _columns(parquet: pq.ParquetFile) -> list[str]:
    """What to read of a file: :data:`COLUMNS`, and the :data:`OPTIONAL` ones it holds."""
    names = set(parquet.schema_arrow.names)
    return [*COLUMNS, *(name for name in OPTIONAL if name in names)]


def _conform(table: pa.Table) -> pa.Table:
    for name in OPTIONAL:
        if name not in table.column_names:
            table = table.append_column(pa.field(name, pa.string()), pa.nulls(table.num_rows, pa.string()))
    return table.select(SCHEMA.names).cast(SCHEMA)


def read_whole(storage: Storage, ref: FileRef, span: Span = (None, None)) -> pa.Table:
    """:data:`COLUMNS` of the row groups of the file that may overlap ``span``, as one table (:data:`SCHEMA`)."""
    with _open(storage, ref) as parquet:
        groups = row_groups(parquet.metadata, span)
        if not groups:
            return SCHEMA.empty_table()
        return _conform(parquet.read_row_groups(groups, columns=_columns(parquet)))


def read_pieces(
    storage: Storage, ref: FileRef, span: Span = (None, None), chunk_rows: int = CHUNK_ROWS
) -> Iterator[pa.Table]:
    """:data:`COLUMNS` of the file (row groups that may overlap ``span``) in pieces of whole row groups.

    A piece holds row groups up to ``chunk_rows`` rows together (at least one row group).
    """
    with _open(storage, ref) as parquet:
        metadata = parquet.metadata
        piece: list[int] = []
        rows = 0
        for group in row_groups(metadata, span):
            count = metadata.row_group(group).num_rows
            if piece and rows + count > chunk_rows:
                yield _conform(parquet.read_row_groups(piece, columns=_columns(parquet)))
                piece, rows = [], 0
            piece.append(group)
            rows += count
        if piece:
            yield _conform(parquet.read_row_groups(piece, columns=_columns(parquet)))


def iter_tables(
    storage: Storage,
    files: Sequence[FileRef],
    span: Span = (None, None),
    *,
    ahead: int = READ_AHEAD,
    ahead_rows: int = READ_AHEAD_ROWS,
    chunk_rows: int | None = None,
) -> Generator[tuple[int, pa.Table]]:
    """``(position in files, table)`` for every file, in order, each file read once (see the module docstring).

    Files of at most ``chunk_rows`` rows by the log (default :data:`CHUNK_ROWS`) are read whole, up to
    ``ahead`` of them (of at most ``ahead_rows`` rows together) concurrently ahead of the consumer; larger
    files are read in pieces, one at a time, when their turn comes. Closing the iterator early cancels the
    reads not started and waits for those running.
    """
    chunk_rows = CHUNK_ROWS if chunk_rows is None else chunk_rows
    pool = ThreadPoolExecutor(max_workers=max(1, ahead), thread_name_prefix="lake-read")
    pending: deque[tuple[int, int, Future[pa.Table] | None]] = deque()  # (position, rows ahead, read)
    next_position = 0
    rows_ahead = 0

    def fill() -> None:
        nonlocal next_position, rows_ahead
        while next_position < len(files) and len(pending) < max(1, ahead):
            ref = files[next_position]
            if ref.rows > chunk_rows:  # read in pieces when its turn comes, never ahead
                pending.append((next_position, 0, None))
            elif pending and rows_ahead + ref.rows > ahead_rows:
                return
            else:
                pending.append((next_position, ref.rows, pool.submit(read_whole, storage, ref, span)))
                rows_ahead += ref.rows
            next_position += 1

    try:
        fill()
        while pending:
            position, rows, future = pending.popleft()
            rows_ahead -= rows
            fill()
            if future is not None:
                yield position, future.result()
                continue
            for piece in read_pieces(storage, files[position], span, chunk_rows):
                yield position, piece
                fill()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class BatchStream:
    """The files' :data:`COLUMNS` as one Arrow stream for DuckDB (``register`` it; it is consumed once).

    Streams piece by piece (memory as :func:`iter_tables`); :meth:`close` stops the reads (call it after
    the query, whatever happened).
    """

    def __init__(self, storage: Storage, files: Sequence[FileRef], span: Span = (None, None)) -> None:
        self._tables = iter_tables(storage, files, span)
        self.reader = pa.RecordBatchReader.from_batches(SCHEMA, self._batches())

    def _batches(self) -> Iterator[pa.RecordBatch]:
        for _, table in self._tables:
            yield from table.to_batches()

    def close(self) -> None:
        self._tables.close()


__all__ = [
    "BATCH_ROWS",
    "CHUNK_ROWS",
    "COLUMNS",
    "SCHEMA",
    "WHOLE_OBJECT_BYTES",
    "BatchStream",
    "FileRef",
    "Span",
    "iter_tables",
    "read_pieces",
    "read_whole",
    "row_groups",
]
