"""What a reader sees: one version of the lake's table, its data files and their statistics.

Guarantee: a :class:`Snapshot` is exactly what one version of ``<lake>/_delta_log`` says the lake holds
(read by :mod:`lake.table`); nothing in it comes from a directory listing or a file's footer, so a
file that no commit added (foreign, forged or orphaned) is never in it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from lake.identity import StreamIdentity
from lake.storage import FileInfo, LocalStorage, Storage


@dataclass(frozen=True)
class DataFile:
    """A data file of the table, with the statistics its ``add`` action carries."""

    info: FileInfo  # key relative to the lake root, size, modification time (ns, from the add action)
    event_id_min: int
    event_id_max: int
    row_count: int
    badge_out_max: datetime | None = None  # the newest event time in the file (naive UTC)
    partition: date | None = None  # its date partition (lake.partitions); None in an unpartitioned table
    badge_out_min: datetime | None = None  # the oldest event time in the file (naive UTC)

    @property
    def key(self) -> str:
        return self.info.key


class _File(Protocol):
    @property
    def info(self) -> FileInfo: ...
    @property
    def row_count(self) -> int: ...
    @property
    def event_id_max(self) -> int: ...


F = TypeVar("F", bound=_File)


class FileSet(Generic[F]):
    """What any set of the lake's data files answers (``files`` sorted by first event id, under ``storage``)."""

    storage: Storage
    files: tuple[F, ...]

    @property
    def keys(self) -> list[str]:
        return [f.info.key for f in self.files]

    @property
    def paths(self) -> list[Path]:
        """Local paths of the files, for DuckDB's ``read_parquet([...])``."""
        return [self.path_of(f.info.key) for f in self.files]

    def path_of(self, key: str) -> Path:
        """The local path of ``key``; TypeError on a backend without local paths (object storage)."""
        if not isinstance(self.storage, LocalStorage):
            raise TypeError(f"{self.storage!r} has no local paths: read its files through the storage")
        return self.storage.path(key)

    @property
    def rows(self) -> int:
        return sum(f.row_count for f in self.files)

    @property
    def bytes(self) -> int:
        return sum(f.info.size for f in self.files)

    @property
    def max_event_id(self) -> int | None:
        maxima = [f.event_id_max for f in self.files if f.row_count > 0]
        return max(maxima) if maxima else None

    def in_zone(self, zone: str) -> list[F]:
        return [f for f in self.files if f.info.zone == zone]

    @property
    def is_empty(self) -> bool:
        return not self.files


@dataclass(frozen=True)
class Snapshot(FileSet[DataFile]):
    """The table at one version: its files sorted by first event id, and the pipeline's committed position.

    ``version`` is None for a lake without a table yet (an empty lake: a normal case, not an error).
    """

    storage: Storage
    version: int | None
    files: tuple[DataFile, ...]
    committed_event_id: int | None = None  # the pipeline's ``txn`` version: the last event id it committed
    identity: StreamIdentity | None = None
    expired_through: int | None = None  # retention's ``txn`` version: ids at or below it are expired (lake.retention)
    columns: frozenset[str] = frozenset()  # the table's columns at this version (extra fields included)

    @property
    def next_event_id(self) -> int:
        """The cursor a pipeline resumes at: one past the committed position (read from the log, never inferred)."""
        return 0 if self.committed_event_id is None else self.committed_event_id + 1

    @property
    def newest_event_time(self) -> datetime | None:
        """The newest ``badge_out_timestamp`` in the table (naive UTC), from the files' statistics."""
        times = [f.badge_out_max for f in self.files if f.badge_out_max is not None]
        return max(times) if times else None
