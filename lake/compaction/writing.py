"""Writing one compacted output into temp/: rows buffered into full row groups, its size measured as it grows.

Nothing of an output is visible before the compaction's commit adds it: until it is published into
compacted/ it lives in temp/ under a name starting with KIND, and ``discard()`` (or recovery after a
crash) removes it.
"""

from __future__ import annotations

import contextlib
from typing import Final, Protocol

import numpy as np
import pyarrow as pa

from lake.compaction.schema import WRITE_SCHEMA, open_output
from lake.compaction.sizing import SizeModel
from lake.parquet import ROW_GROUP_ROWS
from lake.snapshot import DataFile
from lake.storage import Storage, fsync_file

KIND: Final = "compacted"  # names of compacted files and of this role's temp files start with "compacted-"


class RowsTap(Protocol):
    """What else sees an output's rows, a row group at a time (its aggregates: see
    :class:`lake.compaction.aggregating.OutputAggregator`)."""

    def feed(self, rows: pa.Table) -> None: ...

    def cancel(self) -> None: ...


class Output:
    """One compacted file being written into temp/: rows buffered into full row groups, size measured."""

    def __init__(
        self,
        storage: Storage,
        first: int,
        name_hint: str,
        model: SizeModel,
        schema: pa.Schema = WRITE_SCHEMA,
        *,
        tap: RowsTap | None = None,
    ) -> None:
        self.schema = schema
        self.tap = tap  # fed every row group written; cancelled if the output is abandoned
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
            self._writer = open_output(self._sink, schema)
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
        table = pa.Table.from_batches(self._pending, schema=self.schema).unify_dictionaries()
        written = table.slice(0, rows)
        self._writer.write_table(written, row_group_size=rows)
        if self.tap is not None:
            self.tap.feed(written)
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
        if self.tap is not None:
            self.tap.cancel()
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
