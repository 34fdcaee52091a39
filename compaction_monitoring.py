"""The compaction process: ``python compaction_monitoring.py [--once]``.

Holds the lake's compactor lock for its whole life (a second compactor exits with status 3), recovers
what a crash interrupted, then either runs one cycle (``--once``: compact while due, delete what has
been out of the table for the grace period, exit 0) or watches ``landing/`` until SIGTERM or SIGINT,
on which it stops between two steps and exits 0. A lake in the previous layout: exit status 2 and
one line saying to migrate it; a lake without a table yet: it waits for the pipeline to create one.
The process logic lives in :mod:`processes.compactor`, the compaction in :mod:`lake.compaction`.
"""

from __future__ import annotations

import os

from utils.memory import with_preferred_pool

# Before anything imports pyarrow, which reads its memory pool setting once, at import (utils/memory.py).
os.environ.update(with_preferred_pool(os.environ))

import argparse
import sys
from collections.abc import Sequence

from processes.cli import run_main, setup_logging
from processes.compactor import PAUSE_ENV, run
from utils.config import get_settings


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="compaction_monitoring.py",
        description="Compact the lake's landing/ files into compacted/ (settings come from the environment/.env).",
    )
    parser.add_argument(
        "--once",
        action="store_true",
        help="recover, compact whatever is due, delete what has been out of the table for the grace period, and exit",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = get_settings()
    setup_logging(settings.log_level, "compactor")
    return run(settings, once=args.once, pause_at=os.environ.get(PAUSE_ENV))


if __name__ == "__main__":
    sys.exit(run_main(lambda: main(sys.argv[1:])))
