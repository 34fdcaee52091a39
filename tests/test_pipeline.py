"""The pipeline loop against an in-memory source: resume from the table, time flush, outages, refused records,
crashes between the protocol's steps, the stream's identity, limits, signals."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from ingestion.fetcher import Fetcher
from ingestion.placement import POSITION_NOTE, place_records
from ingestion.progress import Progress, freshness_lag
from ingestion.resume import NamedFile, identity_of, recover
from lake import layout
from lake.identity import StreamIdentity
from lake.lock import LakeLock
from lake.parquet import write_file
from lake.quarantine import commit_refused, count_quarantine
from lake.storage import LocalStorage
from lake.table import LakeTable, quarantine_files, read_snapshot
from lake.writer import BufferedWriter, FlushThresholds
from processes.pipeline import RunOptions, run
from testkit import ids as lake_ids
from testkit.fake_source import FakeResult, FakeSource, as_refused
from testkit.landing import publish_landing
from testkit.processes import make_settings, wait_until
from testkit.records import TEST_IDENTITY, lake_table, make_records
from utils.config import Settings
from utils.errors import (
    LakeLockedError,
    PermanentSourceError,
    StreamMismatchError,
    UnmigratedLakeError,
)
from utils.records import QUARANTINE_SCHEMA


def live_ids(storage: LocalStorage) -> list[int]:
    """The ids the events table holds, sorted (duplicates kept)."""
    return sorted(lake_ids.live_ids(storage).tolist())


def quarantined_ids(storage: LocalStorage) -> list[int]:
    """The ids the quarantine table holds, sorted (duplicates kept)."""
    return sorted(lake_ids.file_ids(storage.path(f.key) for f in quarantine_files(storage)).tolist())


def assert_every_id_once(storage: LocalStorage) -> int:
    """Every id up to the committed position is in the events table or the quarantine table, once; returns it."""
    position = read_snapshot(storage).committed_event_id
    assert position is not None
    assert sorted(live_ids(storage) + quarantined_ids(storage)) == list(range(position + 1))
    return position


def committed_rows(storage: LocalStorage) -> int:
    return read_snapshot(storage).rows


def start_in_thread(
    settings: Settings, source: FakeSource, options: RunOptions
) -> tuple[threading.Event, Callable[[], object]]:
    """Run the pipeline in a thread; returns its stop event and a function that stops it and gives the result."""
    stop = threading.Event()
    result: dict[str, object] = {}

    def target() -> None:
        try:
            result["status"] = run(settings, options, source=source, stop=stop)
        except BaseException as exc:
            result["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()

    def finish() -> object:
        stop.set()
        thread.join(30)
        assert not thread.is_alive()
        return result.get("error", result.get("status"))

    return stop, finish


NO_CHILD = RunOptions(compaction=False)


# -- recovery -----------------------------------------------------------------------------------------
class Crash(BaseException):
    """Stands for kill -9: nothing after it runs."""


def test_recover_reads_the_cursor_from_the_log_and_cleans_only_its_own_orphans(storage: LocalStorage) -> None:
    committed = publish_landing(storage, 0, 65, 2)  # events 0..129, position 129
    confirmed = commit_refused(storage, as_refused(make_records(7, 1), "bad"))  # below the cursor: kept
    orphan_q = commit_refused(storage, as_refused(make_records(135, 2), "bad"))  # beyond: its flush never committed
    orphan = publish_landing(storage, 130, 20, 1, commit=False)[0]  # published, never committed
    older = publish_landing(storage, 60, 20, 1, commit=False)[0]  # below the cursor: the clean-up's, after grace
    foreign = storage.path(f"{layout.LANDING}/exported.parquet")
    pq.write_table(lake_table(500, 5), foreign)
    alive = publish_landing(storage, 150, 20, 1, commit=False)[0]  # named by a live process (pid 1): not ours
    named = NamedFile.parse(alive.name)
    assert named is not None
    by_init = alive.name.replace(f"-{named.pid}-", "-1-")
    storage.path(alive.key).rename(storage.path(f"{layout.LANDING}/{by_init}"))
    for name in ("landing-x.parquet.1.tmp", "quarantine-y.parquet.2.tmp", "compacted-z.parquet.3.tmp"):
        (storage.root / layout.TEMP / name).write_bytes(b"half")

    resume = recover(storage, TEST_IDENTITY)

    assert (resume.cursor, resume.position) == (130, 129)
    assert sorted(resume.removed_temp) == ["temp/landing-x.parquet.1.tmp", "temp/quarantine-y.parquet.2.tmp"]
    assert [f.name for f in storage.list_all(layout.TEMP)] == ["compacted-z.parquet.3.tmp"]  # the compactor's
    assert resume.removed_landing == (orphan.key,) and not storage.exists(orphan.key)
    assert storage.exists(older.key) and foreign.exists() and storage.exists(f"{layout.LANDING}/{by_init}")
    assert resume.removed_quarantine == (orphan_q.key,)
    assert [f.key for f in quarantine_files(storage)] == [confirmed.key]
    assert read_snapshot(storage).keys == [f.key for f in committed]  # the table itself unchanged
    again = recover(storage, TEST_IDENTITY)  # idempotent
    assert (again.cursor, again.removed_landing, again.removed_quarantine) == (130, (), ())


def test_empty_lake_starts_at_zero_with_a_table_of_the_source_stream(storage: LocalStorage) -> None:
    resume = recover(storage, TEST_IDENTITY)
    assert (resume.cursor, resume.position) == (0, None)
    snapshot = read_snapshot(storage)
    assert snapshot.version == 0 and snapshot.identity == TEST_IDENTITY and snapshot.is_empty


def test_the_pipeline_resumes_at_the_committed_position(lake_root: Path, storage: LocalStorage) -> None:
    publish_landing(storage, 0, 120, 1)
    source = FakeSource()
    settings = make_settings(lake_root, BATCH_SIZE=40, BUFFER_RECORDS=40)
    assert run(settings, RunOptions(max_records=100, compaction=False), source=source) == 0
    assert source.calls[0] == (120, 40)
    assert live_ids(storage) == list(range(220))
    assert read_snapshot(storage).committed_event_id == 219


def test_an_inflated_landing_file_does_not_move_the_resume_point(lake_root: Path, storage: LocalStorage) -> None:
    """Regression: a 10-row file whose footer claims ids up to 9,999,999 once made a restart skip them all."""
    publish_landing(storage, 0, 100, 1)
    forged = write_file(
        storage,
        lake_table(100, 10),
        layout.LANDING,
        "landing",
        {layout.META_EVENT_ID_MAX: "9999999", layout.META_ROW_COUNT: "9999900"},
    )
    assert storage.read_metadata(forged.key)[layout.META_EVENT_ID_MAX] == "9999999"
    assert recover(storage, TEST_IDENTITY).cursor == 100
    source = FakeSource()
    settings = make_settings(lake_root, BATCH_SIZE=50, BUFFER_RECORDS=50)
    assert run(settings, RunOptions(max_records=50, compaction=False), source=source) == 0
    assert source.calls[0] == (100, 50)
    assert live_ids(storage) == list(range(150))  # every id once: the forged file's 10 rows are not the lake
    assert forged.key not in read_snapshot(storage).keys


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the crash is on purpose
def test_a_crash_between_publish_and_commit_leaves_an_orphan_no_reader_sees(
    lake_root: Path, storage: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = FakeSource()
    settings = make_settings(lake_root, BATCH_SIZE=50, BUFFER_RECORDS=50)
    assert run(settings, RunOptions(max_records=100, compaction=False), source=source) == 0

    def crash_before_commit(self: LakeTable, files: object, **position: int | None) -> None:
        raise Crash

    real = LakeTable.append_files
    monkeypatch.setattr(LakeTable, "append_files", crash_before_commit)
    table = LakeTable.open(storage)
    writer = BufferedWriter(storage, FlushThresholds(50, 60), table=table, position=99).start()
    batch = source.get_employee_badge_logs(100, 50)
    writer.add(batch.table, batch.invalid)
    wait_until(lambda: len(storage.list_tree(layout.LANDING)) == 3, 5, what="the crashed flush's landing file")
    orphan = [f for f in storage.list_tree(layout.LANDING) if NamedFile.parse(f.name).first == 100]  # type: ignore[union-attr]
    assert len(orphan) == 1
    time.sleep(0.1)
    monkeypatch.setattr(LakeTable, "append_files", real)
    # Invisible to every reader of the table: ours, delta-rs' own, and any engine reading the log.
    snapshot = read_snapshot(storage)
    assert orphan[0].key not in snapshot.keys and snapshot.rows == 100 and snapshot.committed_event_id == 99
    assert DeltaTable(str(lake_root)).to_pyarrow_table(columns=["event_id"]).num_rows == 100

    assert run(settings, RunOptions(max_records=100, compaction=False), source=source) == 0
    assert not storage.exists(orphan[0].key)  # removed at the next start
    assert live_ids(storage) == list(range(200))  # every event committed once
    assert len(storage.list_tree(layout.LANDING)) == 4


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the crash is on purpose
def test_a_crash_between_the_quarantine_commit_and_the_flush_commit_is_undone_on_restart(
    lake_root: Path, storage: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = FakeSource(refuse=lambda i: i % 10 == 3)
    settings = make_settings(lake_root, BATCH_SIZE=50, BUFFER_RECORDS=50)
    assert run(settings, RunOptions(max_records=100, compaction=False), source=source) == 0
    real = LakeTable.append_files

    def crash_on_commit(self: LakeTable, files: object, **position: int | None) -> None:
        raise Crash

    monkeypatch.setattr(LakeTable, "append_files", crash_on_commit)
    before = len(quarantine_files(storage))
    writer = BufferedWriter(storage, FlushThresholds(50, 60), table=LakeTable.open(storage), position=99).start()
    batch = source.get_employee_badge_logs(100, 50)
    writer.add(batch.table, batch.invalid)
    wait_until(lambda: len(quarantine_files(storage)) > before, 5, what="the crashed flush's quarantine entry")
    time.sleep(0.1)
    assert max(quarantined_ids(storage)) > 100  # the orphan entry of the crashed flush is in the quarantine table
    assert read_snapshot(storage).next_event_id == 100  # its landing file never committed
    assert len(storage.list_tree(layout.LANDING)) > len(read_snapshot(storage).files)  # published, an orphan
    monkeypatch.setattr(LakeTable, "append_files", real)

    assert run(settings, RunOptions(max_records=100, compaction=False), source=source) == 0
    refused = [i for i in range(200) if i % 10 == 3]
    assert quarantined_ids(storage) == refused  # no refused id twice
    assert live_ids(storage) == [i for i in range(200) if i not in refused]
    assert assert_every_id_once(storage) == 199


# -- the stream -----------------------------------------------------------------------------------------
def test_a_source_of_another_stream_is_refused_before_anything_is_written(
    lake_root: Path, storage: LocalStorage
) -> None:
    publish_landing(storage, 0, 100, 1)
    before = read_snapshot(storage)
    other = StreamIdentity(seed=7, events_per_second=200.0, stream_start="2025-03-03T06:30:00Z")
    source = FakeSource(identity=other)
    with pytest.raises(StreamMismatchError) as info:
        run(make_settings(lake_root), RunOptions(compaction=False), source=source)
    message = str(info.value)
    assert "\n" not in message and str(TEST_IDENTITY) in message and str(other) in message
    assert "GENERATOR_SEED=0" in message  # what to do
    assert source.calls == []  # not one record fetched
    after = read_snapshot(storage)
    assert (after.version, after.keys, after.committed_event_id) == (before.version, before.keys, 99)
    assert len(storage.list_tree(layout.LANDING)) == 1


def test_a_lake_in_the_previous_layout_is_refused_before_asking_the_source(
    lake_root: Path, storage: LocalStorage
) -> None:
    write_file(storage, lake_table(0, 10), layout.LANDING, "landing")  # data files, no log
    source = FakeSource()
    with pytest.raises(UnmigratedLakeError, match="python -m lake migrate"):
        run(make_settings(lake_root), RunOptions(compaction=False), source=source)
    assert source.identity_calls == 0 and source.calls == []
    assert not (lake_root / "_delta_log").exists()


def test_identity_of_converts_what_the_source_reports() -> None:
    class Reported:
        seed = 3
        events_per_second = 200
        stream_start = "2025-03-03T00:00:00Z"
        schema_version = 1

    assert identity_of(Reported()) == StreamIdentity(3, 200.0, "2025-03-03T00:00:00Z", 1)


# -- limits and flushing --------------------------------------------------------------------------------
def test_max_records_asks_for_exactly_the_remainder_and_commits_no_more(lake_root: Path, storage: LocalStorage) -> None:
    source = FakeSource()
    settings = make_settings(lake_root, BATCH_SIZE=300, BUFFER_RECORDS=1000)
    assert run(settings, RunOptions(max_records=1000, compaction=False), source=source) == 0
    assert sorted(source.calls) == [(0, 300), (300, 300), (600, 300), (900, 100)]  # never more than N
    assert live_ids(storage) == list(range(1000))


def test_full_batches_are_prefetched_and_guesses_past_the_head_are_dropped(
    lake_root: Path, storage: LocalStorage
) -> None:
    active = {"now": 0, "max": 0}
    lock = threading.Lock()

    def slow(n_call: int) -> None:  # a service that takes a while to answer
        with lock:
            active["now"] += 1
            active["max"] = max(active["max"], active["now"])
        time.sleep(0.03)
        with lock:
            active["now"] -= 1

    source = FakeSource(available=2_050, on_call=slow)
    settings = make_settings(lake_root, BATCH_SIZE=100, BUFFER_RECORDS=500, POLL_INTERVAL_SECONDS=0.05)
    _, finish = start_in_thread(settings, source, NO_CHILD)
    try:
        wait_until(lambda: committed_rows(storage) == 2_050, 10, what="the first 2,050 records")
        assert active["max"] == 2  # a second request in flight while the first is handled, never more
        source.available = 2_420  # the stream grows: a guess sent past the old head must not leave a gap
        wait_until(lambda: committed_rows(storage) == 2_420, 10, what="the new records")
    finally:
        assert finish() == 0
    assert live_ids(storage) == list(range(2_420))


def test_a_guess_answered_after_the_stream_grew_is_not_taken(lake_root: Path, storage: LocalStorage) -> None:
    def grow_late(n_call: int) -> None:
        if source.calls[n_call - 1][0] == 300:  # the guess sent past the head (250)...
            time.sleep(0.2)
            source.available = 1_000  # ...is answered only after the stream grew: it would skip 250..299

    source = FakeSource(available=250, on_call=grow_late)
    settings = make_settings(lake_root, BATCH_SIZE=100, BUFFER_RECORDS=100, POLL_INTERVAL_SECONDS=0.3)
    _, finish = start_in_thread(settings, source, NO_CHILD)
    try:
        wait_until(lambda: committed_rows(storage) >= 1_000, 10, what="the grown stream")
    finally:
        assert finish() == 0
    assert live_ids(storage) == list(range(1_000))


def test_time_based_flush_while_the_source_has_nothing_new(lake_root: Path, storage: LocalStorage) -> None:
    source = FakeSource(available=25, live=True)
    settings = make_settings(lake_root, BUFFER_RECORDS=100_000, FLUSH_INTERVAL_SECONDS=0.3, POLL_INTERVAL_SECONDS=0.05)
    _, finish = start_in_thread(settings, source, NO_CHILD)
    try:
        wait_until(lambda: committed_rows(storage), 5, what="the time-based flush")
        assert live_ids(storage) == list(range(25))
        assert len(source.calls) >= 2  # it kept polling the empty source meanwhile
    finally:
        assert finish() == 0
    assert len(read_snapshot(storage).files) == 1 == len(storage.list_tree(layout.LANDING))


def test_time_based_flush_fires_while_the_source_is_down(lake_root: Path, storage: LocalStorage) -> None:
    def go_down(n_call: int) -> None:
        if n_call == 2:
            source.down.set()

    source = FakeSource(on_call=go_down)
    settings = make_settings(lake_root, BATCH_SIZE=30, BUFFER_RECORDS=100_000, FLUSH_INTERVAL_SECONDS=0.3)
    _, finish = start_in_thread(settings, source, NO_CHILD)
    try:
        wait_until(lambda: committed_rows(storage), 5, what="a flush during the outage")
        assert live_ids(storage) == list(range(30))
        calls = len(source.calls)
        wait_until(lambda: len(source.calls) >= calls + 2, 5, what="more attempts during the outage")
        source.down.clear()  # the source comes back: ingestion resumes where it stopped
        wait_until(lambda: committed_rows(storage) >= 300, 10, what="ingestion after the outage")
    finally:
        assert finish() == 0
    assert live_ids(storage) == list(range(len(live_ids(storage))))


def test_a_transient_error_never_stops_the_pipeline(
    lake_root: Path, storage: LocalStorage, caplog: pytest.LogCaptureFixture
) -> None:
    source = FakeSource()
    source.down.set()  # down from the start: even the question which stream it serves waits the outage out
    settings = make_settings(lake_root, RETRY_MAX_DELAY_SECONDS=0.05, BATCH_SIZE=50)
    _, finish = start_in_thread(settings, source, NO_CHILD)
    try:
        wait_until(lambda: source.identity_calls >= 5, 10, what="repeated attempts")
        assert not (lake_root / "_delta_log").exists()  # nothing written before the stream is known
        source.down.clear()
        wait_until(lambda: committed_rows(storage) >= 100, 10, what="records once the source is back")
        source.down.set()
        calls = len(source.calls)
        wait_until(lambda: len(source.calls) >= calls + 5, 10, what="repeated attempts while fetching")
    finally:
        assert finish() == 0
    assert "source unavailable" in caplog.text
    assert live_ids(storage) == list(range(len(live_ids(storage))))


def test_a_permanent_error_flushes_and_fails(lake_root: Path, storage: LocalStorage) -> None:
    def break_it(n_call: int) -> None:
        if n_call == 3:
            source.broken.set()

    source = FakeSource(on_call=break_it)
    settings = make_settings(lake_root, BATCH_SIZE=10, BUFFER_RECORDS=1000, FLUSH_INTERVAL_SECONDS=5)
    with pytest.raises(PermanentSourceError, match="404"):
        run(settings, NO_CHILD, source=source)
    assert live_ids(storage) == list(range(20))  # what it had fetched was flushed before it stopped


def test_refused_records_are_quarantined_with_reasons_and_ingestion_goes_on(
    lake_root: Path, storage: LocalStorage
) -> None:
    source = FakeSource(refuse=lambda i: i % 97 == 5 or i == 999)
    settings = make_settings(lake_root, BATCH_SIZE=250, BUFFER_RECORDS=300)
    assert run(settings, RunOptions(max_records=1000, compaction=False), source=source) == 0
    refused = [i for i in range(1000) if i % 97 == 5]
    assert quarantined_ids(storage) == [*refused, 999]  # the refused tail is committed too (a position-only commit)
    assert live_ids(storage) == [i for i in range(999) if i not in refused]
    assert assert_every_id_once(storage) == 999
    table = pq.read_table(storage.path(quarantine_files(storage)[0].key))
    assert table.schema.remove_metadata() == QUARANTINE_SCHEMA
    assert set(table["reason"].to_pylist()) == {"badge_out_timestamp before badge_in_timestamp"}
    count = count_quarantine(storage)
    assert (count.files, count.rows) == (len(quarantine_files(storage)), len(refused) + 1)
    # The next run resumes after 999 and goes on.
    assert run(settings, RunOptions(max_records=10, compaction=False), source=source) == 0
    assert quarantined_ids(storage).count(999) == 1 and assert_every_id_once(storage) == 1009


# -- signals, locks ---------------------------------------------------------------------------------------
def test_sigterm_flushes_and_returns_zero(lake_root: Path, storage: LocalStorage) -> None:
    def on_call(n_call: int) -> None:
        time.sleep(0.02)
        if n_call == 4:
            os.kill(os.getpid(), signal.SIGTERM)

    source = FakeSource(on_call=on_call)
    settings = make_settings(lake_root, BATCH_SIZE=100, BUFFER_RECORDS=1_000_000, FLUSH_INTERVAL_SECONDS=5)
    before = signal.getsignal(signal.SIGTERM)
    assert run(settings, NO_CHILD, source=source) == 0
    assert signal.getsignal(signal.SIGTERM) == before  # handlers restored
    files = read_snapshot(storage).files
    assert len(files) == 1  # one file: the shutdown flush (the interval and size were never reached)
    ids = live_ids(storage)
    assert len(ids) >= 400 and ids == list(range(len(ids)))


def test_duration_stops_the_run(lake_root: Path, storage: LocalStorage) -> None:
    source = FakeSource(available=500)
    settings = make_settings(lake_root, BUFFER_RECORDS=1_000_000, FLUSH_INTERVAL_SECONDS=5)
    started = time.monotonic()
    assert run(settings, RunOptions(duration=0.5, compaction=False), source=source) == 0
    assert time.monotonic() - started < 3
    assert live_ids(storage) == list(range(500))


def test_a_second_pipeline_on_the_same_lake_is_refused(lake_root: Path) -> None:
    with LakeLock(lake_root, layout.PIPELINE_LOCK, "pipeline"), pytest.raises(LakeLockedError, match="pipeline"):
        run(make_settings(lake_root), NO_CHILD, source=FakeSource())


# -- pieces -----------------------------------------------------------------------------------------------
def test_place_records_refuses_gaps_repeats_and_overreach() -> None:
    good = FakeResult(make_records(10, 5), QUARANTINE_SCHEMA.empty_table(), 10, 15, 5)
    assert place_records(good, 10, 5).count == 5
    gap = FakeResult(make_records(11, 5), QUARANTINE_SCHEMA.empty_table(), 10, 15, 5)
    skip = FakeResult(make_records(10, 5), QUARANTINE_SCHEMA.empty_table(), 10, 16, 5)
    too_many = FakeResult(make_records(10, 5), QUARANTINE_SCHEMA.empty_table(), 10, 15, 5)
    overlap = FakeResult(make_records(10, 3), as_refused(make_records(11, 2), "x"), 10, 15, 5)
    for bad, asked in ((gap, 5), (skip, 5), (too_many, 4), (overlap, 5)):
        with pytest.raises(PermanentSourceError):
            place_records(bad, 10, asked)


def test_a_refused_record_without_a_usable_id_takes_its_free_position() -> None:
    records = make_records(10, 6)
    refused = as_refused(records.filter(pa.array([i in (1, 4) for i in range(6)])), "unknown department")
    broken_ids = pa.array([None, -7], pa.int64())  # 11 lost its id, 14 has a negative one
    refused = refused.set_column(0, "event_id", broken_ids)
    valid = records.filter(pa.array([i not in (1, 4) for i in range(6)]))
    placed = place_records(FakeResult(valid, refused, 10, 16, 6), 10, 6)
    assert placed.refused["event_id"].to_pylist() == [11, 14]
    assert all(r.endswith(POSITION_NOTE) for r in placed.refused["reason"].to_pylist())
    assert placed.valid["event_id"].to_pylist() == [10, 12, 13, 15]


def test_progress_line_and_freshness(lake_root: Path, storage: LocalStorage) -> None:
    from datetime import datetime

    settings = make_settings(lake_root)
    table = LakeTable.open_or_create(storage, TEST_IDENTITY)
    writer = BufferedWriter(storage, FlushThresholds(10, 60), table=table, position=None)
    with writer:
        writer.add(make_records(0, 10))
        assert writer.flush(5)
        fetcher = Fetcher(FakeSource(), writer, settings, 10)
        line = Progress(writer, fetcher, 1.0).line()
    assert "committed 10 in 1 files" in line and "buffered 0" in line and "refused 0" in line
    newest = writer.stats().newest_event_time
    assert newest == max(make_records(0, 10)["badge_out_timestamp"].to_pylist())
    assert freshness_lag(datetime(2025, 1, 1, 0, 0, 0), datetime.fromisoformat("2025-01-01T00:00:05+00:00")) == 5.0
    assert freshness_lag(None) is None
