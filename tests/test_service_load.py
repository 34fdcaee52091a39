"""Load shedding (api/shedding.py): beyond the limit of large requests in flight the service answers 503.

The app is driven in-process through ASGI, with a client whose ``send`` can be held: a request whose
response start is held is in flight (its slot is taken until its body has gone), so the bursts are
deterministic without sleeps or sockets.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi import FastAPI
from starlette.types import Message

from api.faults import Fault, FaultInjector
from api.main import Service, create_app
from api.shedding import LARGE_BATCH, MAX_LARGE_REQUESTS, InFlightLimit, requested_batch
from testkit.processes import make_settings
from utils.protocol import DEFAULT_BATCH, MAX_BATCH

START = datetime(2025, 3, 3, 6, 30, tzinfo=UTC)
LIMIT = 3
LARGE = LARGE_BATCH + 1


def build(tmp_path: Path, limit: int | None = LIMIT, **overrides: object) -> FastAPI:
    env: dict[str, object] = {"GENERATOR_SEED": 42, "EVENTS_PER_SECOND": 0, "GENERATOR_STREAM_START": START.isoformat()}
    env.update(overrides)
    return create_app(make_settings(tmp_path / "lake", **env), max_large_requests=limit)


def shedding(app: FastAPI) -> InFlightLimit:
    limit = app.state.shedding
    assert isinstance(limit, InFlightLimit)
    return limit


def service(app: FastAPI) -> Service:
    svc = app.state.holder.get()
    assert isinstance(svc, Service)
    return svc


def scope(batch: int | str | None, cursor: int = 0) -> dict[str, Any]:
    query = f"cursor={cursor}" + ("" if batch is None else f"&batch={batch}")
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/employee-badge-logs/",
        "raw_path": b"/employee-badge-logs/",
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(b"host", b"test")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
    }


class Answer:
    """One request's response as the client saw it."""

    def __init__(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = b""
        self.started = asyncio.Event()

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = {k.decode().lower(): v.decode() for k, v in message["headers"]}
            self.started.set()
        elif message["type"] == "http.response.body":
            self.body += message.get("body", b"")


async def never_disconnects() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


async def call(
    app: FastAPI,
    batch: int | str | None,
    *,
    cursor: int = 0,
    gate: asyncio.Event | None = None,
    receive: Callable[[], Awaitable[Message]] = never_disconnects,
) -> Answer:
    """One request; with ``gate``, the client takes the response start only once the gate opens."""
    answer = Answer()

    async def send(message: Message) -> None:
        await answer.send(message)
        if gate is not None and message["type"] == "http.response.start":
            await gate.wait()

    await app(scope(batch, cursor), receive, send)
    return answer


async def hold(app: FastAPI, n: int, gate: asyncio.Event, batch: int = LARGE) -> list[asyncio.Task[Answer]]:
    """``n`` large requests in flight: each has its response started and waits for ``gate``."""
    tasks = [asyncio.create_task(call(app, batch, cursor=i * batch, gate=gate)) for i in range(n)]
    while sum(1 for t in tasks if not t.done()) and shedding(app).in_flight < n:
        await asyncio.sleep(0.005)
    return tasks


def run(coro: Awaitable[Any]) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, 60)

    return asyncio.run(bounded())


def assert_shed(answer: Answer) -> None:
    assert answer.status == 503
    assert int(answer.headers["retry-after"]) >= 1
    assert "overloaded" in orjson.loads(answer.body)["detail"]


@pytest.fixture
def app(tmp_path: Path) -> Iterator[FastAPI]:
    yield build(tmp_path)


# --- the burst -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("extra", [1, 4])
def test_beyond_the_limit_exactly_the_extra_large_requests_are_shed(app: FastAPI, extra: int) -> None:
    async def burst() -> tuple[list[Answer], list[Answer]]:
        gate = asyncio.Event()
        held = await hold(app, LIMIT, gate)
        assert shedding(app).in_flight == LIMIT
        position = service(app)._position
        shed = [await call(app, MAX_BATCH, cursor=0) for _ in range(extra)]
        assert service(app)._position == position  # nothing generated for a shed request
        gate.set()
        return [await t for t in held], shed

    served, shed = run(burst())
    assert [a.status for a in served] == [200] * LIMIT
    assert all(len(orjson.loads(a.body)) == LARGE for a in served)
    for answer in shed:
        assert_shed(answer)
    assert (shedding(app).admitted, shedding(app).shed, shedding(app).in_flight) == (LIMIT, extra, 0)


def test_without_a_limit_the_same_burst_is_all_served(tmp_path: Path) -> None:
    """The burst test's 503s come from shedding: unlimited, the same burst is all 200 (the issue's growth)."""
    app = build(tmp_path, limit=None)

    async def burst() -> list[Answer]:
        gate = asyncio.Event()
        held = await hold(app, LIMIT + 4, gate)
        gate.set()
        return [await t for t in held]

    assert [a.status for a in run(burst())] == [200] * (LIMIT + 4)


def test_a_shed_request_draws_no_fault(app: FastAPI) -> None:
    """Shedding comes first: a shed request leaves API_FAULT_RATE's seeded sequence where it was."""
    faults = service(app).faults = FaultInjector(0.5, seed=1, kinds=(Fault.ERROR,))

    async def burst() -> tuple[list[Answer], Answer]:
        gate = asyncio.Event()
        held = await hold(app, LIMIT, gate)  # 200s and deliberate 500s alike hold their slots
        state = faults._random.getstate()
        shed = await call(app, LARGE)
        assert faults._random.getstate() == state
        gate.set()
        return [await t for t in held], shed

    held, shed = run(burst())
    assert_shed(shed)
    assert {a.status for a in held} <= {200, 500}


def test_small_requests_are_never_shed(app: FastAPI) -> None:
    async def burst() -> list[Answer]:
        gate = asyncio.Event()
        held = await hold(app, LIMIT, gate)
        small = [await call(app, batch) for batch in (1, DEFAULT_BATCH, LARGE_BATCH, None, "ten")]
        gate.set()
        await asyncio.gather(*held)
        return small

    assert [a.status for a in run(burst())] == [200, 200, 200, 200, 422]


def test_the_pipelines_prefetch_is_never_shed_by_default(tmp_path: Path) -> None:
    """The default leaves room for two pipelines' PREFETCH_DEPTH (2) full batches in flight."""
    from ingestion.fetcher import PREFETCH_DEPTH

    assert MAX_LARGE_REQUESTS >= 2 * PREFETCH_DEPTH
    app = create_app(make_settings(tmp_path / "lake", EVENTS_PER_SECOND=0, GENERATOR_STREAM_START=START.isoformat()))
    assert shedding(app).limit == MAX_LARGE_REQUESTS

    async def burst() -> list[Answer]:
        gate = asyncio.Event()
        held = await hold(app, 2 * PREFETCH_DEPTH, gate, batch=MAX_BATCH)
        gate.set()
        return [await t for t in held]

    assert [a.status for a in run(burst())] == [200] * 2 * PREFETCH_DEPTH


# --- no leak: slots come back after errors, disconnects and cancellations ---------------------------------


def then_limit_more_all_succeed(app: FastAPI) -> None:
    async def again() -> list[Answer]:
        gate = asyncio.Event()
        held = await hold(app, LIMIT, gate)
        gate.set()
        return [await t for t in held]

    assert shedding(app).in_flight == 0
    assert [a.status for a in run(again())] == [200] * LIMIT


def test_slots_come_back_after_errors(app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: object) -> memoryview:
        raise RuntimeError("encoder failed")

    monkeypatch.setattr(service(app), "body", broken)
    for _ in range(2 * LIMIT):
        with pytest.raises(RuntimeError, match="encoder failed"):
            run(call(app, LARGE))
    monkeypatch.undo()
    then_limit_more_all_succeed(app)


def test_slots_come_back_after_deliberate_faults(app: FastAPI) -> None:
    service(app).faults = FaultInjector(1.0, seed=1, kinds=(Fault.UNAVAILABLE, Fault.ERROR, Fault.DROP))
    statuses = {run(call(app, LARGE)).status for _ in range(4 * LIMIT)}
    assert statuses == {200, 500, 503}  # 200: the dropped (truncated) ones
    service(app).faults = FaultInjector(0.0, seed=1)
    then_limit_more_all_succeed(app)


def test_slots_come_back_when_the_client_disconnects(tmp_path: Path) -> None:
    app = build(tmp_path, REQUEST_TIMEOUT_SECONDS=0.01)
    service(app).faults = FaultInjector(1.0, seed=1, kinds=(Fault.SLOW,))

    async def gone() -> Message:
        return {"type": "http.disconnect"}

    async def broken_pipe(message: Message) -> None:
        raise OSError("connection reset by peer")

    async def disconnects() -> None:
        # The client gave up during a slow answer: the service notices and answers nobody.
        answers = await asyncio.gather(*(call(app, LARGE, receive=gone) for _ in range(LIMIT + 1)))
        assert sorted(a.status for a in answers) == [503] * (LIMIT + 1)
        assert shedding(app).in_flight == 0
        service(app).faults = FaultInjector(0.0, seed=1)
        # The connection broke while the body was being sent: the send raises in the server.
        for _ in range(2 * LIMIT):
            with pytest.raises(OSError, match="reset"):
                await app(scope(LARGE), never_disconnects, broken_pipe)

    run(disconnects())
    then_limit_more_all_succeed(app)


def test_slots_come_back_when_requests_are_cancelled(app: FastAPI) -> None:
    async def cancelled() -> None:
        held = await hold(app, LIMIT, asyncio.Event())  # a gate that never opens
        for t in held:
            t.cancel()
        await asyncio.gather(*held, return_exceptions=True)

    run(cancelled())
    then_limit_more_all_succeed(app)


# --- the limit itself --------------------------------------------------------------------------------------


def test_in_flight_limit_counts_exactly() -> None:
    limit = InFlightLimit(2)
    assert [limit.try_acquire() for _ in range(4)] == [True, True, False, False]
    limit.release()
    assert limit.try_acquire()
    assert (limit.in_flight, limit.admitted, limit.shed) == (2, 3, 2)
    limit.release()
    limit.release()
    with pytest.raises(RuntimeError):
        limit.release()
    unlimited = InFlightLimit(None)
    assert all(unlimited.try_acquire() for _ in range(1000))
    with pytest.raises(ValueError):
        InFlightLimit(0)


@pytest.mark.parametrize(
    ("query", "batch"),
    [(b"", DEFAULT_BATCH), (b"batch=7", 7), (b"batch=x", DEFAULT_BATCH), (b"batch=1&batch=99999", 99_999)],
)
def test_requested_batch_reads_what_the_endpoint_reads(query: bytes, batch: int) -> None:
    assert requested_batch({"query_string": query}) == batch


def test_the_limit_comes_from_api_max_large_requests(tmp_path: Path) -> None:
    env = {"GENERATOR_SEED": 42, "EVENTS_PER_SECOND": 0, "GENERATOR_STREAM_START": START.isoformat()}
    assert shedding(create_app(make_settings(tmp_path / "a", **env, API_MAX_LARGE_REQUESTS=7))).limit == 7
    assert shedding(create_app(make_settings(tmp_path / "b", **env, API_MAX_LARGE_REQUESTS=0))).limit is None
    assert shedding(create_app(make_settings(tmp_path / "c", **env))).limit == MAX_LARGE_REQUESTS
