"""``make clean``: empty the lake after asking, never under a running pipeline or compactor.

Everything goes: the data files, the tables' logs (``_delta_log`` of the events table and of
``quarantine/``, so no table survives to point at deleted files) and ``.stream_start``, so the next
run creates a new table for a new stream at event 0.

The locks are taken (non-blocking) after the y/N answer and held while deleting, so a pipeline or a
compactor started while the prompt waited is caught; the probe before the prompt only spares asking.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
from pathlib import Path

from lake import layout
from lake.lock import LakeLock
from lake.table import LOG_DIR
from processes.cli import EXIT_LOCKED, EXIT_OK, run_main
from utils.config import get_settings
from utils.errors import LakeLockedError

ROLES = ((layout.PIPELINE_LOCK, "pipeline"), (layout.COMPACTOR_LOCK, "compactor"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m processes.clean", description=__doc__)
    parser.add_argument("--yes", action="store_true", help="do not ask")
    args = parser.parse_args(argv)

    def run() -> int:
        lake = get_settings().local_lake_path("make clean")
        if not lake.exists():
            print(f"nothing to remove: {lake} does not exist")
            return EXIT_OK
        if running := _running(lake):  # refuse before asking (the answer would be wasted)
            print(running)
            return EXIT_LOCKED
        if not args.yes:
            try:
                answer = input(f"Delete everything under {lake}? [y/N] ")
            except EOFError:
                answer = ""
            if answer.strip().lower() not in ("y", "yes"):
                print(f"kept {lake}")
                return EXIT_OK
        with contextlib.ExitStack() as held:
            for filename, role in ROLES:  # a process started during the prompt holds its lock by now
                try:
                    held.enter_context(LakeLock(lake, filename, role))
                except LakeLockedError:
                    print(_refusal(role, lake))
                    return EXIT_LOCKED
            _remove(lake, {filename for filename, _ in ROLES})
        print(f"removed {lake} (its data files and its tables' logs)")
        return EXIT_OK

    return run_main(run)


def _refusal(role: str, lake: Path) -> str:
    return f"error: a {role} is running on {lake}; stop it first (Ctrl-C in its terminal)"


def _running(lake: Path) -> str | None:
    """The refusal if a pipeline or a compactor holds the lake now (a probe: no lock is kept)."""
    for filename, role in ROLES:
        if LakeLock(lake, filename, role).is_locked_elsewhere():
            return _refusal(role, lake)
    return None


def _remove(lake: Path, locks: set[str]) -> None:
    """Everything under ``lake``, the lock files last (held by the caller until they are gone), then ``lake``.

    A process that starts once the lock files are gone finds no lake and makes a new one: the last
    ``rmdir`` then leaves it alone.
    """
    # The logs first: an interrupted clean then leaves inert files, never a table missing its files.
    for log_dir in (lake / LOG_DIR, lake / layout.QUARANTINE / LOG_DIR):
        shutil.rmtree(log_dir, ignore_errors=True)
    for child in lake.iterdir():
        if child.name in locks:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    for name in locks:
        (lake / name).unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # not empty: a process started just now made a new lake there
        lake.rmdir()


if __name__ == "__main__":
    sys.exit(main())
