"""`make run`'s launcher end to end: every process comes up, the lake grows, one SIGINT stops them all."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest

from lake import layout
from lake.location import open_storage
from lake.parquet import write_file
from lake.storage import LocalStorage
from lake.table import read_snapshot
from processes.launcher import commands, port_in_use
from processes.local_s3 import LAKE_URL
from processes.local_s3 import environment as local_s3_environment
from testkit.processes import ROOT, ManagedProcess, free_port, http_ok, wait_until
from testkit.records import lake_table
from utils.config import load_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(")")[-1].split()[0] != "Z"


def demo_env(lake: Path, api_port: int, dash_port: int) -> dict[str, str]:
    """A fast demo: a busy stream, short flushes, sweeps and grace, so the lake grows and compacts in seconds."""
    return {
        "DATA_LAKE_PATH": str(lake),
        "API_PORT": str(api_port),
        "DASHBOARD_PORT": str(dash_port),
        "EVENTS_PER_SECOND": "2000",
        "FLUSH_INTERVAL_SECONDS": "0.5",
        "POLL_INTERVAL_SECONDS": "0.2",
        "COMPACTION_MIN_FILES": "8",
        "COMPACTION_TARGET_MIN_MB": "1",
        "COMPACTION_TARGET_MAX_MB": "4",
        "COMPACTION_GRACE_SECONDS": "1",
        "COMPACTION_SWEEP_SECONDS": "1",
    }


def test_launcher_runs_everything_and_one_sigint_stops_all(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    api_port, dash_port = free_port(), free_port()
    env = demo_env(lake, api_port, dash_port)
    log = tmp_path / "launcher.log"
    launcher = ManagedProcess([sys.executable, "-m", "processes.launcher"], env=env, log_path=log)
    with launcher:
        wait_until(lambda: http_ok(f"http://127.0.0.1:{api_port}/health/"), 60, what="the service")
        wait_until(lambda: http_ok(f"http://127.0.0.1:{dash_port}/_stcore/health"), 60, what="the dashboard")
        storage = LocalStorage(lake)
        wait_until(lambda: read_snapshot(storage).rows > 0, 60, what="the first committed records")
        first = read_snapshot(storage).rows
        wait_until(lambda: read_snapshot(storage).rows > first, 30, what="the lake to grow")
        wait_until(lambda: len(read_snapshot(storage).in_zone("compacted")) > 0, 60, what="a compaction")
        out = launcher.output()
        assert f"dashboard http://127.0.0.1:{dash_port}" in out
        assert re.search(r"^\S+ pipeline\s+\| ", out, re.M), "log lines carry the process name"
        pids = [int(p) for p in re.findall(r"started \(pid=(\d+)\)", out)]
        pids += [int(p) for p in re.findall(r"started the compactor \(pid (\d+)\)", out)]
        assert len(pids) == 4, out

        launcher.signal(signal.SIGINT)
        assert launcher.wait(30) == 0, launcher.output()[-3000:]
    for pid in pids:
        wait_until(lambda pid=pid: not _alive(pid), 10, what=f"process {pid} to end")
    final = launcher.output()
    assert "pipeline stopped (rc=0)" in final
    snapshot = read_snapshot(storage)
    assert snapshot.rows > 0 and snapshot.committed_event_id is not None
    verified = subprocess.run(
        [sys.executable, "-m", "lake", "verify"],
        cwd=ROOT,
        env={**os.environ, "DATA_LAKE_PATH": str(lake), "COMPACTION_GRACE_SECONDS": "1"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_launcher_runs_everything_on_a_local_s3_server(tmp_path: Path) -> None:
    # make run LAKE=s3: a local S3 server first, then every process on s3://badge-lake/lake.
    api_port, dash_port, s3_port = free_port(), free_port(), free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
        # --local-s3 puts the lake on the S3 server instead of this directory
        **demo_env(tmp_path / "unused", api_port, dash_port),
    }
    launcher = ManagedProcess(
        [sys.executable, "-m", "processes.launcher", "--local-s3", str(s3_port)], env=env, log_path=tmp_path / "log"
    )
    with launcher:
        wait_until(lambda: http_ok(f"http://127.0.0.1:{dash_port}/_stcore/health"), 60, what="the dashboard")
        s3_env = local_s3_environment(f"http://127.0.0.1:{s3_port}")
        with mock.patch.dict(os.environ, s3_env):
            storage = open_storage(LAKE_URL)
            wait_until(lambda: read_snapshot(storage).rows > 0, 60, what="records in the S3 lake")
            wait_until(lambda: len(read_snapshot(storage).in_zone("compacted")) > 0, 90, what="a compaction on S3")
        out = launcher.output()
        assert f"lake {LAKE_URL} (a local S3 server at http://127.0.0.1:{s3_port}" in out
        launcher.signal(signal.SIGINT)
        assert launcher.wait(30) == 0, launcher.output()[-3000:]
    assert not port_in_use("127.0.0.1", s3_port) or _wait_free(s3_port)  # the S3 server stopped too
    assert not (ROOT / "s3:").exists() and not (tmp_path / "unused").exists()


def _wait_free(port: int) -> bool:
    wait_until(lambda: not port_in_use("127.0.0.1", port), 10, what=f"port {port} to be released")
    return True


def test_launcher_refuses_a_port_in_use(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert port_in_use("127.0.0.1", port)
        env = {**os.environ, "DATA_LAKE_PATH": str(tmp_path / "lake"), "API_PORT": str(port)}
        out = subprocess.run(
            [sys.executable, "-m", "processes.launcher"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
        )
    assert out.returncode == 2
    assert f"port {port} on 127.0.0.1 is in use (API_PORT)" in out.stdout + out.stderr


def test_launcher_refuses_an_unmigrated_lake_before_starting_anything(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "lake")
    storage.ensure_layout()
    write_file(storage, lake_table(0, 10), layout.LANDING, "landing")  # the previous layout: files, no log
    env = {
        **os.environ,
        "DATA_LAKE_PATH": str(storage.root),
        "API_PORT": str(free_port()),
        "DASHBOARD_PORT": str(free_port()),
    }
    out = subprocess.run(
        [sys.executable, "-m", "processes.launcher"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2
    errors = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "python -m lake migrate" in errors[0]
    assert "Badge Data Platform" not in out.stdout  # nothing was started


def test_commands_follow_the_settings(tmp_path: Path) -> None:
    s = load_settings({"API_PORT": "9123", "DASHBOARD_PORT": "9124", "DATA_LAKE_PATH": str(tmp_path)}, env_file=None)
    cmds = commands(s, python="/py")
    assert cmds["api"].startswith("exec /py -m uvicorn api.main:app --host 127.0.0.1 --port 9123")
    assert cmds["pipeline"] == "exec /py pipeline.py"
    assert "--server.port 9124" in cmds["dashboard"] and "analytics_app.py" in cmds["dashboard"]
