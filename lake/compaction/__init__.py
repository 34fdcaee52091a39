"""Compaction: merge the many small files of ``landing/`` into few large files in ``compacted/``, crash-safely.

The lake is its Delta table (:mod:`lake.table`): a file is part of it when, and only when, a commit adds
it. Every snapshot holds each event exactly once at every step below, and a compactor killed at any
instant is repaired by running it again. The protocol, module by module:

1. **Snapshot** (:mod:`.planning`). Once the table's snapshot holds at least ``COMPACTION_MIN_FILES``
   landing files, take them plus the compacted files under ``COMPACTION_TARGET_MIN_MB`` (tiering),
   ordered by first event id (from the statistics in the log), cut into *runs* of files that are
   consecutive in the snapshot (so an output never spans a file it does not replace and its event-id
   range stays tight). Nothing outside the snapshot is ever read: files no commit added (foreign,
   forged, orphaned) are inert.
2. **Stream** (:mod:`.reading`, :mod:`.sizing`, :mod:`.writing`). Each run is read batch by batch (a
   reader thread decodes ahead, bounded to a couple of batches), each input checked against its
   statistics in the log, and written into temp files of kind ``compacted``, in event-id order, in
   row groups of :data:`lake.parquet.ROW_GROUP_ROWS` rows. Output boundaries fall between input files,
   chosen by *measured* size: balanced outputs, each under ``COMPACTION_TARGET_MAX_MB``. An output that
   still ends above the ceiling is discarded and written again with fewer inputs, so the ceiling is
   strict (only a single input larger than the ceiling is compacted alone).
3. **Publish** (:mod:`.commit`) each output into ``compacted/``: whole, durable, and not yet part of the
   lake (``badge.sources`` in its footer names its inputs, for humans only).
4. **Commit** (:mod:`.commit`): ONE transaction removes every input and adds every output
   (``dataChange=false``), after checking against the newest version that every input is still in the
   table (if not, nothing is committed and the outputs are deleted). A stop mid-compaction commits the
   outputs finished so far with exactly their inputs. An input that cannot be read (I/O error, bad
   data, rows contradicting its statistics) is reported and tried again next cycle: it is never
   quarantined, never dropped from the table.
5. **Clean-up after grace** (:mod:`lake.cleanup`): files out of the table for ``COMPACTION_GRACE_SECONDS``
   (replaced inputs, outputs of a crashed compaction, orphans and foreign files alike) are deleted, so
   a reader holding an older snapshot can still read its files.
6. **Recover** (:mod:`.recovery`) on start: remove this role's temp leftovers, then clean up.

Memory stays bounded by a few row groups whatever the input size. :class:`Compactor` (:mod:`.compactor`)
composes the steps; every compaction returns a :class:`CompactionMetrics` and logs one line. The steps
are named in :mod:`.steps`, where tests hook crashes and pauses.
"""

from lake.compaction.compactor import MAX_COMPACTIONS_PER_CYCLE, Compactor
from lake.compaction.metrics import CompactionMetrics, CycleReport
from lake.compaction.planning import CompactionPlan
from lake.compaction.reading import InputOpener, UnreadableInputError
from lake.compaction.sizing import SizeModel
from lake.compaction.steps import (
    STEP_COMMITTED,
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
    "STEP_COMMITTED",
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
    "InputOpener",
    "SizeModel",
    "StepHook",
    "UnreadableInputError",
    "pause_hook",
]
