"""The client: retry sequences on a mock transport with a frozen clock, validation, and a real faulty server."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pytest

import source.client
from api.encoding import encode_arrow, encode_arrow_table, encode_json
from api.generators import generate_columns, generate_table
from source.client import BadgeLogClient, FetchResult, RetryPolicy, get_employee_badge_logs, parse_retry_after
from source.json_decode import canonical_columns
from source.validation import decode_json, validate_rows
from testkit.http import Handler, MakeClient, mock_clients
from testkit.processes import free_port, make_settings, running_service
from utils.config import Settings
from utils.errors import PermanentSourceError, TransientSourceError
from utils.protocol import ARROW_MEDIA_TYPE, JSON_MEDIA_TYPE, NEXT_CURSOR_HEADER
from utils.records import QUARANTINE_SCHEMA, RECORD_SCHEMA
from utils.retry import Backoff

START = datetime(2025, 3, 3, tzinfo=UTC)
URL = "http://badge.test/employee-badge-logs/"


def records(cursor: int, count: int) -> pa.Table:
    return generate_table(1, cursor, count, stream_start=START, events_per_second=0)


def ok(request: httpx.Request, *, arrow: bool | None = None) -> httpx.Response:
    """A correct answer to ``request``, in the format it asked for (or the one forced)."""
    cursor = int(request.url.params.get("cursor", "0"))
    batch = int(request.url.params["batch"])
    columns = generate_columns(1, cursor, batch, stream_start=START, events_per_second=0)
    use_arrow = ARROW_MEDIA_TYPE in request.headers.get("accept", "") if arrow is None else arrow
    body = bytes(encode_arrow(columns) if use_arrow else encode_json(columns))
    media = ARROW_MEDIA_TYPE if use_arrow else JSON_MEDIA_TYPE
    return httpx.Response(200, content=body, headers={"Content-Type": media, NEXT_CURSOR_HEADER: str(cursor + batch)})


class Recorder:
    """A mock server from a script of answers; counts calls. The last answer repeats."""

    def __init__(self, *script: int | Handler | Exception) -> None:
        self.script = list(script)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        step = self.script[min(len(self.requests), len(self.script)) - 1]
        if isinstance(step, Exception):
            raise step
        if isinstance(step, int):
            if step == 200:
                return ok(request)
            return httpx.Response(step, json={"detail": f"status {step}"})
        return step(request)


@pytest.fixture
def client_settings(tmp_path: Path) -> Settings:
    return make_settings(
        tmp_path / "lake",
        EMPLOYEE_BADGE_LOGS_URL=URL,
        RETRY_MAX_ATTEMPTS=4,
        RETRY_BACKOFF_BASE=3,
        RETRY_MAX_DELAY_SECONDS=60,
        BATCH_SIZE=500,
    )


@pytest.fixture
def make_client(client_settings: Settings) -> Iterator[MakeClient]:
    with mock_clients(client_settings) as make:
        yield make


# --- retry sequences ---------------------------------------------------------------------------------


def test_503_503_200_is_three_calls(make_client: Callable[..., Any]) -> None:
    server = Recorder(503, 503, 200)
    client, sleeps = make_client(server)
    result = client.get_employee_badge_logs(cursor=10, batch=50)
    assert len(server.requests) == 3
    assert len(sleeps) == 2
    assert result.attempts == 3
    assert result.table.equals(records(10, 50))
    assert (result.cursor, result.next_cursor, result.count) == (10, 60, 50)


def test_400_is_one_call_and_a_permanent_error(make_client: Callable[..., Any]) -> None:
    server = Recorder(400)
    client, sleeps = make_client(server)
    with pytest.raises(PermanentSourceError, match="400"):
        client.get_employee_badge_logs(cursor=0)
    assert len(server.requests) == 1
    assert sleeps == []


@pytest.mark.parametrize("status", [401, 403, 404, 409, 422])
def test_other_4xx_are_never_retried(make_client: Callable[..., Any], status: int) -> None:
    server = Recorder(status)
    client, _ = make_client(server)
    with pytest.raises(PermanentSourceError):
        client.get_employee_badge_logs(cursor=0)
    assert len(server.requests) == 1


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_429_and_5xx_are_retried(make_client: Callable[..., Any], status: int) -> None:
    server = Recorder(status, 200)
    client, _ = make_client(server)
    assert client.get_employee_badge_logs(cursor=0, batch=5).count == 5
    assert len(server.requests) == 2


def test_exhausted_attempts_are_a_transient_error_with_capped_jittered_backoff(
    make_client: Callable[..., Any], client_settings: Settings
) -> None:
    server = Recorder(503)
    client, sleeps = make_client(server)
    with pytest.raises(TransientSourceError, match="4 attempts"):
        client.get_employee_badge_logs(cursor=0)
    assert len(server.requests) == client_settings.retry_max_attempts == 4
    assert len(sleeps) == 3
    for n, slept in enumerate(sleeps, start=1):
        ceiling = min(60.0, 3.0**n)
        assert ceiling / 2 <= slept <= ceiling  # base**attempt, "equal jitter"


def test_backoff_is_capped(tmp_path: Path) -> None:
    policy = RetryPolicy(max_attempts=10, backoff=Backoff.for_source(3, 5))
    rng = random.Random(1)
    assert all(2.5 <= policy.backoff.delay(n, rng) <= 5 for n in range(2, 10))
    assert 1.5 <= policy.backoff.delay(1, rng) <= 3
    assert policy.backoff.delay(1000, rng) <= 5
    assert policy.honour(3600) == 5
    assert policy.statuses >= {429, 500, 503, 599}
    assert 404 not in policy.statuses


def test_retry_after_is_honoured_and_capped(make_client: Callable[..., Any], client_settings: Settings) -> None:
    def busy(seconds: str) -> Handler:
        return lambda _: httpx.Response(503, headers={"Retry-After": seconds})

    server = Recorder(busy("7"), busy("3600"), 200)
    client, sleeps = make_client(server)
    client.get_employee_badge_logs(cursor=0, batch=1)
    assert sleeps == [7.0, client_settings.retry_max_delay_seconds]


def test_retry_after_as_an_http_date() -> None:
    now = datetime(2025, 3, 3, 12, tzinfo=UTC)
    assert parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), lambda: now) == 30
    assert parse_retry_after(format_datetime(now - timedelta(seconds=30), usegmt=True), lambda: now) == 0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
    assert parse_retry_after(" 2.5 ") == 2.5


@pytest.mark.parametrize(
    "failure",
    [
        httpx.ConnectError("refused"),
        httpx.ReadTimeout("slow"),
        httpx.RemoteProtocolError("peer closed connection without sending complete message body"),
        httpx.ReadError("reset"),
    ],
)
def test_transport_failures_are_retried(make_client: Callable[..., Any], failure: Exception) -> None:
    server = Recorder(failure, 200)
    client, sleeps = make_client(server)
    assert client.get_employee_badge_logs(cursor=3, batch=4).count == 4
    assert len(server.requests) == 2
    assert len(sleeps) == 1


def test_truncated_bodies_are_retried(make_client: Callable[..., Any]) -> None:
    def truncated(request: httpx.Request) -> httpx.Response:
        whole = ok(request)
        return httpx.Response(200, content=whole.content[: len(whole.content) // 2], headers=whole.headers)

    for prefer_arrow in (True, False):
        server = Recorder(truncated, 200)
        client, _ = make_client(server, prefer_arrow=prefer_arrow)
        assert client.get_employee_badge_logs(cursor=0, batch=300).count == 300
        assert len(server.requests) == 2


def test_body_shorter_than_its_content_length_is_retried(make_client: Callable[..., Any]) -> None:
    def short(request: httpx.Request) -> httpx.Response:
        whole = ok(request)
        part = whole.content[:100]
        return httpx.Response(200, stream=httpx.ByteStream(part), headers={**whole.headers, "Content-Length": "5000"})

    server = Recorder(short, 200)
    client, _ = make_client(server)
    assert client.get_employee_badge_logs(cursor=0, batch=30).count == 30
    assert len(server.requests) == 2


def test_each_failed_attempt_is_logged(make_client: Callable[..., Any], caplog: pytest.LogCaptureFixture) -> None:
    client, _ = make_client(Recorder(500, 503, 200))
    with caplog.at_level(logging.WARNING, logger="source.client"):
        client.get_employee_badge_logs(cursor=0, batch=1)
    attempts = [r for r in caplog.records if "attempt" in r.getMessage() and "failed" in r.getMessage()]
    assert len(attempts) == 2
    assert "HTTP 500" in attempts[0].getMessage()
    assert "attempt 2/4" in attempts[1].getMessage()


@pytest.mark.parametrize(
    "answer",
    [
        lambda r: httpx.Response(
            200, content=b"<html/>", headers={"Content-Type": "text/html", NEXT_CURSOR_HEADER: "1"}
        ),
        lambda r: httpx.Response(200, json={"detail": "no"}, headers={NEXT_CURSOR_HEADER: "1"}),
        lambda r: httpx.Response(200, json=[], headers={}),
        lambda r: httpx.Response(200, json=[], headers={NEXT_CURSOR_HEADER: "soon"}),
    ],
)
def test_answers_that_are_not_records_are_permanent(make_client: Callable[..., Any], answer: Handler) -> None:
    server = Recorder(answer)
    client, _ = make_client(server)
    with pytest.raises(PermanentSourceError):
        client.get_employee_badge_logs(cursor=0, batch=1)
    assert len(server.requests) == 1


# --- formats -----------------------------------------------------------------------------------------


def test_asks_for_arrow_first_and_accepts_json(make_client: Callable[..., Any]) -> None:
    server = Recorder(lambda r: ok(r, arrow=False))
    client, _ = make_client(server)
    result = client.get_employee_badge_logs(cursor=7, batch=40)
    accept = server.requests[0].headers["accept"]
    assert accept.startswith(ARROW_MEDIA_TYPE)
    assert JSON_MEDIA_TYPE in accept
    assert result.format == "json"
    assert result.table.equals(records(7, 40))


def test_json_only_when_asked(make_client: Callable[..., Any]) -> None:
    server = Recorder(200)
    client, _ = make_client(server, prefer_arrow=False)
    result = client.get_employee_badge_logs(cursor=7, batch=40)
    assert server.requests[0].headers["accept"] == JSON_MEDIA_TYPE
    assert result.format == "json"
    assert result.table.equals(records(7, 40))


def test_arrow_result_is_plain_record_schema(make_client: Callable[..., Any]) -> None:
    client, _ = make_client(Recorder(200))
    result = client.get_employee_badge_logs(cursor=100, batch=1000)
    assert result.format == "arrow"
    assert result.table.schema == RECORD_SCHEMA
    assert result.table.equals(records(100, 1000))
    assert result.invalid.schema == QUARANTINE_SCHEMA
    assert result.invalid.num_rows == 0


def test_defaults_come_from_settings(make_client: Callable[..., Any], client_settings: Settings) -> None:
    server = Recorder(200)
    client, _ = make_client(server)
    client.get_employee_badge_logs()
    params = server.requests[0].url.params
    assert params["batch"] == str(client_settings.batch_size)
    assert "cursor" not in params
    assert str(server.requests[0].url).startswith(URL)
    with pytest.raises(ValueError):
        client.get_employee_badge_logs(batch=100_001)


# --- validation --------------------------------------------------------------------------------------


def good_row(i: int) -> dict[str, Any]:
    return {
        "event_id": i,
        "user_id": "0b6f6a52-6f58-4d3e-9a55-2f3c4a1c9d10",
        "dept": "HR",
        "building_location": "Grace",
        "badge_in_timestamp": "2025-03-03T08:00:00.000000Z",
        "badge_out_timestamp": "2025-03-03T16:30:00.250000Z",
        "access_granted": True,
    }


BAD_ROWS: list[tuple[Any, str]] = [
    ({"dept": "Marketing"}, "unknown dept"),
    ({"building_location": "Atlantis"}, "unknown building_location"),
    ({"badge_out_timestamp": "2025-03-03T07:00:00Z"}, "badge_out_timestamp before badge_in_timestamp"),
    ({"user_id": None}, "missing user_id"),
    ({"user_id": ""}, "empty user_id"),
    ({"event_id": "seven"}, "invalid event_id"),
    ({"event_id": 1.5}, "invalid event_id"),
    ({"access_granted": "yes"}, "invalid access_granted"),
    ({"badge_in_timestamp": "not a time"}, "invalid badge_in_timestamp"),
    ({"event_id": -4}, "negative event_id"),
]


def json_answer(rows: list[Any], next_cursor: int) -> Handler:
    body = orjson.dumps(rows)
    return lambda _: httpx.Response(
        200, content=body, headers={"Content-Type": JSON_MEDIA_TYPE, NEXT_CURSOR_HEADER: str(next_cursor)}
    )


def test_invalid_json_records_are_returned_with_reasons(make_client: Callable[..., Any]) -> None:
    rows: list[Any] = [good_row(0)]
    for i, (change, _) in enumerate(BAD_ROWS, start=1):
        rows.append({**good_row(i), **change})
    missing = good_row(len(rows))
    del missing["dept"]
    rows.append(missing)
    rows.append(["not", "an", "object"])
    rows.append({**good_row(len(rows)), "badge_out_timestamp": "2025-03-03T18:30:00+02:00", "extra": 1})
    assert canonical_columns(orjson.dumps(rows)) is None  # nulls, wrong types, a non-object: the general path
    client, _ = make_client(Recorder(json_answer(rows, len(rows))))
    result = client.get_employee_badge_logs(cursor=0, batch=len(rows))

    assert result.count == len(rows)
    assert result.table.schema == RECORD_SCHEMA.append(pa.field("extra", pa.int64()))  # extra fields are kept
    assert result.table.column("event_id").to_pylist() == [0, len(rows) - 1]
    assert result.table.column("extra").to_pylist() == [None, 1]  # absent from the first record: null
    offset = result.table.column("badge_out_timestamp")[1].as_py()
    assert offset == datetime(2025, 3, 3, 16, 30)  # +02:00 normalized to UTC
    invalid = result.invalid
    assert invalid.schema == QUARANTINE_SCHEMA
    reasons = invalid.column("reason").to_pylist()
    for (_, reason), got in zip(BAD_ROWS, reasons, strict=False):
        assert reason in got
    assert "missing dept" in reasons[len(BAD_ROWS)]
    assert reasons[len(BAD_ROWS) + 1] == "not a JSON object"
    unknown = invalid.filter(pc.equal(invalid.column("reason"), "unknown dept"))
    assert unknown.column("dept").to_pylist() == ["Marketing"]
    assert unknown.column("event_id").to_pylist() == [1]
    assert invalid.column("event_id").to_pylist()[5] is None  # "seven" cannot be an id
    assert invalid.column("access_granted").to_pylist()[7] == "yes"


def test_json_with_odd_values_only_is_read_column_wise_with_the_same_reasons(make_client: Callable[..., Any]) -> None:
    # Bad values in a body that is well-formed JSON of the service's shape: the client's fast path.
    rows: list[Any] = [good_row(0)]
    odd: list[tuple[dict[str, Any], str]] = [
        ({"dept": "Marketing"}, "unknown dept"),
        ({"building_location": "Atlantis"}, "unknown building_location"),
        ({"badge_out_timestamp": "2025-03-03T07:00:00.000000Z"}, "badge_out_timestamp before badge_in_timestamp"),
        ({"user_id": ""}, "empty user_id"),
        ({"badge_in_timestamp": "not a time"}, "invalid badge_in_timestamp"),
        ({"event_id": -4}, "negative event_id"),
    ]
    for i, (change, _) in enumerate(odd, start=1):
        rows.append({**good_row(i), **change})
    rows.append({**good_row(len(rows)), "badge_out_timestamp": "2025-03-03T18:30:00+02:00"})  # valid
    body = orjson.dumps(rows)
    assert canonical_columns(body) is not None  # what the service would send: the column-wise path
    client, _ = make_client(Recorder(json_answer(rows, len(rows))))
    result = client.get_employee_badge_logs(cursor=0, batch=len(rows))

    general = validate_rows(decode_json(body))
    assert result.table.equals(general.valid)
    assert result.invalid.equals(general.invalid)
    assert result.table.column("event_id").to_pylist() == [0, len(rows) - 1]
    assert result.table.column("badge_out_timestamp")[1].as_py() == datetime(2025, 3, 3, 16, 30)
    reasons = result.invalid.column("reason").to_pylist()
    assert reasons == [reason for _, reason in odd]
    assert result.invalid.column("dept").to_pylist()[0] == "Marketing"
    assert result.invalid.column("access_granted").to_pylist() == ["true"] * len(odd)


def test_invalid_arrow_records_are_returned_with_reasons(make_client: Callable[..., Any]) -> None:
    good = records(0, 6)
    dept = good.column("dept").to_pylist()
    dept[2] = "Marketing"
    stamps_in = good.column("badge_in_timestamp").to_pylist()
    stamps_out = good.column("badge_out_timestamp").to_pylist()
    stamps_out[4] = stamps_in[4] - timedelta(seconds=1)
    users = good.column("user_id").to_pylist()
    users[5] = None
    odd = pa.table(
        {
            "event_id": good.column("event_id").cast(pa.int32()),
            "user_id": pa.array(users, pa.large_string()),
            "dept": pa.array(dept).dictionary_encode(),
            # building_location is missing altogether
            "badge_in_timestamp": pa.array(stamps_in, pa.timestamp("ns")).cast(pa.timestamp("ns", "Europe/Paris")),
            "badge_out_timestamp": pa.array(stamps_out, pa.timestamp("ms")),
            "access_granted": good.column("access_granted"),
            "extra": pa.array(range(6)),
        }
    )
    body = bytes(encode_arrow_table(odd))
    answer: Handler = lambda _: httpx.Response(  # noqa: E731
        200, content=body, headers={"Content-Type": ARROW_MEDIA_TYPE, NEXT_CURSOR_HEADER: "6"}
    )
    client, _ = make_client(Recorder(answer))
    result = client.get_employee_badge_logs(cursor=0, batch=6)
    assert result.count == 6
    assert result.table.num_rows == 0  # building_location is missing everywhere
    assert result.table.schema == RECORD_SCHEMA.append(pa.field("extra", pa.int64()))  # kept as sent
    reasons = result.invalid.column("reason").to_pylist()
    assert all("missing building_location" in r for r in reasons)
    assert "unknown dept" in reasons[2]
    assert "badge_out_timestamp before badge_in_timestamp" in reasons[4]
    assert "missing user_id" in reasons[5]
    assert result.invalid.column("badge_in_timestamp")[0].as_py() == stamps_in[0].isoformat() + "Z"


def test_arrow_with_other_units_and_zones_is_normalized(make_client: Callable[..., Any]) -> None:
    good = records(0, 50)
    odd = good.set_column(4, "badge_in_timestamp", good.column(4).cast(pa.timestamp("ns", "UTC")))
    odd = odd.set_column(1, "user_id", odd.column(1).dictionary_encode())
    body = bytes(encode_arrow_table(odd))
    answer: Handler = lambda _: httpx.Response(  # noqa: E731
        200, content=body, headers={"Content-Type": ARROW_MEDIA_TYPE, NEXT_CURSOR_HEADER: "50"}
    )
    client, _ = make_client(Recorder(answer))
    result = client.get_employee_badge_logs(cursor=0, batch=50)
    assert result.invalid.num_rows == 0
    assert result.table.equals(good)


def test_fetch_result_is_frozen() -> None:
    empty = FetchResult(RECORD_SCHEMA.empty_table(), QUARANTINE_SCHEMA.empty_table(), None, 0)
    assert empty.count == 0
    with pytest.raises(AttributeError):
        empty.next_cursor = 5  # type: ignore[misc]


# --- against a real server with deliberate faults ----------------------------------------------------


def _real_server_settings(tmp_path: Path, port: int, **overrides: object) -> Settings:
    """Settings for a firehose service on ``port`` with seed 1, and a client pointed at it."""
    return make_settings(
        tmp_path / "lake",
        EMPLOYEE_BADGE_LOGS_URL=f"http://127.0.0.1:{port}/employee-badge-logs/",
        GENERATOR_SEED=1,
        EVENTS_PER_SECOND=0,
        GENERATOR_STREAM_START=START,
        **overrides,
    )


@pytest.mark.integration
def test_real_faulty_server_still_gives_every_record_exactly_once(tmp_path: Path) -> None:
    port = free_port()
    settings = _real_server_settings(
        tmp_path,
        port,
        API_FAULT_RATE=0.3,
        REQUEST_TIMEOUT_SECONDS=0.5,  # a slow fault answers after 1.5 s
        RETRY_MAX_ATTEMPTS=12,
        RETRY_BACKOFF_BASE=1.5,
        RETRY_MAX_DELAY_SECONDS=0.05,
    )
    batch, requests = 4000, 16
    with running_service(settings.as_env(), port, tmp_path / "api.log") as server:
        got: list[pa.Table] = []
        attempts = 0
        for prefer_arrow in (True, False):
            with BadgeLogClient(settings, prefer_arrow=prefer_arrow) as client:
                cursor = len(got) * batch
                for _ in range(requests // 2):
                    result = client.get_employee_badge_logs(cursor=cursor, batch=batch)
                    assert result.invalid.num_rows == 0
                    got.append(result.table)
                    attempts += result.attempts
                    cursor = result.next_cursor
        log = server.output()
    ids = pa.concat_tables(got).column("event_id").to_numpy()
    assert np.array_equal(ids, np.arange(batch * requests))  # every record exactly once, in order
    assert pa.concat_tables(got).equals(records(0, batch * requests))
    assert attempts > requests, "the faults were met and retried"
    assert "deliberate fault" in log


@pytest.mark.integration
def test_module_level_entry_point_against_a_real_server(tmp_path: Path) -> None:
    port = free_port()
    settings = _real_server_settings(tmp_path, port, BATCH_SIZE=123)
    with running_service(settings.as_env(), port, tmp_path / "api.log"):
        first = get_employee_badge_logs(settings=settings)
        second = source.client.get_employee_badge_logs(settings=settings)
    assert first.table.equals(records(0, 123))
    assert second.table.equals(records(123, 123))
    assert (first.cursor, first.next_cursor, second.next_cursor) == (None, 123, 246)


# --- the stream's identity -------------------------------------------------------------------------------

IDENTITY_BODY = {
    "service": "badge generator",
    "identity": {"seed": 1, "events_per_second": 200.0, "stream_start": "2025-03-03T00:00:00Z", "schema_version": 1},
}


def identity_answer(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json=IDENTITY_BODY)


@pytest.mark.parametrize(
    ("url", "root"),
    [
        ("http://badge.test/employee-badge-logs/", "http://badge.test/"),
        ("http://badge.test:8000/employee-badge-logs", "http://badge.test:8000/"),
        ("https://gw.test/badge/api/employee-badge-logs/?x=1", "https://gw.test/badge/api/"),
    ],
)
def test_the_service_root_follows_the_records_url(url: str, root: str) -> None:
    assert source.client.service_root(url) == root


def test_stream_identity_reads_the_service_root_with_the_retry_policy(make_client: Callable[..., Any]) -> None:
    server = Recorder(503, httpx.ConnectError("refused"), identity_answer)
    client, sleeps = make_client(server)
    identity = client.stream_identity()
    assert identity == source.client.ServiceIdentity(1, 200.0, "2025-03-03T00:00:00Z", 1)
    assert [str(r.url) for r in server.requests] == ["http://badge.test/"] * 3
    assert len(sleeps) == 2


def test_stream_identity_gives_up_like_every_call(make_client: Callable[..., Any]) -> None:
    server = Recorder(503)
    client, _ = make_client(server)
    with pytest.raises(TransientSourceError, match="gave up after 4 attempts"):
        client.stream_identity()
    assert len(server.requests) == 4


@pytest.mark.parametrize(
    "answer",
    [
        lambda r: httpx.Response(404, json={"detail": "Not Found"}),
        lambda r: httpx.Response(200, json={"service": "badge generator", "stream": {"seed": 1}}),  # an older service
        lambda r: httpx.Response(200, json={"identity": {**IDENTITY_BODY["identity"], "seed": "1"}}),  # type: ignore[dict-item]
        lambda r: httpx.Response(200, json={"identity": {**IDENTITY_BODY["identity"], "seed": True}}),  # type: ignore[dict-item]
        lambda r: httpx.Response(200, content=b"<html>a proxy</html>"),
    ],
    ids=["404", "no-identity", "seed-as-text", "seed-as-bool", "not-json"],
)
def test_a_service_without_a_usable_identity_is_a_permanent_error(
    make_client: Callable[..., Any], answer: Handler
) -> None:
    server = Recorder(answer)
    client, _ = make_client(server)
    with pytest.raises(PermanentSourceError):
        client.stream_identity()
    assert len(server.requests) == 1


@pytest.mark.integration
def test_a_real_server_reports_its_identity(tmp_path: Path) -> None:
    port = free_port()
    settings = _real_server_settings(tmp_path, port)
    with running_service(settings.as_env(), port, tmp_path / "api.log"), BadgeLogClient(settings) as client:
        identity = client.stream_identity()
    assert identity.seed == settings.generator_seed
    assert identity.stream_start == START.isoformat().replace("+00:00", "Z")
    assert identity.schema_version == 1 and identity.events_per_second > 0  # a firehose reports its nominal rate
