"""The landing watcher: real file events (renames and links from temp/), debouncing, the sweep, stopping;
and its wiring to the compactor (processes.compactor.watch_landing)."""

from __future__ import annotations

import ast
import os
import threading
import time
from pathlib import Path

import lake.watcher
from lake import layout
from lake.compaction import Compactor
from lake.parquet import write_file
from lake.storage import LocalStorage
from lake.table import read_snapshot
from lake.watcher import LandingWatcher
from processes.compactor import watch_landing
from testkit.ids import assert_exactly_once
from testkit.landing import commit_files, disk_keys, publish_landing, table_keys
from testkit.processes import make_settings, wait_until
from testkit.records import lake_table


class Recorder:
    """A cycle that records which thread ran it and why."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def __call__(self, reason: str) -> None:
        self.calls.append((reason, threading.current_thread().name))

    def reasons(self, reason: str) -> int:
        return sum(1 for r, _ in self.calls if r == reason)


def _watcher(storage: LocalStorage, cycle: object, **kwargs: object) -> LandingWatcher:
    kwargs.setdefault("debounce_seconds", 0.3)
    kwargs.setdefault("sweep_seconds", 60.0)
    return LandingWatcher(storage.path(layout.LANDING), cycle, **kwargs)  # type: ignore[arg-type]


def _rename_in(storage: LocalStorage, name: str) -> None:
    tmp = storage.new_temp_path(name)
    tmp.write_bytes(b"x")
    os.rename(tmp, storage.path(f"{layout.LANDING}/{name}"))


def test_renames_and_links_from_temp_arrive_and_a_burst_is_one_cycle(storage: LocalStorage) -> None:
    recorder = Recorder()
    tables = [lake_table(i * 10, 10) for i in range(5)]
    with _watcher(storage, recorder, debounce_seconds=0.5) as watcher:
        wait_until(lambda: recorder.reasons("sweep") == 1, 5, what="the start-up sweep")
        for i in range(20):
            _rename_in(storage, f"renamed-{i}.parquet")  # a real rename from temp/ into landing/
        for table in tables:
            write_file(storage, table, layout.LANDING, "landing")  # publish() links, then unlinks
        wait_until(lambda: watcher.events_seen == 25, 5, what="25 created events")
        wait_until(lambda: recorder.reasons("events") >= 1, 5, what="a debounced cycle")
        time.sleep(1.0)  # longer than the debounce: no further cycle may follow
    assert recorder.reasons("events") == 1
    assert watcher.events_seen == 25
    assert {thread for _, thread in recorder.calls} == {"watcher-worker"}  # never in an observer callback


def test_files_in_date_directories_created_later_are_events(storage: LocalStorage) -> None:
    # Landing files are published into landing/date=YYYY-MM-DD/, a directory created when its day begins.
    recorder = Recorder()
    with _watcher(storage, recorder) as watcher:
        wait_until(lambda: recorder.reasons("sweep") == 1, 5, what="the start-up sweep")
        for day in ("2026-11-30", "2026-12-01"):
            table = lake_table(0, 10)
            write_file(storage, table, f"{layout.LANDING}/date={day}", "landing")
        wait_until(lambda: watcher.events_seen >= 2, 5, what="created events in the date directories")
        wait_until(lambda: recorder.reasons("events") >= 1, 5, what="a cycle on those events")


def test_a_rename_inside_landing_is_a_moved_event_and_counts(storage: LocalStorage) -> None:
    recorder = Recorder()
    _rename_in(storage, "before.parquet")
    with _watcher(storage, recorder) as watcher:
        wait_until(lambda: recorder.calls, 5, what="the start-up sweep")
        os.rename(storage.path("landing/before.parquet"), storage.path("landing/after.parquet"))
        wait_until(lambda: recorder.reasons("events") == 1, 5, what="a cycle after the move")
    assert watcher.events_seen == 1


def test_a_steady_stream_of_events_still_gets_a_cycle(storage: LocalStorage) -> None:
    recorder = Recorder()
    with _watcher(storage, recorder, debounce_seconds=0.2, max_delay_seconds=0.6):
        wait_until(lambda: recorder.calls, 5, what="the start-up sweep")
        deadline = time.monotonic() + 1.5
        i = 0
        while time.monotonic() < deadline:  # an event every 0.1 s: never quiet for 0.2 s
            _rename_in(storage, f"steady-{i}.parquet")
            i += 1
            time.sleep(0.1)
        assert recorder.reasons("events") >= 1


def test_the_sweep_runs_without_any_event(storage: LocalStorage) -> None:
    recorder = Recorder()
    with _watcher(storage, recorder, sweep_seconds=0.2) as watcher:
        wait_until(lambda: recorder.reasons("sweep") >= 4, 5, what="four sweeps")
    assert watcher.events_seen == 0 and recorder.reasons("events") == 0


def test_a_failing_cycle_does_not_stop_the_worker(storage: LocalStorage) -> None:
    calls: list[str] = []

    def flaky(reason: str) -> None:
        calls.append(reason)
        if len(calls) == 1:
            raise OSError(28, "No space left on device")

    with _watcher(storage, flaky, sweep_seconds=0.2) as watcher:
        wait_until(lambda: len(calls) >= 3, 5, what="cycles after a failure")
    assert watcher.failures == 1


def test_stop_interrupts_a_long_cycle_and_joins_every_thread(storage: LocalStorage) -> None:
    started = threading.Event()
    watcher: LandingWatcher

    def long_cycle(_reason: str) -> None:
        started.set()
        while not watcher.stop_event.is_set():  # like a compaction checking for stop between steps
            time.sleep(0.01)

    watcher = _watcher(storage, long_cycle).start()
    assert started.wait(5)
    began = time.monotonic()
    watcher.stop()
    assert time.monotonic() - began < 2
    assert not watcher.running and not watcher._observer.is_alive()
    assert not [t for t in threading.enumerate() if t.name == "watcher-worker"]


def _compacted_by_events(storage: LocalStorage, watcher: LandingWatcher) -> bool:
    """A cycle run on file events has ended, and the table holds a compacted file."""
    return "events" in watcher.cycles and bool(read_snapshot(storage).in_zone(layout.COMPACTED))


def test_new_landing_files_are_compacted_on_file_events(storage: LocalStorage, lake_root: Path) -> None:
    settings = make_settings(lake_root, COMPACTION_SWEEP_SECONDS=60, COMPACTION_DEBOUNCE_SECONDS=0.2)
    with watch_landing(Compactor(storage, settings), settings) as watcher:
        wait_until(lambda: watcher.cycles, 5, what="the start-up sweep")
        publish_landing(storage, 0, 1_000, 8)  # the next sweep is a minute away: only the events can act
        wait_until(lambda: _compacted_by_events(storage, watcher), 10, what="a compaction on file events")
    assert_exactly_once(storage, range(8_000))
    assert read_snapshot(storage).in_zone(layout.LANDING) == []


def test_a_lake_without_a_table_is_waited_for_then_compacted(storage: LocalStorage, lake_root: Path) -> None:
    settings = make_settings(lake_root, COMPACTION_SWEEP_SECONDS=0.2, COMPACTION_DEBOUNCE_SECONDS=0.2)
    with watch_landing(Compactor(storage, settings), settings) as watcher:
        wait_until(lambda: len(watcher.cycles) >= 3, 5, what="sweeps while the lake has no table")
        publish_landing(storage, 0, 1_000, 8)  # the pipeline creates the table and commits
        wait_until(lambda: storage.list_tree(layout.COMPACTED), 10, what="a compacted file")
    assert watcher.failures == 0
    assert_exactly_once(storage, range(8_000))


def test_a_directory_that_appears_later_is_watched_from_the_next_cycle(storage: LocalStorage) -> None:
    recorder = Recorder()
    later = storage.root / "later"
    with _watcher(storage, recorder, sweep_seconds=0.3, also=[later]) as watcher:
        wait_until(lambda: recorder.reasons("sweep") >= 1, 5, what="the start-up sweep")
        later.mkdir()
        wait_until(lambda: recorder.reasons("sweep") >= 3, 5, what="a sweep after the directory appeared")
        (later / "x.json").write_text("{}")
        wait_until(lambda: recorder.reasons("events") >= 1, 5, what="a cycle after a file in the new directory")
    assert watcher.events_seen >= 1


def test_a_commit_alone_calls_for_a_compaction(storage: LocalStorage, lake_root: Path) -> None:
    """The eighth landing file was published before the watcher started; only its commit makes it due."""
    publish_landing(storage, 0, 1_000, 7)
    last = publish_landing(storage, 7_000, 1_000, 1, commit=False)
    settings = make_settings(lake_root, COMPACTION_SWEEP_SECONDS=60, COMPACTION_DEBOUNCE_SECONDS=0.2)
    with watch_landing(Compactor(storage, settings), settings) as watcher:
        wait_until(lambda: watcher.cycles, 5, what="the start-up sweep")
        assert storage.list_tree(layout.COMPACTED) == []  # 7 files in the table: not due
        commit_files(storage, last)  # no new file in landing/, a new entry in the log
        wait_until(lambda: _compacted_by_events(storage, watcher), 10, what="a compaction on the commit's event")
    assert_exactly_once(storage, range(8_000))


def test_the_sweep_compacts_what_was_there_and_deletes_after_grace(storage: LocalStorage, lake_root: Path) -> None:
    sources = publish_landing(storage, 0, 1_000, 8)  # landed while no compactor ran: no event will come
    settings = make_settings(lake_root, COMPACTION_SWEEP_SECONDS=0.3, COMPACTION_GRACE_SECONDS=0.5)
    with watch_landing(Compactor(storage, settings), settings) as watcher:
        wait_until(lambda: storage.list_tree(layout.COMPACTED), 10, what="a compacted file")
        wait_until(lambda: not any(storage.exists(f.key) for f in sources), 10, what="sources deleted after grace")
    assert watcher.cycles[0] == "sweep"  # the start-up sweep compacted: no file event announced those files
    assert_exactly_once(storage, range(8_000))
    assert disk_keys(storage) == table_keys(storage)


def test_without_file_events_the_sweep_still_runs(storage: LocalStorage, monkeypatch) -> None:
    recorder = Recorder()
    watcher = _watcher(storage, recorder, sweep_seconds=0.2)

    def no_inotify() -> None:
        raise OSError(28, "inotify watch limit reached")

    monkeypatch.setattr(watcher._observer, "start", no_inotify)
    with watcher:
        wait_until(lambda: recorder.reasons("sweep") >= 2, 5, what="sweeps without an observer")
    assert not watcher.running


def test_the_compactor_watcher_shares_its_stop_event_and_names_its_worker(
    storage: LocalStorage, lake_root: Path
) -> None:
    compactor = Compactor(storage, make_settings(lake_root))
    watcher = watch_landing(compactor, make_settings(lake_root))
    assert watcher.stop_event is compactor.stop_event
    assert watcher.directory == storage.path(layout.LANDING)
    with watcher:
        wait_until(lambda: watcher.cycles, 5, what="the start-up sweep")
        assert "compaction-worker" in {t.name for t in threading.enumerate()}
    assert compactor.stop_event.is_set()


def test_the_watcher_knows_nothing_of_compaction() -> None:
    tree = ast.parse(Path(lake.watcher.__file__).read_text())
    imported = {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not [m for m in imported if m.split(".")[0] in ("lake", "processes")]
