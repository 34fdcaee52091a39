"""The compaction process: the lock, signals, recovery, then one cycle (``--once``) or the landing watcher.

At most one compactor per lake (a second one gets LakeLockedError: exit status 3); SIGTERM or SIGINT
stop it between two protocol steps and it returns 0. On a lake in the previous layout it raises
UnmigratedLakeError (exit status 2, one line saying to run ``python -m lake migrate``); on a lake
without a table yet it waits, cycle after cycle, until the pipeline creates one. The compaction and
the clean-up after grace are :mod:`lake.compaction` and :mod:`lake.cleanup`; the debounced watching
of ``landing/`` is :mod:`lake.watcher`, wired to the compactor here.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Final

import pyarrow as pa

from lake import layout
from lake.compaction import Compactor, StepHook, pause_hook
from lake.lease import Lease
from lake.location import open_storage
from lake.lock import LakeLock
from lake.objectstore import ObjectStorage
from lake.storage import LocalStorage, Storage
from lake.table import LOG_DIR, ensure_migrated
from lake.watcher import LandingWatcher
from processes.cli import EXIT_OK
from processes.supervision import until_reachable
from utils.config import Settings
from utils.errors import LeaseLostError
from utils.memory import limit_malloc_arenas

log = logging.getLogger(__name__)

# Test-only: pause at a protocol step ("written", "published:2", ...) so a test can kill -9 the process there.
PAUSE_ENV: Final = "BADGE_COMPACTOR_PAUSE_AT"
LEASE_WAIT_SECONDS: Final = 1.0  # a waiting compactor looks at its stop flag this often
TICK_SECONDS: Final = 0.1  # how often the main thread looks at the stop flag and the watcher
WATCHER_NAME: Final = "compaction"  # names the watcher's worker thread and its failure log line


def install_stop_handlers(stop: threading.Event) -> None:
    """SIGTERM and SIGINT set ``stop`` for the rest of the process; the work in progress ends at its next step.

    Not :func:`processes.signals.stop_on_signals`: a second signal must not exit at once (a terminal's
    SIGINT reaches the pipeline's child compactor before the pipeline's own SIGTERM does, and a step is
    short), and the handlers stay until the process is gone, so a late signal during exit cannot turn a
    clean stop into death by signal. The main thread never waits on ``stop``'s lock (it polls
    ``is_set()``), so setting it from the handler cannot deadlock. Only the main thread can install
    handlers; elsewhere (tests) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum: int, _frame: FrameType | None) -> None:
        if not stop.is_set():
            log.info("%s received: stopping after the current step", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def watch_landing(compactor: Compactor, settings: Settings) -> LandingWatcher:
    """A watcher on the compactor's ``landing/`` and the table's log that runs ``compactor.run_cycle``.

    A landing file is part of the lake once a commit adds it, a moment after it is published, so new
    entries in ``_delta_log/`` call for a cycle too (watched from the first cycle after the pipeline
    creates the table). Shares the compactor's stop event. Not started; every cycle runs in the
    watcher's one worker thread, never two at once.
    """
    storage = compactor.storage
    storage.ensure_layout()
    # Object storage sends no file events: there the periodic sweep alone triggers a cycle.
    return LandingWatcher(
        storage.path(layout.LANDING) if isinstance(storage, LocalStorage) else None,
        lambda _reason: compactor.run_cycle(),
        debounce_seconds=settings.compaction_debounce_seconds,
        sweep_seconds=settings.compaction_sweep_seconds,
        stop=compactor.stop_event,
        name=WATCHER_NAME,
        also=[storage.root / LOG_DIR] if isinstance(storage, LocalStorage) else [],
    )


def _one_compactor(storage: Storage, stop: threading.Event, held: contextlib.ExitStack) -> Callable[[], None] | None:
    """Make this the lake's one compactor, held until ``held`` closes; returns the check to run before each commit.

    On a local lake: the compactor lock (LakeLockedError at once if another process holds it). On object
    storage: the lease (lake/lease.py), waited for while another compactor holds it (None if ``stop`` is
    set meanwhile), renewed in the background; losing it stops this compactor, and the check before each
    commit refuses (LeaseLostError) once it cannot vouch for the lease.
    """
    if isinstance(storage, LocalStorage):
        held.enter_context(LakeLock(storage.root, layout.COMPACTOR_LOCK, "compactor"))
        return lambda: None
    if not isinstance(storage, ObjectStorage):
        raise TypeError(f"no way to hold {storage!r} for one compactor")

    def lost(exc: LeaseLostError) -> None:
        log.error("%s: stopping (another compactor may run now)", exc)
        stop.set()

    lease = Lease(storage.store, on_lost=lost)
    waited = False
    while not until_reachable("taking the lease", lambda: lease.acquire(timeout=LEASE_WAIT_SECONDS), stop):
        if stop.is_set():
            return None
        if not waited:
            seen = lease.last_seen
            log.info("another compactor holds the lease (%s): waiting", seen.describe() if seen else "holder unknown")
            waited = True
    held.callback(lease.release)
    lease.start_renewing()
    log.info("holding the lease %s as %s", lease.key, lease.holder_id)

    def check() -> None:
        lease.check()  # LeaseLostError, or LakeError if the store cannot confirm it: no commit

    return check


def run(
    settings: Settings,
    *,
    once: bool = False,
    pause_at: str | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Compact the lake of ``settings``: recover, then one cycle (``once``) or watch until stopped.

    Returns 0 after the cycle or a clean stop (signal, ``stop``). Raises LakeLockedError if another
    compactor runs on the lake, UnmigratedLakeError for a lake in the previous layout, ConfigError if
    ``pause_at`` (see PAUSE_ENV) names no step.
    """
    arenas = limit_malloc_arenas()  # before this process starts its threads (utils/memory.py)
    stop = stop or threading.Event()
    install_stop_handlers(stop)
    hook: StepHook | None = pause_hook(pause_at) if pause_at else None

    storage = open_storage(settings.data_lake_path)
    # Before anything is written: an old lake gives the one line (exit 2); an unreachable store is waited out.
    if until_reachable("opening the lake", lambda: ensure_migrated(storage), stop) is None:
        log.info("stopped while the lake's store was unreachable")
        return EXIT_OK
    storage.ensure_layout()
    with contextlib.ExitStack() as held:
        before_commit = _one_compactor(storage, stop, held)
        if before_commit is None:
            log.info("stopped while waiting for the lease")
            return EXIT_OK
        pool = pa.default_memory_pool().backend_name
        log.info("Arrow memory pool: %s; malloc arenas: %s", pool, 1 if arenas else "default")  # utils/memory.py
        compactor = Compactor(storage, settings, stop=stop, hook=hook, before_commit=before_commit)
        if until_reachable("recovering", lambda: compactor.recover() or True, stop) is None:
            return EXIT_OK
        if once:
            report = compactor.run_cycle()
            log.info(
                "done: %d compaction(s), %d file(s) deleted after grace, %d unreadable input(s) left in the table",
                len(report.compactions),
                len(report.deleted),
                len(report.unreadable),
            )
            return EXIT_OK
        watcher = watch_landing(compactor, settings).start()
        try:
            while not stop.is_set() and watcher.running:
                time.sleep(TICK_SECONDS)  # wakes for signals; the handler only sets the flag
        finally:
            watcher.stop()
        log.info("stopped")
    return EXIT_OK
