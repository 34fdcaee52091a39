"""The pipeline's periodic progress line: records/s, files, buffered, refused, freshness lag, outages."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

from ingestion.fetcher import Fetcher
from lake.writer import BufferedWriter

log = logging.getLogger(__name__)


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
