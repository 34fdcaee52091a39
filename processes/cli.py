"""What every entry point shares: logging set-up and the translation of errors into exit statuses."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from utils.errors import (
    BadgeError,
    ConfigError,
    LakeLockedError,
    StreamMismatchError,
    UnmigratedLakeError,
    one_line,
)

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CONFIG = 2
EXIT_LOCKED = 3


def setup_logging(level: str = "INFO", name: str | None = None) -> None:
    """One readable line per event on stderr: time, level, process role, message."""
    prefix = f"[{name}] " if name else ""
    logging.basicConfig(
        level=level,
        format=f"%(asctime)s %(levelname)-7s {prefix}%(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )


def run_main(main: Callable[[], int]) -> int:
    """Run ``main`` and turn the platform's errors into one clear line and an exit status.

    ConfigError, StreamMismatchError and UnmigratedLakeError -> 2 (one line saying what to do),
    LakeLockedError -> 3, other BadgeError -> 1.
    """
    try:
        return main()
    except (ConfigError, StreamMismatchError, UnmigratedLakeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except LakeLockedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_LOCKED
    except BadgeError as exc:  # an object store's error text carries pages of debug output: one line of it
        print(f"error: {one_line(exc, limit=1_000)}", file=sys.stderr)
        return EXIT_ERROR
