"""``make clean``: empty the lake after asking, never under a running pipeline or compactor.

Removing the lake also removes its ``.stream_start``, so the next run starts a new stream at event 0.
"""

from __future__ import annotations

import argparse
import shutil
import sys

from lake import layout
from lake.lock import LakeLock
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
        shutil.rmtree(lake)
        print(f"removed {lake}")
        return EXIT_OK

    return run_main(run)


if __name__ == "__main__":
    sys.exit(main())
