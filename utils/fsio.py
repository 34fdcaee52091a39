"""The one atomic write: a fully written, fsynced file appears under its final name whole or not at all.

Guarantee: :func:`link_new` never replaces an existing file (``os.link`` refuses), and once it returns
the new name survives a crash (the file and both directories are fsynced). A reader never sees a
partial file. Used by the lake's publish (:meth:`lake.storage.LocalStorage.publish`) and the service's
remembered stream start (:mod:`api.stream_state`).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a rename, link or unlink in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    """Make a file's written bytes durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class NotDurableError(OSError):
    """The file was published (its new name exists, whole) but making that durable failed."""


def link_new(tmp: Path, dest: Path, *, make_parent: bool = False) -> None:
    """Publish the written file ``tmp`` as ``dest``: fsync, link without overwrite, fsync, unlink ``tmp``.

    The link is the commit point. Before it, a failure removes ``tmp`` and raises OSError
    (FileExistsError if ``dest`` exists): nothing was published. After it, ``dest`` is in place
    whole; a failure to fsync the directories raises :class:`NotDurableError`, and the caller must
    not publish the same data again. ``make_parent``: ``dest``'s directory is created if missing (its
    entry made durable), and created again if another process removed it, emptied, in the meantime.
    """
    try:
        fsync_file(tmp)
        for attempt in (1, 2):
            if make_parent and not dest.parent.is_dir():
                dest.parent.mkdir(parents=True, exist_ok=True)
                fsync_dir(dest.parent.parent)
            try:
                os.link(tmp, dest)  # atomic, and refuses to replace an existing file
                break
            except FileNotFoundError:
                if not make_parent or attempt == 2 or not tmp.exists():
                    raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:
        fsync_dir(dest.parent)
        tmp.unlink(missing_ok=True)
        fsync_dir(tmp.parent)
    except OSError as exc:
        raise NotDurableError(exc.errno, f"{dest} is published but not yet durable: {exc.strerror}") from exc


def write_new(path: Path, data: bytes) -> bool:
    """Create ``path`` holding ``data`` atomically; False (and nothing written) if it already exists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    tmp.write_bytes(data)
    try:
        link_new(tmp, path)
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
    return True
