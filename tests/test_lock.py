from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lake import layout
from lake.lock import LakeLock
from utils.errors import LakeLockedError


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
