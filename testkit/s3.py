"""A real S3 API for tests: moto's threaded server on a loopback port, one bucket, always stopped.

:func:`moto_s3` starts a :class:`SerializedMotoServer` on ``127.0.0.1`` (the port is chosen by the
kernel when the server binds, so no other process can take it in between), creates a bucket with a
unique name and yields an :class:`S3Lake`: the endpoint, the ``AWS_*`` environment a process needs to
reach it (:data:`ENV_KEYS`), the lake's ``s3://bucket/prefix`` URL, a log of the requests the server
answered, and obstore / boto3 clients. On exit the bucket is emptied and deleted and the server stopped,
whatever happened in the block. :func:`s3_lake` is the same as a pytest fixture that also exports the
environment for the test's duration.

Why not plain ``ThreadedMotoServer``: moto 5.2.5 evaluates S3's conditional writes as check-then-act
(``If-None-Match``/``If-Match`` are compared with the stored key, then the key is stored, in separate
steps with no lock), and its backend is not safe for concurrent requests on one key (an overwrite
closes the buffer another request is still reading: a 500). Real S3 evaluates a precondition and the
write as one atomic step. So, by default, the server here answers one request at a time; each request
is then atomic, as on S3. ``serialize=False`` gives moto's own behaviour (``tests/test_s3_probes.py``
records the difference).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

import boto3
import pytest
from moto.moto_server.threaded_moto_server import ThreadedMotoServer
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from obstore.store import S3Store
from werkzeug.serving import make_server

if TYPE_CHECKING:
    from obstore.store import ClientConfig, RetryConfig

REGION: Final = "us-east-1"
ACCESS_KEY_ID: Final = "testing"
SECRET_ACCESS_KEY: Final = "testing"  # noqa: S105 - moto accepts any credentials; these are not secrets
ENV_KEYS: Final = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_ALLOW_HTTP")
DEFAULT_PREFIX: Final = "lake"
START_TIMEOUT_S: Final = 30.0
SHUTDOWN_POLL_S: Final = 0.05  # how often the serving thread looks for a shutdown (werkzeug's default: 0.5 s)

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]


@dataclass(frozen=True)
class Request:
    """One request the server answered: method, path, query, the precondition headers sent, the status."""

    method: str
    path: str
    query: str
    if_none_match: str | None
    if_match: str | None
    copy_source: str | None
    status: int


@dataclass
class RequestLog:
    """The requests a server answered, in the order they finished (thread-safe)."""

    _entries: list[Request] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def append(self, request: Request) -> None:
        with self._lock:
            self._entries.append(request)

    def entries(self) -> list[Request]:
        with self._lock:
            return list(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def matching(self, method: str, path_contains: str) -> list[Request]:
        """The requests of ``method`` whose path contains ``path_contains``."""
        return [r for r in self.entries() if r.method == method and path_contains in r.path]


class _Trigger:
    """Matches the next request of ``method`` whose path ends with ``path_suffix``, once."""

    def __init__(self, method: str, path_suffix: str) -> None:
        self.method = method
        self.path_suffix = path_suffix
        self._armed = True
        self._hit = threading.Event()

    def take(self, environ: Environ) -> bool:
        """True (and disarmed) if armed and the request matches; called under the middleware's lock."""
        path = str(environ.get("PATH_INFO", ""))
        if self._armed and environ.get("REQUEST_METHOD") == self.method and path.endswith(self.path_suffix):
            self._armed = False
            self._hit.set()
            return True
        return False

    @property
    def hit(self) -> bool:
        """True once a request matched."""
        return self._hit.is_set()


class Gate(_Trigger):
    """Holds the next matching request, before moto sees it, until :meth:`release`.

    A held request holds no lock, so the server answers other requests meanwhile. Used to order a race
    exactly: let a request arrive, let another writer act, then let the held request go on.
    """

    def __init__(self, method: str, path_suffix: str, timeout: float) -> None:
        super().__init__(method, path_suffix)
        self.timeout = timeout
        self._released = threading.Event()

    def hold(self) -> None:
        if not self._released.wait(self.timeout):
            raise RuntimeError(f"a gated {self.method} *{self.path_suffix} was never released")

    def wait_arrived(self, timeout: float = 30.0) -> None:
        """Wait until the request is held; AssertionError if it has not arrived in ``timeout`` seconds."""
        if not self._hit.wait(timeout):
            raise AssertionError(f"no {self.method} *{self.path_suffix} arrived within {timeout}s")

    def release(self) -> None:
        self._released.set()


class Fault(_Trigger):
    """Lets moto process the next matching request in full, then answers ``status`` instead of its response.

    What a client sees when a write lands but its answer is lost (a 5xx after the fact, which clients
    retry): the store changed, the client was told it failed.
    """

    def __init__(self, method: str, path_suffix: str, status: int) -> None:
        super().__init__(method, path_suffix)
        self.status = status


class _Middleware:
    """Wraps moto's WSGI app: logs each request, applies gates and faults, and (``lock``) runs one at a time.

    The response is collected while the lock is held, so a request is over, body and all, before the
    next one starts; it is handed to the server only then (so a fault can replace it).
    """

    def __init__(self, app: WSGIApp, log: RequestLog, lock: threading.Lock | None) -> None:
        self.app = app
        self.log = log
        self.lock = lock
        self.triggers: list[_Trigger] = []
        self.triggers_lock = threading.Lock()

    def _take(self, environ: Environ, kind: type[_Trigger]) -> _Trigger | None:
        with self.triggers_lock:
            return next((t for t in self.triggers if isinstance(t, kind) and t.take(environ)), None)

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        gate = self._take(environ, Gate)
        if isinstance(gate, Gate):
            gate.hold()
        response: list[tuple[str, Any]] = []

        def deferred_start_response(status_line: str, headers: Any, exc_info: Any = None) -> Any:
            response.append((status_line, headers))
            return lambda data: None  # moto never uses the write() callable

        with self.lock or contextlib.nullcontext():
            result = self.app(environ, deferred_start_response)
            try:
                body = list(result)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        status_line, headers = response[-1] if response else ("500 Internal Server Error", [])
        fault = self._take(environ, Fault)
        if isinstance(fault, Fault):
            status_line, headers, body = f"{fault.status} Injected Fault", [("Content-Length", "0")], []
        start_response(status_line, headers)
        self.log.append(
            Request(
                method=str(environ.get("REQUEST_METHOD", "")),
                path=str(environ.get("PATH_INFO", "")),
                query=str(environ.get("QUERY_STRING", "")),
                if_none_match=environ.get("HTTP_IF_NONE_MATCH"),
                if_match=environ.get("HTTP_IF_MATCH"),
                copy_source=environ.get("HTTP_X_AMZ_COPY_SOURCE"),
                status=int(status_line.split(" ", 1)[0]),
            )
        )
        return body


class SerializedMotoServer(ThreadedMotoServer):
    """moto's threaded server on ``127.0.0.1``, its app wrapped by a request log and (``serialize``) a lock.

    ``port=0`` (the default) lets the kernel choose a free port when the server binds; read it with
    :meth:`get_host_and_port`. :meth:`start` raises the bind error instead of waiting forever.
    """

    def __init__(self, port: int = 0, *, serialize: bool = True) -> None:
        super().__init__(ip_address="127.0.0.1", port=port, verbose=False)
        self.requests = RequestLog()
        self.serialized = serialize
        lock = threading.Lock() if serialize else None
        self._app = _Middleware(DomainDispatcherApplication(create_backend_app), self.requests, lock)
        self._error: BaseException | None = None

    def _server_entry(self) -> None:  # moto's own entry, with the app wrapped and errors reported
        try:
            app = self._app
            self._server = make_server(self._ip_address, self._port, app, True, request_handler=MotoRequestHandler)
        except BaseException as exc:
            self._error = exc
            self._server_ready_event.set()
            return
        self._server_ready_event.set()
        self._server.serve_forever(poll_interval=SHUTDOWN_POLL_S)

    def start(self) -> None:
        super().start()
        if self._error is not None:
            assert self._thread is not None
            self._thread.join(START_TIMEOUT_S)
            self._thread = None
            raise RuntimeError(f"the moto server did not start: {self._error}") from self._error

    def stop(self) -> None:
        if self._thread is not None:
            super().stop()
            self._thread = None
            if self._server is not None:
                self._server.server_close()  # the listening socket, else a ResourceWarning

    @contextlib.contextmanager
    def gate(self, method: str, path_suffix: str, timeout: float = 60.0) -> Iterator[Gate]:
        """Hold the next ``method`` request whose path ends with ``path_suffix`` (see :class:`Gate`).

        The request is released when the block ends if the test has not released it; a request held
        longer than ``timeout`` seconds fails with a 500.
        """
        gate = Gate(method, path_suffix, timeout)
        with self._armed(gate):
            try:
                yield gate
            finally:
                gate.release()

    @contextlib.contextmanager
    def fault(self, method: str, path_suffix: str, status: int = 500) -> Iterator[Fault]:
        """Answer ``status`` to the next matching request after moto has processed it (see :class:`Fault`)."""
        fault = Fault(method, path_suffix, status)
        with self._armed(fault):
            yield fault

    @contextlib.contextmanager
    def _armed(self, trigger: _Trigger) -> Iterator[None]:
        with self._app.triggers_lock:
            self._app.triggers.append(trigger)
        try:
            yield
        finally:
            with self._app.triggers_lock:
                self._app.triggers.remove(trigger)

    @property
    def endpoint(self) -> str:
        host, port = self.get_host_and_port()
        return f"http://{host}:{port}"

    def __enter__(self) -> SerializedMotoServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


@dataclass(frozen=True)
class S3Lake:
    """A bucket on a running moto server and a lake prefix in it."""

    endpoint: str
    bucket: str
    prefix: str
    server: SerializedMotoServer

    @property
    def url(self) -> str:
        """The lake's URL, ``s3://bucket/prefix``."""
        return f"s3://{self.bucket}/{self.prefix}"

    @property
    def env(self) -> dict[str, str]:
        """The ``AWS_*`` variables that point a process (delta-rs, obstore, boto3) at this server."""
        return aws_environment(self.endpoint)

    @property
    def requests(self) -> RequestLog:
        return self.server.requests

    def store(
        self,
        prefix: str | None = None,
        *,
        timeout: str = "10s",
        retry_config: RetryConfig | None = None,
    ) -> S3Store:
        """An obstore client rooted at ``prefix`` (default: the lake's), with explicit credentials and endpoint.

        ``timeout`` bounds each request; the retry policy is obstore's unless ``retry_config`` is given.
        """
        client_options: ClientConfig = {"allow_http": True, "timeout": timeout, "connect_timeout": "5s"}
        return S3Store(
            self.bucket,
            prefix=self.prefix if prefix is None else prefix,
            endpoint=self.endpoint,
            access_key_id=ACCESS_KEY_ID,
            secret_access_key=SECRET_ACCESS_KEY,
            region=REGION,
            client_options=client_options,
            retry_config=retry_config,
        )

    def boto3_client(self) -> Any:
        """A boto3 S3 client on this server (for listings and checks independent of obstore)."""
        return s3_client(self.endpoint)

    def keys(self, under: str = "") -> list[str]:
        """Every key in the bucket under ``prefix/under``, relative to the lake prefix, sorted."""
        head = f"{self.prefix}/"
        out: list[str] = []
        paginator = self.boto3_client().get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=head + under):
            out.extend(obj["Key"][len(head) :] for obj in page.get("Contents", []))
        return sorted(out)


def aws_environment(endpoint: str) -> dict[str, str]:
    """The ``AWS_*`` variables that point a process (delta-rs, obstore, boto3) at a test server's ``endpoint``."""
    return dict(zip(ENV_KEYS, (endpoint, ACCESS_KEY_ID, SECRET_ACCESS_KEY, REGION, "true"), strict=True))


def s3_client(endpoint: str) -> Any:
    """A boto3 S3 client for ``endpoint`` with the test credentials."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY_ID,
        aws_secret_access_key=SECRET_ACCESS_KEY,
    )


def _drop_bucket(endpoint: str, bucket: str) -> None:
    """Empty and delete ``bucket`` (moto's state lives in this process, shared by every server in it)."""
    client = s3_client(endpoint)
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket):
        keys = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
    client.delete_bucket(Bucket=bucket)


@contextlib.contextmanager
def moto_s3(prefix: str = DEFAULT_PREFIX, *, serialize: bool = True, quiet: bool = True) -> Iterator[S3Lake]:
    """A moto S3 server on a loopback port with a fresh bucket; always stopped, its bucket dropped.

    ``serialize`` (default) answers one request at a time, so conditional writes are atomic as on S3;
    ``quiet`` keeps werkzeug's per-request log lines out of the test output while the server runs.
    """
    werkzeug_log = logging.getLogger("werkzeug")
    level = werkzeug_log.level
    if quiet:
        werkzeug_log.setLevel(logging.WARNING)
    server = SerializedMotoServer(serialize=serialize)
    try:
        with server:
            bucket = f"lake-{uuid.uuid4().hex[:12]}"
            s3_client(server.endpoint).create_bucket(Bucket=bucket)
            try:
                yield S3Lake(server.endpoint, bucket, prefix.strip("/"), server)
            finally:
                with contextlib.suppress(Exception):  # the server is stopped next whatever this says
                    _drop_bucket(server.endpoint, bucket)
    finally:
        werkzeug_log.setLevel(level)


@pytest.fixture
def s3_lake(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Lake]:
    """A moto S3 lake for one test, its ``AWS_*`` environment exported while the test runs.

    Every other ``AWS_*`` variable is removed for the test (an ``AWS_ENDPOINT_URL_S3`` or a profile of
    the developer's would otherwise redirect delta-rs or obstore). Import it into a test module
    (``from testkit.s3 import s3_lake``) to use it.
    """
    with moto_s3() as lake:
        for key in [k for k in os.environ if k.startswith("AWS_")]:
            monkeypatch.delenv(key)
        for key, value in lake.env.items():
            monkeypatch.setenv(key, value)
        yield lake
