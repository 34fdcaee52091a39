"""The fetcher thread: polls the source by cursor and feeds the buffered writer, through any outage.

Outages: a TransientSourceError (the client's retries ran out) is logged and retried after a capped
backoff, for as long as it takes; a PermanentSourceError (wrong URL, a 4xx, a broken response) ends
the thread with that error for the process to report.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Final

from ingestion.placement import BadgeSource, FetchResultLike, place_records
from lake.writer import BufferedWriter, WriterClosedError
from utils.config import Settings
from utils.errors import TransientSourceError
from utils.retry import Backoff

log = logging.getLogger(__name__)

TICK_SECONDS: Final = 0.1  # how often a waiting request looks at the stop event
PREFETCH_DEPTH: Final = 2  # requests in flight while the source answers full batches
OUTAGE_JITTER: Final = 0.2
OUTAGE_MIN_DELAY_SECONDS: Final = 0.05


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
        wait: Callable[[float], object] | None = None,
        clock: Callable[[], float] = time.monotonic,
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
        # How the fetcher pauses (an outage's backoff, a poll at the head) and tells the time: by default
        # the stop event (a stop cuts a pause short) and the monotonic clock; tests pass a fake clock.
        self._wait = wait or self.stop_event.wait
        self._clock = clock
        self.error: BaseException | None = None
        self.outage_since: float | None = None  # monotonic start of the current outage
        self.requests = 0
        self.outage_backoff = Backoff.for_source(
            settings.retry_backoff_base,
            settings.retry_max_delay_seconds,
            jitter=OUTAGE_JITTER,
            floor=OUTAGE_MIN_DELAY_SECONDS,
        )

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
                down = self._clock() - self.outage_since
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
                    self._wait(self.settings.poll_interval_seconds)

    def _outage(self, exc: TransientSourceError, failures: int) -> None:
        """Log the outage and wait a capped backoff (never gives up: outages of any length are survived)."""
        delay = self._outage_delay(failures)
        now = self._clock()
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
        self._wait(delay)

    def _outage_delay(self, failures: int) -> float:
        """The client's backoff (its retry settings), with less jitter: the fetcher is the only caller."""
        return self.outage_backoff.delay(failures)
