"""Load shedding: beyond a number of large requests in flight, the service answers 503 with ``Retry-After``.

Guarantee: at most ``limit`` large requests (``batch`` above :data:`LARGE_BATCH`) are in the service at
once, from the moment they arrive until their response has been sent or abandoned; one more is refused
at once with 503 and ``Retry-After``, before anything is generated or encoded (and before a deliberate
fault is drawn, so shedding never shifts API_FAULT_RATE's seeded sequence). A slot is released whatever
happens to its request: a response sent, an exception, a client that disconnected, a cancelled task.
Small requests are never shed.

Why a count of large requests and not a budget of records: one request's cost is bounded by its batch
(at most ``MAX_BATCH`` records: one 100,000-record JSON request adds about 30 MB of RSS alone and 50-65 MB
each when several are encoded at once), so ``limit`` times that bounds what large requests can hold, and
a client can tell from its own ``batch`` which rule applies to it. The slot
is held until the body has left (not just until the handler returns), because the body is what costs.
The count is per process: each uvicorn worker has its own.
"""

from __future__ import annotations

from typing import Final

from starlette.datastructures import QueryParams
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from utils.protocol import DEFAULT_BATCH

LARGE_BATCH: Final = 10_000  # a request for more records than this counts toward the limit
MAX_LARGE_REQUESTS: Final = 4  # default limit: ~225 MB idle + 4 x ~65 MB, twice the pipeline's 2 in flight
SHED_RETRY_AFTER_SECONDS: Final = 1
SHED_PATH: Final = "/employee-badge-logs/"


class InFlightLimit:
    """A count of requests in flight with a ceiling; ``limit=None`` never refuses.

    Confined to one event loop: :meth:`try_acquire` checks and counts without awaiting in between,
    so no two requests can take the last slot.
    """

    def __init__(self, limit: int | None) -> None:
        if limit is not None and limit < 1:
            raise ValueError("limit must be >= 1 (or None for no limit)")
        self.limit = limit
        self.in_flight = 0
        self.admitted = 0
        self.shed = 0

    def try_acquire(self) -> bool:
        """Take a slot if one is free; False (and counted as shed) if the limit is reached."""
        if self.limit is not None and self.in_flight >= self.limit:
            self.shed += 1
            return False
        self.in_flight += 1
        self.admitted += 1
        return True

    def release(self) -> None:
        if self.in_flight <= 0:
            raise RuntimeError("release without a matching acquire")
        self.in_flight -= 1


def requested_batch(scope: Scope) -> int:
    """The ``batch`` a request asks for, as the endpoint will read it; DEFAULT_BATCH if absent or not an int."""
    value = QueryParams(scope.get("query_string", b"")).get("batch")
    try:
        return DEFAULT_BATCH if value is None else int(value)
    except ValueError:
        return DEFAULT_BATCH  # the endpoint answers 422 without encoding anything


class LoadShedding:
    """ASGI middleware: large requests to :data:`SHED_PATH` take a slot of ``limit`` or get 503 at once."""

    def __init__(self, app: ASGIApp, limit: InFlightLimit, large_batch: int = LARGE_BATCH) -> None:
        self.app = app
        self.limit = limit
        self.large_batch = large_batch

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != SHED_PATH or requested_batch(scope) <= self.large_batch:
            await self.app(scope, receive, send)
            return
        if not self.limit.try_acquire():
            response = JSONResponse(
                {"detail": f"overloaded: {self.limit.limit} large requests in flight; retry later"},
                status_code=503,
                headers={"Retry-After": str(SHED_RETRY_AFTER_SECONDS)},
            )
            await response(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.limit.release()
