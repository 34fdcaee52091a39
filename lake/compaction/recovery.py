"""Recovery at start: remove the compactor's unfinished temp files, then run the clean-up after grace.

Safe after a crash at any step: the table is whole whatever step the crash hit (the commit is atomic),
a temp file is never part of the lake, and outputs published but never committed are files outside
the table, which the clean-up deletes after the grace period like any other.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from lake import layout
from lake.compaction.writing import KIND
from lake.storage import Storage

log = logging.getLogger(__name__)


def remove_temp_leftovers(storage: Storage) -> list[str]:
    """Delete the files in temp/ whose names start with KIND (unfinished outputs); returns their keys.

    Only for the holder of the compactor lock: no other process writes such temp files.
    """
    removed: list[str] = []
    for info in storage.list_all(layout.TEMP):
        if info.name.startswith(f"{KIND}-") and storage.delete(info.key):
            removed.append(info.key)
    if removed:
        log.info("recovery: removed %d unfinished compaction temp file(s)", len(removed))
    return removed


def recover(storage: Storage, clean_up: Callable[[], list[str]]) -> dict[str, list[str]]:
    """Remove the temp leftovers, then run ``clean_up``; returns what each removed.

    Idempotent: running it again after a crash during it finishes the job.
    """
    removed = remove_temp_leftovers(storage)
    return {"temp_removed": removed, "deleted": clean_up()}
