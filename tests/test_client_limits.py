"""The client's cap on a response's size: a huge, endless, inflating or lying body is a retried transient error.

Never allocated: the body is read streamed and reading stops at ``MAX_RESPONSE_BYTES`` (or at once, when
``Content-Length`` already claims more); a normal full batch still goes through the same fast path.
"""

from __future__ import annotations

import contextlib
import gzip
import socket
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.encoding import encode_arrow, encode_json
from api.generators import generate_columns
from source.client import BadgeLogClient, ResponseTooLargeError
from testkit.http import Handler, MakeClient, mock_clients
from testkit.processes import make_settings
from utils.config import Settings
from utils.errors import PermanentSourceError, TransientSourceError
from utils.protocol import ARROW_MEDIA_TYPE, JSON_MEDIA_TYPE, MAX_BATCH, NEXT_CURSOR_HEADER

START = datetime(2025, 3, 3, tzinfo=UTC)
URL = "http://badge.test/employee-badge-logs/"
MIB = 1024 * 1024
CAP = MIB  # the smallest cap the setting allows
HUGE = 2**50  # a petabyte: bytearray(HUGE) is a MemoryError


class Streamed(httpx.SyncByteStream):
    """``body`` in 64 KiB pieces, not read ahead (an ``httpx.ByteStream`` is in memory at once): the network's path."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    def __iter__(self) -> Iterator[bytes]:
        view = memoryview(self.body)
        for start in range(0, len(view), 64 * 1024):
            yield bytes(view[start : start + 64 * 1024])


class CountingStream(httpx.SyncByteStream):
    """A body of ``total`` bytes in ``chunk``-byte pieces, produced lazily; counts what was taken."""

    def __init__(self, total: int, chunk: int = 64 * 1024) -> None:
        self.total = total
        self.piece = b"x" * chunk
        self.taken = 0

    def __iter__(self) -> Iterator[bytes]:
        while self.taken < self.total:
            piece = self.piece[: self.total - self.taken]
            self.taken += len(piece)
            yield piece


def answer(request: httpx.Request, arrow: bool) -> httpx.Response:
    """A correct answer to ``request``, as Arrow or JSON."""
    cursor = int(request.url.params.get("cursor", "0"))
    batch = int(request.url.params["batch"])
    columns = generate_columns(1, cursor, batch, stream_start=START, events_per_second=0)
    body = bytes(encode_arrow(columns) if arrow else encode_json(columns))
    media = ARROW_MEDIA_TYPE if arrow else JSON_MEDIA_TYPE
    return httpx.Response(200, content=body, headers={"Content-Type": media, NEXT_CURSOR_HEADER: str(cursor + batch)})


def headers(**extra: str) -> dict[str, str]:
    return {"Content-Type": JSON_MEDIA_TYPE, NEXT_CURSOR_HEADER: "5", **extra}


class Script:
    """A mock server from a script of handlers; the last repeats. Counts requests."""

    def __init__(self, *steps: Handler) -> None:
        self.steps = steps
        self.requests = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        return self.steps[min(self.requests, len(self.steps)) - 1](request)


@pytest.fixture
def capped(tmp_path: Path) -> Settings:
    return make_settings(
        tmp_path / "lake",
        EMPLOYEE_BADGE_LOGS_URL=URL,
        RETRY_MAX_ATTEMPTS=3,
        RETRY_MAX_DELAY_SECONDS=1,
        MAX_RESPONSE_BYTES=CAP,
    )


@pytest.fixture
def make_client(capped: Settings) -> Iterator[MakeClient]:
    with mock_clients(capped) as make:
        yield make


def test_the_setting_defaults_well_above_the_largest_batch(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "lake")
    assert settings.max_response_bytes == 64 * MIB
    assert settings.max_response_bytes > 2 * 24 * MIB  # a 100,000-record JSON body is ~24 MB


def test_a_huge_content_length_is_never_allocated_and_is_retried(make_client: Callable[..., Any]) -> None:
    streams: list[CountingStream] = []

    def huge(_: httpx.Request) -> httpx.Response:
        streams.append(CountingStream(HUGE))
        return httpx.Response(200, stream=streams[-1], headers=headers(**{"Content-Length": str(HUGE)}))

    server = Script(huge)
    client, sleeps = make_client(server)
    tracemalloc.start()
    try:
        with pytest.raises(TransientSourceError, match=rf"MAX_RESPONSE_BYTES={CAP}") as info:
            client.get_employee_badge_logs(cursor=0, batch=5)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(info.value.__cause__, ResponseTooLargeError)
    assert str(HUGE) in str(info.value)
    assert server.requests == 3 and len(sleeps) == 2  # retried by the policy, like any transient failure
    assert all(s.taken == 0 for s in streams)  # refused on the header: not one byte read
    assert peak < CAP  # nothing of the claimed size was allocated


def test_a_huge_content_length_then_a_good_answer_succeeds(make_client: Callable[..., Any]) -> None:
    def huge(_: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=CountingStream(HUGE), headers=headers(**{"Content-Length": str(HUGE)}))

    server = Script(huge, lambda r: answer(r, arrow=True))
    client, _ = make_client(server)
    result = client.get_employee_badge_logs(cursor=0, batch=5)
    assert (result.count, result.attempts, server.requests) == (5, 2, 2)


@pytest.mark.parametrize("encoding", ["identity", "gzip"])
def test_an_endless_chunked_body_stops_at_the_cap(make_client: Callable[..., Any], encoding: str) -> None:
    streams: list[CountingStream] = []
    chunk = 64 * 1024

    def endless(_: httpx.Request) -> httpx.Response:
        streams.append(CountingStream(64 * MIB, chunk))  # "endless": 64 times the cap, no Content-Length
        extra = {"Content-Encoding": "gzip"} if encoding == "gzip" else {}
        return httpx.Response(200, stream=streams[-1], headers=headers(**extra))

    if encoding == "gzip":  # a small compressed body that inflates past the cap: a zip bomb
        bomb = gzip.compress(b"\0" * 8 * CAP)

        def endless(_: httpx.Request) -> httpx.Response:
            streams.append(CountingStream(len(bomb)))
            streams[-1].piece = bomb
            return httpx.Response(200, stream=streams[-1], headers=headers(**{"Content-Encoding": "gzip"}))

    server = Script(endless)
    client, _ = make_client(server)
    with pytest.raises(TransientSourceError, match=rf"MAX_RESPONSE_BYTES={CAP}"):
        client.get_employee_badge_logs(cursor=0, batch=5)
    assert server.requests == 3
    for stream in streams:
        assert stream.taken <= CAP + chunk  # stopped within one chunk of the cap


@pytest.mark.parametrize("claimed", [100, 50_000], ids=["longer than declared", "shorter than declared"])
def test_a_lying_content_length_is_retried(make_client: Callable[..., Any], claimed: int) -> None:
    def lying(request: httpx.Request) -> httpx.Response:
        whole = answer(request, arrow=False)
        assert len(whole.content) != claimed
        lie = {"Content-Type": JSON_MEDIA_TYPE, NEXT_CURSOR_HEADER: "30", "Content-Length": str(claimed)}
        return httpx.Response(200, stream=Streamed(whole.content), headers=lie)

    server = Script(lying, lambda r: answer(r, arrow=False))
    client, sleeps = make_client(server)
    result = client.get_employee_badge_logs(cursor=0, batch=30)
    assert (result.count, result.attempts, len(sleeps)) == (30, 2, 1)


def test_a_body_exactly_at_the_cap_is_read(make_client: Callable[..., Any]) -> None:
    # At the cap is allowed: it is read whole, then refused as what it is (not JSON), not for its size.
    def at_cap(_: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=CountingStream(CAP), headers=headers(**{"Content-Length": str(CAP)}))

    client, _ = make_client(Script(at_cap))
    with pytest.raises(TransientSourceError, match=f"JSON body of {CAP} bytes does not parse"):
        client.get_employee_badge_logs(cursor=0, batch=5)


def test_an_error_body_is_not_read_whole(make_client: Callable[..., Any]) -> None:
    stream = CountingStream(64 * MIB)
    client, _ = make_client(Script(lambda _: httpx.Response(404, stream=stream)))
    with pytest.raises(PermanentSourceError, match="404: xxx"):
        client.get_employee_badge_logs(cursor=0, batch=5)
    assert stream.taken <= 64 * 1024


def test_the_identity_request_is_capped_too(make_client: Callable[..., Any]) -> None:
    def huge(_: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=CountingStream(HUGE), headers={"Content-Length": str(HUGE)})

    client, sleeps = make_client(Script(huge))
    with pytest.raises(TransientSourceError, match="MAX_RESPONSE_BYTES"):
        client.stream_identity()
    assert len(sleeps) == 2


@pytest.mark.parametrize("arrow", [True, False], ids=["arrow", "json"])
def test_a_full_batch_still_goes_through_under_the_default_cap(
    make_client: Callable[..., Any], tmp_path: Path, arrow: bool
) -> None:
    settings = make_settings(tmp_path / "lake", EMPLOYEE_BADGE_LOGS_URL=URL, BATCH_SIZE=MAX_BATCH)
    sizes: list[int] = []

    def full(request: httpx.Request) -> httpx.Response:
        response = answer(request, arrow)
        sizes.append(len(response.content))
        return httpx.Response(200, stream=Streamed(response.content), headers=response.headers)

    client, _ = make_client(full, settings)
    result = client.get_employee_badge_logs(cursor=0)
    assert (result.count, result.table.num_rows, result.attempts) == (MAX_BATCH, MAX_BATCH, 1)
    assert sizes[0] < settings.max_response_bytes / 2


# --- a real socket: what h11 hands the client from a lying server -------------------------------------


class RawServer:
    """A loopback HTTP server that answers every request with ``respond(conn)``; counts connections."""

    def __init__(self, respond: Callable[[socket.socket], None]) -> None:
        self.respond = respond
        self.connections = 0
        self.sent: list[int] = []
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> RawServer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self._sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            self.connections += 1
            with conn:
                conn.settimeout(10)
                request = b""
                while b"\r\n\r\n" not in request:
                    data = conn.recv(4096)
                    if not data:
                        break
                    request += data
                with contextlib.suppress(OSError):  # the client hung up: what it should do
                    self.respond(conn)


def _status_line(extra: str) -> bytes:
    return (f"HTTP/1.1 200 OK\r\nContent-Type: {JSON_MEDIA_TYPE}\r\n{NEXT_CURSOR_HEADER}: 5\r\n{extra}\r\n").encode()


@pytest.mark.integration
def test_a_real_server_claiming_a_petabyte_is_refused_and_retried(tmp_path: Path) -> None:
    def petabyte(conn: socket.socket) -> None:
        conn.sendall(_status_line(f"Content-Length: {HUGE}\r\n") + b"[" * 1000)

    with RawServer(petabyte) as server:
        url = f"http://127.0.0.1:{server.port}/employee-badge-logs/"
        settings = make_settings(tmp_path / "lake", EMPLOYEE_BADGE_LOGS_URL=url, RETRY_MAX_ATTEMPTS=3)
        with BadgeLogClient(settings, sleep=lambda _: None) as client, pytest.raises(TransientSourceError) as info:
            client.get_employee_badge_logs(cursor=0, batch=5)
    assert "MAX_RESPONSE_BYTES" in str(info.value) and "3 attempts" in str(info.value)
    assert server.connections == 3


@pytest.mark.integration
def test_a_real_server_streaming_without_end_is_cut_off_at_the_cap(tmp_path: Path) -> None:
    sent: list[int] = []
    limit = 256 * MIB

    def endless(conn: socket.socket) -> None:
        conn.sendall(_status_line("Transfer-Encoding: chunked\r\n"))
        piece = b"x" * (64 * 1024)
        chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
        total = 0
        sent.append(0)
        while total < limit:  # bounded, so a client that never stops cannot hang the test
            conn.sendall(chunk)
            total += len(piece)
            sent[-1] = total

    with RawServer(endless) as server:
        url = f"http://127.0.0.1:{server.port}/employee-badge-logs/"
        settings = make_settings(
            tmp_path / "lake", EMPLOYEE_BADGE_LOGS_URL=url, RETRY_MAX_ATTEMPTS=2, MAX_RESPONSE_BYTES=CAP
        )
        with BadgeLogClient(settings, sleep=lambda _: None) as client, pytest.raises(TransientSourceError) as info:
            client.get_employee_badge_logs(cursor=0, batch=5)
    assert "MAX_RESPONSE_BYTES" in str(info.value)
    assert server.connections == 2
    assert all(n < limit / 4 for n in sent), sent  # the client hung up near the cap (plus socket buffers)
