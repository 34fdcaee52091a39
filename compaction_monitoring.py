"""The compaction process: ``python compaction_monitoring.py [--once]``.

Holds the lake's compactor lock for its whole life (a second compactor exits with status 3), recovers
what a crash interrupted, then either runs one cycle (``--once``: compact while due, delete what is
due, exit 0) or watches ``landing/`` until SIGTERM or SIGINT, on which it stops between two steps
and exits 0. The logic lives in :mod:`lake.compactor` and :mod:`lake.watcher`.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from types import FrameType

from lake import layout
from lake.compactor import Compactor, StepHook, pause_hook
from lake.lock import LakeLock
from lake.storage import LocalStorage
from lake.watcher import LandingWatcher
from processes.cli import EXIT_OK, run_main, setup_logging
from utils.config import get_settings

log = logging.getLogger("compactor")

# Test-only: pause at a protocol step ("written", "published:2", ...) so a test can kill -9 the process there.
PAUSE_ENV = "BADGE_COMPACTOR_PAUSE_AT"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="compaction_monitoring.py",
        description="Compact the lake's landing/ files into compacted/ (settings come from the environment/.env).",
    )
    parser.add_argument(
        "--once", action="store_true", help="recover, compact whatever is due, delete what is due, and exit"
    )
    return parser.parse_args(argv)


def install_stop_handlers(stop: threading.Event) -> None:
    """SIGTERM and SIGINT set ``stop``; the work in progress ends at its next step.

    The main thread never waits on ``stop``'s lock (it polls ``is_set()``), so setting it from the
    handler cannot deadlock.
    """

    def handler(signum: int, _frame: FrameType | None) -> None:
        if not stop.is_set():
            log.info("%s received: stopping after the current step", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = get_settings()
    setup_logging(settings.log_level, "compactor")
    stop = threading.Event()
    install_stop_handlers(stop)
    pause = os.environ.get(PAUSE_ENV)
    hook: StepHook | None = pause_hook(pause) if pause else None

    storage = LocalStorage(settings.data_lake_path)
    storage.ensure_layout()
    with LakeLock(storage.root, layout.COMPACTOR_LOCK, "compactor"):
        compactor = Compactor(storage, settings, stop=stop, hook=hook)
        compactor.recover()
        if args.once:
            report = compactor.run_cycle()
            log.info(
                "done: %d compaction(s), %d file(s) deleted, %d quarantined",
                len(report.compactions),
                len(report.deleted),
                len(report.quarantined),
            )
            return EXIT_OK
        watcher = LandingWatcher.for_compactor(compactor, settings).start()
        try:
            while not stop.is_set() and watcher.running:
                time.sleep(0.1)  # wakes for signals; the handler only sets the flag
        finally:
            watcher.stop()
        log.info("stopped")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(run_main(lambda: main(sys.argv[1:])))
