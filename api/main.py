"""The generator service: ``GET /employee-badge-logs/``, ``GET /health/`` and ``GET /`` (README, "HTTP").

``GET /`` reports the stream's ``identity`` (seed, the timeline's events per second, stream start,
schema version): the pipeline reads it and refuses to append another stream to a lake's table. It also
reports ``record_version``, the record version sent by default (``RECORD_VERSION``), and
``record_versions``, those a request may ask for with ``version``: 1 is RECORD_SCHEMA, 2 adds
``door_id`` (utils.records). Either version of a cursor carries the same stream (v2 = v1 + door_id).

Guarantee: the same seed and cursor give the same records, byte for byte, in either format; a live
request never returns an event whose time has not come; deliberate faults never change what a cursor
returns; beyond a limit of large requests in flight the service answers 503 with ``Retry-After`` at once
instead of growing (api/shedding.py). ``uvicorn api.main:app`` reads settings from the environment and
``.env`` at start-up (not on import); tests build their own app with :func:`create_app`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Final

from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from api.encoding import encode_arrow, encode_json
from api.faults import RETRY_AFTER_SECONDS, SLOW_MARGIN_SECONDS, Fault, FaultInjector, TruncatedResponse
from api.generators import MAX_EVENTS, BadgeStream
from api.shedding import LARGE_BATCH, MAX_LARGE_REQUESTS, InFlightLimit, LoadShedding
from api.stream_state import format_stream_start, resolve_stream_start
from lake.identity import SCHEMA_VERSION
from processes.cli import EXIT_CONFIG, run_main, setup_logging
from utils.config import Settings, get_settings
from utils.errors import ConfigError
from utils.protocol import (
    ARROW_MEDIA_TYPE,
    DEFAULT_BATCH,
    JSON_MEDIA_TYPE,
    MAX_BATCH,
    NEXT_CURSOR_HEADER,
    prefers_arrow,
)
from utils.records import BUILDINGS, DEPARTMENTS, DOOR_ID, RECORD_VERSIONS

log = logging.getLogger("api")

FROM_SETTINGS: Final = -1  # create_app's max_large_requests: take API_MAX_LARGE_REQUESTS

FAULT_SEED_SALT: Final = 0xFA017  # the fault draws differ from, but follow, GENERATOR_SEED


class Record(BaseModel):
    """One badge event as JSON (documentation only: responses are encoded without pydantic)."""

    event_id: int = Field(ge=0, description="position in the stream (0, 1, 2, ...)")
    user_id: str = Field(description="the employee's UUID; a stable population, each employee recurs")
    dept: str = Field(json_schema_extra={"enum": list(DEPARTMENTS)})
    building_location: str = Field(json_schema_extra={"enum": list(BUILDINGS)})
    badge_in_timestamp: datetime = Field(description="ISO-8601 UTC, e.g. 2025-03-03T08:41:07.123456Z")
    badge_out_timestamp: datetime = Field(description="ISO-8601 UTC, >= badge_in; equal for a denied attempt")
    access_granted: bool


class RecordV2(Record):
    """One badge event of record version 2 as JSON: version 1's fields plus ``door_id``."""

    door_id: str | None = Field(
        description="the reader the badge was presented to, '<building>-D<nn>'; null when access was not granted"
    )


class Detail(BaseModel):
    detail: str


class Health(BaseModel):
    status: str


@dataclass(frozen=True)
class Window:
    """The records one response carries: event ids start..start+count-1."""

    start: int
    count: int

    @property
    def next_cursor(self) -> int:
        return self.start + self.count


class Service:
    """One app's state: its settings, the stream, the fault injector and the cursor-less position."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stream = BadgeStream(settings.generator_seed, settings.events_per_second, resolve_stream_start(settings))
        self.faults = FaultInjector(settings.api_fault_rate, settings.generator_seed ^ FAULT_SEED_SALT)
        self._position = 0
        self._lock = threading.Lock()

    def window(self, cursor: int | None, batch: int, now: datetime, *, claim: bool = True) -> Window:
        """The records to send: from ``cursor``, or from the service's own position (advanced if ``claim``)."""
        available = self.stream.available(now)
        if cursor is not None:
            return Window(cursor, max(0, min(batch, available - cursor)))
        with self._lock:
            start = self._position
            window = Window(start, max(0, min(batch, available - start)))
            if claim:
                self._position = window.next_cursor
        return window

    def body(self, window: Window, arrow: bool, version: int | None = None) -> memoryview:
        """The encoded records of ``window`` in record ``version`` (None: RECORD_VERSION).

        CPU-bound: run it off the event loop.
        """
        columns = self.stream.columns(window.start, window.count)
        version = self.settings.record_version if version is None else version
        return encode_arrow(columns, version) if arrow else encode_json(columns, version)

    def identity(self) -> dict[str, Any]:
        """What makes record ``k`` what it is (lake.identity.StreamIdentity's fields).

        ``events_per_second`` is the timeline's rate: the firehose serves the records of its nominal
        rate, stamped with those times, so it is the same stream as a live service at that rate.
        """
        return {
            "seed": self.settings.generator_seed,
            "events_per_second": float(self.stream.timeline.rate),
            "stream_start": format_stream_start(self.stream.stream_start),
            "schema_version": SCHEMA_VERSION,
        }

    def describe(self, now: datetime) -> dict[str, Any]:
        return {
            "seed": self.settings.generator_seed,
            "events_per_second": self.settings.events_per_second,
            "firehose": self.stream.firehose,
            "stream_start": format_stream_start(self.stream.stream_start),
            "available": self.stream.available(now),
            "fault_rate": self.settings.api_fault_rate,
        }


class _Holder:
    """Builds the Service once, on start-up or first use, from given settings or the environment."""

    def __init__(self, settings: Settings | None) -> None:
        self.settings = settings
        self._service: Service | None = None
        self._lock = threading.Lock()

    @property
    def from_environment(self) -> bool:
        return self.settings is None

    def get(self) -> Service:
        with self._lock:
            if self._service is None:
                self._service = Service(self.settings or get_settings())
            return self._service


def _error(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


RECORDS_RESPONSES: Final[dict[int | str, dict[str, Any]]] = {
    200: {
        "description": "The records: a JSON array by default, an Arrow IPC stream for "
        f"`Accept: {ARROW_MEDIA_TYPE}` (user_id, dept and building_location dictionary-encoded). "
        f"Record version 2 adds `{DOOR_ID}` (null where access was not granted; dictionary-encoded in Arrow).",
        "model": list[Record] | list[RecordV2],
        "content": {ARROW_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}},
        "headers": {NEXT_CURSOR_HEADER: {"description": "the cursor to ask for next", "schema": {"type": "integer"}}},
    },
    400: {"description": "batch, cursor or version out of range; `detail` names the limit", "model": Detail},
    500: {"description": "deliberate fault (API_FAULT_RATE)", "model": Detail},
    503: {
        "description": f"overloaded (more than the limit of requests with batch > {LARGE_BATCH:,} in flight) or "
        "deliberate fault (API_FAULT_RATE); retry after `Retry-After` seconds",
        "model": Detail,
        "headers": {"Retry-After": {"description": "seconds", "schema": {"type": "integer"}}},
    },
}


def create_app(settings: Settings | None = None, *, max_large_requests: int | None = FROM_SETTINGS) -> FastAPI:
    """The service as a FastAPI app; ``settings=None`` reads the environment and ``.env`` at start-up.

    Beyond ``max_large_requests`` large requests in flight it sheds load (api/shedding.py); None: never;
    by default ``API_MAX_LARGE_REQUESTS`` (0: never).
    """
    holder = _Holder(settings)

    def configured(s: Settings) -> int | None:
        return s.api_max_large_requests or None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            if holder.from_environment:
                setup_logging(get_settings().log_level, "api")
            service = holder.get()
        except ConfigError as exc:
            if holder.from_environment:
                # The CLI contract: one line naming the variable and exit status 2. uvicorn would turn
                # any start-up failure into a traceback and status 3, so leave before it does.
                print(f"error: {exc}", file=sys.stderr, flush=True)
                os._exit(EXIT_CONFIG)
            raise
        if max_large_requests == FROM_SETTINGS:
            app.state.shedding.limit = configured(service.settings)
        log.info(
            "badge stream: %s; record version %d", service.describe(datetime.now(UTC)), service.settings.record_version
        )
        yield

    app = FastAPI(
        title="Badge generator",
        version="1.0",
        description="A live, replayable stream of synthetic employee badge events (see api/generators.py).",
        lifespan=lifespan,
    )
    app.state.holder = holder
    if max_large_requests != FROM_SETTINGS:
        initial = max_large_requests
    else:
        initial = configured(settings) if settings is not None else MAX_LARGE_REQUESTS
    app.state.shedding = InFlightLimit(initial)
    app.add_middleware(LoadShedding, limit=app.state.shedding)

    @app.get("/", summary="What this service is and where its stream stands")
    def root() -> dict[str, Any]:
        service = holder.get()
        return {
            "service": "badge generator",
            "endpoints": ["/employee-badge-logs/?batch=N&cursor=C", "/health/", "/docs"],
            "stream": service.describe(datetime.now(UTC)),
            "identity": service.identity(),
            "record_version": service.settings.record_version,
            "record_versions": list(RECORD_VERSIONS),
        }

    @app.get("/health/", summary="Liveness")
    def health() -> Health:
        return Health(status="OK")

    @app.get(
        "/employee-badge-logs/",
        summary="Badge events from a cursor (or the service's own position)",
        response_class=Response,
        responses=RECORDS_RESPONSES,
    )
    async def employee_badge_logs(
        request: Request,
        batch: Annotated[
            int,
            Query(
                description=f"records to return, 1 to {MAX_BATCH}",
                json_schema_extra={"minimum": 1, "maximum": MAX_BATCH},
            ),
        ] = DEFAULT_BATCH,
        cursor: Annotated[
            int | None,
            Query(
                description="first event id to return; omitted: the next events from the service's own position",
                json_schema_extra={"minimum": 0, "maximum": MAX_EVENTS},
            ),
        ] = None,
        version: Annotated[
            int | None,
            Query(
                description="record version: 1, or 2 (adds door_id); omitted: the service's RECORD_VERSION",
                json_schema_extra={"enum": list(RECORD_VERSIONS)},
            ),
        ] = None,
    ) -> Response:
        if not 1 <= batch <= MAX_BATCH:
            return _error(400, f"batch must be between 1 and {MAX_BATCH}")
        if cursor is not None and not 0 <= cursor <= MAX_EVENTS:
            return _error(400, f"cursor must be between 0 and {MAX_EVENTS}")
        if version is not None and version not in RECORD_VERSIONS:
            return _error(400, f"version must be one of {', '.join(map(str, RECORD_VERSIONS))}")
        service = holder.get()
        fault = service.faults.draw()
        if fault is not None:
            log.warning("deliberate fault: %s (API_FAULT_RATE=%s)", fault, service.settings.api_fault_rate)
        if fault is Fault.UNAVAILABLE:
            return _error(503, "deliberate fault: unavailable", {"Retry-After": str(RETRY_AFTER_SECONDS)})
        if fault is Fault.ERROR:
            return _error(500, "deliberate fault: internal error")
        if fault is Fault.SLOW:
            await asyncio.sleep(service.settings.request_timeout_seconds + SLOW_MARGIN_SECONDS)
            if await request.is_disconnected():  # the client gave up: hand nothing out
                return _error(503, "deliberate fault: too slow")
        arrow = prefers_arrow(request.headers.get("accept"))
        window = service.window(cursor, batch, datetime.now(UTC), claim=fault is not Fault.DROP)
        body = await run_in_threadpool(service.body, window, arrow, version)
        headers = {NEXT_CURSOR_HEADER: str(window.next_cursor)}
        media_type = ARROW_MEDIA_TYPE if arrow else JSON_MEDIA_TYPE
        if fault is Fault.DROP:
            return TruncatedResponse(body, media_type=media_type, headers=headers)
        return Response(body, media_type=media_type, headers=headers)

    return app


app = create_app()


def main() -> int:
    """``python -m api.main``: the service on API_HOST:API_PORT (settings checked before binding)."""
    import uvicorn

    settings = get_settings()
    setup_logging(settings.log_level, "api")
    uvicorn.run(create_app(settings), host=settings.api_host, port=settings.api_port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
