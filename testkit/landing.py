"""Landing files for the compactor's tests: :func:`testkit.records.lake_table` rows, published into landing/.

Event ids are consecutive from ``start``. The ground truth of every test is the range of ids it published.
"""

from __future__ import annotations

import os

from lake import layout
from lake.compaction import KIND
from lake.parquet import write_file
from lake.storage import FileInfo, LocalStorage
from testkit.records import lake_table


def publish_landing(storage: LocalStorage, start: int, rows_per_file: int, files: int) -> list[FileInfo]:
    """``files`` consecutive landing files of ``rows_per_file`` rows from event id ``start``."""
    return [
        write_file(storage, lake_table(start + i * rows_per_file, rows_per_file), layout.LANDING, "landing")
        for i in range(files)
    ]


def compactor_temp(storage: LocalStorage) -> list[str]:
    """The compactor's files in temp/."""
    return [f.key for f in storage.list_all(layout.TEMP) if f.name.startswith(f"{KIND}-")]


def clone_lake(template: LocalStorage, storage: LocalStorage) -> None:
    """Hard-link every data file of ``template`` (landing/ and compacted/) into ``storage``, mtimes kept."""
    storage.ensure_layout()
    for zone in layout.DATA_ZONES:
        for info in template.list_all(zone):
            os.link(template.path(info.key), storage.path(info.key))


def clone_landing(template: LocalStorage, storage: LocalStorage, limit: int | None = None) -> list[FileInfo]:
    """Hard-link the (first ``limit``) landing files of ``template`` into ``storage`` (fast; never written)."""
    storage.ensure_layout()
    for info in template.list_files(layout.LANDING)[:limit]:
        os.link(template.path(info.key), storage.path(info.key))
    return storage.list_files(layout.LANDING)
