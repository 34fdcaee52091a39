"""``python -m lake stats|verify|migrate`` on a lake on S3-compatible object storage (moto's S3 server).

One lake is filled by the real pipeline (every tenth record refused) and compacted on S3, and the same
records on a local disk: ``stats`` gives the same figures on both, ``verify`` passes on both. Each test
that damages the lake does it to its own copy (every object copied under a new prefix: the table's paths
are relative). Damage is done with boto3, beside the platform's code: an object the table lists deleted,
an object's bytes replaced by garbage, its GETs failing, the endpoint gone. ``verify`` must name the file
and tell a failed request (an I/O failure) from damage it has proven. Data files without a log in the bucket
send the user to ``migrate``, which makes them a table (the migration itself: ``tests/test_migrate_s3.py``).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from lake import audit, layout
from lake.lease import LEASE_KEY, Lease
from lake.objectstore import ObjectStorage
from lake.parquet import write_file
from lake.storage import LocalStorage
from lake.table import LOG_DIR, quarantine_files, read_snapshot
from processes import compactor
from processes.pipeline import RunOptions, run
from testkit.fake_source import FakeSource
from testkit.processes import ROOT, make_settings
from testkit.records import lake_table
from testkit.s3 import S3Lake, moto_s3, s3_lake

pytestmark = pytest.mark.integration
__all__ = ["s3_lake"]  # the fixture, imported for pytest

RECORDS = 10_500
GRACE = 30.0


def _refused(event_id: int) -> bool:
    return event_id % 10 == 3


def _fill(lake: Path | str, storage_options: dict[str, str] | None = None) -> None:
    """The pipeline lands RECORDS records (one in ten refused) in flushes of 1,000; one compaction; a checkpoint.

    The checkpoint is what delta-rs writes every 100 commits, written here at once (eleven flushes on moto
    take seconds, a hundred take a minute).
    """
    settings = make_settings(lake, BATCH_SIZE=500, BUFFER_RECORDS=1_000)
    options = RunOptions(max_records=RECORDS, compaction=False)
    assert run(settings, options, source=FakeSource(refuse=_refused)) == 0
    assert compactor.run(settings, once=True) == 0
    DeltaTable(str(lake), storage_options=storage_options).create_checkpoint()


@dataclass(frozen=True)
class Lakes:
    """The same records, compacted, in a bucket of a moto server and in a local directory."""

    s3: S3Lake
    local: Path

    def copy(self) -> str:
        """A copy of the S3 lake under a prefix of its own (every object, byte for byte); its URL."""
        client = self.s3.boto3_client()
        prefix = f"copy-{uuid.uuid4().hex[:8]}"
        for key in self.s3.keys(""):
            source = {"Bucket": self.s3.bucket, "Key": f"{self.s3.prefix}/{key}"}
            client.copy_object(Bucket=self.s3.bucket, Key=f"{prefix}/{key}", CopySource=source)
        return f"s3://{self.s3.bucket}/{prefix}"

    def put(self, url: str, key: str, body: bytes) -> None:
        self.s3.boto3_client().put_object(Bucket=self.s3.bucket, Key=_object(url, key), Body=body)

    def delete(self, url: str, key: str) -> None:
        self.s3.boto3_client().delete_object(Bucket=self.s3.bucket, Key=_object(url, key))


def _object(url: str, key: str) -> str:
    """The bucket key of lake key ``key`` in the lake at ``url``."""
    prefix = url.split("/", 3)[3]
    return f"{prefix}/{key}"


@pytest.fixture(scope="module")
def lakes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lakes]:
    with moto_s3() as lake:
        with pytest.MonkeyPatch.context() as env:  # the pipeline and compactor read the AWS_* variables
            for key in [k for k in os.environ if k.startswith("AWS_")]:
                env.delenv(key)
            for key, value in lake.env.items():
                env.setenv(key, value)
            _fill(lake.url, lake.env)
        local = tmp_path_factory.mktemp("local") / "lake"
        _fill(local)
        yield Lakes(lake, local)


def _cli(lake: Path | str, s3: S3Lake | None, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m lake ARGS`` on ``lake``, with the AWS_* environment of ``s3`` (and no other AWS_* variable)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(s3.env if s3 is not None else {})
    env["DATA_LAKE_PATH"] = str(lake)
    return subprocess.run(
        [sys.executable, "-m", "lake", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def _json(out: subprocess.CompletedProcess[str]) -> Any:
    assert out.stdout, out.stderr
    return json.loads(out.stdout)


def _storage(lakes: Lakes, url: str) -> ObjectStorage:
    return ObjectStorage(url, lakes.s3.env)


# -- the whole lake --------------------------------------------------------------------------------------


def test_stats_on_s3_are_the_figures_of_the_same_records_on_a_local_disk(lakes: Lakes) -> None:
    on_s3 = _cli(lakes.s3.url, lakes.s3, "stats", "--json")
    on_disk = _cli(lakes.local, None, "stats", "--json")
    assert on_s3.returncode == 0 and on_disk.returncode == 0, on_s3.stderr + on_disk.stderr
    s3, local = _json(on_s3), _json(on_disk)
    assert s3.pop("lake") == lakes.s3.url and local.pop("lake") == str(lakes.local)
    s3.pop("freshness_lag_seconds"), local.pop("freshness_lag_seconds")  # measured at two instants
    assert s3 == local
    table = s3["table"]
    refused = sum(map(_refused, range(RECORDS)))
    assert table["committed_event_id"] == RECORDS - 1 and table["rows"] == RECORDS - refused
    assert s3["zones"]["quarantine"]["rows"] == refused
    assert table["checkpoints"] >= 1 and table["log_entries"] >= 1  # listed in the bucket's _delta_log/
    assert s3["zones"]["compacted"]["files"] >= 1 and s3["not_in_table"]["files"] >= 8  # the compaction's inputs
    text = _cli(lakes.s3.url, lakes.s3, "stats")
    assert text.returncode == 0 and f"lake: {lakes.s3.url}" in text.stdout, text.stderr
    assert "files in the bucket not in the table" in text.stdout


def test_verify_passes_on_s3_as_on_a_local_disk(lakes: Lakes) -> None:
    on_s3 = _cli(lakes.s3.url, lakes.s3, "verify", "--json")
    on_disk = _cli(lakes.local, None, "verify", "--json")
    assert on_s3.returncode == 0 and on_disk.returncode == 0, on_s3.stdout + on_s3.stderr
    s3, local = _json(on_s3), _json(on_disk)
    assert s3["ok"] and s3["problems"] == [] and s3["damaged"] == [] and s3["io_failures"] == []
    figures = ("version", "committed_event_id", "table_rows", "quarantined_rows", "files_checked")
    assert {k: s3[k] for k in figures} == {k: local[k] for k in figures}
    assert s3["table_rows"] + s3["quarantined_rows"] == RECORDS
    assert any("in the bucket that no table holds" in n for n in s3["notes"])  # the compaction's inputs
    text = _cli(lakes.s3.url, lakes.s3, "verify")
    assert text.returncode == 0 and text.stdout.startswith("verify OK"), text.stdout + text.stderr


# -- damage, and what is not damage ---------------------------------------------------------------------


def test_an_object_the_table_lists_deleted_fails_verify_by_name(lakes: Lakes) -> None:
    url = lakes.copy()
    gone = read_snapshot(_storage(lakes, url)).in_zone(layout.COMPACTED)[0]
    lakes.delete(url, gone.key)
    out = _cli(url, lakes.s3, "verify", "--json")
    assert out.returncode == 1, out.stderr
    report = _json(out)
    assert any(
        p.startswith(f"{gone.key}: in the table's log") and "missing from the bucket" in p for p in report["problems"]
    )
    assert any(f"{gone.row_count} event id(s) from 0 to {RECORDS - 1} are neither" in p for p in report["problems"])
    assert report["damaged"] == [] and report["io_failures"] == []
    text = _cli(url, lakes.s3, "verify")
    assert text.returncode == 1 and f"problem: {gone.key}" in text.stdout


def test_an_object_replaced_by_garbage_is_named_damaged(lakes: Lakes) -> None:
    url = lakes.copy()
    storage = _storage(lakes, url)
    quarantined = read_snapshot(storage).files[0]
    lakes.put(url, quarantined.key, os.urandom(quarantined.info.size))  # the same key and size, not Parquet
    report = _json(_cli(url, lakes.s3, "verify", "--json"))
    assert report["ok"] is False and report["damaged"] == [quarantined.key] and report["io_failures"] == []
    (problem,) = [p for p in report["problems"] if p.startswith(quarantined.key)]
    assert "unreadable: damaged" in problem and "I/O" not in problem


def test_failed_requests_while_a_file_is_read_are_an_io_failure_never_damage(lakes: Lakes) -> None:
    url = lakes.copy()
    storage = _storage(lakes, url)
    snap = read_snapshot(storage)
    target = snap.in_zone(layout.COMPACTED)[0]
    with contextlib.ExitStack() as faults:
        # Its HEAD answers; every GET of its bytes gets a 500 (the client retries each read, then gives up).
        armed = [faults.enter_context(lakes.s3.server.fault("GET", _object(url, target.key))) for _ in range(20)]
        report = audit.verify(storage, GRACE)
    assert sum(f.hit for f in armed) >= 2
    assert report.io_failures == [target.key] and report.damaged == []
    (problem,) = report.problems  # no id is called missing: the file's ids were not checked
    assert problem.startswith(f"{target.key}: not checked: reading it failed") and "not damage" in problem
    assert any(f"{target.row_count} event id(s) in the range" in n and "not checked" in n for n in report.notes)
    assert report.files_checked == len(snap.files) + len(quarantine_files(storage)) - 1  # every other file, whole
    storage.close()


def test_with_the_endpoint_gone_verify_reports_failed_requests_not_damage(
    s3_lake: S3Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(s3_lake.url, BATCH_SIZE=500, BUFFER_RECORDS=1_000)
    assert run(settings, RunOptions(max_records=5_000, compaction=False), source=FakeSource(refuse=_refused)) == 0
    storage = ObjectStorage(s3_lake.url, s3_lake.env)
    snap = read_snapshot(storage)
    opened: list[str] = []
    open_input = storage.open_input

    def the_endpoint_stops(key: str) -> Any:
        if not opened:
            s3_lake.server.stop()  # after the tables were opened: the files' reads fail
        opened.append(key)
        return open_input(key)

    monkeypatch.setattr(storage, "open_input", the_endpoint_stops)
    report = audit.verify(storage, GRACE)
    assert not report.ok and report.damaged == []
    assert report.io_failures == snap.keys[:3]  # three in a row, then the rest is not read
    assert all("an I/O failure, not damage" in p for p in report.problems[:3]), report.problems
    assert any("file(s) not read" in p and "not answering" in p for p in report.problems)
    assert not any("damaged" in p or "are neither in the table" in p for p in report.problems), report.problems
    assert any("listing failed" in n for n in report.notes)
    assert set(opened) == set(snap.keys[:3])

    out = _cli(s3_lake.url, s3_lake, "verify")  # the endpoint down from the start: the log cannot be read
    assert out.returncode == 1 and out.stdout == ""
    assert len(out.stderr.strip().splitlines()) == 1 and out.stderr.startswith("error: "), out.stderr
    assert "damage" not in out.stderr and s3_lake.bucket in out.stderr


def test_an_os_read_error_on_a_local_disk_is_an_io_failure_as_on_s3(
    lakes: Lakes, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = LocalStorage(lakes.local)
    target = read_snapshot(storage).in_zone(layout.COMPACTED)[0]
    parquet_file = pq.ParquetFile

    def eio(source: Any, *args: Any, **kwargs: Any) -> Any:
        if str(source) == str(storage.path(target.key)):
            raise OSError(errno.EIO, "Input/output error", str(source))  # what a failing disk or NFS says
        return parquet_file(source, *args, **kwargs)

    monkeypatch.setattr(pq, "ParquetFile", eio)  # as lake.audit calls it
    report = audit.verify(storage, GRACE)
    assert report.io_failures == [target.key] and report.damaged == []
    (problem,) = report.problems
    assert problem.startswith(f"{target.key}: not checked") and "not damage" in problem


# -- the compactor's lease, seen by verify --------------------------------------------------------------


def test_files_past_the_grace_period_name_the_lease_holder_or_its_absence(lakes: Lakes) -> None:
    url = lakes.copy()
    storage = _storage(lakes, url)
    later = time.time() + 3_600  # the compaction's inputs, out of the table, are long past the grace period

    released = audit.verify(storage, grace_seconds=0, now=later)
    (note,) = [n for n in released.notes if "no table holds" in n]
    assert "past it with no compactor running to clean up" in note and LEASE_KEY in note and "released" in note

    lease = Lease(storage.store, ttl=7_200)  # another machine's compactor, live
    assert lease.acquire()
    try:
        held = audit.verify(storage, grace_seconds=0, now=later)
    finally:
        lease.release()
    (note,) = [n for n in held.notes if "no table holds" in n]
    assert "for the compactor holding the lease to delete" in note and lease.holder_id in note
    assert held.ok and released.ok
    storage.close()


# -- migrate: a lake that is not a table yet ------------------------------------------------------------


def test_data_files_without_a_log_on_s3_send_the_user_to_migrate_which_makes_them_a_table(s3_lake: S3Lake) -> None:
    storage = ObjectStorage(s3_lake.url, s3_lake.env)
    written = write_file(storage, lake_table(0, 10), layout.LANDING, "landing")  # a file, and no _delta_log/
    for command in ("stats", "verify"):
        out = _cli(s3_lake.url, s3_lake, command)
        assert out.returncode == 2, (command, out.stdout, out.stderr)
        (line,) = out.stderr.strip().splitlines()
        assert "not a Delta table" in line and "python -m lake migrate" in line and s3_lake.url in line
    assert s3_lake.keys(LOG_DIR) == []

    migrated = _cli(s3_lake.url, s3_lake, "migrate", "--json", "--stream-start", "2025-03-03T00:00:00Z")
    assert migrated.returncode == 0, migrated.stderr
    report = _json(migrated)
    assert report["migrated"] is True and report["lake"] == s3_lake.url
    assert report["rows"] == 10 and report["committed_event_id"] == 9
    assert s3_lake.keys(LOG_DIR) == [f"{LOG_DIR}/{0:020d}.json"]  # one commit: the table, whole
    assert read_snapshot(storage).keys == [written.key]
    verified = _cli(s3_lake.url, s3_lake, "verify", "--json")
    assert verified.returncode == 0 and _json(verified)["table_rows"] == 10, verified.stdout + verified.stderr
    again = _cli(s3_lake.url, s3_lake, "migrate", "--stream-start", "2025-03-03T00:00:00Z")
    assert again.returncode == 0 and again.stdout.startswith("already migrated"), again.stderr
    storage.close()


def test_migrate_on_an_s3_lake_whose_store_does_not_answer_fails_in_one_line() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env |= {"DATA_LAKE_PATH": "s3://badge-lake/lake", "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ALLOW_HTTP": "1"}
    env |= {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}
    out = subprocess.run(
        [sys.executable, "-m", "lake", "migrate", "--stream-start", "2025-03-03T00:00:00Z"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 1 and out.stdout == ""
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("error: ") and "s3://badge-lake/lake" in line and "damage" not in line
    assert not (ROOT / "s3:").exists()
