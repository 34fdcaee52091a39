"""End to end on loopback: the real service, ``python pipeline.py`` with its child compactor, ``python -m lake verify``.

Every process runs in its own process group and is always stopped; lakes live in tmp_path.
"""

from __future__ import annotations

import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from lake import layout
from lake.storage import LocalStorage
from lake.table import SnapshotReader, quarantine_files, read_snapshot
from testkit.ids import file_ids, live_ids
from testkit.processes import PYTHON, ROOT, ManagedProcess, free_port, make_settings, running_service, wait_until

pytestmark = pytest.mark.integration

STOPPED = re.compile(r"stopped: .*committed ([\d,]+) in [\d,]+ files \| buffered [\d,]+ \| refused ([\d,]+)")


def lake_env(lake: Path, port: int, **overrides: object) -> dict[str, str]:
    """Environment for the service and the pipeline: small thresholds, this lake, this port."""
    settings = make_settings(
        lake,
        EMPLOYEE_BADGE_LOGS_URL=f"http://127.0.0.1:{port}/employee-badge-logs/",
        API_PORT=port,
        **overrides,
    )
    return settings.as_env()


@contextmanager
def service(env: dict[str, str], port: int, log: Path) -> Iterator[ManagedProcess]:
    with running_service(env, port, log) as proc:
        yield proc


def pipeline(env: dict[str, str], log: Path, *args: str) -> ManagedProcess:
    return ManagedProcess([PYTHON, str(ROOT / "pipeline.py"), *args], env=env, log_path=log)


def verify(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "lake", "verify"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )


def committed_by(output: str) -> int:
    """Records (valid + refused) the pipeline said it committed, from its final line."""
    match = STOPPED.findall(output)
    assert match, f"no final 'stopped:' line in the output:\n{output[-3000:]}"
    valid, refused = match[-1]
    return int(valid.replace(",", "")) + int(refused.replace(",", ""))


def all_ids(lake: Path) -> np.ndarray:
    """Every event id in the events table and in the quarantine table, sorted."""
    storage = LocalStorage(lake)
    quarantined = file_ids(storage.path(f.key) for f in quarantine_files(storage))
    return np.sort(np.concatenate([live_ids(storage), quarantined]))


def committed_position(lake: Path) -> int:
    """The pipeline's position in the table's log (the last event id committed)."""
    position = read_snapshot(LocalStorage(lake)).committed_event_id
    assert position is not None
    return position


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def test_firehose_run_with_the_child_compactor_then_a_resumed_run(tmp_path: Path) -> None:
    port = free_port()
    lake = tmp_path / "lake"
    env = lake_env(lake, port, EVENTS_PER_SECOND=0, BATCH_SIZE=20_000, BUFFER_RECORDS=20_000)
    with service(env, port, tmp_path / "api.log"):
        first = pipeline(env, tmp_path / "pipeline1.log", "--duration", "6").start()
        assert first.wait(90) == 0, first.output()[-3000:]
        out = first.output()
        committed = committed_by(out)
        assert committed > 100_000
        child_pid = int(re.findall(r"started the compactor \(pid (\d+)\)", out)[0])
        assert not alive(child_pid)  # stopped with the pipeline
        storage = LocalStorage(lake)
        assert read_snapshot(storage).in_zone(layout.COMPACTED), "the child compactor compacted nothing"
        ids = all_ids(lake)
        assert len(ids) == committed and np.array_equal(ids, np.arange(committed))
        assert committed_position(lake) == committed - 1
        done = verify(env)
        assert done.returncode == 0, done.stdout + done.stderr

        second = pipeline(env, tmp_path / "pipeline2.log", "--max-records", "50000", "--no-compaction").start()
        assert second.wait(60) == 0, second.output()[-3000:]
        assert f"resuming at event {committed}" in second.output()
        assert committed_by(second.output()) == 50_000
    ids = all_ids(lake)
    assert np.array_equal(ids, np.arange(committed + 50_000))
    done = verify(env)
    assert done.returncode == 0, done.stdout + done.stderr


def test_sigint_flushes_stops_the_child_and_exits_0(tmp_path: Path) -> None:
    port = free_port()
    lake = tmp_path / "lake"
    env = lake_env(lake, port, EVENTS_PER_SECOND=5000, BUFFER_RECORDS=1_000_000, FLUSH_INTERVAL_SECONDS=5)
    with service(env, port, tmp_path / "api.log"):
        proc = pipeline(env, tmp_path / "pipeline.log").start()
        try:
            wait_until(lambda: "started the compactor" in proc.output(), 30, what="the child compactor")
            wait_until(lambda: re.search(r"progress: .*cursor [1-9]", proc.output()), 30, what="records fetched")
            assert read_snapshot(LocalStorage(lake)).is_empty  # size and age thresholds not reached yet
            proc.signal(signal.SIGINT)
            assert proc.wait(30) == 0
        finally:
            proc.stop()
        out = proc.output()
        child_pid = int(re.findall(r"started the compactor \(pid (\d+)\)", out)[0])
        assert not alive(child_pid)
        committed = committed_by(out)
        assert committed > 0 and len(read_snapshot(LocalStorage(lake)).files) == 1  # the shutdown flush
        assert np.array_equal(all_ids(lake), np.arange(committed))
        assert verify(env).returncode == 0


def test_an_outage_is_waited_out_and_a_wrong_url_fails(tmp_path: Path) -> None:
    port = free_port()
    lake = tmp_path / "lake"
    env = lake_env(lake, port, EVENTS_PER_SECOND=0, BATCH_SIZE=5000, RETRY_MAX_ATTEMPTS=2)
    proc = pipeline(env, tmp_path / "pipeline.log", "--no-compaction").start()
    try:
        wait_until(lambda: proc.output().count("source unavailable") >= 2, 30, what="the pipeline to notice the outage")
        assert proc.proc is not None and proc.proc.poll() is None  # still running: it waits the outage out
        with service(env, port, tmp_path / "api.log"):
            wait_until(lambda: "source is back" in proc.output(), 30, what="the pipeline to resume")
            wait_until(lambda: read_snapshot(LocalStorage(lake)).rows >= 50_000, 30, what="records after the outage")
            proc.signal(signal.SIGTERM)
            assert proc.wait(30) == 0
    finally:
        proc.stop()
    assert np.array_equal(all_ids(lake), np.arange(committed_by(proc.output())))

    wrong = {**env, "EMPLOYEE_BADGE_LOGS_URL": f"http://127.0.0.1:{port}/no-such-endpoint/"}
    with service(env, port, tmp_path / "api2.log"):
        bad = pipeline(wrong, tmp_path / "wrong.log", "--no-compaction").start()
        assert bad.wait(60) == 1
    assert "HTTP 404" in bad.output() and "error:" in bad.output()


def test_live_rate_freshness(tmp_path: Path) -> None:
    port = free_port()
    lake = tmp_path / "lake"
    flush = 0.5
    env = lake_env(lake, port, EVENTS_PER_SECOND=2000, FLUSH_INTERVAL_SECONDS=flush, POLL_INTERVAL_SECONDS=0.2)
    storage = LocalStorage(lake)
    seen: dict[str, float] = {}
    done = threading.Event()

    def watch() -> None:  # when does each file enter the table?
        reader = SnapshotReader(storage)
        while not done.is_set():
            now = time.time()
            for f in reader.snapshot().files:
                seen.setdefault(f.key, now)
            time.sleep(0.02)

    with service(env, port, tmp_path / "api.log"):
        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            proc = pipeline(env, tmp_path / "pipeline.log", "--duration", "8", "--no-compaction").start()
            assert proc.wait(60) == 0
        finally:
            done.set()
            watcher.join()
    lags: list[np.ndarray] = []
    for key, at in seen.items():
        out_us = pq.read_table(storage.path(key), columns=["badge_out_timestamp"])["badge_out_timestamp"]
        event_s = out_us.cast("int64").to_numpy() / 1e6
        lags.append(at - event_s)
    lag = np.concatenate(lags)
    p50, p95 = np.percentile(lag, [50, 95])
    print(f"freshness at the live rate: p50 {p50:.2f} s, p95 {p95:.2f} s (FLUSH_INTERVAL_SECONDS={flush})")
    assert len(lag) > 1000
    assert lag.min() > -0.5  # no event is in the lake before its time (clock granularity aside)
    # Functional bound, generous for a shared machine: the time-based flush really works end to end.
    assert p95 < flush + 0.2 + 2.0
    assert datetime.now(UTC).year >= 2024  # the lags above compare UTC with UTC (naive timestamps are UTC)
