"""``python pipeline.py`` as a process: exit statuses for a bad setting, a bad argument and a locked lake."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from lake import layout
from lake.lock import LakeLock
from testkit.processes import ROOT

PIPELINE = str(ROOT / "pipeline.py")


def run_pipeline(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "DATA_LAKE_PATH": str(tmp_path / "lake"), **env}
    # cwd is the temporary directory, so no .env file of the working tree is read.
    return subprocess.run(
        [sys.executable, PIPELINE, "--no-compaction", *args],
        cwd=tmp_path,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_bad_setting_exits_2_with_one_line(tmp_path: Path) -> None:
    done = run_pipeline(tmp_path, BATCH_SIZE="0")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "BATCH_SIZE" in lines[0] and "'0'" in lines[0] and "1 to 100000" in lines[0]
    assert not (tmp_path / "lake").exists()  # refused before touching anything


def test_a_bad_argument_exits_2(tmp_path: Path) -> None:
    done = run_pipeline(tmp_path, "--max-records", "-5")
    assert done.returncode == 2 and "--max-records" in done.stderr


def test_a_second_pipeline_is_refused_with_exit_3(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    with LakeLock(lake, layout.PIPELINE_LOCK, "pipeline"):
        done = run_pipeline(tmp_path)
    assert done.returncode == 3
    assert "another pipeline" in done.stderr and str(os.getpid()) in done.stderr
