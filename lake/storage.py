"""The lake's only door to the file system: publish, list, read metadata, move, delete.

Everything else in ``lake/`` speaks in keys relative to the lake root (``"landing/x.parquet"``),
so the same lake on S3-compatible storage is a second class with these methods (:class:`Storage`,
:mod:`lake.objectstore`), not a rewrite.

Guarantees of :class:`LocalStorage`:

* ``publish`` is the commit point: the file is fsynced, then *linked* under its final name (which
  fails instead of overwriting an existing file), the temporary name removed, and both directories
  fsynced. A reader listing ``landing/`` or ``compacted/`` sees a whole file or nothing.
* ``temp/`` and the zones live on one file system, so the link is atomic.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pyarrow as pa
import pyarrow.parquet as pq

from lake import layout
from utils.errors import CommitError, CorruptFileError, LakeError
from utils.fsio import NotDurableError, fsync_dir, link_new, write_new
from utils.fsio import fsync_file as fsync_file  # noqa: PLC0414 - re-exported for the compactor

log = logging.getLogger(__name__)

LOG_DIR: Final = "_delta_log"  # a Delta table's log, under its root


@dataclass(frozen=True, order=True)
class FileInfo:
    """A data file as listed: key relative to the lake root, size in bytes, modification time (ns)."""

    key: str
    size: int
    mtime_ns: int

    @property
    def zone(self) -> str:
        return self.key.split("/", 1)[0]

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]


class Storage(ABC):
    """What the lake needs of where it lives, in keys relative to its root: :class:`LocalStorage` on a local
    file system, :class:`lake.objectstore.ObjectStorage` on S3-compatible object storage. Each
    implementation states how it keeps the contract: ``publish`` makes a whole file visible under a new
    name or fails without overwriting; reads tell a missing file (FileNotFoundError) from a failed read
    (LakeError, retryable) from bytes that are not Parquet (CorruptFileError); ``delete`` is idempotent.
    Backends implement the primitives; the other operations derive from them here.
    """

    @abstractmethod
    def ensure_layout(self) -> None: ...
    @abstractmethod
    def exists(self, key: str) -> bool: ...
    @abstractmethod
    def list_files(self, zone: str, suffix: str = layout.PARQUET_SUFFIX) -> list[FileInfo]: ...
    @abstractmethod
    def read_footer(self, key: str) -> pq.FileMetaData: ...
    @abstractmethod
    def new_temp_path(self, name: str) -> Path: ...
    @abstractmethod
    def publish(self, tmp: Path, zone: str, name: str) -> FileInfo: ...
    @abstractmethod
    def delete(self, key: str) -> bool: ...
    @abstractmethod
    def published(self, key: str) -> FileInfo | None:
        """The file at ``key`` if an earlier publish of it completed (made durable first), else None."""

    @abstractmethod
    def open_input(self, key: str) -> pa.NativeFile:
        """A seekable reader of ``key`` for pyarrow (Parquet reads only the ranges they need).

        FileNotFoundError if it is not there; reads from it raise OSError on an I/O failure.
        """

    @abstractmethod
    def read_bytes(self, key: str) -> bytes:
        """The whole file; FileNotFoundError if it is not there, LakeError if reading it failed."""

    @abstractmethod
    def write_new(self, key: str, data: bytes) -> bool:
        """Create a small file whole, never over an existing one; False if one was there (it stands)."""

    # -- tables ------------------------------------------------------------------------------------
    @property
    @abstractmethod
    def location(self) -> str:
        """The lake's root as a user writes it (a directory, or ``s3://bucket/prefix``), for messages."""

    @abstractmethod
    def table_uri(self, prefix: str = "") -> str:
        """The root of the Delta table at ``prefix`` (``""``: the events table) as delta-rs takes it."""

    @property
    @abstractmethod
    def storage_options(self) -> dict[str, str] | None:
        """delta-rs's ``storage_options`` for this backend (None: its defaults)."""

    def has_table(self, prefix: str = "") -> bool:
        """True if ``prefix`` is the root of a Delta table (its log has at least one commit)."""
        head = f"{prefix}/{LOG_DIR}" if prefix else LOG_DIR
        return bool(self.list_files(head, suffix=".json"))

    def list_all(self, zone: str) -> list[FileInfo]:
        """Every file directly in ``zone``, whatever its name (for temp/ cleanup and foreign files)."""
        return self.list_files(zone, suffix="")

    @abstractmethod
    def list_tree(self, zone: str, suffix: str = layout.PARQUET_SUFFIX) -> list[FileInfo]:
        """Every file under ``zone`` at any depth (a data zone's date partitions: ``landing/date=…/x``) ending
        in ``suffix``, sorted by key; a missing zone is empty."""

    def read_metadata(self, key: str) -> dict[str, str]:
        """The footer's key-value metadata as text (``badge.*`` and others); errors as :meth:`read_footer`."""
        raw = self.read_footer(key).metadata or {}
        return {k.decode(): v.decode() for k, v in raw.items() if not k.startswith(b"ARROW:")}

    def read_row_count(self, key: str) -> int:
        """Rows in a Parquet file according to its footer; errors as :meth:`read_footer`."""
        return int(self.read_footer(key).num_rows)

    @contextlib.contextmanager
    def staged(self, name: str) -> Iterator[Path]:
        """Yield a temp path to write; the file is removed if the block raises (nothing partial stays)."""
        tmp = self.new_temp_path(name)
        try:
            yield tmp
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


class LocalStorage(Storage):
    """A lake on a local (POSIX) file system."""

    def __init__(self, root: Path | str) -> None:
        if isinstance(root, str) and "://" in root:  # Path("s3://b/p") would be the local directory s3:/b/p
            raise ValueError(f"{root!r} is a URL, not a directory (lake.location.open_storage takes both)")
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"LocalStorage({str(self.root)!r})"

    # -- layout -------------------------------------------------------------------------------------
    def ensure_layout(self) -> None:
        """Create the lake root and its zones if missing (idempotent)."""
        for zone in layout.ZONES:
            (self.root / zone).mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        """The local path of a key (for engines that read files directly, such as DuckDB)."""
        return self.root / key

    @property
    def location(self) -> str:
        return str(self.root)

    def table_uri(self, prefix: str = "") -> str:
        return str(self.root / prefix) if prefix else str(self.root)

    @property
    def storage_options(self) -> dict[str, str] | None:
        return None

    def published(self, key: str) -> FileInfo | None:
        path = self.root / key
        if not path.exists():
            return None
        fsync_dir(path.parent)  # the earlier publish may have failed on its directory fsync
        st = path.stat()
        return FileInfo(key, st.st_size, st.st_mtime_ns)

    def open_input(self, key: str) -> pa.NativeFile:
        return pa.OSFile(str(self.root / key))

    def read_bytes(self, key: str) -> bytes:
        try:
            return (self.root / key).read_bytes()
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise LakeError(f"{key}: could not be read ({exc})") from exc

    def write_new(self, key: str, data: bytes) -> bool:
        return write_new(self.root / key, data)

    def has_table(self, prefix: str = "") -> bool:
        log_dir = self.root / prefix / LOG_DIR
        return log_dir.is_dir() and any(log_dir.glob("*.json"))  # the first entry answers: no listing of the rest

    def exists(self, key: str) -> bool:
        return (self.root / key).exists()

    # -- listing ------------------------------------------------------------------------------------
    def list_files(self, zone: str, suffix: str = layout.PARQUET_SUFFIX) -> list[FileInfo]:
        """Files directly in ``zone`` ending in ``suffix``, sorted by key; a missing zone is empty."""
        out: list[FileInfo] = []
        try:
            entries = list(os.scandir(self.root / zone))
        except FileNotFoundError:
            return out
        for entry in entries:
            if not entry.name.endswith(suffix) or not entry.is_file(follow_symlinks=False):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:  # deleted between scandir and stat
                continue
            out.append(FileInfo(f"{zone}/{entry.name}", st.st_size, st.st_mtime_ns))
        out.sort()
        return out

    def list_tree(self, zone: str, suffix: str = layout.PARQUET_SUFFIX) -> list[FileInfo]:
        out = self.list_files(zone, suffix)
        try:
            subdirs = [e.name for e in os.scandir(self.root / zone) if e.is_dir(follow_symlinks=False)]
        except FileNotFoundError:
            return out
        for name in subdirs:
            out += self.list_tree(f"{zone}/{name}", suffix)
        out.sort()
        return out

    # -- metadata -----------------------------------------------------------------------------------
    def read_footer(self, key: str) -> pq.FileMetaData:
        """The Parquet footer of ``key`` (row counts, schema, statistics, key-value metadata).

        Raises FileNotFoundError if the file is gone, LakeError on an I/O error (EIO, ESTALE: it may
        pass, so it is never taken for damage), CorruptFileError if the bytes read are not Parquet.
        """
        try:
            return pq.read_metadata(self.root / key)
        except FileNotFoundError:
            raise
        except (OSError, ValueError) as exc:
            if not (self.root / key).exists():
                raise FileNotFoundError(key) from exc
            if isinstance(exc, OSError) and exc.errno is not None:  # the OS failed, not the file's format
                raise LakeError(f"{key}: could not be read ({exc})") from exc
            raise CorruptFileError(f"{key}: not readable Parquet ({exc})") from exc

    # -- writing ------------------------------------------------------------------------------------
    def new_temp_path(self, name: str) -> Path:
        """A fresh path in ``temp/`` for a file that will be published as ``name``."""
        (self.root / layout.TEMP).mkdir(parents=True, exist_ok=True)
        return self.root / layout.TEMP / f"{name}.{uuid.uuid4().hex[:8]}.tmp"

    def publish(self, tmp: Path, zone: str, name: str) -> FileInfo:
        """Commit a fully written temp file as ``zone/name``: fsync, link without overwrite, unlink temp.

        After it returns, the file is durable and visible; if it raises CommitError, nothing was
        published and the temp file is gone.
        """
        dest = self.root / zone / name
        try:
            # A new date partition's directory is created (and again if the clean-up removed it, emptied, meanwhile).
            link_new(tmp, dest, make_parent=True)
        except NotDurableError:
            raise  # published: an OSError for the caller to retry, never a second copy
        except OSError as exc:
            raise CommitError(f"could not publish {zone}/{name}: {exc}") from exc
        st = dest.stat()
        return FileInfo(f"{zone}/{name}", st.st_size, st.st_mtime_ns)

    def move(self, key: str, zone: str, name: str | None = None) -> str:
        """Rename ``key`` into ``zone`` (same file system, atomic); returns the new key."""
        src = self.root / key
        dest_dir = self.root / zone
        dest_dir.mkdir(parents=True, exist_ok=True)
        new_name = name or src.name
        dest = dest_dir / new_name
        if dest.exists():
            dest = dest_dir / f"{uuid.uuid4().hex[:8]}-{new_name}"
        src.rename(dest)
        fsync_dir(dest_dir)
        fsync_dir(src.parent)
        return f"{zone}/{dest.name}"

    def delete(self, key: str) -> bool:
        """Remove ``key`` durably; returns False if it was already gone (deleting is idempotent)."""
        target = self.root / key
        try:
            target.unlink()
        except FileNotFoundError:
            return False
        partition = "=" in target.parent.name and target.parent.parent != self.root  # a date partition's directory
        try:
            fsync_dir(target.parent)
        except FileNotFoundError:
            if not partition:
                raise
            fsync_dir(target.parent.parent)  # another process removed the emptied directory meanwhile
            return True
        if partition:
            with contextlib.suppress(OSError):  # not empty (or gone): it stays
                target.parent.rmdir()
                fsync_dir(target.parent.parent)
        return True
