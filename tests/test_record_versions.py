"""Record versions: the service's version 2 is version 1 plus ``door_id``; the client keeps extra fields.

The service: ``RECORD_VERSION`` and the ``version`` request parameter choose the record; version 2 carries
the very records of version 1 (same values for the same event id) plus ``door_id``, deterministic from
(seed, event id), null exactly where access was not granted, through JSON and Arrow; version 1 bodies
are byte for byte what they were before versions existed. The client: every field beyond RECORD_SCHEMA
is kept after the contract's columns, typed as the body has it; mixed types, name collisions and
impossible names refuse the records concerned, each with a reason.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pyarrow as pa
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.encoding import ARROW_WIRE_SCHEMA, ARROW_WIRE_SCHEMA_V2, encode_arrow, encode_arrow_table, encode_json
from api.generators import MAX_EVENTS, door_codes, generate_columns, generate_table
from api.main import create_app
from lake.identity import SCHEMA_VERSION
from source.client import BadgeLogClient
from source.json_decode import canonical_columns
from source.validation import Validated, decode_arrow, validate_json, validate_rows, validate_table
from testkit.http import MakeClient, mock_clients
from testkit.processes import free_port, make_settings, running_service
from utils.config import SPECS, load_settings
from utils.errors import ConfigError
from utils.protocol import ARROW_MEDIA_TYPE, JSON_MEDIA_TYPE, NEXT_CURSOR_HEADER
from utils.records import (
    BUILDINGS,
    DOOR_ID,
    DOOR_IDS,
    DOORS_PER_BUILDING,
    FIELDS,
    QUARANTINE_SCHEMA,
    RECORD_SCHEMA,
    RECORD_V2_FIELDS,
    RECORD_V2_SCHEMA,
    RECORD_VERSIONS,
    record_schema,
)

START = datetime(2025, 3, 3, 6, 30, tzinfo=UTC)
SEED = 42
URL = "http://badge.test/employee-badge-logs/"
ARROW = {"Accept": ARROW_MEDIA_TYPE}
RECORDS = "/employee-badge-logs/"


def table(start: int, count: int, version: int = 1, seed: int = SEED, rate: float = 0.0) -> pa.Table:
    return generate_table(seed, start, count, stream_start=START, events_per_second=rate, version=version)


def wire_timestamps(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of a table as the JSON body writes them (timestamps as text)."""
    for row in rows:
        for key in ("badge_in_timestamp", "badge_out_timestamp"):
            row[key] = row[key].strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return rows


# --- the record: version 2 = version 1 + door_id ------------------------------------------------------


@pytest.mark.parametrize(("start", "count", "rate"), [(0, 5000, 0.0), (987_654_321, 40_000, 0.0), (10_000, 3000, 50.0)])
def test_version_2_is_version_1_plus_door_id_for_the_same_ids(start: int, count: int, rate: float) -> None:
    v1, v2 = table(start, count, 1, rate=rate), table(start, count, 2, rate=rate)
    assert v1.schema == RECORD_SCHEMA
    assert v2.schema == RECORD_V2_SCHEMA == record_schema(2)
    assert v2.column_names == list(RECORD_V2_FIELDS) == [*FIELDS, DOOR_ID]
    assert v2.drop_columns([DOOR_ID]).equals(v1)
    assert v2.schema.field(DOOR_ID).nullable and v2.schema.field(DOOR_ID).type == pa.string()


def test_door_id_is_null_exactly_where_access_was_not_granted_and_a_door_of_the_building() -> None:
    v2 = table(0, 50_000, 2)
    granted = np.asarray(v2.column("access_granted").to_numpy(), dtype=bool)
    doors = v2.column(DOOR_ID).to_pylist()
    assert 0 < int((~granted).sum()) < 50_000  # both kinds occur, so the column really has nulls
    assert [d is None for d in doors] == (~granted).tolist()
    assert v2.column(DOOR_ID).null_count == int((~granted).sum())
    used: set[str] = set()
    for building, door in zip(v2.column("building_location").to_pylist(), doors, strict=True):
        if door is None:
            continue
        name, _, number = door.rpartition("-D")
        assert name == building and len(number) == 2
        assert 1 <= int(number) <= DOORS_PER_BUILDING[building]
        used.add(door)
    assert used == set(DOOR_IDS)  # every door of every building is used
    assert len(DOOR_IDS) == sum(DOORS_PER_BUILDING.values()) and set(DOORS_PER_BUILDING) == set(BUILDINGS)


def test_doors_are_about_uniform_within_a_building() -> None:
    columns = generate_columns(SEED, 0, 200_000, stream_start=START, events_per_second=0)
    codes = columns.door[columns.door >= 0]
    counts = np.bincount(codes, minlength=len(DOOR_IDS))
    first = 0
    for building in BUILDINGS:
        n = DOORS_PER_BUILDING[building]
        mine = counts[first : first + n]
        assert mine.min() > 0.85 * mine.mean() and mine.max() < 1.15 * mine.mean(), (building, mine)
        first += n


def test_door_id_is_deterministic_from_seed_and_event_id_however_the_range_is_split() -> None:
    whole = table(1000, 30_000, 2)
    parts = pa.concat_tables([table(1000, 7, 2), table(1007, 16_384, 2), table(17_391, 13_609, 2)])
    assert parts.equals(whole)
    assert table(1000, 30_000, 2).equals(whole)
    other_seed = table(1000, 30_000, 2, seed=SEED + 1).column(DOOR_ID).to_pylist()
    same = sum(a == b for a, b in zip(whole.column(DOOR_ID).to_pylist(), other_seed, strict=True))
    assert same < 0.2 * len(other_seed)  # another seed, other doors (and other buildings)
    # Not on the rate: where another timeline grants access too, the door is the same.
    live, fire = table(500, 5000, 2, rate=50.0), table(500, 5000, 2)
    both = [
        a and b for a, b in zip(live["access_granted"].to_pylist(), fire["access_granted"].to_pylist(), strict=True)
    ]
    assert 0 < sum(both) < 5000
    assert [d for d, b in zip(live[DOOR_ID].to_pylist(), both, strict=True) if b] == [
        d for d, b in zip(fire[DOOR_ID].to_pylist(), both, strict=True) if b
    ]


def test_door_codes_of_one_record_are_those_of_a_batch() -> None:
    ids = np.arange(10**6, 10**6 + 300, dtype=np.int64)
    building = (ids % len(BUILDINGS)).astype(np.intp)
    granted = ids % 7 != 0
    batch = door_codes(SEED, ids, building, granted)
    one_by_one = [int(door_codes(SEED, ids[i : i + 1], building[i : i + 1], granted[i : i + 1])[0]) for i in range(300)]
    assert batch.tolist() == one_by_one
    assert ((batch < 0) == ~granted).all()


def test_door_codes_near_the_last_event_id_and_for_the_largest_seed() -> None:
    columns = generate_columns(2**63 - 1, MAX_EVENTS - 1000, 1000, stream_start=START, events_per_second=0)
    codes = columns.door
    assert ((codes >= 0) == columns.granted).all()
    assert codes.max() < len(DOOR_IDS)


@pytest.mark.parametrize("version", [0, 3, -1])
def test_an_unknown_version_is_refused_everywhere(version: int) -> None:
    columns = generate_columns(SEED, 0, 5, stream_start=START, events_per_second=0)
    for build in (columns.to_table, lambda v: encode_json(columns, v), lambda v: encode_arrow(columns, v)):
        with pytest.raises(ValueError, match="record version must be one of 1, 2"):
            build(version)
    with pytest.raises(ValueError):
        record_schema(version)
    assert version not in RECORD_VERSIONS


# --- the bodies ----------------------------------------------------------------------------------------

# sha256 of version-1 JSON bodies as the service wrote them before record versions existed (api/ at the
# commit before this change): version 1 stays byte for byte the same.
V1_JSON_SHA256 = {
    (42, 0, 5000, 0.0): "65082d448a595cd304e84833b568e43adf0407f70cf05b863f657d0bad6a8712",
    (7, 123456, 20000, 0.0): "aa015217378310af184c1cc4259b23d089fa8a4192772c775f208b8627d852e0",
    (42, 10**9, 3000, 50.0): "867acbf985c360486c1d0f78bb8de6008c541dcddc95a08936eb01d458098589",
}


@pytest.mark.parametrize("key", list(V1_JSON_SHA256))
def test_version_1_bodies_are_byte_for_byte_what_they_were(key: tuple[int, int, int, float]) -> None:
    seed, start, count, rate = key
    columns = generate_columns(seed, start, count, stream_start=START, events_per_second=rate)
    body = bytes(encode_json(columns))
    assert body == bytes(encode_json(columns, 1))
    assert hashlib.sha256(body).hexdigest() == V1_JSON_SHA256[key]
    arrow = bytes(encode_arrow(columns))
    assert arrow == bytes(encode_arrow(columns, 1))
    assert decode_arrow(arrow).schema == ARROW_WIRE_SCHEMA
    assert canonical_columns(body) is not None  # still the client's fast path


@pytest.mark.parametrize("count", [1, 2, 3000])
def test_version_2_json_is_version_1_json_plus_door_id_in_canonical_form(count: int) -> None:
    columns = generate_columns(SEED, 40_000, count, stream_start=START, events_per_second=0)
    v1, v2 = bytes(encode_json(columns)), bytes(encode_json(columns, 2))
    rows1, rows2 = orjson.loads(v1), orjson.loads(v2)
    assert [list(r) for r in rows2] == [[*FIELDS, DOOR_ID]] * count  # door_id last
    assert [{k: v for k, v in r.items() if k != DOOR_ID} for r in rows2] == rows1
    expected = table(40_000, count, 2).column(DOOR_ID).to_pylist()
    assert [r[DOOR_ID] for r in rows2] == expected
    assert orjson.dumps(rows2) == v2  # compact, in key order: the same canonical style as the rest
    assert v2.count(b'"door_id":null') == expected.count(None)
    assert v2.count(b'"access_granted":false,"door_id":null}') == expected.count(None)


def test_version_2_json_has_both_null_and_text_doors() -> None:
    columns = generate_columns(SEED, 0, 3000, stream_start=START, events_per_second=0)
    body = bytes(encode_json(columns, 2))
    assert b'"access_granted":false,"door_id":null}' in body
    assert b'"access_granted":true,"door_id":"' in body
    assert body.endswith(b"}]") and body.startswith(b'[{"event_id":0,')


def test_version_2_arrow_is_version_1_arrow_plus_a_dictionary_door_id() -> None:
    columns = generate_columns(SEED, 7000, 5000, stream_start=START, events_per_second=0)
    wire = decode_arrow(bytes(encode_arrow(columns, 2)))
    assert wire.schema == ARROW_WIRE_SCHEMA_V2
    assert ARROW_WIRE_SCHEMA_V2.field(DOOR_ID).nullable
    assert pa.types.is_dictionary(wire.schema.field(DOOR_ID).type)
    assert wire.drop_columns([DOOR_ID]).equals(decode_arrow(bytes(encode_arrow(columns))))
    plain = wire.column(DOOR_ID).cast(pa.string())
    assert plain.to_pylist() == table(7000, 5000, 2).column(DOOR_ID).to_pylist()


def test_empty_bodies_of_both_versions() -> None:
    columns = generate_columns(SEED, 10, 0, stream_start=START, events_per_second=0)
    assert bytes(encode_json(columns, 2)) == b"[]"
    assert decode_arrow(bytes(encode_arrow(columns, 2))).schema == ARROW_WIRE_SCHEMA_V2
    assert columns.to_table(2).schema == RECORD_V2_SCHEMA


# --- the service: RECORD_VERSION and ?version= ---------------------------------------------------------


def build(tmp_path: Path, **overrides: object) -> FastAPI:
    env: dict[str, object] = {"GENERATOR_SEED": SEED, "EVENTS_PER_SECOND": 0, "GENERATOR_STREAM_START": START}
    env.update(overrides)
    return create_app(make_settings(tmp_path / "lake", **env))


@pytest.fixture
def v1_service(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(build(tmp_path)) as c:
        yield c


@pytest.fixture
def v2_service(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(build(tmp_path, RECORD_VERSION=2)) as c:
        yield c


def records_of(response: httpx.Response) -> pa.Table:
    """A response's records as the client validates them (none refused)."""
    if response.headers["content-type"] == ARROW_MEDIA_TYPE:
        validated = validate_table(decode_arrow(response.content))
    else:
        validated = validate_json(response.content)
    assert validated.invalid.num_rows == 0
    return validated.valid


@pytest.mark.parametrize("headers", [{}, ARROW], ids=["json", "arrow"])
def test_the_default_is_version_1_and_version_2_is_asked_for(v1_service: TestClient, headers: dict[str, str]) -> None:
    params = {"batch": 2000, "cursor": 300}
    default = v1_service.get(RECORDS, params=params, headers=headers)
    one = v1_service.get(RECORDS, params={**params, "version": 1}, headers=headers)
    two = v1_service.get(RECORDS, params={**params, "version": 2}, headers=headers)
    assert default.content == one.content
    assert records_of(default).schema == RECORD_SCHEMA  # v1: exactly the contract
    assert records_of(default).equals(table(300, 2000))
    assert records_of(two).equals(table(300, 2000, 2))
    assert records_of(two).drop_columns([DOOR_ID]).equals(records_of(default))
    assert two.headers[NEXT_CURSOR_HEADER] == default.headers[NEXT_CURSOR_HEADER] == "2300"


@pytest.mark.parametrize("headers", [{}, ARROW], ids=["json", "arrow"])
def test_record_version_2_is_the_default_when_set_and_version_1_still_asked_for(
    v2_service: TestClient, v1_service: TestClient, headers: dict[str, str]
) -> None:
    params = {"batch": 2000, "cursor": 300}
    default = v2_service.get(RECORDS, params=params, headers=headers)
    assert default.content == v1_service.get(RECORDS, params={**params, "version": 2}, headers=headers).content
    assert records_of(default).equals(table(300, 2000, 2))
    one = v2_service.get(RECORDS, params={**params, "version": 1}, headers=headers)
    assert one.content == v1_service.get(RECORDS, params=params, headers=headers).content


def test_json_and_arrow_of_version_2_carry_the_same_records(v2_service: TestClient) -> None:
    params = {"batch": 5000, "cursor": 0}
    as_json = records_of(v2_service.get(RECORDS, params=params))
    as_arrow = records_of(v2_service.get(RECORDS, params=params, headers=ARROW))
    assert as_json.equals(as_arrow)
    assert 0 < as_json.column(DOOR_ID).null_count < 5000


@pytest.mark.parametrize("version", ["0", "3", "-1", "99999999999"])
def test_an_unknown_version_is_a_400_naming_the_versions(v1_service: TestClient, version: str) -> None:
    r = v1_service.get(RECORDS, params={"batch": 5, "version": version})
    assert r.status_code == 400
    assert r.json()["detail"] == "version must be one of 1, 2"


@pytest.mark.parametrize("version", ["two", "1.5", ""])
def test_a_version_that_is_no_integer_is_a_422(v1_service: TestClient, version: str) -> None:
    assert v1_service.get(RECORDS, params={"batch": 5, "version": version}).status_code == 422


def test_a_refused_version_does_not_move_the_services_own_position(v1_service: TestClient) -> None:
    assert v1_service.get(RECORDS, params={"batch": 5, "version": 7}).status_code == 400
    assert [r["event_id"] for r in v1_service.get(RECORDS, params={"batch": 5, "version": 2}).json()] == list(range(5))


def test_root_reports_the_record_versions_and_keeps_the_identity(
    v1_service: TestClient, v2_service: TestClient
) -> None:
    one, two = v1_service.get("/").json(), v2_service.get("/").json()
    assert (one["record_version"], two["record_version"]) == (1, 2)
    assert one["record_versions"] == two["record_versions"] == [1, 2] == list(RECORD_VERSIONS)
    # The same stream either way: the identity (and its schema_version) does not follow the record version.
    assert one["identity"] == two["identity"]
    assert one["identity"]["schema_version"] == SCHEMA_VERSION


def test_openapi_documents_the_version_parameter_and_the_version_2_record(v1_service: TestClient) -> None:
    doc = v1_service.get("/openapi.json").json()
    op = doc["paths"][RECORDS]["get"]
    version = next(p for p in op["parameters"] if p["name"] == "version")
    assert version["schema"]["enum"] == [1, 2]
    assert not version.get("required", False)
    v2 = doc["components"]["schemas"]["RecordV2"]["properties"]
    assert list(v2) == [*FIELDS, DOOR_ID]
    assert list(doc["components"]["schemas"]["Record"]["properties"]) == list(FIELDS)  # unchanged


# --- the setting ---------------------------------------------------------------------------------------


def test_record_version_setting_defaults_to_1_and_takes_2() -> None:
    assert load_settings({}, env_file=None).record_version == 1
    assert load_settings({"RECORD_VERSION": "2"}, env_file=None).record_version == 2
    assert load_settings({"RECORD_VERSION": " 1 "}, env_file=None).record_version == 1
    spec = next(s for s in SPECS if s.name == "RECORD_VERSION")
    assert spec.allowed == f"an integer from {min(RECORD_VERSIONS)} to {max(RECORD_VERSIONS)}"
    assert set(range(min(RECORD_VERSIONS), max(RECORD_VERSIONS) + 1)) == set(RECORD_VERSIONS)


@pytest.mark.parametrize("value", ["0", "3", "two", "1.5", "-1"])
def test_another_record_version_is_a_config_error_naming_it(value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"RECORD_VERSION": value}, env_file=None)
    assert info.value.variable == "RECORD_VERSION"
    assert "RECORD_VERSION" in str(info.value) and "from 1 to 2" in str(info.value)


# --- the client: extra fields kept ---------------------------------------------------------------------


@pytest.fixture
def make_client(tmp_path: Path) -> Iterator[MakeClient]:
    settings = make_settings(tmp_path / "lake", EMPLOYEE_BADGE_LOGS_URL=URL, BATCH_SIZE=3000)
    with mock_clients(settings) as make:
        yield make


def through(service: TestClient) -> Callable[[httpx.Request], httpx.Response]:
    """A mock network that hands every request to the service app in-process."""

    def handle(request: httpx.Request) -> httpx.Response:
        answer = service.get(RECORDS, params=dict(request.url.params), headers={"Accept": request.headers["accept"]})
        return httpx.Response(answer.status_code, content=answer.content, headers=answer.headers)

    return handle


@pytest.mark.parametrize("prefer_arrow", [True, False], ids=["arrow", "json"])
def test_the_client_returns_door_id_as_a_nullable_string_column(
    v2_service: TestClient, make_client: MakeClient, prefer_arrow: bool
) -> None:
    client, _ = make_client(through(v2_service), prefer_arrow=prefer_arrow)
    result = client.get_employee_badge_logs(cursor=1000, batch=3000)
    assert result.format == ("arrow" if prefer_arrow else "json")
    assert result.invalid.num_rows == 0
    assert result.table.schema == RECORD_V2_SCHEMA  # the contract's columns, then door_id: string, nullable
    assert result.table.equals(table(1000, 3000, 2))
    granted = result.table.column("access_granted").to_pylist()
    assert [d is None for d in result.table.column(DOOR_ID).to_pylist()] == [not g for g in granted]
    assert result.table.column(DOOR_ID).null_count > 0


@pytest.mark.parametrize("prefer_arrow", [True, False], ids=["arrow", "json"])
def test_the_client_returns_exactly_record_schema_from_a_version_1_service(
    v1_service: TestClient, make_client: MakeClient, prefer_arrow: bool
) -> None:
    client, _ = make_client(through(v1_service), prefer_arrow=prefer_arrow)
    result = client.get_employee_badge_logs(cursor=1000, batch=3000)
    assert result.table.schema == RECORD_SCHEMA
    assert result.table.equals(table(1000, 3000))


def test_an_all_null_door_id_is_still_a_string_column_in_both_transports() -> None:
    denied = [i for i, g in enumerate(table(0, 3000).column("access_granted").to_pylist()) if not g][:3]
    columns = generate_columns(SEED, denied[0], 1, stream_start=START, events_per_second=0)
    for validated in (
        validate_json(bytes(encode_json(columns, 2))),
        validate_table(decode_arrow(bytes(encode_arrow(columns, 2)))),
    ):
        assert validated.valid.schema == RECORD_V2_SCHEMA
        assert validated.valid.column(DOOR_ID).to_pylist() == [None]


def good(i: int, **extra: Any) -> dict[str, Any]:
    """A valid contract record with ``extra`` fields after its own."""
    return {
        "event_id": i,
        "user_id": f"0b6f6a52-6f58-4d3e-9a55-2f3c4a1c{i:04d}",
        "dept": "HR",
        "building_location": "Grace",
        "badge_in_timestamp": "2025-03-03T08:00:00.000000Z",
        "badge_out_timestamp": "2025-03-03T16:30:00.250000Z",
        "access_granted": True,
        **extra,
    }


def json_split(rows: list[Any]) -> Validated:
    """validate_json of the rows' body; it must equal the general path's result on the decoded rows."""
    validated = validate_json(orjson.dumps(rows))
    again = validate_rows(rows)
    assert validated.valid.equals(again.valid) and validated.invalid.equals(again.invalid)
    assert validated.valid.num_rows + validated.invalid.num_rows == len(rows)
    assert validated.invalid.schema == QUARANTINE_SCHEMA
    assert pa.schema(list(validated.valid.schema)[: len(RECORD_SCHEMA)]) == RECORD_SCHEMA
    return validated


@pytest.mark.parametrize(
    ("values", "kind", "kept"),
    [
        ([True, None, False], pa.bool_(), [True, None, False]),
        ([1, None, -(2**63)], pa.int64(), [1, None, -(2**63)]),
        ([1.5, None, -0.25], pa.float64(), [1.5, None, -0.25]),
        ([1.5, 2, None], pa.float64(), [1.5, 2.0, None]),  # JSON does not tell 2 from 2.0: widened
        (["a", None, ""], pa.string(), ["a", None, ""]),
        ([{"b": [1, 2]}, None, [1, "x"]], pa.string(), ['{"b":[1,2]}', None, '[1,"x"]']),  # JSON text
        ([None, None, None], pa.string(), [None, None, None]),  # no value to tell the type: string
    ],
    ids=["bool", "int64", "float64", "ints-among-floats", "string", "nested-as-json-text", "all-null"],
)
def test_unknown_extra_fields_of_each_kind_are_kept_with_their_type(
    values: list[Any], kind: pa.DataType, kept: list[Any]
) -> None:
    rows = [good(i, extra=v) for i, v in enumerate(values)]
    validated = json_split(rows)
    assert validated.invalid.num_rows == 0
    assert validated.valid.schema == RECORD_SCHEMA.append(pa.field("extra", kind))
    assert validated.valid.column("extra").to_pylist() == kept


def test_extra_fields_keep_the_order_the_body_first_names_them_and_absent_is_null() -> None:
    rows = [good(0, b=1), good(1, a="x", b=2), good(2), good(3, c=True, a=None)]
    validated = json_split(rows)
    assert validated.valid.column_names == [*FIELDS, "b", "a", "c"]
    assert validated.valid.select(["b", "a", "c"]).to_pylist() == [
        {"b": 1, "a": None, "c": None},
        {"b": 2, "a": "x", "c": None},
        {"b": None, "a": None, "c": None},
        {"b": None, "a": None, "c": True},
    ]


def test_mixed_types_refuse_the_minority_records_naming_the_field_and_both_types() -> None:
    values: list[Any] = [5, 6, 7, "8", True, None, {"n": 9}, 10]
    validated = json_split([good(i, extra=v) for i, v in enumerate(values)])
    assert validated.valid.schema.field("extra").type == pa.int64()
    assert validated.valid.column("event_id").to_pylist() == [0, 1, 2, 5, 7]
    assert validated.valid.column("extra").to_pylist() == [5, 6, 7, None, 10]
    assert validated.invalid.column("event_id").to_pylist() == [3, 4, 6]
    assert validated.invalid.column("reason").to_pylist() == [
        "mixed types in extra: a string where most records have int64",
        "mixed types in extra: a boolean where most records have int64",
        "mixed types in extra: an object or array where most records have int64",
    ]


def test_a_tie_goes_to_the_kind_that_comes_first() -> None:
    validated = json_split([good(0, x="a"), good(1, x=1), good(2, x=2), good(3, x="b")])
    assert validated.valid.schema.field("x").type == pa.string()
    assert validated.valid.column("event_id").to_pylist() == [0, 3]
    assert set(validated.invalid.column("reason").to_pylist()) == {
        "mixed types in x: a number where most records have string"
    }


def test_an_integer_outside_int64_refuses_its_record_unless_the_column_is_float64() -> None:
    ints = json_split([good(0, x=1), good(1, x=2**64 - 1), good(2, x=-3)])
    assert ints.valid.column("x").to_pylist() == [1, -3]
    assert ints.invalid.column("reason").to_pylist() == ["x outside int64"]
    floats = json_split([good(0, x=1.5), good(1, x=2**64 - 1)])
    assert floats.invalid.num_rows == 0
    assert floats.valid.column("x").to_pylist() == [1.5, float(2**64 - 1)]


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("duration_s", "field 'duration_s' collides with the lake column 'duration_s'"),
        ("Duration_S", "field 'Duration_S' collides with the lake column 'duration_s'"),
        ("EVENT_ID", "field 'EVENT_ID' collides with the lake column 'event_id'"),
        ("", "field name '' is not a column name"),
        ("door id", "field name 'door id' is not a column name"),
        ("a=b", "field name 'a=b' is not a column name"),
    ],
)
def test_a_field_the_lake_cannot_take_refuses_the_records_that_carry_it(name: str, reason: str) -> None:
    rows = [good(0), good(1, **{name: 5}), good(2, **{name: None}), good(3, other=1)]
    validated = json_split(rows)
    assert validated.valid.column_names == [*FIELDS, "other"]  # the field is not kept
    assert validated.valid.column("event_id").to_pylist() == [0, 3]
    assert validated.invalid.column("event_id").to_pylist() == [1, 2]  # carried, even as null: refused
    assert all(r.startswith(reason) for r in validated.invalid.column("reason").to_pylist())


def test_two_extra_fields_differing_only_in_case_keep_the_first() -> None:
    validated = json_split([good(0, Door=1), good(1, door=2), good(2, Door=3)])
    assert validated.valid.column_names == [*FIELDS, "Door"]
    assert validated.valid.column("Door").to_pylist() == [1, 3]
    assert validated.invalid.column("reason").to_pylist() == [
        "field 'door' collides with field 'Door' (column names are case-insensitive)"
    ]


def test_a_bad_extra_field_adds_its_reason_to_a_record_refused_anyway() -> None:
    validated = json_split([good(0, x=1), good(1, x="no", dept="Marketing"), good(2, x=3)])
    assert validated.invalid.column("reason").to_pylist() == [
        "unknown dept; mixed types in x: a string where most records have int64"
    ]


def test_arrow_extra_columns_are_kept_as_sent_decoded_and_normalized() -> None:
    base = table(0, 4)
    nanos = pa.array([0, 10**18, None, 1_700_000_000_123_456_789], pa.timestamp("ns", "Europe/Paris"))
    odd = (
        base.append_column("label", pa.array(["a", "b", None, "a"]).dictionary_encode())
        .append_column("count", pa.array([1, 2, 3, None], pa.int32()))
        .append_column("ratio", pa.array([0.5, None, 1.5, 2.0], pa.float32()))
        .append_column("nothing", pa.nulls(4))
        .append_column("seen", nanos)
        .append_column("tags", pa.array([["x"], [], None, ["y", "z"]]))
    )
    validated = validate_table(decode_arrow(bytes(encode_arrow_table(odd))))
    assert validated.invalid.num_rows == 0
    assert validated.valid.schema == pa.schema(
        [
            *RECORD_SCHEMA,
            pa.field("label", pa.string()),
            pa.field("count", pa.int32()),
            pa.field("ratio", pa.float32()),
            pa.field("nothing", pa.string()),
            pa.field("seen", pa.timestamp("us")),  # naive UTC microseconds, like the contract's
            pa.field("tags", pa.list_(pa.string())),  # nested: as sent
        ]
    )
    assert validated.valid.column("label").to_pylist() == ["a", "b", None, "a"]
    assert validated.valid.column("seen").to_pylist()[1] == datetime(2001, 9, 9, 1, 46, 40)
    assert validated.valid.column("tags").to_pylist() == [["x"], [], None, ["y", "z"]]


def test_arrow_extra_timestamps_microseconds_cannot_hold_refuse_their_record() -> None:
    base = table(0, 3)
    seconds = pa.array([0, 2**62, 1_000], pa.timestamp("s"))
    validated = validate_table(base.append_column("when", seconds))
    assert validated.valid.column("event_id").to_pylist() == [0, 2]
    assert validated.invalid.column("reason").to_pylist() == ["when outside what timestamp[us] holds"]


def test_arrow_columns_the_lake_cannot_take_refuse_every_record() -> None:
    base = table(0, 3)
    for name, reason in [
        ("duration_s", "field 'duration_s' collides with the lake column 'duration_s'"),
        ("Dept", "field 'Dept' collides with the lake column 'dept'"),
        ("dept", "field 'dept' collides with the lake column 'dept'"),  # a second column of that name
    ]:
        validated = validate_table(base.append_column(name, pa.array([1, 2, 3])))
        assert validated.valid.num_rows == 0
        assert validated.invalid.column("reason").to_pylist() == [reason] * 3
    duplicate = base.append_column("x", pa.array([1, 2, 3])).append_column("x", pa.array(["a", "b", "c"]))
    validated = validate_table(duplicate)
    assert validated.valid.num_rows == 0
    assert set(validated.invalid.column("reason").to_pylist()) == {
        "field 'x' collides with field 'x' (column names are case-insensitive)"
    }


# --- a real service on loopback --------------------------------------------------------------------------


@pytest.mark.integration
def test_a_real_service_with_record_version_2_through_the_client(tmp_path: Path) -> None:
    port = free_port()
    settings = make_settings(
        tmp_path / "lake",
        GENERATOR_SEED=SEED,
        EVENTS_PER_SECOND=0,
        GENERATOR_STREAM_START=START,
        RECORD_VERSION=2,
        EMPLOYEE_BADGE_LOGS_URL=f"http://127.0.0.1:{port}{RECORDS}",
    )
    with running_service(settings.as_env(), port, tmp_path / "api.log"):
        root = httpx.get(f"http://127.0.0.1:{port}/", timeout=5).json()
        assert (root["record_version"], root["record_versions"]) == (2, [1, 2])
        for prefer_arrow in (True, False):
            with BadgeLogClient(settings, prefer_arrow=prefer_arrow) as client:
                result = client.get_employee_badge_logs(cursor=77, batch=20_000)
            assert result.format == ("arrow" if prefer_arrow else "json")
            assert result.table.equals(table(77, 20_000, 2))
        one = httpx.get(
            f"http://127.0.0.1:{port}{RECORDS}", params={"batch": 10, "cursor": 77, "version": 1}, timeout=5
        )
        assert one.headers["content-type"] == JSON_MEDIA_TYPE
        assert orjson.loads(one.content) == wire_timestamps(table(77, 10).to_pylist())
