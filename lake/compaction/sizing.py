"""Sizing compacted outputs: the size model, its calibration on a sample, and where an output ends.

Boundaries come from measured sizes (the model is relearnt from every output), so outputs are balanced
and planned under the ceiling; one that still ends above it is written again with fewer inputs.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

import pyarrow as pa

from lake.compaction.schema import WRITE_SCHEMA, open_output
from lake.parquet import ROW_GROUP_ROWS
from lake.snapshot import DataFile
from utils.errors import LakeError

log = logging.getLogger(__name__)

# Outputs are planned to this share of the ceiling, leaving room for the size estimate's error.
PLAN_FILL: Final = 0.95
# Rows encoded in memory to learn the output density before the first output of a process is planned.
CALIBRATION_ROWS: Final = 64 * 1024
# Bytes per output besides the rows (footer, a dictionary page per row group) until measured.
DEFAULT_FIXED_BYTES: Final = 16 * 1024


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


def input_density(f: DataFile) -> SizeModel:
    """A rough model from the input's own density, for when nothing was measured yet."""
    return SizeModel(f.info.size / max(1, f.row_count))


def encoded_size(table: pa.Table) -> int:
    """Bytes ``table`` (WRITE_SCHEMA, and any extra fields) takes as one compacted row group (written in memory)."""
    sink = pa.BufferOutputStream()
    with open_output(sink, table.schema) as writer:
        writer.write_table(table.unify_dictionaries(), row_group_size=max(1, table.num_rows))
    return int(sink.getvalue().size)


def calibrate(
    read: Callable[[DataFile], Generator[pa.RecordBatch, None, None]], files: Sequence[DataFile]
) -> SizeModel | None:
    """The output's size model, measured by encoding a sample of ``files`` in memory, twice; None if unreadable.

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
            with contextlib.closing(read(f)) as reader:  # closes the file when we stop early
                for batch in reader:
                    batches.append(batch.slice(0, CALIBRATION_ROWS - rows))
                    rows += batches[-1].num_rows
                    if rows >= CALIBRATION_ROWS:
                        break
            if rows >= CALIBRATION_ROWS:
                break
    except (LakeError, OSError):
        return None
    if rows < 2:
        return None
    sample = pa.Table.from_batches(batches, schema=batches[0].schema if batches else WRITE_SCHEMA)
    half = sample.slice(0, rows // 2)
    small, full = encoded_size(half), encoded_size(sample)
    per_row = max(0.01, (full - small) / (rows - half.num_rows))
    model = SizeModel(per_row, max(0.0, small - half.num_rows * per_row))
    log.debug("calibrated on %d rows: %s", rows, model)
    return model


class MeasuredOutput(Protocol):
    """What sizing needs to know of an output being written."""

    @property
    def inputs(self) -> Sequence[DataFile]: ...

    @property
    def rows_flushed(self) -> int: ...

    @property
    def flushed_bytes(self) -> int: ...

    def projected(self, extra_rows: int, model: SizeModel, sources: int) -> float: ...


def ends_before(
    out: MeasuredOutput, run: Sequence[DataFile], i: int, forced_end: int | None, *, max_bytes: int, model: SizeModel
) -> bool:
    """Whether ``out`` ends before input ``i`` of ``run``: by the ceiling, or to balance the run's outputs."""
    if forced_end is not None and i >= forced_end:
        return True
    cap = max_bytes * PLAN_FILL
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


def inputs_to_keep(inputs: int, size: int, max_bytes: int) -> int:
    """How many of an output's ``inputs`` to write again when it ended at ``size``, above ``max_bytes``."""
    return max(1, min(inputs - 1, int(inputs * max_bytes * PLAN_FILL / size)))
