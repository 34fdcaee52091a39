"""Chaos: kill -9 the pipeline and the compactor at random instants for a minute while a reader queries the lake.

The service runs live with deliberate faults; the pipeline (``--no-compaction``) and a standalone
``compaction_monitoring.py`` are killed and restarted at random instants from a seeded RNG (the seed is
printed; set ``CHAOS_SEED`` to replay a schedule). A reader thread queries the live set with DuckDB all
along. Pass only if the reader never saw a duplicate, a gap, a missing file or a count that went down,
and at the end every event id from 0 to the maximum is present exactly once (``python -m lake verify``
and our own count).
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

from lake import layout
from lake.liveset import live_set
from lake.storage import LocalStorage
from testkit.ids import file_ids
from testkit.processes import PYTHON, ROOT, ManagedProcess, free_port, make_settings, running_service

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

CHAOS_SECONDS = 60.0


@dataclass
class ReaderLog:
    """What the reader saw: one (rows, distinct ids, max id) per query, and every failure."""

    queries: int = 0
    last_rows: int = 0
    failures: list[str] = field(default_factory=list)


def read_continuously(storage: LocalStorage, stop: threading.Event, seen: ReaderLog) -> None:
    """Query the live set over and over, as a dashboard would, and check every answer."""
    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    try:
        while not stop.is_set():
            try:
                paths = [str(p) for p in live_set(storage).paths]
                if not paths:
                    time.sleep(0.05)
                    continue
                rows, distinct, top = con.execute(
                    "SELECT count(*), count(DISTINCT event_id), max(event_id) FROM read_parquet($files)",
                    {"files": paths},
                ).fetchone() or (0, 0, None)
            except Exception as exc:  # a missing file or any other read error is a failure of the lake
                seen.failures.append(f"query {seen.queries}: {type(exc).__name__}: {exc}")
                continue
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

    print(f"kills: {kills}; reader queries: {seen.queries}, last count {seen.last_rows:,}")
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
    live = live_set(storage)
    ids = np.sort(file_ids(live.paths))
    assert len(ids) >= seen.last_rows
    assert np.array_equal(ids, np.arange(len(ids))), "the final lake is not every id 0..max exactly once"
    assert storage.list_files(layout.COMPACTED), "nothing was ever compacted"
