"""The previous layout's rule (before the lake became a Delta table): what its live set held.

Only ``python -m lake migrate`` (:mod:`lake.migrate`) uses this module: it turns the live set of a
lake without ``_delta_log`` into the table's first commits. Nothing else reads a lake this way any more.
It reads through :class:`~lake.storage.Storage` alone (listings and footers), so the same rule applies
to a lake of the previous layout on a local disk and to one copied, key for key, into a bucket.

Rule: all files in ``landing/`` and ``compacted/``, minus every file named in the
``badge.sources`` of any file in ``compacted/``. Computed from the files' footers alone; at every
instant, including after a crash, it held each event exactly once in a lake written by the previous
code (a footer is trusted here, so :mod:`lake.migrate` checks every file's contents against it).

``landing/`` is listed *before* ``compacted/``: a compaction that committed between the two listings
is then seen with its output (which hides its sources), never without both. Files whose footer is
unreadable or lacks the badge metadata are left out (and reported). In ``quarantine/`` the previous
pipeline wrote its refused records as ``quarantine-*.parquet``; a file moved there as foreign or
corrupt has a ``<name>.reason.json`` beside it.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

from lake import layout
from lake.snapshot import FileSet
from lake.storage import FileInfo, Storage
from utils.errors import CorruptFileError, LakeError

log = logging.getLogger(__name__)

_LISTING_ATTEMPTS = 5

QUARANTINE_KIND: Final = "quarantine"  # the previous pipeline's refused-record files: quarantine-*.parquet
SIDECAR_SUFFIX: Final = ".reason.json"  # beside a foreign or corrupt file moved into quarantine/


@dataclass(frozen=True)
class DataFile:
    """A data file with its badge metadata."""

    info: FileInfo
    event_id_min: int
    event_id_max: int
    row_count: int
    sources: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return self.info.key


def parse_badge_metadata(info: FileInfo, meta: dict[str, str]) -> DataFile:
    """Interpret ``badge.*`` entries; raises CorruptFileError if they are missing or malformed."""
    try:
        lo = int(meta[layout.META_EVENT_ID_MIN])
        hi = int(meta[layout.META_EVENT_ID_MAX])
        rows = int(meta[layout.META_ROW_COUNT])
        sources_raw = meta.get(layout.META_SOURCES)
        sources: tuple[str, ...] = ()
        if sources_raw is not None:
            parsed = json.loads(sources_raw)
            if not isinstance(parsed, list) or not all(isinstance(s, str) for s in parsed):
                raise ValueError("badge.sources is not a JSON array of strings")
            sources = tuple(parsed)
    except (KeyError, ValueError) as exc:
        raise CorruptFileError(f"{info.key}: missing or malformed badge metadata ({exc})") from exc
    if rows < 0 or (rows > 0 and lo > hi):
        raise CorruptFileError(f"{info.key}: inconsistent badge metadata ({lo}..{hi}, {rows} rows)")
    return DataFile(info, lo, hi, rows, sources)


@dataclass(frozen=True)
class Footer:
    """What the cache keeps of one file's footer: its badge metadata (or why it has none) and its rows."""

    badge: DataFile | CorruptFileError
    rows: int | None  # badge.row_count if it is a number, else the footer's row count; None if unreadable


def read_footer(storage: Storage, info: FileInfo) -> Footer:
    """Read what :class:`Footer` keeps of ``info`` from storage; raises FileNotFoundError if it is gone.

    An unreadable or foreign file gives a Footer holding the error, never an exception; a read that
    failed (the OS, or a request to the store) raises LakeError: it says nothing about the file.
    """
    try:
        meta = storage.read_metadata(info.key)
    except CorruptFileError as exc:
        return Footer(exc, None)
    badge: DataFile | CorruptFileError
    try:
        badge = parse_badge_metadata(info, meta)
    except CorruptFileError as exc:
        badge = exc
    raw = meta.get(layout.META_ROW_COUNT)
    rows: int | None
    if raw is not None and raw.isdigit():
        rows = int(raw)
    else:  # a foreign Parquet file: its footer still knows its rows
        try:
            rows = storage.read_row_count(info.key)
        except CorruptFileError:
            rows = None
    return Footer(badge, rows)


class MetadataCache:
    """Footers by (key, size, mtime): data files are immutable, so an entry never goes stale.

    Bounded: beyond ``capacity`` entries the least recently used one is dropped. Safe across threads.
    """

    def __init__(self, capacity: int = 200_000) -> None:
        self._capacity = capacity
        self._entries: OrderedDict[FileInfo, Footer] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def footer(self, storage: Storage, info: FileInfo) -> tuple[Footer, bool]:
        """The footer of ``info`` and whether it was read from storage now (False: from the cache).

        Raises FileNotFoundError if the file is gone (not cached: a new file may take its key).
        """
        with self._lock:
            hit = self._entries.get(info)
            if hit is not None:
                self._entries.move_to_end(info)
                return hit, False
        hit = read_footer(storage, info)
        with self._lock:
            self._entries[info] = hit
            if len(self._entries) > self._capacity:
                self._entries.popitem(last=False)
        return hit, True

    def get(self, storage: Storage, info: FileInfo) -> DataFile:
        """The badge metadata of ``info``; raises CorruptFileError if it has none, FileNotFoundError if gone."""
        badge = self.footer(storage, info)[0].badge
        if isinstance(badge, CorruptFileError):
            raise badge
        return badge


# The footer cache the previous layout's live set reads through (one per process).
FOOTER_CACHE = MetadataCache()


@dataclass(frozen=True)
class LiveSet(FileSet[DataFile]):
    """What a reader of the previous layout saw at one instant."""

    storage: Storage
    files: tuple[DataFile, ...]  # sorted by first event id
    replaced: tuple[DataFile, ...]  # still in storage, hidden by a compacted file naming them
    invalid: tuple[str, ...]  # keys of unreadable or foreign files, left out

    @property
    def next_event_id(self) -> int:
        """The cursor a pipeline resumed at: one past the highest live event."""
        top = self.max_event_id
        return 0 if top is None else top + 1


def _read_zone(storage: Storage, zone: str, cache: MetadataCache) -> tuple[list[DataFile], list[str]]:
    good: list[DataFile] = []
    bad: list[str] = []
    for info in storage.list_files(zone):
        try:
            good.append(cache.get(storage, info))
        except CorruptFileError as exc:
            log.debug("left out of the live set: %s", exc)
            bad.append(info.key)
    return good, bad


def live_set(storage: Storage, cache: MetadataCache | None = None) -> LiveSet:
    """The files every query must read, computed by the contract's rule.

    An empty or missing lake gives an empty live set, never an error.
    """
    cache = cache or FOOTER_CACHE
    for attempt in range(_LISTING_ATTEMPTS):
        try:
            landing, bad_landing = _read_zone(storage, layout.LANDING, cache)
            compacted, bad_compacted = _read_zone(storage, layout.COMPACTED, cache)
        except FileNotFoundError:
            # A replaced file vanished between listing and reading its footer: list again.
            log.debug("a file vanished while listing the live set (attempt %d)", attempt + 1)
            continue
        hidden = {src for f in compacted for src in f.sources}
        everything = landing + compacted
        live = sorted((f for f in everything if f.key not in hidden), key=lambda f: (f.event_id_min, f.key))
        replaced = tuple(f for f in everything if f.key in hidden)
        return LiveSet(storage, tuple(live), replaced, tuple(bad_landing + bad_compacted))
    raise LakeError("the lake kept changing while its live set was listed")


def pipeline_quarantine_files(storage: Storage) -> list[FileInfo]:
    """The previous pipeline's refused-record files in ``quarantine/`` (``quarantine-*.parquet``), sorted by key.

    A file with a ``<name>.reason.json`` beside it was moved there as foreign or corrupt, whatever its
    name: it is not one of them.
    """
    present = {info.name for info in storage.list_all(layout.QUARANTINE)}
    return [
        info
        for info in storage.list_files(layout.QUARANTINE)
        if info.name.startswith(f"{QUARANTINE_KIND}-") and f"{info.name}{SIDECAR_SUFFIX}" not in present
    ]
