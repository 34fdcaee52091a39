"""The synthetic badge stream: a vectorized, replayable, live generator of badge records.

Record ``k`` is a pure function of ``(seed, stream_start, events_per_second, k)``: the same arguments
give byte-identical records however a range is split into calls, and never a Python loop per record.

The model
---------
*Population.* ``POPULATION_SIZE`` (5,000) employees derived from the seed alone: a UUID each, a fixed
department by :data:`~utils.records.DEPARTMENT_WEIGHTS` (exact quotas, shuffled) and a home building
(equal quotas). Every event picks an employee uniformly, so each employee recurs; the event happens in
the home building with probability ``HOME_SHARE`` (0.85), otherwise in one of the three others.

*An event is a closed session.* The event time is the badge-out time (the moment the session closes),
``badge_in = badge_out - duration``, and records come in event-time order (``badge_out`` never goes
backwards with ``event_id``). A denied attempt (``DENIED_SHARE`` = 1/51 of attempts) has no session:
``badge_out == badge_in`` and ``access_granted`` is false. Granted sessions last a working day for 75 %
(normal around 8.6 h, sd 1.1 h, 4-12 h) and under 4 hours for ``SHORT_SHARE`` = 25 % (5 min - 4 h),
durations drawn in 5-minute bins with a uniform offset inside the bin.

*Arrivals peak on weekday mornings.* ``arrival_shape`` (per 5 minutes over a UTC week, mean 1) has a
peak around 08:45 on weekdays, a smaller one after lunch, low nights and thin weekends (never zero).
Because events are emitted at close time, the close-time rate is the convolution of the arrival shape
with the duration distribution (a denied attempt closes when it arrives), and an event closing at
time ``c`` draws its duration from ``P(d | c) ∝ P(d) * arrival(c - d)``. So over whole weeks the
badge-in times follow the arrival shape exactly (mornings), the close times follow the event-rate shape
(late afternoons), and the duration and denial marginals are exactly the ones above.

*The live clock.* ``EVENTS_PER_SECOND`` is the *average* rate; the instantaneous rate follows the
event-rate shape anchored to real UTC wall-clock time (weekday late afternoons about 3.5x the average,
Sunday nights about 0.2x, never zero). Event ``k`` closes at ``t_k = W^-1(W(stream_start) + k / rate)``,
where ``W`` is the cumulative shape (warped seconds, piecewise linear over 5-minute bins). Event 0 closes
exactly at the stream start; a live request never returns an event whose time is after ``now``.
``EVENTS_PER_SECOND=0`` is the firehose: nothing waits, and timestamps are those of the live stream at
``NOMINAL_EVENTS_PER_SECOND`` (200/s, the setting's default), so a backfill gives the same records the
default live stream would, earlier (their times may lie in the future).

*The stream start* comes from ``GENERATOR_STREAM_START`` or, when unset, from the lake's
``.stream_start`` file (see :mod:`api.stream_state`): a restarted service continues the same stream.

*Randomness.* Records are generated in blocks of ``BLOCK_SIZE``; block ``b`` draws two raw 64-bit words
per record from ``np.random.default_rng([seed, b])`` (employee and building from the first, duration bin
and offset from the second) and a request slices the blocks it touches. Event ids stop at
``MAX_EVENTS - 1`` (a trillion events).

*Record versions.* Version 1 is RECORD_SCHEMA; version 2 (``version=2`` on the columns' ``to_table``,
:func:`generate_table` and :meth:`BadgeStream.read`) is the same record plus ``door_id``, the reader
the badge was presented to: a door of the event's building (``utils.records.DOOR_IDS``, uniform over
the building's ``DOORS_PER_BUILDING``) drawn from a hash of (seed, event id) alone, so it never changes
the version-1 values and is the same however a range is split; null when access was not granted.

At this request rate nobody is modelled as being in one place at a time: sessions of one employee may
overlap. The shape and proportions are what the dashboard looks at, not individual itineraries.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property, lru_cache
from typing import Final

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from utils.records import (
    BUILDINGS,
    DEFAULT_RECORD_VERSION,
    DEPARTMENT_WEIGHTS,
    DEPARTMENTS,
    DOOR_ID,
    DOOR_IDS,
    DOORS_PER_BUILDING,
    RECORD_SCHEMA,
    record_schema,
)

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
BOOL = npt.NDArray[np.bool_]

POPULATION_SIZE: Final = 5_000
HOME_SHARE: Final = 0.85
DENIED_SHARE: Final = 1 / 51
SHORT_SHARE: Final = 0.25
BLOCK_SIZE: Final = 16_384
NOMINAL_EVENTS_PER_SECOND: Final = 200.0
MAX_EVENTS: Final = 10**12

US_PER_S: Final = 1_000_000
WEEK_S: Final = 7 * 86_400
BIN_S: Final = 300  # the shapes' resolution: 5 minutes
N_BINS: Final = WEEK_S // BIN_S  # 2016 per week
DURATION_BINS: Final = 12 * 3600 // BIN_S + 1  # bin 0: denied (no session); bin j >= 1: [(j-1)*5, j*5) minutes
GUIDE_SIZE: Final = 256  # guide-table buckets per row for inverse-CDF sampling
EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
ANCHOR_US: Final = 4 * 86_400 * US_PER_S  # 1970-01-05 00:00 UTC, a Monday: weeks start here
POPULATION_KEY: Final = 0xB4D6E  # spawn key that separates the population's randomness from the blocks'
DOOR_KEY: Final = 0xD0025EED  # mixed with the seed: the door draws differ from, but follow, GENERATOR_SEED

_U32: Final = np.uint64(0xFFFFFFFF)
_SHIFT: Final = np.uint64(32)
_16: Final = np.uint64(16)
_LOW16: Final = np.uint64(0xFFFF)
_AWAY_16: Final = np.uint64(round((1 - HOME_SHARE) * 2**16))
# _ROTATE[home * 4 + step]: the building ``step`` places after ``home`` (step 0 = home itself).
_ROTATE: Final = (np.arange(len(BUILDINGS))[:, None] + np.arange(len(BUILDINGS))[None, :]).ravel() % len(BUILDINGS)
# Per building (BUILDINGS' order): how many doors it has, and where its doors start in DOOR_IDS.
_DOOR_COUNTS: Final = np.array([DOORS_PER_BUILDING[b] for b in BUILDINGS], dtype=np.uint64)
_DOOR_FIRST: Final = np.concatenate([[0], np.cumsum(_DOOR_COUNTS)[:-1]]).astype(np.int16)
_MIX1: Final = np.uint64(0xBF58476D1CE4E5B9)
_MIX2: Final = np.uint64(0x94D049BB133111EB)
_GOLDEN: Final = np.uint64(0x9E3779B97F4A7C15)


def to_us(moment: datetime) -> int:
    """Microseconds since the Unix epoch of an aware datetime (a naive one is taken as UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - EPOCH) // timedelta(microseconds=1)


def _splitmix64(x: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """SplitMix64's finalizer per element: a fixed, well-mixed bijection of 64-bit words (wraps, no warnings)."""
    z = x + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return np.asarray(z ^ (z >> np.uint64(31)), dtype=np.uint64)


def door_codes(seed: int, event_id: I64, building: npt.NDArray[np.intp], granted: BOOL) -> npt.NDArray[np.int16]:
    """Per record, its door as an index into ``utils.records.DOOR_IDS``; -1 where access was not granted.

    A door of the record's building, uniform over its DOORS_PER_BUILDING, from a hash of (seed, event id)
    alone: the same event always gets the same door, and no draw of the version-1 fields is touched.
    """
    key = _splitmix64(np.array([seed ^ DOOR_KEY], dtype=np.uint64))
    words = _splitmix64(event_id.astype(np.uint64) ^ key)
    counts = _DOOR_COUNTS[building]
    within = ((words >> _SHIFT) * counts) >> _SHIFT  # < counts: multiply-shift, no modulo bias to speak of
    codes = _DOOR_FIRST[building] + within.astype(np.int16)
    codes[~granted] = -1
    return np.asarray(codes, dtype=np.int16)


def _check_version(version: int) -> None:
    record_schema(version)  # ValueError naming the versions there are


def _bump(hours: F64, centre: float, width: float) -> F64:
    return np.exp(-0.5 * ((hours - centre) / width) ** 2)


def _arrival_shape() -> F64:
    """Relative badge-in rate per 5-minute bin of a UTC week starting Monday 00:00, mean 1."""
    mid = (np.arange(N_BINS) + 0.5) * BIN_S
    day = mid // 86_400
    hour = (mid % 86_400) / 3600
    weekday = 0.06 + _bump(hour, 8.75, 0.9) + 0.25 * _bump(hour, 13.25, 0.8) + 0.12 * _bump(hour, 11.0, 3.0)
    weekend = 0.03 + 0.12 * _bump(hour, 11.5, 2.5)
    shape = np.where(day < 5, weekday, weekend)
    return np.asarray(shape / shape.mean(), dtype=np.float64)


def _duration_distribution() -> F64:
    """P(duration bin): bin 0 is a denied attempt, bins 1.. are granted sessions in 5-minute steps."""
    hours = (np.arange(1, DURATION_BINS) - 0.5) * BIN_S / 3600
    short = np.where((hours < 4) & (hours > BIN_S / 3600), _bump(hours, 1.75, 1.2), 0.0)
    full_day = np.where(hours >= 4, _bump(hours, 8.6, 1.1), 0.0)
    granted = (1 - SHORT_SHARE) * full_day / full_day.sum() + SHORT_SHARE * short / short.sum()
    return np.concatenate([[DENIED_SHARE], (1 - DENIED_SHARE) * granted])


@dataclass(frozen=True)
class Shape:
    """The weekly model as tables: event rate, its cumulative, and P(duration | close bin).

    Built once; every array is read-only so records cannot depend on call history.
    """

    arrival: F64  # (N_BINS,) badge-in rate, mean 1
    duration: F64  # (DURATION_BINS,) marginal P(duration bin)
    rate: F64  # (N_BINS,) event (close) rate, mean 1
    inv_rate: F64  # (N_BINS,)
    cum: F64  # (N_BINS + 1,) warped seconds at bin edges; cum[-1] == WEEK_S
    cdf: F64  # (N_BINS * DURATION_BINS,) P(duration bin <= j | close bin), row-major
    guide: npt.NDArray[np.int32]  # (N_BINS * GUIDE_SIZE,) first j with cdf > g / GUIDE_SIZE

    def warp(self, us: int) -> tuple[int, float]:
        """W(t) for ``us`` since the Unix epoch, as (whole weeks since the anchor, warped seconds into it)."""
        week, rest_us = divmod(us - ANCHOR_US, WEEK_S * US_PER_S)
        rest = rest_us / US_PER_S
        b = min(int(rest // BIN_S), N_BINS - 1)
        return week, float(self.cum[b] + (rest - b * BIN_S) * self.rate[b])

    def edge(self, g: I64) -> F64:
        """Warped seconds (from week 0) of global bin edge ``g`` = week * N_BINS + bin: one formula everywhere."""
        return np.asarray((g // N_BINS).astype(np.float64) * WEEK_S + self.cum[g % N_BINS], dtype=np.float64)

    def edge_index(self, warped: F64) -> I64:
        """Per warped time, the global index of the last bin edge at or before it (the definition, per element)."""
        week = np.floor(warped / WEEK_S)
        b = np.searchsorted(self.cum, warped - week * WEEK_S, side="right") - 1
        g = week.astype(np.int64) * N_BINS + np.clip(b, 0, N_BINS - 1)
        # The estimate can be one edge off where rounding meets an edge; settle it by comparing with edge().
        for _ in range(4):
            back = warped < self.edge(g)
            forward = warped >= self.edge(g + 1)
            if not (back.any() or forward.any()):
                break
            g = g - back + forward
        return np.asarray(g, dtype=np.int64)

    def edge_runs(self, warped: F64) -> tuple[I64, I64]:
        """For non-decreasing warped times: the distinct edge indices in order and how many times fall after each.

        Same answer as :meth:`edge_index` per element, but from a few binary searches of the edges.
        """
        ends = self.edge_index(warped[[0, -1]])
        first, last = int(ends[0]), int(ends[1])
        if last - first > 2 * len(warped) + 64:  # sparse: fewer times than edges crossed
            g = self.edge_index(warped)
            starts = np.concatenate([[0], np.flatnonzero(np.diff(g)) + 1])
            return g[starts], np.diff(np.append(starts, len(warped)))
        g = np.arange(first, last + 1, dtype=np.int64)
        starts = np.searchsorted(warped, self.edge(g[1:]), side="left")
        counts = np.diff(np.concatenate([[0], starts, [len(warped)]]))
        return g, counts

    def place(self, week0: int, warped: F64) -> tuple[I64, npt.NDArray[np.intp]]:
        """Microseconds since the Unix epoch, and bin of the week, of non-decreasing warped times.

        Monotone: a larger warped time never maps to an earlier microsecond.
        """
        g, counts = self.edge_runs(warped)
        b = g % N_BINS
        base = ANCHOR_US + (week0 + g // N_BINS) * (WEEK_S * US_PER_S) + b * (BIN_S * US_PER_S)
        offset = ((warped - np.repeat(self.edge(g), counts)) * np.repeat(self.inv_rate[b] * US_PER_S, counts)).astype(
            np.int64
        )
        # Clipping inside the bin keeps times monotone across bin edges despite rounding.
        np.clip(offset, 0, BIN_S * US_PER_S - 1, out=offset)
        return np.repeat(base, counts) + offset, np.repeat(b, counts).astype(np.intp)

    def duration_bins(self, close_bin: npt.NDArray[np.intp], u: F64) -> npt.NDArray[np.intp]:
        """Inverse-CDF sample: the first duration bin ``j`` with ``cdf[close_bin, j] > u``, for u in [0, 1)."""
        base = close_bin * DURATION_BINS
        j = self.guide[close_bin * GUIDE_SIZE + (u * GUIDE_SIZE).astype(np.intp)].astype(np.intp)
        todo = np.flatnonzero(self.cdf[base + j] <= u)
        while todo.size:  # at most DURATION_BINS steps; in practice one or two
            j[todo] += 1
            todo = todo[self.cdf[base[todo] + j[todo]] <= u[todo]]
        return j


@lru_cache(maxsize=1)
def shape() -> Shape:
    """The model's tables (built once per process, about 20 ms)."""
    arrival = _arrival_shape()
    duration = _duration_distribution()
    close = np.arange(N_BINS)[:, None]
    j = np.arange(DURATION_BINS)[None, :]
    # Arrival for a session closing in bin i that lasted bin j: a triangle over bins i-j and i-j+1;
    # a denied attempt (j = 0) arrives when it closes.
    arrival_at = np.where(
        j == 0, arrival[close], 0.5 * (arrival[(close - j) % N_BINS] + arrival[(close - j + 1) % N_BINS])
    )
    joint = arrival_at * duration[None, :]
    close_rate = joint.sum(axis=1)
    cdf = np.cumsum(joint, axis=1) / close_rate[:, None]
    cdf[:, -1] = 1.0  # exact, so that u < 1 always finds a bin
    guide = np.stack([np.searchsorted(row, np.arange(GUIDE_SIZE) / GUIDE_SIZE, side="right") for row in cdf])
    rate = close_rate / close_rate.mean()
    cum = np.concatenate([[0.0], np.cumsum(rate * BIN_S)])
    cum[-1] = float(WEEK_S)
    tables = Shape(
        arrival=arrival,
        duration=duration,
        rate=rate,
        inv_rate=1.0 / rate,
        cum=cum,
        cdf=np.ascontiguousarray(cdf.ravel()),
        guide=guide.astype(np.int32).ravel(),
    )
    for array in (tables.arrival, tables.duration, tables.rate, tables.inv_rate, tables.cum, tables.cdf, tables.guide):
        array.flags.writeable = False
    return tables


@dataclass(frozen=True, eq=False)
class Population:
    """The stable employee population of one seed: ids, departments and home buildings."""

    seed: int
    user_ids: pa.StringArray  # (POPULATION_SIZE,) UUID strings
    dept_index: npt.NDArray[np.int8]  # index into DEPARTMENTS
    home_index: npt.NDArray[np.int8]  # index into BUILDINGS

    @cached_property
    def depts(self) -> pa.StringArray:
        """Each employee's department name (for a single ``take`` per batch)."""
        names = pa.array(DEPARTMENTS, pa.string())
        return names.take(pa.array(self.dept_index))


@lru_cache(maxsize=8)
def population(seed: int) -> Population:
    """The population of ``seed``: a pure function of the seed (cached)."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(POPULATION_KEY,)))
    raw = rng.bytes(16 * POPULATION_SIZE)
    ids = [str(uuid.UUID(bytes=raw[i * 16 : (i + 1) * 16], version=4)) for i in range(POPULATION_SIZE)]
    quotas = np.round(np.array(list(DEPARTMENT_WEIGHTS.values())) * POPULATION_SIZE).astype(np.int64)
    quotas[np.argmax(quotas)] += POPULATION_SIZE - quotas.sum()  # rounding remainder, if any
    depts = rng.permutation(np.repeat(np.arange(len(DEPARTMENTS)), quotas)).astype(np.int8)
    homes = rng.permutation(np.arange(POPULATION_SIZE) % len(BUILDINGS)).astype(np.int8)
    return Population(seed=seed, user_ids=pa.array(ids, pa.string()), dept_index=depts, home_index=homes)


@dataclass(frozen=True, eq=False)
class Columns:
    """A contiguous run of records as numpy columns (indices instead of strings), plus its population.

    ``to_table()`` gives the RECORD_SCHEMA table (``to_table(2)``: RECORD_V2_SCHEMA, with ``door_id``);
    the service encodes JSON and Arrow from these directly.
    """

    event_id: I64
    employee: npt.NDArray[np.intp]
    building: npt.NDArray[np.intp]
    badge_in_us: I64
    badge_out_us: I64
    granted: BOOL
    population: Population

    def __len__(self) -> int:
        return int(self.event_id.shape[0])

    @cached_property
    def door(self) -> npt.NDArray[np.int16]:
        """Each record's door (version 2) as an index into DOOR_IDS, -1 where access was not granted."""
        return door_codes(self.population.seed, self.event_id, self.building, self.granted)

    def door_ids(self) -> pa.StringArray:
        """Each record's ``door_id`` (version 2): plain strings, null where access was not granted."""
        codes = self.door
        return pa.array(DOOR_IDS, pa.string()).take(pa.array(codes, pa.int16(), mask=codes < 0))

    def to_table(self, version: int = DEFAULT_RECORD_VERSION) -> pa.Table:
        """The records as a table of record ``version``: RECORD_SCHEMA (1) or RECORD_V2_SCHEMA (2), plain strings."""
        _check_version(version)
        employee = pa.array(self.employee, pa.int32())
        buildings = pa.array(BUILDINGS, pa.string())
        table = pa.Table.from_arrays(
            [
                pa.array(self.event_id, pa.int64()),
                self.population.user_ids.take(employee),
                self.population.depts.take(employee),
                buildings.take(pa.array(self.building, pa.int8())),
                pa.array(self.badge_in_us.view("datetime64[us]")),
                pa.array(self.badge_out_us.view("datetime64[us]")),
                pa.array(self.granted, pa.bool_()),
            ],
            schema=RECORD_SCHEMA,
        )
        if version == 1:
            return table
        return table.append_column(record_schema(version).field(DOOR_ID), self.door_ids())


def _block_words(seed: int, start: int, count: int) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]:
    """The two raw 64-bit words of records start..start+count-1, drawn block by block."""
    first, last = start // BLOCK_SIZE, (start + count - 1) // BLOCK_SIZE
    words1, words2 = [], []
    for block in range(first, last + 1):
        bits = np.random.default_rng([seed, block]).bit_generator
        words1.append(bits.random_raw(BLOCK_SIZE))
        words2.append(bits.random_raw(BLOCK_SIZE))
    lo = start - first * BLOCK_SIZE
    w1 = words1[0] if len(words1) == 1 else np.concatenate(words1)
    w2 = words2[0] if len(words2) == 1 else np.concatenate(words2)
    return w1[lo : lo + count], w2[lo : lo + count]


class Timeline:
    """Event times of one stream: event ``k`` closes at ``W^-1(W(stream_start) + k / rate)``.

    Pure: the time of event ``k`` depends only on (stream_start, events_per_second, k).
    """

    def __init__(self, stream_start: datetime, events_per_second: float) -> None:
        if events_per_second < 0:
            raise ValueError("events_per_second must be >= 0")
        self.stream_start = stream_start
        self.events_per_second = events_per_second
        self.rate = events_per_second if events_per_second > 0 else NOMINAL_EVENTS_PER_SECOND
        self.start_us = to_us(stream_start)
        self.shape = shape()
        self.week0, self.phase0 = self.shape.warp(self.start_us)

    def times(self, start: int, count: int) -> I64:
        """Close (badge-out) times in microseconds since the Unix epoch of events start..start+count-1."""
        return self.place(start, count)[0]

    def place(self, start: int, count: int) -> tuple[I64, npt.NDArray[np.intp]]:
        """Close times of events start..start+count-1 and the 5-minute bin of the week each falls in."""
        k = np.arange(start, start + count, dtype=np.int64)
        return self.shape.place(self.week0, self.phase0 + k / self.rate)

    def time_of(self, k: int) -> int:
        return int(self.times(k, 1)[0])

    def count_until(self, now_us: int) -> int:
        """How many events have closed at or before ``now_us`` (0 before the stream start), at most MAX_EVENTS."""
        if now_us < self.start_us:
            return 0
        week, warped = self.shape.warp(now_us)
        estimate = int(((week - self.week0) * WEEK_S + warped - self.phase0) * self.rate) + 1
        n = max(0, min(estimate, MAX_EVENTS))
        # The estimate is float arithmetic; settle the boundary with the very times records carry.
        while n > 0 and self.time_of(n - 1) > now_us:
            n -= 1
        while n < MAX_EVENTS and self.time_of(n) <= now_us:
            n += 1
        return n


def generate_columns(seed: int, start: int, count: int, *, stream_start: datetime, events_per_second: float) -> Columns:
    """Records start..start+count-1 as numpy columns; see :func:`generate_table`."""
    return _generate(seed, start, count, Timeline(stream_start, events_per_second))


def _generate(seed: int, start: int, count: int, timeline: Timeline) -> Columns:
    if start < 0 or count < 0 or start + count > MAX_EVENTS:
        raise ValueError(f"event ids must lie in [0, {MAX_EVENTS}); got start={start} count={count}")
    people = population(seed)
    if count == 0:
        empty = np.zeros(0, np.int64)
        return Columns(empty, empty.astype(np.intp), empty.astype(np.intp), empty, empty, empty.astype(bool), people)
    word1, word2 = _block_words(seed, start, count)
    tables = timeline.shape
    employee = ((word1 >> _SHIFT) * np.uint64(POPULATION_SIZE) >> _SHIFT).astype(np.intp)
    # Away from home with probability AWAY_16 / 2**16 (bits 16-31), then one of the three other buildings
    # (bits 0-15 scaled to 0..2).
    low = word1 & _U32
    away = (low >> _16) < _AWAY_16
    step = np.where(away, ((low & _LOW16) * np.uint64(3) >> _16) + np.uint64(1), np.uint64(0)).astype(np.intp)
    building = _ROTATE[people.home_index[employee].astype(np.intp) * len(BUILDINGS) + step]
    out_us, close_bin = timeline.place(start, count)
    u = (word2 >> _SHIFT).astype(np.float64) * 2.0**-32
    dbin = tables.duration_bins(close_bin, u)
    granted = dbin > 0
    duration = ((word2 & _U32).astype(np.float64) * 2.0**-32 + (dbin - 1)) * (BIN_S * US_PER_S)
    duration[~granted] = 0.0
    badge_in_us = out_us - duration.astype(np.int64)
    return Columns(
        event_id=np.arange(start, start + count, dtype=np.int64),
        employee=employee,
        building=building,
        badge_in_us=badge_in_us,
        badge_out_us=out_us,
        granted=granted,
        population=people,
    )


def generate_table(
    seed: int,
    start: int,
    count: int,
    *,
    stream_start: datetime,
    events_per_second: float,
    version: int = DEFAULT_RECORD_VERSION,
) -> pa.Table:
    """Records with ``event_id`` start..start+count-1 as a RECORD_SCHEMA table (``version=2``: RECORD_V2_SCHEMA).

    Pure and vectorized: byte-identical however the range is split into calls. ``events_per_second``
    0 means the firehose (timestamps at NOMINAL_EVENTS_PER_SECOND); it does not limit what is returned.
    """
    return generate_columns(
        seed, start, count, stream_start=stream_start, events_per_second=events_per_second
    ).to_table(version)


class BadgeStream:
    """The live stream of one (seed, rate, stream start): what exists at ``now`` and reading it by cursor.

    ``available(now)`` never counts an event whose time is after ``now``; reads are pure functions of the
    cursor (and of ``now`` only through how many records exist).
    """

    def __init__(self, seed: int, events_per_second: float, stream_start: datetime) -> None:
        self.seed = seed
        self.events_per_second = events_per_second
        self.stream_start = stream_start
        self.timeline = Timeline(stream_start, events_per_second)

    @property
    def firehose(self) -> bool:
        return self.events_per_second == 0

    def available(self, now: datetime) -> int:
        """How many events exist at ``now`` (event ids 0..n-1); MAX_EVENTS for the firehose."""
        if self.firehose:
            return MAX_EVENTS
        return self.timeline.count_until(to_us(now))

    def read_columns(self, cursor: int, batch: int, now: datetime) -> Columns:
        """Events cursor, cursor+1, ... that exist at ``now``, at most ``batch`` (possibly none)."""
        if cursor < 0 or batch < 0:
            raise ValueError("cursor and batch must be >= 0")
        count = max(0, min(batch, self.available(now) - cursor))
        return self.columns(min(cursor, MAX_EVENTS), count)

    def columns(self, start: int, count: int) -> Columns:
        """Events start..start+count-1 whether or not they exist yet (the caller checked ``available``)."""
        return _generate(self.seed, start, count, self.timeline)

    def read(self, cursor: int, batch: int, now: datetime, version: int = DEFAULT_RECORD_VERSION) -> pa.Table:
        """Like :meth:`read_columns`, as a table of record ``version`` (RECORD_SCHEMA by default)."""
        return self.read_columns(cursor, batch, now).to_table(version)
