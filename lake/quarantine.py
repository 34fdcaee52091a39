"""The quarantine: refused records as files of the quarantine table (``<lake>/quarantine``), and its count.

Only refused records live there, each row with its reason; a file is quarantined when, and only
when, a commit in ``quarantine/_delta_log`` adds it (:class:`lake.table.QuarantineTable`). Files in
``quarantine/`` that no commit added are not the quarantine: nothing counts or reads them, and the
compactor's clean-up deletes them after the grace period. Foreign or damaged files elsewhere in the
lake are no longer moved here: a file the events table's log does not add is simply not the lake.

*Order.* A flush appends the file of the refused records of its range to the quarantine table
*before* the commit that moves the pipeline's position past them (:mod:`lake.writer`), and only
refused records at or below the position that commit sets go into it (a flush of refused records
alone ends with a commit that carries only the new position). So an entry whose first event id is
at or beyond the resume cursor (the committed position + 1) belongs to a flush that never committed:
:func:`remove_orphans` takes it out of the table at the next start, and the source, deterministic
per cursor, refuses those records again. Every event id up to the committed position is thus,
exactly once, either in the events table or in the quarantine table.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import pyarrow as pa
import pyarrow.compute as pc

from lake import layout
from lake.filestats import QUARANTINE_STATS_COLUMNS, FileStats
from lake.parquet import write_file
from lake.storage import FileInfo, Storage
from lake.table import QuarantineTable
from utils.records import QUARANTINE_SCHEMA

log = logging.getLogger(__name__)

KIND: Final = "quarantine"  # file names (and temp names) of refused-record files start with this
ORPHANS_OPERATION: Final = "remove-orphans"  # the quarantine table's commit that drops unconfirmed entries


def reason_summary(table: pa.Table, limit: int = 3) -> str:
    """A short text for the file's ``badge.reason``: the most common reasons with their counts."""
    counts = Counter(str(r) for r in table.column("reason").to_pylist())
    top = "; ".join(f"{n} x {reason}" for reason, n in counts.most_common(limit))
    more = f"; {len(counts) - limit} more reasons" if len(counts) > limit else ""
    return f"{table.num_rows} refused record(s): {top}{more}"


def conform(table: pa.Table) -> pa.Table:
    """``table`` as exactly QUARANTINE_SCHEMA (columns selected and cast)."""
    if table.schema.equals(QUARANTINE_SCHEMA, check_metadata=False):
        return table
    return table.select(QUARANTINE_SCHEMA.names).cast(QUARANTINE_SCHEMA)


def from_records(records: pa.Table, reasons: Sequence[str]) -> pa.Table:
    """Records (RECORD_SCHEMA) refused after validation, as QUARANTINE_SCHEMA: each field as text, with its reason."""
    columns: dict[str, pa.Array | pa.ChunkedArray] = {"event_id": records.column("event_id")}
    for name in QUARANTINE_SCHEMA.names[1:-1]:
        columns[name] = pc.cast(records.column(name), pa.string())
    columns["reason"] = pa.array(list(reasons), pa.string())
    return pa.table(columns, schema=QUARANTINE_SCHEMA)


def refused_stats(table: pa.Table) -> FileStats:
    """The statistics the quarantine table keeps for a file of these refused records (rows, event id range)."""
    return FileStats.of_table(table, QUARANTINE_STATS_COLUMNS)


def write_refused(storage: Storage, table: pa.Table) -> FileInfo:
    """Publish refused records (QUARANTINE_SCHEMA, with a ``reason`` per row) as one file in ``quarantine/``.

    Atomic like every data file (staged in temp/, published whole, nothing partial left on failure),
    but not yet quarantined: only :func:`commit_refused` (or the writer's append) makes it so.
    """
    table = conform(table)
    return write_file(storage, table, layout.QUARANTINE, KIND, {layout.META_REASON: reason_summary(table)})


def commit_refused(storage: Storage, table: pa.Table) -> FileInfo:
    """Publish refused records and append the file to the quarantine table (created if absent).

    For one-off callers; the pipeline's writer does the same two steps with its own retries.
    """
    table = conform(table)
    info = write_refused(storage, table)
    quarantine = QuarantineTable.open(storage, create=True)
    assert quarantine is not None  # create=True
    quarantine.append(info, refused_stats(table))
    return info


def remove_orphans(storage: Storage, cursor: int) -> list[str]:
    """Take out of the quarantine table, in one commit, its files whose first event id is >= ``cursor``.

    Call only while holding the pipeline lock, with the cursor read from the events table's committed
    position. Idempotent. The files stay on disk (a reader of an older version may still read them)
    until the clean-up after grace deletes them. Returns the keys taken out.
    """
    quarantine = QuarantineTable.open(storage)
    if quarantine is None:
        return []
    quarantine.refresh()
    orphans = [f for f in quarantine.data_files() if f.row_count > 0 and f.event_id_min >= cursor]
    if not orphans:
        return []
    quarantine.remove(orphans, ORPHANS_OPERATION)
    for f in orphans:
        log.info(
            "removed orphan quarantine entry %s (events %d..%d: its flush never committed; they are fetched again)",
            f.key,
            f.event_id_min,
            f.event_id_max,
        )
    return [f.key for f in orphans]


# -- what the quarantine holds --------------------------------------------------------------------------


@dataclass(frozen=True)
class QuarantineCount:
    """What the quarantine table's newest version holds: its files, their rows and bytes.

    Counted from the log's statistics, so ``unreadable`` and ``footers_read`` are always 0 (kept for
    the callers that report them); files in ``quarantine/`` that no commit added are not counted.
    """

    files: int
    rows: int
    bytes: int
    unreadable: int = 0  # files whose row count could not be read (none: the log carries every count)
    footers_read: int = 0  # Parquet footers read for this count (none: only the log is read)


def count_quarantine(storage: Storage) -> QuarantineCount:
    """Files, rows and bytes of the quarantine table's newest version; all 0 while it does not exist.

    Reads the quarantine table's log only (no data file, no footer). Raises LakeError if the log
    cannot be read.
    """
    quarantine = QuarantineTable.open(storage)
    if quarantine is None:
        return QuarantineCount(0, 0, 0)
    files = quarantine.data_files()
    return QuarantineCount(len(files), sum(f.row_count for f in files), sum(f.info.size for f in files))
