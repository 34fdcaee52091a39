"""The resilient client of the generator service: typed records by cursor, retries, validation.

Guarantee: :meth:`BadgeLogClient.get_employee_badge_logs` either returns every record of one response
(valid ones in ``table``, refused ones in ``invalid`` with a reason; none dropped) or raises
:class:`~utils.errors.TransientSourceError` (retryable failures outlasted ``RETRY_MAX_ATTEMPTS``) or
:class:`~utils.errors.PermanentSourceError` (retrying cannot help: another 4xx, a body that is not records).
:meth:`BadgeLogClient.stream_identity` reads which stream the service serves (its ``GET /``) under the
same policy.

Retry policy (data, from settings, see :class:`RetryPolicy`): connection errors, timeouts, truncated or
undecodable bodies, bodies longer than their ``Content-Length`` or over ``MAX_RESPONSE_BYTES`` (never
allocated: the body is read streamed and reading stops at the cap), 429 and 5xx are retried; the wait
before retry ``n`` is the platform's :class:`~utils.retry.Backoff`, ``min(cap, base**n)`` with "equal
jitter" (uniformly between half and all of it), or the server's ``Retry-After`` (capped). Every failed
attempt is logged. Other 4xx are never retried. One long-lived ``httpx.Client`` with explicit
timeouts; Arrow is asked for first, JSON accepted (and used when the server answers JSON).

Extra fields are kept: a field the contract (RECORD_SCHEMA) does not name, such as record version 2's
``door_id``, comes back as a nullable column of ``table`` after the contract's, typed as the body has it
(source.validation says how, and which records such a field refuses).
"""

from __future__ import annotations

import contextlib
import dataclasses
import email.utils
import json
import logging
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Final

import httpx
import pyarrow as pa
import tenacity

from source.validation import decode_arrow, validate_json, validate_table
from utils.config import Settings, get_settings
from utils.errors import PermanentSourceError, TransientSourceError
from utils.protocol import ARROW_MEDIA_TYPE, JSON_MEDIA_TYPE, MAX_BATCH, NEXT_CURSOR_HEADER
from utils.retry import Backoff

log = logging.getLogger(__name__)

DEFAULT_RETRY_STATUSES: Final = frozenset({429, *range(500, 600)})
ACCEPT_ARROW: Final = f"{ARROW_MEDIA_TYPE}, {JSON_MEDIA_TYPE};q=0.5"
ACCEPT_JSON: Final = JSON_MEDIA_TYPE
USER_AGENT: Final = "badge-platform-client/1.0"


@dataclass(frozen=True)
class RetryPolicy:
    """Which failures are retried, how often, and how long to wait between attempts."""

    max_attempts: int
    backoff: Backoff
    statuses: frozenset[int] = field(default=DEFAULT_RETRY_STATUSES)

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        backoff = Backoff.for_source(settings.retry_backoff_base, settings.retry_max_delay_seconds)
        return cls(settings.retry_max_attempts, backoff)

    def honour(self, retry_after: float) -> float:
        """Seconds to wait when the server said ``Retry-After: retry_after`` (capped)."""
        return min(self.backoff.cap, max(0.0, retry_after))


@dataclass(frozen=True)
class FetchResult:
    """One response's records: ``table`` (valid) and ``invalid`` (refused, QUARANTINE_SCHEMA, with a reason).

    ``table`` has RECORD_SCHEMA's columns first, then every extra field the body carried, each nullable
    and typed as source.validation says (record version 2: ``door_id``, string); a body without extra
    fields gives exactly RECORD_SCHEMA. ``invalid`` keeps the contract's fields only. ``cursor`` is what
    was asked (None: the service's own position); ``next_cursor`` what to ask next.
    """

    table: pa.Table
    invalid: pa.Table
    cursor: int | None
    next_cursor: int
    format: str = "arrow"  # "arrow" or "json": how the server answered
    attempts: int = 1

    @property
    def count(self) -> int:
        """Records received: valid plus refused."""
        return int(self.table.num_rows + self.invalid.num_rows)


@dataclass(frozen=True)
class ServiceIdentity:
    """The stream the service serves, as its ``GET /`` reports it under ``identity``.

    ``events_per_second`` is the rate of the stream's timeline (a firehose reports the nominal rate
    its records are stamped with); ``stream_start`` is ISO-8601 UTC with ``Z``.
    """

    seed: int
    events_per_second: float
    stream_start: str
    schema_version: int

    @classmethod
    def from_json(cls, body: object) -> ServiceIdentity:
        """The identity in a decoded ``GET /`` body; ValueError if it has none or a malformed one."""
        identity = body.get("identity") if isinstance(body, dict) else None
        if not isinstance(identity, dict):
            raise ValueError("no 'identity' object")

        def field_of(name: str, kinds: tuple[type, ...]) -> Any:
            value = identity.get(name)
            if isinstance(value, bool) or not isinstance(value, kinds):
                raise ValueError(f"identity.{name} is {value!r}")
            return value

        return cls(
            seed=int(field_of("seed", (int,))),
            events_per_second=float(field_of("events_per_second", (int, float))),
            stream_start=str(field_of("stream_start", (str,))),
            schema_version=int(field_of("schema_version", (int,))),
        )


def service_root(url: str) -> str:
    """The service's root for the records endpoint ``url``: its parent path (``http://h:p/``, or a prefix)."""
    parsed = httpx.URL(url)
    parent = parsed.path.rstrip("/").rsplit("/", 1)[0] + "/"
    return str(parsed.copy_with(path=parent, query=None, fragment=None))


class ResponseTooLargeError(TransientSourceError):
    """A body over ``MAX_RESPONSE_BYTES``, declared or read: refused before it is held, and retried."""


class RetryableResponseError(TransientSourceError):
    """A response worth retrying (429/5xx); carries the server's ``Retry-After`` in seconds if it gave one."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def parse_retry_after(value: str | None, now: Callable[[], datetime] | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date); None if absent or unreadable."""
    if value is None:
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or _utc_now)()).total_seconds())


def _utc_now() -> datetime:
    return datetime.now(UTC)


class BadgeLogClient:
    """A long-lived client of ``EMPLOYEE_BADGE_LOGS_URL``; use as a context manager (or call :meth:`close`).

    ``transport`` replaces the network (tests pass ``httpx.MockTransport``); ``sleep`` replaces
    ``time.sleep`` between retries (tests record the waits instead); ``rng`` drives the jitter.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        prefer_arrow: bool = True,
        url: str | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings or get_settings()
        self.url = url or self.settings.employee_badge_logs_url
        self.policy = RetryPolicy.from_settings(self.settings)
        self.prefer_arrow = prefer_arrow
        self._sleep = sleep
        self._rng = rng or random.Random()
        seconds = self.settings.request_timeout_seconds
        self._http = httpx.Client(
            transport=transport,
            timeout=httpx.Timeout(connect=seconds, read=seconds, write=seconds, pool=seconds),
            headers={"User-Agent": USER_AGENT},
            follow_redirects=True,
        )

    def __enter__(self) -> BadgeLogClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def get_employee_badge_logs(self, cursor: int | None = None, batch: int | None = None) -> FetchResult:
        """Up to ``batch`` records from ``cursor`` (default BATCH_SIZE; no cursor: the service's position).

        Retries per :class:`RetryPolicy`; raises TransientSourceError when retries are exhausted and
        PermanentSourceError when retrying cannot help.
        """
        size = self.settings.batch_size if batch is None else batch
        if not 1 <= size <= MAX_BATCH:
            raise ValueError(f"batch must be between 1 and {MAX_BATCH}, not {size}")
        if cursor is not None and cursor < 0:
            raise ValueError(f"cursor must be >= 0, not {cursor}")
        params: dict[str, int] = {"batch": size}
        if cursor is not None:
            params["cursor"] = cursor
        retrying = self._retrying()
        try:
            result = retrying(self._attempt, params, cursor)
        except TransientSourceError as exc:
            attempts = retrying.statistics.get("attempt_number", self.policy.max_attempts)
            log.error("GET %s %s: giving up after %d attempts: %s", self.url, params, attempts, exc)
            raise TransientSourceError(f"{self.url} {params}: gave up after {attempts} attempts: {exc}") from exc
        attempts = int(retrying.statistics.get("attempt_number", 1))
        if attempts > 1:
            log.info("GET %s %s: succeeded on attempt %d", self.url, params, attempts)
        return dataclasses.replace(result, attempts=attempts)

    def stream_identity(self) -> ServiceIdentity:
        """Which stream the service serves: the ``identity`` of its ``GET /`` (the root of the records URL).

        Retries per :class:`RetryPolicy`; raises TransientSourceError when retries are exhausted and
        PermanentSourceError when retrying cannot help (another 4xx, a service that reports no identity).
        """
        url = service_root(self.url)
        retrying = self._retrying()
        try:
            return retrying(self._identity_attempt, url)
        except TransientSourceError as exc:
            attempts = retrying.statistics.get("attempt_number", self.policy.max_attempts)
            log.error("GET %s: giving up after %d attempts: %s", url, attempts, exc)
            raise TransientSourceError(f"{url}: gave up after {attempts} attempts: {exc}") from exc

    def _retrying(self) -> tenacity.Retrying:
        """The retry loop of one call: transient failures only, the policy's attempts and waits, each logged."""
        return tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.policy.max_attempts),
            wait=self._wait,
            retry=tenacity.retry_if_exception_type(TransientSourceError),
            sleep=self._sleep,
            before_sleep=self._log_retry,
            reraise=True,
        )

    def _wait(self, state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        retry_after = exc.retry_after if isinstance(exc, RetryableResponseError) else None
        if retry_after is not None:
            return self.policy.honour(retry_after)
        return self.policy.backoff.delay(state.attempt_number, self._rng)

    def _log_retry(self, state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        log.warning(
            "GET %s: attempt %d/%d failed (%s); retrying in %.2f s",
            self.url,
            state.attempt_number,
            self.policy.max_attempts,
            exc,
            wait,
        )

    @contextlib.contextmanager
    def _translated(self, url: str) -> Iterator[None]:
        """httpx's errors as the source's: timeouts and broken connections transient, the rest permanent."""
        try:
            yield
        except httpx.TimeoutException as exc:
            raise TransientSourceError(f"timeout: {type(exc).__name__}") from exc
        except (httpx.NetworkError, httpx.RemoteProtocolError, httpx.DecodingError) as exc:
            raise TransientSourceError(f"{type(exc).__name__}: {exc}") from exc
        except httpx.HTTPError as exc:  # invalid URL, unsupported protocol, ...
            raise PermanentSourceError(f"GET {url}: {type(exc).__name__}: {exc}") from exc

    def _check_status(self, response: httpx.Response, what: str) -> None:
        """Raise RetryableResponseError for the policy's statuses, PermanentSourceError for any other non-2xx."""
        status = response.status_code
        if status in self.policy.statuses:
            raise RetryableResponseError(f"HTTP {status}", parse_retry_after(response.headers.get("Retry-After")))
        if not 200 <= status < 300:
            detail = _head_of(response, 300).decode("utf-8", "replace")
            raise PermanentSourceError(f"GET {what}: HTTP {status}: {detail}")

    def _identity_attempt(self, url: str) -> ServiceIdentity:
        """One ``GET /``: the identity, or TransientSourceError (retry) / PermanentSourceError (do not)."""
        with (
            self._translated(url),
            self._http.stream("GET", url, headers={"Accept": JSON_MEDIA_TYPE}) as response,
        ):
            self._check_status(response, url)
            body = read_body(response, self.settings.max_response_bytes)
        try:
            return ServiceIdentity.from_json(json.loads(body))
        except ValueError as exc:
            raise PermanentSourceError(
                f"GET {url}: the service does not report which stream it serves ({exc}); "
                "the pipeline needs a service that does (update it)"
            ) from exc

    def _attempt(self, params: dict[str, int], cursor: int | None) -> FetchResult:
        """One request: records, or TransientSourceError (retry) / PermanentSourceError (do not)."""
        headers = {"Accept": ACCEPT_ARROW if self.prefer_arrow else ACCEPT_JSON}
        with (
            self._translated(self.url),
            self._http.stream("GET", self.url, params=params, headers=headers) as response,
        ):
            self._check_status(response, f"{self.url} {params}")
            body = read_body(response, self.settings.max_response_bytes)
            content_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
            next_header = response.headers.get(NEXT_CURSOR_HEADER)
        try:
            next_cursor = int(next_header) if next_header is not None else -1
        except ValueError:
            next_cursor = -1
        if next_cursor < 0:
            raise PermanentSourceError(f"GET {self.url} {params}: no usable {NEXT_CURSOR_HEADER} header")
        if content_type == ARROW_MEDIA_TYPE:
            validated = validate_table(decode_arrow(body))
            kind = "arrow"
        elif content_type == JSON_MEDIA_TYPE:
            validated = validate_json(body)
            kind = "json"
        else:
            raise PermanentSourceError(f"GET {self.url} {params}: unexpected Content-Type {content_type!r}")
        return FetchResult(validated.valid, validated.invalid, cursor, next_cursor, kind)


def read_body(response: httpx.Response, limit: int | None = None) -> bytes | bytearray:
    """The whole body, checked against ``Content-Length``; never holds more than ``limit`` bytes of it.

    Raises ResponseTooLargeError (transient) as soon as the declared length or the bytes read exceed
    ``limit`` (None: no cap), before allocating them; httpx.RemoteProtocolError if the body is shorter
    or longer than its ``Content-Length``. Raw chunks go into one preallocated buffer: httpx's
    ``read()`` costs ~3x more for a 24 MB body.
    """
    size = response.headers.get("Content-Length")
    expected = int(size) if size is not None and size.isdigit() else None
    cap = sys.maxsize if limit is None else limit
    if expected is not None and expected > cap:
        raise ResponseTooLargeError(f"Content-Length {expected} is over MAX_RESPONSE_BYTES={cap}; not read")
    identity = response.headers.get("Content-Encoding", "identity").strip().lower() in ("", "identity")
    if response.is_stream_consumed:  # already in memory (a mock transport)
        body: bytes | bytearray = response.content
        if len(body) > cap:
            raise ResponseTooLargeError(f"body of {len(body)} bytes is over MAX_RESPONSE_BYTES={cap}")
        if identity and expected is not None and len(body) != expected:
            raise httpx.RemoteProtocolError(f"body of {len(body)} bytes, Content-Length {expected}")
        return body
    if not identity:  # compressed: the cap applies to the decoded bytes (a small body can inflate a lot)
        decoded = bytearray()
        for chunk in response.iter_bytes():
            decoded += chunk
            if len(decoded) > cap:
                raise ResponseTooLargeError(f"decoded body over MAX_RESPONSE_BYTES={cap}; stopped reading")
        if expected is not None and response.num_bytes_downloaded != expected:
            raise httpx.RemoteProtocolError(f"body of {response.num_bytes_downloaded} bytes, Content-Length {expected}")
        return decoded
    buffer = bytearray(expected or 0)  # expected <= cap here
    view = memoryview(buffer)
    filled = 0
    for chunk in response.iter_raw():
        end = filled + len(chunk)
        if end > len(buffer):
            if expected is not None:
                raise httpx.RemoteProtocolError(f"body longer than its Content-Length {expected}")
            if end > cap:
                raise ResponseTooLargeError(f"body over MAX_RESPONSE_BYTES={cap}; stopped reading")
            view.release()
            buffer[filled:] = chunk
            view = memoryview(buffer)
        else:
            view[filled:end] = chunk
        filled = end
    view.release()
    if expected is not None and filled != expected:
        raise httpx.RemoteProtocolError(f"body ended after {filled} of {expected} bytes")
    return buffer


def _head_of(response: httpx.Response, size: int) -> bytes:
    """At most the first ``size`` bytes of the (decoded) body, for an error message; the rest is not read."""
    if response.is_stream_consumed:
        return response.content[:size]
    head = bytearray()
    for chunk in response.iter_bytes():
        head += chunk
        if len(head) >= size:
            break
    return bytes(head[:size])


def get_employee_badge_logs(
    cursor: int | None = None, batch: int | None = None, *, settings: Settings | None = None
) -> FetchResult:
    """The original's entry point: one fetch with a short-lived :class:`BadgeLogClient`."""
    with BadgeLogClient(settings) as client:
        return client.get_employee_badge_logs(cursor, batch)
