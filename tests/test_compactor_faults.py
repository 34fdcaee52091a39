"""The compactor under faults: transient read errors at the file layer, forged and inflated files that no commit
added, an input removed concurrently, a commit that fails. None of them may move a valid file out of the table,
lose a row or duplicate one."""

from __future__ import annotations

import errno
import io
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from lake import layout
from lake.compaction import STEP_PUBLISHED, Compactor
from lake.filestats import FileStats
from lake.parquet import badge_metadata, write_file
from lake.storage import LocalStorage
from lake.table import LakeTable, read_snapshot
from testkit.clock import ManualClock
from testkit.ids import assert_exactly_once, live_ids
from testkit.landing import disk_keys, forge_compacted, publish_landing, table_keys
from testkit.records import lake_table
from utils.config import Settings
from utils.errors import LakeError


class FlakyFile(io.RawIOBase):
    """A file whose ``fail_at``-th read fails with ``error`` (an NFS mount going stale mid-read, a bad sector)."""

    def __init__(self, path: Path, error: int, fail_at: int, disk: FlakyDisk) -> None:
        self._f = open(path, "rb", buffering=0)  # noqa: SIM115 - closed by close()
        self._error = error
        self._fail_at = fail_at
        self._reads = 0
        self._disk = disk

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def readinto(self, buffer: Any) -> int:
        self._reads += 1
        if self._reads == self._fail_at:
            self._disk.injected += 1
            raise OSError(self._error, f"{errno.errorcode[self._error]} (injected)")
        return self._f.readinto(buffer)

    def close(self) -> None:
        self._f.close()
        super().close()


class FlakyDisk:
    """The file layer the compactor reads its inputs through, failing at random like a sick disk or NFS mount.

    Each open fails with EIO (probability ``p_open``), or returns a file whose data read fails with
    ESTALE or EIO (probability ``p_read``), or a healthy file. ``healthy()`` turns the faults off.
    """

    def __init__(self, seed: int, p_open: float = 0.2, p_read: float = 0.2) -> None:
        self._rng = random.Random(seed)
        self.p_open = p_open
        self.p_read = p_read
        self.injected = 0

    def healthy(self) -> None:
        self.p_open = self.p_read = 0.0

    def __call__(self, path: Path) -> Any:
        roll = self._rng.random()
        if roll < self.p_open:
            self.injected += 1
            raise OSError(errno.EIO, "Input/output error (injected)", str(path))
        if roll < self.p_open + self.p_read:
            error = self._rng.choice((errno.ESTALE, errno.EIO))
            return FlakyFile(path, error, fail_at=self._rng.randint(1, 4), disk=self)
        return str(path)


def _nothing_left_the_table(storage: LocalStorage, before: dict[str, int], expected_rows: int) -> None:
    """Every file of an earlier snapshot is still in the table or was replaced by a committed output; no row lost."""
    snap = read_snapshot(storage)
    assert snap.rows == expected_rows
    assert storage.list_all(layout.QUARANTINE) == []
    assert all(storage.exists(key) for key in before)  # nothing deleted, nothing moved (grace has not passed)
    assert_exactly_once(storage, range(expected_rows))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_transient_read_errors_never_move_a_valid_file_out_of_the_table(
    storage: LocalStorage, settings: Settings, seed: int
) -> None:
    settings = settings.replace(compaction_min_files=2)
    publish_landing(storage, 0, 2_000, 24)
    before = {f.key: f.row_count for f in read_snapshot(storage).files}
    disk = FlakyDisk(seed, p_open=0.15, p_read=0.25)
    compactor = Compactor(storage, settings, open_input=disk, clock=ManualClock())  # the clock stands: no deletion

    reported: list[str] = []
    committed = set(before)
    for _ in range(3):  # three cycles on a sick disk
        report = compactor.run_cycle()
        reported += report.unreadable
        committed |= {key for m in report.compactions for key in m.outputs}
        _nothing_left_the_table(storage, before, 48_000)
    assert disk.injected >= 3 and reported, "the faults were not injected"
    assert set(reported) <= committed  # only files of the table were read, and each is still on disk

    disk.healthy()
    for _ in range(3):  # the next cycles compact what could not be read
        report = compactor.run_cycle()
        assert report.unreadable == []
    assert read_snapshot(storage).in_zone(layout.LANDING) == []
    assert np.array_equal(live_ids(storage), np.arange(48_000))


def test_an_io_error_on_one_input_is_reported_with_the_file_and_the_error(
    storage: LocalStorage, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    files = publish_landing(storage, 0, 1_000, 9)
    sick = storage.path(files[0].key)
    mount = {"stale": True}

    def stale_mount(path: Path) -> Any:
        if path == sick and mount["stale"]:
            raise OSError(errno.ESTALE, "Stale file handle (injected)", str(path))
        return str(path)

    compactor = Compactor(storage, settings.replace(compaction_min_files=2), open_input=stale_mount)
    report = compactor.run_cycle()
    assert report.unreadable == [files[0].key]
    [line] = [r.getMessage() for r in caplog.records if files[0].key in r.getMessage()]
    assert "Stale file handle" in line and "stays in the table" in line
    assert files[0].key in table_keys(storage) and report.compactions[-1].files_in == 8
    assert_exactly_once(storage, range(9_000))

    mount["stale"] = False  # the mount recovers: the next cycle that is due compacts it
    publish_landing(storage, 9_000, 1_000, 1)
    report = compactor.run_cycle()
    assert report.unreadable == [] and report.compactions[0].files_in == 3
    assert read_snapshot(storage).in_zone(layout.LANDING) == []
    assert_exactly_once(storage, range(10_000))


@pytest.mark.parametrize("due", [False, True], ids=["not-due", "due"])
def test_a_forged_compacted_file_changes_nothing(storage: LocalStorage, settings: Settings, due: bool) -> None:
    """A zero-row file in compacted/ whose footer names three committed landing files: not the lake, never trusted."""
    files = publish_landing(storage, 0, 10_000, 8 if due else 3)
    rows = len(files) * 10_000
    forged = forge_compacted(storage, [f.key for f in files[:3]])
    assert json.loads(storage.read_metadata(forged.key)[layout.META_SOURCES]) == [f.key for f in files[:3]]
    clock = ManualClock()
    compactor = Compactor(storage, settings, clock=clock)
    for _ in range(3):
        compactor.run_cycle()
        assert read_snapshot(storage).rows == rows
        assert DeltaTable(str(storage.root)).to_pyarrow_table(columns=["event_id"]).num_rows == rows
        clock.advance(settings.compaction_grace_seconds + 1)
    assert not storage.exists(forged.key)  # removed by the clean-up after grace, like any file out of the table
    if not due:
        assert table_keys(storage) == [f.key for f in files] and all(storage.exists(f.key) for f in files)
    assert_exactly_once(storage, range(rows))


def test_an_inflated_landing_file_changes_nothing(storage: LocalStorage, settings: Settings) -> None:
    """10 rows whose footer claims ids up to 9,999,999, dropped into landing/: not the lake, never read."""
    publish_landing(storage, 0, 1_000, 8)
    inflated = write_file(
        storage, lake_table(8_000, 10), layout.LANDING, "landing", badge_metadata(8_000, 9_999_999, 10)
    )
    clock = ManualClock()
    compactor = Compactor(storage, settings, clock=clock)
    metrics = compactor.run_cycle().compactions[0]
    assert metrics.files_in == 8 and metrics.rows == 8_000
    snap = read_snapshot(storage)
    assert snap.committed_event_id == 7_999 and snap.max_event_id == 7_999
    clock.advance(settings.compaction_grace_seconds + 1)
    compactor.run_cycle()
    assert not storage.exists(inflated.key)
    assert disk_keys(storage) == table_keys(storage)
    assert_exactly_once(storage, range(8_000))


def test_a_compaction_whose_input_was_removed_concurrently_commits_nothing(
    storage: LocalStorage, settings: Settings
) -> None:
    files = publish_landing(storage, 0, 1_000, 8)
    other = LakeTable.open(storage)
    replacement: list[str] = []

    def meanwhile(step: str, _detail: str) -> None:
        if step == STEP_PUBLISHED and not replacement:
            # another writer (a rogue second compactor) rewrites the first input and commits first
            copy = write_file(storage, pq.read_table(storage.path(files[0].key)), layout.LANDING, "landing")
            stats = FileStats.of_footer(pq.read_metadata(storage.path(copy.key)))
            other.replace([f for f in other.snapshot().files if f.key == files[0].key], [(copy, stats)])
            replacement.append(copy.key)

    metrics = Compactor(storage, settings, hook=meanwhile).compact()
    assert metrics is not None and metrics.stale
    assert metrics.outputs == [] and metrics.version is None
    assert storage.list_tree(layout.COMPACTED) == []  # its outputs, never committed, are gone at once
    assert table_keys(storage) == replacement + [f.key for f in files[1:]]
    assert_exactly_once(storage, range(8_000))


def test_a_failed_commit_leaves_the_table_as_it_was(
    storage: LocalStorage, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = publish_landing(storage, 0, 1_000, 8)
    version = read_snapshot(storage).version
    clock = ManualClock()
    compactor = Compactor(storage, settings, clock=clock)

    def refused(*_args: object, **_kwargs: object) -> Iterator[None]:
        raise LakeError("injected: the log could not be written")

    with monkeypatch.context() as patch:
        patch.setattr(LakeTable, "commit", refused)
        with pytest.raises(LakeError, match="injected"):
            compactor.compact()
    snap = read_snapshot(storage)
    assert snap.version == version and snap.keys == [f.key for f in files]
    [orphan] = [f.key for f in storage.list_tree(layout.COMPACTED)]  # published, never committed
    report = compactor.run_cycle()  # tried again next cycle
    assert len(report.compactions) == 1 and orphan not in table_keys(storage)
    clock.advance(settings.compaction_grace_seconds + 1)
    compactor.run_cycle()
    compactor.run_cycle()
    assert not storage.exists(orphan) and disk_keys(storage) == table_keys(storage)
    assert_exactly_once(storage, range(8_000))
