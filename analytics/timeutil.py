"""Time conversions of the analytics: naive UTC datetimes, whole epoch minutes and epoch microseconds.

Every function is pure and total over its input type; a naive datetime is always read as UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Final

EPOCH: Final = datetime(1970, 1, 1)
MINUTES_PER_DAY: Final = 1_440


def to_naive_utc(moment: datetime) -> datetime:
    """A naive UTC datetime from any datetime.

    Aware values are converted to UTC; naive ones are returned unchanged (taken as UTC).
    """
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo is not None else moment


def minute_of(moment: datetime) -> int:
    """Whole minutes since the epoch.

    Floored, so every instant of a minute maps to that minute (also before the epoch).
    """
    return (to_naive_utc(moment) - EPOCH) // timedelta(minutes=1)


def moment_of_minute(minute: int) -> datetime:
    """The naive UTC datetime at the start of ``minute``.

    The inverse of :func:`minute_of` on minute starts: ``minute_of(moment_of_minute(m)) == m``.
    """
    return EPOCH + timedelta(minutes=minute)


def moment_of_us(us: int) -> datetime:
    """An aware UTC datetime from microseconds since the epoch.

    Exact: no rounding (datetimes hold microseconds).
    """
    return (EPOCH + timedelta(microseconds=us)).replace(tzinfo=UTC)


__all__ = ["EPOCH", "MINUTES_PER_DAY", "minute_of", "moment_of_minute", "moment_of_us", "to_naive_utc"]
