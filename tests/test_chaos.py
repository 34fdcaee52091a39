"""Chaos: kill -9 the pipeline and the compactor at random instants for a minute while a reader reads the table.

The service runs live with deliberate faults; the pipeline (``--no-compaction``) and a standalone
``compaction_monitoring.py`` are killed and restarted at random instants from a seeded RNG (the seed is
printed; set ``CHAOS_SEED`` to replay a schedule). A reader thread reads the table THROUGH ITS LOG all
along (a long-lived :class:`lake.table.SnapshotReader`, DuckDB over the snapshot's files), as the
dashboard does: a file missing under it means a newer snapshot exists, so it takes that one and
retries (bounded). Pass only if the reader never saw a duplicate, a gap or a count that went down,
and never an error that a retry did not clear; at the end every event id from 0 to the maximum is in
the table exactly once (``python -m lake verify``, our own count and delta-rs' own reader agree), and
no file on disk is outside the table once the grace period has passed.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pytest
from deltalake import DeltaTable

from lake import layout
from lake.storage import LocalStorage
from lake.table import SnapshotReader, read_snapshot
from testkit.ids import file_ids
from testkit.processes import PYTHON, ROOT, ManagedProcess, free_port, make_settings, running_service

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

CHAOS_SECONDS = 60.0
READ_ATTEMPTS = 5  # a reader takes a newer snapshot and tries again this many times before it gives up


@dataclass
class ReaderLog:
    """What the reader saw: one (rows, distinct ids, max id) per query, the retries, and every failure."""

    queries: int = 0
    retries: int = 0
    last_rows: int = 0
    retried_errors: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def _query(reader: SnapshotReader, con: duckdb.DuckDBPyConnection) -> tuple[int, int, int | None] | None:
    """One answer over the newest snapshot (None while the table is empty)."""
    paths = [str(p) for p in reader.snapshot().paths]
    if not paths:
        return None
    row = con.execute(
        "SELECT count(*), count(DISTINCT event_id), max(event_id) FROM read_parquet($files)", {"files": paths}
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), None if row[2] is None else int(row[2])


def read_continuously(storage: LocalStorage, stop: threading.Event, seen: ReaderLog) -> None:
    """Read the table through its log over and over, as the dashboard does, and check every answer."""
    reader = SnapshotReader(storage)
    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    try:
        while not stop.is_set():
            answer: tuple[int, int, int | None] | None = None
            for attempt in range(READ_ATTEMPTS):
                try:
                    answer = _query(reader, con)
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
            rows, distinct, top = answer
            seen.queries += 1
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


def test_kill_9_pipeline_and_compactor_at_random_while_a_reader_queries(tmp_path: Path) -> None:
    seed = int(os.environ.get("CHAOS_SEED", str(time.time_ns() % 2**32)))
    print(f"chaos seed: {seed} (replay with CHAOS_SEED={seed})")
    rng = random.Random(seed)
    port = free_port()
    lake = tmp_path / "lake"
    settings = make_settings(
        lake,
        EMPLOYEE_BADGE_LOGS_URL=f"http://127.0.0.1:{port}/employee-badge-logs/",
        API_PORT=port,
        EVENTS_PER_SECOND=10_000,
        BATCH_SIZE=20_000,
        BUFFER_RECORDS=20_000,
        API_FAULT_RATE=0.05,
        REQUEST_TIMEOUT_SECONDS=1,
        RETRY_MAX_ATTEMPTS=3,
    )
    env = settings.as_env()
    storage = LocalStorage(lake)
    logs = {name: tmp_path / f"{name}.log" for name in ("api", "pipeline", "compactor")}
    commands = {
        "pipeline": [PYTHON, str(ROOT / "pipeline.py"), "--no-compaction"],
        "compactor": [PYTHON, str(ROOT / "compaction_monitoring.py")],
    }
    running: dict[str, ManagedProcess] = {}
    kills = {"pipeline": 0, "compactor": 0}

    def start(name: str) -> None:
        running[name] = ManagedProcess(commands[name], env=env, log_path=logs[name]).start()

    def tails() -> str:
        return "\n".join(f"--- {n} ---\n{p.read_text(errors='replace')[-2500:]}" for n, p in logs.items() if p.exists())

    seen = ReaderLog()
    stop_reader = threading.Event()
    reader = threading.Thread(target=read_continuously, args=(storage, stop_reader, seen))
    with running_service(env, port, logs["api"]):
        try:
            start("pipeline")
            start("compactor")
            reader.start()
            deadline = time.monotonic() + CHAOS_SECONDS
            while time.monotonic() < deadline:
                time.sleep(rng.uniform(0.3, 2.5))
                victims = rng.choice((["pipeline"], ["compactor"], ["pipeline", "compactor"]))
                for name in victims:
                    running[name].kill9()
                    kills[name] += 1
                time.sleep(rng.uniform(0.0, 0.5))
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

    print(f"kills: {kills}; reader queries: {seen.queries}, retried {seen.retries}, last count {seen.last_rows:,}")
    for error in sorted(set(seen.retried_errors))[:10]:
        print(f"  retried: {error}")
    assert seen.failures == [], "\n".join(seen.failures[:20]) + "\n" + tails()
    assert kills["pipeline"] >= 5 and kills["compactor"] >= 5
    assert seen.queries >= 50 and seen.last_rows > 0

    # A last compaction cycle (recovers what the final state left), then the whole-lake checks.
    once = subprocess.run(
        [PYTHON, str(ROOT / "compaction_monitoring.py"), "--once"],
        env={**os.environ, **env},
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert once.returncode == 0
    verify = subprocess.run(
        [PYTHON, "-m", "lake", "verify"],
        env={**os.environ, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    snap = read_snapshot(storage)
    ids = np.sort(file_ids(snap.paths))
    assert len(ids) >= seen.last_rows
    assert np.array_equal(ids, np.arange(len(ids))), "the final table is not every id 0..max exactly once"
    assert snap.committed_event_id == len(ids) - 1, "the pipeline's position is not the last id in the table"
    delta_rs = np.sort(DeltaTable(str(lake)).to_pyarrow_table(columns=["event_id"])["event_id"].to_numpy())
    assert np.array_equal(delta_rs, ids), "delta-rs reads another table through the log than we do"
    assert snap.in_zone(layout.COMPACTED), "nothing was ever compacted"

    # With no reader left, a clean-up without grace leaves nothing on disk that the table does not hold.
    cleaned = subprocess.run(
        [PYTHON, str(ROOT / "compaction_monitoring.py"), "--once"],
        env={**os.environ, **env, "COMPACTION_GRACE_SECONDS": "0"},
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert cleaned.returncode == 0
    on_disk = sorted(f.key for zone in layout.DATA_ZONES for f in storage.list_all(zone))
    assert on_disk == sorted(read_snapshot(storage).keys), "files outside the table were left behind"
