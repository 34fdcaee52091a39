"""``make clean`` on a lake on S3-compatible object storage (moto's S3 server).

A lake is filled by the real pipeline (every tenth record refused, so both tables have a log) and
compacted once (so the compactor's lease object exists), with ``.stream_start`` beside it and objects
under other prefixes of the same bucket. Clean must leave no object under the lake's prefix and touch
nothing else; refuse (exit 3, nothing deleted) while a live compactor holds the lease or the table's log
is fresh (a pipeline appears to run); take an expired lease over; keep everything on "n"; and leave a
prefix on which the next pipeline creates a new table at event 0. A pipeline that outlives the clean, or
commits while it runs, must not get a commit into the emptied prefix.

Clean runs in this process (``processes.clean.main``, its prompt answered through ``input``) so that the
pipeline heuristic's margin can be set to 0 (``quick``): its bound is then 2 × (FLUSH_INTERVAL_SECONDS +
POLL_INTERVAL_SECONDS) = 0.1 s, and a lake whose last commit is over a second old (S3 keeps whole seconds)
counts as quiet. One test runs the real command, with the real margin, in a subprocess.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import obstore
import pytest
from obstore.store import ObjectStore

from lake import layout
from lake.filestats import FileStats
from lake.lease import LEASE_KEY, Lease
from lake.location import open_storage
from lake.objectstore import ObjectStorage
from lake.table import LOG_DIR, LakeTable
from lake.writer import BufferedWriter, FlushThresholds, write_landing
from processes import clean
from processes import compactor as compactor_process
from processes.cli import EXIT_LOCKED, EXIT_OK
from processes.pipeline import RunOptions, run
from testkit.fake_source import FakeSource
from testkit.processes import ROOT, make_settings, wait_until
from testkit.records import TEST_IDENTITY, lake_table, make_records
from testkit.s3 import S3Lake, s3_lake
from tests.test_pipeline_s3 import table_ids
from utils.config import Settings, get_settings
from utils.errors import LakeError

pytestmark = pytest.mark.integration
__all__ = ["s3_lake"]  # the fixture, imported for pytest

QUARANTINE_LOG = f"{layout.QUARANTINE}/{LOG_DIR}/"
SIBLINGS = ("lake2/landing/x.parquet", "lakeside.txt", "other/lake/_delta_log/00000000000000000000.json", "root.txt")


def _refused(event_id: int) -> bool:
    return event_id % 10 == 3


def _settings(lake: S3Lake) -> Settings:
    return make_settings(lake.url, BATCH_SIZE=500, BUFFER_RECORDS=1_000)


def _storage(lake: S3Lake) -> ObjectStorage:
    storage = open_storage(lake.url)
    assert isinstance(storage, ObjectStorage)
    return storage


def fill(lake: S3Lake, records: int = 9_000, *, compact: bool = True) -> list[str]:
    """The pipeline lands ``records`` (one in ten refused); one compaction; ``.stream_start``; objects
    under other prefixes of the bucket. Returns the lake's keys."""
    settings = _settings(lake)
    assert run(settings, RunOptions(max_records=records, compaction=False), source=FakeSource(refuse=_refused)) == 0
    if compact:
        assert compactor_process.run(settings, once=True) == 0
    _storage(lake).write_new(".stream_start", b"2025-03-03T00:00:00Z\n")
    client = lake.boto3_client()
    for key in SIBLINGS:
        client.put_object(Bucket=lake.bucket, Key=key, Body=b"not the lake's")
    keys = lake.keys()
    assert any(k.startswith(f"{LOG_DIR}/") for k in keys) and any(k.startswith(QUARANTINE_LOG) for k in keys)
    assert ".stream_start" in keys
    return keys


def siblings(lake: S3Lake) -> list[str]:
    """Every key of the bucket outside the lake's prefix."""
    listed = lake.boto3_client().list_objects_v2(Bucket=lake.bucket).get("Contents", [])
    return sorted(str(o["Key"]) for o in listed if not str(o["Key"]).startswith(f"{lake.prefix}/"))


def wait_quiet() -> None:
    """Let the table's last commit be over a second old (S3 keeps whole seconds): quiet under ``quick``."""
    time.sleep(1.1)


@dataclass
class Clean:
    """``processes.clean.main`` in this process: (exit status, what it printed); the prompts it showed."""

    lake: S3Lake
    monkeypatch: pytest.MonkeyPatch
    capsys: pytest.CaptureFixture[str]
    prompts: list[str] = field(default_factory=list)

    def __call__(
        self, *args: str, answer: str = "", during_prompt: Callable[[], None] | None = None
    ) -> tuple[int, str]:
        def ask(prompt: str) -> str:
            self.prompts.append(prompt)
            if during_prompt is not None:
                during_prompt()
            return answer

        self.monkeypatch.setattr("builtins.input", ask)
        self.capsys.readouterr()
        code = clean.main(list(args))
        captured = self.capsys.readouterr()
        return code, captured.out + captured.err


@pytest.fixture
def cli(s3_lake: S3Lake, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Iterator[Clean]:
    """Clean on the moto lake with the real pipeline margin (30 s)."""
    monkeypatch.setenv("DATA_LAKE_PATH", s3_lake.url)
    monkeypatch.setenv("FLUSH_INTERVAL_SECONDS", "0.05")
    monkeypatch.setenv("POLL_INTERVAL_SECONDS", "0")
    get_settings.cache_clear()
    yield Clean(s3_lake, monkeypatch, capsys)
    get_settings.cache_clear()


@pytest.fixture
def quick(cli: Clean, monkeypatch: pytest.MonkeyPatch) -> Clean:
    """Clean with no margin on the pipeline heuristic: a log quiet for 0.1 s means no pipeline."""
    monkeypatch.setattr(clean, "PIPELINE_MARGIN_SECONDS", 0.0)
    return cli


class Deletes:
    """Records every ``obstore.delete`` call (the keys of each request, in order); ``after`` runs after each."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, after: Callable[[int], None] | None = None) -> None:
        self.calls: list[list[str]] = []
        real = obstore.delete

        def delete(store: ObjectStore, paths: str | Sequence[str]) -> None:
            real(store, paths)
            self.calls.append([paths] if isinstance(paths, str) else list(paths))
            if after is not None:
                after(len(self.calls))

        monkeypatch.setattr(obstore, "delete", delete)


# -- emptied ---------------------------------------------------------------------------------------------


def test_a_lake_with_data_is_emptied_and_nothing_else_in_the_bucket_is_touched(
    s3_lake: S3Lake, quick: Clean, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = fill(s3_lake)
    assert LEASE_KEY in before and any(k.startswith(f"{layout.COMPACTED}/") for k in before)
    others = siblings(s3_lake)
    assert others == sorted(SIBLINGS)
    deletes = Deletes(monkeypatch)
    wait_quiet()
    code, out = quick(answer="y")
    assert code == EXIT_OK, out
    assert s3_lake.keys() == []  # no object left under the prefix, the lease included
    assert siblings(s3_lake) == others  # other prefixes (even lake2/, lakeside.txt) untouched
    assert len(quick.prompts) == 1 and s3_lake.url in quick.prompts[0]
    assert f"{len(before):,} object(s)" in quick.prompts[0]  # says what it will delete
    assert f"removed {len(before):,} object(s)" in out and "event 0" in out
    assert sorted(k for call in deletes.calls for k in call) == before
    # The order: each table's newest commit alone first, the rest of the logs, the data, the lease last.
    events_log = sorted((k for k in before if k.startswith(f"{LOG_DIR}/") and k.endswith(".json")), reverse=True)
    quarantine_log = sorted((k for k in before if k.startswith(QUARANTINE_LOG) and k.endswith(".json")), reverse=True)
    assert deletes.calls[0] == [events_log[0]]
    assert [quarantine_log[0]] in deletes.calls
    flat = [k for call in deletes.calls for k in call]
    last_log = max(i for i, k in enumerate(flat) if f"{LOG_DIR}/" in k)
    first_data = min(i for i, k in enumerate(flat) if f"{LOG_DIR}/" not in k)
    assert last_log < first_data  # an interrupted clean leaves inert files, never a table missing its files
    assert deletes.calls[-1] == [LEASE_KEY]
    code, out = quick("--yes")  # idempotent
    assert code == EXIT_OK and "nothing to remove" in out


def test_after_the_clean_a_new_pipeline_creates_a_new_table_at_event_0(s3_lake: S3Lake, quick: Clean) -> None:
    fill(s3_lake, 5_000, compact=False)
    _, position = table_ids(s3_lake)
    assert position == 4_999
    wait_quiet()
    code, out = quick("--yes")
    assert code == EXIT_OK, out
    assert s3_lake.keys() == []
    assert run(_settings(s3_lake), RunOptions(max_records=1_500, compaction=False), source=FakeSource()) == 0
    ids, position = table_ids(s3_lake)
    assert sorted(ids.tolist()) == list(range(1_500)) and position == 1_499  # resumed at 0, not at 5,000


# -- the compactor's lease -----------------------------------------------------------------------------------


def test_a_live_compactor_lease_refuses_before_the_prompt_and_nothing_is_deleted(s3_lake: S3Lake, quick: Clean) -> None:
    fill(s3_lake, 3_000, compact=False)
    other = Lease(_storage(s3_lake).store, ttl=30)
    assert other.acquire()
    before = s3_lake.keys()
    wait_quiet()
    code, out = quick(answer="y")
    assert code == EXIT_LOCKED
    assert quick.prompts == []  # refused before asking
    lines = out.strip().splitlines()
    assert len(lines) == 1 and "a compactor is running" in lines[0] and other.holder_id in lines[0]
    assert s3_lake.keys() == before
    other.check()  # its lease is untouched: still its own write
    other.release()


def test_a_compactor_that_takes_the_lease_during_the_prompt_is_caught(s3_lake: S3Lake, quick: Clean) -> None:
    fill(s3_lake, 3_000)
    storage = _storage(s3_lake)
    other = Lease(storage.store, ttl=30)
    wait_quiet()
    code, out = quick(answer="y", during_prompt=lambda: assert_acquired(other))
    assert code == EXIT_LOCKED and "a compactor is running" in out
    assert quick.prompts  # it asked: the probe found the lease released
    other.check()
    before_release = s3_lake.keys()
    other.release()
    assert LEASE_KEY in before_release and len(before_release) > 10  # nothing deleted


def assert_acquired(lease: Lease) -> None:
    assert lease.acquire()


def test_an_expired_lease_is_taken_over_and_deleted(s3_lake: S3Lake, quick: Clean) -> None:
    fill(s3_lake, 3_000, compact=False)
    dead = Lease(_storage(s3_lake).store, ttl=5, clock=lambda: time.time() - 3_600)  # expired an hour ago
    assert dead.acquire()
    assert s3_lake.keys("_locks/") == [LEASE_KEY]
    wait_quiet()
    code, out = quick("--yes")
    assert code == EXIT_OK, out
    assert s3_lake.keys() == []


# -- the pipeline heuristic ------------------------------------------------------------------------------


def test_a_fresh_commit_refuses_as_a_pipeline_appears_to_run(s3_lake: S3Lake) -> None:
    fill(s3_lake, 3_000, compact=False)
    before = s3_lake.keys()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(s3_lake.env, DATA_LAKE_PATH=s3_lake.url)
    out = subprocess.run(
        [sys.executable, "-m", "processes.clean", "--yes"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == EXIT_LOCKED, out.stdout + out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1 and "a pipeline appears to be running" in lines[0] and "last commit was" in lines[0]
    assert s3_lake.keys() == before  # nothing deleted, no lease object left behind


def test_a_commit_during_the_prompt_refuses_and_the_lease_clean_created_is_gone(
    s3_lake: S3Lake, quick: Clean, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill(s3_lake, 2_000, compact=False)
    assert s3_lake.keys("_locks/") == []  # no compactor ever ran
    wait_quiet()
    grown: list[str] = []

    def pipeline_commits() -> None:  # a pipeline commits again while the prompt waits
        settings = _settings(s3_lake)
        assert run(settings, RunOptions(max_records=1_000, compaction=False), source=FakeSource()) == 0
        grown.extend(s3_lake.keys())
        # The real margin from here on: with none, a commit a second old (whole seconds) would count as quiet.
        monkeypatch.setattr(clean, "PIPELINE_MARGIN_SECONDS", 30.0)

    code, out = quick(answer="y", during_prompt=pipeline_commits)
    assert code == EXIT_LOCKED and "a pipeline appears to be running" in out, out
    assert s3_lake.keys() == grown  # nothing deleted; the lease this clean created is deleted again


def test_answering_n_keeps_everything(s3_lake: S3Lake, quick: Clean) -> None:
    before = fill(s3_lake, 2_000)
    wait_quiet()
    code, out = quick(answer="n")
    assert code == EXIT_OK and "kept" in out
    assert s3_lake.keys() == before


# -- a pipeline the heuristic missed ------------------------------------------------------------------------


def test_a_commit_racing_with_the_clean_is_refused_once_the_newest_commit_is_gone(
    s3_lake: S3Lake, quick: Clean, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill(s3_lake, 2_000, compact=False)
    storage = _storage(s3_lake)
    stale = LakeTable.open(storage)  # a writer whose snapshot is the newest version
    position = stale.committed_event_id()
    assert position == 1_999
    outcome: list[BaseException | None] = []

    def commit_after_first_delete(n: int) -> None:
        if n != 1:
            return
        table = lake_table(2_000, 100)
        info = write_landing(storage, table)  # published during the clean: a late object
        try:
            stale.append(info, FileStats.of_table(table), through_event_id=2_099, expected=position)
        except LakeError as exc:
            outcome.append(exc)
        else:
            outcome.append(None)

    Deletes(monkeypatch, after=commit_after_first_delete)
    wait_quiet()
    code, out = quick("--yes")
    assert code == EXIT_OK, out
    assert len(outcome) == 1 and outcome[0] is not None, "the stale writer's commit landed"
    assert "Invalid table version" in str(outcome[0])
    assert "warning: 1 object(s) appeared" in out  # its landing file, found by the second listing
    assert s3_lake.keys() == []


def test_a_pipeline_that_outlives_the_clean_cannot_commit_into_the_emptied_prefix(
    s3_lake: S3Lake, quick: Clean, caplog: pytest.LogCaptureFixture
) -> None:
    storage = _storage(s3_lake)
    table = LakeTable.open_or_create(storage, TEST_IDENTITY)
    writer = BufferedWriter(storage, FlushThresholds(1_000, 0.05), table=table, position=None).start()
    try:
        writer.add(make_records(0, 1_000))
        wait_until(lambda: writer.stats().records_committed == 1_000, 30, what="the first commit")
        wait_quiet()
        code, out = quick("--yes")
        assert code == EXIT_OK, out
        assert s3_lake.keys() == []
        with caplog.at_level(logging.WARNING, logger="lake.writer"):
            writer.add(make_records(1_000, 1_000))  # the pipeline goes on after the clean
            wait_until(lambda: writer.stats().failed_attempts >= 2, 30, what="two failed commits")
    finally:
        writer.abort()
    assert writer.stats().records_committed == 1_000  # nothing more was committed
    assert "Invalid table version" in caplog.text
    left = s3_lake.keys()
    assert not [k for k in left if LOG_DIR in k] and not storage.has_table()  # no log entry, no table
    assert left and all(k.startswith(f"{layout.LANDING}/") for k in left)  # only its inert landing file(s)
    code, out = quick("--yes")  # what it left is removed by the next clean
    assert code == EXIT_OK and s3_lake.keys() == []
