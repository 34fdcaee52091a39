"""Publishing outputs into compacted/ and the one commit that makes them the lake: remove the inputs, add the outputs.

An output published into compacted/ is not part of the lake yet: no reader sees it until the commit adds
it. The commit removes every input and adds every output in one transaction (``dataChange=false``), and
only if every input is still in the table; otherwise nothing is committed and the outputs, which no
reader can ever have seen, are deleted at once. Replaced inputs stay on disk until the clean-up after
grace (:mod:`lake.cleanup`) deletes them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow.parquet as pq

from lake import layout, partitions
from lake.compaction.steps import STEP_COMMITTED, STEP_PUBLISHED, STEP_WRITTEN, StepHook
from lake.compaction.writing import KIND, Output
from lake.filestats import FileStats
from lake.snapshot import DataFile
from lake.storage import FileInfo, LocalStorage, Storage
from lake.table import LakeTable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Finished:
    """An output published into compacted/ and the inputs it replaces, awaiting the compaction's commit."""

    info: FileInfo
    inputs: tuple[DataFile, ...]
    rows: int
    predicted: int  # its size as predicted when it started (bytes)


def publish_output(storage: Storage, out: Output, lo: int, hi: int, step: StepHook) -> FileInfo:
    """Publish the closed output ``out`` (events ``lo..hi``) into compacted/, in its inputs' date partition
    (``compacted/date=YYYY-MM-DD/``); it is not in the table yet.

    Atomic: after it returns the output is durable and whole in compacted/; if it raises, nothing was published.
    """
    step(STEP_WRITTEN, out.tmp.name)
    os.utime(out.tmp)  # its age is what the clean-up's mtime rule sees: from now, not from when writing began
    name = layout.new_file_name(KIND, max(lo, 0), max(hi, 0))
    days = {f.partition for f in out.inputs if f.row_count}
    if len(days) > 1:  # planning keeps a run within one date
        raise ValueError(f"an output of {len(days)} dates: {sorted(map(str, days))}")
    day = days.pop() if days else None  # an output of empty inputs only: no date (as their partition value)
    info = storage.publish(out.tmp, partitions.directory(layout.COMPACTED, day), name)
    step(STEP_PUBLISHED, info.key)
    return info


def commit_outputs(table: LakeTable, finished: Sequence[Finished], step: StepHook) -> int:
    """Commit ``finished`` in one transaction: remove all their inputs, add all of them; returns the version.

    Each output's statistics come from the footer of the file this compactor has just written. Raises
    StaleInputsError (nothing committed) if an input left the table since the snapshot, LakeError if
    the commit failed (it may have landed: see :func:`landed`).
    """
    storage = table.storage
    added = [(f.info, FileStats.of_footer(_footer(storage, f.info.key))) for f in finished]
    table.replace([i for f in finished for i in f.inputs], added)
    step(STEP_COMMITTED, f"version {table.version}")
    return table.version


def _footer(storage: Storage, key: str) -> pq.FileMetaData:
    """An output's footer: read straight from the local file, else through the storage (errors as LakeError)."""
    if isinstance(storage, LocalStorage):
        return pq.read_metadata(storage.path(key))
    return storage.read_footer(key)


def landed(table: LakeTable, finished: Sequence[Finished]) -> bool:
    """After a failed commit: True if it landed after all (every output in the table, no input left)."""
    table.refresh()
    keys = {f.key for f in table.data_files()}
    return all(f.info.key in keys for f in finished) and not any(i.key in keys for f in finished for i in f.inputs)


def discard_outputs(storage: Storage, finished: Sequence[Finished]) -> list[str]:
    """Delete outputs no commit added (none was ever in the table, so no reader can be reading one)."""
    deleted = [f.info.key for f in finished if storage.delete(f.info.key)]
    if deleted:
        log.info("deleted %d uncommitted compaction output(s)", len(deleted))
    return deleted
