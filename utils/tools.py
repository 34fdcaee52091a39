"""Decorators: ``@timing`` logs how long a call took."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")

log = logging.getLogger(__name__)


def timing(func: Callable[P, R]) -> Callable[P, R]:
    """Log the wall-clock duration of every call of ``func`` at DEBUG level (also when it raises)."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        start = time.perf_counter()
        try:
            return func(*args, **kwargs)
        finally:
            elapsed_ms = (time.perf_counter() - start) * 1000
            log.debug("%s took %.1f ms", func.__qualname__, elapsed_ms)

    return wrapper
