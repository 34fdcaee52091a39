"""A week-long outage, simulated: the client and the fetcher back off (capped) for a week, then resume at the cursor.

Nothing really waits: the client's ``sleep`` and the fetcher's ``wait`` move a fake clock, and the mock
service is down until that clock has passed a week.
"""

from __future__ import annotations

import logging
import random
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import httpx
import pyarrow as pa
import pytest

from api.encoding import encode_arrow
from api.generators import generate_columns
from ingestion.fetcher import Fetcher
from lake.writer import BufferedWriter
from source.client import BadgeLogClient
from testkit.processes import make_settings
from utils.protocol import ARROW_MEDIA_TYPE, NEXT_CURSOR_HEADER

START = datetime(2025, 3, 3, tzinfo=UTC)
URL = "http://badge.test/employee-badge-logs/"
WEEK = 7 * 24 * 3600.0


class FakeClock:
    """Seconds that move only when someone "waits"; records every wait, by whom."""

    def __init__(self) -> None:
        self.now = 0.0
        self.client_sleeps: list[float] = []
        self.fetcher_waits: list[float] = []
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self.now

    def client_sleep(self, seconds: float) -> None:
        with self._lock:
            self.client_sleeps.append(seconds)
            self.now += seconds

    def fetcher_wait(self, seconds: float) -> bool:
        with self._lock:
            self.fetcher_waits.append(seconds)
            self.now += seconds
        return False  # as Event.wait: not stopped


class RecordingWriter:
    """What the fetcher hands the writer, kept in memory."""

    def __init__(self) -> None:
        self.valid: list[pa.Table] = []

    def add(self, valid: pa.Table, refused: pa.Table | None = None, *, live: bool = False) -> None:
        self.valid.append(valid)


def test_a_week_long_outage_is_survived_and_the_fetcher_resumes_at_its_cursor(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for name in ("source.client", "ingestion.fetcher"):  # ~25,000 failed attempts: logged, but not kept here
        caplog.set_level(logging.CRITICAL, logger=name)
    settings = make_settings(
        tmp_path / "lake",
        EMPLOYEE_BADGE_LOGS_URL=URL,
        BATCH_SIZE=50,
        RETRY_MAX_ATTEMPTS=5,  # the defaults: 3**n overflows a float after ~650 failed rounds (under a day)
        RETRY_BACKOFF_BASE=3,
        RETRY_MAX_DELAY_SECONDS=60,
    )
    clock = FakeClock()
    asked: list[tuple[float, int]] = []

    def service(request: httpx.Request) -> httpx.Response:
        cursor = int(request.url.params["cursor"])
        asked.append((clock.now, cursor))
        if clock.now < WEEK:
            return httpx.Response(503, json={"detail": "down for maintenance"})
        batch = int(request.url.params["batch"])
        body = bytes(encode_arrow(generate_columns(1, cursor, batch, stream_start=START, events_per_second=0)))
        return httpx.Response(
            200, content=body, headers={"Content-Type": ARROW_MEDIA_TYPE, NEXT_CURSOR_HEADER: str(cursor + batch)}
        )

    start, wanted = 1_000, 200
    writer = RecordingWriter()
    with BadgeLogClient(
        settings, transport=httpx.MockTransport(service), sleep=clock.client_sleep, rng=random.Random(7)
    ) as client:
        fetcher = Fetcher(
            client,
            cast(BufferedWriter, writer),
            settings,
            start,
            max_records=wanted,
            wait=clock.fetcher_wait,
            clock=clock,
        )
        fetcher.start()
        fetcher.join(120)
        assert not fetcher.is_alive(), "the fetcher did not finish"

    assert fetcher.error is None  # no OverflowError, no giving up
    cap = settings.retry_max_delay_seconds
    rounds = len(clock.fetcher_waits)
    assert clock.now >= WEEK
    assert rounds > 3_000  # a week of capped rounds (each ~2 minutes: the client's 4 sleeps, then the fetcher's)
    per_round = settings.retry_max_attempts - 1  # the client's sleeps in a round it gives up
    assert rounds * per_round <= len(clock.client_sleeps) <= (rounds + 1) * per_round  # the last round succeeds
    assert max(clock.fetcher_waits + clock.client_sleeps) <= cap
    assert min(clock.fetcher_waits[-100:]) >= cap * 0.8  # deep into the outage: at the cap, little jitter
    # The outage asked for the same cursor throughout; back, it resumed there and went on in order.
    during = [cursor for when, cursor in asked if when < WEEK]
    after = [cursor for when, cursor in asked if when >= WEEK]
    assert set(during) == {start}
    assert after[0] == start
    assert fetcher.cursor == start + wanted
    ids = pa.concat_tables(writer.valid).column("event_id").to_pylist()
    assert ids == list(range(start, start + wanted))


def test_the_outage_delay_is_defined_and_capped_for_any_number_of_failures(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "lake", RETRY_BACKOFF_BASE=100, RETRY_MAX_DELAY_SECONDS=3600)
    fetcher = Fetcher(cast(BadgeLogClient, None), cast(BufferedWriter, None), settings, 0)
    for failures in (1, 10, 1_000, 10**6, 10**12):
        assert 0 < fetcher._outage_delay(failures) <= 3600
