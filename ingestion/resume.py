"""Where a starting pipeline resumes: the stream checked, the cursor read from the table's log, orphans removed.

Exactly-once rests on it (with the deterministic source): every event up to the committed position
(the ``txn`` version of the events table) is committed exactly once, in the events table or in the
quarantine table, and nothing beyond it is. Nothing is inferred from listings or footers: the cursor
is the committed position + 1, and a file the log does not add is not the lake.

At start, under the pipeline lock, :func:`recover`:

1. opens the events table for the source's stream, creating it (with that identity) on a new lake;
   a table of another stream raises StreamMismatchError before anything is written;
2. removes the pipeline's own leftovers in ``temp/``;
3. deletes orphan landing files: named as the pipeline names them (``landing-…``), first event id (from
   the name) at or beyond the cursor, and not in the snapshot (published by a flush that crashed before
   its commit);
4. takes orphan entries (first event id at or beyond the cursor) out of the quarantine table.

A file named by another process that is still alive is left to the compactor's clean-up after grace:
the lock rules out a second pipeline, but a zombie that ignored it may be about to commit that file.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Final

from ingestion.placement import BadgeSource, StreamIdentityLike
from lake import layout, quarantine
from lake.identity import StreamIdentity
from lake.snapshot import Snapshot
from lake.storage import FileInfo, Storage
from lake.table import LakeTable
from lake.writer import LANDING_KIND, OWN_KINDS
from utils.config import Settings
from utils.errors import TransientSourceError
from utils.retry import Backoff

log = logging.getLogger(__name__)

# lake.layout.new_file_name: {kind}-{UTC us}-{first id:012d}-{last id:012d}-{pid}-{12 hex}.parquet
FILE_NAME: Final = re.compile(
    r"^(?P<kind>[a-z]+)-(?P<stamp>\d{8}T\d{12}Z)-(?P<first>-?\d+)-(?P<last>-?\d+)-(?P<pid>\d+)-(?P<rand>[0-9a-f]{12})"
    + re.escape(layout.PARQUET_SUFFIX)
)
IDENTITY_JITTER: Final = 0.2


@dataclass(frozen=True)
class ResumePoint:
    """Where a starting pipeline resumes, the table it appends to, and what it cleaned up to get there."""

    cursor: int  # the first event id to fetch: the committed position + 1
    position: int | None  # the committed position (the last event id committed), None on a new lake
    table: LakeTable = field(repr=False, compare=False)
    removed_temp: tuple[str, ...] = ()
    removed_landing: tuple[str, ...] = ()  # orphan landing files deleted
    removed_quarantine: tuple[str, ...] = ()  # orphan entries taken out of the quarantine table


@dataclass(frozen=True)
class NamedFile:
    """What a data file's name says (lake.layout's grammar): its kind, first and last event id, writer pid."""

    kind: str
    first: int
    last: int
    pid: int

    @classmethod
    def parse(cls, name: str) -> NamedFile | None:
        """The parts of ``name`` (a published name, or a temp name starting with one); None if not ours."""
        match = FILE_NAME.match(name)
        if match is None:
            return None
        return cls(match["kind"], int(match["first"]), int(match["last"]), int(match["pid"]))

    @property
    def by_another_live_process(self) -> bool:
        """True if the writer named in the file is alive and is not this process (pid reuse: conservative)."""
        if self.pid == os.getpid():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def identity_of(reported: StreamIdentityLike) -> StreamIdentity:
    """The lake's form of the identity a source reports."""
    return StreamIdentity(
        seed=int(reported.seed),
        events_per_second=float(reported.events_per_second),
        stream_start=str(reported.stream_start),
        schema_version=int(reported.schema_version),
    )


def wait_for_identity(
    source: BadgeSource, settings: Settings, stop: threading.Event, *, deadline: float | None = None
) -> StreamIdentity | None:
    """The stream the source serves, waiting out an outage of any length; None if ``stop`` was set first
    (or the monotonic ``deadline`` passed).

    Raises PermanentSourceError when asking again cannot help.
    """
    backoff = Backoff.for_source(settings.retry_backoff_base, settings.retry_max_delay_seconds, jitter=IDENTITY_JITTER)
    failures = 0
    since = time.monotonic()
    while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
        try:
            identity = identity_of(source.stream_identity())
        except TransientSourceError as exc:
            failures += 1
            delay = backoff.delay(failures)
            log.warning(
                "source unavailable (down %.0f s, %d failed round(s)) asking which stream it serves: %s; "
                "trying again in %.1f s",
                time.monotonic() - since,
                failures,
                exc,
                delay,
            )
            stop.wait(delay if deadline is None else max(0.0, min(delay, deadline - time.monotonic())))
            continue
        if failures:
            log.info("source is back after %.0f s", time.monotonic() - since)
        return identity
    return None


def remove_own_temp(storage: Storage) -> list[str]:
    """Delete the pipeline's leftovers in temp/ (kinds landing and quarantine); never the compactor's.

    A temp file named by another live process is left alone (it may be writing it).
    """
    removed = []
    for info in storage.list_all(layout.TEMP):
        if not info.name.startswith(tuple(f"{kind}-" for kind in OWN_KINDS)):
            continue
        named = NamedFile.parse(info.name)
        if named is not None and named.by_another_live_process:
            continue
        storage.delete(info.key)
        removed.append(info.key)
    return removed


def remove_orphan_landing(storage: Storage, listed: list[FileInfo], snapshot: Snapshot) -> list[str]:
    """Delete the landing files a crashed flush published but never committed; returns their keys.

    An orphan is named ``landing-…`` with a first event id (from its name: nothing reads footers) at
    or beyond the snapshot's cursor, and is not in the snapshot. Anything else not in the snapshot
    (foreign names, older orphans) is left to the clean-up after grace. ``listed`` must be listed
    *before* the snapshot was read, so a file committed in between is in the snapshot, not an orphan.
    """
    cursor = snapshot.next_event_id
    committed = set(snapshot.keys)
    removed = []
    for info in listed:
        named = NamedFile.parse(info.name)
        if named is None or named.kind != LANDING_KIND or named.first < cursor or info.key in committed:
            continue
        if named.by_another_live_process:
            log.warning("left %s alone: its writer (pid %d) is still alive", info.key, named.pid)
            continue
        if storage.delete(info.key):
            removed.append(info.key)
            log.info(
                "removed orphan landing file %s (events %d..%d: published, never committed; they are fetched again)",
                info.key,
                named.first,
                named.last,
            )
    return removed


def recover(storage: Storage, identity: StreamIdentity) -> ResumePoint:
    """Make the lake ready for a new pipeline run of the stream ``identity``; call only under the pipeline lock.

    Idempotent. Raises StreamMismatchError (nothing written) if the lake's table holds another
    stream, UnmigratedLakeError for a lake in the previous layout, LakeError if the log cannot be
    read. Afterwards every event up to ``position`` is committed exactly once (in the events table or
    the quarantine table) and nothing beyond it is.
    """
    table = LakeTable.open_or_create(storage, identity)
    storage.ensure_layout()
    temp = remove_own_temp(storage)
    listed = storage.list_tree(layout.LANDING)  # before the snapshot: see remove_orphan_landing
    snapshot = table.snapshot()
    landing = remove_orphan_landing(storage, listed, snapshot)
    orphans = quarantine.remove_orphans(storage, snapshot.next_event_id)
    if temp:
        log.info("removed %d leftover temp file(s) of an interrupted flush", len(temp))
    return ResumePoint(
        snapshot.next_event_id,
        snapshot.committed_event_id,
        table,
        tuple(temp),
        tuple(landing),
        tuple(orphans),
    )
