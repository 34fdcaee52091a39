"""The lake's Delta tables: the commit log that alone says which files the lake holds (delta-rs).

Two tables share the lake root:

* the **events table** at ``DATA_LAKE_PATH`` (log in ``<lake>/_delta_log``): the data files of
  ``landing/`` and ``compacted/``, with statistics, the stream's identity in its configuration and
  the pipeline's position as the application transaction ``badge-pipeline`` (its version is the last
  event id committed);
* the **quarantine table** at ``<lake>/quarantine`` (log in ``<lake>/quarantine/_delta_log``): the
  refused records, each with its reason.

Guarantees: a file is part of a table when, and only when, a commit in its log adds it; every commit
is atomic (delta-rs writes the next log entry only if it does not exist yet). An append by a writer
whose view is stale (another writer committed the pipeline's position since) fails with FencedError
instead of duplicating. A compaction commits only if every file it read is still in the table.
Errors from delta-rs are translated here into the platform's LakeError tree, with the cause kept.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pyarrow as pa
from deltalake import DeltaTable, Schema
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError
from deltalake.transaction import AddAction, CommitProperties, RemoveAction, Transaction

from lake import aggregates, layout, partitions
from lake.filestats import QUARANTINE_STATS_COLUMNS, STATS_COLUMNS, FileStats
from lake.identity import StreamIdentity, check_stream
from lake.snapshot import DataFile, Snapshot
from lake.storage import LOG_DIR as LOG_DIR  # noqa: PLC0414 - re-exported: the log is the table's
from lake.storage import FileInfo, LocalStorage, Storage
from utils.errors import FencedError, LakeError, StaleInputsError, UnmigratedLakeError
from utils.records import LAKE_SCHEMA, QUARANTINE_SCHEMA

log = logging.getLogger(__name__)

APP_ID: Final = "badge-pipeline"  # the pipeline's application transaction: version = last event id committed
# Retention's application transaction: version = the last event id expired (every id at or below it left the
# tables by retention, or never was in them); it only moves forward (lake.retention).
RETENTION_APP_ID: Final = "badge-retention"
TABLE_NAME: Final = "badge_events"
QUARANTINE_TABLE_NAME: Final = "badge_quarantine"
OPERATION_KEY: Final = "badge.operation"  # in each commit's commitInfo: flush, compaction, quarantine, ...

# Log upkeep: delta-rs writes a checkpoint every CHECKPOINT_INTERVAL commits and, with it, deletes log
# entries older than the retention, so the log (and with it commit latency and snapshot load time)
# stays flat however long the lake lives. Time travel reaches back as far as the retention.
LOG_RETENTION: Final = "interval 15 minutes"
CHECKPOINT_INTERVAL: Final = 100
LOG_PROPERTIES: Final[dict[str, str]] = {
    "delta.logRetentionDuration": LOG_RETENTION,
    # Tombstones (remove actions) stay in checkpoints this long; our clean-up never reads them (it
    # follows the log itself), so they only have to outlive the grace period of a reader.
    "delta.deletedFileRetentionDuration": LOG_RETENTION,
    "delta.enableExpiredLogCleanup": "true",
    "delta.checkpointInterval": str(CHECKPOINT_INTERVAL),
}


def column_problem(field: pa.Field) -> str | None:
    """Why a column of ``field``'s type cannot join the events table as it is (None: it can).

    The table keeps a column's type for good, so a type must be one the Delta protocol holds and that
    reads back as itself (no silent conversion between what a file holds and what the log says).
    """
    try:
        back = pa.schema(Schema.from_arrow(pa.schema([field])).to_arrow()).field(0).type
    except Exception as exc:  # delta-rs raises a bare Exception for a type it does not know
        return f"type {field.type} cannot be stored in a Delta table ({str(exc).splitlines()[0]})"
    if back != field.type:
        return f"type {field.type} would be stored as {back}"
    return None


def has_log(path: Path) -> bool:
    """True if the directory ``path`` is the root of a Delta table (its log has at least one entry)."""
    return LocalStorage(path).has_table()


def ensure_migrated(storage: Storage) -> bool:
    """Whether the lake has its table (one look at the log); UnmigratedLakeError if it holds data files but
    no log (the previous layout). False: an empty lake, waiting for the pipeline to create the table."""
    if storage.has_table():
        return True
    for zone in layout.DATA_ZONES:
        if not storage.list_tree(zone):  # date partitions' directories included
            continue
        raise UnmigratedLakeError(
            f"the lake at {storage.location} is in the previous layout (data files but no {LOG_DIR}/, so it is "
            "not a Delta table yet): run `python -m lake migrate` first, with every process on it stopped (files "
            "that are no lake of this platform: point DATA_LAKE_PATH at an empty directory or prefix)"
        )
    return False


@contextmanager
def _translated(what: str) -> Iterator[None]:
    """delta-rs errors as LakeError (the cause kept); ours pass through."""
    try:
        yield
    except (LakeError, TableNotFoundError):
        raise
    except (DeltaError, OSError) as exc:
        raise LakeError(f"{what}: {exc}") from exc


def add_action(
    path: str,
    info: FileInfo,
    stats: FileStats,
    *,
    data_change: bool,
    partition_values: Mapping[str, str | None] | None = None,
) -> AddAction:
    """The ``add`` action of the published file ``info`` at ``path`` (relative to its table's root)."""
    return AddAction(
        path, info.size, dict(partition_values or {}), info.mtime_ns // 1_000_000, data_change, stats.to_json()
    )


def remove_action(path: str, info: FileInfo, *, data_change: bool, at_ms: int) -> RemoveAction:
    """The ``remove`` action of the file ``info`` at ``path``, removed at ``at_ms`` (ms since the epoch)."""
    return RemoveAction(path, data_change, at_ms, size=info.size)


class _DeltaFiles:
    """One Delta table rooted at ``prefix`` under the lake: its handle, its files, its commits.

    Keys are relative to the lake root (``landing/x.parquet``, ``quarantine/y.parquet``); paths in the
    log are relative to the table root. One instance per thread of use (delta-rs handles are not shared).
    """

    def __init__(self, storage: Storage, prefix: str, dt: DeltaTable) -> None:
        self.storage = storage
        self.prefix = prefix
        self._dt = dt
        self._uncertain = False  # a commit failed in a way that may or may not have landed
        self._transactions: dict[str, tuple[int, int | None]] = {}  # app id -> (version, its txn there)

    @property
    def root(self) -> str:
        """The table's root (a directory or an ``s3://`` URL), as delta-rs opens it."""
        return self.storage.table_uri(self.prefix)

    def log_key(self, version: int) -> str:
        """The key (relative to the lake's root) of the log entry of commit ``version``."""
        return self.key_of(f"{LOG_DIR}/{version:020d}.json")

    @property
    def version(self) -> int:
        return int(self._dt.version())

    @property
    def configuration(self) -> Mapping[str, str | None]:
        return self._dt.metadata().configuration

    def key_of(self, path: str) -> str:
        return f"{self.prefix}/{path}" if self.prefix else path

    def path_of(self, key: str) -> str:
        if not self.prefix:
            return key
        head = f"{self.prefix}/"
        if not key.startswith(head):
            raise ValueError(f"{key} is not under {head}")
        return key[len(head) :]

    def refresh(self) -> None:
        """Bring the handle to the newest version of the log."""
        with _translated(f"reading the log of {self.root}"):
            self._dt.update_incremental()

    def add_actions(self) -> pa.Table:
        """The ``add`` actions of the handle's version, flattened (path, size_bytes, num_records, min.*, max.*)."""
        with _translated(f"reading the log of {self.root}"):
            return pa.table(self._dt.get_add_actions(flatten=True))

    def data_files(self) -> tuple[DataFile, ...]:
        """The files of the handle's version with their statistics, sorted by first event id."""
        actions = self.add_actions()
        if actions.num_rows == 0:
            return ()
        cols = actions.to_pydict()
        out: list[DataFile] = []
        newest = cols.get("max.badge_out_timestamp")
        days = cols.get(f"partition.{partitions.COLUMN}")
        oldest = cols.get("min.badge_out_timestamp")
        for i, path in enumerate(cols["path"]):
            rows = cols["num_records"][i]
            lo = cols.get("min.event_id", [None] * actions.num_rows)[i]
            hi = cols.get("max.event_id", [None] * actions.num_rows)[i]
            if rows is None:
                raise LakeError(f"{self.key_of(path)}: its add action in the log carries no statistics")
            info = FileInfo(self.key_of(path), int(cols["size_bytes"][i]), int(cols["modification_time"][i]) * 10**6)
            out.append(
                DataFile(
                    info,
                    -1 if lo is None else int(lo),
                    -1 if hi is None else int(hi),
                    int(rows),
                    newest[i] if newest is not None else None,
                    days[i] if days is not None else None,
                    oldest[i] if oldest is not None else None,
                )
            )
        out.sort(key=lambda f: (f.event_id_min, f.key))
        return tuple(out)

    def commit(
        self, actions: list[AddAction | RemoveAction], operation: str, txn: int | None = None, app: str = APP_ID
    ) -> None:
        """Commit ``actions`` as one transaction on top of the handle's version; then refresh the handle.

        Raises FencedError if ``txn`` (the pipeline's new position) conflicts with a concurrent commit of
        the same application, LakeError on any other failure (the commit may or may not have landed:
        callers check the refreshed table before trying again).
        """
        properties = CommitProperties(
            custom_metadata={OPERATION_KEY: operation},
            app_transactions=[Transaction(app, txn)] if txn is not None else None,
        )
        try:
            self._dt.create_write_transaction(actions, "append", self._dt.schema(), commit_properties=properties)
        except CommitFailedError as exc:
            if txn is not None and "concurrent transaction" in str(exc).lower():
                raise FencedError(
                    f"another writer committed the pipeline's position in {self.root} since this one last did; "
                    "this pipeline stops (the other one goes on)"
                ) from exc
            raise LakeError(f"commit to {self.root} failed: {exc}") from exc
        except (DeltaError, OSError) as exc:
            raise LakeError(f"commit to {self.root} failed: {exc}") from exc
        self.refresh()


def _open(storage: Storage, prefix: str) -> DeltaTable:
    root = storage.table_uri(prefix)
    with _translated(f"opening the table at {root}"):
        return DeltaTable(root, storage_options=storage.storage_options)


def _create(
    storage: Storage,
    prefix: str,
    schema: pa.Schema,
    name: str,
    configuration: dict[str, str],
    *,
    partition_by: list[str] | None = None,
) -> DeltaTable:
    """Create an empty table at ``prefix`` in one commit; if another process just did, open theirs."""
    root = storage.table_uri(prefix)
    try:
        return DeltaTable.create(
            root,
            Schema.from_arrow(schema),
            mode="error",
            partition_by=partition_by,
            storage_options=storage.storage_options,
            name=name,
            configuration=configuration,
            raise_if_key_not_exists=False,  # our own badge.* keys sit beside the delta.* ones
            commit_properties=CommitProperties(custom_metadata={OPERATION_KEY: "create"}),
        )
    except DeltaError as exc:
        if storage.has_table(prefix):  # lost a race to create it: theirs stands
            return _open(storage, prefix)
        raise LakeError(f"creating the table at {root} failed: {exc}") from exc


def _open_or_create(
    storage: Storage,
    prefix: str,
    schema: pa.Schema,
    name: str,
    *,
    stats_columns: Sequence[str],
    create: bool,
) -> DeltaTable | None:
    """The unpartitioned side table at ``prefix`` (quarantine, aggregates); created empty if absent and ``create``
    (None if absent otherwise)."""
    if storage.has_table(prefix):
        return _open(storage, prefix)
    if not create:
        return None
    configuration = {**LOG_PROPERTIES, "delta.dataSkippingStatsColumns": ",".join(stats_columns)}
    return _create(storage, prefix, schema, name, configuration)


class LakeTable(_DeltaFiles):
    """The events table: what every reader reads, what the pipeline appends to and the compactor rewrites."""

    @classmethod
    def open(cls, storage: Storage) -> LakeTable:
        """The lake's table; LakeError if there is none yet, UnmigratedLakeError for the previous layout."""
        if not ensure_migrated(storage):
            raise LakeError(f"no table at {storage.location} yet (the pipeline creates it)")
        return cls(storage, "", _open(storage, ""))

    @classmethod
    def open_or_create(cls, storage: Storage, identity: StreamIdentity, *, partitioned: bool = True) -> LakeTable:
        """The lake's table for the stream ``identity``, created (with it recorded) if the lake has none:
        partitioned by date (:mod:`lake.partitions`) unless ``partitioned`` is False (the shape of a table
        created before partitions, or migrated from the previous layout, which keeps working as it is).

        Raises StreamMismatchError, before anything is written, if the table holds another stream.
        """
        if ensure_migrated(storage):
            table = cls(storage, "", _open(storage, ""))
            check_stream(table.identity, identity, storage.location)
            return table
        configuration = {
            **LOG_PROPERTIES,
            "delta.dataSkippingStatsColumns": ",".join(STATS_COLUMNS),
            **identity.to_config(),
        }
        if partitioned:
            created = _create(
                storage, "", partitions.TABLE_SCHEMA, TABLE_NAME, configuration, partition_by=[partitions.COLUMN]
            )
        else:
            created = _create(storage, "", LAKE_SCHEMA, TABLE_NAME, configuration)
        table = cls(storage, "", created)
        check_stream(table.identity, identity, storage.location)
        return table

    @property
    def identity(self) -> StreamIdentity | None:
        return StreamIdentity.from_config(self.configuration)

    def schema(self) -> pa.Schema:
        """The table's schema at the handle's version (Arrow), the partition column included."""
        with _translated(f"reading the log of {self.root}"):
            return pa.schema(self._dt.schema().to_arrow())

    def extra_fields(self) -> list[pa.Field]:
        """The columns beyond the base record (LAKE_SCHEMA) and the partition column: fields the source added
        later (schema evolution), in the table's order."""
        base = {*LAKE_SCHEMA.names, partitions.COLUMN}
        return [f for f in self.schema() if f.name not in base]

    def add_columns(self, fields: Sequence[pa.Field], *, expected: int | None) -> None:
        """Evolve the schema: add ``fields`` the table lacks as nullable columns, in one metadata commit, for
        the pipeline whose position is ``expected``.

        Idempotent (after a failed attempt the next call reads the newest version first, and a column already
        there with the type asked for is not added again). Files written before read the new columns as null
        in every engine. Raises FencedError (nothing committed) if another writer moved the position, LakeError
        if a column is there with another type or the commit failed.
        """
        schema = self.schema()
        if all(f.name in schema.names for f in fields):
            missing: list[pa.Field] = []
        else:
            self.refresh()
            schema = self.schema()
            missing = [f for f in fields if f.name not in schema.names]
        clash = [
            f"{f.name} ({f.type}, the table's {schema.field(f.name).type})"
            for f in fields
            if f.name in schema.names and schema.field(f.name).type != f.type
        ]
        if clash:
            raise LakeError(f"{self.root} holds these columns with other types: {', '.join(clash)}")
        if not missing:
            return
        position = self.committed_event_id()
        if position != expected:
            raise FencedError(
                f"the pipeline's position in {self.root} is {position}, not {expected} as this writer last "
                "committed: another pipeline writes to this lake; this one stops (its columns were not added)"
            )
        delta_fields = Schema.from_arrow(pa.schema([f.with_nullable(True) for f in missing])).fields
        try:
            self._dt.alter.add_columns(
                delta_fields, commit_properties=CommitProperties(custom_metadata={OPERATION_KEY: "schema evolution"})
            )
        except Exception as exc:  # delta-rs raises a bare Exception for a schema it refuses
            raise LakeError(f"adding column(s) {[f.name for f in missing]} to {self.root} failed: {exc}") from exc
        log.info("the table's schema grew: %s", ", ".join(f"{f.name} ({f.type})" for f in missing))

    @functools.cached_property
    def partitioned(self) -> bool:
        """Whether the table is partitioned by date (every table this version creates; not one created before).

        Read once: a Delta table's partitioning is fixed when it is created (every commit adds files by it).
        """
        return partitions.COLUMN in self._dt.metadata().partition_columns

    def partition_values(self, stats: FileStats) -> dict[str, str | None]:
        """The ``partitionValues`` of a file with ``stats``: in a partitioned table the date of its events
        (null for a file without rows), nothing in an unpartitioned one. ValueError if its events span two
        dates: a partitioned table takes each date in files of its own (:func:`lake.partitions.split_by_date`)."""
        if not self.partitioned:
            return {}
        first, last = stats.minimum.get(partitions.SOURCE_COLUMN), stats.maximum.get(partitions.SOURCE_COLUMN)
        if first is None or last is None:
            return {partitions.COLUMN: None}
        if first.date() != last.date():
            raise ValueError(f"a file of {first.date()} to {last.date()}: a partitioned table takes one date per file")
        return partitions.values(first.date())

    def committed_event_id(self) -> int | None:
        """The pipeline's position at the handle's version: the last event id it committed (None: nothing yet).

        Read from the log once per version of the handle (delta-rs looks it up anew on every call).
        """
        return self._transaction(APP_ID)

    def expired_through(self) -> int | None:
        """The last event id retention expired at the handle's version (None: nothing expired yet)."""
        return self._transaction(RETENTION_APP_ID)

    def _transaction(self, app: str) -> int | None:
        """The version of ``app``'s transaction at the handle's version, read once per version of the handle."""
        version = self.version
        cached = self._transactions.get(app)
        if cached is None or cached[0] != version:
            with _translated(f"reading the log of {self.root}"):
                txn = self._dt.transaction_version(app)
            cached = self._transactions[app] = (version, None if txn is None else int(txn))
        return cached[1]

    def snapshot(self, *, refresh: bool = True) -> Snapshot:
        """The table's files and position, at the newest version (``refresh``) or the handle's own."""
        if refresh:
            self.refresh()
        return Snapshot(
            self.storage,
            self.version,
            self.data_files(),
            self.committed_event_id(),
            self.identity,
            self.expired_through(),
            frozenset(self.schema().names),
        )

    def append(self, info: FileInfo, stats: FileStats, *, through_event_id: int, expected: int | None) -> None:
        """Add the published file ``info``: :meth:`append_files` of one file."""
        self.append_files([(info, stats)], through_event_id=through_event_id, expected=expected)

    def append_files(
        self, files: Sequence[tuple[FileInfo, FileStats]], *, through_event_id: int, expected: int | None
    ) -> None:
        """Add the published ``files`` (each with the statistics of its rows) and move the pipeline's position
        from ``expected`` to ``through_event_id``, in one commit. In a partitioned table each file goes in
        the partition of its date (:meth:`partition_values`).

        Idempotent across failures: after a failed attempt the next call reads the newest version first;
        if the earlier attempt landed (the position is ``through_event_id``) it returns. If the position
        is neither ``expected`` nor that, another writer moved it: FencedError, and nothing is committed.
        Raises LakeError when the commit failed for another reason (call again to retry).
        """
        actions: list[AddAction | RemoveAction] = [
            add_action(
                self.path_of(info.key), info, stats, data_change=True, partition_values=self.partition_values(stats)
            )
            for info, stats in files
        ]
        self._move_position(actions, through_event_id, expected)

    def advance(self, *, through_event_id: int, expected: int | None) -> None:
        """Move the pipeline's position from ``expected`` to ``through_event_id`` in a commit that adds no file.

        For a flush whose records were all refused (they are in the quarantine table already): the
        commit carries only the ``txn``. Same fencing and idempotence as :meth:`append`.
        """
        self._move_position([], through_event_id, expected)

    def _move_position(
        self, actions: list[AddAction | RemoveAction], through_event_id: int, expected: int | None
    ) -> None:
        """Commit ``actions`` with the pipeline's position moved from ``expected`` to ``through_event_id``."""
        if self._uncertain:
            self.refresh()
            self._uncertain = False
            if self.committed_event_id() == through_event_id:
                # The earlier attempt landed (the file may even be compacted away already); had another
                # writer committed the same range instead, those events are in the table all the same.
                return
        position = self.committed_event_id()
        if position != expected:
            raise FencedError(
                f"the pipeline's position in {self.root} is {position}, not {expected} as this writer "
                "last committed: another pipeline writes to this lake; this one stops"
            )
        try:
            self.commit(actions, "flush", txn=through_event_id)
        except FencedError:
            raise
        except LakeError:
            self._uncertain = True  # it may have landed: the next attempt looks before it commits
            raise
        if self.committed_event_id() != through_event_id:
            raise FencedError(f"another writer moved the pipeline's position in {self.root} right after this commit")

    def replace(
        self,
        removed: Sequence[DataFile],
        added: Sequence[tuple[FileInfo, FileStats]],
        *,
        removed_at_ms: int | None = None,
    ) -> None:
        """Remove ``removed`` and add ``added`` in one commit (``dataChange=false``: the same rows, rewritten).

        Checks against the newest version first: if any of ``removed`` is no longer in the table, nothing
        is committed and StaleInputsError is raised.
        """
        self.refresh()
        current = {f.key for f in self.data_files()}
        gone = [f.key for f in removed if f.key not in current]
        if gone:
            raise StaleInputsError(f"{len(gone)} input(s) are no longer in the table, e.g. {gone[0]}")
        now_ms = int(time.time() * 1000) if removed_at_ms is None else removed_at_ms
        actions: list[AddAction | RemoveAction] = [
            remove_action(self.path_of(f.key), f.info, data_change=False, at_ms=now_ms) for f in removed
        ]
        actions += [
            add_action(
                self.path_of(info.key), info, stats, data_change=False, partition_values=self.partition_values(stats)
            )
            for info, stats in added
        ]
        self.commit(actions, "compaction")


class QuarantineTable(_DeltaFiles):
    """The quarantine table under ``quarantine/``: refused records, appended before the flush that passes them."""

    @classmethod
    def open(cls, storage: Storage, *, create: bool = False) -> QuarantineTable | None:
        """The lake's quarantine table; None if it does not exist (and ``create`` is False)."""
        opened = _open_or_create(
            storage,
            layout.QUARANTINE,
            QUARANTINE_SCHEMA,
            QUARANTINE_TABLE_NAME,
            stats_columns=QUARANTINE_STATS_COLUMNS,
            create=create,
        )
        return None if opened is None else cls(storage, layout.QUARANTINE, opened)

    def append(self, info: FileInfo, stats: FileStats) -> None:
        """Add the published file ``info``; idempotent (a file already in the table is not added again)."""
        self.refresh()
        if info.key in {f.key for f in self.data_files()}:
            return
        self.commit([add_action(self.path_of(info.key), info, stats, data_change=True)], "quarantine")

    def remove(self, files: Sequence[DataFile], reason: str) -> None:
        """Take ``files`` out of the table in one commit (orphans of a flush that never committed)."""
        if not files:
            return
        now_ms = int(time.time() * 1000)
        actions: list[AddAction | RemoveAction] = [
            remove_action(self.path_of(f.key), f.info, data_change=True, at_ms=now_ms) for f in files
        ]
        self.commit(actions, reason)


@dataclass(frozen=True)
class Persisted:
    """An aggregates file of the aggregates table (:mod:`lake.aggregates`): where it is and what it describes."""

    info: FileInfo  # the aggregates file (key under aggregates/, size, mtime)
    source: str  # the data file it holds the aggregates of (its key in the events table)
    source_rows: int  # the rows they were computed from: usable only if the data file has exactly these


class AggregatesTable(_DeltaFiles):
    """The aggregates table at ``<lake>/aggregates``: persisted pre-aggregates of the events table's data files.

    Each file sits beside the data file's own path under ``aggregates/``, named after it plus a random part
    (``aggregates/compacted/date=.../x~<12 hex>.parquet`` for ``compacted/date=.../x.parquet``), so no name is
    ever used twice, and is used only while a commit of this table adds it and its data file is in the events
    table with the rows it was computed from.
    """

    @classmethod
    def open(cls, storage: Storage, *, create: bool = False) -> AggregatesTable | None:
        """The lake's aggregates table; None if it does not exist (and ``create`` is False)."""
        opened = _open_or_create(
            storage,
            aggregates.ZONE,
            aggregates.PERSISTED_SCHEMA,
            aggregates.TABLE_NAME,
            stats_columns=aggregates.STATS_COLUMNS,
            create=create,
        )
        return None if opened is None else cls(storage, aggregates.ZONE, opened)

    def key_for(self, source: str) -> str:
        """A new key for aggregates of the data file ``source`` (never used before: a random part)."""
        return self.key_of(aggregates.file_path(source))

    def entries(self) -> list[Persisted]:
        """Every aggregates file of the handle's version that describes a data file, sorted by key."""
        actions = self.add_actions()
        if actions.num_rows == 0:
            return []
        cols = actions.to_pydict()
        rows = cols.get(f"min.{aggregates.SOURCE_ROWS}", [None] * actions.num_rows)
        top = cols.get(f"max.{aggregates.SOURCE_ROWS}", [None] * actions.num_rows)
        out: list[Persisted] = []
        for i, path in enumerate(cols["path"]):
            source = aggregates.source_of(str(path))
            if source is None or rows[i] is None or rows[i] != top[i]:
                continue  # not one of ours: no data file named, or no single row count
            info = FileInfo(self.key_of(path), int(cols["size_bytes"][i]), int(cols["modification_time"][i]) * 10**6)
            out.append(Persisted(info, source, int(rows[i])))
        return sorted(out, key=lambda p: p.info.key)

    def persisted(self) -> dict[str, Persisted]:
        """The aggregates files of the handle's version by the data file they describe (the first by key where
        two describe one: both were computed from the same immutable file)."""
        out: dict[str, Persisted] = {}
        for p in self.entries():
            out.setdefault(p.source, p)
        return out

    def update(self, added: Sequence[tuple[FileInfo, FileStats]], removed: Sequence[Persisted]) -> None:
        """One commit: add the published aggregates files ``added``, remove ``removed`` (their data files left)."""
        if not added and not removed:
            return
        now_ms = int(time.time() * 1000)
        actions: list[AddAction | RemoveAction] = [
            add_action(self.path_of(info.key), info, stats, data_change=True) for info, stats in added
        ]
        actions += [remove_action(self.path_of(p.info.key), p.info, data_change=True, at_ms=now_ms) for p in removed]
        self.commit(actions, "aggregates")


class AggregatesReader:
    """A long-lived reader of the aggregates table (the dashboard's): one handle, refreshed incrementally."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self._table: AggregatesTable | None = None

    def persisted(self) -> dict[str, Persisted]:
        """The newest version's aggregates files by data file (none while the table does not exist).

        Raises LakeError if the log cannot be read (the handle is opened afresh next time).
        """
        try:
            if self._table is None:
                self._table = AggregatesTable.open(self.storage)
                if self._table is None:
                    return {}
            else:
                self._table.refresh()
            return self._table.persisted()
        except LakeError:
            self._table = None
            raise


def read_snapshot(storage: Storage) -> Snapshot:
    """The lake's current snapshot; an empty one (version None) if no table exists yet.

    Raises UnmigratedLakeError for a lake in the previous layout, LakeError if the log cannot be read.
    """
    if not ensure_migrated(storage):
        return Snapshot(storage, None, ())
    return LakeTable(storage, "", _open(storage, "")).snapshot(refresh=False)


class SnapshotReader:
    """A long-lived reader (a dashboard, a verifier): each :meth:`snapshot` refreshes one handle incrementally."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self._table: LakeTable | None = None

    def snapshot(self) -> Snapshot:
        """The newest snapshot (empty while the lake has no table)."""
        if self._table is None:
            if not ensure_migrated(self.storage):
                return Snapshot(self.storage, None, ())
            self._table = LakeTable(self.storage, "", _open(self.storage, ""))
            return self._table.snapshot(refresh=False)
        return self._table.snapshot()


def quarantine_files(storage: Storage) -> tuple[DataFile, ...]:
    """The files of the quarantine table's newest version (none if it does not exist)."""
    table = QuarantineTable.open(storage)
    return () if table is None else table.data_files()


def describe_log(storage: Storage) -> dict[str, Any]:
    """Facts about the events table's log, for ``stats``: version, entries and checkpoints on disk."""
    entries = storage.list_files(LOG_DIR, suffix=".json")
    checkpoints = [f for f in storage.list_files(LOG_DIR) if ".checkpoint" in f.name]
    return {"log_entries": len(entries), "checkpoints": len(checkpoints)}
