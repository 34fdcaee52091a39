"""``make clean``: empty the lake after asking, never under a running pipeline or compactor.

Everything goes: the data files, the tables' logs (``_delta_log`` of the events table and of
``quarantine/``, so no table survives to point at deleted files) and ``.stream_start``, so the next
run creates a new table for a new stream at event 0. It says what it will delete and asks y/N first
(``--yes``: do not ask); a lake that does not exist, or a prefix that holds no object, is left alone
with "nothing to remove". The logs go first: a clean that is interrupted leaves inert files, never a
table missing its files.

**On a local directory** the pipeline and the compactor each hold an OS lock in the lake root. The
locks are taken (non-blocking) after the y/N answer and held while deleting, so a pipeline or a
compactor started while the prompt waited is caught; the probe before the prompt only spares asking.

**On S3** (``DATA_LAKE_PATH=s3://bucket/prefix``) every object under the prefix is deleted (listed
recursively, removed in DeleteObjects batches of up to 1,000 keys), whatever its name; other prefixes
of the bucket are not touched. No OS lock can be seen there, so:

* *the compactor* is kept out by its own lease, ``_locks/compactor.lease`` (:mod:`lake.lease`). After
  the answer, clean takes the lease the way a compactor does (created with ``If-None-Match``, or an
  expired or released one replaced with ``If-Match``; a live one is never touched), renews it while it
  deletes, and refuses (exit 3, one line) if a compactor holds it. A compactor that starts meanwhile
  waits for the lease; the lease object is deleted last, after every other object, which hands it on.
  As before the prompt, a read of the lease only spares asking. The pipeline started by ``make run`` or
  ``make pipeline`` runs its compactor as a child, so its lease also tells that such a pipeline runs.
* *a pipeline* holds no lock on S3 (a second one is fenced by the table's ``txn`` instead), so this
  part is a **heuristic**: the newest object of the events table's ``_delta_log/`` must be older than
  :func:`quiet_seconds` = 2 × (``FLUSH_INTERVAL_SECONDS`` + ``POLL_INTERVAL_SECONDS``) + 30 s (34 s at
  the defaults), else clean refuses (exit 3) saying a pipeline appears to be running and when the last
  commit was. A pipeline commits only when it has records to flush (``lake/writer.py``: an idle writer
  never commits), and on a live stream records arrive on every poll, so a running pipeline commits
  about every max(flush interval, poll interval + request) seconds; the bound allows twice that plus
  30 s for slow requests, slow commits and clock skew. The age is measured on the store's clock (the
  last-modified time of the lease clean has just written against the log's), so the hosts' clocks do
  not enter it; the probe before the prompt uses this host's clock. A pipeline that has just stopped
  looks like a running one for that long (the message says when to try again). The heuristic misses a
  pipeline that runs without committing: one waiting out an outage of its source or of the store, one
  on a stream slower than one event per bound, one whose settings differ from clean's (the bound is
  computed from clean's own). A pipeline with its child compactor (the default) is still caught by
  the lease then; a ``--no-compaction`` one is not.
* *if a pipeline still commits after the clean*, delta-rs refuses the commit: the pipeline's snapshot
  is at a version N the log no longer has, so the attempt fails (``Invalid table version: N``), no log
  entry is written and no table appears. Its writer keeps the records and retries with backoff, a
  warning each time, until it is stopped. It may have published a few files first (its flushes in
  progress, at most two, each a landing and perhaps a quarantine file): objects no log adds, which make
  the next pipeline refuse the prefix ("holds data files but no _delta_log/") until clean runs again.
  Stop it before starting a new pipeline: while a new table is below version N its retries fail, past
  N it is fenced (a concurrent ``txn``), but a retry that finds the new table at exactly version N
  lands in it (delta-rs compares versions, not tables) and fences the new pipeline instead.
  A commit racing with the clean is kept out by the order of deletion: each table's log goes newest
  first, its newest commit alone in the first request, so from then on a writer at that version is
  refused (deleting the oldest entries first would let its next commit land on top of the newest).
  Objects written during the clean are caught by listing again after the deletion (up to
  :data:`RELIST_ROUNDS` times); any found are removed too and reported.

``python -m processes.clean [--yes]``; exit 0 once removed, kept or nothing to remove, 3 when a
pipeline or compactor runs, 2 for a bad setting, 1 if the store failed (the lake may be partly
removed: run it again).
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shutil
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import obstore
from obstore.exceptions import BaseError

from lake import aggregates, layout
from lake.lease import LEASE_KEY, Lease
from lake.location import is_object_store, open_storage
from lake.lock import LakeLock
from lake.objectstore import ObjectStorage
from lake.table import LOG_DIR
from processes.cli import EXIT_LOCKED, EXIT_OK, run_main
from utils.config import Settings, get_settings
from utils.errors import LakeError, LakeLockedError, LeaseLostError, one_line

ROLES = ((layout.PIPELINE_LOCK, "pipeline"), (layout.COMPACTOR_LOCK, "compactor"))

# On S3: a pipeline is taken to run while its table's log was written less than quiet_seconds() ago.
PIPELINE_MARGIN_SECONDS: Final = 30.0
DELETE_BATCH: Final = 1_000  # keys per DeleteObjects request (S3's maximum)
RELIST_ROUNDS: Final = 3  # listings after the deletion that may still find objects written meanwhile
LOG_HEADS: Final[tuple[str, ...]] = (  # events table first
    f"{LOG_DIR}/",
    f"{layout.QUARANTINE}/{LOG_DIR}/",
    f"{aggregates.ZONE}/{LOG_DIR}/",
)
_COMMIT = re.compile(r"\d{20}\.json")  # a commit of a Delta log (not a checkpoint, not _last_checkpoint)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m processes.clean",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--yes", action="store_true", help="do not ask")
    args = parser.parse_args(argv)

    def run() -> int:
        settings = get_settings()
        if is_object_store(settings.data_lake_path):
            storage = open_storage(settings.data_lake_path)
            if not isinstance(storage, ObjectStorage):  # pragma: no cover - open_storage's contract
                raise TypeError(f"no way to clean {storage!r}")
            return _clean_object_store(storage, settings, ask=not args.yes)
        return _clean_local(settings.local_lake_path("make clean"), ask=not args.yes)

    return run_main(run)


def _confirm(question: str) -> bool:
    try:
        answer = input(question)
    except EOFError:
        answer = ""
    return answer.strip().lower() in ("y", "yes")


def _refusal(role: str, lake: Path | str, detail: str = "") -> str:
    return f"error: a {role} is running on {lake}{detail}; stop it first (Ctrl-C in its terminal)"


# -- a local directory ----------------------------------------------------------------------------------


def _clean_local(lake: Path, *, ask: bool) -> int:
    if not lake.exists():
        print(f"nothing to remove: {lake} does not exist")
        return EXIT_OK
    if running := _running(lake):  # refuse before asking (the answer would be wasted)
        print(running)
        return EXIT_LOCKED
    if ask and not _confirm(f"Delete everything under {lake}? [y/N] "):
        print(f"kept {lake}")
        return EXIT_OK
    with contextlib.ExitStack() as held:
        for filename, role in ROLES:  # a process started during the prompt holds its lock by now
            try:
                held.enter_context(LakeLock(lake, filename, role))
            except LakeLockedError:
                print(_refusal(role, lake))
                return EXIT_LOCKED
        _remove(lake, {filename for filename, _ in ROLES})
    print(f"removed {lake} (its data files and its tables' logs)")
    return EXIT_OK


def _running(lake: Path) -> str | None:
    """The refusal if a pipeline or a compactor holds the lake now (a probe: no lock is kept)."""
    for filename, role in ROLES:
        if LakeLock(lake, filename, role).is_locked_elsewhere():
            return _refusal(role, lake)
    return None


def _remove(lake: Path, locks: set[str]) -> None:
    """Everything under ``lake``, the lock files last (held by the caller until they are gone), then ``lake``.

    A process that starts once the lock files are gone finds no lake and makes a new one: the last
    ``rmdir`` then leaves it alone.
    """
    # The logs first: an interrupted clean then leaves inert files, never a table missing its files.
    for log_dir in (lake / LOG_DIR, lake / layout.QUARANTINE / LOG_DIR, lake / aggregates.ZONE / LOG_DIR):
        shutil.rmtree(log_dir, ignore_errors=True)
    for child in lake.iterdir():
        if child.name in locks:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    for name in locks:
        (lake / name).unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # not empty: a process started just now made a new lake there
        lake.rmdir()


# -- S3-compatible object storage -----------------------------------------------------------------------


def quiet_seconds(settings: Settings) -> float:
    """How long the events table's log must have gone unwritten before clean takes no pipeline to run (S3)."""
    return 2 * (settings.flush_interval_seconds + settings.poll_interval_seconds) + PIPELINE_MARGIN_SECONDS


@dataclass
class Tally:
    """Objects under a lake's prefix, by kind: the tables' logs, data files (Parquet), anything else."""

    logs: int = 0
    data: int = 0
    other: int = 0

    def add(self, keys: Iterable[str]) -> None:
        for key in keys:
            if _is_log(key):
                self.logs += 1
            elif key.endswith(layout.PARQUET_SUFFIX):
                self.data += 1
            else:
                self.other += 1

    @property
    def total(self) -> int:
        return self.logs + self.data + self.other

    def describe(self) -> str:
        return (
            f"{self.total:,} object(s) ({self.logs:,} of the tables' logs, {self.data:,} data file(s), "
            f"{self.other:,} other)"
        )


def _is_log(key: str) -> bool:
    return key.startswith(LOG_HEADS) or f"/{LOG_DIR}/" in key


def _clean_object_store(storage: ObjectStorage, settings: Settings, *, ask: bool) -> int:
    where = storage.location
    keys = _list_keys(storage)
    if not keys:
        print(f"nothing to remove: {where} holds no object")
        return EXIT_OK
    lost = threading.Event()
    lease = Lease(storage.store, on_lost=lambda _exc: lost.set())
    lease.holder_id = f"make-clean:{lease.holder_id}"  # what a compactor waiting for the lease reports
    # Probes before asking (the answer would be wasted); neither holds anything.
    if running := _compactor_running(lease, where) or _pipeline_running(storage, settings, time.time()):
        print(running)
        return EXIT_LOCKED
    found = Tally()
    found.add(keys)
    if ask and not _confirm(f"Delete everything under {where}: {found.describe()}? [y/N] "):
        print(f"kept {where}")
        return EXIT_OK
    if not lease.acquire(timeout=0):  # a compactor started during the prompt holds it by now
        seen = lease.last_seen
        print(_refusal("compactor", where, f" (it holds the lease {LEASE_KEY}: {seen.describe() if seen else '?'})"))
        return EXIT_LOCKED
    existed = lease.epoch != 1  # epoch 1: there was no lease object, this clean created it
    deleted = False
    try:
        lease.start_renewing()
        if running := _pipeline_running(storage, settings, _store_now(storage)):
            print(running)
            return EXIT_LOCKED
        removed, late = _remove_objects(storage, lost)
        _delete_lease(storage, lease, lost)
        deleted = True
    finally:
        if not deleted:
            _let_go(storage, lease, existed)
    if existed:
        removed.other += 1
    print(f"removed {removed.describe()} under {where}; the next run creates a new table at event 0")
    if late:
        print(
            f"warning: {late} object(s) appeared under {where} while it was being cleaned and were removed too: "
            "a pipeline or service may still be writing there; stop it and run make clean again"
        )
    return EXIT_OK


def _compactor_running(lease: Lease, where: str) -> str | None:
    """The refusal if a live compactor holds the lease now (a probe: one GET, nothing written)."""
    record = lease.read()
    if record is None or record.released or time.time() > record.expires_at + lease.max_skew:
        return None
    return _refusal("compactor", where, f" (it holds the lease {LEASE_KEY}: {record.describe()})")


def _pipeline_running(storage: ObjectStorage, settings: Settings, now: float) -> str | None:
    """The refusal if the events table's log was written within :func:`quiet_seconds` of ``now`` (the heuristic)."""
    written = [f.mtime_ns for f in storage.list_all(LOG_DIR)]
    if not written:
        return None
    age = now - max(written) / 1e9
    quiet = quiet_seconds(settings)
    if age >= quiet:
        return None
    return (
        f"error: a pipeline appears to be running on {storage.location}: the table's last commit was "
        f"{max(age, 0.0):.0f} s ago and clean needs {quiet:.0f} s without one; stop it first "
        f"(if it has just stopped, run make clean again in {max(quiet - age, 1.0):.0f} s)"
    )


def _store_now(storage: ObjectStorage) -> float:
    """The store's clock now: the last-modified time of the lease this clean has just written."""
    info = storage.published(LEASE_KEY)
    return time.time() if info is None else info.mtime_ns / 1e9


def _list_keys(storage: ObjectStorage) -> list[str]:
    """Every key under the lake's prefix (relative to it), listed recursively, sorted."""
    return [info.key for info in storage.list_tree("", suffix="")]


def _delete(storage: ObjectStorage, keys: Sequence[str], lost: threading.Event) -> None:
    """Delete ``keys`` in order, in requests of up to DELETE_BATCH keys; LakeError once the lease is lost."""
    for start in range(0, len(keys), DELETE_BATCH):
        if lost.is_set():
            raise LeaseLostError(
                f"lost the compactor's lease while cleaning {storage.location} (renewals failed?): stopped with "
                "the lake partly removed; run make clean again"
            )
        batch = list(keys[start : start + DELETE_BATCH])
        try:
            obstore.delete(storage.store, batch)
        except BaseError as exc:
            raise LakeError(
                f"{storage.location}: could not delete {batch[0]} and {len(batch) - 1} more ({one_line(exc)}); "
                "the lake is partly removed: run make clean again"
            ) from exc


def _removal_order(keys: Iterable[str]) -> list[list[str]]:
    """``keys`` (the lease excepted) in the order they are deleted, as the groups of requests to send.

    Each table's log first, the events table's before the quarantine table's, newest entry first and
    the newest commit alone in its own request: once it is gone, delta-rs refuses the commit of any
    writer whose snapshot is at that version ("Invalid table version"). Then everything else.
    """
    pending = set(keys) - {LEASE_KEY}
    groups: list[list[str]] = []
    for head in LOG_HEADS:
        log = sorted((k for k in pending if k.startswith(head)), reverse=True)  # zero-padded: newest first
        pending -= set(log)
        commits = [k for k in log if _COMMIT.fullmatch(k.removeprefix(head))]
        if commits:
            groups.append([commits[0]])
            log.remove(commits[0])
        if log:
            groups.append(log)
    if pending:
        groups.append(sorted(pending))
    return groups


def _remove_objects(storage: ObjectStorage, lost: threading.Event) -> tuple[Tally, int]:
    """Delete every object under the prefix but the lease; (what was removed, how many appeared meanwhile).

    Lists again after deleting: what a process wrote meanwhile is deleted too, up to RELIST_ROUNDS times
    (LakeError if objects still keep appearing).
    """
    removed = Tally()
    late = 0
    keys = _list_keys(storage)
    for round_ in range(RELIST_ROUNDS + 1):
        groups = _removal_order(keys)
        if not groups:
            return removed, late
        if round_ == RELIST_ROUNDS:
            break
        for group in groups:
            _delete(storage, group, lost)
            removed.add(group)
        if round_:
            late += sum(map(len, groups))
        keys = _list_keys(storage)
    raise LakeError(
        f"objects keep appearing under {storage.location} while it is being cleaned: a process still writes "
        "there; stop it and run make clean again"
    )


def _delete_lease(storage: ObjectStorage, lease: Lease, lost: threading.Event) -> None:
    """Delete the lease object, last, after checking the store still holds this clean's own write of it."""
    lease.stop_renewing()
    if lost.is_set():
        raise LeaseLostError(f"lost the compactor's lease while cleaning {storage.location}; run make clean again")
    lease.check(0.0)  # LeaseLostError if taken over (then it is not ours to delete), LakeError if unverifiable
    _delete(storage, [LEASE_KEY], lost)


def _let_go(storage: ObjectStorage, lease: Lease, existed: bool) -> None:
    """Hand the lease back after a refusal or a failure: deleted if this clean created it, else released."""
    if existed:
        lease.release()
        return
    lease.stop_renewing()
    try:
        lease.check(0.0)
        obstore.delete(storage.store, LEASE_KEY)
    except (LakeError, BaseError):
        lease.release()  # never raises; if it cannot be reached either, the lease simply expires


if __name__ == "__main__":
    sys.exit(main())
