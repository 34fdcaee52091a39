"""Deliberate failures of the generator service (``API_FAULT_RATE``), so retries can be shown for real.

Guarantee: a fault never changes which records a cursor returns; it only delays or fails a response.
The draws come from a seeded ``random.Random``, so one client's sequence of requests meets the same
faults on every run.
"""

from __future__ import annotations

import random
import threading
from enum import StrEnum
from typing import Final

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

RETRY_AFTER_SECONDS: Final = 1
SLOW_MARGIN_SECONDS: Final = 1.0  # a slow response arrives this long after the client's timeout


class Fault(StrEnum):
    """The kinds of deliberate failure, drawn with equal probability."""

    UNAVAILABLE = "unavailable"  # 503 with Retry-After
    ERROR = "error"  # 500
    SLOW = "slow"  # the answer comes after REQUEST_TIMEOUT_SECONDS + SLOW_MARGIN_SECONDS
    DROP = "drop"  # headers promise the whole body, half of it is sent, the connection is closed


class FaultInjector:
    """Draws, per response, whether and how to fail: ``rate`` of them fail, each kind equally likely."""

    def __init__(self, rate: float, seed: int, kinds: tuple[Fault, ...] = tuple(Fault)) -> None:
        if not 0 <= rate <= 1:
            raise ValueError("rate must be within [0, 1]")
        self.rate = rate
        self.kinds = kinds
        self._random = random.Random(seed)
        self._lock = threading.Lock()

    def draw(self) -> Fault | None:
        """The fault for the next response, or None for a normal one."""
        if self.rate == 0:
            return None
        with self._lock:
            if self._random.random() >= self.rate:
                return None
            return self._random.choice(self.kinds)


class TruncatedResponse(Response):
    """A response whose ``Content-Length`` promises ``body`` but whose connection drops halfway.

    The server (uvicorn) closes the connection when the application returns an unfinished response.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        await send({"type": "http.response.body", "body": self.body[: len(self.body) // 2], "more_body": True})
