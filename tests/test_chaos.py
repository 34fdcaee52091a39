"""Chaos: kill -9 the pipeline and the compactor at random instants while a reader reads the table, on a local disk
(for a minute) and on S3 (moto's server, for 30 seconds, to keep the suite's time in check).

The service runs live with deliberate faults; the pipeline (``--no-compaction``) and a standalone
``compaction_monitoring.py`` are killed and restarted at random instants from a seeded RNG (the seed is
printed; set ``CHAOS_SEED`` to replay a schedule). A reader thread reads the table THROUGH ITS LOG all
along (a long-lived :class:`lake.table.SnapshotReader`; DuckDB over the snapshot's files on a local disk,
each file through ``Storage.open_input`` on S3), as the dashboard does: a file missing under it means a
newer snapshot exists, so it takes that one and retries (bounded). Pass only if the reader never saw a
duplicate, a gap or a count that went down, and never an error that a retry did not clear, and saw
compacted files; at the end every event id from 0 to the maximum is in the table exactly once, and no
data file is outside the table once the grace period has passed. The end is judged by the independent
reader (``testkit.replay``: the directory or the bucket listed, the log replayed, the files' bytes read
without the lake's code), by delta-rs (on S3: its file list, the objects read with boto3), by the lake's
own reader and, on a local disk, by ``python -m lake verify`` (which does not run on S3 yet).

On S3 the moto server lives in the test process, so it survives every kill; the children get its ``AWS_*``
environment. There the compactor holds a lease object (``lake/lease.py``) instead of a lock, with a TTL of
30 s that no setting changes: a compactor killed with its lease would keep the next one waiting ~35 s, that
is for the whole run. So after each kill the test does what the passing of that time would do, and only
that: it marks expired a lease whose holder is a compactor it killed (on this host, by its pid, a conditional
write on the lease's ETag); the next compactor takes it over as it takes over any expired lease.
"""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import obstore
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable
from obstore.exceptions import PreconditionError

from lake import layout
from lake.lease import DEFAULT_MAX_SKEW_S, LEASE_KEY, LeaseRecord
from lake.location import open_storage
from lake.storage import LocalStorage, Storage
from lake.table import APP_ID, SnapshotReader, read_snapshot
from testkit.ids import file_ids
from testkit.processes import PYTHON, ROOT, ManagedProcess, free_port, make_settings, running_service
from testkit.replay import LakeFiles, lake_files, read_ids, replay, table_ids
from testkit.s3 import S3Lake, s3_lake

pytestmark = [pytest.mark.chaos, pytest.mark.slow]
__all__ = ["s3_lake"]  # the fixture, imported for pytest

CHAOS_SECONDS = {"local": 60.0, "s3": 30.0}
# The reader answers at least this often (the same rate on both: on S3 each file of a snapshot costs it three
# requests to moto's one-at-a-time server, which every process shares; it got through 47 to 146 in 30 s in our runs).
MIN_QUERIES = {"local": 50, "s3": 25}
READ_ATTEMPTS = 5  # a reader takes a newer snapshot and tries again this many times before it gives up

Answer = tuple[int, int, int | None, bool]  # rows, distinct ids, max id, a compacted file in the snapshot


@dataclass
class ReaderLog:
    """What the reader saw: one (rows, distinct ids, max id) per query, the retries, and every failure."""

    queries: int = 0
    retries: int = 0
    last_rows: int = 0
    compacted: int = 0  # queries whose snapshot held a compacted file
    retried_errors: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Backend:
    """Where the lake of one chaos run lives, and how each party reaches it."""

    name: str
    location: Path | str  # DATA_LAKE_PATH
    env: dict[str, str]  # what the children need besides the settings (on S3: the moto server's AWS_*)
    storage: Storage  # the reader's door, the lake's own
    files: LakeFiles  # the independent view
    s3: S3Lake | None

    @property
    def delta_rs(self) -> DeltaTable:
        return DeltaTable(str(self.location), storage_options=self.s3.env if self.s3 is not None else None)


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "local":
        lake = tmp_path / "lake"
        yield Backend("local", lake, {}, LocalStorage(lake), lake_files(lake), None)
        return
    bucket: S3Lake = request.getfixturevalue("s3_lake")
    scratch = tmp_path / "scratch"  # the children's local staging (TMPDIR), kept out of /tmp and looked at after
    scratch.mkdir()
    yield Backend(
        "s3",
        bucket.url,
        {**bucket.env, "TMPDIR": str(scratch)},
        open_storage(bucket.url, bucket.env),
        lake_files(bucket),
        bucket,
    )


def _query_duckdb(reader: SnapshotReader, con: duckdb.DuckDBPyConnection) -> Answer | None:
    """One answer over the newest snapshot, DuckDB over its local files (None while the table is empty)."""
    snapshot = reader.snapshot()
    paths = [str(p) for p in snapshot.paths]
    if not paths:
        return None
    row = con.execute(
        "SELECT count(*), count(DISTINCT event_id), max(event_id) FROM read_parquet($files)", {"files": paths}
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), None if row[2] is None else int(row[2]), bool(snapshot.in_zone(layout.COMPACTED))


def _query_storage(reader: SnapshotReader) -> Answer | None:
    """One answer over the newest snapshot, each of its files read through the lake's storage (object storage)."""
    snapshot = reader.snapshot()
    if snapshot.is_empty:
        return None
    chunks = []
    for key in snapshot.keys:
        with reader.storage.open_input(key) as f:
            chunks.append(pq.read_table(f, columns=["event_id"])["event_id"].to_numpy())
    ids = np.concatenate(chunks)
    top = int(ids.max()) if len(ids) else None
    return len(ids), len(np.unique(ids)), top, bool(snapshot.in_zone(layout.COMPACTED))


def read_continuously(storage: Storage, stop: threading.Event, seen: ReaderLog) -> None:
    """Read the table through its log over and over, as the dashboard does, and check every answer."""
    reader = SnapshotReader(storage)
    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    try:
        while not stop.is_set():
            answer: Answer | None = None
            for attempt in range(READ_ATTEMPTS):
                try:
                    answer = _query_duckdb(reader, con) if isinstance(storage, LocalStorage) else _query_storage(reader)
                    break
                except Exception as exc:  # a file gone under us: a newer snapshot exists; take it and retry
                    if attempt == READ_ATTEMPTS - 1:
                        seen.failures.append(f"query {seen.queries}: not cleared by {READ_ATTEMPTS} tries: {exc}")
                    else:
                        seen.retries += 1
                        seen.retried_errors.append(f"{type(exc).__name__}: {str(exc)[:200]}")
                        time.sleep(0.02)
            if answer is None:
                time.sleep(0.05)
                continue
            rows, distinct, top, compacted = answer
            seen.queries += 1
            seen.compacted += compacted
            if rows != distinct:
                seen.failures.append(f"query {seen.queries}: {rows - distinct} duplicated event ids")
            if top is not None and rows != top + 1:
                seen.failures.append(
                    f"query {seen.queries}: {rows} rows but max event id {top} (not every id 0..max exactly once)"
                )
            if rows < seen.last_rows:
                seen.failures.append(f"query {seen.queries}: count went down from {seen.last_rows} to {rows}")
            seen.last_rows = max(seen.last_rows, rows)
    finally:
        con.close()


def expire_leases_of_the_dead(lake: S3Lake, dead: set[int]) -> bool:
    """Mark the compactor lease expired if its holder is a compactor this test killed (what its TTL would do).

    Only a lease held (not released) by one of ``dead`` on this host is touched, with a write conditional on
    the ETag read, so a live compactor's lease never is. True if a lease was expired.
    """
    store = lake.store()
    for _ in range(10):
        try:
            got = obstore.get(store, LEASE_KEY)
        except FileNotFoundError:
            return False
        etag = got.meta["e_tag"]
        record = LeaseRecord.from_bytes(bytes(got.bytes()), LEASE_KEY)
        if record.released or record.pid not in dead or record.host != socket.gethostname():
            return False
        lapsed = time.time() - 2 * DEFAULT_MAX_SKEW_S
        expired = dataclasses.replace(record, expires_at=lapsed, renewed_at=lapsed - record.ttl_s)
        try:
            obstore.put(store, LEASE_KEY, expired.to_bytes(), mode={"e_tag": etag})
        except PreconditionError:
            continue  # written meanwhile (a request the dead process had sent): look again
        return True
    raise AssertionError(f"{LEASE_KEY} kept changing while its holder was dead")


def judge_the_end(backend: Backend, at_least: int) -> int:
    """Every event id 0..max once, for every reader; the pipeline's position is the last id. Returns the rows."""
    ids, state = table_ids(backend.files)  # the independent reader
    assert len(ids) >= at_least
    assert np.array_equal(ids, np.arange(len(ids))), "the final table is not every id 0..max exactly once"
    assert state.position == len(ids) - 1, "the pipeline's position is not the last id in the table"
    assert state.in_zone(layout.COMPACTED), "nothing was ever compacted"

    dt = backend.delta_rs  # delta-rs: its file list (on S3 the objects read with boto3), its position
    if backend.s3 is None:
        delta_rs = dt.to_pyarrow_table(columns=["event_id"])["event_id"].to_numpy()
        listed = {str(Path(u.removeprefix("file://")).relative_to(backend.location)) for u in dt.file_uris()}
    else:
        listed = {u.removeprefix(f"{backend.s3.url}/") for u in dt.file_uris()}
        delta_rs = read_ids(backend.files, sorted(listed))
    assert listed == state.keys, "delta-rs lists other files than the log says"
    assert np.array_equal(np.sort(delta_rs), ids), "delta-rs reads another table through the log than we do"
    assert dt.transaction_version(APP_ID) == state.position

    snap = read_snapshot(backend.storage)  # the lake's own reader
    assert set(snap.keys) == state.keys and snap.committed_event_id == state.position
    if isinstance(backend.storage, LocalStorage):
        assert np.array_equal(np.sort(file_ids(snap.paths)), ids)
    return len(ids)


def test_kill_9_pipeline_and_compactor_at_random_while_a_reader_queries(tmp_path: Path, backend: Backend) -> None:
    seed = int(os.environ.get("CHAOS_SEED", str(time.time_ns() % 2**32)))
    print(f"chaos seed: {seed} (replay with CHAOS_SEED={seed}), lake on {backend.name}")
    rng = random.Random(seed)
    port = free_port()
    settings = make_settings(
        backend.location,
        EMPLOYEE_BADGE_LOGS_URL=f"http://127.0.0.1:{port}/employee-badge-logs/",
        API_PORT=port,
        EVENTS_PER_SECOND=10_000,
        BATCH_SIZE=20_000,
        BUFFER_RECORDS=20_000,
        API_FAULT_RATE=0.05,
        REQUEST_TIMEOUT_SECONDS=1,
        RETRY_MAX_ATTEMPTS=3,
    )
    env = {**settings.as_env(), **backend.env}
    logs = {name: tmp_path / f"{name}.log" for name in ("api", "pipeline", "compactor")}
    commands = {
        "pipeline": [PYTHON, str(ROOT / "pipeline.py"), "--no-compaction"],
        "compactor": [PYTHON, str(ROOT / "compaction_monitoring.py")],
    }
    running: dict[str, ManagedProcess] = {}
    kills = {"pipeline": 0, "compactor": 0}
    dead_compactors: set[int] = set()
    expired = 0

    def start(name: str) -> None:
        running[name] = ManagedProcess(commands[name], env=env, log_path=logs[name]).start()

    def tails() -> str:
        return "\n".join(f"--- {n} ---\n{p.read_text(errors='replace')[-2500:]}" for n, p in logs.items() if p.exists())

    def expire_dead_leases() -> None:
        nonlocal expired
        if backend.s3 is not None:
            expired += expire_leases_of_the_dead(backend.s3, dead_compactors)

    seen = ReaderLog()
    stop_reader = threading.Event()
    reader = threading.Thread(target=read_continuously, args=(backend.storage, stop_reader, seen))
    with running_service(env, port, logs["api"]):
        try:
            start("pipeline")
            start("compactor")
            reader.start()
            deadline = time.monotonic() + CHAOS_SECONDS[backend.name]
            while time.monotonic() < deadline:
                time.sleep(rng.uniform(0.3, 2.5))
                victims = rng.choice((["pipeline"], ["compactor"], ["pipeline", "compactor"]))
                for name in victims:
                    running[name].kill9()
                    kills[name] += 1
                    if name == "compactor":
                        dead_compactors.add(running[name].pid)
                time.sleep(rng.uniform(0.0, 0.5))
                expire_dead_leases()  # also a lease written late by a request a killed compactor had sent
                for name in victims:
                    start(name)
            # Calm down: both run undisturbed, then stop cleanly.
            time.sleep(3)
            for name in ("pipeline", "compactor"):
                running[name].signal(signal.SIGTERM)
                assert running[name].wait(30) == 0, tails()
        finally:
            stop_reader.set()
            if reader.is_alive():
                reader.join(30)
            for proc in running.values():
                proc.stop()

    print(
        f"kills: {kills}; leases expired: {expired}; reader queries: {seen.queries} ({seen.compacted} with compacted "
        f"files), retried {seen.retries}, last count {seen.last_rows:,}"
    )
    for error in sorted(set(seen.retried_errors))[:10]:
        print(f"  retried: {error}")
    assert seen.failures == [], "\n".join(seen.failures[:20]) + "\n" + tails()
    assert kills["pipeline"] >= 5 and kills["compactor"] >= 5
    assert seen.queries >= MIN_QUERIES[backend.name] and seen.last_rows > 0
    assert seen.compacted > 0, "the reader never saw a compacted file: nothing was compacted during the chaos"

    # A last compaction cycle (recovers what the final state left), then the whole-lake checks.
    once = subprocess.run(
        [PYTHON, str(ROOT / "compaction_monitoring.py"), "--once"],
        env={**os.environ, **env},
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert once.returncode == 0
    if backend.s3 is None:  # `python -m lake verify` refuses an s3:// lake so far (it says so, exit 2)
        verify = subprocess.run(
            [PYTHON, "-m", "lake", "verify"],
            env={**os.environ, **env},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert verify.returncode == 0, verify.stdout + verify.stderr
    rows = judge_the_end(backend, seen.last_rows)

    # With no reader left, a clean-up without grace leaves nothing on disk that the table does not hold.
    time.sleep(1.5)  # every file older than the clean-up's in-flight floor (S3 keeps whole seconds)
    cleaned = subprocess.run(
        [PYTHON, str(ROOT / "compaction_monitoring.py"), "--once"],
        env={**os.environ, **env, "COMPACTION_GRACE_SECONDS": "0"},
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert cleaned.returncode == 0
    assert judge_the_end(backend, rows) == rows
    live = replay(backend.files).keys
    assert backend.files.data_keys() == sorted(live), "files outside the table were left behind"
    if isinstance(backend.storage, LocalStorage):
        on_disk = sorted(f.key for zone in layout.DATA_ZONES for f in backend.storage.list_tree(zone, suffix=""))
        assert on_disk == sorted(read_snapshot(backend.storage).keys)
    else:
        assert backend.files.listing(layout.TEMP) == []  # nothing is ever staged in the bucket
        staged = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "scratch").rglob("*") if p.is_file())
        print(f"left in the children's local scratch directories by the kills: {len(staged)} file(s) {staged[:5]}")
