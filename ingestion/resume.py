"""Where a starting pipeline resumes: its own leftovers removed, the cursor derived from the lake.

Exactly-once rests on it (with the deterministic source): every event below the cursor is committed
exactly once, in the live set or in quarantine/, and nothing at or beyond it is.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from lake import layout, quarantine
from lake.liveset import live_set
from lake.storage import LocalStorage
from lake.writer import OWN_KINDS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResumePoint:
    """Where a starting pipeline resumes, and what it cleaned up to get there."""

    cursor: int
    removed_temp: tuple[str, ...]
    removed_orphans: tuple[str, ...]


def remove_own_temp(storage: LocalStorage) -> list[str]:
    """Delete the pipeline's leftovers in temp/ (kinds landing and quarantine); never the compactor's."""
    removed = []
    for info in storage.list_all(layout.TEMP):
        if info.name.startswith(tuple(f"{kind}-" for kind in OWN_KINDS)):
            storage.delete(info.key)
            removed.append(info.key)
    return removed


def recover(storage: LocalStorage) -> ResumePoint:
    """Make the lake ready for a new pipeline run; call only while holding the pipeline lock.

    Idempotent. Afterwards every event below ``cursor`` is committed exactly once (in the live set or
    in quarantine/) and nothing at or beyond it is.
    """
    storage.ensure_layout()
    temp = remove_own_temp(storage)
    cursor = live_set(storage).next_event_id
    orphans = quarantine.remove_orphans(storage, cursor)
    if temp:
        log.info("removed %d leftover temp file(s) of an interrupted flush", len(temp))
    return ResumePoint(cursor, tuple(temp), tuple(orphans))
