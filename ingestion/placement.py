"""What the pipeline asks of its source, and the check that a response covers its cursor range exactly once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from utils.errors import PermanentSourceError


# -- the source ---------------------------------------------------------------------------------------
class FetchResultLike(Protocol):
    """What one request returns (source.client.FetchResult has these and more)."""

    @property
    def table(self) -> pa.Table: ...  # valid records, RECORD_SCHEMA, event_id order

    @property
    def invalid(self) -> pa.Table: ...  # refused records, QUARANTINE_SCHEMA with a reason

    @property
    def next_cursor(self) -> int: ...


class StreamIdentityLike(Protocol):
    """The stream a source serves, as it reports it (source.client.ServiceIdentity has these)."""

    @property
    def seed(self) -> int: ...

    @property
    def events_per_second(self) -> float: ...  # the rate of the stream's timeline

    @property
    def stream_start(self) -> str: ...  # ISO-8601 UTC with ``Z``

    @property
    def schema_version(self) -> int: ...


class BadgeSource(Protocol):
    """The generator service as the pipeline sees it (source.client.BadgeLogClient is one)."""

    def get_employee_badge_logs(self, cursor: int | None = None, batch: int | None = None) -> FetchResultLike: ...

    def stream_identity(self) -> StreamIdentityLike: ...


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
