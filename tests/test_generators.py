"""The generator: replayable, contiguous, realistic within stated bounds, and live without looking ahead."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from api.encoding import encode_arrow, encode_json
from api.generators import (
    BLOCK_SIZE,
    DENIED_SHARE,
    HOME_SHARE,
    MAX_EVENTS,
    N_BINS,
    NOMINAL_EVENTS_PER_SECOND,
    POPULATION_SIZE,
    SHORT_SHARE,
    WEEK_S,
    BadgeStream,
    Timeline,
    generate_columns,
    generate_table,
    population,
    shape,
    to_us,
)
from utils.records import BUILDINGS, COMPLIANCE_SECONDS, DEPARTMENT_WEIGHTS, RECORD_SCHEMA

MONDAY = datetime(2025, 3, 3, tzinfo=UTC)  # a Monday, 00:00 UTC
WEEKS = 4
SAMPLE = 200_000
# A rate at which SAMPLE events span exactly WEEKS whole weeks, so weekly marginals are exact in expectation.
SPARSE_RATE = SAMPLE / (WEEKS * WEEK_S)


def table(seed: int = 7, start: int = 0, count: int = 1000, rate: float = 200.0, at: datetime = MONDAY) -> pa.Table:
    return generate_table(seed, start, count, stream_start=at, events_per_second=rate)


@pytest.fixture(scope="module")
def sample() -> pd.DataFrame:
    """Four whole weeks of events, with derived columns for the statistics."""
    df: pd.DataFrame = table(seed=11, count=SAMPLE, rate=SPARSE_RATE).to_pandas()
    df["duration_s"] = (df.badge_out_timestamp - df.badge_in_timestamp).dt.total_seconds()
    df["in_weekday"] = df.badge_in_timestamp.dt.day_of_week
    df["in_hour"] = df.badge_in_timestamp.dt.hour
    df["out_how"] = df.badge_out_timestamp.dt.day_of_week * 24 + df.badge_out_timestamp.dt.hour
    return df


# --- determinism and shape of the output -------------------------------------------------------------


def test_same_arguments_give_identical_bytes() -> None:
    a = generate_columns(3, 12_345, 50_000, stream_start=MONDAY, events_per_second=50)
    b = generate_columns(3, 12_345, 50_000, stream_start=MONDAY, events_per_second=50)
    assert bytes(encode_json(a)) == bytes(encode_json(b))
    assert bytes(encode_arrow(a)) == bytes(encode_arrow(b))
    assert a.to_table().equals(b.to_table())


@pytest.mark.parametrize("rate", [200.0, 0.0, SPARSE_RATE, 1e-6])
def test_a_range_is_the_same_however_it_is_split(rate: float) -> None:
    whole = table(start=BLOCK_SIZE - 10, count=3 * BLOCK_SIZE, rate=rate)
    cuts = [0, 1, 9, 10, 11, BLOCK_SIZE + 3, 2 * BLOCK_SIZE + 10, 3 * BLOCK_SIZE]
    parts = [table(start=BLOCK_SIZE - 10 + a, count=b - a, rate=rate) for a, b in itertools.pairwise(cuts)]
    assert pa.concat_tables(parts).equals(whole)


def test_different_seeds_give_different_data_and_population() -> None:
    a, b = table(seed=1), table(seed=2)
    assert set(a.column("user_id").to_pylist()).isdisjoint(b.column("user_id").to_pylist())
    assert a.column("building_location") != b.column("building_location")
    assert a.column("badge_out_timestamp").equals(b.column("badge_out_timestamp"))  # times depend on the clock only


def test_schema_event_ids_and_order() -> None:
    t = table(start=987, count=30_000)
    assert t.schema == RECORD_SCHEMA
    assert all(t.column(i).null_count == 0 for i in range(t.num_columns))
    ids = t.column("event_id").to_numpy()
    assert np.array_equal(ids, np.arange(987, 987 + 30_000))
    out = t.column("badge_out_timestamp").cast(pa.int64()).to_numpy()
    ins = t.column("badge_in_timestamp").cast(pa.int64()).to_numpy()
    assert np.all(np.diff(out) >= 0), "stream order: badge-out never goes backwards"
    assert np.all(ins <= out)
    granted = t.column("access_granted").to_numpy(zero_copy_only=False)
    assert np.array_equal(ins == out, ~granted), "denied exactly when there is no session"


def test_empty_and_out_of_range_requests() -> None:
    assert table(count=0).schema == RECORD_SCHEMA
    assert table(count=0).num_rows == 0
    with pytest.raises(ValueError):
        table(start=-1, count=1)
    with pytest.raises(ValueError):
        table(start=MAX_EVENTS - 1, count=2)
    assert table(start=MAX_EVENTS - 1, count=1).column("event_id")[0].as_py() == MAX_EVENTS - 1


def test_firehose_timestamps_are_the_nominal_live_stream() -> None:
    assert table(rate=0.0, count=5000).equals(table(rate=NOMINAL_EVENTS_PER_SECOND, count=5000))


# --- the model, within stated bounds -------------------------------------------------------------------


def test_population_is_stable_with_exact_department_quotas() -> None:
    people = population(11)
    assert people is population(11)
    assert len(set(people.user_ids.to_pylist())) == POPULATION_SIZE
    counts = np.bincount(people.dept_index, minlength=len(DEPARTMENT_WEIGHTS))
    assert counts.tolist() == [round(w * POPULATION_SIZE) for w in DEPARTMENT_WEIGHTS.values()]
    assert np.bincount(people.home_index).tolist() == [POPULATION_SIZE // len(BUILDINGS)] * len(BUILDINGS)


def test_every_employee_recurs_with_one_department(sample: pd.DataFrame) -> None:
    per_user = sample.groupby("user_id")
    assert per_user.ngroups == POPULATION_SIZE  # 40 events each on average: all appear
    assert (per_user.dept.nunique() == 1).all()
    assert per_user.size().min() >= 10


def test_department_shares_follow_the_weights(sample: pd.DataFrame) -> None:
    shares = sample.dept.value_counts(normalize=True)
    for dept, weight in DEPARTMENT_WEIGHTS.items():
        assert abs(shares[dept] - weight) < 0.006, dept  # sd ~0.001 at 200k events


def test_employees_mostly_use_their_home_building_but_not_only(sample: pd.DataFrame) -> None:
    home = sample.groupby("user_id").building_location.agg(lambda s: s.value_counts().index[0])
    at_home = (sample.building_location == sample.user_id.map(home)).mean()
    assert abs(at_home - HOME_SHARE) < 0.01
    visited = sample.groupby("user_id").building_location.nunique()
    assert (visited >= 2).mean() > 0.95


def test_about_one_in_51_attempts_is_denied(sample: pd.DataFrame) -> None:
    denied = ~sample.access_granted
    assert abs(denied.mean() - DENIED_SHARE) < 0.002  # sd ~0.0003
    assert (sample.duration_s[denied] == 0).all()
    assert (sample.duration_s[~denied] > 0).all()


def test_sessions_mostly_a_working_day_a_quarter_under_four_hours(sample: pd.DataFrame) -> None:
    granted = sample.duration_s[sample.access_granted]
    short = granted < COMPLIANCE_SECONDS
    assert abs(short.mean() - SHORT_SHARE) < 0.01  # sd ~0.001
    assert granted.max() <= 12 * 3600
    assert 7.5 * 3600 < granted[~short].median() < 9.5 * 3600


def test_arrivals_peak_on_weekday_mornings(sample: pd.DataFrame) -> None:
    weekday = sample[sample.in_weekday < 5]
    by_hour = weekday.in_hour.value_counts().reindex(range(24), fill_value=0)
    assert 7 <= int(np.argmax(by_hour.to_numpy())) <= 9
    assert by_hour[7:10].mean() > 5 * by_hour[0:5].mean()
    per_day = sample.groupby(sample.badge_in_timestamp.dt.date).size()
    weekdays = per_day[[d.weekday() < 5 for d in per_day.index]]
    weekends = per_day[[d.weekday() >= 5 for d in per_day.index]]
    assert weekends.mean() < 0.3 * weekdays.mean()


def test_badge_in_follows_the_arrival_shape(sample: pd.DataFrame) -> None:
    observed = np.bincount(sample.in_weekday * 24 + sample.in_hour, minlength=168) / len(sample)
    expected = shape().arrival.reshape(168, 12).sum(axis=1) / N_BINS
    assert 0.5 * np.abs(observed - expected).sum() < 0.03  # total variation distance


def test_event_rate_follows_the_week_and_never_stops(sample: pd.DataFrame) -> None:
    per_hour = np.bincount(sample.out_how, minlength=168) / WEEKS
    assert per_hour.min() > 0
    assert per_hour.max() > 8 * per_hour.min()
    weekday_17h = per_hour[[d * 24 + 17 for d in range(5)]].mean()
    sunday_3h = per_hour[6 * 24 + 3]
    assert weekday_17h > 5 * sunday_3h


def test_shape_tables_are_consistent() -> None:
    s = shape()
    assert abs(s.rate.mean() - 1) < 1e-12
    assert abs(s.arrival.mean() - 1) < 1e-12
    assert s.cum[-1] == WEEK_S
    assert np.all(np.diff(s.cum) > 0)
    assert abs(s.duration.sum() - 1) < 1e-12
    assert s.duration[0] == pytest.approx(DENIED_SHARE)
    assert s.rate.min() > 0.1  # never (nearly) zero


def test_bin_edges_from_runs_match_the_per_element_definition() -> None:
    s = shape()
    rng = np.random.default_rng(0)
    for span in (10.0, 5 * WEEK_S, 1e9):  # dense and sparse paths
        on_edges = s.edge(np.arange(-5, 5, dtype=np.int64))  # exactly on edges, around week 0
        warped = np.sort(np.concatenate([rng.uniform(-WEEK_S, span, 5000), on_edges, on_edges]))
        g, counts = s.edge_runs(warped)
        assert np.array_equal(np.repeat(g, counts), s.edge_index(warped))
        per = np.repeat(g, counts)
        assert np.all(s.edge(per) <= warped)
        assert np.all(warped < s.edge(per + 1))


# --- the live clock ------------------------------------------------------------------------------------


def test_event_zero_happens_at_the_stream_start() -> None:
    stream = BadgeStream(5, 10.0, MONDAY)
    assert stream.available(MONDAY - timedelta(microseconds=1)) == 0
    assert stream.available(MONDAY) == 1
    first = stream.read(0, 10, MONDAY)
    assert first.num_rows == 1
    assert first.column("badge_out_timestamp")[0].as_py() == MONDAY.replace(tzinfo=None)


def test_the_average_rate_over_a_week_is_events_per_second() -> None:
    for rate in (0.5, 200.0, 12_345.0):
        stream = BadgeStream(5, rate, MONDAY + timedelta(hours=7, minutes=13))
        week_later = stream.stream_start + timedelta(weeks=1)
        assert abs(stream.available(week_later) - rate * WEEK_S) <= 1


@pytest.mark.parametrize("rate", [0.05, 3.0, 200.0, 50_000.0])
def test_available_is_exactly_the_events_whose_time_has_come(rate: float) -> None:
    start = datetime(2025, 6, 6, 13, 14, 15, 161718, tzinfo=UTC)
    timeline = Timeline(start, rate)
    stream = BadgeStream(5, rate, start)
    rng = np.random.default_rng(1)
    for offset in rng.uniform(0, 3 * WEEK_S, 40):
        now = start + timedelta(seconds=float(offset))
        n = stream.available(now)
        assert n >= 1
        assert timeline.time_of(n - 1) <= to_us(now) < timeline.time_of(n)


def test_reads_never_look_ahead() -> None:
    start = MONDAY + timedelta(hours=16)
    stream = BadgeStream(5, 100.0, start)
    now = start + timedelta(seconds=30)
    got = stream.read(1000, 100_000, now)
    assert 0 < got.num_rows < 100_000
    latest = got.column("badge_out_timestamp").cast(pa.int64()).to_numpy().max()
    assert latest <= to_us(now)
    assert got.column("event_id")[-1].as_py() == stream.available(now) - 1
    assert stream.read(stream.available(now), 10, now).num_rows == 0
    assert stream.read(0, 10, now).equals(table(seed=5, count=10, rate=100.0, at=start))
    # Record version 2 reads the same records (plus door_id), and never further ahead.
    v2 = stream.read(1000, 100_000, now, version=2)
    assert v2.drop_columns(["door_id"]).equals(got)


def test_the_live_rate_follows_the_weekly_shape() -> None:
    stream = BadgeStream(5, 100.0, MONDAY)

    def events_in_hour(day: int, hour: int) -> int:
        begin = MONDAY + timedelta(days=day, hours=hour)
        return stream.available(begin + timedelta(hours=1)) - stream.available(begin)

    tuesday_17h, sunday_3h = events_in_hour(1, 17), events_in_hour(6, 3)
    assert sunday_3h > 0
    assert tuesday_17h > 5 * sunday_3h


def test_firehose_has_everything_available() -> None:
    stream = BadgeStream(5, 0.0, MONDAY)
    assert stream.firehose
    assert stream.available(MONDAY - timedelta(days=1)) == MAX_EVENTS
    assert stream.read(10**9, 7, MONDAY).num_rows == 7
