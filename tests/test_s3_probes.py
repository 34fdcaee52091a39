"""Probes of the libraries the lake relies on for S3, kept as tests so that what they found stays true.

Against moto 5.2.5's server (``testkit/s3.py``), with obstore 0.12.1 and delta-rs 1.6.6:

* obstore's conditional puts: ``mode="create"`` sends ``If-None-Match: *`` and an existing key fails
  with ``obstore.exceptions.AlreadyExistsError`` (not an ``OSError``); ``mode={"e_tag": etag}`` (the
  ``UpdateVersion`` TypedDict) sends ``If-Match`` and a stale ETag fails with ``PreconditionError``,
  as does an ``If-Match`` on a missing key (S3's 404 ``NoSuchKey``). The object is left as it was.
* moto checks a precondition and stores the object in two steps without a lock: two conditional
  creates of one key can both succeed (the later overwrites). The testkit server serializes requests,
  which makes each one atomic, as S3 is.
* delta-rs commits to S3 with ``If-None-Match: *`` on ``_delta_log/<version>.json`` directly: no
  temporary commit file, no copy or rename, no DynamoDB, and no option beyond the ``AWS_*`` variables
  (``AWS_ALLOW_HTTP`` is needed for a plain-http endpoint). A commit racing another for the same
  version gets 412 and is retried on top of the winner (appends) or refused with "Concurrent
  transaction failed" (the same ``txn`` app id): never an overwritten commit file.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import obstore as obs
import pyarrow as pa
import pytest
from deltalake import DeltaTable, Schema, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError
from deltalake.transaction import AddAction, CommitProperties, RemoveAction, Transaction
from moto.s3.models import S3Backend
from obstore.exceptions import AlreadyExistsError, PreconditionError

from testkit.s3 import S3Lake, moto_s3, s3_lake

pytestmark = pytest.mark.integration

__all__ = ["s3_lake"]  # the fixture, imported for pytest to find

APP_ID = "badge-pipeline"  # as lake.table.APP_ID
SCHEMA = pa.schema([("x", pa.int64())])


def commit_key(version: int) -> str:
    return f"t/_delta_log/{version:020d}.json"


def add(path: str, *, data_change: bool = True) -> AddAction:
    return AddAction(path, 100, {}, 0, data_change, json.dumps({"numRecords": 1}))


def txn_properties(position: int | None) -> CommitProperties | None:
    return None if position is None else CommitProperties(app_transactions=[Transaction(APP_ID, position)])


def commit(dt: DeltaTable, actions: list[AddAction | RemoveAction], position: int | None = None) -> None:
    """A commit as ``lake.table`` makes it: ``create_write_transaction`` with the pipeline's ``txn``."""
    dt.create_write_transaction(actions, "append", dt.schema(), commit_properties=txn_properties(position))


def added_paths(lake: S3Lake, version: int) -> list[str]:
    """The paths the commit file of ``version`` adds, read straight from the store."""
    body = bytes(obs.get(lake.store(), commit_key(version)).bytes()).decode()
    return [json.loads(line)["add"]["path"] for line in body.splitlines() if line.startswith('{"add"')]


@pytest.fixture
def table(s3_lake: S3Lake) -> Iterator[tuple[S3Lake, str]]:
    """An empty Delta table at ``<lake>/t`` on moto, created with the ``AWS_*`` environment only."""
    url = f"{s3_lake.url}/t"
    DeltaTable.create(url, Schema.from_arrow(SCHEMA), storage_options=s3_lake.env)
    s3_lake.requests.clear()
    yield s3_lake, url


# -- obstore's conditional puts --------------------------------------------------------------------


def test_create_mode_sends_if_none_match_and_refuses_to_overwrite(s3_lake: S3Lake) -> None:
    store = s3_lake.store()
    first = obs.put(store, "k", b"first", mode="create")
    assert first["e_tag"]
    with pytest.raises(AlreadyExistsError) as caught:
        obs.put(store, "k", b"second", mode="create")
    assert not isinstance(caught.value, OSError)  # not FileExistsError: catch obstore's class
    assert bytes(obs.get(store, "k").bytes()) == b"first"
    puts = s3_lake.requests.matching("PUT", "/lake/k")
    assert [(r.if_none_match, r.status) for r in puts] == [("*", 200), ("*", 412)]


def test_update_mode_sends_if_match_and_a_stale_etag_fails(s3_lake: S3Lake) -> None:
    store = s3_lake.store()
    first = obs.put(store, "k", b"v1")
    second = obs.put(store, "k", b"v2", mode={"e_tag": first["e_tag"]})
    assert second["e_tag"] and second["e_tag"] != first["e_tag"]
    with pytest.raises(PreconditionError):
        obs.put(store, "k", b"v3", mode={"e_tag": first["e_tag"]})
    assert bytes(obs.get(store, "k").bytes()) == b"v2"
    head = obs.head(store, "k")
    assert head["e_tag"] == second["e_tag"]  # quoted, as the put returned it
    with pytest.raises(PreconditionError):  # If-Match on a key that does not exist: S3's 404, the same class
        obs.put(store, "missing", b"x", mode={"e_tag": first["e_tag"]})
    assert s3_lake.keys() == ["k"]
    puts = s3_lake.requests.matching("PUT", "/lake/")
    assert [(r.if_match, r.status) for r in puts] == [
        (None, 200),
        (first["e_tag"], 200),
        (first["e_tag"], 412),
        (first["e_tag"], 404),
    ]


def test_a_missing_key_is_file_not_found(s3_lake: S3Lake) -> None:
    with pytest.raises(FileNotFoundError):
        obs.head(s3_lake.store(), "nothing")
    with pytest.raises(FileNotFoundError):
        obs.get(s3_lake.store(), "nothing")
    obs.delete(s3_lake.store(), "nothing")  # deleting is idempotent: no error


def racing_creates(monkeypatch: pytest.MonkeyPatch, serialize: bool) -> tuple[list[str], bytes]:
    """Two ``mode="create"`` puts of one key, the first paused inside moto after its precondition check.

    The pause lasts until the second put has returned to its client, or 2 s: on a server that runs
    requests concurrently the second one is checked, stored and answered meanwhile. Returns each put's
    outcome and the object's content at the end.
    """
    original: Callable[..., Any] = S3Backend.put_object
    calls = itertools.count()
    first_inside = threading.Event()
    second_answered = threading.Event()

    def paused_put_object(self: S3Backend, bucket_name: str, key_name: str, *args: Any, **kwargs: Any) -> Any:
        if key_name.endswith("/race") and next(calls) == 0:
            first_inside.set()
            second_answered.wait(2.0)
        return original(self, bucket_name, key_name, *args, **kwargs)

    monkeypatch.setattr(S3Backend, "put_object", paused_put_object)
    outcomes: list[str] = []

    def create(body: bytes) -> None:
        try:
            obs.put(store, "race", body, mode="create")
            outcomes.append(f"{body.decode()} created")
        except AlreadyExistsError:
            outcomes.append(f"{body.decode()} refused")

    with moto_s3(serialize=serialize) as lake:
        store = lake.store()
        first = threading.Thread(target=create, args=(b"first",))
        first.start()
        assert first_inside.wait(30)
        create(b"second")
        second_answered.set()
        first.join(30)
        content = bytes(obs.get(store, "race").bytes())
    return sorted(outcomes), content


def test_moto_checks_preconditions_apart_from_the_write(monkeypatch: pytest.MonkeyPatch) -> None:
    """moto's own server: both racing creates succeed and the later overwrites (S3 would refuse it).

    The testkit's server answers one request at a time: the second create waits and is refused.
    """
    assert racing_creates(monkeypatch, serialize=False) == (["first created", "second created"], b"first")
    assert racing_creates(monkeypatch, serialize=True) == (["first created", "second refused"], b"first")


def test_concurrent_conditional_puts_have_one_winner(s3_lake: S3Lake) -> None:
    threads = 8
    stores = [s3_lake.store() for _ in range(threads)]

    def race(put: Callable[[int], None]) -> list[int]:
        barrier = threading.Barrier(threads)
        winners: list[int] = []

        def run(i: int) -> None:
            barrier.wait()
            try:
                put(i)
                winners.append(i)
            except (AlreadyExistsError, PreconditionError):
                pass

        workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(60)
        return winners

    for round_ in range(5):
        key = f"k{round_}"

        def create(i: int, key: str = key) -> None:
            obs.put(stores[i], key, f"create {i}".encode(), mode="create")

        created = race(create)
        assert len(created) == 1
        assert bytes(obs.get(stores[0], key).bytes()) == f"create {created[0]}".encode()
        etag = obs.head(stores[0], key)["e_tag"]

        def update(i: int, key: str = key, etag: str | None = etag) -> None:
            obs.put(stores[i], key, f"update {i}".encode(), mode={"e_tag": etag})

        updated = race(update)
        assert len(updated) == 1
        assert bytes(obs.get(stores[0], key).bytes()) == f"update {updated[0]}".encode()


# -- delta-rs on S3 --------------------------------------------------------------------------------


def test_delta_rs_commits_with_if_none_match_and_no_other_machinery(s3_lake: S3Lake) -> None:
    url = f"{s3_lake.url}/t"
    write_deltalake(url, pa.table({"x": [1, 2, 3]}), storage_options=s3_lake.env)
    write_deltalake(url, pa.table({"x": [4]}), storage_options=s3_lake.env, mode="append")
    requests = s3_lake.requests.entries()
    commits = [r for r in requests if r.method == "PUT" and "/_delta_log/" in r.path]
    assert [(r.path.rsplit("/", 1)[-1], r.if_none_match, r.status) for r in commits] == [
        ("00000000000000000000.json", "*", 200),
        ("00000000000000000001.json", "*", 200),
    ]
    assert not [r for r in requests if r.copy_source or (r.method == "POST" and "uploads" in r.query)]
    assert all(r.path.startswith(f"/{s3_lake.bucket}") for r in requests)  # one bucket, nothing else (no DynamoDB)
    assert s3_lake.keys("t/_delta_log/") == [commit_key(0), commit_key(1)]
    assert DeltaTable(url, storage_options=s3_lake.env).to_pyarrow_table().num_rows == 4


def test_delta_rs_reads_the_aws_environment(s3_lake: S3Lake) -> None:
    """The fixture exports the ``AWS_*`` variables: delta-rs finds the endpoint without storage options."""
    url = f"{s3_lake.url}/t"
    write_deltalake(url, pa.table({"x": [1]}))
    assert DeltaTable(url).version() == 0


def test_delta_rs_refuses_a_plain_http_endpoint_without_allow_http(s3_lake: S3Lake, monkeypatch: Any) -> None:
    monkeypatch.delenv("AWS_ALLOW_HTTP")
    options = {k: v for k, v in s3_lake.env.items() if k != "AWS_ALLOW_HTTP"}
    with pytest.raises(OSError, match="URL scheme is not allowed"):
        write_deltalake(f"{s3_lake.url}/t", pa.table({"x": [1]}), storage_options=options)


def test_a_stale_handle_sees_the_newer_version_before_it_puts(table: tuple[S3Lake, str]) -> None:
    lake, url = table
    first = DeltaTable(url, storage_options=lake.env)
    stale = DeltaTable(url, storage_options=lake.env)
    commit(first, [add("a.parquet")])
    commit(stale, [add("b.parquet")])  # an append commutes: delta-rs commits it on top
    puts = [r for r in lake.requests.entries() if r.method == "PUT" and "/_delta_log/" in r.path]
    assert [(r.path.rsplit("/", 1)[-1], r.status) for r in puts] == [
        ("00000000000000000001.json", 200),
        ("00000000000000000002.json", 200),  # no 412 first: it listed the log and found version 1
    ]
    assert added_paths(lake, 1) == ["a.parquet"]
    assert added_paths(lake, 2) == ["b.parquet"]


def test_a_stale_commit_of_the_pipeline_position_is_refused(table: tuple[S3Lake, str]) -> None:
    """As on the local disk (lake.table's fencing): the same ``txn`` app id committed since the handle's view."""
    lake, url = table
    first = DeltaTable(url, storage_options=lake.env)
    stale = DeltaTable(url, storage_options=lake.env)
    commit(first, [add("a.parquet")], position=9)
    with pytest.raises(CommitFailedError, match="Concurrent transaction failed"):
        commit(stale, [add("b.parquet")], position=9)
    latest = DeltaTable(url, storage_options=lake.env)
    assert latest.version() == 1
    assert latest.transaction_version(APP_ID) == 9
    assert not lake.keys("t/_delta_log/00000000000000000002")


def race_one_commit(lake: S3Lake, url: str, position: int | None) -> str:
    """Two handles at version 0 commit version 1; the loser's PUT is held at the server until the winner's landed.

    Returns what the loser's commit did: "committed" or the error it raised.
    """
    winner = DeltaTable(url, storage_options=lake.env)
    loser = DeltaTable(url, storage_options=lake.env)
    outcome: list[str] = []

    def loser_commits() -> None:
        try:
            commit(loser, [add("loser.parquet")], position)
            outcome.append("committed")
        except DeltaError as exc:
            outcome.append(f"{type(exc).__name__}: {exc}")

    with lake.server.gate("PUT", "/t/_delta_log/00000000000000000001.json") as gate:
        thread = threading.Thread(target=loser_commits)
        thread.start()
        gate.wait_arrived()  # the loser listed the log (version 0 was the newest) and is putting version 1
        commit(winner, [add("winner.parquet")], position)
        gate.release()
        thread.join(60)
    assert not thread.is_alive()
    return outcome[0]


def test_a_racing_append_gets_412_and_is_retried_on_top(table: tuple[S3Lake, str]) -> None:
    lake, url = table
    assert race_one_commit(lake, url, position=None) == "committed"
    puts = [r for r in lake.requests.entries() if r.method == "PUT" and "/_delta_log/" in r.path]
    assert [(r.path.rsplit("/", 1)[-1], r.if_none_match, r.status) for r in puts] == [
        ("00000000000000000001.json", "*", 200),  # the winner
        ("00000000000000000001.json", "*", 412),  # the loser, refused: version 1 is not overwritten
        ("00000000000000000002.json", "*", 200),  # the loser again, after checking for conflicts
    ]
    assert added_paths(lake, 1) == ["winner.parquet"]
    assert added_paths(lake, 2) == ["loser.parquet"]


def test_a_racing_commit_of_the_pipeline_position_fails_cleanly(table: tuple[S3Lake, str]) -> None:
    lake, url = table
    outcome = race_one_commit(lake, url, position=41)
    assert outcome.startswith("CommitFailedError") and "Concurrent transaction failed" in outcome
    puts = [r for r in lake.requests.entries() if r.method == "PUT" and "/_delta_log/" in r.path]
    assert [(r.path.rsplit("/", 1)[-1], r.status) for r in puts] == [
        ("00000000000000000001.json", 200),
        ("00000000000000000001.json", 412),
    ]
    assert added_paths(lake, 1) == ["winner.parquet"]
    latest = DeltaTable(url, storage_options=lake.env)
    assert (latest.version(), latest.transaction_version(APP_ID)) == (1, 41)


@pytest.mark.parametrize("position", [None, 5])
def test_concurrent_commits_never_overwrite_a_commit_file(table: tuple[S3Lake, str], position: int | None) -> None:
    """Several handles at version 0 commit at once: every commit file holds exactly one writer's commit."""
    lake, url = table
    writers = 4
    handles = [DeltaTable(url, storage_options=lake.env) for _ in range(writers)]
    barrier = threading.Barrier(writers)
    committed: list[int] = []
    refused: list[str] = []

    def run(i: int) -> None:
        barrier.wait()
        try:
            commit(handles[i], [add(f"w{i}.parquet")], position)
            committed.append(i)
        except CommitFailedError as exc:
            refused.append(str(exc))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    latest = DeltaTable(url, storage_options=lake.env)
    files = sorted(latest.get_add_actions(flatten=True).column("path").to_pylist())
    if position is None:  # appends commute: all land, one version each
        assert sorted(committed) == list(range(writers)) and not refused
        assert latest.version() == writers
    else:  # the same txn app id: exactly one lands, the others are refused
        assert len(committed) == 1 and len(refused) == writers - 1
        assert all("Concurrent transaction failed" in r for r in refused)
        assert latest.version() == 1 and latest.transaction_version(APP_ID) == position
    assert files == sorted(f"w{i}.parquet" for i in committed)
    per_version = [added_paths(lake, v) for v in range(1, latest.version() + 1)]
    assert sorted(p for paths in per_version for p in paths) == files  # each commit once, none lost
    assert all(len(paths) == 1 for paths in per_version)


def test_a_second_removal_of_a_removed_file_is_accepted_on_s3_too(table: tuple[S3Lake, str]) -> None:
    """Why the compactor needs a lease on S3 as it needs its flock locally: the log does not refuse this."""
    lake, url = table
    commit(DeltaTable(url, storage_options=lake.env), [add("input.parquet")])
    first = DeltaTable(url, storage_options=lake.env)
    second = DeltaTable(url, storage_options=lake.env)
    now_ms = int(time.time() * 1000)
    commit(first, [RemoveAction("input.parquet", False, now_ms, size=100), add("out-1.parquet", data_change=False)])
    commit(second, [RemoveAction("input.parquet", False, now_ms, size=100), add("out-2.parquet", data_change=False)])
    files = DeltaTable(url, storage_options=lake.env).get_add_actions(flatten=True).column("path").to_pylist()
    assert sorted(files) == ["out-1.parquet", "out-2.parquet"]  # the input's rows, twice


def test_checkpoints_and_log_clean_up_work_on_s3(s3_lake: S3Lake) -> None:
    """lake.table's log upkeep (checkpoint every N commits, expired entries deleted) on the object store."""
    url = f"{s3_lake.url}/t"
    configuration = {
        "delta.checkpointInterval": "2",
        "delta.logRetentionDuration": "interval 0 seconds",
        "delta.enableExpiredLogCleanup": "true",
    }
    DeltaTable.create(url, Schema.from_arrow(SCHEMA), storage_options=s3_lake.env, configuration=configuration)
    dt = DeltaTable(url, storage_options=s3_lake.env)
    for i in range(5):
        commit(dt, [add(f"f{i}.parquet")], position=i)
        dt.update_incremental()
    assert s3_lake.keys("t/_delta_log/") == [
        "t/_delta_log/00000000000000000005.checkpoint.parquet",
        "t/_delta_log/00000000000000000005.json",
        "t/_delta_log/_last_checkpoint",
    ]
    reopened = DeltaTable(url, storage_options=s3_lake.env)
    assert (reopened.version(), reopened.transaction_version(APP_ID)) == (5, 4)
    assert len(reopened.get_add_actions(flatten=True).column("path")) == 5
