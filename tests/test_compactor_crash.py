"""The commit protocol under crashes: the live set at every step, and recovery after a crash at each step.

A crash is simulated by raising a BaseException from the step hook: it bypasses the compactor's own
clean-up (which only handles ordinary exceptions), so it leaves the lake exactly as ``kill -9`` would
at that instant - temp files and all. Real ``kill -9`` tests are in test_compactor_cli.py.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from lake import layout
from lake.compaction import (
    STEP_DELETED,
    STEP_DELETING,
    STEP_PUBLISHED,
    STEP_SNAPSHOT,
    STEP_WRITING,
    STEP_WRITTEN,
    Compactor,
)
from lake.liveset import live_set
from lake.storage import LocalStorage
from testkit.ids import assert_exactly_once, live_ids
from testkit.landing import clone_lake, compactor_temp, publish_landing
from testkit.processes import make_settings
from utils.config import Settings

ROWS = 208_000
FAR_FUTURE = 10**10  # a clock reading at which every grace period has passed


class SimulatedCrash(BaseException):
    """The process dies here."""


def _crash_at(step: str, nth: int) -> object:
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
    """A lake mid-life: an earlier small compacted file (its sources still on disk, replaced), and landing
    files enough for four outputs under a 1 MB ceiling; the next cycle merges them all. Built once."""
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


def _replaced_due_by(storage: LocalStorage, grace: float) -> dict[str, float]:
    """Replaced file -> the earliest instant it may be deleted (the newest namer's mtime + grace)."""
    live = live_set(storage)
    named: dict[str, float] = {}
    for f in (*live.files, *live.replaced):
        for src in f.sources:
            named[src] = max(named.get(src, 0.0), f.info.mtime_ns / 1e9 + grace)
    return {f.key: named[f.key] for f in live.replaced}


CRASH_POINTS = [
    (STEP_SNAPSHOT, 1),
    (STEP_WRITING, 1),
    (STEP_WRITTEN, 1),
    (STEP_PUBLISHED, 1),
    (STEP_WRITING, 2),
    (STEP_WRITTEN, 2),
    (STEP_PUBLISHED, 2),
    (STEP_PUBLISHED, 4),  # the last output
    (STEP_DELETING, 1),
    (STEP_DELETED, 1),
    (STEP_DELETING, 9),  # the earlier compacted file, right after its own sources
    (STEP_DELETED, 9),
    (STEP_DELETED, 19),  # the last one
]


@pytest.mark.parametrize(("step", "nth"), CRASH_POINTS, ids=[f"{s}-{n}" for s, n in CRASH_POINTS])
def test_recovery_after_a_crash_at_each_step(
    storage: LocalStorage, lake_root: Path, template: LocalStorage, step: str, nth: int
) -> None:
    settings = _build(storage, lake_root, template)
    crashing = Compactor(storage, settings, hook=_crash_at(step, nth), clock=lambda: FAR_FUTURE)  # type: ignore[arg-type]
    with pytest.raises(SimulatedCrash):
        crashing.run_cycle()
    assert_exactly_once(storage, range(ROWS))  # right after the crash
    if step in (STEP_WRITING, STEP_WRITTEN):
        assert compactor_temp(storage), "the crash should have left a temp file behind"

    # Restart with the real clock: recovery, then a normal cycle. Nothing may be deleted before its grace.
    due_by = _replaced_due_by(storage, settings.compaction_grace_seconds)
    deleted_at: dict[str, float] = {}

    def record(current: str, key: str) -> None:
        if current == STEP_DELETING:
            deleted_at[key] = time.time()

    restarted = Compactor(storage, settings, hook=record)
    restarted.recover()
    assert compactor_temp(storage) == []
    restarted.run_cycle()
    assert_exactly_once(storage, range(ROWS))
    for key, when in deleted_at.items():
        if key in due_by:
            assert when >= due_by[key], f"{key} deleted before its grace period ended"
    for key, due in due_by.items():
        if due > time.time() + 0.5:
            assert storage.exists(key), f"{key} is still in its grace period but was deleted"

    # Later still (and with any landing file due): everything replaced is gone, the live set is whole,
    # nothing half-done remains.
    later = Compactor(storage, settings.replace(compaction_min_files=2), clock=lambda: FAR_FUTURE)
    later.recover()
    later.run_cycle()
    live = live_set(storage)
    assert live.replaced == () and live.in_zone(layout.LANDING) == []
    assert compactor_temp(storage) == [] and storage.list_all(layout.TEMP) == []
    assert_exactly_once(storage, range(ROWS))
    assert np.array_equal(live_ids(storage), np.arange(ROWS))  # and in event-id order, file after file


def test_a_crash_between_link_and_temp_removal(storage: LocalStorage, lake_root: Path, template: LocalStorage) -> None:
    """publish() links the temp file into compacted/, then unlinks the temp name: die in between."""
    settings = _build(storage, lake_root, template)
    with pytest.raises(SimulatedCrash):
        Compactor(storage, settings, hook=_crash_at(STEP_WRITTEN, 1)).compact()  # type: ignore[arg-type]
    [tmp] = compactor_temp(storage)
    os.link(storage.path(tmp), storage.path(f"{layout.COMPACTED}/{layout.new_file_name('compacted', 0, 1)}"))
    assert_exactly_once(storage, range(ROWS))
    restarted = Compactor(storage, settings, clock=lambda: FAR_FUTURE)
    assert restarted.recover()["temp_removed"] == [tmp]
    restarted.run_cycle()
    assert_exactly_once(storage, range(ROWS))
    assert live_set(storage).replaced == ()


def test_the_live_set_at_each_step_of_the_protocol(
    storage: LocalStorage, lake_root: Path, template: LocalStorage
) -> None:
    settings = _build(storage, lake_root, template)
    before = live_set(storage)
    snapshot = [f.key for f in before.files]  # the small compacted file + 10 landing files
    seen: list[str] = []

    def check(step: str, detail: str) -> None:
        seen.append(step)
        assert_exactly_once(storage, range(ROWS))  # at every step, whatever the step
        live = live_set(storage)
        if step in (STEP_SNAPSHOT, STEP_WRITING, STEP_WRITTEN) and STEP_PUBLISHED not in seen:
            assert live.keys == snapshot  # nothing visible changes until the first commit
        if step == STEP_WRITTEN:
            assert storage.exists(f"{layout.TEMP}/{detail}")
            assert f"{layout.TEMP}/{detail}" in compactor_temp(storage)
        if step == STEP_PUBLISHED:
            assert detail in live.keys
            sources = json.loads(storage.read_metadata(detail)[layout.META_SOURCES])
            assert not set(sources) & set(live.keys)  # hidden from the instant of the commit
            assert all(storage.exists(s) for s in sources)  # but still on disk (grace)
        if step == STEP_DELETING:
            assert detail not in live.keys and storage.exists(detail)
        if step == STEP_DELETED:
            assert not storage.exists(detail)

    Compactor(storage, settings, hook=check, clock=lambda: FAR_FUTURE).run_cycle()
    assert seen.count(STEP_PUBLISHED) == 4 and seen.count(STEP_DELETED) == 19
    assert_exactly_once(storage, range(ROWS))
