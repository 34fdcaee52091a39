"""Where a lake lives: ``DATA_LAKE_PATH`` to the storage backend that keeps the lake's contract there."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from lake.objectstore import ObjectStorage
from lake.storage import LocalStorage, Storage


def is_object_store(location: Path | str) -> bool:
    """True for an ``s3://`` URL (the lake on S3-compatible object storage)."""
    return isinstance(location, str) and location.lower().startswith("s3://")


def open_storage(location: Path | str, environ: Mapping[str, str] | None = None) -> Storage:
    """:class:`~lake.objectstore.ObjectStorage` for ``s3://bucket/prefix`` (credentials and endpoint from
    ``environ``, default the process's), :class:`~lake.storage.LocalStorage` for a directory."""
    if is_object_store(location):
        return ObjectStorage(str(location), environ)
    return LocalStorage(location)
