"""``make clean``: empty the lake after asking, never under a running pipeline or compactor.

Everything goes: the data files, the tables' logs (``_delta_log`` of the events table and of
``quarantine/``, so no table survives to point at deleted files) and ``.stream_start``, so the next
run creates a new table for a new stream at event 0.
"""

from __future__ import annotations

import argparse
import shutil
import sys

from lake import layout
from lake.lock import LakeLock
from lake.table import LOG_DIR
from processes.cli import EXIT_LOCKED, EXIT_OK, run_main
from utils.config import get_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m processes.clean", description=__doc__)
    parser.add_argument("--yes", action="store_true", help="do not ask")
    args = parser.parse_args(argv)

    def run() -> int:
        lake = get_settings().data_lake_path
        if not lake.exists():
            print(f"nothing to remove: {lake} does not exist")
            return EXIT_OK
        for filename, role in ((layout.PIPELINE_LOCK, "pipeline"), (layout.COMPACTOR_LOCK, "compactor")):
            if LakeLock(lake, filename, role).is_locked_elsewhere():
                print(f"error: a {role} is running on {lake}; stop it first (Ctrl-C in its terminal)")
                return EXIT_LOCKED
        if not args.yes:
            try:
                answer = input(f"Delete everything under {lake}? [y/N] ")
            except EOFError:
                answer = ""
            if answer.strip().lower() not in ("y", "yes"):
                print(f"kept {lake}")
                return EXIT_OK
        # The logs first: an interrupted clean then leaves inert files, never a table missing its files.
        for log_dir in (lake / LOG_DIR, lake / layout.QUARANTINE / LOG_DIR):
            shutil.rmtree(log_dir, ignore_errors=True)
        shutil.rmtree(lake)
        print(f"removed {lake} (its data files and its tables' logs)")
        return EXIT_OK

    return run_main(run)


if __name__ == "__main__":
    sys.exit(main())
