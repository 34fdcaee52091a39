"""The buffered writer: thresholds, atomic publish, table commits, refused records, failed and fenced flushes."""

from __future__ import annotations

import errno
import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lake import layout
from lake import storage as lake_storage
from lake.audit import verify
from lake.filestats import FileStats
from lake.storage import LocalStorage
from lake.table import LakeTable, QuarantineTable, SnapshotReader, quarantine_files, read_snapshot
from lake.writer import BufferedWriter, FlushThresholds, WriterClosedError
from testkit.fake_source import as_refused
from testkit.ids import file_ids, live_ids
from testkit.processes import ROOT, wait_until
from testkit.records import TEST_IDENTITY, make_records
from utils import fsio
from utils.errors import CommitError, FencedError, LakeError
from utils.records import LAKE_SCHEMA
from utils.retry import Backoff


def make_writer(storage: LocalStorage, thresholds: FlushThresholds, **options: Any) -> BufferedWriter:
    """A writer on the lake's table (created for TEST_IDENTITY), from the position the table records."""
    table = LakeTable.open_or_create(storage, TEST_IDENTITY)
    return BufferedWriter(storage, thresholds, table=table, position=table.committed_event_id(), **options)


def landing_ids(storage: LocalStorage) -> np.ndarray:
    """The ids the table holds (committed), in file order."""
    return live_ids(storage)


def quarantine_ids(storage: LocalStorage) -> np.ndarray:
    """The ids the quarantine table holds."""
    return file_ids(storage.path(f.key) for f in quarantine_files(storage))


def test_size_threshold_flushes_whole_files_in_event_order(storage: LocalStorage) -> None:
    with make_writer(storage, FlushThresholds(records=100, interval_seconds=60)) as writer:
        for start in range(0, 250, 50):
            writer.add(make_records(start, 50))
        wait_until(lambda: writer.stats().files_written == 2, 5, what="two size-triggered flushes")
        assert writer.stats().buffered == 50  # below the threshold, and the interval is far away
    files = storage.list_tree(layout.LANDING)
    assert len(files) == 3  # the third is close()'s flush
    snapshot = read_snapshot(storage)
    assert snapshot.keys == [f.key for f in files]  # each published file committed, once
    assert snapshot.committed_event_id == 249 and snapshot.version == 3  # created at 0, then one commit per flush
    assert [(f.event_id_min, f.event_id_max, f.row_count) for f in snapshot.files] == [
        (0, 99, 100),
        (100, 199, 100),
        (200, 249, 50),
    ]
    ids = landing_ids(storage)
    assert ids.tolist() == list(range(250))
    first = pq.ParquetFile(storage.path(files[0].key))
    assert first.schema_arrow.remove_metadata() == LAKE_SCHEMA
    assert first.metadata.row_group(0).column(0).compression == "SNAPPY"
    assert "DELTA_BINARY_PACKED" in first.metadata.row_group(0).column(0).encodings  # event_id
    meta = storage.read_metadata(files[0].key)
    assert (meta[layout.META_EVENT_ID_MIN], meta[layout.META_EVENT_ID_MAX], meta[layout.META_ROW_COUNT]) == (
        "0",
        "99",
        "100",
    )
    table = pq.read_table(storage.path(files[0].key))
    sent = make_records(0, 100)
    seconds = (sent["badge_out_timestamp"].to_numpy() - sent["badge_in_timestamp"].to_numpy()) // np.timedelta64(1, "s")
    assert table["duration_s"].to_pylist() == seconds.tolist()
    assert 0 in seconds and seconds.max() > 3600  # denied attempts and long sessions both present


def test_time_based_flush_without_new_data(storage: LocalStorage) -> None:
    with make_writer(storage, FlushThresholds(records=10_000, interval_seconds=0.3)) as writer:
        started = time.monotonic()
        writer.add(make_records(0, 10))
        wait_until(lambda: writer.stats().records_committed == 10, 3, interval=0.01, what="the time-based flush")
        elapsed = time.monotonic() - started
        assert 0.25 <= elapsed < 1.5
        assert len(storage.list_tree(layout.LANDING)) == 1 and writer.stats().buffered == 0
        # The clock restarts with the next record, not with the last flush.
        time.sleep(0.4)
        writer.add(make_records(10, 5))
        time.sleep(0.1)
        assert len(storage.list_tree(layout.LANDING)) == 1
        wait_until(lambda: len(storage.list_tree(layout.LANDING)) == 2, 3, interval=0.01, what="a second flush")
    assert landing_ids(storage).tolist() == list(range(15))


def live_records(start: int, count: int, event_age_s: float) -> pa.Table:
    """Records whose event time (badge_out) lies ``event_age_s`` seconds in the past (negative: future)."""
    table = make_records(start, count)
    now_us = int((time.time() - event_age_s) * 1e6)
    out = pa.array([now_us] * count, pa.timestamp("us"))
    return table.set_column(5, "badge_out_timestamp", out).set_column(4, "badge_in_timestamp", out)


def test_live_records_are_due_after_their_event_time_not_only_their_arrival(storage: LocalStorage) -> None:
    with make_writer(storage, FlushThresholds(records=10_000, interval_seconds=3)) as writer:
        started = time.monotonic()
        writer.add(live_records(0, 10, event_age_s=2.8), live=True)  # waited 2.8 s for the poll already
        wait_until(lambda: storage.list_tree(layout.LANDING), 3, interval=0.01, what="the event-time flush")
        assert time.monotonic() - started < 1.0
        # Not live (a full batch while catching up): only the arrival counts, whatever the event time.
        writer.add(live_records(10, 10, event_age_s=3600))
        time.sleep(0.5)
        assert len(storage.list_tree(layout.LANDING)) == 1
    assert landing_ids(storage).tolist() == list(range(20))


def test_live_records_from_the_future_still_flush_by_arrival(storage: LocalStorage) -> None:
    with make_writer(storage, FlushThresholds(records=10_000, interval_seconds=0.3)) as writer:
        writer.add(live_records(0, 10, event_age_s=-3600), live=True)  # a clock ahead of ours
        wait_until(lambda: storage.list_tree(layout.LANDING), 2, interval=0.01, what="the arrival-time flush")


def test_leaving_by_an_exception_does_not_flush(storage: LocalStorage) -> None:
    class Boom(Exception):
        pass

    with pytest.raises(Boom), make_writer(storage, FlushThresholds(100, 60)) as writer:
        writer.add(make_records(0, 10))
        raise Boom
    assert storage.list_tree(layout.LANDING) == []
    assert read_snapshot(storage).is_empty and read_snapshot(storage).committed_event_id is None
    with pytest.raises(WriterClosedError):
        writer.add(make_records(10, 1))


def test_ids_must_increase(storage: LocalStorage) -> None:
    with make_writer(storage, FlushThresholds(100, 60)) as writer:
        writer.add(make_records(10, 10))
        with pytest.raises(ValueError, match="backwards"):
            writer.add(make_records(5, 3))
        with pytest.raises(ValueError, match="strictly increase"):
            writer.add(pa.concat_tables([make_records(30, 2), make_records(30, 2)]))
    assert landing_ids(storage).tolist() == list(range(10, 20))


def test_records_at_or_below_the_committed_position_are_refused(storage: LocalStorage) -> None:
    with make_writer(storage, FlushThresholds(100, 60)) as writer:
        writer.add(make_records(0, 20))
    with make_writer(storage, FlushThresholds(100, 60)) as writer:  # resumes at position 19
        with pytest.raises(ValueError, match="backwards"):
            writer.add(make_records(15, 10))
        writer.add(make_records(20, 5))
    assert landing_ids(storage).tolist() == list(range(25))


def test_reader_hammering_landing_never_opens_a_partial_file(storage: LocalStorage) -> None:
    errors: list[str] = []
    seen: set[str] = set()
    done = threading.Event()
    snapshots = SnapshotReader(storage)

    def reader() -> None:
        while not done.is_set():
            for df in snapshots.snapshot().files:  # what the table says is whole, with its statistics
                rows = pq.read_metadata(storage.path(df.key)).num_rows
                if rows != df.row_count:
                    errors.append(f"{df.key}: {rows} rows, the log says {df.row_count}")
            for info in storage.list_tree(layout.LANDING):
                try:
                    table = pq.read_table(storage.path(info.key))
                    meta = storage.read_metadata(info.key)
                except Exception as exc:  # any failure to read a listed file is the bug we look for
                    errors.append(f"{info.key}: {exc!r}")
                    continue
                if table.num_rows != int(meta[layout.META_ROW_COUNT]):
                    errors.append(f"{info.key}: {table.num_rows} rows, metadata says {meta[layout.META_ROW_COUNT]}")
                seen.add(info.key)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        with make_writer(storage, FlushThresholds(records=40_000, interval_seconds=60)) as writer:
            for start in range(0, 600_000, 40_000):
                writer.add(make_records(start, 40_000))
    finally:
        done.set()
        thread.join()
    assert errors == []
    assert len(seen) >= 5  # the reader really raced the writer
    assert len(landing_ids(storage)) == 600_000 == read_snapshot(storage).rows


class FrozenClock(datetime):
    """Every file name gets the same timestamp: uniqueness must not rest on the clock."""

    @classmethod
    def now(cls, tz: tzinfo | None = None) -> FrozenClock:
        return cls(2025, 1, 1, tzinfo=UTC)


def test_unique_names_under_rapid_flushes_in_one_instant(
    storage: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(layout, "datetime", FrozenClock)
    with make_writer(storage, FlushThresholds(records=1, interval_seconds=60)) as writer:
        for i in range(300):
            writer.add(make_records(i, 1))
    names = [f.name for f in storage.list_tree(layout.LANDING)]
    assert len(names) == 300 == len(set(names))
    assert len({n.split("-")[1] for n in names}) == 1  # all in the same microsecond, as intended
    assert sorted(landing_ids(storage).tolist()) == list(range(300))


def test_unique_names_across_two_processes(storage: LocalStorage) -> None:
    # Publishing only: two writers committing to one table would fence each other (see below).
    script = textwrap.dedent(
        """
        import sys
        from datetime import UTC, datetime, tzinfo
        from lake import layout
        from lake.storage import LocalStorage
        from lake.writer import write_landing
        from testkit.records import lake_table

        class Frozen(datetime):
            @classmethod
            def now(cls, tz=None):
                return cls(2025, 1, 1, tzinfo=UTC)

        layout.datetime = Frozen
        offset = int(sys.argv[2])
        storage = LocalStorage(sys.argv[1])
        for i in range(150):
            write_landing(storage, lake_table(offset + i, 1))
        """
    )
    LakeTable.open_or_create(storage, TEST_IDENTITY)
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(storage.root), str(offset)], cwd=ROOT)
        for offset in (0, 1000)
    ]
    assert [p.wait(60) for p in procs] == [0, 0]
    names = [f.name for f in storage.list_tree(layout.LANDING)]
    assert len(names) == 300 == len(set(names))
    ids = file_ids(storage.path(f.key) for f in storage.list_tree(layout.LANDING))
    assert sorted(ids.tolist()) == list(range(150)) + list(range(1000, 1150))
    assert read_snapshot(storage).is_empty  # published, never committed: not the lake


def test_publishing_the_next_flush_overlaps_the_commit_before_it_and_commits_stay_in_order(
    storage: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[tuple[str, int, float]] = []  # (what, last event id, instant)
    real_publish = LocalStorage.publish
    real_append = LakeTable.append_files

    def spy_publish(self: LocalStorage, tmp: Path, zone: str, name: str) -> lake_storage.FileInfo:
        info = real_publish(self, tmp, zone, name)
        events.append(("published", int(name.split("-")[3]), time.monotonic()))
        return info

    def slow_append(self: LakeTable, files: list[tuple[lake_storage.FileInfo, FileStats]], **position: Any) -> None:
        events.append(("commit starts", position["through_event_id"], time.monotonic()))
        time.sleep(0.2)  # a slow log: the next flush's file is written meanwhile
        real_append(self, files, **position)
        events.append(("committed", position["through_event_id"], time.monotonic()))

    monkeypatch.setattr(LocalStorage, "publish", spy_publish)
    monkeypatch.setattr(LakeTable, "append_files", slow_append)
    with make_writer(storage, FlushThresholds(records=100, interval_seconds=60)) as writer:
        for start in range(0, 500, 100):
            writer.add(make_records(start, 100))
    committed = [last for what, last, _ in events if what == "committed"]
    assert committed == [99, 199, 299, 399, 499]  # one commit per flush, in event-id order
    at = {(what, last): instant for what, last, instant in events}
    overlapped = [last for last in committed[1:] if at[("published", last)] < at[("committed", last - 100)]]
    assert overlapped, "each flush's file was published only after the commit before it: no overlap"
    assert landing_ids(storage).tolist() == list(range(500))
    assert verify(storage, grace_seconds=30).ok


def test_refused_records_commit_before_the_landing_file_that_confirms_them(
    storage: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps: list[str] = []
    real_publish = LocalStorage.publish
    real_quarantine = QuarantineTable.append
    real_commit = LakeTable.append_files
    real_advance = LakeTable.advance

    def spy(self: LocalStorage, tmp: Path, zone: str, name: str) -> lake_storage.FileInfo:
        steps.append(f"publish {zone.split('/', maxsplit=1)[0]}")  # landing/date=...: the zone
        return real_publish(self, tmp, zone, name)

    def spy_quarantine(self: QuarantineTable, info: lake_storage.FileInfo, stats: FileStats) -> None:
        real_quarantine(self, info, stats)
        steps.append(f"quarantine {info.zone}")

    def spy_commit(
        self: LakeTable, files: list[tuple[lake_storage.FileInfo, FileStats]], **position: int | None
    ) -> None:
        real_commit(self, files, **position)  # type: ignore[arg-type]
        for info, _ in files:
            steps.append(f"commit {info.zone} through {position['through_event_id']}")

    def spy_advance(self: LakeTable, **position: int | None) -> None:
        real_advance(self, **position)  # type: ignore[arg-type]
        steps.append(f"advance through {position['through_event_id']}")

    monkeypatch.setattr(LocalStorage, "publish", spy)
    monkeypatch.setattr(QuarantineTable, "append", spy_quarantine)
    monkeypatch.setattr(LakeTable, "append_files", spy_commit)
    monkeypatch.setattr(LakeTable, "advance", spy_advance)
    records = make_records(0, 20)
    bad = [i in (3, 7, 18, 19) for i in range(20)]
    mask = pa.array(bad)
    valid = records.filter(pa.compute.invert(mask))
    refused = as_refused(records.filter(mask), "badge_out before badge_in")
    with make_writer(storage, FlushThresholds(records=1000, interval_seconds=60)) as writer:
        writer.add(valid, refused)
        assert writer.flush(5)
        # 18 and 19 come after the last valid record (17): a flush of their own, which moves only the position.
        assert quarantine_ids(storage).tolist() == [3, 7, 18, 19]
        assert writer.stats().buffered == 0
        # Commits in event-id order, each quarantine entry before the commit that moves the position past it;
        # files are published ahead (the tail's may be published while the first flush commits).
        commits = [step for step in steps if not step.startswith("publish")]
        assert commits == [
            "quarantine quarantine",
            "commit landing through 17",
            "quarantine quarantine",
            "advance through 19",
        ]
        assert steps[:2] == ["publish quarantine", "publish landing"]  # the first flush's files, before any commit
        second_publish = len(steps) - 1 - steps[::-1].index("publish quarantine")
        assert steps.count("publish quarantine") == 2 and second_publish < len(steps) - 2  # before its own commit
        snapshot = read_snapshot(storage)
        assert snapshot.committed_event_id == 19 and len(snapshot.files) == 1
        q_key = next(f.key for f in quarantine_files(storage) if f.event_id_min == 3)
        writer.add(make_records(20, 5))
    assert len(steps) == 9 and steps[-2:] == ["publish landing", "commit landing through 24"]
    assert quarantine_ids(storage).tolist() == [3, 7, 18, 19]
    assert landing_ids(storage).tolist() == [i for i in range(25) if i not in (3, 7, 18, 19)]
    table = pq.read_table(storage.path(q_key))
    assert set(table["reason"].to_pylist()) == {"badge_out before badge_in"}
    meta = storage.read_metadata(q_key)
    assert (meta[layout.META_EVENT_ID_MIN], meta[layout.META_EVENT_ID_MAX]) == ("3", "7")
    assert "2 refused record(s)" in meta[layout.META_REASON]


class DiskFull:
    """Make the next ``times`` Parquet writes fail half-way with ENOSPC, after writing some bytes.

    Patched at ``pyarrow.parquet.ParquetWriter``, which every data file of the lake goes through.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch, times: int, only_kind: str | None = None) -> None:
        self.left = times
        self.only_kind = only_kind
        self.failures = 0
        real = pq.ParquetWriter

        def writer(path: str | Path, schema: pa.Schema, **options: object) -> pq.ParquetWriter:
            is_target = self.only_kind is None or Path(path).name.startswith(self.only_kind)
            if self.left > 0 and is_target:
                self.left -= 1
                self.failures += 1
                Path(path).write_bytes(b"PAR1 half a file")
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(path, schema, **options)

        monkeypatch.setattr(pq, "ParquetWriter", writer)


def test_disk_full_during_a_flush_leaves_nothing_partial_and_retries(
    storage: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = DiskFull(monkeypatch, times=3)
    writer = make_writer(storage, FlushThresholds(records=100, interval_seconds=60), retry=Backoff(0.05, 2.0, 5.0))
    with writer:
        writer.add(make_records(0, 100))
        wait_until(lambda: writer.stats().failed_attempts >= 1, 5, interval=0.005, what="a failed flush")
        # During the failure: nothing in landing/, no partial file in temp/, records still held.
        assert storage.list_tree(layout.LANDING) == []
        assert storage.list_all(layout.TEMP) == []
        assert writer.stats().buffered == 100
        writer.add(make_records(100, 50))
    assert disk.failures == 3 and writer.stats().failed_attempts == 3
    assert landing_ids(storage).tolist() == list(range(150))
    assert storage.list_all(layout.TEMP) == []


def test_a_retry_resumes_at_the_failed_step_without_writing_the_quarantine_file_twice(
    storage: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    DiskFull(monkeypatch, times=2, only_kind="landing")
    records = make_records(0, 10)
    mask = pa.array([i == 4 for i in range(10)])
    with make_writer(storage, FlushThresholds(10, 60), retry=Backoff(0.05, 2.0, 5.0)) as writer:
        writer.add(records.filter(pa.compute.invert(mask)), as_refused(records.filter(mask), "bad"))
    assert len(storage.list_files(layout.QUARANTINE)) == 1
    assert quarantine_ids(storage).tolist() == [4]
    assert landing_ids(storage).tolist() == [0, 1, 2, 3, 5, 6, 7, 8, 9]


def test_an_error_after_the_commit_point_is_not_retried_into_a_duplicate(
    storage: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = fsio.fsync_dir
    calls = {"n": 0}

    def flaky_fsync_dir(path: Path) -> None:
        if Path(path).parent.name == layout.LANDING and calls["n"] == 0:  # landing/date=...: after the link
            calls["n"] += 1
            raise OSError(errno.EIO, "Input/output error")
        real(path)

    monkeypatch.setattr(fsio, "fsync_dir", flaky_fsync_dir)
    with make_writer(storage, FlushThresholds(10, 60), retry=Backoff(0.05, 2.0, 5.0)) as writer:
        writer.add(make_records(0, 10))
        writer.add(make_records(10, 10))
    assert calls["n"] == 1
    assert landing_ids(storage).tolist() == list(range(20))
    assert len(storage.list_tree(layout.LANDING)) == 2  # the retry committed the file it had published: no orphan
    assert read_snapshot(storage).rows == 20


@pytest.mark.parametrize("landed", [False, True], ids=["commit-refused", "commit-landed-then-error"])
def test_a_failed_commit_is_retried_with_the_file_already_published(
    storage: LocalStorage, monkeypatch: pytest.MonkeyPatch, landed: bool
) -> None:
    real = LakeTable.commit
    calls = {"n": 0}

    def flaky_commit(self: LakeTable, *args: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            if landed:
                real(self, *args, **kwargs)  # in the log, but the caller hears of an error
            raise LakeError("injected: the log's storage answered with an error")
        real(self, *args, **kwargs)

    monkeypatch.setattr(LakeTable, "commit", flaky_commit)
    with make_writer(storage, FlushThresholds(10, 60), retry=Backoff(0.05, 2.0, 5.0)) as writer:
        writer.add(make_records(0, 10))
        writer.add(make_records(10, 10))
    assert writer.stats().failed_attempts == 1 and writer.stats().files_written == 2
    assert len(storage.list_tree(layout.LANDING)) == 2  # no second copy of the first flush
    snapshot = read_snapshot(storage)
    assert snapshot.keys == [f.key for f in storage.list_tree(layout.LANDING)]
    assert snapshot.committed_event_id == 19
    assert landing_ids(storage).tolist() == list(range(20))


def test_a_fenced_writer_stops_at_once_and_never_retries(storage: LocalStorage) -> None:
    thresholds = FlushThresholds(10, 60)
    first = make_writer(storage, thresholds).start()
    zombie = make_writer(storage, thresholds, retry=Backoff(0.01, 2.0, 0.05)).start()  # also at position None
    first.add(make_records(0, 10))
    assert first.flush(5)
    zombie.add(make_records(0, 10))  # the same records, fetched again by a pipeline that ignored the lock
    wait_until(lambda: zombie.fatal_error is not None, 5, what="the zombie's flush to be refused")
    assert isinstance(zombie.fatal_error, FencedError)
    assert zombie.stats().failed_attempts == 0 and zombie.stats().records_committed == 0
    with pytest.raises(WriterClosedError):
        zombie.add(make_records(10, 10))
    with pytest.raises(FencedError):
        zombie.close()
    first.add(make_records(10, 10))
    first.close()  # the other writer goes on
    snapshot = read_snapshot(storage)
    assert snapshot.committed_event_id == 19 and len(snapshot.files) == 2
    assert landing_ids(storage).tolist() == list(range(20))
    assert len(storage.list_tree(layout.LANDING)) == 3  # the zombie's file: published, never in the table


def test_back_pressure_while_flushes_fail(storage: LocalStorage, monkeypatch: pytest.MonkeyPatch) -> None:
    disk = DiskFull(monkeypatch, times=10_000)
    writer = make_writer(storage, FlushThresholds(10, 60), retry=Backoff(0.02, 2.0, 0.05))
    with writer:
        writer.add(make_records(0, 10))  # cut into a failing flush
        wait_until(lambda: writer.stats().failed_attempts >= 1, 5, what="a failed flush")
        writer.add(make_records(10, 10))  # buffered behind it: the buffer is now full
        blocked = threading.Thread(target=writer.add, args=(make_records(20, 10),))
        blocked.start()
        time.sleep(0.3)
        assert blocked.is_alive(), "add() must wait while a full buffer cannot be written"
        disk.left = 0  # space is back
        blocked.join(5)
        assert not blocked.is_alive()
    assert landing_ids(storage).tolist() == list(range(30))


def test_close_gives_up_when_the_disk_stays_full(storage: LocalStorage, monkeypatch: pytest.MonkeyPatch) -> None:
    DiskFull(monkeypatch, times=10_000)
    writer = make_writer(storage, FlushThresholds(100, 60), retry=Backoff(0.02, 2.0, 0.05)).start()
    writer.add(make_records(0, 50))
    with pytest.raises(CommitError, match="50 buffered records were not committed"):
        writer.close(timeout=0.3)
    assert storage.list_tree(layout.LANDING) == [] and storage.list_all(layout.TEMP) == []


def refused_batch(start: int, count: int) -> tuple[pa.Table, pa.Table]:
    """An all-refused batch of ``count`` events from ``start``: no valid record, every one refused."""
    records = make_records(start, count)
    return records.slice(0, 0), as_refused(records, "unknown dept")


def test_a_refused_only_source_is_flushed_on_size_with_bounded_memory(storage: LocalStorage) -> None:
    # Reproduction (issue 12): refused records never counted toward the flush, so with no valid record
    # the buffer grew without bound and nothing was committed.
    records, batch = 100, 25
    peak = 0
    with make_writer(storage, FlushThresholds(records=records, interval_seconds=60)) as writer:
        for start in range(0, 2_000, batch):
            writer.add(*refused_batch(start, batch))
            peak = max(peak, writer.stats().buffered)
        wait_until(lambda: (writer.stats().next_event_id or 0) >= 1_900, 5, what="size-triggered position-only flushes")
    # The buffer plus the two flushes in progress (one being written, one being committed), never the whole stream.
    assert peak <= 3 * records + batch
    snapshot = read_snapshot(storage)
    assert snapshot.committed_event_id == 1_999 and snapshot.files == ()  # the position moved, no landing file
    assert writer.stats().files_written == 0 and writer.stats().quarantine_files >= 10
    assert quarantine_ids(storage).tolist() == list(range(2_000))
    assert verify(storage, grace_seconds=30).ok


def test_refused_records_alone_are_flushed_on_time(storage: LocalStorage) -> None:
    with make_writer(storage, FlushThresholds(records=10_000, interval_seconds=0.3)) as writer:
        writer.add(make_records(0, 5))
        writer.add(*refused_batch(5, 5))  # a refused tail after the last valid record
        wait_until(lambda: read_snapshot(storage).committed_event_id == 9, 3, interval=0.01, what="the timed flushes")
        # The commit is visible in the log an instant before the flusher thread books it in its stats.
        wait_until(lambda: writer.stats().buffered == 0, 3, interval=0.01, what="the writer to book the commit")
        assert writer.stats().refused_committed == 5
    assert landing_ids(storage).tolist() == list(range(5)) and quarantine_ids(storage).tolist() == list(range(5, 10))
    assert verify(storage, grace_seconds=30).ok


def test_back_pressure_counts_refused_records(storage: LocalStorage, monkeypatch: pytest.MonkeyPatch) -> None:
    disk = DiskFull(monkeypatch, times=10_000, only_kind="quarantine")
    writer = make_writer(storage, FlushThresholds(10, 60), retry=Backoff(0.02, 2.0, 0.05))
    with writer:
        writer.add(*refused_batch(0, 10))  # cut into a failing flush
        wait_until(lambda: writer.stats().failed_attempts >= 1, 5, what="a failed flush")
        writer.add(*refused_batch(10, 10))  # buffered behind it: the buffer is now full
        blocked = threading.Thread(target=writer.add, args=refused_batch(20, 10))
        blocked.start()
        time.sleep(0.3)
        assert blocked.is_alive(), "add() must wait while a full buffer of refused records cannot be written"
        disk.left = 0
        blocked.join(5)
        assert not blocked.is_alive()
    assert quarantine_ids(storage).tolist() == list(range(30))
    assert read_snapshot(storage).committed_event_id == 29


def test_a_position_only_commit_is_fenced_and_idempotent(
    storage: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = LakeTable.open_or_create(storage, TEST_IDENTITY)
    real = LakeTable.commit
    calls = {"n": 0}

    def landed_then_error(self: LakeTable, *args: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        real(self, *args, **kwargs)
        if calls["n"] == 1:
            raise LakeError("injected: an error after the commit landed")

    monkeypatch.setattr(LakeTable, "commit", landed_then_error)
    with pytest.raises(LakeError):
        table.advance(through_event_id=9, expected=None)
    table.advance(through_event_id=9, expected=None)  # the retry sees it landed: no second commit
    assert calls["n"] == 1 and table.committed_event_id() == 9
    with pytest.raises(FencedError):
        LakeTable.open(storage).advance(through_event_id=20, expected=5)  # a writer with a stale view
    assert read_snapshot(storage).committed_event_id == 9 and read_snapshot(storage).version == 1
