"""Clients of the generator service on a fake network: ``httpx.MockTransport``, recorded sleeps, fixed jitter."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator
from typing import Any

import httpx

from source.client import BadgeLogClient
from utils.config import Settings

Handler = Callable[[httpx.Request], httpx.Response]
MakeClient = Callable[..., tuple[BadgeLogClient, list[float]]]


@contextlib.contextmanager
def mock_clients(default: Settings) -> Iterator[MakeClient]:
    """``make(handler, settings=None, **kwargs) -> (client, sleeps)``; every client made is closed afterwards.

    The client's network is ``handler``; its retry waits are appended to ``sleeps`` instead of slept.
    """
    made: list[BadgeLogClient] = []

    def make(handler: Handler, settings: Settings | None = None, **kwargs: Any) -> tuple[BadgeLogClient, list[float]]:
        sleeps: list[float] = []
        client = BadgeLogClient(
            settings or default,
            transport=httpx.MockTransport(handler),
            sleep=sleeps.append,
            rng=random.Random(0),
            **kwargs,
        )
        made.append(client)
        return client, sleeps

    try:
        yield make
    finally:
        for client in made:
            client.close()
