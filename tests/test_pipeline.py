"""The pipeline loop against an in-memory source: resume, time flush, outages, refused records, limits, signals."""

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

from ingestion.fetcher import Fetcher
from ingestion.placement import POSITION_NOTE, place_records
from ingestion.progress import Progress, freshness_lag
from ingestion.resume import recover
from lake import layout
from lake import writer as lake_writer
from lake.audit import verify
from lake.liveset import live_set
from lake.lock import LakeLock
from lake.parquet import write_file
from lake.quarantine import write_refused
from lake.storage import FileInfo, LocalStorage
from lake.writer import BufferedWriter, FlushThresholds
from processes.pipeline import RunOptions, run
from testkit import ids as lake_ids
from testkit.fake_source import FakeResult, FakeSource, as_refused
from testkit.ids import zone_ids
from testkit.processes import make_settings, wait_until
from testkit.records import make_records
from utils.config import Settings
from utils.errors import LakeLockedError, PermanentSourceError
from utils.records import QUARANTINE_SCHEMA, with_duration


def ids_in(storage: LocalStorage, zone: str) -> list[int]:
    return sorted(zone_ids(storage, zone).tolist())


def live_ids(storage: LocalStorage) -> list[int]:
    return sorted(lake_ids.live_ids(storage).tolist())


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
def test_recover_derives_the_cursor_and_cleans_only_its_own_leftovers(storage: LocalStorage) -> None:
    a = write_file(storage, with_duration(make_records(0, 50)), layout.LANDING, "landing")
    b = write_file(storage, with_duration(make_records(50, 50)), layout.LANDING, "landing")
    merged = write_file(
        storage,
        with_duration(make_records(0, 100)),
        layout.COMPACTED,
        "compacted",
        {layout.META_SOURCES: f'["{a.key}", "{b.key}"]'},
    )
    write_file(storage, with_duration(make_records(100, 30)), layout.LANDING, "landing")
    confirmed = write_refused(storage, as_refused(make_records(7, 1), "bad"))  # below the cursor: keep
    orphan = write_refused(storage, as_refused(make_records(135, 2), "bad"))  # beyond: its flush never finished
    foreign = storage.move(
        write_refused(storage, as_refused(make_records(500, 1), "x")).key, layout.QUARANTINE, "junk.parquet"
    )
    for name in ("landing-x.parquet.1.tmp", "quarantine-y.parquet.2.tmp", "compacted-z.parquet.3.tmp"):
        (storage.root / layout.TEMP / name).write_bytes(b"half")

    resume = recover(storage)

    assert resume.cursor == 130
    assert sorted(resume.removed_temp) == ["temp/landing-x.parquet.1.tmp", "temp/quarantine-y.parquet.2.tmp"]
    assert [f.name for f in storage.list_all(layout.TEMP)] == ["compacted-z.parquet.3.tmp"]  # the compactor's
    assert resume.removed_orphans == (orphan.key,)
    assert storage.exists(confirmed.key) and storage.exists(foreign) and storage.exists(merged.key)
    assert recover(storage).removed_orphans == ()  # idempotent


def test_empty_lake_starts_at_zero(storage: LocalStorage) -> None:
    assert recover(storage).cursor == 0


def test_the_pipeline_resumes_where_the_lake_ends(lake_root: Path, storage: LocalStorage) -> None:
    write_file(storage, with_duration(make_records(0, 120)), layout.LANDING, "landing")
    source = FakeSource()
    settings = make_settings(lake_root, BATCH_SIZE=40, BUFFER_RECORDS=40)
    assert run(settings, RunOptions(max_records=100, compaction=False), source=source) == 0
    assert source.calls[0] == (120, 40)
    assert live_ids(storage) == list(range(220))


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
        wait_until(lambda: live_set(storage).rows == 2_050, 10, what="the first 2,050 records")
        assert active["max"] == 2  # a second request in flight while the first is handled, never more
        source.available = 2_420  # the stream grows: a guess sent past the old head must not leave a gap
        wait_until(lambda: live_set(storage).rows == 2_420, 10, what="the new records")
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
        wait_until(lambda: live_set(storage).rows >= 1_000, 10, what="the grown stream")
    finally:
        assert finish() == 0
    assert live_ids(storage) == list(range(1_000))


def test_time_based_flush_while_the_source_has_nothing_new(lake_root: Path, storage: LocalStorage) -> None:
    source = FakeSource(available=25, live=True)
    settings = make_settings(lake_root, BUFFER_RECORDS=100_000, FLUSH_INTERVAL_SECONDS=0.3, POLL_INTERVAL_SECONDS=0.05)
    _, finish = start_in_thread(settings, source, NO_CHILD)
    try:
        wait_until(lambda: storage.list_files(layout.LANDING), 5, what="the time-based flush")
        assert ids_in(storage, layout.LANDING) == list(range(25))
        assert len(source.calls) >= 2  # it kept polling the empty source meanwhile
    finally:
        assert finish() == 0
    assert len(storage.list_files(layout.LANDING)) == 1


def test_time_based_flush_fires_while_the_source_is_down(lake_root: Path, storage: LocalStorage) -> None:
    def go_down(n_call: int) -> None:
        if n_call == 2:
            source.down.set()

    source = FakeSource(on_call=go_down)
    settings = make_settings(lake_root, BATCH_SIZE=30, BUFFER_RECORDS=100_000, FLUSH_INTERVAL_SECONDS=0.3)
    _, finish = start_in_thread(settings, source, NO_CHILD)
    try:
        wait_until(lambda: storage.list_files(layout.LANDING), 5, what="a flush during the outage")
        assert ids_in(storage, layout.LANDING) == list(range(30))
        calls = len(source.calls)
        wait_until(lambda: len(source.calls) >= calls + 2, 5, what="more attempts during the outage")
        source.down.clear()  # the source comes back: ingestion resumes where it stopped
        wait_until(lambda: len(ids_in(storage, layout.LANDING)) >= 300, 10, what="ingestion after the outage")
    finally:
        assert finish() == 0
    assert live_ids(storage) == list(range(len(live_ids(storage))))


def test_a_transient_error_never_stops_the_pipeline(lake_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    source = FakeSource()
    source.down.set()
    settings = make_settings(lake_root, RETRY_MAX_DELAY_SECONDS=0.05)
    _, finish = start_in_thread(settings, source, NO_CHILD)
    try:
        wait_until(lambda: len(source.calls) >= 5, 10, what="repeated attempts")
    finally:
        assert finish() == 0
    assert "source unavailable" in caplog.text


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
    assert ids_in(storage, layout.QUARANTINE) == refused  # 999 trails the last valid record: not committed
    assert live_ids(storage) == [i for i in range(999) if i not in refused]
    table = pq.read_table(storage.path(storage.list_files(layout.QUARANTINE)[0].key))
    assert table.schema.remove_metadata() == QUARANTINE_SCHEMA
    assert set(table["reason"].to_pylist()) == {"badge_out_timestamp before badge_in_timestamp"}
    assert verify(storage, grace_seconds=2).ok
    # The next run refuses 999 again and goes on.
    assert run(settings, RunOptions(max_records=10, compaction=False), source=source) == 0
    assert 999 in ids_in(storage, layout.QUARANTINE) and verify(storage, grace_seconds=2).ok


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the crash is on purpose
def test_a_crash_between_quarantine_and_landing_is_undone_on_restart(
    lake_root: Path, storage: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Crash(BaseException):
        """Stands for kill -9: nothing after it runs."""

    source = FakeSource(refuse=lambda i: i % 10 == 3)
    settings = make_settings(lake_root, BATCH_SIZE=50, BUFFER_RECORDS=50)
    assert run(settings, RunOptions(max_records=100, compaction=False), source=source) == 0
    real = lake_writer.write_landing

    def crash_on_landing(storage_: LocalStorage, table: pa.Table) -> FileInfo:
        raise Crash

    monkeypatch.setattr(lake_writer, "write_landing", crash_on_landing)
    before = len(storage.list_files(layout.QUARANTINE))
    writer = BufferedWriter(storage, FlushThresholds(50, 60)).start()
    batch = source.get_employee_badge_logs(100, 50)
    writer.add(batch.table, batch.invalid)
    wait_until(lambda: len(storage.list_files(layout.QUARANTINE)) > before, 5, what="the crashed flush's quarantine")
    time.sleep(0.1)
    assert max(ids_in(storage, layout.QUARANTINE)) > 100  # the orphan of the crashed flush is there
    assert live_set(storage).next_event_id == 100  # its landing file never committed
    monkeypatch.setattr(lake_writer, "write_landing", real)

    assert run(settings, RunOptions(max_records=100, compaction=False), source=source) == 0
    refused = [i for i in range(200) if i % 10 == 3]
    assert ids_in(storage, layout.QUARANTINE) == refused
    assert live_ids(storage) == [i for i in range(200) if i not in refused]


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
    files = storage.list_files(layout.LANDING)
    assert len(files) == 1  # one file: the shutdown flush (the interval and size were never reached)
    ids = ids_in(storage, layout.LANDING)
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
    writer = BufferedWriter(storage, FlushThresholds(10, 60))
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
