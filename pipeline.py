"""``python pipeline.py``: ingest the badge stream into the lake's Delta table, exactly once, until stopped.

Polls the generator service by cursor, buffers Arrow batches, and on size (``BUFFER_RECORDS``) or age
(``FLUSH_INTERVAL_SECONDS``) publishes a Snappy Parquet file into ``landing/`` and commits it to the
table together with its position; refused records go to the quarantine table first. Resumes at the
position the table's log records after any crash. By default it also runs ``compaction_monitoring.py``
as a child process. SIGINT/SIGTERM: flush, stop the child, exit 0. Exit status 2 for a bad setting, a
source serving another stream than the table holds, or a lake in the previous layout (run
``python -m lake migrate``); 3 if another pipeline runs on the lake; 1 if the source refuses us for good
(wrong URL, 4xx) or another writer moved the table's position (this one is fenced off). The logic
lives in :mod:`processes.pipeline`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from processes.cli import run_main, setup_logging
from processes.pipeline import RunOptions, run
from utils.config import get_settings


def _positive(kind: type[float] | type[int]) -> Callable[[str], float | int]:
    def parse(text: str) -> float | int:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
        return value

    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="pipeline.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=_positive(float), metavar="S", help="stop after S seconds (flushing first)")
    parser.add_argument(
        "--max-records", type=_positive(int), metavar="N", help="stop once N records are committed (never more)"
    )
    parser.add_argument("--no-compaction", action="store_true", help="do not start the compaction child process")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def go() -> int:
        settings = get_settings()
        setup_logging(settings.log_level, "pipeline")
        # httpx logs every request at INFO: thousands of lines a minute here; our progress line says it all.
        logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))
        options = RunOptions(duration=args.duration, max_records=args.max_records, compaction=not args.no_compaction)
        return run(settings, options)

    return run_main(go)


if __name__ == "__main__":
    sys.exit(main())
