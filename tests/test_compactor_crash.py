"""The compaction protocol under crashes, against the table: what readers of the log see at every step, and
recovery after a crash at each step.

A crash is simulated by raising a BaseException from the step hook: it bypasses the compactor's own
clean-up (which only handles ordinary exceptions), so it leaves the lake exactly as ``kill -9`` would
at that instant - temp files, published but uncommitted outputs and all. Real ``kill -9`` tests are in
test_compactor_cli.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from deltalake import DeltaTable

from lake import layout
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
from lake.storage import LocalStorage
from testkit.clock import ManualClock
from testkit.ids import assert_exactly_once, live_ids
from testkit.landing import clone_lake, compactor_temp, disk_keys, publish_landing, table_keys
from testkit.processes import make_settings
from utils.config import Settings

ROWS = 208_000


class SimulatedCrash(BaseException):
    """The process dies here."""


def _crash_at(step: str, nth: int) -> StepHook:
    seen = 0

    def hook(current: str, _detail: str) -> None:
        nonlocal seen
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


def _build(storage: LocalStorage, lake_root: Path, template: LocalStorage) -> Settings:
    clone_lake(template, storage)
    return make_settings(lake_root, COMPACTION_TARGET_MIN_MB=1, COMPACTION_TARGET_MAX_MB=1)


def _delta_rs_ids(storage: LocalStorage) -> np.ndarray:
    """The event ids delta-rs reads through the log (another reader than ours)."""
    table = DeltaTable(str(storage.root)).to_pyarrow_table(columns=["event_id"])
    return np.sort(table["event_id"].to_numpy())


def _readers_see_each_event_once(storage: LocalStorage) -> None:
    assert_exactly_once(storage, range(ROWS))
    assert np.array_equal(_delta_rs_ids(storage), np.arange(ROWS))


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


@pytest.mark.parametrize(("step", "nth"), CRASH_POINTS, ids=[f"{s}-{n}" for s, n in CRASH_POINTS])
def test_recovery_after_a_crash_at_each_step(
    storage: LocalStorage, lake_root: Path, template: LocalStorage, step: str, nth: int
) -> None:
    settings = _build(storage, lake_root, template)
    grace = settings.compaction_grace_seconds
    clock = ManualClock()
    crashing = Compactor(storage, settings, hook=_crash_at(step, nth), clock=clock)
    with pytest.raises(SimulatedCrash):
        crashing.run_cycle()  # compacts, and starts the grace clocks of the 19 files out of the table
        clock.advance(grace + 1)
        crashing.run_cycle()  # deletes them
    _readers_see_each_event_once(storage)  # right after the crash
    if step in (STEP_WRITING, STEP_WRITTEN):
        assert compactor_temp(storage), "the crash should have left a temp file behind"
    if step == STEP_PUBLISHED:
        uncommitted = {f.key for f in storage.list_files(layout.COMPACTED)} - set(table_keys(storage))
        assert uncommitted, "the crash should have left a published, uncommitted output"

    # Restart: recovery, then a normal cycle. Its grace clocks start now: nothing may be deleted yet.
    restarted_clock = ManualClock()
    restarted = Compactor(storage, settings, clock=restarted_clock)
    recovered = restarted.recover()
    assert compactor_temp(storage) == []
    assert recovered["deleted"] == []
    assert restarted.run_cycle().deleted == []
    _readers_see_each_event_once(storage)

    # Later still (and with any landing file due): every file out of the table is gone, the table is
    # whole, nothing half-done remains.
    later = Compactor(storage, settings.replace(compaction_min_files=2), clock=restarted_clock)
    later.recover()
    later.run_cycle()
    restarted_clock.advance(grace + 1)
    later.run_cycle()
    assert [k for k in table_keys(storage) if k.startswith(f"{layout.LANDING}/")] == []
    assert disk_keys(storage) == sorted(table_keys(storage))
    assert compactor_temp(storage) == [] and storage.list_all(layout.TEMP) == []
    _readers_see_each_event_once(storage)
    assert np.array_equal(live_ids(storage), np.arange(ROWS))  # and in event-id order, file after file


def test_a_crash_between_link_and_temp_removal(storage: LocalStorage, lake_root: Path, template: LocalStorage) -> None:
    """publish() links the temp file into compacted/, then unlinks the temp name: die in between."""
    settings = _build(storage, lake_root, template)
    with pytest.raises(SimulatedCrash):
        Compactor(storage, settings, hook=_crash_at(STEP_WRITTEN, 1)).compact()
    [tmp] = compactor_temp(storage)
    linked = f"{layout.COMPACTED}/{layout.new_file_name('compacted', 0, 1)}"
    os.link(storage.path(tmp), storage.path(linked))
    _readers_see_each_event_once(storage)  # a file no commit added is not the lake
    clock = ManualClock()
    restarted = Compactor(storage, settings, clock=clock)
    assert restarted.recover()["temp_removed"] == [tmp]
    restarted.run_cycle()
    assert storage.exists(linked) and linked not in table_keys(storage)
    clock.advance(settings.compaction_grace_seconds + 1)
    restarted.run_cycle()
    assert not storage.exists(linked)
    _readers_see_each_event_once(storage)


def test_what_readers_of_the_log_see_at_each_step(
    storage: LocalStorage, lake_root: Path, template: LocalStorage
) -> None:
    settings = _build(storage, lake_root, template)
    before = table_keys(storage)  # the small compacted file + 10 landing files
    seen: list[str] = []
    published: list[str] = []
    clock = ManualClock()

    def check(step: str, detail: str) -> None:
        seen.append(step)
        _readers_see_each_event_once(storage)  # at every step, whatever the step
        keys = table_keys(storage)
        if STEP_COMMITTED not in seen:
            assert keys == before  # nothing a reader sees changes until the commit
        if step == STEP_WRITTEN:
            assert f"{layout.TEMP}/{detail}" in compactor_temp(storage)
        if step == STEP_PUBLISHED:
            assert storage.exists(detail) and detail not in keys  # in compacted/, not yet the lake
            published.append(detail)
        if step == STEP_COMMITTED:
            assert keys == published  # one commit: all outputs in, all inputs out ...
            assert all(storage.exists(k) for k in before)  # ... and still on disk (grace)
        if step == STEP_DELETING:
            assert detail not in keys and storage.exists(detail)
        if step == STEP_DELETED:
            assert not storage.exists(detail)

    compactor = Compactor(storage, settings, hook=check, clock=clock)
    compactor.run_cycle()
    clock.advance(settings.compaction_grace_seconds + 1)
    compactor.run_cycle()
    assert seen.count(STEP_PUBLISHED) == 4 and seen.count(STEP_COMMITTED) == 1 and seen.count(STEP_DELETED) == 19
    assert disk_keys(storage) == sorted(published)
    _readers_see_each_event_once(storage)
