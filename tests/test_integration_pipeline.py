"""End to end on loopback: the real service, ``python pipeline.py`` with its child compactor, ``python -m lake verify``,
with the lake on a local disk and on S3 (moto's server in the test process; the processes get its ``AWS_*``).

Every process runs in its own process group and is always stopped; lakes live in tmp_path or in a fresh bucket.
Each run is judged by the independent reader (``testkit.replay``: the directory or the bucket listed, both
tables' logs replayed and their files read without the lake's code) and, on a local disk, by ``python -m lake
verify`` too (it does not run on S3 yet).
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lake import layout
from lake.lease import LEASE_KEY
from lake.location import open_storage
from lake.storage import LocalStorage, Storage
from lake.table import SnapshotReader, read_snapshot
from testkit.processes import PYTHON, ROOT, ManagedProcess, free_port, make_settings, running_service, wait_until
from testkit.replay import LakeFiles, lake_files, replay, table_ids
from testkit.s3 import S3Lake, s3_lake

pytestmark = pytest.mark.integration
__all__ = ["s3_lake"]  # the fixture, imported for pytest

STOPPED = re.compile(r"stopped: .*committed ([\d,]+) in [\d,]+ files \| buffered [\d,]+ \| refused ([\d,]+)")


@dataclass(frozen=True)
class Lake:
    """The lake of one test: where it lives, what the processes need to reach it, and the views of it."""

    location: Path | str  # DATA_LAKE_PATH
    env: dict[str, str]  # besides the settings: on S3 the moto server's AWS_*
    storage: Storage  # the lake's own door (for waiting on it; never the judge)
    files: LakeFiles  # the independent view
    s3: S3Lake | None


@pytest.fixture(params=["local", "s3"])
def lake(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Lake]:
    if request.param == "local":
        root = tmp_path / "lake"
        yield Lake(root, {}, LocalStorage(root), lake_files(root), None)
        return
    bucket: S3Lake = request.getfixturevalue("s3_lake")
    yield Lake(bucket.url, bucket.env, open_storage(bucket.url, bucket.env), lake_files(bucket), bucket)


def lake_env(lake: Lake, port: int, **overrides: object) -> dict[str, str]:
    """Environment for the service and the pipeline: small thresholds, this lake, this port."""
    settings = make_settings(
        lake.location,
        EMPLOYEE_BADGE_LOGS_URL=f"http://127.0.0.1:{port}/employee-badge-logs/",
        API_PORT=port,
        **overrides,
    )
    return {**settings.as_env(), **lake.env}


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


def all_ids(lake: Lake) -> np.ndarray:
    """Every event id in the events table and in the quarantine table, sorted (the independent reader)."""
    events, _ = table_ids(lake.files)
    try:
        quarantined, _ = table_ids(lake.files, layout.QUARANTINE)
    except FileNotFoundError:  # no record was refused: the quarantine table was never created
        quarantined = np.empty(0, np.int64)
    return np.sort(np.concatenate([events, quarantined]))


def committed_position(lake: Lake) -> int:
    """The pipeline's position in the table's log (the last event id committed), replayed independently."""
    position = replay(lake.files).position
    assert position is not None
    return position


def judge(lake: Lake, env: dict[str, str], records: int) -> None:
    """The lake holds the ids 0..records-1 once each (table or quarantine), up to the pipeline's position;
    and, on a local disk, ``python -m lake verify`` says it is whole."""
    assert np.array_equal(all_ids(lake), np.arange(records))
    assert committed_position(lake) == records - 1
    if lake.s3 is None:
        done = verify(env)
        assert done.returncode == 0, done.stdout + done.stderr


def lease_released(lake: Lake) -> bool:
    """On S3: the compactor's lease object says it was released (a compactor that stopped cleanly hands it back)."""
    return bool(json.loads(lake.files.read(LEASE_KEY))["released"])


class Relay:
    """A TCP relay on a loopback port in front of another (the moto server) that can go down and come back.

    Down, it cuts every open connection and accepts new ones only to close them at once: to its clients the
    object store is gone (connections reset), as in a network outage; up again, it relays as before.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._up = threading.Event()
        self._up.set()
        self._closed = threading.Event()
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._accept, name="relay-accept", daemon=True)]
        self._threads[0].start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:  # the listener closed
                return
            if not self._up.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                pump = threading.Thread(target=self._pump, args=(a, b), name="relay-pump", daemon=True)
                pump.start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            self._cut(src, dst)

    def _cut(self, *socks: socket.socket) -> None:
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
            with self._lock:
                self._open.discard(sock)

    def down(self) -> None:
        self._up.clear()
        with self._lock:
            cut = list(self._open)
        self._cut(*cut)

    def up(self) -> None:
        self._up.set()

    def close(self) -> None:
        self._closed.set()
        self.down()
        self._listener.close()


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def test_firehose_run_with_the_child_compactor_then_a_resumed_run(tmp_path: Path, lake: Lake) -> None:
    port = free_port()
    env = lake_env(lake, port, EVENTS_PER_SECOND=0, BATCH_SIZE=20_000, BUFFER_RECORDS=20_000)
    with running_service(env, port, tmp_path / "api.log"):
        first = pipeline(env, tmp_path / "pipeline1.log", "--duration", "6").start()
        assert first.wait(90) == 0, first.output()[-3000:]
        out = first.output()
        committed = committed_by(out)
        assert committed > 100_000
        child_pid = int(re.findall(r"started the compactor \(pid (\d+)\)", out)[0])
        assert not alive(child_pid)  # stopped with the pipeline
        if lake.s3 is not None:
            assert lease_released(lake), "the child compactor stopped without handing its lease back"
        assert replay(lake.files).in_zone(layout.COMPACTED), "the child compactor compacted nothing"
        judge(lake, env, committed)

        second = pipeline(env, tmp_path / "pipeline2.log", "--max-records", "50000", "--no-compaction").start()
        assert second.wait(60) == 0, second.output()[-3000:]
        assert f"resuming at event {committed}" in second.output()
        assert committed_by(second.output()) == 50_000
    judge(lake, env, committed + 50_000)


def test_sigint_flushes_stops_the_child_and_exits_0(tmp_path: Path, lake: Lake) -> None:
    port = free_port()
    env = lake_env(lake, port, EVENTS_PER_SECOND=5000, BUFFER_RECORDS=1_000_000, FLUSH_INTERVAL_SECONDS=5)
    with running_service(env, port, tmp_path / "api.log"):
        proc = pipeline(env, tmp_path / "pipeline.log").start()
        try:
            wait_until(lambda: "started the compactor" in proc.output(), 30, what="the child compactor")
            wait_until(lambda: re.search(r"progress: .*cursor [1-9]", proc.output()), 30, what="records fetched")
            assert not replay(lake.files).keys  # size and age thresholds not reached yet
            proc.signal(signal.SIGINT)
            assert proc.wait(30) == 0
        finally:
            proc.stop()
        out = proc.output()
        child_pid = int(re.findall(r"started the compactor \(pid (\d+)\)", out)[0])
        assert not alive(child_pid)
        if lake.s3 is not None:
            assert lease_released(lake), "the child compactor stopped without handing its lease back"
        committed = committed_by(out)
        assert committed > 0 and len(replay(lake.files).keys) == 1  # the shutdown flush
        judge(lake, env, committed)


def test_an_outage_is_waited_out_and_a_wrong_url_fails(tmp_path: Path, lake: Lake) -> None:
    port = free_port()
    env = lake_env(lake, port, EVENTS_PER_SECOND=0, BATCH_SIZE=5000, RETRY_MAX_ATTEMPTS=2)
    proc = pipeline(env, tmp_path / "pipeline.log", "--no-compaction").start()
    try:
        wait_until(lambda: proc.output().count("source unavailable") >= 2, 30, what="the pipeline to notice the outage")
        assert proc.proc is not None and proc.proc.poll() is None  # still running: it waits the outage out
        with running_service(env, port, tmp_path / "api.log"):
            wait_until(lambda: "source is back" in proc.output(), 30, what="the pipeline to resume")
            wait_until(lambda: read_snapshot(lake.storage).rows >= 50_000, 30, what="records after the outage")
            proc.signal(signal.SIGTERM)
            assert proc.wait(30) == 0
    finally:
        proc.stop()
    judge(lake, env, committed_by(proc.output()))

    wrong = {**env, "EMPLOYEE_BADGE_LOGS_URL": f"http://127.0.0.1:{port}/no-such-endpoint/"}
    with running_service(env, port, tmp_path / "api2.log"):
        bad = pipeline(wrong, tmp_path / "wrong.log", "--no-compaction").start()
        assert bad.wait(60) == 1
    assert "HTTP 404" in bad.output() and "error:" in bad.output()


def test_live_rate_freshness(tmp_path: Path, lake: Lake) -> None:
    port = free_port()
    flush = 0.5
    env = lake_env(lake, port, EVENTS_PER_SECOND=2000, FLUSH_INTERVAL_SECONDS=flush, POLL_INTERVAL_SECONDS=0.2)
    seen: dict[str, float] = {}
    done = threading.Event()

    def watch() -> None:  # when does each file enter the table?
        reader = SnapshotReader(lake.storage)
        while not done.is_set():
            now = time.time()
            for f in reader.snapshot().files:
                seen.setdefault(f.key, now)
            time.sleep(0.02)

    with running_service(env, port, tmp_path / "api.log"):
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
        data = pa.BufferReader(lake.files.read(key))
        out_us = pq.read_table(data, columns=["badge_out_timestamp"])["badge_out_timestamp"]
        event_s = out_us.cast("int64").to_numpy() / 1e6
        lags.append(at - event_s)
    lag = np.concatenate(lags)
    p50, p95 = np.percentile(lag, [50, 95])
    print(f"freshness at the live rate: p50 {p50:.2f} s, p95 {p95:.2f} s (FLUSH_INTERVAL_SECONDS={flush})")
    assert len(lag) > 1000
    assert lag.min() > -0.5  # no event is in the lake before its time (clock granularity aside)
    # Functional bounds, generous for a shared machine: the time-based flush really works end to end. Without it
    # the records would land only when the 8 s run ends (BUFFER_RECORDS is far away): p50 ~4 s, p95 ~7.6 s. The
    # tail is loopback S3 (moto) with the other test worker (a JVM, say) on two cores: a p95 of 2.75 s was seen.
    assert p50 < flush + 1.0
    assert p95 < flush + 4.0
    assert datetime.now(UTC).year >= 2024  # the lags above compare UTC with UTC (naive timestamps are UTC)
    judge(lake, env, committed_by(proc.output()))


def test_an_object_store_outage_is_waited_out(tmp_path: Path, s3_lake: S3Lake) -> None:
    """S3 only: the store goes away for a while (every connection cut, new ones reset), then comes back, under a
    live pipeline and its child compactor, both at work. Both wait it out: nothing is lost or doubled, the
    compactor keeps its lease (its TTL outlasts the outage) and compacts again afterwards."""
    host, port_s3 = s3_lake.server.get_host_and_port()
    relay = Relay((host, port_s3))
    lake = Lake(
        s3_lake.url,
        {**s3_lake.env, "AWS_ENDPOINT_URL": relay.endpoint},  # the processes reach the store through the relay
        open_storage(s3_lake.url, s3_lake.env),
        lake_files(s3_lake),
        s3_lake,
    )
    port = free_port()
    env = lake_env(lake, port, EVENTS_PER_SECOND=5000, BATCH_SIZE=5000, BUFFER_RECORDS=20_000)
    try:
        with running_service(env, port, tmp_path / "api.log"):
            proc = pipeline(env, tmp_path / "pipeline.log").start()
            try:
                # Both at work: the compactor past its start (recovery) and watching, the pipeline committing.
                wait_until(lambda: "[compactor] watching" in proc.output(), 60, what="the child compactor to watch")
                wait_until(lambda: replay(lake.files).in_zone(layout.COMPACTED), 60, what="a first compaction")
                relay.down()
                before = replay(lake.files)
                assert before.position is not None
                time.sleep(8)
                assert proc.proc is not None and proc.proc.poll() is None, proc.output()[-3000:]  # it waits
                assert committed_position(lake) <= before.position + 20_000  # at most a flush that was on its way
                relay.up()
                wait_until(
                    lambda: committed_position(lake) > before.position + 100_000, 60, what="commits after the outage"
                )
                wait_until(
                    lambda: set(replay(lake.files).in_zone(layout.COMPACTED)) - before.keys,
                    60,
                    what="a compaction after the outage",
                )
                proc.signal(signal.SIGTERM)
                assert proc.wait(60) == 0, proc.output()[-3000:]
            finally:
                proc.stop()
    finally:
        relay.close()
    out = proc.output()
    # The outage was seen (a publish, a commit or a fetch failed and was retried), and waited out.
    assert re.search(r"failed \(attempt \d+\)", out), out[-3000:]
    [child] = re.findall(r"started the compactor \(pid (\d+)\)", out)  # never restarted: it waited the outage out
    assert not alive(int(child))
    assert "lost the lease" not in out and lease_released(lake)
    judge(lake, env, committed_by(out))
