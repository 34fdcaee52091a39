"""Retention: events older than ``RETENTION_DAYS`` leave the lake's tables, whole dates at a time.

The *horizon* is the UTC date ``RETENTION_DAYS`` before today: events whose ``badge_out_timestamp`` falls on
an earlier date are expired (``RETENTION_DAYS=1`` keeps yesterday and today; 0 keeps everything).

One expiry (:func:`expire`, run by the compactor each cycle) makes two commits:

1. on the events table, one commit removes (``dataChange: true``) every file of the expired dates — in a
   partitioned table, the files of the partitions before the horizon; in a table from before partitions,
   the files whose newest event is before it — and sets retention's application transaction
   (``badge-retention``, :data:`lake.table.RETENTION_APP_ID`) to the last event id expired. Only a run of
   files from the table's first event id is removed, all of whose ids lie below every id left, so that
   the mark alone tells expired ids from kept ones (an old file behind a newer one, or interleaved with
   one in ids, waits for it to expire). The service numbers its records in badge-out order, so whole
   dates go as they pass the horizon; a source whose ids are not in event-time order (sessions that
   close on a later date than records after them) has its dates expire late, never early;
2. on the quarantine table, one commit removes the refused records at or below that mark (files wholly
   below it): they name employees too. A file of records whose ids could not be read at all has no place
   in the stream's order and is kept.

Guarantees: an event expires only whole (its file leaves the table in one commit, and every file holding
it leaves: no reader ever sees half a date), and the mark only moves forward, so ``python -m lake
verify`` knows ids at or below it are expired, not missing. The pipeline never fetches an expired event
again: it resumes after its own position, which is at or beyond the mark. The files removed are deleted
by the clean-up after the grace period, as a compaction's inputs are. A crash between the two commits
leaves quarantine entries below the mark, removed by the next expiry; both commits are idempotent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from lake.snapshot import DataFile
from lake.table import RETENTION_APP_ID, LakeTable, QuarantineTable, remove_action

log = logging.getLogger(__name__)

OPERATION = "retention"  # the ``badge.operation`` of retention's commits


def horizon(days: int, today: date) -> date | None:
    """The first date kept with ``days`` of retention (None: keep everything)."""
    return None if days <= 0 else today - timedelta(days=days)


def _expired(f: DataFile, first_kept: date) -> bool:
    if f.partition is not None:
        return f.partition < first_kept
    if f.row_count == 0:
        return True  # holds nothing: goes with the files around it
    return f.badge_out_max is not None and f.badge_out_max < datetime.combine(first_kept, datetime.min.time())


def _expired_prefix(files: Sequence[DataFile], first_kept: date) -> list[DataFile]:
    """The longest run of expired files from the first (files sorted by first event id) whose ids all lie
    below every id of the files after it, so that one mark tells expired ids from kept ones (files of two
    dates may interleave in ids when a source's event times are not in id order)."""
    n = 0
    while n < len(files) and _expired(files[n], first_kept):
        n += 1
    suffix_min = [float("inf")] * (len(files) + 1)
    for i in range(len(files) - 1, -1, -1):
        here = files[i].event_id_min if files[i].row_count else float("inf")
        suffix_min[i] = min(here, suffix_min[i + 1])
    best, top = 0, -1
    for k in range(1, n + 1):
        if files[k - 1].row_count:
            top = max(top, files[k - 1].event_id_max)
        if top < suffix_min[k]:
            best = k
    return list(files[:best])


@dataclass(frozen=True)
class Expiry:
    """What one expiry did: the files it removed from each table, and the mark it set."""

    horizon: date
    files: tuple[str, ...]
    rows: int
    quarantine_files: tuple[str, ...]
    expired_through: int | None

    def summary(self) -> str:
        return (
            f"retention: {len(self.files)} file(s), {self.rows:,} events before {self.horizon} expired "
            f"(through event {self.expired_through}); {len(self.quarantine_files)} quarantine file(s) with them"
        )


def expire(
    table: LakeTable,
    quarantine: Callable[[], QuarantineTable | None],
    first_kept: date,
    *,
    before_commit: Callable[[], None] | None = None,
    quarantine_done_through: int | None = None,
) -> Expiry | None:
    """Remove the events before ``first_kept`` from both tables (see the module docstring); None if nothing
    was due.

    ``quarantine`` opens the quarantine table (None if there is none); it is looked at only when the mark is
    not ``quarantine_done_through`` (what an earlier call of this process cleared already), so a cycle with
    nothing due reads one log. ``before_commit`` runs right before each commit (the compactor's lease
    check). Raises LakeError if a commit failed (nothing of it landed, or it did: the next call looks again).
    """
    table.refresh()
    expired = _expired_prefix(table.data_files(), first_kept)
    mark = table.expired_through()
    removed: tuple[str, ...] = ()
    rows = 0
    tops = [f.event_id_max for f in expired if f.row_count]
    if expired:
        if tops:
            mark = max(tops) if mark is None else max(mark, *tops)
        now_ms = int(time.time() * 1000)
        actions = [remove_action(table.path_of(f.key), f.info, data_change=True, at_ms=now_ms) for f in expired]
        if before_commit is not None:
            before_commit()
        # Files without rows alone move no mark: their removal carries none (or the one in force).
        table.commit(list(actions), OPERATION, txn=mark, app=RETENTION_APP_ID)
        removed = tuple(f.key for f in expired)
        rows = sum(f.row_count for f in expired)
    refused: tuple[str, ...] = ()
    held = quarantine() if mark is not None and mark != quarantine_done_through else None
    if held is not None and mark is not None:
        held.refresh()
        below = [f for f in held.data_files() if 0 <= f.event_id_max <= mark]  # ids unknown: kept
        if below:
            if before_commit is not None:
                before_commit()
            held.remove(below, OPERATION)
            refused = tuple(f.key for f in below)
    expiry = Expiry(first_kept, removed, rows, refused, mark)
    if not removed and not refused:
        return expiry if mark != quarantine_done_through else None
    log.info("%s", expiry.summary())
    return expiry
