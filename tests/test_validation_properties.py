"""Every record is stored or refused with a reason, never fatal: arbitrary records through validation and the writer.

Property tests (Hypothesis): bodies of arbitrary JSON-ish records (any value for any field: extreme
timestamps, huge and negative ids, long strings, nulls, wrong types, non-objects) and Arrow tables with
timestamps of any unit and value go through the client's validation, the pipeline's placement and the
writer into a real lake; each event id ends up exactly once, in the events table or in the quarantine
table with a reason, and nothing raises. Records with arbitrary extra fields (any value, names that
collide with lake columns or with each other, names no column may have) too, and every extra value a
valid record keeps is the value it was sent. Plus the issue's poison record through the whole pipeline.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingestion.placement import place_records
from lake.audit import verify
from lake.storage import LocalStorage
from lake.table import LakeTable, quarantine_files, read_snapshot
from lake.writer import BufferedWriter, FlushThresholds
from processes.pipeline import RunOptions, run
from source.client import FetchResult
from source.validation import Validated, validate_json, validate_table
from testkit.ids import live_ids
from testkit.processes import make_settings
from testkit.records import TEST_IDENTITY, make_records
from utils.records import BUILDINGS, DEPARTMENTS, FIELDS, LAKE_SCHEMA, RECORD_SCHEMA, TEXT_MAX_CHARS

PROPERTY = settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
MISSING = object()  # the field is left out of the record

text = st.text(st.characters(exclude_categories=["Cs"]), max_size=8)  # JSON cannot carry lone surrogates
long_text = st.integers(TEXT_MAX_CHARS - 1, TEXT_MAX_CHARS + 300).map(lambda n: "x" * n)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)  # what a JSON body holds as an integer (orjson's range)
    | st.floats(allow_nan=False, allow_infinity=False)
    | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=4,
)
moments = st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59))
near_bounds = st.datetimes(min_value=datetime(1969, 12, 31), max_value=datetime(1970, 1, 2)) | st.datetimes(
    min_value=datetime(2199, 12, 31), max_value=datetime(2200, 1, 2)
)
timestamps = (moments | near_bounds).map(lambda d: d.isoformat() + "Z") | text | json_values | st.just(MISSING)


def field_values() -> dict[str, st.SearchStrategy[Any]]:
    """Per field: plausible values, values the lake cannot store, wrong types, nulls, absence."""
    junk = json_values | st.just(MISSING)
    return {
        # Any usable id other than its position would break the source's cursor contract (a permanent
        # error of the source, not a record): the position, or an id validation refuses.
        "event_id": st.just("position") | st.integers(-(2**63), -1) | st.integers(2**63, 2**64 - 1) | junk,
        "user_id": st.uuids().map(str) | long_text | junk,
        "dept": st.sampled_from(DEPARTMENTS) | long_text | junk,
        "building_location": st.sampled_from(BUILDINGS) | junk,
        "badge_in_timestamp": timestamps,
        "badge_out_timestamp": timestamps,
        "access_granted": st.booleans() | junk,
    }


@st.composite
def records(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 19)) == 0:
        return draw(json_values)  # not an object at all
    values = field_values()
    record = {name: draw(values[name]) for name in FIELDS}
    return {name: value for name, value in record.items() if value is not MISSING}


# Extra field names: ordinary ones, the version-2 field, case variants of each other and of lake columns,
# and names no column may have.
EXTRA_NAMES = ("door_id", "note", "Note", "score", "duration_s", "EVENT_ID", "a b", "")


@st.composite
def records_with_extras(draw: st.DrawFn) -> Any:
    record = draw(records())
    if isinstance(record, dict):
        for name in draw(st.lists(st.sampled_from(EXTRA_NAMES), max_size=3, unique=True)):
            record[name] = draw(json_values)
    return record


def kept_value(value: Any, kind: pa.DataType) -> Any:
    """What an extra column of type ``kind`` holds for a value sent as ``value`` (source.validation's rules)."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int | float):
        return float(value) if kind == pa.float64() else value
    return orjson.dumps(value).decode()  # an object or array: its JSON text


def body_of(batch: list[Any], cursor: int) -> bytes:
    """The JSON body a source would send: ``"position"`` ids become the record's stream position."""
    placed = [
        {**record, "event_id": cursor + i}
        if isinstance(record, dict) and record.get("event_id") == "position"
        else record
        for i, record in enumerate(batch)
    ]
    return orjson.dumps(placed)


def run_batches(validated: Callable[[int, int], Validated], sizes: list[int], flush_at: int) -> None:
    """Validate batches of ``sizes`` records, place and write them into a fresh lake; check every id is once."""
    with tempfile.TemporaryDirectory() as tmp:
        storage = LocalStorage(Path(tmp) / "lake")
        storage.ensure_layout()
        table = LakeTable.open_or_create(storage, TEST_IDENTITY)
        cursor = 0
        with BufferedWriter(storage, FlushThresholds(flush_at, 60), table=table, position=None) as writer:
            for size in sizes:
                split = validated(cursor, size)
                placed = place_records(FetchResult(split.valid, split.invalid, cursor, cursor + size), cursor, size)
                writer.add(placed.valid, placed.refused)
                cursor += size
        assert writer.fatal_error is None
        stored = live_ids(storage).tolist()
        refused = [pq.read_table(storage.path(f.key)) for f in quarantine_files(storage)]
        quarantined = [i for t in refused for i in t["event_id"].to_pylist()]
        assert sorted(stored + quarantined) == list(range(cursor))  # each record exactly once
        assert all(reason for t in refused for reason in t["reason"].to_pylist())  # each refusal says why
        assert read_snapshot(storage).committed_event_id == (cursor - 1 if cursor else None)
        assert verify(storage, grace_seconds=30).ok


@PROPERTY
@given(
    batches=st.lists(st.lists(records(), max_size=12), min_size=1, max_size=3),
    flush_at=st.sampled_from([3, 1000]),
)
def test_arbitrary_json_records_are_stored_or_refused_never_fatal(batches: list[list[Any]], flush_at: int) -> None:
    bodies = iter(batches)  # run_batches asks for them in order

    def validated(cursor: int, size: int) -> Validated:
        batch = next(bodies)
        assert len(batch) == size
        return validate_json(body_of(batch, cursor))

    run_batches(validated, [len(b) for b in batches], flush_at)


@PROPERTY
@given(
    batches=st.lists(st.lists(records_with_extras(), max_size=12), min_size=1, max_size=3),
    flush_at=st.sampled_from([3, 1000]),
)
def test_arbitrary_extra_fields_are_kept_as_sent_or_refused_never_fatal(
    batches: list[list[Any]], flush_at: int
) -> None:
    bodies = iter(batches)
    lake_names = {name.casefold() for name in LAKE_SCHEMA.names}

    def validated(cursor: int, size: int) -> Validated:
        body = body_of(next(bodies), cursor)
        split = validate_json(body)
        valid = split.valid
        # The contract's columns first, then the extra fields: each with a name a lake column may have,
        # and of a type a JSON body gives.
        assert pa.schema(list(valid.schema)[: len(RECORD_SCHEMA)]) == RECORD_SCHEMA
        extras = valid.schema.names[len(RECORD_SCHEMA) :]
        folded = [name.casefold() for name in extras]
        assert len(set(folded)) == len(folded) and not set(folded) & lake_names
        assert all(name and " " not in name for name in extras)
        kinds = {name: valid.schema.field(name).type for name in extras}
        assert set(kinds.values()) <= {pa.bool_(), pa.int64(), pa.float64(), pa.string()}
        # Every valid record keeps each extra value it was sent (its id is its position: body_of).
        sent = orjson.loads(body)
        for row in valid.select(["event_id", *extras]).to_pylist():
            original = sent[row["event_id"] - cursor]
            assert {name: row[name] for name in extras} == {
                name: kept_value(original.get(name), kinds[name]) for name in extras
            }
        assert all(split.invalid.column("reason").to_pylist())
        return split

    run_batches(validated, [len(b) for b in batches], flush_at)


TIME_UNITS = ("s", "ms", "us", "ns")


@PROPERTY
@given(
    unit=st.sampled_from(TIME_UNITS),
    moments=st.lists(st.tuples(st.integers(-(2**63) + 1, 2**63 - 1), st.integers(-(2**63) + 1, 2**63 - 1)), max_size=8),
    sane=st.lists(st.integers(0, 3 * 10**9), max_size=8),
)
def test_arrow_timestamps_of_any_unit_and_value_are_stored_or_refused(
    unit: str, moments: list[tuple[int, int]], sane: list[int]
) -> None:
    # Extreme raw values in any unit, and sane ones (seconds from 1970 to ~2065) in seconds.
    per_s = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}[unit]
    pairs = moments + [(s, s + d) for s, d in zip(sane, reversed(sane), strict=True)]
    scaled = [(a, b) if (a, b) in moments else (a * per_s, b * per_s) for a, b in pairs]
    scaled = [(a, b) for a, b in scaled if -(2**63) < a < 2**63 and -(2**63) < b < 2**63]
    n = len(scaled)

    def validated(cursor: int, size: int) -> Validated:
        base = make_records(cursor, size)
        kind = pa.timestamp(unit, "UTC") if unit == "ms" else pa.timestamp(unit)
        ins = pa.array([a for a, _ in scaled], pa.int64()).cast(kind)
        outs = pa.array([b for _, b in scaled], pa.int64()).cast(kind)
        return validate_table(base.set_column(4, "badge_in_timestamp", ins).set_column(5, "badge_out_timestamp", outs))

    run_batches(validated, [n], 1000)


def test_the_poison_record_is_refused_with_a_reason_and_the_pipeline_goes_on(lake_root: Path) -> None:
    # Reproduction (issue 12): badge-in 1971, badge-out 2199 passed validation, then duration_s's int32
    # cast raised in the writer, and the pipeline exited 1 on every restart.
    poison = 7

    class JsonSource:
        """A source sending canonical JSON bodies, with the poison record at event ``poison``."""

        def stream_identity(self) -> Any:
            return TEST_IDENTITY

        def get_employee_badge_logs(self, cursor: int | None = None, batch: int | None = None) -> FetchResult:
            assert cursor is not None and batch is not None
            rows = make_records(cursor, batch).to_pylist()
            for row in rows:
                for name in ("badge_in_timestamp", "badge_out_timestamp"):
                    row[name] = row[name].replace(tzinfo=UTC).isoformat().replace("+00:00", "Z")
                if row["event_id"] == poison:
                    row["badge_in_timestamp"], row["badge_out_timestamp"] = (
                        "1971-01-01T08:00:00Z",
                        "2199-01-01T17:00:00Z",
                    )
            split = validate_json(orjson.dumps(rows))
            return FetchResult(split.valid, split.invalid, cursor, cursor + batch, "json")

    settings_ = make_settings(lake_root, BATCH_SIZE=10, BUFFER_RECORDS=10)
    assert run(settings_, RunOptions(max_records=30, compaction=False), source=JsonSource()) == 0
    storage = LocalStorage(lake_root)
    refused = pa.concat_tables([pq.read_table(storage.path(f.key)) for f in quarantine_files(storage)])
    assert refused["event_id"].to_pylist() == [poison]
    assert "duration_s is int32" in refused["reason"][0].as_py()
    stored = live_ids(storage)
    assert stored.tolist() == [i for i in range(int(np.max(stored)) + 1) if i != poison] and len(stored) >= 29
    assert verify(storage, grace_seconds=30).ok


def test_text_length_counts_characters_not_bytes_in_plain_and_dictionary_columns() -> None:
    table = make_records(0, 4)
    accented = "é" * TEXT_MAX_CHARS  # twice as many bytes as characters: still within the bound
    too_long = "u" * (TEXT_MAX_CHARS + 1)
    user_ids = pa.array([accented, too_long, "fine", too_long], pa.string())
    for column in (user_ids, user_ids.dictionary_encode()):
        result = validate_table(table.set_column(table.schema.get_field_index("user_id"), "user_id", column))
        assert result.valid["event_id"].to_pylist() == [0, 2]
        assert result.invalid["event_id"].to_pylist() == [1, 3]
        assert set(result.invalid["reason"].to_pylist()) == {f"user_id longer than {TEXT_MAX_CHARS} characters"}
