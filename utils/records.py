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


# --- record versions ---------------------------------------------------------------------------------
# Version 1 is RECORD_SCHEMA. Version 2 is the same record (the same values for the same event id) plus
# DOOR_ID: the reader the badge was presented to, "<building>-D<nn>" with nn from 1 to the building's
# DOORS_PER_BUILDING, and null when access was not granted. The service sends RECORD_VERSION (a setting)
# unless a request asks for ``version``; the client keeps every field beyond RECORD_SCHEMA as it comes
# (source.validation), so a version-2 body gives RECORD_SCHEMA's columns followed by door_id.
RECORD_VERSIONS: Final[tuple[int, ...]] = (1, 2)
DEFAULT_RECORD_VERSION: Final = 1
DOOR_ID: Final = "door_id"
DOORS_PER_BUILDING: Final[dict[str, int]] = {"Sonic": 12, "Re-invent": 8, "Grace": 10, "Maverick": 6}
DOOR_IDS: Final[tuple[str, ...]] = tuple(
    f"{building}-D{number:02d}" for building in BUILDINGS for number in range(1, DOORS_PER_BUILDING[building] + 1)
)
RECORD_V2_FIELDS: Final[tuple[str, ...]] = (*FIELDS, DOOR_ID)
RECORD_V2_SCHEMA: Final[pa.Schema] = RECORD_SCHEMA.append(pa.field(DOOR_ID, pa.string(), nullable=True))


def record_schema(version: int) -> pa.Schema:
    """The schema of record ``version`` (RECORD_SCHEMA or RECORD_V2_SCHEMA); ValueError for another version."""
    if version == 1:
        return RECORD_SCHEMA
    if version == 2:
        return RECORD_V2_SCHEMA
    raise ValueError(f"record version must be one of {', '.join(map(str, RECORD_VERSIONS))}, not {version!r}")
