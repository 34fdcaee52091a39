"""The ingestion pipeline: resume from the lake, poll the source by cursor, buffer, flush, supervise.

Three threads share the work. The *fetcher* asks the source for the records after the cursor and
hands them to the :class:`~lake.writer.BufferedWriter`, whose *flusher* thread commits files on size
or age (so the time-based flush fires even while the source is down or mid-retry). The *main* thread
only supervises: signals, ``--duration``, the progress line, and the child compactor.

Exactly-once (LAKE-PROTOCOL.md): on start, under the pipeline lock, :func:`recover` removes the
pipeline's own leftovers in ``temp/``, derives the cursor from the live set (highest committed
``badge.event_id_max`` + 1) and removes orphan quarantine files at or beyond it. Nothing buffered is
ever durable, and it does not need to be: the source is deterministic per cursor, so records that
were not committed when the process died are simply fetched again.

Outages: a TransientSourceError (the client's retries ran out) is logged and retried after a capped
backoff, for as long as it takes; a PermanentSourceError (wrong URL, a 4xx, a broken response) stops
the pipeline cleanly and exits non-zero.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, Final, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lake import layout, quarantine
from lake.liveset import live_set
from lake.lock import LakeLock
from lake.storage import LocalStorage
from lake.writer import OWN_KINDS, BufferedWriter, Commit, FlushThresholds, WriterClosedError
from utils.cli import EXIT_LOCKED, EXIT_OK
from utils.config import Settings
from utils.errors import PermanentSourceError, TransientSourceError

log = logging.getLogger(__name__)

ROOT: Final = Path(__file__).resolve().parent.parent
COMPACTOR_SCRIPT: Final = ROOT / "compaction_monitoring.py"

TICK_SECONDS: Final = 0.1  # how often the main thread looks at signals, deadlines, the child and progress
CHILD_RESTART_SECONDS: Final = 2.0
CHILD_RESTART_MAX_SECONDS: Final = 30.0
CHILD_LOCKED_RECHECK_SECONDS: Final = 10.0
CHILD_STOP_TIMEOUT_SECONDS: Final = 15.0
FETCHER_JOIN_SECONDS: Final = 2.0
PREFETCH_DEPTH: Final = 2  # requests in flight while the source answers full batches


# -- the source ---------------------------------------------------------------------------------------
class FetchResultLike(Protocol):
    """What one request returns (api.client.FetchResult has these and more)."""

    @property
    def table(self) -> pa.Table: ...  # valid records, RECORD_SCHEMA, event_id order

    @property
    def invalid(self) -> pa.Table: ...  # refused records, QUARANTINE_SCHEMA with a reason

    @property
    def next_cursor(self) -> int: ...


class BadgeSource(Protocol):
    """The generator service as the pipeline sees it (api.client.BadgeLogClient is one)."""

    def get_employee_badge_logs(self, cursor: int | None = None, batch: int | None = None) -> FetchResultLike: ...


@dataclass(frozen=True)
class Placed:
    """One response's records, checked to cover exactly ``cursor .. next_cursor - 1`` once each."""

    valid: pa.Table
    refused: pa.Table  # every row has its stream position as event_id, in event_id order
    count: int


POSITION_NOTE: Final = "; event_id unusable, taken from the record's position in the response"


def place_records(result: FetchResultLike, cursor: int, asked: int) -> Placed:
    """Check the response covers the events ``cursor .. next_cursor - 1`` exactly once each.

    Exactly-once rests on it: a source that skipped or repeated an id would lose or duplicate it, so
    that raises PermanentSourceError (retrying would not help). A refused record whose own event_id
    is missing or out of range is given the one position no other record claims (and says so in its
    reason), so every position is accounted for exactly once, in the lake or in quarantine/.
    """
    valid, refused = result.table, result.invalid
    count = int(valid.num_rows) + int(refused.num_rows)
    if result.next_cursor != cursor + count or count > asked:
        raise PermanentSourceError(
            f"the source broke the cursor contract: asked for {asked} events from {cursor}, "
            f"got {count} and next cursor {result.next_cursor}"
        )
    if count == 0:
        return Placed(valid, refused, 0)
    claims = np.zeros(count, dtype=np.int64)
    valid_pos = np.asarray(valid.column("event_id").to_numpy(), dtype=np.int64) - cursor
    if len(valid_pos) and (valid_pos.min() < 0 or valid_pos.max() >= count):
        raise PermanentSourceError(f"the source returned event ids outside {cursor}..{cursor + count - 1}")
    np.add.at(claims, valid_pos, 1)
    if refused.num_rows:
        ids = np.asarray(pc.fill_null(refused.column("event_id"), -1).to_numpy(), dtype=np.int64) - cursor
        usable = (ids >= 0) & (ids < count)
        np.add.at(claims, ids[usable], 1)
        free = np.flatnonzero(claims == 0)
        if len(free) != int((~usable).sum()):
            raise PermanentSourceError(f"the source returned event ids other than {cursor}..{cursor + count - 1}")
        if len(free):
            ids[~usable] = free
            claims[free] = 1
            reasons = refused.column("reason").to_pylist()
            for i in np.flatnonzero(~usable):
                reasons[i] = f"{reasons[i]}{POSITION_NOTE}"
            refused = refused.set_column(
                refused.schema.get_field_index("event_id"), "event_id", pa.array(ids + cursor, pa.int64())
            ).set_column(refused.schema.get_field_index("reason"), "reason", pa.array(reasons, pa.string()))
            refused = refused.sort_by("event_id")
    if np.any(claims != 1):
        raise PermanentSourceError(f"the source repeated or skipped event ids in {cursor}..{cursor + count - 1}")
    return Placed(valid, refused, count)


# -- recovery -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ResumePoint:
    """Where a starting pipeline resumes, and what it cleaned up to get there."""

    cursor: int
    removed_temp: tuple[str, ...]
    removed_orphans: tuple[str, ...]


def remove_own_temp(storage: LocalStorage) -> list[str]:
    """Delete the pipeline's leftovers in temp/ (kinds landing and quarantine); never the compactor's."""
    removed = []
    for info in storage.list_all(layout.TEMP):
        if info.name.startswith(tuple(f"{kind}-" for kind in OWN_KINDS)):
            storage.delete(info.key)
            removed.append(info.key)
    return removed


def recover(storage: LocalStorage) -> ResumePoint:
    """Make the lake ready for a new pipeline run; call only while holding the pipeline lock.

    Idempotent. Afterwards every event below ``cursor`` is committed exactly once (in the live set or
    in quarantine/) and nothing at or beyond it is.
    """
    storage.ensure_layout()
    temp = remove_own_temp(storage)
    cursor = live_set(storage).next_event_id
    orphans = quarantine.remove_orphans(storage, cursor)
    if temp:
        log.info("removed %d leftover temp file(s) of an interrupted flush", len(temp))
    return ResumePoint(cursor, tuple(temp), tuple(orphans))


# -- the fetcher --------------------------------------------------------------------------------------
class _Request:
    """One request to the source, running in its own daemon thread (so it never holds up shutdown)."""

    def __init__(self, source: BadgeSource, cursor: int, ask: int) -> None:
        self.cursor = cursor
        self.ask = ask
        self._source = source
        self._done = threading.Event()
        self._result: FetchResultLike | None = None
        self._error: BaseException | None = None
        threading.Thread(target=self._run, name=f"lake-fetch-{cursor}", daemon=True).start()

    def _run(self) -> None:
        try:
            self._result = self._source.get_employee_badge_logs(cursor=self.cursor, batch=self.ask)
        except BaseException as exc:
            self._error = exc
        finally:
            self._done.set()

    def wait(self, stop: threading.Event) -> FetchResultLike | None:
        """The response, or None if ``stop`` was set first; re-raises the request's error."""
        while not self._done.wait(TICK_SECONDS):
            if stop.is_set():
                return None
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result


class Fetcher(threading.Thread):
    """Polls the source from ``cursor`` and feeds the writer until stopped, done or permanently refused.

    While the source answers full batches (a firehose, or catching up), the next request is sent
    before the current answer is decoded (``PREFETCH_DEPTH`` in flight), so the service's encoding
    overlaps the client's decoding. At the head of a live stream it polls one request at a time.
    """

    def __init__(
        self,
        source: BadgeSource,
        writer: BufferedWriter,
        settings: Settings,
        cursor: int,
        *,
        max_records: int | None = None,
        stop_event: threading.Event | None = None,
        prefetch_depth: int = PREFETCH_DEPTH,
    ) -> None:
        super().__init__(name="lake-fetcher", daemon=True)
        self.source = source
        self.writer = writer
        self.settings = settings
        self.cursor = cursor
        self.start_cursor = cursor
        self.max_records = max_records
        self.stop_event = stop_event or threading.Event()
        self.prefetch_depth = max(1, prefetch_depth)
        self.error: BaseException | None = None
        self.outage_since: float | None = None  # monotonic start of the current outage
        self.requests = 0

    @property
    def fetched(self) -> int:
        return self.cursor - self.start_cursor

    def stop(self) -> None:
        self.stop_event.set()

    def run(self) -> None:
        try:
            self._loop()
        except WriterClosedError:
            pass  # shutting down: what was not taken is fetched again on the next start
        except BaseException as exc:
            if not self.stop_event.is_set():
                self.error = exc

    def _ask(self, cursor: int) -> int:
        """How many records to ask for at ``cursor``: a batch, or what is left of ``max_records``."""
        batch = self.settings.batch_size
        return batch if self.max_records is None else min(batch, self.max_records - (cursor - self.start_cursor))

    def _send(self, cursor: int, ask: int) -> _Request:
        self.requests += 1
        return _Request(self.source, cursor, ask)

    def _loop(self) -> None:
        failures = 0
        streaming = False  # the last answer was a full batch: more is waiting
        inflight: deque[_Request] = deque()
        while not self.stop_event.is_set():
            if not inflight:
                ask = self._ask(self.cursor)
                if ask <= 0:
                    return
                inflight.append(self._send(self.cursor, ask))
            while streaming and len(inflight) < self.prefetch_depth:
                last = inflight[-1]
                ask = self._ask(last.cursor + last.ask)
                if ask <= 0:
                    break
                inflight.append(self._send(last.cursor + last.ask, ask))
            head = inflight.popleft()
            assert head.cursor == self.cursor, "the head request must start where the lake ends"
            try:
                result = head.wait(self.stop_event)
            except TransientSourceError as exc:
                inflight.clear()  # requests ahead of a failed one are dropped (their threads just end)
                streaming = False
                if self.stop_event.is_set():
                    return
                failures += 1
                self._outage(exc, failures)
                continue
            if result is None:
                return
            if self.outage_since is not None:
                down = time.monotonic() - self.outage_since
                log.info("source is back after %.0f s; resuming at event %d", down, self.cursor)
                self.outage_since = None
                failures = 0
            placed = place_records(result, head.cursor, head.ask)
            if placed.count:
                # A short answer means we are at the head of the stream: the records are live.
                self.writer.add(placed.valid, placed.refused, live=placed.count < head.ask)
                self.cursor = result.next_cursor
            streaming = placed.count == head.ask
            if not streaming:
                inflight.clear()  # guesses beyond the head of the stream: their cursors are not ours
                if self.max_records is None or self.fetched < self.max_records:
                    self.stop_event.wait(self.settings.poll_interval_seconds)

    def _outage(self, exc: TransientSourceError, failures: int) -> None:
        """Log the outage and wait a capped backoff (never gives up: outages of any length are survived)."""
        delay = self._outage_delay(failures)
        now = time.monotonic()
        if self.outage_since is None:
            self.outage_since = now
        log.warning(
            "source unavailable (down %.0f s, %d failed round(s)): %s; trying again in %.1f s "
            "(buffered records are still flushed on time)",
            now - self.outage_since,
            failures,
            exc,
            delay,
        )
        self.stop_event.wait(delay)

    def _outage_delay(self, failures: int) -> float:
        """Capped exponential backoff with jitter, from the client's retry settings."""
        s = self.settings
        base = min(s.retry_max_delay_seconds, s.retry_backoff_base**failures)
        return max(0.05, base * random.uniform(0.8, 1.0))


# -- the child compactor ------------------------------------------------------------------------------
# Run in the child before it becomes the compactor: ask the kernel for SIGTERM when the parent dies
# (PR_SET_PDEATHSIG = 1, kept across execve), give up if the parent is already gone, then exec the
# real command. Doing this in the child itself avoids ``preexec_fn``, which is unsafe in a process
# with threads. The death signal follows the *thread* that forked, so children are started from
# the main thread.
_DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys\n"
    "if sys.platform.startswith('linux'):\n"
    "    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    os._exit(0)\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


def die_with_parent(command: Sequence[str], parent_pid: int | None = None) -> list[str]:
    """``command`` wrapped so that the process receives SIGTERM when its parent dies, even by kill -9."""
    parent = os.getpid() if parent_pid is None else parent_pid
    return [sys.executable, "-c", _DIE_WITH_PARENT, str(parent), *command]


class ChildCompactor:
    """Runs the compaction process as a child that dies with the pipeline, restarting it if it stops.

    Exit status 3 means another compactor holds the lake's lock: that one compacts, so this just
    checks again later. Never two compactors on a lake: the compactor's own lock decides.
    """

    def __init__(
        self,
        command: Sequence[str],
        env: Mapping[str, str],
        *,
        restart_seconds: float = CHILD_RESTART_SECONDS,
        locked_recheck_seconds: float = CHILD_LOCKED_RECHECK_SECONDS,
        stop_timeout: float = CHILD_STOP_TIMEOUT_SECONDS,
    ) -> None:
        self.command = list(command)
        self.env = dict(env)
        self.restart_seconds = restart_seconds
        self.locked_recheck_seconds = locked_recheck_seconds
        self.stop_timeout = stop_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._started_at = 0.0
        self._delay = restart_seconds
        self._restart_at: float | None = None

    @classmethod
    def for_settings(cls, settings: Settings, **kwargs: Any) -> ChildCompactor:
        return cls([sys.executable, str(COMPACTOR_SCRIPT)], {**os.environ, **settings.as_env()}, **kwargs)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def start(self) -> None:
        """Start the child (from the main thread: see :func:`die_with_parent`)."""
        self.proc = subprocess.Popen(die_with_parent(self.command), env=self.env)
        self.starts += 1
        self._started_at = time.monotonic()
        self._restart_at = None
        log.info("started the compactor (pid %d)", self.proc.pid)

    def poll(self) -> None:
        """Notice a child that stopped and restart it when its delay is over."""
        now = time.monotonic()
        if self.proc is not None and self._restart_at is None:
            status = self.proc.poll()
            if status is None:
                return
            if status == EXIT_LOCKED:
                delay = self.locked_recheck_seconds
                log.info("another compactor already runs on this lake (it compacts); checking again in %.0f s", delay)
            else:
                quick = now - self._started_at < 10 * self.restart_seconds
                self._delay = min(self._delay * 2, CHILD_RESTART_MAX_SECONDS) if quick else self.restart_seconds
                delay = self._delay
                log.warning(
                    "the compactor (pid %d) exited with status %s; restarting in %.0f s", self.proc.pid, status, delay
                )
            self._restart_at = now + delay
        if self._restart_at is not None and now >= self._restart_at:
            self.start()

    def stop(self) -> int | None:
        """SIGTERM the child and wait for it (SIGKILL after the timeout); returns its exit status."""
        self._restart_at = None
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                log.warning("the compactor did not stop within %.0f s; killing it", self.stop_timeout)
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


# -- progress -----------------------------------------------------------------------------------------
def freshness_lag(newest: datetime | None, now: datetime | None = None) -> float | None:
    """Seconds from the newest committed badge_out_timestamp (naive = UTC) to now; None if none yet."""
    if newest is None:
        return None
    now = now or datetime.now(UTC)
    if newest.tzinfo is None:
        newest = newest.replace(tzinfo=UTC)
    return (now - newest).total_seconds()


def _lag_text(lag: float | None) -> str:
    if lag is None:
        return "lag -"
    if lag < 0:  # a firehose stream runs ahead of the clock: its events are "in the future"
        return "lag - (events ahead of the clock)"
    return f"lag {lag:.1f} s"


class Progress:
    """The periodic progress line: records/s, files written, buffered, refused, freshness lag."""

    def __init__(self, writer: BufferedWriter, fetcher: Fetcher, interval: float) -> None:
        self.writer = writer
        self.fetcher = fetcher
        self.interval = interval
        self._last_time = time.monotonic()
        self._last_committed = 0

    def maybe_report(self) -> None:
        now = time.monotonic()
        if now - self._last_time >= self.interval:
            log.info(self.line(now))

    def line(self, now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        s = self.writer.stats()
        committed = s.records_committed + s.refused_committed
        rate = (committed - self._last_committed) / max(now - self._last_time, 1e-9)
        self._last_time, self._last_committed = now, committed
        lag = freshness_lag(s.newest_event_time)
        parts = [
            f"{rate:,.0f} rec/s",
            f"committed {s.records_committed:,} in {s.files_written:,} files",
            f"buffered {s.buffered:,}",
            f"refused {s.refused_committed:,}",
            _lag_text(lag),
            f"cursor {self.fetcher.cursor:,}",
        ]
        if s.failed_attempts:
            parts.append(f"failed flush attempts {s.failed_attempts}")
        if self.fetcher.outage_since is not None:
            parts.append(f"SOURCE DOWN {time.monotonic() - self.fetcher.outage_since:.0f} s")
        return "progress: " + " | ".join(parts)


# -- the run ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunOptions:
    """Command-line choices of ``pipeline.py``."""

    duration: float | None = None  # stop after this many seconds
    max_records: int | None = None  # stop once this many records (valid + refused) are committed
    compaction: bool = True  # start and supervise the compaction process as a child


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT/SIGTERM set ``stop`` (a clean stop: flush, stop the child, exit 0); a second one exits at once.

    Only the main thread can install handlers; elsewhere (tests) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if stop.is_set():
            log.warning("second %s: exiting without waiting (uncommitted records are fetched again)", name)
            os._exit(1)
        log.info("received %s: flushing and stopping", name)
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _open_client(settings: Settings, stop: threading.Event) -> contextlib.AbstractContextManager[BadgeSource]:
    from api.client import BadgeLogClient

    def sleep(seconds: float) -> None:
        stop.wait(seconds)  # retry pauses end early once we are stopping, so the fetcher finishes soon

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
    LakeLockedError if another pipeline runs on the lake, PermanentSourceError after a clean stop if
    the source refused us for good, CommitError if the final flush could not be committed.
    """
    options = options or RunOptions()
    stop = stop or threading.Event()
    storage = LocalStorage(settings.data_lake_path)
    storage.ensure_layout()
    with LakeLock(storage.root, layout.PIPELINE_LOCK, "pipeline"), _stop_on_signals(stop):
        resume = recover(storage)
        log.info(
            "pipeline on %s: resuming at event %d; flush at %d records or %.2f s; compaction %s",
            storage.root,
            resume.cursor,
            settings.buffer_records,
            settings.flush_interval_seconds,
            "as a child process" if options.compaction else "off",
        )
        fetch_stop = threading.Event()
        with contextlib.ExitStack() as stack:
            if source is None:
                source = stack.enter_context(_open_client(settings, fetch_stop))
            child = None
            if options.compaction:
                child = compactor or ChildCompactor.for_settings(settings)
                child.start()
                stack.callback(child.stop)  # runs after the final flush below, and on any error
            writer = BufferedWriter(storage, FlushThresholds.from_settings(settings), on_commit=on_commit).start()
            fetcher = Fetcher(
                source, writer, settings, resume.cursor, max_records=options.max_records, stop_event=fetch_stop
            )
            fetcher.start()
            progress = Progress(writer, fetcher, settings.progress_interval_seconds)
            deadline = None if options.duration is None else time.monotonic() + options.duration
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
