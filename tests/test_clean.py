from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from lake import layout
from lake.lock import LakeLock
from testkit.processes import ROOT


def _clean(lake: Path, answer: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATA_LAKE_PATH": str(lake)}
    return subprocess.run(
        [sys.executable, "-m", "processes.clean", *args],
        cwd=ROOT,
        env=env,
        input=answer,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_clean_asks_and_keeps_unless_told_yes(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    (lake / "landing").mkdir(parents=True)
    kept = _clean(lake, "n\n")
    assert kept.returncode == 0 and "kept" in kept.stdout and lake.exists()
    removed = _clean(lake, "y\n")
    assert removed.returncode == 0 and not lake.exists()
    assert "nothing to remove" in _clean(lake, "").stdout


def test_clean_refuses_while_a_pipeline_holds_the_lake(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    lake.mkdir()
    with LakeLock(lake, layout.PIPELINE_LOCK, "pipeline"):
        out = _clean(lake, "", "--yes")
    assert out.returncode == 3
    assert "a pipeline is running" in out.stdout
    assert lake.exists()
