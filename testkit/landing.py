"""Landing files for the compactor's tests: :func:`testkit.records.lake_table` rows, published into landing/.

Event ids are consecutive from ``start``. The ground truth of every test is the range of ids it published.
"""

from __future__ import annotations

import os
import shutil

import pyarrow.parquet as pq

from lake import layout
from lake.compaction import KIND
from lake.filestats import FileStats
from lake.parquet import write_file
from lake.storage import FileInfo, LocalStorage
from lake.table import LOG_DIR, LakeTable
from testkit.records import TEST_IDENTITY, lake_table


def commit_files(storage: LocalStorage, infos: list[FileInfo]) -> None:
    """Commit published landing files to the lake's table (created for TEST_IDENTITY if absent), in order.

    Each append moves the pipeline's position to the file's last event id (never backwards).
    """
    table = LakeTable.open_or_create(storage, TEST_IDENTITY)
    for info in infos:
        stats = FileStats.of_footer(pq.read_metadata(storage.path(info.key)))
        position = table.committed_event_id()
        through = max(
            stats.event_id_max if stats.event_id_max is not None else -1, -1 if position is None else position
        )
        table.append(info, stats, through_event_id=through, expected=position)


def publish_landing(
    storage: LocalStorage, start: int, rows_per_file: int, files: int, *, commit: bool = True
) -> list[FileInfo]:
    """``files`` consecutive landing files of ``rows_per_file`` rows from event id ``start``, committed.

    ``commit=False`` leaves them published but uncommitted: orphans no reader sees.
    """
    infos = [
        write_file(storage, lake_table(start + i * rows_per_file, rows_per_file), layout.LANDING, "landing")
        for i in range(files)
    ]
    if commit:
        commit_files(storage, infos)
    return infos


def compactor_temp(storage: LocalStorage) -> list[str]:
    """The compactor's files in temp/."""
    return [f.key for f in storage.list_all(layout.TEMP) if f.name.startswith(f"{KIND}-")]


def clone_lake(template: LocalStorage, storage: LocalStorage) -> None:
    """Hard-link every data file of ``template`` (landing/ and compacted/) into ``storage``, mtimes kept,
    and copy its table's log, so ``storage`` is the same lake at the same version."""
    storage.ensure_layout()
    for zone in layout.DATA_ZONES:
        for info in template.list_all(zone):
            os.link(template.path(info.key), storage.path(info.key))
    log_dir = template.root / LOG_DIR
    if log_dir.is_dir():
        shutil.copytree(log_dir, storage.root / LOG_DIR)


def clone_landing(template: LocalStorage, storage: LocalStorage, limit: int | None = None) -> list[FileInfo]:
    """Hard-link the (first ``limit``) landing files of ``template`` into ``storage`` and commit them there."""
    storage.ensure_layout()
    for info in template.list_files(layout.LANDING)[:limit]:
        os.link(template.path(info.key), storage.path(info.key))
    infos = storage.list_files(layout.LANDING)
    commit_files(storage, infos)
    return infos
