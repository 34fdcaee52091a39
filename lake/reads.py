"""Reads of a data file through the storage that tell an I/O failure from damage.

:class:`RecordedReads` wraps a NativeFile of :meth:`lake.storage.Storage.open_input` as a file object for
``pa.PythonFile``. It only hands out bytes and decodes nothing, so an exception from one of its calls is the
OS or the store failing: it is re-raised as :class:`ReadFailed` and kept in ``failure`` (the first one), in
case pyarrow reports it otherwise. Anything the Parquet reader raises while ``failure`` is None is about
bytes that did arrive whole: the file is damaged. ``read_buffer`` hands pyarrow the NativeFile's buffers
(no copy). Used by ``python -m lake verify`` (:mod:`lake.audit`) and the migration (:mod:`lake.migrate`).
"""

from __future__ import annotations

import pyarrow as pa

from utils.errors import one_line


class ReadFailed(Exception):
    """A read of the storage itself failed (the OS, or a request to the store): an I/O failure, never damage."""


def read_failed(exc: BaseException) -> ReadFailed:
    """The ReadFailed saying what ``exc`` was, in one line."""
    return ReadFailed(f"{type(exc).__name__}: {one_line(exc)}")


class RecordedReads:
    """A file object over ``native`` that records the first failure of the reads themselves (see the module)."""

    def __init__(self, native: pa.NativeFile, key: str = "") -> None:
        self._native = native
        self.key = key
        self.failure: BaseException | None = None

    def _failed(self, exc: BaseException) -> ReadFailed:
        self.failure = self.failure or exc
        return read_failed(exc)

    def read_buffer(self, nbytes: int | None = None) -> pa.Buffer:
        try:
            return self._native.read_buffer(nbytes)
        except Exception as exc:
            raise self._failed(exc) from exc

    def read(self, nbytes: int | None = None) -> bytes:
        try:
            return bytes(self._native.read(nbytes))
        except Exception as exc:
            raise self._failed(exc) from exc

    def seek(self, position: int, whence: int = 0) -> int:
        try:
            return int(self._native.seek(position, whence))
        except Exception as exc:
            raise self._failed(exc) from exc

    def tell(self) -> int:
        return int(self._native.tell())

    def size(self) -> int:
        return int(self._native.size())

    @property
    def closed(self) -> bool:
        return bool(self._native.closed)

    def close(self) -> None:
        self._native.close()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False
