"""Compaction: merge the many small files of ``landing/`` into few large files in ``compacted/``, crash-safely.

Every step leaves the live-set invariant true (each event exactly once, :mod:`lake.liveset`), and a
compactor killed at any instant is repaired by running it again. The protocol, module by module:

1. **Snapshot** (:mod:`.planning`). Once the live set holds at least ``COMPACTION_MIN_FILES`` landing
   files, take them plus the live compacted files under ``COMPACTION_TARGET_MIN_MB`` (tiering), ordered
   by first event id, cut into *runs* of files that are consecutive in the live set (so an output never
   spans a file it does not replace and its event-id range stays tight). Nothing outside the snapshot
   is ever touched.
2. **Stream** (:mod:`.reading`, :mod:`.sizing`, :mod:`.writing`). Each run is read batch by batch (a
   reader thread decodes ahead, bounded to a couple of batches) and written into temp files of kind
   ``compacted``, in event-id order, in row groups of :data:`lake.parquet.ROW_GROUP_ROWS` rows. Output
   boundaries fall between input files, chosen by *measured* size: balanced outputs, each under
   ``COMPACTION_TARGET_MAX_MB``. An output that still ends above the ceiling is discarded and written
   again with fewer inputs, so the ceiling is strict (only a single input larger than the ceiling is
   published alone, as it cannot be split without breaking the atomic replace).
3. **Publish** (:mod:`.commit`) into ``compacted/`` with ``badge.sources`` naming the inputs: the commit
   point, at which the sources leave the live set.
4. **Delete after grace** (:mod:`.commit`). A replaced file is deleted once ``COMPACTION_GRACE_SECONDS``
   have passed since the mtime of the compacted file naming it; a replaced compacted file only once none
   of its own sources exists (leaves first). State lives in the files alone, so restarts lose nothing.
5. **Recover** (:mod:`.recovery`) on start: remove this role's temp leftovers, then carry on with step 4.

Foreign or corrupt files in ``landing/`` or ``compacted/`` are moved to ``quarantine/`` with a
``<name>.reason.json`` beside them (:mod:`lake.quarantine`); compaction goes on without them. Memory
stays bounded by a few row groups whatever the input size. :class:`Compactor` (:mod:`.compactor`)
composes the steps; every compaction returns a :class:`CompactionMetrics` and logs one line. The steps
are named in :mod:`.steps`, where tests hook crashes and pauses.
"""

from lake.compaction.compactor import MAX_COMPACTIONS_PER_CYCLE, Compactor
from lake.compaction.metrics import CompactionMetrics, CycleReport
from lake.compaction.planning import CompactionPlan
from lake.compaction.sizing import SizeModel
from lake.compaction.steps import (
    STEP_DELETED,
    STEP_DELETING,
    STEP_PUBLISHED,
    STEP_SNAPSHOT,
    STEP_WRITING,
    STEP_WRITTEN,
    STEPS,
    CompactionStoppedError,
    StepHook,
    pause_hook,
)
from lake.compaction.writing import KIND

__all__ = [
    "KIND",
    "MAX_COMPACTIONS_PER_CYCLE",
    "STEPS",
    "STEP_DELETED",
    "STEP_DELETING",
    "STEP_PUBLISHED",
    "STEP_SNAPSHOT",
    "STEP_WRITING",
    "STEP_WRITTEN",
    "CompactionMetrics",
    "CompactionPlan",
    "CompactionStoppedError",
    "Compactor",
    "CycleReport",
    "SizeModel",
    "StepHook",
    "pause_hook",
]
