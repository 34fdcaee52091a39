"""The one record factory of the tests and benchmarks: badge records as Arrow tables, built with numpy.

Guarantee: :func:`make_records` is a pure function of ``(seed, event id)`` for every row: the same id
gives the same record whichever range it is asked in, so a fake source can be re-read from any cursor
(as the real service can) and a test's ground truth is simply the range of ids it wrote. The records
look like badge data (a stable population with one department and a home building each, about 2 %
denied attempts with ``badge_out == badge_in``, sessions up to a long working day, microsecond
timestamps), so file sizes and compression behave like the real thing. :func:`assemble` is the one
place a RECORD_SCHEMA table is put together from columns; :mod:`testkit.lakes` uses it for its
realistic multi-day lakes.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from functools import cache

import numpy as np
import pyarrow as pa

from lake.identity import StreamIdentity
from utils.records import BUILDINGS, DEPARTMENT_WEIGHTS, DEPARTMENTS, RECORD_SCHEMA, with_duration

US_PER_S = 1_000_000
T0_US = 1_740_960_000_000_000  # 2025-03-03 00:00 UTC, a Monday
POPULATION = 2_000
SECONDS_BETWEEN_EVENTS = 5
DENIED_ONE_IN = 51
MAX_SESSION_S = 12 * 3600
# The stream identity of lakes the tests build from this factory (recorded when a test creates a table).
TEST_IDENTITY = StreamIdentity(seed=0, events_per_second=0.2, stream_start="2025-03-03T00:00:00Z")


@dataclass(frozen=True)
class Population:
    """Employees: a stable UUID, one department and a home building each."""

    user_ids: pa.Array  # string
    dept_idx: np.ndarray  # index into DEPARTMENTS
    home_idx: np.ndarray  # index into BUILDINGS

    @classmethod
    def make(cls, size: int, seed: int) -> Population:
        """``size`` employees; the same arguments give the same population."""
        rng = np.random.default_rng([seed, 1])
        raw = rng.integers(0, 256, size=(size, 16), dtype=np.uint8)
        ids = [str(uuid.UUID(bytes=bytes(row), version=4)) for row in raw]
        weights = np.array([DEPARTMENT_WEIGHTS[d] for d in DEPARTMENTS])
        dept = rng.choice(len(DEPARTMENTS), size=size, p=weights / weights.sum())
        home = rng.integers(0, len(BUILDINGS), size=size)
        return cls(pa.array(ids, pa.string()), dept, home)


@cache
def population(seed: int) -> Population:
    """The factory's population for ``seed`` (built once per process)."""
    return Population.make(POPULATION, seed)


def assemble(
    *,
    ids: np.ndarray,
    who: np.ndarray,
    building: np.ndarray,
    badge_in_us: np.ndarray,
    badge_out_us: np.ndarray,
    granted: np.ndarray,
    people: Population,
) -> pa.Table:
    """A RECORD_SCHEMA table from columns: ``who`` indexes ``people``, ``building`` indexes BUILDINGS."""
    who_arr = pa.array(who)
    return pa.Table.from_arrays(
        [
            pa.array(ids, pa.int64()),
            people.user_ids.take(who_arr),
            pa.array(DEPARTMENTS, pa.string()).take(pa.array(people.dept_idx[who])),
            pa.array(BUILDINGS, pa.string()).take(pa.array(building)),
            pa.array(badge_in_us, pa.int64()).cast(pa.timestamp("us")),
            pa.array(badge_out_us, pa.int64()).cast(pa.timestamp("us")),
            pa.array(granted, pa.bool_()),
        ],
        schema=RECORD_SCHEMA,
    )


def _mix(ids: np.ndarray, seed: int, lane: int) -> np.ndarray:
    """splitmix64 of (seed, lane, id): independent uniform 64-bit values per id, no state."""
    with np.errstate(over="ignore"):
        z = ids.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64((seed * 1_000_003 + lane) & (2**64 - 1))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def make_records(start: int, count: int, *, seed: int = 0, now_us: int | None = None) -> pa.Table:
    """Records ``start .. start+count-1`` (RECORD_SCHEMA), each a pure function of ``(seed, id)``.

    Badge-ins are ``SECONDS_BETWEEN_EVENTS`` apart from 2025-03-03, so ids are in time order. With
    ``now_us`` every record closes (badge-out) at that instant, as at the head of a live stream.
    """
    ids = np.arange(start, start + count, dtype=np.int64)
    people = population(seed)
    who = (_mix(ids, seed, 1) % np.uint64(POPULATION)).astype(np.int64)
    away = _mix(ids, seed, 2) % np.uint64(100) < np.uint64(15)
    building = np.where(away, _mix(ids, seed, 3) % np.uint64(len(BUILDINGS)), people.home_idx[who]).astype(np.int64)
    granted = _mix(ids, seed, 4) % np.uint64(DENIED_ONE_IN) != np.uint64(0)
    session_us = (_mix(ids, seed, 5) % np.uint64((MAX_SESSION_S - 60) * US_PER_S)).astype(np.int64) + 60 * US_PER_S
    length = np.where(granted, session_us, 0)
    if now_us is None:
        jitter = (_mix(ids, seed, 6) % np.uint64(US_PER_S)).astype(np.int64)
        badge_in = T0_US + ids * SECONDS_BETWEEN_EVENTS * US_PER_S + jitter
        badge_out = badge_in + length
    else:
        badge_out = np.full(count, now_us, dtype=np.int64)
        badge_in = badge_out - length
    return assemble(
        ids=ids,
        who=who,
        building=building,
        badge_in_us=badge_in,
        badge_out_us=badge_out,
        granted=granted,
        people=people,
    )


def lake_table(start: int, count: int, *, seed: int = 0) -> pa.Table:
    """The same records as stored in the lake (LAKE_SCHEMA: ``duration_s`` added)."""
    return with_duration(make_records(start, count, seed=seed))
