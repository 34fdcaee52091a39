"""The generator service's contract, in-process (FastAPI's TestClient) and on a real uvicorn over loopback."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import hypothesis
import orjson
import pyarrow as pa
import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.faults import SLOW_MARGIN_SECONDS, Fault, FaultInjector
from api.generators import MAX_EVENTS, NOMINAL_EVENTS_PER_SECOND, generate_table
from api.main import Service, create_app
from lake.identity import SCHEMA_VERSION, StreamIdentity
from source.validation import decode_arrow, validate_table
from testkit.processes import BIN, ManagedProcess, free_port, http_ok, make_settings, uvicorn_args, wait_until
from utils.protocol import ARROW_MEDIA_TYPE, MAX_BATCH, NEXT_CURSOR_HEADER, prefers_arrow
from utils.records import RECORD_SCHEMA

START = datetime(2025, 3, 3, 6, 30, tzinfo=UTC)
SEED = 42
ARROW = {"Accept": ARROW_MEDIA_TYPE}


def expected(cursor: int, count: int, rate: float = 0.0, start: datetime = START) -> pa.Table:
    return generate_table(SEED, cursor, count, stream_start=start, events_per_second=rate)


def json_rows(table: pa.Table) -> list[dict[str, Any]]:
    """What the contract says the JSON of ``table`` is."""
    rows: list[dict[str, Any]] = table.to_pylist()
    for row in rows:
        for key in ("badge_in_timestamp", "badge_out_timestamp"):
            row[key] = row[key].strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return rows


def arrow_records(body: bytes) -> pa.Table:
    validated = validate_table(decode_arrow(body))
    assert validated.invalid.num_rows == 0
    return validated.valid


def build(tmp_path: Path, **overrides: object) -> FastAPI:
    env: dict[str, object] = {
        "GENERATOR_SEED": SEED,
        "EVENTS_PER_SECOND": 0,
        "GENERATOR_STREAM_START": START.isoformat(),
    }
    env.update(overrides)
    return create_app(make_settings(tmp_path / "lake", **env))


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(build(tmp_path)) as c:
        yield c


def service_of(client: TestClient) -> Service:
    app = client.app
    assert isinstance(app, FastAPI)
    service = app.state.holder.get()
    assert isinstance(service, Service)
    return service


# --- in-process: the contract ------------------------------------------------------------------------


def test_json_by_default_with_next_cursor(client: TestClient) -> None:
    r = client.get("/employee-badge-logs/", params={"batch": 250, "cursor": 1000})
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.headers[NEXT_CURSOR_HEADER] == "1250"
    assert orjson.loads(r.content) == json_rows(expected(1000, 250))


def test_arrow_on_request_with_the_same_records(client: TestClient) -> None:
    r = client.get("/employee-badge-logs/", params={"batch": 250, "cursor": 1000}, headers=ARROW)
    assert r.status_code == 200
    assert r.headers["content-type"] == ARROW_MEDIA_TYPE
    assert r.headers[NEXT_CURSOR_HEADER] == "1250"
    assert arrow_records(r.content).equals(expected(1000, 250))


def test_same_cursor_same_bytes(client: TestClient) -> None:
    for headers in ({}, ARROW):
        a = client.get("/employee-badge-logs/", params={"batch": 5000, "cursor": 77}, headers=headers)
        b = client.get("/employee-badge-logs/", params={"batch": 5000, "cursor": 77}, headers=headers)
        assert a.content == b.content


def test_default_batch_is_100(client: TestClient) -> None:
    r = client.get("/employee-badge-logs/", params={"cursor": 5})
    assert len(r.json()) == 100
    assert r.headers[NEXT_CURSOR_HEADER] == "105"


def test_cursorless_calls_hand_out_fresh_records(client: TestClient) -> None:
    first = client.get("/employee-badge-logs/", params={"batch": 10})
    second = client.get("/employee-badge-logs/", params={"batch": 10})
    assert [r["event_id"] for r in first.json()] == list(range(10))
    assert [r["event_id"] for r in second.json()] == list(range(10, 20))
    assert second.headers[NEXT_CURSOR_HEADER] == "20"


@pytest.mark.parametrize("batch", [0, -5, MAX_BATCH + 1])
def test_batch_out_of_range_is_400_naming_the_limit(client: TestClient, batch: int) -> None:
    r = client.get("/employee-badge-logs/", params={"batch": batch})
    assert r.status_code == 400
    assert str(MAX_BATCH) in r.json()["detail"]


@pytest.mark.parametrize("params", [{"batch": "ten"}, {"batch": "1.5"}, {"cursor": "x"}])
def test_non_integers_are_422(client: TestClient, params: dict[str, str]) -> None:
    assert client.get("/employee-badge-logs/", params=params).status_code == 422


@pytest.mark.parametrize("cursor", [-1, MAX_EVENTS + 1])
def test_cursor_out_of_range_is_400(client: TestClient, cursor: int) -> None:
    r = client.get("/employee-badge-logs/", params={"cursor": cursor})
    assert r.status_code == 400
    assert "cursor" in r.json()["detail"]


def test_batch_bounds_are_inclusive(client: TestClient) -> None:
    assert len(client.get("/employee-badge-logs/", params={"batch": 1, "cursor": 0}).json()) == 1
    r = client.get("/employee-badge-logs/", params={"batch": MAX_BATCH, "cursor": 0}, headers=ARROW)
    assert arrow_records(r.content).num_rows == MAX_BATCH


def test_health_and_root(client: TestClient) -> None:
    assert client.get("/health/").json() == {"status": "OK"}
    root = client.get("/").json()
    assert (root["record_version"], root["record_versions"]) == (1, [1, 2])  # RECORD_VERSION's default
    stream = root["stream"]
    assert stream["seed"] == SEED
    assert stream["firehose"] is True
    assert stream["stream_start"] == "2025-03-03T06:30:00Z"


def test_root_reports_the_stream_identity_the_lake_records(tmp_path: Path) -> None:
    identities = {}
    for rate in (0, NOMINAL_EVENTS_PER_SECOND, 50):
        with TestClient(build(tmp_path / str(rate), EVENTS_PER_SECOND=rate)) as c:
            identities[rate] = c.get("/").json()["identity"]
    assert identities[0] == {
        "seed": SEED,
        "events_per_second": float(NOMINAL_EVENTS_PER_SECOND),  # the firehose: its records' nominal rate
        "stream_start": "2025-03-03T06:30:00Z",
        "schema_version": SCHEMA_VERSION,
    }
    # The firehose serves the records of the nominal-rate stream: the same identity, the same records.
    assert identities[NOMINAL_EVENTS_PER_SECOND] == identities[0]
    assert expected(0, 50, rate=NOMINAL_EVENTS_PER_SECOND).equals(expected(0, 50))
    assert identities[50]["events_per_second"] == 50.0  # another rate: another stream
    assert not expected(10, 50, rate=50).equals(expected(10, 50))
    assert StreamIdentity(**identities[0]) != StreamIdentity(**identities[50])


def test_openapi_documents_the_record_and_the_bounds(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    record = doc["components"]["schemas"]["Record"]["properties"]
    assert list(record) == list(RECORD_SCHEMA.names)
    op = doc["paths"]["/employee-badge-logs/"]["get"]
    batch = next(p for p in op["parameters"] if p["name"] == "batch")["schema"]
    assert (batch["minimum"], batch["maximum"], batch["default"]) == (1, MAX_BATCH, 100)
    assert ARROW_MEDIA_TYPE in op["responses"]["200"]["content"]
    assert NEXT_CURSOR_HEADER in op["responses"]["200"]["headers"]


def test_live_mode_returns_only_what_has_happened(tmp_path: Path) -> None:
    start = datetime.now(UTC) - timedelta(seconds=20)
    with TestClient(build(tmp_path, EVENTS_PER_SECOND=5, GENERATOR_STREAM_START=start.isoformat())) as c:
        r = c.get("/employee-badge-logs/", params={"batch": 100_000, "cursor": 0}, headers=ARROW)
        got = arrow_records(r.content)
        assert 1 <= got.num_rows < 2000  # ~20 s at 5/s on average, scaled by the weekly shape
        assert r.headers[NEXT_CURSOR_HEADER] == str(got.num_rows)
        newest = got.column("badge_out_timestamp").to_pylist()[-1].replace(tzinfo=UTC)
        assert newest <= datetime.now(UTC)
        assert got.equals(expected(0, got.num_rows, rate=5, start=start))
        beyond = c.get("/employee-badge-logs/", params={"batch": 10, "cursor": 10**9})
        assert beyond.json() == []
        assert beyond.headers[NEXT_CURSOR_HEADER] == str(10**9)


def test_accept_negotiation() -> None:
    assert prefers_arrow(ARROW_MEDIA_TYPE)
    assert prefers_arrow(f"{ARROW_MEDIA_TYPE}, application/json;q=0.5")
    assert not prefers_arrow(f"{ARROW_MEDIA_TYPE};q=0.2, application/json")
    assert not prefers_arrow(f"{ARROW_MEDIA_TYPE};q=0")
    assert not prefers_arrow("*/*")
    assert not prefers_arrow(None)


# --- in-process: deliberate faults -------------------------------------------------------------------


def test_fault_injector_is_seeded_and_keeps_its_rate() -> None:
    a = [FaultInjector(0.3, seed=9).draw() for _ in range(1)]
    draws = [FaultInjector(0.3, seed=9) for _ in range(2)]
    seq = [[d.draw() for _ in range(5000)] for d in draws]
    assert seq[0] == seq[1]
    assert a[0] == seq[0][0]
    share = sum(f is not None for f in seq[0]) / 5000
    assert abs(share - 0.3) < 0.03
    assert {f for f in seq[0] if f is not None} == set(Fault)
    assert FaultInjector(0.0, seed=9).draw() is None


@pytest.mark.parametrize(("kind", "status"), [(Fault.UNAVAILABLE, 503), (Fault.ERROR, 500)])
def test_fault_responses(client: TestClient, kind: Fault, status: int) -> None:
    service_of(client).faults = FaultInjector(1.0, seed=1, kinds=(kind,))
    r = client.get("/employee-badge-logs/", params={"batch": 10, "cursor": 0})
    assert r.status_code == status
    if kind is Fault.UNAVAILABLE:
        assert int(r.headers["Retry-After"]) >= 1


def test_a_dropped_response_is_cut_short_and_hands_nothing_out(client: TestClient) -> None:
    service_of(client).faults = FaultInjector(1.0, seed=1, kinds=(Fault.DROP,))
    dropped = client.get("/employee-badge-logs/", params={"batch": 10})
    assert 0 < len(dropped.content) < int(dropped.headers["content-length"])
    service_of(client).faults = FaultInjector(0.0, seed=1)
    again = client.get("/employee-badge-logs/", params={"batch": 10})
    assert [r["event_id"] for r in again.json()] == list(range(10))


def test_a_slow_response_comes_after_the_client_timeout(tmp_path: Path) -> None:
    with TestClient(build(tmp_path, REQUEST_TIMEOUT_SECONDS=0.05)) as c:
        service_of(c).faults = FaultInjector(1.0, seed=1, kinds=(Fault.SLOW,))
        started = time.monotonic()
        r = c.get("/employee-badge-logs/", params={"batch": 10, "cursor": 5})
        assert time.monotonic() - started >= 0.05 + SLOW_MARGIN_SECONDS
    assert orjson.loads(r.content) == json_rows(expected(5, 10))


def test_faults_never_change_what_a_cursor_returns(client: TestClient) -> None:
    clean = client.get("/employee-badge-logs/", params={"batch": 3000, "cursor": 123}).content
    service_of(client).faults = FaultInjector(0.6, seed=3, kinds=(Fault.UNAVAILABLE, Fault.ERROR))
    answers = [client.get("/employee-badge-logs/", params={"batch": 3000, "cursor": 123}) for _ in range(20)]
    assert {r.status_code for r in answers} == {200, 500, 503}
    assert all(r.content == clean for r in answers if r.status_code == 200)


def test_failed_cursorless_calls_do_not_lose_records(client: TestClient) -> None:
    service_of(client).faults = FaultInjector(0.5, seed=4, kinds=(Fault.UNAVAILABLE, Fault.ERROR))
    ids: list[int] = []
    for _ in range(30):
        r = client.get("/employee-badge-logs/", params={"batch": 7})
        if r.status_code == 200:
            ids.extend(row["event_id"] for row in r.json())
    assert ids == list(range(len(ids)))
    assert len(ids) > 0


# --- schemathesis over the OpenAPI document ----------------------------------------------------------


# The explicit stream start means the app never touches its (non-existent) lake.
api_schema = schemathesis.openapi.from_asgi(
    "/openapi.json",
    create_app(
        make_settings(
            Path(tempfile.gettempdir()) / "never-created-lake",
            GENERATOR_SEED=SEED,
            EVENTS_PER_SECOND=0,
            GENERATOR_STREAM_START=START,
        )
    ),
)


@api_schema.parametrize()
@hypothesis.settings(max_examples=40, deadline=None, suppress_health_check=list(hypothesis.HealthCheck))
def test_schemathesis_finds_no_server_error(case: Any) -> None:
    case.call_and_validate()


# --- a real uvicorn on loopback ----------------------------------------------------------------------


def uvicorn(env: dict[str, str], port: int, log: Path) -> ManagedProcess:
    return ManagedProcess(uvicorn_args(port), env=env, log_path=log)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("server")
    port = free_port()
    settings = make_settings(tmp / "lake", GENERATOR_SEED=SEED, EVENTS_PER_SECOND=0, GENERATOR_STREAM_START=START)
    with uvicorn(settings.as_env(), port, tmp / "api.log") as proc:
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: http_ok(f"{base}/health/") or proc.proc is None or proc.proc.poll() is not None, 30)
        assert http_ok(f"{base}/health/"), proc.output()
        yield base


@pytest.mark.integration
def test_real_server_serves_both_formats(server: str) -> None:
    with httpx.Client(base_url=server, timeout=10) as http:
        j = http.get("/employee-badge-logs/", params={"batch": 20_000, "cursor": 500})
        a = http.get("/employee-badge-logs/", params={"batch": 20_000, "cursor": 500}, headers=ARROW)
    assert j.headers[NEXT_CURSOR_HEADER] == a.headers[NEXT_CURSOR_HEADER] == "20500"
    want = expected(500, 20_000)
    assert orjson.loads(j.content) == json_rows(want)
    assert arrow_records(a.content).equals(want)


@pytest.mark.integration
def test_real_server_bounds_422_health_and_headers(server: str) -> None:
    with httpx.Client(base_url=server, timeout=10) as http:
        assert http.get("/employee-badge-logs/", params={"batch": 0}).status_code == 400
        assert str(MAX_BATCH) in http.get("/employee-badge-logs/", params={"batch": MAX_BATCH + 1}).json()["detail"]
        assert http.get("/employee-badge-logs/", params={"batch": "x"}).status_code == 422
        assert http.get("/health/").json() == {"status": "OK"}
        r = http.get("/employee-badge-logs/", params={"batch": 3, "cursor": 9})
        assert r.headers["content-length"] == str(len(r.content))
        assert r.headers[NEXT_CURSOR_HEADER] == "12"
        assert http.get("/").json()["stream"]["stream_start"] == "2025-03-03T06:30:00Z"


@pytest.mark.integration
def test_restarted_service_continues_the_same_stream(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "lake", EVENTS_PER_SECOND=50)  # no GENERATOR_STREAM_START
    starts, identities = [], []
    for i in range(2):
        base = f"http://127.0.0.1:{free_port()}"
        with uvicorn(settings.as_env(), int(base.rsplit(":", 1)[1]), tmp_path / f"api{i}.log"):
            wait_until(lambda: http_ok(f"{base}/health/"), 30, what="the service")  # noqa: B023
            root = httpx.get(f"{base}/", timeout=5).json()
            starts.append(root["stream"]["stream_start"])
            identities.append(root["identity"])
    assert starts[0] == starts[1]
    assert identities[0] == identities[1] and identities[0]["stream_start"] == starts[0]  # the same stream
    assert (tmp_path / "lake" / ".stream_start").read_text().strip() == starts[0]


@pytest.mark.integration
def test_a_bad_setting_exits_2_with_one_line(tmp_path: Path) -> None:
    env = {**os.environ, **make_settings(tmp_path / "lake").as_env(), "API_FAULT_RATE": "2"}
    args = [str(BIN / "uvicorn"), "api.main:app", "--host", "127.0.0.1", "--port", str(free_port())]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert "API_FAULT_RATE" in errors[0]
    assert "Traceback" not in done.stderr
