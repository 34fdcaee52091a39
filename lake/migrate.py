"""``python -m lake migrate``: a lake in the previous layout becomes the events table (and quarantine table) in place.

The previous layout had no log: its content was the *live set* (:mod:`lake.legacy`), computed from the
files' footers. Migrating turns it into what every process reads now (:mod:`lake.table`), on a local
disk or in a bucket (a lake of the previous layout copied, key for key, to ``s3://bucket/prefix``):

1. holding the lake for itself (below), every file of the live set is read in full through
   :meth:`~lake.storage.Storage.open_input`: its statistics come from its rows (never from its footer),
   and the migration refuses, writing nothing, if a file is unreadable, holds other columns,
   contradicts its footer, holds ids out of order, shares an id with another file, or is a compacted
   file that holds less than the files it hides; a read that failed (the disk, a request to the store)
   stops it too, as an I/O failure, never taken for damage;
2. the previous pipeline's refused-record files (``quarantine-*.parquet``) below the pipeline's
   position go into the quarantine table (its own log under ``quarantine/``), first;
3. the events table: its metadata recording the stream's identity, every live file added with its
   statistics, and the pipeline's ``txn`` set to the live set's highest event id.

Each table is built first where nobody reads it, by delta-rs: a creation commit, then one commit of
the adds (and ``txn``). Then it is put in place in one atomic step, **the commit point**:

* on a local disk, the staged ``_delta_log`` (in ``temp/migration-…``) is moved to the table's root in
  one rename, which refuses a log already there;
* on object storage, which has no rename, the staged log is turned into the table's **version 0**: one
  commit holding ``protocol``, ``metaData``, every ``add`` and the ``txn`` (what delta-rs's own
  ``create_table_with_add_actions`` writes; it cannot be called here since it refuses the ``badge.*``
  configuration keys). It is read back with delta-rs and compared with the staged table, then written
  with one PUT of ``_delta_log/00000000000000000000.json`` with ``If-None-Match: *``, the condition
  delta-rs's own commits on S3 rely on: the table appears whole, or not at all, and never over a log
  someone else wrote. The staging happens in a private local scratch directory.

Holding the lake: locally the pipeline's and the compactor's locks (LakeLockedError at once if either
runs). On object storage there is no pipeline lock: the migration holds the compactor's lease
(:mod:`lake.lease`), waiting up to ``lease_wait`` seconds (long enough for the lease of a compactor or a
migration that died to expire; LakeLockedError, naming the holder, if a live one keeps it), renewed in
the background and checked against the store right before each commit; a second migration or a
compactor waits for it meanwhile. No pipeline can run on the lake until the events table's commit point:
every process opens the lake through :func:`lake.table.ensure_migrated`, which refuses data files without
an events table (UnmigratedLakeError, exit 2), before it writes anything, whatever the quarantine table
holds; a compactor does so before it even asks for the lease (one that found the prefix empty and holds
the lease, waiting for a table, makes the migration refuse, naming it). A pipeline that found the prefix
empty and created its own empty table there before the old files were copied in makes the migration
report the lake as migrated already (and the conditional PUT keeps its table if the two race): copy the
old lake into a prefix no process uses, then migrate, as locally.

Guarantees: a lake is either unmigrated (every process refuses it) or migrated whole. Idempotent: a
migrated lake (it has an events table) is left as it is and the report says so; a migration that
crashed is simply run again (a quarantine table already in place is reconciled in one commit, staged
leftovers are removed; on object storage a lease left by a killed migration expires by itself and is
taken over). Files left out (foreign, unreadable, replaced but not yet deleted, orphan quarantine files,
reason sidecars) stay where they are: they are not in any table, so no reader sees them, and the
compactor's clean-up deletes the Parquet ones after the grace period (a ``.reason.json`` sidecar is
left for whoever wants to read it).
"""

from __future__ import annotations

import itertools
import json
import logging
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
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
from lake.lease import DEFAULT_MAX_SKEW_S, DEFAULT_TTL_S, Lease
from lake.lock import LakeLock
from lake.objectstore import ObjectStorage, new_scratch_dir
from lake.reads import ReadFailed, RecordedReads
from lake.storage import LOG_DIR, FileInfo, LocalStorage, Storage
from lake.table import (
    APP_ID,
    LOG_PROPERTIES,
    OPERATION_KEY,
    QUARANTINE_TABLE_NAME,
    TABLE_NAME,
    LakeTable,
    QuarantineTable,
    add_action,
    quarantine_files,
    read_snapshot,
    remove_action,
)
from utils.errors import ConfigError, CorruptFileError, LakeError, LakeLockedError, one_line
from utils.fsio import fsync_dir, fsync_file
from utils.records import LAKE_SCHEMA, QUARANTINE_SCHEMA

log = logging.getLogger(__name__)

OPERATION: Final = "migration"  # the ``badge.operation`` of the migration's commits
STAGING_PREFIX: Final = "migration-"  # temp/migration-<12 hex>/ (locally): the tables being built
STREAM_START_FILE: Final = ".stream_start"  # the service remembers its stream start here (api.stream_state)
STREAM_START_VARIABLE: Final = "GENERATOR_STREAM_START"
# On object storage, how long the migration waits for the compactor's lease: past the expiry of a lease
# whose holder died (its TTL, the clock skew allowed, a few seconds of polling), never for a live holder.
LEASE_WAIT_SECONDS: Final = DEFAULT_TTL_S + DEFAULT_MAX_SKEW_S + 5.0
FIRST_COMMIT: Final = f"{0:020d}.json"  # a table's version 0 in its log
_BATCH_ROWS: Final = 65_536

BeforeCommit = Callable[[], None]  # run right before each commit: the lease's check on object storage


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
    storage: Storage, seed: int, events_per_second: float, stream_start: str | None = None
) -> StreamIdentity:
    """The identity of the stream a lake in the previous layout holds, for :func:`migrate`.

    The previous layout did not record it, so it is rebuilt from what the service used: ``seed`` and
    ``events_per_second`` (the stream's *timeline* rate: for a firehose lake, the nominal rate the
    service stamps its records with; the caller resolves it, the lake does not know the service), and
    the stream start: ``stream_start`` if given (the service's GENERATOR_STREAM_START), else the one the
    service remembered in the lake's ``.stream_start`` (a file in the lake's directory, an object under
    its prefix). Raises ConfigError if the rate is not positive or no stream start is known, LakeError
    if ``.stream_start`` could not be read (a failed request: try again).
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
        where = f"{storage.location}/{STREAM_START_FILE}"
        try:
            text = storage.read_bytes(STREAM_START_FILE).decode("utf-8", errors="replace")
        except FileNotFoundError:
            raise ConfigError(
                STREAM_START_VARIABLE,
                "",
                f"the lake has no {STREAM_START_FILE}: set it to the instant the lake's stream started "
                "(the service's GENERATOR_STREAM_START when it wrote the lake)",
            ) from None
        start = _normalized_start(text, f"{STREAM_START_VARIABLE} (unset; remembered in {where})")
    return StreamIdentity(seed=seed, events_per_second=float(events_per_second), stream_start=start)


# -- reading the old lake: every figure from the rows --------------------------------------------------


def _io_failure(storage: Storage, key: str, error: BaseException) -> LakeError:
    return LakeError(
        f"the lake at {storage.location} was not migrated: reading {key} failed "
        f"({type(error).__name__}: {one_line(error)}), an I/O failure, not damage; nothing was written. "
        "Run `python -m lake migrate` again"
    )


def read_stats(
    storage: Storage, info: FileInfo, schema: pa.Schema, columns: tuple[str, ...], *, ordered: bool
) -> FileStats:
    """Statistics of the file ``info`` computed from its rows, read in full in bounded batches through the storage.

    Raises CorruptFileError if it is gone, its bytes are not Parquet, its columns are not ``schema``'s,
    and, if ``ordered`` (data files), if its event ids are not strictly increasing (a duplicate, or rows
    out of order); LakeError if reading it failed (the OS, a request to the store: nothing is known of it).
    """
    expected = [(f.name, f.type) for f in schema]
    try:
        native = storage.open_input(info.key)
    except FileNotFoundError as exc:
        raise CorruptFileError(f"{info.key}: not readable (it is gone)") from exc
    except (OSError, LakeError, pa.ArrowException) as exc:
        raise _io_failure(storage, info.key, exc) from exc
    reads = RecordedReads(native)
    try:
        parquet = pq.ParquetFile(pa.PythonFile(reads, mode="r"))
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
    except (ReadFailed, OSError, ValueError, KeyError, pa.ArrowException) as exc:
        if reads.failure is not None:
            raise _io_failure(storage, info.key, reads.failure) from exc
        raise CorruptFileError(f"{info.key}: not readable ({exc})") from exc
    finally:
        reads.close()
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


def _refuse(storage: Storage, problem: str) -> LakeError:
    return LakeError(
        f"the lake at {storage.location} cannot be migrated: {problem}; nothing was written. Move the file out of "
        "the lake (or restore it) and run `python -m lake migrate` again"
    )


def _check_sources(storage: Storage, live: legacy.LiveSet, stats: dict[str, FileStats]) -> None:
    """A compacted file of the live set must hold every row of the files it hides that are still in storage."""
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
                f"{f.key} names {len(present)} file(s) still in the lake holding {hidden_rows} rows but holds "
                f"{own.rows} rows ({own.event_id_min}..{own.event_id_max}): it cannot have replaced them",
            )


def plan(storage: Storage) -> Plan:
    """Read the old lake and decide what the migration commits; raises LakeError (nothing written) if it cannot.

    Reads every live file (and every hidden file still in storage that a compacted file names) in full.
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


# -- building the tables --------------------------------------------------------------------------------


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
    """Build a table's log at ``stage`` (a local directory): its creation, then (if any) one commit of ``adds``
    and ``txn``."""
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


# -- putting a staged table in place: the commit point ---------------------------------------------------


def _install_log(stage: Path, root: Path) -> None:
    """Local disk: move the staged ``_delta_log`` to ``root`` in one rename (the commit point), durably.

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


def _single_commit(stage: Path, location: str) -> bytes:
    """The log staged at ``stage`` as one commit, version 0 of a table at ``location``.

    Version 0's ``commitInfo`` (its recorded location made ``location``), ``protocol`` and ``metaData``,
    then every action of version 1 but its ``commitInfo`` (the ``add`` actions and the ``txn``): the
    actions of a table created with its files, as delta-rs's ``create_table_with_add_actions`` writes
    them, each line as delta-rs wrote it into the staged log.
    """
    entries = sorted((stage / LOG_DIR).glob("*.json"))
    if [p.name for p in entries] not in ([FIRST_COMMIT], [FIRST_COMMIT, f"{1:020d}.json"]):
        raise LakeError(f"the log staged at {stage} is not a creation and at most one commit: {entries}")
    lines: list[str] = []
    for version, entry in enumerate(entries):
        for line in entry.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            action = json.loads(line)
            if "commitInfo" in action:
                if version:
                    continue  # the commit has one commitInfo: the creation's
                parameters = action["commitInfo"].get("operationParameters")
                if isinstance(parameters, dict) and "location" in parameters:
                    parameters["location"] = location
                lines.append(json.dumps(action, separators=(",", ":")))
                continue
            lines.append(line)
    return "".join(f"{line}\n" for line in lines).encode()


def _facts(table: DeltaTable) -> tuple[Any, ...]:
    """What a table is, for comparing two logs: protocol, metadata, schema, files with statistics, txn."""
    metadata = table.metadata()
    adds = sorted(pa.table(table.get_add_actions(flatten=True)).to_pylist(), key=lambda a: str(a["path"]))
    return (
        table.protocol(),
        metadata.id,
        metadata.name,
        dict(metadata.configuration),
        list(metadata.partition_columns),
        table.schema(),
        adds,
        table.transaction_version(APP_ID),
    )


def _check_single_commit(stage: Path, commit: bytes, scratch: Path) -> None:
    """Read ``commit`` back with delta-rs as the only entry of a log; LakeError unless it is the staged table."""
    (scratch / LOG_DIR).mkdir(parents=True)
    (scratch / LOG_DIR / FIRST_COMMIT).write_bytes(commit)
    try:
        single = DeltaTable(str(scratch))
        same = single.version() == 0 and _facts(single) == _facts(DeltaTable(str(stage)))
    except (DeltaError, OSError, ValueError) as exc:
        raise LakeError(
            f"the table's first commit, built from the log staged at {stage}, is not readable: {exc}"
        ) from exc
    if not same:
        raise LakeError(f"the table's first commit, built from the log staged at {stage}, is not the staged table")


def _holds(storage: Storage, key: str, data: bytes) -> bool:
    """True if ``key`` holds exactly ``data`` now (False if it is absent, differs, or cannot be read)."""
    try:
        return storage.read_bytes(key) == data
    except (FileNotFoundError, LakeError):
        return False


def _put_log(storage: Storage, stage: Path, prefix: str, before_commit: BeforeCommit) -> None:
    """Object storage: the staged table as its version 0, one PUT with ``If-None-Match: *`` (the commit point).

    The commit is checked with delta-rs first. A PUT whose answer was lost (it failed, or was refused as
    existing on a retry of the client) counts if the object holds this very commit. Raises LakeError if
    the table's log got a first commit from someone else meanwhile (nothing of the migration is in it).
    """
    root = storage.table_uri(prefix)
    key = f"{prefix}/{LOG_DIR}/{FIRST_COMMIT}" if prefix else f"{LOG_DIR}/{FIRST_COMMIT}"
    commit = _single_commit(stage, root)
    _check_single_commit(stage, commit, stage.parent / f"{stage.name}-check")
    before_commit()
    try:
        created = storage.write_new(key, commit)
    except LakeError:
        if not _holds(storage, key, commit):
            raise
        created = True  # it landed; its answer was lost
    if not created and not _holds(storage, key, commit):
        raise LakeError(
            f"cannot create the table at {root}: another process created it while it was being migrated "
            f"(its {key} is not the migration's); nothing of the migration is in it. Stop every process on the "
            "lake and run `python -m lake migrate` again to see what the lake is now"
        )


def _install(storage: Storage, stage: Path, prefix: str, before_commit: BeforeCommit) -> None:
    """Put the table staged at ``stage`` in place at ``prefix`` of the lake, in one atomic step."""
    if isinstance(storage, LocalStorage):
        before_commit()
        _install_log(stage, storage.root / prefix if prefix else storage.root)
    else:
        _put_log(storage, stage, prefix, before_commit)


def _carry_quarantine(
    storage: Storage, files: Sequence[tuple[FileInfo, FileStats]], stage: Path, before_commit: BeforeCommit
) -> None:
    """Make the quarantine table hold exactly ``files``: built whole, or (after a crash) reconciled in one commit."""
    if storage.has_table(layout.QUARANTINE):
        table = QuarantineTable.open(storage)
        if table is None:  # pragma: no cover - the log was there a moment ago
            raise LakeError(f"the quarantine table at {storage.table_uri(layout.QUARANTINE)} vanished")
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
            before_commit()
            table.commit(actions, OPERATION)
        return
    if not files:
        return  # the pipeline creates the quarantine table when it first refuses a record
    configuration = {**LOG_PROPERTIES, "delta.dataSkippingStatsColumns": ",".join(QUARANTINE_STATS_COLUMNS)}
    adds = _adds(files, layout.QUARANTINE)
    _stage_table(stage, QUARANTINE_SCHEMA, QUARANTINE_TABLE_NAME, configuration, adds=adds, txn=None)
    _install(storage, stage, layout.QUARANTINE, before_commit)


def _create_events_table(
    storage: Storage, planned: Plan, identity: StreamIdentity, stage: Path, before_commit: BeforeCommit
) -> None:
    configuration = {
        **LOG_PROPERTIES,
        "delta.dataSkippingStatsColumns": ",".join(STATS_COLUMNS),
        **identity.to_config(),
    }
    _stage_table(stage, LAKE_SCHEMA, TABLE_NAME, configuration, adds=_adds(planned.events, ""), txn=planned.position)
    _install(storage, stage, "", before_commit)


# -- holding the lake -----------------------------------------------------------------------------------


@contextmanager
def _both_locks(root: Path) -> Iterator[None]:
    """The pipeline's and the compactor's locks: nothing writes to the lake while it is migrated."""
    with ExitStack() as stack:
        stack.enter_context(LakeLock(root, layout.PIPELINE_LOCK, "pipeline"))
        stack.enter_context(LakeLock(root, layout.COMPACTOR_LOCK, "compactor"))
        yield


@contextmanager
def _compactor_lease(storage: ObjectStorage, wait: float) -> Iterator[BeforeCommit]:
    """The compactor's lease, held (and renewed) while the migration works; yields the check before a commit.

    Waits up to ``wait`` seconds for it (a lease whose holder died expires meanwhile); LakeLockedError,
    naming the holder, if a live compactor or migration keeps it.
    """
    lease = Lease(storage.store)
    if not lease.acquire(timeout=wait):
        seen = lease.last_seen
        raise LakeLockedError(
            f"the compactor's lease {lease.key} of the lake at {storage.location} is held "
            f"({seen.describe() if seen is not None else 'holder unknown'}): a compactor or another migration "
            "runs on this lake; stop it, then run `python -m lake migrate` again"
        )
    try:
        lease.start_renewing()

        def check() -> None:
            lease.check()  # LeaseLostError, or LakeError if the store cannot confirm it: no commit

        yield check
    finally:
        lease.release()


@contextmanager
def _held(storage: Storage, lease_wait: float) -> Iterator[BeforeCommit]:
    """The lake held for the migration alone (see the module docstring); yields the check before each commit."""
    if isinstance(storage, LocalStorage):
        with _both_locks(storage.root):
            yield lambda: None
    elif isinstance(storage, ObjectStorage):
        with _compactor_lease(storage, lease_wait) as check:
            yield check
    else:
        raise TypeError(f"no way to hold {storage!r} for a migration")


def _remove_staging(storage: LocalStorage) -> None:
    """Remove what a crashed migration staged in temp/ (only ever its own ``migration-*`` directories)."""
    temp = storage.root / layout.TEMP
    if not temp.is_dir():
        return
    for entry in temp.iterdir():
        if entry.name.startswith(STAGING_PREFIX) and entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
            log.info("removed %s, left by a migration that did not finish", entry)


@contextmanager
def _staging(storage: Storage) -> Iterator[Path]:
    """A fresh local directory to build the tables in, removed afterwards: ``temp/migration-…`` in a local lake,
    a private scratch directory of this machine for a lake on object storage (a killed migration's is
    removed by the next process that makes one)."""
    name = f"{STAGING_PREFIX}{uuid.uuid4().hex[:12]}"
    if isinstance(storage, LocalStorage):
        stage = base = storage.root / layout.TEMP / name
    else:
        base = new_scratch_dir()
        stage = base / name
    try:
        yield stage
    finally:
        shutil.rmtree(base, ignore_errors=True)


# -- the command ----------------------------------------------------------------------------------------


def _report(storage: Storage, migrated: bool, message: str, left_out: Sequence[str] = ()) -> dict[str, Any]:
    snap = read_snapshot(storage)
    refused = quarantine_files(storage)
    return {
        "lake": storage.location,
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


def migrate(storage: Storage, identity: StreamIdentity, *, lease_wait: float = LEASE_WAIT_SECONDS) -> dict[str, Any]:
    """Turn a lake in the previous layout into its Delta tables, in place, for the stream ``identity``.

    On a local disk or on object storage (see the module docstring). Idempotent: on a lake that already
    has an events table it writes nothing and the report says so (whatever ``identity``); after a crash
    it is run again. Holds the lake while it works: locally the pipeline's and the compactor's locks
    (LakeLockedError if either runs); on object storage the compactor's lease, waited for up to
    ``lease_wait`` seconds (LakeLockedError if a live holder keeps it). Raises LakeError, having written
    nothing to the events table, if the old lake cannot be migrated as it is or a read failed. Returns a
    report: ``lake, migrated, message, version, files, rows, committed_event_id, identity,
    quarantine_files, quarantine_rows, left_out``.
    """
    where = storage.location
    already = f"already migrated: the lake at {where} is a Delta table; nothing to do"
    if storage.has_table():
        return _report(storage, False, already)
    if isinstance(storage, LocalStorage) and not storage.root.is_dir():
        return {**_empty(storage), "message": f"nothing to migrate: there is no lake at {where}"}
    with _held(storage, lease_wait) as before_commit:
        if storage.has_table():
            return _report(storage, False, already)
        if not any(storage.list_files(zone) for zone in layout.DATA_ZONES):
            return {
                **_empty(storage),
                "message": f"nothing to migrate: the lake at {where} holds no data files "
                "(the pipeline creates the table when it starts)",
            }
        if isinstance(storage, LocalStorage):
            _remove_staging(storage)
        planned = plan(storage)
        with _staging(storage) as stage:
            _carry_quarantine(storage, planned.quarantine, stage / layout.QUARANTINE, before_commit)
            _create_events_table(storage, planned, identity, stage / "events", before_commit)
        snap = LakeTable.open(storage).snapshot(refresh=False)
        if sorted(snap.keys) != sorted(info.key for info, _ in planned.events):  # pragma: no cover - a bug
            raise LakeError(f"the migrated table at {where} does not hold the live set it was built from")
        message = (
            f"migrated {where}: {len(planned.events)} file(s), {planned.rows:,} rows in the table, the pipeline's "
            f"position {planned.position}; {len(planned.quarantine)} quarantine file(s) in the quarantine table; "
            f"{len(planned.left_out)} file(s) left where they are (in no table, never read; the compactor's "
            "clean-up deletes the Parquet ones after the grace period). `python -m lake verify` proves the result whole"
        )
        log.info("%s", message)
        return _report(storage, True, message, planned.left_out)


def _empty(storage: Storage) -> dict[str, Any]:
    return {
        "lake": storage.location,
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
