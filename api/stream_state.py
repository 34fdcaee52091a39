"""Where the synthetic stream starts: ``GENERATOR_STREAM_START``, else remembered per lake.

Guarantee: without the setting, the first service start on a lake writes ``<DATA_LAKE_PATH>/.stream_start``
whole and never over an existing one (:meth:`lake.storage.Storage.write_new`: on a local disk a temp file,
fsync and link without overwrite; on S3 one PUT with ``If-None-Match: *``), and every later start reads the
same instant, so a restarted service continues the same stream and a pipeline resumes seamlessly; deleting
the lake starts a new stream. Two services starting at once agree on one value (the loser reads the
winner's).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Final

from lake.location import open_storage
from lake.storage import Storage
from utils.config import Settings
from utils.errors import ConfigError

STREAM_START_FILE: Final = ".stream_start"
VARIABLE: Final = "GENERATOR_STREAM_START"
EARLIEST: Final = datetime(1970, 1, 5, tzinfo=UTC)  # the generator's first week anchor (a Monday)
LATEST: Final = datetime(2200, 1, 1, tzinfo=UTC)
ALLOWED: Final = "an ISO-8601 instant from 1970-01-05 to 2200-01-01, e.g. 2025-03-03T00:00:00Z (naive = UTC)"


def parse_stream_start(text: str, *, source: str = VARIABLE) -> datetime:
    """An aware UTC datetime from ISO-8601 text (``Z`` or an offset; naive means UTC).

    Raises ConfigError naming ``source`` for anything else or an instant out of range.
    """
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(source, text, ALLOWED) from None
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    if not EARLIEST <= moment < LATEST:
        raise ConfigError(source, text, ALLOWED)
    return moment


def format_stream_start(moment: datetime) -> str:
    """``2025-03-03T09:15:00Z``-style text for an aware datetime (microseconds kept when present)."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def resolve_stream_start(settings: Settings, *, now: Callable[[], datetime] | None = None) -> datetime:
    """The stream start for these settings: the setting if given, else the lake's remembered one.

    On a lake without ``.stream_start`` the current second (UTC) is written first. Raises ConfigError if
    the setting or the file holds something that is not an instant.
    """
    if settings.generator_stream_start:
        return parse_stream_start(settings.generator_stream_start)
    storage = open_storage(settings.data_lake_path)
    remembered = _read(storage)
    if remembered is not None:
        return remembered
    moment = (now or _utc_now)().astimezone(UTC).replace(microsecond=0)
    storage.write_new(STREAM_START_FILE, (format_stream_start(moment) + "\n").encode())  # False: another won
    remembered = _read(storage)
    if remembered is None:  # pragma: no cover - only if the file vanished between write and read
        where = f"{storage.location}/{STREAM_START_FILE}"
        raise ConfigError(VARIABLE, "", f"{where} could not be written; set {VARIABLE} explicitly")
    return remembered


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _read(storage: Storage) -> datetime | None:
    try:
        text = storage.read_bytes(STREAM_START_FILE).decode("utf-8")
    except FileNotFoundError:
        return None
    where = f"{storage.location}/{STREAM_START_FILE}"
    return parse_stream_start(text, source=f"{VARIABLE} (unset; remembered in {where})")
