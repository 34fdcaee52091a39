"""``python -m lake migrate``: a lake in the previous layout becomes the events table (and quarantine table) in place.

The previous layout had no log: its content was the *live set* (:mod:`lake.legacy`), computed from the
files' footers. Migrating turns it into what every process reads now (:mod:`lake.table`):

1. under both locks (pipeline and compactor), every file of the live set is read in full: its
   statistics come from its rows (never from its footer), and the migration refuses, writing nothing,
   if a file is unreadable, holds other columns, contradicts its footer, holds ids out of order,
   shares an id with another file, or is a compacted file that holds less than the files it hides;
2. the previous pipeline's refused-record files (``quarantine-*.parquet``) below the pipeline's
   position go into the quarantine table (its log staged in ``temp/`` and moved into
   ``quarantine/_delta_log`` in one rename);
3. the events table is staged in ``temp/``: a creation commit recording the stream's identity, then
   one commit adding every live file with its statistics and setting the pipeline's ``txn`` to the
   live set's highest event id; its ``_delta_log`` is then moved to the lake root in one rename.

Guarantees: the rename of ``_delta_log`` into the root is the migration's commit point, so a lake is
either unmigrated (and every process refuses it) or migrated whole. Idempotent: a migrated lake (it has
a log) is left as it is and the report says so; a migration that crashed is simply run again (a
quarantine log already in place is reconciled, staged leftovers are removed). Files left out (foreign,
unreadable, replaced but not yet deleted, orphan quarantine files, reason sidecars) stay where they are:
they are not in any table, so no reader sees them, and the compactor's clean-up deletes the Parquet ones
after the grace period (a ``.reason.json`` sidecar is left for whoever wants to read it).
"""

from __future__ import annotations

import itertools
import logging
import shutil
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from deltalake import DeltaTable, Schema
from deltalake.exceptions import DeltaError
from deltalake.transaction import AddAction, CommitProperties, RemoveAction, Transaction

from lake import layout, legacy
from lake.filestats import QUARANTINE_STATS_COLUMNS, STATS_COLUMNS, FileStats
from lake.identity import StreamIdentity
from lake.lock import LakeLock
from lake.storage import LOG_DIR, FileInfo, LocalStorage
from lake.table import (
    APP_ID,
    LOG_PROPERTIES,
    OPERATION_KEY,
    QUARANTINE_TABLE_NAME,
    TABLE_NAME,
    LakeTable,
    QuarantineTable,
    add_action,
    has_log,
    quarantine_files,
    read_snapshot,
    remove_action,
)
from utils.errors import ConfigError, CorruptFileError, LakeError
from utils.fsio import fsync_dir, fsync_file
from utils.records import LAKE_SCHEMA, QUARANTINE_SCHEMA

log = logging.getLogger(__name__)

OPERATION: Final = "migration"  # the ``badge.operation`` of the migration's commits
STAGING_PREFIX: Final = "migration-"  # temp/migration-<12 hex>/: the tables being built
STREAM_START_FILE: Final = ".stream_start"  # the service remembers its stream start here (api.stream_state)
STREAM_START_VARIABLE: Final = "GENERATOR_STREAM_START"
_BATCH_ROWS: Final = 65_536


# -- the stream the old lake holds ----------------------------------------------------------------------


def _normalized_start(text: str, source: str) -> str:
    """``2025-03-03T00:00:00Z``-style text (as the service reports it) for an ISO-8601 instant; naive = UTC."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(source, text, "an ISO-8601 instant, e.g. 2025-03-03T00:00:00Z") from None
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return moment.isoformat().replace("+00:00", "Z")


def legacy_identity(
    storage: LocalStorage, seed: int, events_per_second: float, stream_start: str | None = None
) -> StreamIdentity:
    """The identity of the stream a lake in the previous layout holds, for :func:`migrate`.

    The previous layout did not record it, so it is rebuilt from what the service used: ``seed`` and
    ``events_per_second`` (the stream's *timeline* rate: for a firehose lake, the nominal rate the
    service stamps its records with; the caller resolves it, the lake does not know the service), and
    the stream start: ``stream_start`` if given (the service's GENERATOR_STREAM_START), else the one the
    service remembered in ``<lake>/.stream_start``. Raises ConfigError if the rate is not positive or
    no stream start is known.
    """
    if not events_per_second > 0:
        raise ConfigError(
            "EVENTS_PER_SECOND",
            events_per_second,
            "the stream's timeline rate, > 0 (for a firehose lake, the nominal rate the service stamps records with)",
        )
    if stream_start:
        start = _normalized_start(stream_start, STREAM_START_VARIABLE)
    else:
        path = storage.root / STREAM_START_FILE
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(
                STREAM_START_VARIABLE,
                "",
                f"the lake has no {STREAM_START_FILE}: set it to the instant the lake's stream started "
                "(the service's GENERATOR_STREAM_START when it wrote the lake)",
            ) from None
        start = _normalized_start(text, f"{STREAM_START_VARIABLE} (unset; remembered in {path})")
    return StreamIdentity(seed=seed, events_per_second=float(events_per_second), stream_start=start)


# -- reading the old lake: every figure from the rows --------------------------------------------------


def read_stats(
    storage: LocalStorage, info: FileInfo, schema: pa.Schema, columns: tuple[str, ...], *, ordered: bool
) -> FileStats:
    """Statistics of the file ``info`` computed from its rows, read in full in bounded batches.

    Raises CorruptFileError if it is unreadable or its columns are not ``schema``'s, and, if ``ordered``
    (data files), if its event ids are not strictly increasing (a duplicate, or rows out of order).
    """
    expected = [(f.name, f.type) for f in schema]
    try:
        parquet = pq.ParquetFile(storage.path(info.key))
        found = [(f.name, f.type) for f in parquet.schema_arrow]
        if found != expected:
            raise CorruptFileError(f"{info.key}: its columns {found} are not the table's {expected}")
        rows = 0
        lows: dict[str, Any] = {}
        highs: dict[str, Any] = {}
        nulls = dict.fromkeys(columns, 0)
        previous: int | None = None
        for batch in parquet.iter_batches(batch_size=_BATCH_ROWS):
            rows += batch.num_rows
            for name in columns:
                column = batch.column(name)
                nulls[name] += column.null_count
                bounds = pc.min_max(column)
                lo, hi = bounds["min"].as_py(), bounds["max"].as_py()
                if lo is not None:
                    lows[name] = lo if name not in lows else min(lows[name], lo)
                    highs[name] = hi if name not in highs else max(highs[name], hi)
            if ordered and batch.num_rows:
                ids = batch.column("event_id").to_numpy(zero_copy_only=False)
                if (previous is not None and ids[0] <= previous) or bool(np.any(np.diff(ids) <= 0)):
                    raise CorruptFileError(f"{info.key}: its event ids are not strictly increasing")
                previous = int(ids[-1])
    except CorruptFileError:
        raise
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise CorruptFileError(f"{info.key}: not readable ({exc})") from exc
    return FileStats(
        rows,
        {name: lows.get(name) for name in columns},
        {name: highs.get(name) for name in columns},
        nulls,
    )


@dataclass(frozen=True)
class Plan:
    """What the migration commits: the live files and carried quarantine files with their statistics."""

    events: tuple[tuple[FileInfo, FileStats], ...]  # sorted by first event id
    quarantine: tuple[tuple[FileInfo, FileStats], ...]
    position: int | None  # the pipeline's position: the highest event id of the live set
    left_out: tuple[str, ...]  # keys left where they are (in no table)

    @property
    def rows(self) -> int:
        return sum(stats.rows for _, stats in self.events)


def _refuse(storage: LocalStorage, problem: str) -> LakeError:
    return LakeError(
        f"the lake at {storage.root} cannot be migrated: {problem}; nothing was written. Move the file out of "
        "the lake (or restore it) and run `python -m lake migrate` again"
    )


def _check_sources(storage: LocalStorage, live: legacy.LiveSet, stats: dict[str, FileStats]) -> None:
    """A compacted file of the live set must hold every row of the files it hides that are still on disk."""
    replaced = {f.key: f for f in live.replaced}
    for f in live.in_zone(layout.COMPACTED):
        present = [replaced[key] for key in f.sources if key in replaced]
        if not present:
            continue
        own = stats[f.key]
        hidden: list[FileStats] = []
        for source in list(present):
            try:
                hidden.append(read_stats(storage, source.info, LAKE_SCHEMA, ("event_id",), ordered=True))
            except CorruptFileError:
                present.remove(source)  # not readable: no evidence either way, and in no table
        hidden_rows = sum(h.rows for h in hidden)
        outside = [
            s.key
            for s, h in zip(present, hidden, strict=True)
            if h.rows
            and (
                own.event_id_min is None
                or own.event_id_max is None
                or h.event_id_min is None
                or h.event_id_max is None
                or h.event_id_min < own.event_id_min
                or h.event_id_max > own.event_id_max
            )
        ]
        if hidden_rows > own.rows or outside:
            raise _refuse(
                storage,
                f"{f.key} names {len(present)} file(s) still on disk holding {hidden_rows} rows but holds "
                f"{own.rows} rows ({own.event_id_min}..{own.event_id_max}): it cannot have replaced them",
            )


def plan(storage: LocalStorage) -> Plan:
    """Read the old lake and decide what the migration commits; raises LakeError (nothing written) if it cannot.

    Reads every live file (and every hidden file still on disk that a compacted file names) in full.
    """
    live = legacy.live_set(storage, legacy.MetadataCache())
    events: list[tuple[FileInfo, FileStats]] = []
    stats: dict[str, FileStats] = {}
    left_out = [*live.invalid, *(f.key for f in live.replaced)]
    for f in live.files:
        try:
            st = read_stats(storage, f.info, LAKE_SCHEMA, STATS_COLUMNS, ordered=True)
        except CorruptFileError as exc:
            raise _refuse(storage, str(exc)) from exc
        claimed = (f.row_count, f.event_id_min, f.event_id_max) if f.row_count else (0,)
        held = (st.rows, st.event_id_min, st.event_id_max) if st.rows else (0,)
        if claimed != held:
            raise _refuse(storage, f"{f.key}: its footer claims (rows, first id, last id) {claimed}, it holds {held}")
        stats[f.key] = st
        if st.rows == 0:
            left_out.append(f.key)  # holds nothing: not worth an add
            continue
        events.append((f.info, st))
    _check_sources(storage, live, stats)
    events.sort(key=lambda pair: (pair[1].event_id_min or 0, pair[0].key))
    for (a, sa), (b, sb) in itertools.pairwise(events):
        if sb.event_id_min is not None and sa.event_id_max is not None and sb.event_id_min <= sa.event_id_max:
            raise _refuse(
                storage,
                f"{a.key} ({sa.event_id_min}..{sa.event_id_max}) and {b.key} "
                f"({sb.event_id_min}..{sb.event_id_max}) share event ids",
            )
    maxima = [st.event_id_max for _, st in events if st.event_id_max is not None]
    position = max(maxima) if maxima else None
    cursor = 0 if position is None else position + 1
    quarantine: list[tuple[FileInfo, FileStats]] = []
    for info in legacy.pipeline_quarantine_files(storage):
        try:
            st = read_stats(storage, info, QUARANTINE_SCHEMA, QUARANTINE_STATS_COLUMNS, ordered=False)
        except CorruptFileError as exc:
            raise _refuse(storage, str(exc)) from exc
        # As the previous pipeline decided at its start: a file at or past the resume cursor is the
        # orphan of a flush that never committed (its records are fetched and refused again).
        if st.rows == 0 or (st.event_id_min is not None and st.event_id_min >= cursor):
            continue
        quarantine.append((info, st))
    carried = {info.key for info, _ in quarantine}
    left_out += [f.key for f in storage.list_all(layout.QUARANTINE) if f.key not in carried]
    return Plan(tuple(events), tuple(quarantine), position, tuple(sorted(set(left_out))))


# -- writing the tables ---------------------------------------------------------------------------------


def _adds(files: Sequence[tuple[FileInfo, FileStats]], prefix: str) -> list[AddAction | RemoveAction]:
    head = f"{prefix}/" if prefix else ""
    return [add_action(info.key[len(head) :], info, stats, data_change=True) for info, stats in files]


def _properties(txn: int | None = None) -> CommitProperties:
    return CommitProperties(
        custom_metadata={OPERATION_KEY: OPERATION},
        app_transactions=[Transaction(APP_ID, txn)] if txn is not None else None,
    )


def _stage_table(
    stage: Path,
    schema: pa.Schema,
    name: str,
    configuration: dict[str, str],
    *,
    adds: list[AddAction | RemoveAction],
    txn: int | None,
) -> None:
    """Build a table's log at ``stage``: its creation, then (if any) one commit of ``adds`` and ``txn``."""
    stage.mkdir(parents=True)
    try:
        table = DeltaTable.create(
            str(stage),
            Schema.from_arrow(schema),
            mode="error",
            name=name,
            configuration=configuration,
            raise_if_key_not_exists=False,  # our badge.* keys sit beside the delta.* ones
            commit_properties=_properties(),
        )
        if adds or txn is not None:
            table.create_write_transaction(adds, "append", table.schema(), commit_properties=_properties(txn))
    except (DeltaError, OSError) as exc:
        raise LakeError(f"staging the table {name} in {stage} failed: {exc}") from exc


def _install_log(stage: Path, root: Path) -> None:
    """Move the staged ``_delta_log`` to ``root`` in one rename (the commit point), durably.

    The log's entries hold paths relative to the table root and nothing about where it was built, so
    the same entries describe the table at ``root``. Refuses if ``root`` already has a log.
    """
    staged = stage / LOG_DIR
    for path in sorted(staged.rglob("*"), reverse=True):
        if path.is_file():
            fsync_file(path)
        else:
            fsync_dir(path)
    fsync_dir(staged)
    root.mkdir(parents=True, exist_ok=True)
    try:
        staged.rename(root / LOG_DIR)  # atomic; refuses a non-empty directory already there
    except OSError as exc:
        raise LakeError(f"cannot put the table's log in place at {root / LOG_DIR}: {exc}") from exc
    fsync_dir(root)


def _carry_quarantine(storage: LocalStorage, files: Sequence[tuple[FileInfo, FileStats]], stage: Path) -> None:
    """Make the quarantine table hold exactly ``files``: built whole, or (after a crash) reconciled in one commit."""
    root = storage.root / layout.QUARANTINE
    if has_log(root):
        table = QuarantineTable.open(storage)
        if table is None:  # pragma: no cover - the log was there a moment ago
            raise LakeError(f"the quarantine table at {root} vanished")
        present = {f.key: f for f in table.data_files()}
        wanted = {info.key for info, _ in files}
        actions = _adds([(i, s) for i, s in files if i.key not in present], layout.QUARANTINE)
        now_ms = int(time.time() * 1000)
        actions += [
            remove_action(table.path_of(key), f.info, data_change=True, at_ms=now_ms)
            for key, f in present.items()
            if key not in wanted
        ]
        if actions:
            table.commit(actions, OPERATION)
        return
    if not files:
        return  # the pipeline creates the quarantine table when it first refuses a record
    configuration = {**LOG_PROPERTIES, "delta.dataSkippingStatsColumns": ",".join(QUARANTINE_STATS_COLUMNS)}
    adds = _adds(files, layout.QUARANTINE)
    _stage_table(stage, QUARANTINE_SCHEMA, QUARANTINE_TABLE_NAME, configuration, adds=adds, txn=None)
    _install_log(stage, root)


def _create_events_table(storage: LocalStorage, planned: Plan, identity: StreamIdentity, stage: Path) -> None:
    configuration = {
        **LOG_PROPERTIES,
        "delta.dataSkippingStatsColumns": ",".join(STATS_COLUMNS),
        **identity.to_config(),
    }
    _stage_table(stage, LAKE_SCHEMA, TABLE_NAME, configuration, adds=_adds(planned.events, ""), txn=planned.position)
    _install_log(stage, storage.root)


@contextmanager
def _both_locks(root: Path) -> Iterator[None]:
    """The pipeline's and the compactor's locks: nothing writes to the lake while it is migrated."""
    with ExitStack() as stack:
        stack.enter_context(LakeLock(root, layout.PIPELINE_LOCK, "pipeline"))
        stack.enter_context(LakeLock(root, layout.COMPACTOR_LOCK, "compactor"))
        yield


def _remove_staging(storage: LocalStorage) -> None:
    """Remove what a crashed migration staged in temp/ (only ever its own ``migration-*`` directories)."""
    temp = storage.root / layout.TEMP
    if not temp.is_dir():
        return
    for entry in temp.iterdir():
        if entry.name.startswith(STAGING_PREFIX) and entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
            log.info("removed %s, left by a migration that did not finish", entry)


def _report(storage: LocalStorage, migrated: bool, message: str, left_out: Sequence[str] = ()) -> dict[str, Any]:
    snap = read_snapshot(storage)
    refused = quarantine_files(storage)
    return {
        "lake": str(storage.root),
        "migrated": migrated,
        "message": message,
        "version": snap.version,
        "files": len(snap.files),
        "rows": snap.rows,
        "committed_event_id": snap.committed_event_id,
        "identity": None if snap.identity is None else snap.identity.to_config(),
        "quarantine_files": len(refused),
        "quarantine_rows": sum(f.row_count for f in refused),
        "left_out": list(left_out),
    }


def migrate(storage: LocalStorage, identity: StreamIdentity) -> dict[str, Any]:
    """Turn a lake in the previous layout into its Delta tables, in place, for the stream ``identity``.

    Idempotent: on a lake that already has a table it writes nothing and the report says so (whatever
    ``identity``); after a crash it is run again. Holds the pipeline's and the compactor's locks while
    it works (LakeLockedError if either runs). Raises LakeError, having written nothing to the root, if
    the old lake cannot be migrated as it is. Returns a report: ``lake, migrated, message, version,
    files, rows, committed_event_id, identity, quarantine_files, quarantine_rows, left_out``.
    """
    root = storage.root
    if has_log(root):
        return _report(storage, False, f"already migrated: the lake at {root} is a Delta table; nothing to do")
    if not root.is_dir():
        return {**_empty(storage), "message": f"nothing to migrate: there is no lake at {root}"}
    with _both_locks(root):
        if has_log(root):
            return _report(storage, False, f"already migrated: the lake at {root} is a Delta table; nothing to do")
        if not any(storage.list_files(zone) for zone in layout.DATA_ZONES):
            return {
                **_empty(storage),
                "message": f"nothing to migrate: the lake at {root} holds no data files "
                "(the pipeline creates the table when it starts)",
            }
        _remove_staging(storage)
        planned = plan(storage)
        stage = root / layout.TEMP / f"{STAGING_PREFIX}{uuid.uuid4().hex[:12]}"
        try:
            _carry_quarantine(storage, planned.quarantine, stage / layout.QUARANTINE)
            _create_events_table(storage, planned, identity, stage / "events")
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        snap = LakeTable.open(storage).snapshot(refresh=False)
        if sorted(snap.keys) != sorted(info.key for info, _ in planned.events):  # pragma: no cover - a bug
            raise LakeError(f"the migrated table at {root} does not hold the live set it was built from")
        message = (
            f"migrated {root}: {len(planned.events)} file(s), {planned.rows:,} rows in the table, the pipeline's "
            f"position {planned.position}; {len(planned.quarantine)} quarantine file(s) in the quarantine table; "
            f"{len(planned.left_out)} file(s) left where they are (in no table, never read; the compactor's "
            "clean-up deletes the Parquet ones after the grace period). `python -m lake verify` proves the result whole"
        )
        log.info("%s", message)
        return _report(storage, True, message, planned.left_out)


def _empty(storage: LocalStorage) -> dict[str, Any]:
    return {
        "lake": str(storage.root),
        "migrated": False,
        "version": None,
        "files": 0,
        "rows": 0,
        "committed_event_id": None,
        "identity": None,
        "quarantine_files": 0,
        "quarantine_rows": 0,
        "left_out": [],
    }
