"""A debounced directory watcher: a watchdog observer whose handlers only enqueue, and one worker that acts.

The callback runs only in the worker thread, one call at a time, never inside an observer callback;
``stop()`` leaves no thread behind.

The directory is watched with its subdirectories, those created later included (landing files are
published into date directories). watchdog reports a file renamed or linked into it (how every landing
file is published) as a *created* event, and a rename inside it as a *moved* event; both are queued.
The worker waits until the burst has been quiet for ``debounce_seconds`` (at most ``max_delay_seconds`` under a steady
stream) and runs the callback once. Independently of events, a sweep runs it every ``sweep_seconds``
- at start too - so a restart, a missed event or a deadline running out is acted on without any new
file. More directories can be watched the same way (``also``: the compactor adds the table's log, as
a commit, not the file's arrival, is what makes a landing file part of the lake); one that does not
exist yet is watched from the first cycle after it appears. What the callback does is the caller's
business: this module knows nothing of compaction.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Final

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

log = logging.getLogger(__name__)

Cycle = Callable[[str], object]  # called with why it runs: "sweep" or "events"

_STOP: Final = object()
# Under a steady stream of events the worker acts at the latest this many debounce periods after the first.
MAX_DELAY_DEBOUNCES: Final = 10


class _EnqueueHandler(FileSystemEventHandler):
    """Observer callbacks: put the path on the queue and return at once."""

    def __init__(self, events: queue.Queue[object]) -> None:
        self._events = events

    def on_created(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self._events.put(event.src_path)

    def on_moved(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self._events.put(event.dest_path)


class LandingWatcher:
    """Runs ``cycle`` after debounced bursts of new files in ``directory`` and on a periodic sweep.

    ``directory=None`` (object storage, where nothing sends file events): the periodic sweep alone.

    At most one cycle runs at a time, always in the worker thread (named ``<name>-worker``). ``stop()``
    sets the stop event (shared with the cycle, so a long one can end early), then stops and joins the
    observer and the worker.
    """

    def __init__(
        self,
        directory: Path | None,
        cycle: Cycle,
        *,
        debounce_seconds: float,
        sweep_seconds: float,
        max_delay_seconds: float | None = None,
        stop: threading.Event | None = None,
        name: str = "watcher",
        also: Sequence[Path] = (),
    ) -> None:
        self.directory = Path(directory) if directory is not None else None  # None: the sweep alone
        self.also = tuple(Path(d) for d in also)
        self.name = name
        self._cycle = cycle
        self.debounce_seconds = debounce_seconds
        self.sweep_seconds = sweep_seconds
        self.max_delay_seconds = (
            max_delay_seconds if max_delay_seconds is not None else max(debounce_seconds * MAX_DELAY_DEBOUNCES, 0.1)
        )
        self.stop_event = stop or threading.Event()
        self._events: queue.Queue[object] = queue.Queue()
        self._observer = Observer()
        self._handler = _EnqueueHandler(self._events)
        self._observing = False
        self._watched: set[Path] = set()
        self._worker = threading.Thread(target=self._work, name=f"{name}-worker", daemon=True)
        self.events_seen = 0
        self.cycles: list[str] = []  # why each cycle ran, in order
        self.failures = 0

    # -- life cycle ------------------------------------------------------------------------------------
    def start(self) -> LandingWatcher:
        """Start the observer and the worker; without file events (e.g. no inotify watch left) the sweep still runs."""
        if self.directory is not None:
            try:
                # recursive: files land in date directories (landing/date=YYYY-MM-DD/), created as days begin
                self._observer.schedule(self._handler, str(self.directory), recursive=True)
                self._watched.add(self.directory)
                self._observer.start()
                self._observing = True
            except OSError as exc:
                log.warning("no file events for %s (%s): relying on the sweep alone", self.directory, exc)
        self._watch_new_directories()
        self._worker.start()
        log.info(
            "watching %s (debounce %.1f s, sweep every %.1f s)",
            self.directory or "nothing (no file events here)",
            self.debounce_seconds,
            self.sweep_seconds,
        )
        return self

    def stop(self, timeout: float = 60.0) -> None:
        """Stop the cycle in progress at its next step, then the observer and the worker (joined)."""
        self.stop_event.set()
        self._events.put(_STOP)
        if self._observer.is_alive():
            self._observer.stop()
            self._observer.join(timeout)
        if self._worker.is_alive():
            self._worker.join(timeout)

    @property
    def running(self) -> bool:
        return self._worker.is_alive()

    def __enter__(self) -> LandingWatcher:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- the worker ------------------------------------------------------------------------------------
    def _work(self) -> None:
        next_sweep = time.monotonic()  # the first cycle runs at once: a restart catches up
        while not self.stop_event.is_set():
            now = time.monotonic()
            if now >= next_sweep:
                self._drain()  # whatever arrived so far is covered by this cycle
                self._run("sweep")
                next_sweep = time.monotonic() + self.sweep_seconds
                continue
            try:
                item = self._events.get(timeout=next_sweep - now)
            except queue.Empty:
                continue
            if item is _STOP:
                return
            self.events_seen += 1
            if not self._debounce():
                return
            self._run("events")
            next_sweep = time.monotonic() + self.sweep_seconds

    def _debounce(self) -> bool:
        """Wait until no event came for ``debounce_seconds`` (or ``max_delay_seconds`` passed); False on stop."""
        deadline = time.monotonic() + self.max_delay_seconds
        while True:
            wait = min(self.debounce_seconds, deadline - time.monotonic())
            if wait <= 0:
                return True
            try:
                item = self._events.get(timeout=wait)
            except queue.Empty:
                return True
            if item is _STOP:
                return False
            self.events_seen += 1

    def _watch_new_directories(self) -> None:
        """Watch each of ``also`` that exists by now (the observer may be running; scheduling is thread-safe)."""
        if not self._observing:
            return
        for directory in self.also:
            if directory in self._watched or not directory.is_dir():
                continue
            try:
                self._observer.schedule(self._handler, str(directory), recursive=False)
            except OSError as exc:
                log.warning("no file events for %s (%s): relying on the sweep for it", directory, exc)
            self._watched.add(directory)

    def _drain(self) -> None:
        while True:
            try:
                item = self._events.get_nowait()
            except queue.Empty:
                return
            if item is _STOP:
                self._events.put(_STOP)  # keep it for the loop
                return
            self.events_seen += 1

    def _run(self, reason: str) -> None:
        if self.stop_event.is_set():
            return
        self._watch_new_directories()  # before the cycle: what changes after it is an event, what came before it sees
        try:
            self._cycle(reason)
        except Exception:  # a failed cycle (disk full, a vanished file) is retried by the next event or sweep
            self.failures += 1
            log.exception("%s cycle failed; it is retried at the next event or sweep", self.name)
        finally:
            self.cycles.append(reason)
