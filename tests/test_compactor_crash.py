"""The compaction protocol under crashes, against the table: what readers of the log see at every step, and
recovery after a crash at each step, on a local disk and on S3 (moto's server).

A crash is simulated by raising a BaseException from the step hook: it bypasses the compactor's own
clean-up (which only handles ordinary exceptions), so it leaves the lake exactly as ``kill -9`` would
at that instant - temp files, published but uncommitted outputs and all. Real ``kill -9`` tests are in
test_compactor_cli.py and test_chaos.py.

Every step is judged by three readers of the log: the independent one (``testkit.replay``: the directory or
the bucket listed and the log replayed without the lake's code, the files' bytes read by it), delta-rs, and
the lake's own snapshot reader.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from lake import aggregates, layout
from lake.compaction import (
    STEP_COMMITTED,
    STEP_DELETED,
    STEP_DELETING,
    STEP_PUBLISHED,
    STEP_SNAPSHOT,
    STEP_WRITING,
    STEP_WRITTEN,
    Compactor,
    StepHook,
)
from lake.objectstore import ObjectStorage
from lake.storage import LocalStorage, Storage
from lake.table import read_snapshot
from testkit.clock import ManualClock
from testkit.landing import clone_lake, compactor_temp, publish_landing, table_keys
from testkit.processes import make_settings
from testkit.replay import LakeFiles, lake_files, read_ids, replay, upload
from testkit.s3 import S3Lake, s3_lake
from utils.config import Settings

__all__ = ["s3_lake"]  # the fixture, imported for pytest

ROWS = 208_000


class SimulatedCrash(BaseException):
    """The process dies here."""


def _crash_at(step: str, nth: int, published: list[str]) -> StepHook:
    """Die at the ``nth`` ``step``; ``published`` collects the outputs published before that."""
    seen = 0

    def hook(current: str, detail: str) -> None:
        nonlocal seen
        if current == STEP_PUBLISHED:
            published.append(detail)
        if current == step:
            seen += 1
            if seen == nth:
                raise SimulatedCrash(f"{step} #{nth}")

    return hook


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> LocalStorage:
    """A lake mid-life: an earlier small compacted file (its 8 sources out of the table, still on disk), and 10
    landing files enough for four outputs under a 1 MB ceiling; the next cycle merges them all. Built once."""
    root = tmp_path_factory.mktemp("crash-template") / "lake"
    storage = LocalStorage(root)
    storage.ensure_layout()
    publish_landing(storage, 0, 1_000, 8)
    assert Compactor(storage, make_settings(root, COMPACTION_TARGET_MAX_MB=1)).compact() is not None
    publish_landing(storage, 8_000, 20_000, 10)
    return storage


@dataclass(frozen=True)
class Lake:
    """The template's lake on one backend: the lake's own storage, the independent view, the settings."""

    storage: Storage
    files: LakeFiles
    settings: Settings
    uri: str  # the table's root as delta-rs opens it
    options: dict[str, str] | None  # delta-rs's storage options
    s3: S3Lake | None
    opened: list[ObjectStorage] = field(default_factory=list)  # closed (their scratch removed) after the test

    def restarted(self) -> Storage:
        """The storage a restarted compactor process opens (on S3 a new client, with its own scratch directory)."""
        if self.s3 is None:
            return self.storage
        storage = ObjectStorage(self.s3.url, self.s3.env)
        self.opened.append(storage)
        return storage


@pytest.fixture(params=["local", "s3"])
def lake(request: pytest.FixtureRequest, tmp_path: Path, template: LocalStorage) -> Iterator[Lake]:
    """A copy of the template: hard links into a directory (mtimes kept), or every object uploaded into a bucket."""
    if request.param == "local":
        storage = LocalStorage(tmp_path / "lake")
        clone_lake(template, storage)
        settings = make_settings(storage.root, COMPACTION_TARGET_MIN_MB=1, COMPACTION_TARGET_MAX_MB=1)
        yield Lake(storage, lake_files(storage.root), settings, str(storage.root), None, None)
        return
    bucket: S3Lake = request.getfixturevalue("s3_lake")
    upload(template.root, bucket)
    s3 = ObjectStorage(bucket.url, bucket.env)
    settings = make_settings(bucket.url, COMPACTION_TARGET_MIN_MB=1, COMPACTION_TARGET_MAX_MB=1)
    lake = Lake(s3, lake_files(bucket), settings, bucket.url, bucket.env, bucket, [s3])
    try:
        yield lake
    finally:
        for opened in lake.opened:
            opened.close()


def _own_reader(storage: Storage) -> tuple[list[str], np.ndarray]:
    """What the lake's own reader sees: its snapshot's keys (in event-id order), and their ids read through its
    storage, file after file."""
    keys = read_snapshot(storage).keys
    chunks = []
    for key in keys:
        with storage.open_input(key) as f:
            chunks.append(pq.read_table(f, columns=["event_id"])["event_id"].to_numpy())
    return keys, np.concatenate(chunks) if chunks else np.empty(0, np.int64)


def _readers_see_each_event_once(lake: Lake, *, every_reader: bool = True) -> tuple[frozenset[str], list[str] | None]:
    """Each event once for every reader of the log; returns the live keys as the independent reader found them,
    and as the lake's own reader found them, in event-id order.

    ``every_reader=False``: the independent reader alone (it lists, replays and reads every live file itself).
    """
    state = replay(lake.files)
    assert np.array_equal(np.sort(read_ids(lake.files, sorted(state.keys))), np.arange(ROWS))
    if not every_reader:
        return state.keys, None
    delta_rs = DeltaTable(lake.uri, storage_options=lake.options).to_pyarrow_table(columns=["event_id"])
    assert np.array_equal(np.sort(delta_rs["event_id"].to_numpy()), np.arange(ROWS))
    keys, ids = _own_reader(lake.storage)
    assert set(keys) == state.keys and np.array_equal(np.sort(ids), np.arange(ROWS))
    return state.keys, keys


CRASH_POINTS = [
    (STEP_SNAPSHOT, 1),
    (STEP_WRITING, 1),
    (STEP_WRITTEN, 1),
    (STEP_PUBLISHED, 1),
    (STEP_WRITING, 2),
    (STEP_WRITTEN, 2),
    (STEP_PUBLISHED, 2),
    (STEP_PUBLISHED, 4),  # the last output, just before the commit
    (STEP_COMMITTED, 1),
    (STEP_DELETING, 1),
    (STEP_DELETED, 1),
    (STEP_DELETING, 10),
    (STEP_DELETED, 19),  # the last one
]


# On S3 each case costs ~4 s (moto answers one request at a time): there, the first occurrence of every step
# and the last output before the commit; the local lake takes every point.
S3_CRASH_POINTS = [(s, n) for s, n in CRASH_POINTS if n == 1] + [(STEP_PUBLISHED, 4)]
CRASH_CASES = [("local", s, n) for s, n in CRASH_POINTS] + [("s3", s, n) for s, n in S3_CRASH_POINTS]


@pytest.mark.parametrize(
    ("lake", "step", "nth"), CRASH_CASES, indirect=["lake"], ids=[f"{b}-{s}-{n}" for b, s, n in CRASH_CASES]
)
def test_recovery_after_a_crash_at_each_step(lake: Lake, step: str, nth: int) -> None:
    settings = lake.settings
    grace = settings.compaction_grace_seconds
    compacted_before = set(lake.files.listing(layout.COMPACTED))
    published: list[str] = []
    clock = ManualClock()
    crashing = Compactor(lake.storage, settings, hook=_crash_at(step, nth, published), clock=clock)
    with pytest.raises(SimulatedCrash):
        crashing.run_cycle()  # compacts, and starts the grace clocks of the 19 files out of the table
        clock.advance(grace + 1)
        crashing.run_cycle()  # deletes them
    live, _ = _readers_see_each_event_once(lake)  # right after the crash
    if step in (STEP_SNAPSHOT, STEP_WRITING, STEP_WRITTEN, STEP_PUBLISHED):
        # In the zone: what was there, and the outputs published whole; an unfinished output never is.
        assert set(lake.files.listing(layout.COMPACTED)) == compacted_before | set(published)
    if step in (STEP_WRITING, STEP_WRITTEN) and isinstance(lake.storage, LocalStorage):
        # Local only: the unfinished output lies in the lake's temp/. On S3 it is written on the compactor's
        # local disk and uploaded whole by the publish (no temp/ in the bucket): the bucket holds nothing of it.
        assert compactor_temp(lake.storage), "the crash should have left a temp file behind"
    if step == STEP_PUBLISHED:
        uncommitted = set(lake.files.listing(layout.COMPACTED)) - live
        assert uncommitted, "the crash should have left a published, uncommitted output"
    if not isinstance(lake.storage, LocalStorage):
        assert lake.files.listing(layout.TEMP) == []  # nothing is ever staged in the bucket

    # Restart: recovery, then a normal cycle. Its grace clocks start now: nothing may be deleted yet.
    storage = lake.restarted()
    restarted_clock = ManualClock()
    restarted = Compactor(storage, settings, clock=restarted_clock)
    recovered = restarted.recover()
    assert lake.files.listing(layout.TEMP) == []
    assert recovered["deleted"] == []
    assert restarted.run_cycle().deleted == []
    _readers_see_each_event_once(lake)

    # Later still (and with any landing file due): every file out of the table is gone, the table is
    # whole, nothing half-done remains.
    later = Compactor(storage, settings.replace(compaction_min_files=2), clock=restarted_clock)
    later.recover()
    later.run_cycle()
    restarted_clock.advance(grace + 1)
    later.run_cycle()
    live, _ = _readers_see_each_event_once(lake)
    assert [k for k in live if k.startswith(f"{layout.LANDING}/")] == []
    assert lake.files.data_keys() == sorted(live)
    assert lake.files.listing(layout.TEMP) == []
    assert np.array_equal(_own_reader(lake.storage)[1], np.arange(ROWS))  # and in event-id order, file after file


def test_a_crash_between_link_and_temp_removal(storage: LocalStorage, lake_root: Path, template: LocalStorage) -> None:
    """publish() links the temp file into compacted/, then unlinks the temp name: die in between.

    Local only: on S3 a publish is one conditional PUT of the whole file, with no link and no temp name in the lake.
    """
    clone_lake(template, storage)
    settings = make_settings(lake_root, COMPACTION_TARGET_MIN_MB=1, COMPACTION_TARGET_MAX_MB=1)
    lake = Lake(storage, lake_files(lake_root), settings, str(lake_root), None, None)
    with pytest.raises(SimulatedCrash):
        Compactor(storage, settings, hook=_crash_at(STEP_WRITTEN, 1, [])).compact()
    # the unfinished output (and the aggregates file of the output written before it, also the compactor's)
    compactor_temp_before = compactor_temp(storage)
    [tmp] = [k for k in compactor_temp_before if f"-{aggregates.ZONE}-" not in k]
    linked = f"{layout.COMPACTED}/{layout.new_file_name('compacted', 0, 1)}"
    os.link(storage.path(tmp), storage.path(linked))
    _readers_see_each_event_once(lake)  # a file no commit added is not the lake
    clock = ManualClock()
    restarted = Compactor(storage, settings, clock=clock)
    assert set(restarted.recover()["temp_removed"]) == set(compactor_temp_before)
    restarted.run_cycle()
    assert storage.exists(linked) and linked not in table_keys(storage)
    clock.advance(settings.compaction_grace_seconds + 1)
    restarted.run_cycle()
    assert not storage.exists(linked)
    _readers_see_each_event_once(lake)


def test_what_readers_of_the_log_see_at_each_step(lake: Lake) -> None:
    storage = lake.storage
    before = read_snapshot(storage).keys  # the small compacted file + 10 landing files, in event-id order
    compacted_before = set(lake.files.listing(layout.COMPACTED))
    seen: list[str] = []
    published: list[str] = []
    deleted: list[str] = []
    clock = ManualClock()

    def check(step: str, detail: str) -> None:
        seen.append(step)
        # At every step, whatever the step. On S3, during the clean-up (38 steps at which the table does not
        # change, only the bucket) the independent reader, which reads every live object at each of them, is
        # the judge, and the others are asked at its first and last step only (about a second a look there).
        cleaning = step in (STEP_DELETING, STEP_DELETED) and seen.count(STEP_DELETING) + seen.count(STEP_DELETED) > 1
        last = step == STEP_DELETED and seen.count(STEP_DELETED) == 19
        live, keys = _readers_see_each_event_once(
            lake, every_reader=isinstance(storage, LocalStorage) or not cleaning or last
        )
        if STEP_COMMITTED not in seen:
            assert live == set(before) and keys in (None, before)  # nothing a reader sees changes until the commit
        if step == STEP_WRITTEN:
            # the output is whole but not published: not in compacted/ ...
            assert set(lake.files.listing(layout.COMPACTED)) == compacted_before | set(published)
            if isinstance(storage, LocalStorage):  # ... but in temp/ (local only: S3 has no temp/ in the bucket)
                assert f"{layout.TEMP}/{detail}" in compactor_temp(storage)
        if step == STEP_PUBLISHED:
            assert lake.files.exists(detail) and detail not in live  # in compacted/, not yet the lake
            published.append(detail)
        if step == STEP_COMMITTED:
            assert live == set(published) and keys == published  # one commit: all outputs in, all inputs out ...
            assert all(lake.files.exists(k) for k in before)  # ... and still there (grace)
        if step == STEP_DELETING:
            assert detail not in live and lake.files.exists(detail)
        if step == STEP_DELETED:
            deleted.append(detail)
            assert not lake.files.exists(detail)

    compactor = Compactor(storage, lake.settings, hook=check, clock=clock)
    compactor.run_cycle()
    clock.advance(lake.settings.compaction_grace_seconds + 1)
    compactor.run_cycle()
    # the 19 replaced data files (and the aggregates of a replaced compacted file, where it had some)
    data_deleted = [k for k in deleted if not k.startswith(f"{aggregates.ZONE}/")]
    assert seen.count(STEP_PUBLISHED) == 4 and seen.count(STEP_COMMITTED) == 1 and len(data_deleted) == 19
    assert lake.files.data_keys() == sorted(published)
    assert lake.files.listing(layout.TEMP) == []
    _readers_see_each_event_once(lake)
