"""``make clean``: asks, refuses under a running process, and removes the tables with their files."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import pytest

from lake import layout
from lake.lock import LakeLock
from lake.quarantine import commit_refused
from lake.storage import LocalStorage
from lake.table import LOG_DIR, has_log, read_snapshot
from testkit.fake_source import as_refused
from testkit.landing import publish_landing
from testkit.processes import ROOT
from testkit.records import make_records


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


def test_clean_removes_the_tables_logs_with_their_files(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "lake")
    publish_landing(storage, 0, 100, 2)
    commit_refused(storage, as_refused(make_records(7, 1), "bad"))
    (storage.root / ".stream_start").write_text("2025-03-03T00:00:00Z\n")
    assert has_log(storage.root) and has_log(storage.root / layout.QUARANTINE)
    removed = _clean(storage.root, "", "--yes")
    assert removed.returncode == 0 and "logs" in removed.stdout
    assert not storage.root.exists()
    assert not (storage.root / LOG_DIR).exists() and not (storage.root / layout.QUARANTINE / LOG_DIR).exists()
    assert read_snapshot(storage).version is None  # no table survives to point at deleted files


def test_clean_refuses_while_a_compactor_holds_the_lake(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "lake")
    publish_landing(storage, 0, 10, 1)
    with LakeLock(storage.root, layout.COMPACTOR_LOCK, "compactor"):
        out = _clean(storage.root, "", "--yes")
    assert out.returncode == 3 and "a compactor is running" in out.stdout
    assert read_snapshot(storage).rows == 10


def _read_until(stream: IO[bytes], marker: bytes, timeout: float = 60) -> bytes:
    """What ``stream`` gave until ``marker`` (a prompt without a newline), or fail after ``timeout``."""
    got = b""
    deadline = time.monotonic() + timeout
    while marker not in got:
        ready, _, _ = select.select([stream], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"no {marker!r} within {timeout} s; got {got!r}"
        data = os.read(stream.fileno(), 4096)
        assert data, f"stream ended before {marker!r}; got {got!r}"
        got += data
    return got


@pytest.mark.parametrize(
    ("filename", "role"), [(layout.PIPELINE_LOCK, "pipeline"), (layout.COMPACTOR_LOCK, "compactor")]
)
def test_a_process_started_during_the_prompt_is_caught(tmp_path: Path, filename: str, role: str) -> None:
    storage = LocalStorage(tmp_path / "lake")
    publish_landing(storage, 0, 10, 1)
    env = {**os.environ, "DATA_LAKE_PATH": str(storage.root)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "processes.clean"],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdin is not None and proc.stdout is not None
        _read_until(proc.stdout, b"[y/N] ")
        with LakeLock(storage.root, filename, role):  # it starts while the prompt waits
            out, _ = proc.communicate(b"y\n", timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 3
    assert f"a {role} is running".encode() in out
    assert read_snapshot(storage).rows == 10  # nothing deleted under it
    assert (storage.root / filename).exists()
