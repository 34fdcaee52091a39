"""Landing files for the compactor's tests: :func:`testkit.records.lake_table` rows, published into landing/.

Event ids are consecutive from ``start``. The ground truth of every test is the range of ids it published;
what the lake holds is what its table's log says (:func:`table_keys`), what is on disk is listed apart
(:func:`disk_keys`), and a commit's actions are read from the log's JSON itself (:func:`commit_actions`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from lake import layout
from lake.compaction import KIND
from lake.filestats import FileStats
from lake.parquet import write_file
from lake.storage import FileInfo, LocalStorage
from lake.table import LOG_DIR, LakeTable, has_log, read_snapshot
from testkit.records import TEST_IDENTITY, lake_table


def ensure_table(storage: LocalStorage) -> LakeTable:
    """The lake's table, created for TEST_IDENTITY if absent, even if files were published before it.

    Created unpartitioned (the shape of a table from before date partitions): these files span dates, as
    the compactor's and the clean-up's tests need. Partitioned tables have tests of their own
    (``tests/test_partitions.py``).

    A lake with data files and no log is the previous layout to every process; a test that published
    files first gets its (empty) table built beside the lake and its log moved in, as if it had
    existed before those files.
    """
    if has_log(storage.root) or not any(storage.list_tree(zone, suffix="") for zone in layout.DATA_ZONES):
        return LakeTable.open_or_create(storage, TEST_IDENTITY, partitioned=False)
    with tempfile.TemporaryDirectory(dir=storage.root.parent) as scratch:
        LakeTable.open_or_create(LocalStorage(scratch), TEST_IDENTITY, partitioned=False)
        shutil.copytree(Path(scratch) / LOG_DIR, storage.root / LOG_DIR)
    return LakeTable.open(storage)


def commit_files(storage: LocalStorage, infos: list[FileInfo]) -> None:
    """Commit published files to the lake's table (created for TEST_IDENTITY if absent), one commit each, in order.

    Each append moves the pipeline's position to the file's last event id (never backwards).
    """
    table = ensure_table(storage)
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
    if commit:
        ensure_table(storage)
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
        for info in template.list_tree(zone, suffix=""):
            storage.path(info.key).parent.mkdir(parents=True, exist_ok=True)  # a date partition's directory
            os.link(template.path(info.key), storage.path(info.key))
    log_dir = template.root / LOG_DIR
    if log_dir.is_dir():
        shutil.copytree(log_dir, storage.root / LOG_DIR)


def clone_landing(template: LocalStorage, storage: LocalStorage, limit: int | None = None) -> list[FileInfo]:
    """Hard-link the (first ``limit``) landing files of ``template`` into ``storage`` and commit them there."""
    storage.ensure_layout()
    for info in template.list_tree(layout.LANDING)[:limit]:
        storage.path(info.key).parent.mkdir(parents=True, exist_ok=True)
        os.link(template.path(info.key), storage.path(info.key))
    infos = storage.list_tree(layout.LANDING)
    commit_files(storage, infos)
    return infos


def table_keys(storage: LocalStorage) -> list[str]:
    """The keys of the events table's current snapshot, in event-id order."""
    return read_snapshot(storage).keys


def disk_keys(storage: LocalStorage) -> list[str]:
    """Every file on disk in landing/ and compacted/, in or out of the table, sorted."""
    return sorted(f.key for zone in layout.DATA_ZONES for f in storage.list_tree(zone, suffix=""))


def commit_actions(storage: LocalStorage, version: int | None = None, prefix: str = "") -> list[dict[str, Any]]:
    """The actions of commit ``version`` (the newest if None) of the table at ``prefix``, read from its JSON entry."""
    log_dir = storage.root / prefix / LOG_DIR
    if version is None:
        version = max(int(p.name.split(".")[0]) for p in log_dir.glob("*.json"))
    lines = (log_dir / f"{version:020d}.json").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def forge_compacted(storage: LocalStorage, sources: list[str]) -> FileInfo:
    """A zero-row file in compacted/ whose footer's ``badge.sources`` names ``sources``: a forgery no commit added."""
    return write_file(
        storage, lake_table(0, 0), layout.COMPACTED, "compacted", {layout.META_SOURCES: json.dumps(sources)}
    )
