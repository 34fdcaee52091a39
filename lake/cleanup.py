"""The clean-up after grace: deleting the files of the lake's zones that no table holds, once no reader can need them.

Rule. A file in ``landing/`` or ``compacted/`` that is not in the events table's current snapshot, a
``quarantine/*.parquet`` file that is not in the quarantine table's, or a file under ``aggregates/`` (its
data zones) that is not in the aggregates table's (:mod:`lake.aggregates`), is deleted once both hold:

* this process has observed it absent from its table continuously for at least the grace period
  (``COMPACTION_GRACE_SECONDS``), and
* its modification time is older than the grace period (and at least ``IN_FLIGHT_SECONDS``).

This covers files removed by a compaction, orphans of crashed writers (published, never committed) and
foreign or forged files alike: none of them is ever read, and each goes the same way.

"Continuously" is checked through the log, not only by sampling: between two looks the cleaner reads
the commits that landed (``_delta_log/<version>.json``), and a file that any of them adds or removes
starts its clock again. So a file added and removed again between two looks (a quarantine entry a
restarted pipeline took back, say) still gets its full grace after the removal. When those commits
cannot be read any more (log clean-up), every clock of that table starts again: always the
conservative side. The clocks live in memory, so a restart starts them all again too.

Guarantee: a file removed from a table less than the grace period ago is never deleted, so a reader
that took a snapshot holding it can still read it; a file a writer has just published and is about to
commit is never deleted either (its mtime is recent). Nothing else is touched: no ``_delta_log``, no
dotfile, no lock file, nothing in ``temp/`` (each role removes its own leftovers), and nothing at all
while the lake has no table yet or its log cannot be read.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from lake import aggregates, layout
from lake.storage import FileInfo, Storage
from lake.table import AggregatesTable, LakeTable, QuarantineTable, ensure_migrated
from utils.errors import LakeError

log = logging.getLogger(__name__)

# Steps at which the hook is called (the compactor's crash tests and pause hook use them).
STEP_DELETING: Final = "deleting"  # a file out of its table for the grace period is about to be deleted
STEP_DELETED: Final = "deleted"  # ... and has been deleted

Hook = Callable[[str, str], None]  # (step, key)
NO_TABLE: Final = -1  # the version recorded for a look that found no table
# A writer commits a file milliseconds after publishing it; a file younger than this is never deleted,
# so a short (even zero) grace period cannot remove a file between its publish and its commit.
IN_FLIGHT_SECONDS: Final = 1.0


def _noop(_step: str, _key: str) -> None:
    return None


@dataclass
class _Watched:
    """One table as the cleaner follows it: its handle and the version of the last look."""

    zone_prefix: str  # "" for the events table, "quarantine" or "aggregates" for the others
    handle: LakeTable | QuarantineTable | AggregatesTable | None = None
    version: int | None = None  # None: never looked at; NO_TABLE: there was no table then


@dataclass
class _Look:
    """What one look at a table found: the keys it holds and the keys its recent commits touched."""

    keys: set[str]
    touched: set[str] = field(default_factory=set)
    history_lost: bool = False  # some commit since the last look could not be read


class GraceCleanup:
    """Deletes files that have been out of their table for the grace period (see the module docstring).

    One instance per compactor process (its clocks are the memory of what it has observed); not
    thread-safe. Idempotent: running it again deletes nothing that is not due.
    """

    def __init__(
        self,
        storage: Storage,
        grace_seconds: float,
        *,
        clock: Callable[[], float] = time.time,
        hook: Hook | None = None,
    ) -> None:
        self.storage = storage
        self.grace_seconds = grace_seconds
        self._clock = clock
        self._hook = hook or _noop
        self._events = _Watched("")
        self._quarantine = _Watched(layout.QUARANTINE)
        self._aggregates = _Watched(aggregates.ZONE)
        self.absent_since: dict[str, float] = {}  # key -> when it was first seen absent (continuously since)

    # -- looking -----------------------------------------------------------------------------------------
    def _candidates(self) -> tuple[list[FileInfo], list[FileInfo], list[FileInfo]]:
        """Files that may be deleted, listed before the snapshots are read: (events zones, quarantine zone,
        the aggregates table's data zones)."""
        events = [
            f
            for zone in layout.DATA_ZONES
            for f in self.storage.list_tree(zone, suffix="")
            if not f.name.startswith(".")
        ]
        quarantine = [f for f in self.storage.list_files(layout.QUARANTINE) if not f.name.startswith(".")]
        summaries = [
            f
            for zone in layout.DATA_ZONES
            for f in self.storage.list_tree(f"{aggregates.ZONE}/{zone}", suffix="")
            if not f.name.startswith(".")
        ]
        return events, quarantine, summaries

    def _open(self, watched: _Watched) -> LakeTable | QuarantineTable | AggregatesTable | None:
        if watched.handle is None:
            if watched.zone_prefix == aggregates.ZONE:
                watched.handle = AggregatesTable.open(self.storage)
            elif watched.zone_prefix:
                watched.handle = QuarantineTable.open(self.storage)
            elif self.storage.has_table():
                watched.handle = LakeTable.open(self.storage)
        return watched.handle

    def _look(self, watched: _Watched) -> _Look:
        """The table's current keys and the keys its commits since the last look touched.

        Raises LakeError if the log cannot be read (the caller then deletes nothing of that table).
        """
        try:
            table = self._open(watched)
            if table is None:
                keys: set[str] = set()
                version = NO_TABLE
            else:
                table.refresh()
                version = table.version
                keys = {table.key_of(str(p)) for p in table.add_actions().column("path").to_pylist()}
        except LakeError:
            watched.handle = None  # open it afresh next time
            raise
        look = _Look(keys)
        previous = watched.version
        if previous is not None and version < previous:
            look.history_lost = True  # the table went back (recreated): trust nothing observed so far
        elif previous is not None and table is not None:
            for v in range(previous + 1, version + 1):
                touched = self._commit_paths(table, v)
                if touched is None:
                    look.history_lost = True
                    break
                look.touched |= touched
        watched.version = version
        return look

    def _commit_paths(self, table: LakeTable | QuarantineTable | AggregatesTable, version: int) -> set[str] | None:
        """Keys added or removed by commit ``version`` (read from its JSON entry); None if it is gone."""
        entry = table.log_key(version)
        try:
            text = self.storage.read_bytes(entry).decode()
        except FileNotFoundError:
            return None
        except (OSError, LakeError) as exc:
            log.warning("clean-up: cannot read %s (%s); every clock of that table starts again", entry, exc)
            return None
        keys: set[str] = set()
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                action = json.loads(line)
            except ValueError:
                return None
            for kind in ("add", "remove"):
                body = action.get(kind)
                if isinstance(body, dict) and isinstance(body.get("path"), str):
                    keys.add(table.key_of(urllib.parse.unquote(body["path"])))
        return keys

    # -- deciding and deleting -----------------------------------------------------------------------------
    def _due(self, files: list[FileInfo], look: _Look, now: float) -> list[FileInfo]:
        """Update the clocks of ``files`` against ``look``; return those whose grace has passed."""
        due: list[FileInfo] = []
        for f in files:
            if f.key in look.keys:
                self.absent_since.pop(f.key, None)
                continue
            if look.history_lost or f.key in look.touched:
                self.absent_since[f.key] = now  # it may have been in the table since the last look
            since = self.absent_since.setdefault(f.key, now)
            if now - since >= self.grace_seconds and now - f.mtime_ns / 1e9 >= max(
                self.grace_seconds, IN_FLIGHT_SECONDS
            ):
                due.append(f)
        return due

    def run(self, stop: threading.Event | None = None) -> list[str]:
        """Look at the tables, then delete every file that is due; returns the deleted keys.

        Deletes nothing while the lake has no table; skips a table whose log cannot be read (logged).
        Ends early when ``stop`` is set. Raises UnmigratedLakeError for a lake in the previous layout.
        """
        if not ensure_migrated(self.storage):
            return []  # no table yet: nothing is the lake, so nothing can be judged
        events_files, quarantine_files, aggregates_files = self._candidates()  # before the snapshots: see _due
        now = self._clock()
        due: list[FileInfo] = []
        for watched, files in (
            (self._events, events_files),
            (self._quarantine, quarantine_files),
            (self._aggregates, aggregates_files),
        ):
            try:
                look = self._look(watched)
            except LakeError as exc:
                table = watched.zone_prefix or "the events table"
                log.warning("clean-up: the log of %s cannot be read (%s); nothing of it is deleted", table, exc)
                continue
            due += self._due(files, look, now)
        listed = {f.key for f in (*events_files, *quarantine_files, *aggregates_files)}
        for key in [k for k in self.absent_since if k not in listed]:
            del self.absent_since[key]  # gone from disk (deleted by its writer, or by us)
        deleted: list[str] = []
        for f in sorted(due, key=lambda f: (f.mtime_ns, f.key)):
            if stop is not None and stop.is_set():
                break
            self._hook(STEP_DELETING, f.key)
            try:
                if self.storage.delete(f.key):
                    deleted.append(f.key)
            except OSError as exc:  # tried again next time
                log.warning("clean-up: could not delete %s (%s)", f.key, exc)
                continue
            self.absent_since.pop(f.key, None)
            self._hook(STEP_DELETED, f.key)
        if deleted:
            log.info(
                "deleted %d file(s) out of the table for the %.1f s grace period", len(deleted), self.grace_seconds
            )
        return deleted
