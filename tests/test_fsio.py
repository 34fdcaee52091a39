"""The one atomic write: whole or nothing, never over an existing file, no temp file left behind."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from utils import fsio


def test_write_new_creates_once_and_never_replaces(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "state"
    assert fsio.write_new(target, b"first\n") is True
    assert fsio.write_new(target, b"second\n") is False
    assert target.read_bytes() == b"first\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["state"]  # no temp file left


def test_a_failure_before_the_link_publishes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_fsync(path: Path) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(fsio, "fsync_file", broken_fsync)
    tmp = tmp_path / "x.tmp"
    tmp.write_bytes(b"data")
    with pytest.raises(OSError, match="Input/output") as info:
        fsio.link_new(tmp, tmp_path / "x")
    assert not isinstance(info.value, fsio.NotDurableError)
    assert list(tmp_path.iterdir()) == []


def test_a_failure_after_the_link_says_the_file_is_published(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_fsync_dir(path: Path) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(fsio, "fsync_dir", broken_fsync_dir)
    tmp = tmp_path / "x.tmp"
    tmp.write_bytes(b"data")
    with pytest.raises(fsio.NotDurableError, match="published but not yet durable"):
        fsio.link_new(tmp, tmp_path / "x")
    assert (tmp_path / "x").read_bytes() == b"data"
