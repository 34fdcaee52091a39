"""The commit and deletion-after-grace protocol: publishing an output replaces its sources; deleting them waits.

Publishing is the commit point (the output appears whole, with ``badge.sources`` naming what it
replaces, and the sources leave the live set at that instant). A replaced file is deleted only once
the grace period has passed since the commit and none of the files it names exists any more (leaves
first), so a reader that listed it can still read it. State lives in the files alone: a restart loses nothing.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Callable

from lake import layout
from lake.compaction.steps import STEP_DELETED, STEP_DELETING, STEP_PUBLISHED, STEP_WRITTEN, StepHook
from lake.compaction.writing import KIND, Output
from lake.liveset import DataFile, live_set
from lake.storage import FileInfo, LocalStorage

log = logging.getLogger(__name__)


def publish_output(storage: LocalStorage, out: Output, lo: int, hi: int, step: StepHook) -> FileInfo:
    """Commit the closed output ``out`` (events ``lo..hi``) into compacted/; its sources leave the live set.

    Atomic: after it returns the output is durable and live; if it raises, nothing was published.
    """
    step(STEP_WRITTEN, out.tmp.name)
    os.utime(out.tmp)  # the grace period runs from the commit, not from when writing began
    name = layout.new_file_name(KIND, max(lo, 0), max(hi, 0))
    info = storage.publish(out.tmp, layout.COMPACTED, name)
    step(STEP_PUBLISHED, info.key)
    return info


def delete_due(
    storage: LocalStorage,
    *,
    grace_seconds: float,
    clock: Callable[[], float],
    stop: threading.Event,
    step: StepHook,
) -> list[str]:
    """Delete replaced files whose grace period has passed, leaves first; returns the deleted keys.

    A replaced file is due when ``clock()`` >= mtime of the compacted file naming it + grace; a replaced
    compacted file is deleted only once none of the files it names exists any more. Ends early on ``stop``.
    """
    live = live_set(storage)
    if not live.replaced:
        return []
    now = clock()
    named_at: dict[str, float] = {}
    for f in (*live.files, *live.replaced):
        for src in f.sources:
            named_at[src] = max(named_at.get(src, 0.0), f.info.mtime_ns / 1e9)
    pending = sorted(
        (f for f in live.replaced if now >= named_at.get(f.key, math.inf) + grace_seconds),
        key=lambda f: (f.info.mtime_ns, f.key),
    )
    deleted: list[str] = []
    progress = True
    while pending and progress and not stop.is_set():
        progress = False
        waiting: list[DataFile] = []
        for f in pending:
            if stop.is_set():
                break
            if any(storage.exists(src) for src in f.sources):
                waiting.append(f)  # a leaf it names is still there: it goes first
                continue
            step(STEP_DELETING, f.key)
            storage.delete(f.key)
            step(STEP_DELETED, f.key)
            deleted.append(f.key)
            progress = True
        pending = waiting
    if deleted:
        log.info("deleted %d replaced file(s) after the %.1f s grace period", len(deleted), grace_seconds)
    return deleted
