"""The column-wise JSON reader: it accepts exactly the canonical form, and on every body the client's
JSON path (``validate_json``) gives what the general path (orjson, then per-record columns) gives.

Each case states which path it takes, so both are exercised: a body that only carries odd *values*
(unknown department, badge-out before badge-in, unparseable timestamp text, "},{" inside a string, ...)
stays on the fast path; one that is odd *as JSON* (a null, a missing field, a number as a string,
whitespace, an escape, a truncated body, ...) falls back. A seeded fuzz of byte edits checks the
structural argument in source/json_decode.py: whatever the edit, both paths agree.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
import pyarrow as pa
import pytest

from api.encoding import encode_json
from api.generators import generate_columns
from source.json_decode import canonical_columns
from source.validation import (
    UndecodableBodyError,
    UnexpectedBodyError,
    Validated,
    decode_json,
    validate_json,
    validate_rows,
)
from utils.records import FIELDS, QUARANTINE_SCHEMA, RECORD_SCHEMA

START = datetime(2025, 3, 3, tzinfo=UTC)


def service_body(cursor: int, count: int, version: int = 1) -> bytes:
    """A body exactly as the service writes it (record ``version``)."""
    columns = generate_columns(7, cursor, count, stream_start=START, events_per_second=0)
    return bytes(encode_json(columns, version))


def row(i: int, **changes: Any) -> dict[str, Any]:
    record = {
        "event_id": i,
        "user_id": f"0b6f6a52-6f58-4d3e-9a55-2f3c4a1c{i:04d}",
        "dept": "HR",
        "building_location": "Grace",
        "badge_in_timestamp": "2025-03-03T08:00:00.000000Z",
        "badge_out_timestamp": "2025-03-03T16:30:00.250000Z",
        "access_granted": i % 3 != 0,
    }
    record.update(changes)
    return record


def body_of(rows: list[Any]) -> bytes:
    """Compact JSON in the rows' own key order: canonical when the rows are."""
    return orjson.dumps(rows)


Outcome = tuple[str, Any, Any]


def outcome(decode: Callable[[bytes], Validated], body: bytes) -> Outcome:
    """What a path makes of ``body``: its two tables, or the class of the error it raised."""
    try:
        result = decode(body)
    except (UndecodableBodyError, UnexpectedBodyError) as exc:
        return ("error", type(exc), None)
    return ("ok", result.valid, result.invalid)


def general(body: bytes) -> Validated:
    return validate_rows(decode_json(body))


def assert_same(body: bytes) -> Outcome:
    """Both paths agree on ``body`` (equal tables with equal schemas, or the same error); returns the outcome."""
    fast, slow = outcome(validate_json, body), outcome(general, body)
    assert fast[0] == slow[0], (fast, slow)
    if fast[0] == "error":
        assert fast[1] is slow[1]
    else:
        assert fast[1].schema == slow[1].schema
        # The contract's columns first; extra fields (kept, source.validation) only after them, and only
        # off the fast path: a canonical body has none.
        assert pa.schema(list(fast[1].schema)[: len(RECORD_SCHEMA)]) == RECORD_SCHEMA
        if canonical_columns(body) is not None:
            assert fast[1].schema == RECORD_SCHEMA
        assert fast[2].schema == slow[2].schema == QUARANTINE_SCHEMA
        assert fast[1].equals(slow[1]), (fast[1].to_pylist()[:3], slow[1].to_pylist()[:3])
        assert fast[2].equals(slow[2]), (fast[2].to_pylist(), slow[2].to_pylist())
    return fast


# --- the canonical form is read column-wise, with orjson's values --------------------------------------


@pytest.mark.parametrize("count", [1, 2, 3, 1000])
def test_service_bodies_are_canonical_and_read_exactly(count: int) -> None:
    body = service_body(50, count)
    columns = canonical_columns(body)
    assert columns is not None
    rows = orjson.loads(body)
    assert {name: columns[name].to_pylist() for name in FIELDS} == {name: [r[name] for r in rows] for name in FIELDS}
    assert columns["event_id"].type == pa.int64()
    assert columns["access_granted"].type == pa.bool_()
    result = assert_same(body)
    assert result[1].num_rows == count
    assert result[2].num_rows == 0


def test_columns_do_not_hold_on_to_the_body() -> None:
    body = bytearray(service_body(0, 20))
    columns = canonical_columns(body)
    assert columns is not None
    before = columns["user_id"].to_pylist()
    body[:] = b"x" * len(body)  # the client's buffer is reused or freed after decoding
    assert columns["user_id"].to_pylist() == before


# --- odd values in a canonical body: fast path, same refusals ------------------------------------------

VALUE_CASES: list[tuple[dict[str, Any], str | None]] = [
    ({"dept": "Marketing"}, "unknown dept"),
    ({"building_location": "Atlantis"}, "unknown building_location"),
    ({"badge_out_timestamp": "2025-03-03T07:00:00.000000Z"}, "badge_out_timestamp before badge_in_timestamp"),
    ({"user_id": ""}, "empty user_id"),
    ({"event_id": -4}, "negative event_id"),
    ({"event_id": 0}, None),
    ({"badge_in_timestamp": "not a time"}, "invalid badge_in_timestamp"),
    ({"badge_out_timestamp": "2025-02-30T08:00:00Z"}, "invalid badge_out_timestamp"),
    ({"badge_out_timestamp": "2025-03-03T18:30:00+02:00"}, None),  # an offset, normalized to UTC
    ({"badge_in_timestamp": "2025-03-03 08:00:00"}, None),
    ({"user_id": "a},{b"}, None),  # the text trick's trap: harmless here, quotes delimit the values
    ({"user_id": "x}]"}, None),
    ({"dept": "Ingeniería"}, "unknown dept"),  # UTF-8
    ({"user_id": "🚪-7"}, None),
    ({"event_id": 999_999_999_999_999_999}, None),  # 18 digits
]


@pytest.mark.parametrize(("change", "reason"), VALUE_CASES)
def test_odd_values_in_a_canonical_body_take_the_fast_path_with_the_same_result(
    change: dict[str, Any], reason: str | None
) -> None:
    rows = [row(i) for i in range(1, 40)]
    rows[17] = row(18, **change)
    body = body_of(rows)
    assert canonical_columns(body) is not None
    kind, valid, invalid = assert_same(body)
    assert kind == "ok"
    if reason is None:
        assert (valid.num_rows, invalid.num_rows) == (39, 0)
    else:
        assert valid.num_rows == 38
        assert reason in invalid.column("reason")[0].as_py()
        assert invalid.column("event_id")[0].as_py() == rows[17]["event_id"]


def test_several_odd_values_give_every_reason_on_both_paths() -> None:
    rows = [row(i) for i in range(10)]
    rows[3] = row(3, dept="Marketing", badge_out_timestamp="2025-03-03T07:00:00.000000Z")
    rows[8] = row(8, user_id="", building_location="Atlantis", badge_in_timestamp="soon")
    body = body_of(rows)
    assert canonical_columns(body) is not None
    _, valid, invalid = assert_same(body)
    assert valid.column("event_id").to_pylist() == [0, 1, 2, 4, 5, 6, 7, 9]
    reasons = invalid.column("reason").to_pylist()
    assert reasons[0] == "unknown dept; badge_out_timestamp before badge_in_timestamp"
    assert reasons[1] == "invalid badge_in_timestamp; empty user_id; unknown building_location"
    assert invalid.column("access_granted").to_pylist() == ["false", "true"]  # as text, like orjson's bools


# --- bodies that are odd as JSON: the general path, same result ---------------------------------------

ODD_RECORDS: list[Any] = [
    row(5, user_id=None),
    row(5, access_granted=None),
    {k: v for k, v in row(5).items() if k != "dept"},
    {**row(5), "extra": 1},
    {"user_id": "u", **row(5)},  # another key order
    row(5, event_id="5"),
    row(5, event_id=1.5),
    row(5, event_id=2**63),
    row(5, user_id=7),
    row(5, access_granted="true"),
    row(5, access_granted=1),
    row(5, dept='H"R'),  # an escaped quote
    row(5, user_id="tab\there"),  # an escaped control character
    row(5, user_id='x"},{"event_id":6,"user_id":"y'),  # looks like a record boundary
    row(5, badge_in_timestamp={"at": "2025-03-03T08:00:00Z"}),
    row(5, dept=["HR"]),
    ["not", "an", "object"],
    "a string",
    None,
    7,
]


@pytest.mark.parametrize("odd", ODD_RECORDS, ids=lambda odd: orjson.dumps(odd).decode()[:40])
def test_a_record_that_is_odd_as_json_sends_the_whole_body_the_general_way(odd: Any) -> None:
    rows: list[Any] = [row(i) for i in range(12)]
    rows[6] = odd
    body = body_of(rows)
    assert canonical_columns(body) is None
    kind, valid, invalid = assert_same(body)
    assert kind == "ok"
    assert valid.num_rows + invalid.num_rows == 12  # nothing dropped


def test_an_extra_field_takes_the_general_way_and_is_kept() -> None:
    rows = [row(i) for i in range(12)]
    rows[6] = {**row(6), "extra": 1}
    kind, valid, invalid = assert_same(body_of(rows))
    assert (kind, invalid.num_rows) == ("ok", 0)
    assert valid.schema == RECORD_SCHEMA.append(pa.field("extra", pa.int64()))
    assert valid.column("extra").to_pylist() == [None] * 6 + [1] + [None] * 5


@pytest.mark.parametrize("count", [1, 2, 1000])
def test_a_version_2_body_is_not_canonical_and_gives_the_version_1_columns_plus_door_id(count: int) -> None:
    v1, v2 = service_body(50, count), service_body(50, count, version=2)
    assert canonical_columns(v1) is not None
    assert canonical_columns(v2) is None  # refused by the first record's end, before any other work
    kind, valid, invalid = assert_same(v2)
    assert (kind, invalid.num_rows) == ("ok", 0)
    _, valid_v1, _ = assert_same(v1)
    assert valid.drop_columns(["door_id"]).equals(valid_v1)
    assert valid.schema.field("door_id") == pa.field("door_id", pa.string())
    assert valid.column("door_id").to_pylist() == [r["door_id"] for r in orjson.loads(v2)]


def with_id(text: bytes) -> bytes:
    """A one-record body whose event_id is written as ``text``."""
    return body_of([row(1)]).replace(b'"event_id":1,', b'"event_id":' + text + b",", 1)


TWO = body_of([row(0), row(1)])  # one denied record (false), one granted (true)
RAW_BODIES: list[tuple[bytes, str]] = [
    (b"[]", "ok"),
    (b"[ ]", "ok"),
    (b"{}", "error"),
    (b'{"detail": "no"}', "error"),
    (b"", "error"),
    (b"null", "error"),
    (with_id(b"01"), "error"),  # a leading zero is not JSON (Arrow's cast would take it)
    (with_id(b"-01"), "error"),
    (with_id(b"0x1"), "error"),  # nor is hex (Arrow's cast would take it too)
    (with_id(b"+1"), "error"),
    (with_id(b"-"), "error"),
    (with_id(b""), "error"),
    (with_id(b"1.0"), "ok"),  # a float: "invalid event_id"
    (with_id(b"1e3"), "ok"),
    (with_id(b"9223372036854775807"), "ok"),  # 19 digits: beyond the fast path's 18, still an int64
    (TWO.replace(b"true", b"True"), "error"),
    (TWO.replace(b"false", b"fals"), "error"),
    (TWO.replace(b"},{", b"}, {"), "ok"),
    (TWO.replace(b'"dept":', b'"dept": '), "ok"),
    (TWO + b"\n", "ok"),
    (b" " + TWO, "ok"),
    (TWO[:-1], "error"),  # truncated
    (TWO + b"]", "error"),
    (TWO[:-2] + b",}]", "error"),
    (TWO[:-1] + b",]", "error"),
    (TWO.replace(b"HR", b"H\xffR"), "error"),  # not UTF-8
    (TWO.replace(b"HR", b"H\xed\xa0\x80R"), "error"),  # a UTF-8 surrogate
    (TWO.replace(b"HR", b"H\x00R"), "error"),  # a raw control character
    (TWO.replace(b"HR", b"H\\u0052"), "ok"),  # an escape that is "HR"
    (TWO.replace(b'"dept":"HR"', b'"dept":"HR","dept":"HR"'), "ok"),  # a duplicate
]


@pytest.mark.parametrize(("body", "kind"), RAW_BODIES, ids=lambda x: repr(x)[:50] if isinstance(x, bytes) else x)
def test_non_canonical_bodies_fall_back_and_fail_or_succeed_alike(body: bytes, kind: str) -> None:
    assert canonical_columns(body) is None
    assert assert_same(body)[0] == kind


@pytest.mark.parametrize(
    ("text", "value"), [(b"-0", 0), (b"0", 0), (b"-7", -7), (b"123456789012345678", 123456789012345678)]
)
def test_canonical_integers_read_like_orjson(text: bytes, value: int) -> None:
    body = with_id(text)
    columns = canonical_columns(body)
    assert columns is not None
    assert columns["event_id"].to_pylist() == [value] == [orjson.loads(body)[0]["event_id"]]
    assert_same(body)


def test_a_few_malformed_records_in_a_large_body_give_what_the_general_path_gives() -> None:
    rows = orjson.loads(service_body(1000, 3000))
    rows[10]["dept"] = "Marketing"  # a value: alone, this stays on the fast path
    clean = body_of(rows)
    assert canonical_columns(clean) is not None
    rows[1500]["badge_in_timestamp"] = None
    del rows[2000]["user_id"]
    rows[2999]["event_id"] = "2999"
    mixed = body_of(rows)
    assert canonical_columns(mixed) is None
    _, valid, invalid = assert_same(mixed)
    assert valid.num_rows == 2996
    assert invalid.column("reason").to_pylist() == [
        "unknown dept",
        "missing badge_in_timestamp",
        "missing user_id",
        "invalid event_id",
    ]
    _, clean_valid, _ = assert_same(clean)
    assert clean_valid.num_rows == 2999


# --- the structural argument under random byte edits --------------------------------------------------

EDIT_BYTES = b'"\\,:{}[]0-9tfx eZ\n\x00\xc3'


@pytest.mark.parametrize("seed", range(4))
def test_random_byte_edits_never_make_the_paths_disagree(seed: int) -> None:
    rng = random.Random(seed)
    base = service_body(rng.randrange(10**6), 3)
    fast_taken = 0
    for _ in range(150):
        body = bytearray(base)
        for _ in range(rng.choice((1, 1, 2))):
            at = rng.randrange(len(body))
            action = rng.random()
            if action < 0.6:
                body[at] = rng.choice(EDIT_BYTES)
            elif action < 0.8:
                del body[at]
            else:
                body.insert(at, rng.choice(EDIT_BYTES))
        fast_taken += canonical_columns(bytes(body)) is not None
        assert_same(bytes(body))
    assert 0 < fast_taken < 150  # both paths were met


def test_arrow_integer_parse_refuses_anything_but_digits_after_a_canonical_start() -> None:
    # canonical_columns relies on this: it checks only how an integer starts and lets Arrow parse the rest.
    rng = random.Random(3)
    alphabet = "0123456789-+xXeE. _abcdef,"
    for _ in range(500):
        text = rng.choice("123456789") + "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 6)))
        try:
            parsed: int | None = pa.array([text]).cast(pa.int64())[0].as_py()
        except pa.ArrowInvalid:
            parsed = None
        assert parsed == (int(text) if text.isdigit() else None), text
