"""The badge record: field names, value domains and Arrow schemas shared by the service and the lake.

Timestamps are stored as naive ``timestamp[us]`` that are UTC by convention (no time-zone
annotation). docs/measurements.md has DuckDB's ``hour()`` and ``date_trunc`` at about 2.7x faster on a
naive TIMESTAMP than on TIMESTAMPTZ (168 vs 457 ms on 10 M rows), and every engine that reads the
lake (DuckDB, Spark's TIMESTAMP_NTZ, Trino's ``timestamp(6)``) reads the values unchanged. JSON on
the wire carries an explicit ``Z``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final

import pyarrow as pa

# Departments with the original's weights (they sum to 1).
DEPARTMENT_WEIGHTS: Final[dict[str, float]] = {
    "Engineering": 0.15,
    "Sales": 0.20,
    "Finance": 0.20,
    "HR": 0.20,
    "Analyst": 0.20,
    "Leadership": 0.05,
}
DEPARTMENTS: Final[tuple[str, ...]] = tuple(DEPARTMENT_WEIGHTS)
BUILDINGS: Final[tuple[str, ...]] = ("Sonic", "Re-invent", "Grace", "Maverick")

# A session under this many seconds is "premature" / non-compliant; 4 hours or more is compliant.
COMPLIANCE_SECONDS: Final[int] = 4 * 3600

TIMESTAMP_TYPE: Final[pa.DataType] = pa.timestamp("us")

# What the lake stores, so what validation lets through (source.validation refuses anything else):
# timestamps in [TIMESTAMP_MIN, TIMESTAMP_MAX) (naive UTC; far inside timestamp[us] and the generator's
# whole range), a session of at most DURATION_MAX_SECONDS (duration_s is an int32: ~68 years), and text
# fields of at most TEXT_MAX_CHARS characters (a UUID is 36; the longest department or building 11).
TIMESTAMP_MIN: Final = datetime(1970, 1, 1)
TIMESTAMP_MAX: Final = datetime(2200, 1, 1)
DURATION_MAX_SECONDS: Final = 2**31 - 1
TEXT_MAX_CHARS: Final = 256

FIELDS: Final[tuple[str, ...]] = (
    "event_id",
    "user_id",
    "dept",
    "building_location",
    "badge_in_timestamp",
    "badge_out_timestamp",
    "access_granted",
)

# What the service sends and the client returns: exactly the contract's record.
RECORD_SCHEMA: Final[pa.Schema] = pa.schema(
    [
        pa.field("event_id", pa.int64(), nullable=False),
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("dept", pa.string(), nullable=False),
        pa.field("building_location", pa.string(), nullable=False),
        pa.field("badge_in_timestamp", TIMESTAMP_TYPE, nullable=False),
        pa.field("badge_out_timestamp", TIMESTAMP_TYPE, nullable=False),
        pa.field("access_granted", pa.bool_(), nullable=False),
    ]
)

# What every data file in landing/ and compacted/ holds: the record plus a derived column.
# duration_s = floor((badge_out - badge_in) in seconds); stored so that compliance queries compare an
# integer (82 ms on 10 M rows, docs/measurements.md) instead of doing interval arithmetic (1,900 ms).
LAKE_SCHEMA: Final[pa.Schema] = RECORD_SCHEMA.append(pa.field("duration_s", pa.int32(), nullable=False))

# Quarantined records: every field as text (it may not parse), plus why it was refused.
QUARANTINE_SCHEMA: Final[pa.Schema] = pa.schema(
    [pa.field("event_id", pa.int64())]
    + [pa.field(name, pa.string()) for name in FIELDS[1:]]
    + [pa.field("reason", pa.string(), nullable=False)]
)


def with_duration(table: pa.Table) -> pa.Table:
    """Add ``duration_s`` to a RECORD_SCHEMA table, giving a LAKE_SCHEMA table (zero-copy for the rest).

    Cannot fail on records that passed validation (badge-out at or after badge-in, at most
    DURATION_MAX_SECONDS apart); on anything else the int32 cast raises ``pa.ArrowInvalid``.
    """
    import pyarrow.compute as pc

    start = table.column("badge_in_timestamp").cast(pa.int64())
    end = table.column("badge_out_timestamp").cast(pa.int64())
    seconds = pc.divide(pc.subtract(end, start), 1_000_000)  # integer division: floor for x >= 0
    return table.append_column(LAKE_SCHEMA.field("duration_s"), seconds.cast(pa.int32()))
