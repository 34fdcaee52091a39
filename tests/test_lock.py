from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lake import layout
from lake.lock import LakeLock
from utils.errors import LakeError, LakeLockedError


def test_second_holder_is_refused_and_release_frees(tmp_path: Path) -> None:
    first = LakeLock(tmp_path, layout.PIPELINE_LOCK, "pipeline").acquire()
    with pytest.raises(LakeLockedError, match="another pipeline"):
        LakeLock(tmp_path, layout.PIPELINE_LOCK, "pipeline").acquire()
    # A different role is independent.
    with LakeLock(tmp_path, layout.COMPACTOR_LOCK, "compactor"):
        pass
    first.release()
    with LakeLock(tmp_path, layout.PIPELINE_LOCK, "pipeline") as again:
        assert again.held


def test_lock_held_by_another_process_dies_with_it(tmp_path: Path) -> None:
    code = (
        "import sys,time; from lake.lock import LakeLock; "
        f"LakeLock(sys.argv[1], {layout.PIPELINE_LOCK!r}, 'pipeline').acquire(); "
        "print('held', flush=True); time.sleep(60)"
    )
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, cwd=root)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"held"
        probe = LakeLock(tmp_path, layout.PIPELINE_LOCK, "pipeline")
        assert probe.is_locked_elsewhere()
        with pytest.raises(LakeLockedError, match=f"pid {proc.pid}"):
            probe.acquire()
    finally:
        proc.kill()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
    assert not probe.is_locked_elsewhere()
    probe.acquire().release()


def test_a_symlink_planted_at_the_lock_path_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    target = tmp_path / "precious.txt"
    target.write_text("keep me\n" * 10)
    lake = tmp_path / "lake"
    lake.mkdir()
    (lake / layout.PIPELINE_LOCK).symlink_to(target)
    lock = LakeLock(lake, layout.PIPELINE_LOCK, "pipeline")
    with pytest.raises(LakeError, match="pipeline lock") as info:
        lock.acquire()
    assert not isinstance(info.value, LakeLockedError) and str(lake / layout.PIPELINE_LOCK) in str(info.value)
    with pytest.raises(LakeError):
        lock.is_locked_elsewhere()
    assert not lock.held
    assert target.read_text() == "keep me\n" * 10


def test_a_hard_link_planted_at_the_lock_path_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    target = tmp_path / "precious.txt"
    target.write_text("keep me\n" * 10)
    lake = tmp_path / "lake"
    lake.mkdir()
    os.link(target, lake / layout.COMPACTOR_LOCK)
    with pytest.raises(LakeError, match="2 links"):
        LakeLock(lake, layout.COMPACTOR_LOCK, "compactor").acquire()
    assert target.read_text() == "keep me\n" * 10


def test_the_pid_is_written_over_the_old_one_without_truncating(tmp_path: Path) -> None:
    path = tmp_path / layout.PIPELINE_LOCK
    path.write_text("12345678901234\n")  # a previous holder's longer pid
    with LakeLock(tmp_path, layout.PIPELINE_LOCK, "pipeline"):
        assert path.read_text().split() == [str(os.getpid())]
        with pytest.raises(LakeLockedError, match=rf"\(pid {os.getpid()}\)"):
            LakeLock(tmp_path, layout.PIPELINE_LOCK, "pipeline").acquire()
