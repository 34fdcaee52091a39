"""The one atomic write: whole or nothing, never over an existing file, no temp file left behind."""

from __future__ import annotations

import errno
import os
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


def test_a_directory_removed_under_a_publish_is_made_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The compactor's clean-up removes an emptied date directory while the pipeline publishes into it.
    tmp = tmp_path / "x.tmp"
    tmp.write_bytes(b"data")
    dest = tmp_path / "landing" / "date=2026-11-30" / "x"
    real_link = os.link
    removed: list[Path] = []

    def link_after_removal(src: Path, dst: Path) -> None:
        if not removed:
            Path(dst).parent.rmdir()
            removed.append(Path(dst).parent)
        real_link(src, dst)

    monkeypatch.setattr(os, "link", link_after_removal)
    fsio.link_new(tmp, dest, make_parent=True)
    assert removed and dest.read_bytes() == b"data" and not tmp.exists()

    monkeypatch.undo()
    again = tmp_path / "y.tmp"
    again.write_bytes(b"more")
    with pytest.raises(FileNotFoundError):  # without make_parent the missing directory is the caller's error
        fsio.link_new(again, tmp_path / "gone" / "y")
    assert not again.exists()
