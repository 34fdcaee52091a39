"""``python -m lake migrate`` on a lake copied into a bucket (moto's S3 server): the same guarantees as on a disk.

A lake of the previous layout is built on a local disk with ``tests/test_migrate.py``'s helpers and uploaded key
for key (its ``.stream_start`` too). The migration makes the events table's version 0, one conditional PUT, its
commit point; the result is judged by the independent log replay (``testkit.replay``, boto3 and the Delta
protocol, not the lake's code), by ``python -m lake verify``, and against the same old lake migrated on a disk.
Refusals, failed reads and races write nothing to the events table; a migration killed between its two tables
(its lease left to expire) is simply run again; the compactor's lease keeps a compactor or a second migration out.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from deltalake import DeltaTable, Schema

from lake import layout, migrate
from lake.lease import LEASE_KEY, Lease
from lake.objectstore import ObjectStorage
from lake.storage import LocalStorage
from lake.table import LOG_DIR, OPERATION_KEY, LakeTable, ensure_migrated
from processes import compactor
from processes.pipeline import RunOptions, run
from testkit.fake_source import FakeSource, as_refused
from testkit.processes import ROOT, make_settings
from testkit.records import lake_table, make_records
from testkit.replay import DirectoryFiles, LakeFiles, lake_files, replay, table_ids, upload
from testkit.s3 import S3Lake, s3_lake
from tests.test_migrate import IDENTITY, OldLake, build_old_lake, old_file
from utils.errors import ConfigError, LakeError, LakeLockedError, UnmigratedLakeError
from utils.records import LAKE_SCHEMA

pytestmark = pytest.mark.integration
__all__ = ["s3_lake"]  # the fixture, imported for pytest

EVENTS_COMMIT = f"{LOG_DIR}/{migrate.FIRST_COMMIT}"
QUARANTINE_COMMIT = f"{layout.QUARANTINE}/{LOG_DIR}/{migrate.FIRST_COMMIT}"
WRITES = ("PUT", "POST", "DELETE")


def _copy_to_bucket(root: Path, lake: S3Lake) -> list[str]:
    """The old lake at ``root`` uploaded under the lake's prefix, key for key, with its ``.stream_start``."""
    keys = upload(root, lake)
    stream_start = root / migrate.STREAM_START_FILE
    if stream_start.exists():
        lake.boto3_client().put_object(
            Bucket=lake.bucket, Key=f"{lake.prefix}/{migrate.STREAM_START_FILE}", Body=stream_start.read_bytes()
        )
    return keys


def _old_lake_in_bucket(tmp_path: Path, lake: S3Lake) -> tuple[OldLake, ObjectStorage]:
    """``build_old_lake``'s lake, uploaded; the local original stays as it was (nothing migrated)."""
    old = build_old_lake(tmp_path / "old")
    _copy_to_bucket(old.storage.root, lake)
    return old, ObjectStorage(lake.url, lake.env)


def _writes(lake: S3Lake) -> list[str]:
    """The paths of the writes the server answered since its log was cleared, but the compactor lease's."""
    return [f"{r.method} {r.path}" for r in lake.requests.entries() if r.method in WRITES and LEASE_KEY not in r.path]


def _actions(files: LakeFiles, key: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in files.read(key).decode().splitlines() if line.strip()]


def _cli(lake: S3Lake, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m lake ARGS`` on the bucket's lake, with its AWS_* environment (and no other AWS_* variable)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(lake.env)
    env["DATA_LAKE_PATH"] = lake.url
    return subprocess.run(
        [sys.executable, "-m", "lake", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def _assert_migrated_whole(lake: S3Lake, old: OldLake) -> None:
    """Judged by the replay alone: every live id once, the position as ``txn``, the quarantine table's one file."""
    files = lake_files(lake)
    ids, state = table_ids(files)
    assert state.position == 299
    assert len(ids) == 290 and len(np.unique(ids)) == 290
    assert old.compacted.key in state.keys
    assert not {f.key for f in old.replaced} & state.keys and not set(old.foreign) & state.keys
    refused, quarantine = table_ids(files, layout.QUARANTINE)
    assert quarantine.keys == {old.refused.key} and quarantine.position is None
    assert np.array_equal(refused, np.arange(250, 260))
    assert np.array_equal(np.sort(np.concatenate([ids, refused])), np.arange(300))  # every id to the position, once
    assert all(files.exists(key) for key in old.foreign)  # left where they were, in no table


# -- the migration, judged ------------------------------------------------------------------------------


def test_an_old_lake_copied_to_a_bucket_becomes_one_commit_that_holds_it_whole(s3_lake: S3Lake, tmp_path: Path) -> None:
    old, storage = _old_lake_in_bucket(tmp_path, s3_lake)
    twin = LocalStorage(tmp_path / "twin")
    shutil.copytree(old.storage.root, twin.root)
    with pytest.raises(UnmigratedLakeError):
        ensure_migrated(storage)  # how every process opens the lake: refused until it is migrated
    s3_lake.requests.clear()

    identity = migrate.legacy_identity(storage, 42, 200)  # the start from the bucket's .stream_start
    assert identity == IDENTITY
    report = migrate.migrate(storage, identity)
    assert report["migrated"] is True and report["lake"] == s3_lake.url
    assert report["rows"] == 290 and report["committed_event_id"] == 299 and report["version"] == 0
    assert report["quarantine_files"] == 1 and report["quarantine_rows"] == 10
    assert set(report["left_out"]) >= {*old.foreign, *(f.key for f in old.replaced), old.orphan_refused.key}
    _assert_migrated_whole(s3_lake, old)

    # Each table is one commit, written once, with If-None-Match; nothing was staged in the bucket.
    assert s3_lake.keys(LOG_DIR) == [EVENTS_COMMIT]
    assert s3_lake.keys(f"{layout.QUARANTINE}/{LOG_DIR}") == [QUARANTINE_COMMIT]
    for key in (EVENTS_COMMIT, QUARANTINE_COMMIT):
        (put,) = s3_lake.requests.matching("PUT", f"/{s3_lake.prefix}/{key}")
        assert put.if_none_match == "*" and put.status == 200
    assert sorted(_writes(s3_lake)) == sorted(
        f"PUT /{s3_lake.bucket}/{s3_lake.prefix}/{key}" for key in (EVENTS_COMMIT, QUARANTINE_COMMIT)
    )
    assert s3_lake.keys(layout.TEMP) == []
    lease = Lease(storage.store).read()
    assert lease is not None and lease.released  # held while it worked, handed back

    # The same files, statistics, position and metadata as the same old lake migrated on a disk.
    migrate.migrate(twin, IDENTITY)
    bucket, disk = lake_files(s3_lake), DirectoryFiles(twin.root)
    for table in ("", layout.QUARANTINE):
        on_s3, on_disk = replay(bucket, table), replay(disk, table)
        assert on_s3.txns == on_disk.txns
        assert {p: (a["size"], a["stats"], a["dataChange"]) for p, a in on_s3.adds.items()} == {
            p: (a["size"], a["stats"], a["dataChange"]) for p, a in on_disk.adds.items()
        }
    first, created = _actions(bucket, EVENTS_COMMIT), _actions(disk, f"{LOG_DIR}/{migrate.FIRST_COMMIT}")
    kinds = [next(iter(action)) for action in first]
    assert kinds[:3] == ["commitInfo", "protocol", "metaData"] and set(kinds[3:]) == {"add", "txn"}
    assert first[0]["commitInfo"]["operationParameters"]["location"] == s3_lake.url
    assert first[0]["commitInfo"][OPERATION_KEY] == migrate.OPERATION
    assert first[1] == created[1]  # protocol
    fields = ("name", "schemaString", "partitionColumns", "configuration")
    assert {k: first[2]["metaData"][k] for k in fields} == {k: created[2]["metaData"][k] for k in fields}
    events = LakeTable.open(storage)
    assert events.identity == IDENTITY and events.version == 0 and events.committed_event_id() == 299
    storage.close()


def test_the_cli_migrates_the_bucket_once_and_the_pipeline_resumes_after_it(s3_lake: S3Lake, tmp_path: Path) -> None:
    old, storage = _old_lake_in_bucket(tmp_path, s3_lake)
    for command in ("stats", "verify"):
        refused = _cli(s3_lake, command)
        assert refused.returncode == 2, (command, refused.stdout, refused.stderr)
        (line,) = refused.stderr.strip().splitlines()
        assert "python -m lake migrate" in line and s3_lake.url in line

    out = _cli(s3_lake, "migrate", "--json", "--seed", "42", "--events-per-second", "200")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["migrated"] is True and report["rows"] == 290 and report["committed_event_id"] == 299
    assert report["identity"] == IDENTITY.to_config()
    _assert_migrated_whole(s3_lake, old)
    verified = _cli(s3_lake, "verify", "--json")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    figures = json.loads(verified.stdout)
    assert figures["ok"] and figures["table_rows"] == 290 and figures["quarantined_rows"] == 10
    assert figures["committed_event_id"] == 299

    log_before = {key: lake_files(s3_lake).read(key) for key in s3_lake.keys(LOG_DIR)}
    s3_lake.requests.clear()
    again = _cli(s3_lake, "migrate", "--seed", "7", "--stream-start", "2030-01-01T00:00:00Z")
    assert again.returncode == 0 and "already migrated" in again.stdout, again.stderr
    assert {key: lake_files(s3_lake).read(key) for key in s3_lake.keys(LOG_DIR)} == log_before
    assert _writes(s3_lake) == []  # not even the lease: the table answered first

    # The real pipeline resumes right after the position; the lake stays whole.
    settings = make_settings(s3_lake.url, BATCH_SIZE=100, BUFFER_RECORDS=100)
    assert run(settings, RunOptions(max_records=200, compaction=False), source=FakeSource(identity=IDENTITY)) == 0
    files = lake_files(s3_lake)
    ids, state = table_ids(files)
    refused_ids, _ = table_ids(files, layout.QUARANTINE)
    assert state.position == 499
    assert np.array_equal(np.sort(np.concatenate([ids, refused_ids])), np.arange(500))
    assert _cli(s3_lake, "verify").returncode == 0
    storage.close()


# -- refusing, and failing, without writing -------------------------------------------------------------


def test_a_lake_the_migration_cannot_trust_is_refused_and_the_bucket_is_left_as_it_was(
    s3_lake: S3Lake, tmp_path: Path
) -> None:
    local = LocalStorage(tmp_path / "inflated")
    local.ensure_layout()
    old_file(local, layout.LANDING, "landing", lake_table(0, 100))
    old_file(local, layout.LANDING, "landing", lake_table(100, 10), claim=(100, 9_999_999, 10))
    old_file(local, layout.QUARANTINE, "quarantine", as_refused(make_records(40, 5), "dept: unknown"))
    keys = _copy_to_bucket(local.root, s3_lake)
    storage = ObjectStorage(s3_lake.url, s3_lake.env)
    s3_lake.requests.clear()

    with pytest.raises(LakeError, match=r"claims .* holds") as info:
        migrate.migrate(storage, IDENTITY)
    assert "nothing was written" in str(info.value) and s3_lake.url in str(info.value)
    assert _writes(s3_lake) == []
    assert s3_lake.keys() == sorted([*keys, LEASE_KEY])  # no _delta_log/ anywhere, no quarantine table
    lease = Lease(storage.store).read()
    assert lease is not None and lease.released

    out = _cli(s3_lake, "migrate", "--stream-start", "2025-03-03T00:00:00Z")
    assert out.returncode == 1 and out.stdout == ""
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("error: ") and "claims" in line and "nothing was written" in line
    assert s3_lake.keys() == sorted([*keys, LEASE_KEY])
    storage.close()


def test_a_failed_read_of_a_live_file_stops_the_migration_as_an_io_failure_not_damage(
    s3_lake: S3Lake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, storage = _old_lake_in_bucket(tmp_path, s3_lake)
    target = old.compacted.key
    read_stats = migrate.read_stats
    armed: list[Any] = []

    def reads_fail(store: Any, info: Any, *args: Any, **kwargs: Any) -> Any:
        with contextlib.ExitStack() as faults:
            if info.key == target:  # its footer was read; every GET of its bytes now answers 500
                armed.extend(faults.enter_context(s3_lake.server.fault("GET", target)) for _ in range(30))
            return read_stats(store, info, *args, **kwargs)

    s3_lake.requests.clear()
    with monkeypatch.context() as patched, pytest.raises(LakeError, match="an I/O failure, not damage") as info:
        patched.setattr(migrate, "read_stats", reads_fail)
        migrate.migrate(storage, IDENTITY)
    assert any(f.hit for f in armed)
    assert target in str(info.value) and "nothing was written" in str(info.value)
    assert "cannot be migrated" not in str(info.value)  # not called damage
    assert _writes(s3_lake) == [] and s3_lake.keys(LOG_DIR) == []
    assert migrate.migrate(storage, IDENTITY)["migrated"] is True  # the store answers again: run it again
    _assert_migrated_whole(s3_lake, old)
    storage.close()


def test_a_commit_whose_answer_was_lost_is_the_migration_s(s3_lake: S3Lake, tmp_path: Path) -> None:
    old, storage = _old_lake_in_bucket(tmp_path, s3_lake)
    with s3_lake.server.fault("PUT", f"{s3_lake.prefix}/{EVENTS_COMMIT}") as lost:  # landed, answered 500
        report = migrate.migrate(storage, IDENTITY)
    assert lost.hit and report["migrated"] is True and report["rows"] == 290
    assert s3_lake.keys(LOG_DIR) == [EVENTS_COMMIT]
    _assert_migrated_whole(s3_lake, old)
    storage.close()


def test_a_table_another_process_created_at_the_commit_point_stands_and_the_migration_refuses(
    s3_lake: S3Lake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, storage = _old_lake_in_bucket(tmp_path, s3_lake)
    check = migrate._check_single_commit

    def someone_creates_the_table(stage: Path, commit: bytes, scratch: Path) -> None:
        check(stage, commit, scratch)
        if stage.name == "events":
            DeltaTable.create(
                s3_lake.url, Schema.from_arrow(LAKE_SCHEMA), mode="error", storage_options=storage.storage_options
            )

    monkeypatch.setattr(migrate, "_check_single_commit", someone_creates_the_table)
    with pytest.raises(LakeError, match="another process created it"):
        migrate.migrate(storage, IDENTITY)
    state = replay(lake_files(s3_lake))
    assert state.version == 0 and not state.adds and state.position is None  # theirs, untouched
    assert s3_lake.keys(LOG_DIR) == [EVENTS_COMMIT]
    storage.close()


# -- a crash, and the lease ------------------------------------------------------------------------------


class _KilledLease(Lease):
    """The lease of a migration killed with ``kill -9``: never released, no longer renewed; a short TTL."""

    def __init__(self, store: Any) -> None:
        super().__init__(store, ttl=2.0)

    def release(self) -> None:
        self.stop_renewing()


def test_a_migration_killed_between_its_tables_is_refused_by_every_process_and_simply_run_again(
    s3_lake: S3Lake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, storage = _old_lake_in_bucket(tmp_path, s3_lake)

    def killed(*args: object) -> None:
        raise KeyboardInterrupt("killed after the quarantine table was in place")

    with monkeypatch.context() as patched, pytest.raises(KeyboardInterrupt):
        patched.setattr(migrate, "_create_events_table", killed)
        patched.setattr(migrate, "Lease", _KilledLease)
        migrate.migrate(storage, IDENTITY)
    assert s3_lake.keys(LOG_DIR) == [] and s3_lake.keys(f"{layout.QUARANTINE}/{LOG_DIR}") == [QUARANTINE_COMMIT]
    left = Lease(storage.store).read()
    assert left is not None and not left.released  # the killed holder's, until it expires

    # The half state is no lake to any process: each refuses it before writing anything.
    settings = make_settings(s3_lake.url)
    with pytest.raises(UnmigratedLakeError):
        run(settings, RunOptions(max_records=100, compaction=False), source=FakeSource(identity=IDENTITY))
    with pytest.raises(UnmigratedLakeError):
        compactor.run(settings, once=True)
    out = _cli(s3_lake, "verify")
    assert out.returncode == 2 and "python -m lake migrate" in out.stderr
    assert s3_lake.keys(LOG_DIR) == []

    report = migrate.migrate(storage, IDENTITY)  # waits for the dead holder's lease to expire, takes it over
    assert report["migrated"] is True
    _assert_migrated_whole(s3_lake, old)
    assert s3_lake.keys(f"{layout.QUARANTINE}/{LOG_DIR}") == [QUARANTINE_COMMIT]  # already right: no commit
    lease = Lease(storage.store).read()
    assert lease is not None and lease.released and lease.epoch == left.epoch + 1
    assert _cli(s3_lake, "verify").returncode == 0
    storage.close()


def test_while_the_migration_holds_the_lease_a_compactor_and_a_second_migration_stay_out(
    s3_lake: S3Lake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, storage = _old_lake_in_bucket(tmp_path, s3_lake)

    # Another holder keeps the lease: the migration waits, then refuses, naming it, and writes nothing.
    other = Lease(ObjectStorage(s3_lake.url, s3_lake.env).store, ttl=60)
    assert other.acquire()
    try:
        with pytest.raises(LakeLockedError, match=re.escape(other.holder_id)):
            migrate.migrate(storage, IDENTITY, lease_wait=1.0)
    finally:
        other.release()
    assert s3_lake.keys(LOG_DIR) == [] and s3_lake.keys(f"{layout.QUARANTINE}/{LOG_DIR}") == []

    # While it works: a compactor cannot take the lease, nor can a second migration.
    seen: dict[str, Any] = {}
    create = migrate._create_events_table

    def meanwhile(*args: Any) -> None:
        seen["compactor"] = Lease(ObjectStorage(s3_lake.url, s3_lake.env).store).acquire(timeout=0)
        try:
            migrate.migrate(ObjectStorage(s3_lake.url, s3_lake.env), IDENTITY, lease_wait=0.5)
        except LakeLockedError as exc:
            seen["second"] = str(exc)
        create(*args)

    monkeypatch.setattr(migrate, "_create_events_table", meanwhile)
    assert migrate.migrate(storage, IDENTITY)["migrated"] is True
    assert seen["compactor"] is False and "python -m lake migrate" in seen["second"]
    _assert_migrated_whole(s3_lake, old)

    # Released at the end: a compactor starts on the migrated lake.
    assert compactor.run(make_settings(s3_lake.url), once=True) == 0
    storage.close()


def test_the_stream_start_of_an_old_lake_is_read_from_the_bucket(s3_lake: S3Lake, tmp_path: Path) -> None:
    _, storage = _old_lake_in_bucket(tmp_path, s3_lake)
    assert migrate.legacy_identity(storage, 42, 200) == IDENTITY
    given = migrate.legacy_identity(storage, 42, 200.0, "2025-03-03T01:00:00+01:00")
    assert given.stream_start == "2025-03-03T00:00:00Z"
    s3_lake.boto3_client().delete_object(Bucket=s3_lake.bucket, Key=f"{s3_lake.prefix}/{migrate.STREAM_START_FILE}")
    with pytest.raises(ConfigError, match="GENERATOR_STREAM_START"):
        migrate.legacy_identity(storage, 42, 200)
    storage.close()


def test_an_empty_prefix_has_nothing_to_migrate(s3_lake: S3Lake) -> None:
    storage = ObjectStorage(s3_lake.url, s3_lake.env)
    report = migrate.migrate(storage, IDENTITY)
    assert report["migrated"] is False and "nothing to migrate" in report["message"]
    assert s3_lake.keys() == [LEASE_KEY]  # taken and handed back; nothing else written
    storage.close()
