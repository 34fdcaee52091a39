"""Recovery at start: remove the compactor's unfinished temp files, then carry on deleting what is due.

Safe after a crash at any step: a temp file is never part of the lake, and deletion resumes from the files alone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from lake import layout
from lake.compaction.writing import KIND
from lake.storage import LocalStorage

log = logging.getLogger(__name__)


def remove_temp_leftovers(storage: LocalStorage) -> list[str]:
    """Delete the files in temp/ whose names start with KIND (outputs and reason files); returns their keys.

    Only for the holder of the compactor lock: no other process writes such temp files.
    """
    removed: list[str] = []
    for info in storage.list_all(layout.TEMP):
        if info.name.startswith(f"{KIND}-") and storage.delete(info.key):
            removed.append(info.key)
    if removed:
        log.info("recovery: removed %d unfinished compaction temp file(s)", len(removed))
    return removed


def recover(storage: LocalStorage, delete_due: Callable[[], list[str]]) -> dict[str, list[str]]:
    """Remove the temp leftovers, then run ``delete_due``; returns what each removed.

    Idempotent: running it again after a crash during it finishes the job.
    """
    removed = remove_temp_leftovers(storage)
    return {"temp_removed": removed, "deleted": delete_due()}
