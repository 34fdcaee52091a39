"""An in-memory source for pipeline tests: deterministic records per cursor, outages and refused records on demand."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from lake import quarantine
from lake.identity import StreamIdentity
from testkit.records import TEST_IDENTITY, make_records
from utils.errors import PermanentSourceError, TransientSourceError
from utils.records import QUARANTINE_SCHEMA


def as_refused(table: pa.Table, reason: str) -> pa.Table:
    """The QUARANTINE_SCHEMA form of ``table`` (every field as text) with ``reason``."""
    return quarantine.from_records(table, [reason] * table.num_rows)


@dataclass(frozen=True)
class FakeResult:
    table: pa.Table
    invalid: pa.Table
    cursor: int
    next_cursor: int
    count: int


class FakeSource:
    """A deterministic source: ``available`` events exist (None = endless); ``refuse(id)`` marks bad ones.

    Set ``down`` to make every call raise TransientSourceError (an outage), ``broken`` for a
    PermanentSourceError. ``calls`` records (cursor, batch) of every request; ``on_call`` runs first.
    ``live=True`` stamps records with the current time as their event time (the head of a live stream).
    :meth:`stream_identity` reports ``identity`` (TEST_IDENTITY: the stream of
    :func:`testkit.records.make_records`); ``identity_calls`` counts those requests, which honour
    ``down`` and ``broken`` too.
    """

    def __init__(
        self,
        available: int | None = None,
        refuse: Callable[[int], bool] | None = None,
        on_call: Callable[[int], None] | None = None,
        live: bool = False,
        identity: StreamIdentity = TEST_IDENTITY,
    ) -> None:
        self.live = live
        self.identity = identity
        self.identity_calls = 0
        self.available = available
        self.refuse = refuse
        self.on_call = on_call
        self.down = threading.Event()
        self.broken = threading.Event()
        self.calls: list[tuple[int | None, int | None]] = []
        self.lock = threading.Lock()

    def stream_identity(self) -> StreamIdentity:
        """The stream this source serves (a value with the fields of source.client.ServiceIdentity)."""
        with self.lock:
            self.identity_calls += 1
        if self.broken.is_set():
            raise PermanentSourceError("404 Not Found for the service root")
        if self.down.is_set():
            raise TransientSourceError("connection refused (after 5 attempts)")
        return self.identity

    def get_employee_badge_logs(self, cursor: int | None = None, batch: int | None = None) -> FakeResult:
        with self.lock:
            self.calls.append((cursor, batch))
            n_call = len(self.calls)
        if self.on_call is not None:
            self.on_call(n_call)
        if self.broken.is_set():
            raise PermanentSourceError("404 Not Found for the source URL")
        if self.down.is_set():
            raise TransientSourceError("connection refused (after 5 attempts)")
        assert cursor is not None and batch is not None
        end = cursor + batch if self.available is None else min(cursor + batch, self.available)
        count = max(0, end - cursor)
        table = make_records(cursor, count, now_us=int(time.time() * 1e6) if self.live else None)
        if self.refuse is None or count == 0:
            return FakeResult(table, QUARANTINE_SCHEMA.empty_table(), cursor, cursor + count, count)
        bad = pa.array([self.refuse(i) for i in range(cursor, cursor + count)], pa.bool_())
        invalid = as_refused(table.filter(bad), "badge_out_timestamp before badge_in_timestamp")
        return FakeResult(table.filter(pc.invert(bad)), invalid, cursor, cursor + count, count)
