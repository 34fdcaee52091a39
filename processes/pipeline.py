"""The pipeline process: lock, signals, the source client, the ingestion threads and the child compactor.

Three threads share the work. The *fetcher* (:mod:`ingestion.fetcher`) asks the source for the
records after the cursor and hands them to the :class:`~lake.writer.BufferedWriter`, whose *flusher*
thread commits files on size or age (so the time-based flush fires even while the source is down or
mid-retry). The *main* thread only supervises: signals, ``--duration``, the progress line, and the
child compactor.

Exactly-once (the flush order in :mod:`lake.writer`): on start, under the pipeline lock, the lake
must be a table (a lake in the previous layout: UnmigratedLakeError, exit 2), the source says which
stream it serves, and :func:`ingestion.resume.recover` opens the table for that stream (another
stream: StreamMismatchError, exit 2, nothing written), reads the committed position from its log and
removes the orphans of a crashed flush. Each flush then commits with the position it expects; if
another pipeline moved it (a zombie that ignored the lock), the commit fails with FencedError and
this pipeline stops (exit 1) instead of duplicating. Nothing buffered is ever durable, and it does
not need to be: the source is deterministic per cursor, so records that were not committed when the
process died are simply fetched again.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from ingestion.fetcher import Fetcher
from ingestion.placement import BadgeSource
from ingestion.progress import Progress
from ingestion.resume import recover, wait_for_identity
from lake import layout
from lake.location import open_storage
from lake.lock import LakeLock
from lake.storage import LocalStorage
from lake.table import ensure_migrated
from lake.writer import BufferedWriter, Commit, FlushThresholds
from processes.cli import EXIT_OK
from processes.signals import stop_on_signals
from processes.supervision import ChildCompactor, until_reachable
from utils.config import Settings
from utils.errors import PermanentSourceError

log = logging.getLogger(__name__)

TICK_SECONDS: Final = 0.1  # how often the main thread looks at signals, deadlines, the child and progress
FETCHER_JOIN_SECONDS: Final = 2.0


@dataclass(frozen=True)
class RunOptions:
    """Command-line choices of ``pipeline.py``."""

    duration: float | None = None  # stop after this many seconds
    max_records: int | None = None  # stop once this many records (valid + refused) are committed
    compaction: bool = True  # start and supervise the compaction process as a child


def _open_client(settings: Settings, *stops: threading.Event) -> contextlib.AbstractContextManager[BadgeSource]:
    from source.client import BadgeLogClient

    def sleep(seconds: float) -> None:
        # Retry pauses end early once we are stopping, so the fetcher (or the start-up) finishes soon.
        deadline = time.monotonic() + seconds
        while not any(s.is_set() for s in stops):
            left = deadline - time.monotonic()
            if left <= 0:
                return
            stops[0].wait(min(left, TICK_SECONDS))

    client: contextlib.AbstractContextManager[BadgeSource] = BadgeLogClient(settings, sleep=sleep)
    return client


def run(
    settings: Settings,
    options: RunOptions | None = None,
    *,
    source: BadgeSource | None = None,
    stop: threading.Event | None = None,
    compactor: ChildCompactor | None = None,
    on_commit: Callable[[Commit], None] | None = None,
) -> int:
    """Run the pipeline until stopped (signal, ``stop``), ``duration`` is over or ``max_records`` are in.

    Returns 0 after a clean stop (everything buffered flushed, the child stopped). Raises
    LakeLockedError if another pipeline runs on the lake, UnmigratedLakeError for a lake in the
    previous layout, StreamMismatchError if the lake holds another stream than the source serves
    (both before anything is written), PermanentSourceError after a clean stop if the source refused
    us for good, FencedError if another pipeline committed to the lake meanwhile, CommitError if the
    final flush could not be committed.
    """
    options = options or RunOptions()
    stop = stop or threading.Event()
    storage = open_storage(settings.data_lake_path)
    storage.ensure_layout()
    # One pipeline per lake: on a local disk the lock says so at once; anywhere, a second pipeline's
    # first commit is refused (FencedError: the table's txn moved), so it cannot duplicate.
    lock = LakeLock(storage.root, layout.PIPELINE_LOCK, "pipeline") if isinstance(storage, LocalStorage) else None
    with lock or contextlib.nullcontext(), stop_on_signals(stop):
        # Before waiting for the source: an old lake is refused at once; an unreachable store is waited out
        # (None: stopped meanwhile; ensure_migrated itself answers True or False).
        if until_reachable("opening the lake", lambda: ensure_migrated(storage), stop) is None:
            log.info("stopped while the lake's store was unreachable; nothing was written")
            return EXIT_OK
        fetch_stop = threading.Event()
        deadline = None if options.duration is None else time.monotonic() + options.duration
        with contextlib.ExitStack() as stack:
            if source is None:
                source = stack.enter_context(_open_client(settings, fetch_stop, stop))
            identity = wait_for_identity(source, settings, stop, deadline=deadline)
            if identity is None:
                log.info("stopped before the source said which stream it serves; nothing was written")
                return EXIT_OK
            resume = until_reachable("resuming from the lake's table", lambda: recover(storage, identity), stop)
            if resume is None:
                log.info("stopped while the lake's store was unreachable; nothing was written")
                return EXIT_OK
            log.info(
                "pipeline on %s (stream: %s): resuming at event %d; flush at %d records or %.2f s; compaction %s",
                storage.location,
                identity,
                resume.cursor,
                settings.buffer_records,
                settings.flush_interval_seconds,
                "as a child process" if options.compaction else "off",
            )
            child = None
            if options.compaction:
                child = compactor or ChildCompactor.for_settings(settings)
                child.start()
                stack.callback(child.stop)  # runs after the final flush below, and on any error
            writer = BufferedWriter(
                storage,
                FlushThresholds.from_settings(settings),
                table=resume.table,
                position=resume.position,
                on_commit=on_commit,
            ).start()
            fetcher = Fetcher(
                source, writer, settings, resume.cursor, max_records=options.max_records, stop_event=fetch_stop
            )
            fetcher.start()
            progress = Progress(writer, fetcher, settings.progress_interval_seconds)
            while not stop.wait(TICK_SECONDS):
                if not fetcher.is_alive() or writer.fatal_error is not None:
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    log.info("--duration reached: flushing and stopping")
                    break
                if child is not None:
                    child.poll()
                progress.maybe_report()
            fetcher.stop()
            fetcher.join(FETCHER_JOIN_SECONDS)
            writer.close()
            log.info("stopped: %s", progress.line().removeprefix("progress: "))
            if fetcher.error is not None:
                if isinstance(fetcher.error, PermanentSourceError):
                    log.error("the source refused the pipeline for good: %s", fetcher.error)
                raise fetcher.error
    return EXIT_OK
