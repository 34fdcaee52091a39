"""The quarantine zone: refused records written into it, foreign or corrupt files moved into it, and its count.

Nothing in ``quarantine/`` is ever part of the live set, every file moved there keeps its reason beside
it, and one count (files and rows, reason files excluded) serves every report.

*Refused records.* A flush commits the quarantine file for the refused records of its range *before*
the landing file that holds the range's valid records, and only refused records below that landing
file's last event id go into it. So a quarantine file is confirmed exactly when a landing file with
higher event ids is committed; one whose ``badge.event_id_min`` is at or beyond the resume cursor is
the orphan of a flush that never finished. Removing it at start is safe: the source is deterministic
per cursor, so those records are fetched and refused again. Every event id is thus, exactly once,
either in the live set or in ``quarantine/``.

*Foreign and corrupt files.* A file in ``landing/`` or ``compacted/`` that is not a lake data file
(foreign name, unreadable Parquet, missing badge metadata, or contents that contradict it) is moved
into ``quarantine/`` with a ``<name>.reason.json`` file saying why; the live set already leaves it out.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import pyarrow as pa

from lake import layout
from lake.liveset import FOOTER_CACHE, LiveSet, MetadataCache, live_set, parse_badge_metadata
from lake.parquet import write_file
from lake.storage import FileInfo, LocalStorage
from utils.errors import CommitError, CorruptFileError
from utils.records import QUARANTINE_SCHEMA

log = logging.getLogger(__name__)

KIND: Final = "quarantine"  # file names (and temp names) of refused-record files start with this
SIDECAR_SUFFIX: Final = ".reason.json"  # beside a file moved into quarantine/: why it is there
# A file in landing/ younger than this is not judged foreign yet (a foreign writer may still be copying it).
FOREIGN_MIN_AGE_SECONDS: Final = 2.0


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
    """True for files the pipeline writes into quarantine/ (not foreign files moved there)."""
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


# -- foreign and corrupt files --------------------------------------------------------------------------


def is_reason_file(name: str) -> bool:
    """True for the ``<name>.reason.json`` written beside a file moved into quarantine/ (not itself quarantined)."""
    return name.endswith(SIDECAR_SUFFIX)


def why_invalid(storage: LocalStorage, info: FileInfo) -> str | None:
    """Why ``info`` is not a lake data file, or None if it is one (or vanished); reads its footer afresh."""
    if not info.name.endswith(layout.PARQUET_SUFFIX):
        return "not a Parquet data file (foreign name)"
    try:
        parse_badge_metadata(info, storage.read_metadata(info.key))
    except CorruptFileError as exc:
        return str(exc)
    except FileNotFoundError:
        return None
    return None


def quarantine_file(storage: LocalStorage, key: str, reason: str, *, by: str, temp_name: str) -> str:
    """Move ``key`` into quarantine/ and write ``<name>.reason.json`` beside it; returns the new key.

    The move is atomic; the reason file is staged in temp/ as ``temp_name`` (so the caller's recovery
    removes a leftover) and published whole, and failing to write it only logs a warning.
    """
    new_key = storage.move(key, layout.QUARANTINE)
    sidecar = {
        "file": new_key,
        "original": key,
        "reason": reason,
        "quarantined_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "by": by,
    }
    tmp = storage.new_temp_path(temp_name)
    try:
        tmp.write_text(json.dumps(sidecar, indent=2) + "\n")
        storage.publish(tmp, layout.QUARANTINE, new_key.rsplit("/", 1)[-1] + SIDECAR_SUFFIX)
    except (OSError, CommitError) as exc:
        tmp.unlink(missing_ok=True)
        log.warning("could not write the reason file for %s: %s", new_key, exc)
    log.warning("quarantined %s -> %s: %s", key, new_key, reason)
    return new_key


def quarantine_foreign(
    storage: LocalStorage,
    *,
    clock: Callable[[], float],
    by: str,
    temp_name: str,
    min_age_seconds: float = FOREIGN_MIN_AGE_SECONDS,
    live: LiveSet | None = None,
) -> list[str]:
    """Move foreign or corrupt files out of landing/ and compacted/ into quarantine/; returns their new keys.

    Each suspect is checked again without any cache first, and left alone while younger than
    ``min_age_seconds`` by ``clock``; ``by`` and ``temp_name`` are as for :func:`quarantine_file`.
    """
    live = live if live is not None else live_set(storage)
    suspects = set(live.invalid)
    listed: dict[str, FileInfo] = {}
    for zone in layout.DATA_ZONES:
        for info in storage.list_all(zone):
            listed[info.key] = info
            if not info.name.endswith(layout.PARQUET_SUFFIX):
                suspects.add(info.key)
    now = clock()
    moved: list[str] = []
    for key in sorted(suspects):
        found = listed.get(key)
        if found is None or now - found.mtime_ns / 1e9 < min_age_seconds:
            continue
        reason = why_invalid(storage, found)
        if reason is not None:
            moved.append(quarantine_file(storage, key, reason, by=by, temp_name=temp_name))
    return moved


# -- what quarantine/ holds -----------------------------------------------------------------------------


@dataclass(frozen=True)
class QuarantineCount:
    """What quarantine/ holds: files (reason files excluded), the rows they hold, their bytes."""

    files: int
    rows: int
    bytes: int
    unreadable: int  # counted files whose row count could not be read (foreign names, broken footers)
    footers_read: int  # footers read from storage for this count (the others came from the cache)


def count_quarantine(storage: LocalStorage, cache: MetadataCache | None = None) -> QuarantineCount:
    """Count the files and rows in quarantine/: every file but the ``.reason.json`` beside moved ones.

    Rows come from each Parquet file's ``badge.row_count`` (else its footer's count), through the
    bounded footer cache, so each file's footer is read once; a missing zone counts as empty.
    """
    cache = cache or FOOTER_CACHE
    files = rows = size = unreadable = read = 0
    for info in storage.list_all(layout.QUARANTINE):
        if is_reason_file(info.name):
            continue
        files += 1
        size += info.size
        if not info.name.endswith(layout.PARQUET_SUFFIX):
            unreadable += 1
            continue
        try:
            footer, fresh = cache.footer(storage, info)
        except FileNotFoundError:  # removed since the listing
            unreadable += 1
            read += 1
            continue
        read += fresh
        if footer.rows is None:
            unreadable += 1
        else:
            rows += footer.rows
    return QuarantineCount(files, rows, size, unreadable, read)
