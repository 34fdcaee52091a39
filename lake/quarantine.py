"""Refused records in ``quarantine/``: writing them, and removing the orphans of an unfinished flush.

A flush commits the quarantine file for the refused records of its range *before* the landing file
that holds the range's valid records, and only refused records below that landing file's last event
id go into it (LAKE-PROTOCOL.md). So a quarantine file is confirmed exactly when a landing file with
higher event ids is committed; one whose ``badge.event_id_min`` is at or beyond the resume cursor is
the orphan of a flush that never finished. Removing it at start is safe: the source is deterministic
per cursor, so those records are fetched and refused again. Every event id is thus, exactly once,
either in the live set or in ``quarantine/``.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Final

import pyarrow as pa

from lake import layout
from lake.liveset import parse_badge_metadata
from lake.parquet import write_file
from lake.storage import FileInfo, LocalStorage
from utils.errors import CorruptFileError
from utils.records import QUARANTINE_SCHEMA

log = logging.getLogger(__name__)

KIND: Final = "quarantine"  # file names (and temp names) of refused-record files start with this


def reason_summary(table: pa.Table, limit: int = 3) -> str:
    """A short text for the file's ``badge.reason``: the most common reasons with their counts."""
    counts = Counter(str(r) for r in table.column("reason").to_pylist())
    top = "; ".join(f"{n} x {reason}" for reason, n in counts.most_common(limit))
    more = f"; {len(counts) - limit} more reasons" if len(counts) > limit else ""
    return f"{table.num_rows} refused record(s): {top}{more}"


def write_refused(storage: LocalStorage, table: pa.Table) -> FileInfo:
    """Publish refused records (QUARANTINE_SCHEMA, with a ``reason`` per row) as one file in ``quarantine/``.

    Atomic like every data file: staged in temp/, published whole, nothing partial left on failure.
    The badge metadata names the refused event ids it holds; ``badge.reason`` summarises why.
    """
    if table.schema != QUARANTINE_SCHEMA:
        table = table.select(QUARANTINE_SCHEMA.names).cast(QUARANTINE_SCHEMA)
    return write_file(storage, table, layout.QUARANTINE, KIND, {layout.META_REASON: reason_summary(table)})


def is_own_file(name: str) -> bool:
    """True for files the pipeline writes into quarantine/ (not foreign files the compactor moved there)."""
    return name.startswith(f"{KIND}-") and name.endswith(layout.PARQUET_SUFFIX)


def remove_orphans(storage: LocalStorage, next_event_id: int) -> list[str]:
    """Delete the pipeline's quarantine files at or beyond ``next_event_id`` (the resume cursor).

    Call only while holding the pipeline lock, after deriving the cursor from the live set.
    Foreign or unreadable files in quarantine/ are left alone. Returns the deleted keys.
    """
    removed: list[str] = []
    for info in storage.list_files(layout.QUARANTINE):
        if not is_own_file(info.name):
            continue
        try:
            meta = parse_badge_metadata(info, storage.read_metadata(info.key))
        except (CorruptFileError, FileNotFoundError):
            continue
        if meta.row_count > 0 and meta.event_id_min >= next_event_id:
            storage.delete(info.key)
            removed.append(info.key)
            log.info(
                "removed orphan quarantine file %s (events %d..%d: its flush never committed; they are fetched again)",
                info.key,
                meta.event_id_min,
                meta.event_id_max,
            )
    return removed
