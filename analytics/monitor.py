"""The query monitor: ``@sql_monitoring`` times each dashboard query, result included, into a bounded history.

Guarantee: the time recorded covers running the query and materializing its result (a lazy DuckDB
relation is refused), and the history keeps at most ``per_query`` records per query name.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sized
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")

log = logging.getLogger(__name__)


# ``@sql_monitoring(name)`` replaces the original's timer, which measured building a lazy DuckDB relation
# (2-5 ms) instead of running it (2.7 s). It times the call *including* materializing the result, refuses
# lazy relations, and keeps a bounded per-query history so a dashboard can show p50/p95 across reruns.

_FILES_SCANNED: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("files_scanned", default=None)
_LAZY_TYPES = frozenset({"DuckDBPyRelation"})


@dataclass(frozen=True)
class QueryRecord:
    """One monitored execution: when it finished, how long it took, what it returned and read."""

    name: str
    at: datetime  # UTC, when the call returned or raised
    ms: float
    rows: int
    files: int  # data files the call read from storage (0 when served from cached partial aggregates)
    error: str | None = None


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


class QueryHistory:
    """A bounded, thread-safe log of monitored executions: the newest ``per_query`` per name are kept."""

    def __init__(self, per_query: int = 500) -> None:
        self.per_query = per_query
        self._by_name: dict[str, deque[QueryRecord]] = {}
        self._lock = threading.Lock()

    def add(self, record: QueryRecord) -> None:
        with self._lock:
            self._by_name.setdefault(record.name, deque(maxlen=self.per_query)).append(record)

    def records(self, name: str | None = None) -> list[QueryRecord]:
        """The kept records, oldest first (all names merged by time when ``name`` is None)."""
        with self._lock:
            if name is not None:
                return list(self._by_name.get(name, ()))
            merged = [r for q in self._by_name.values() for r in q]
        merged.sort(key=lambda r: r.at)
        return merged

    def names(self) -> list[str]:
        with self._lock:
            return list(self._by_name)

    def summary(self) -> list[dict[str, object]]:
        """Per query: runs kept, errors, last/p50/p95/max ms, last rows and files; one dict per name."""
        out: list[dict[str, object]] = []
        with self._lock:
            snapshot = {name: list(q) for name, q in self._by_name.items()}
        for name, recs in snapshot.items():
            ok = [r.ms for r in recs if r.error is None]
            last = recs[-1]
            out.append(
                {
                    "query": name,
                    "runs": len(recs),
                    "errors": sum(1 for r in recs if r.error is not None),
                    "last_ms": last.ms,
                    "p50_ms": percentile(ok, 50),
                    "p95_ms": percentile(ok, 95),
                    "max_ms": max(ok) if ok else math.nan,
                    "last_rows": last.rows,
                    "last_files": last.files,
                    "last_error": last.error,
                }
            )
        return out

    def clear(self) -> None:
        with self._lock:
            self._by_name.clear()


# Module level, so it survives Streamlit reruns (the script re-executes; imported modules do not).
QUERY_HISTORY = QueryHistory()


def note_files_scanned(count: int) -> None:
    """Inside a monitored call: add ``count`` data files read from storage to its record (no-op outside)."""
    box = _FILES_SCANNED.get()
    if box is not None:
        box[0] += count


def _rows_of(result: object) -> int:
    if result is None:
        return 0
    num_rows = getattr(result, "num_rows", None)  # Arrow tables
    if isinstance(num_rows, int):
        return num_rows
    if isinstance(result, Sized) and not isinstance(result, (str, bytes)):
        return len(result)
    return 1


def sql_monitoring(name: str, history: QueryHistory | None = None) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Time each call of the decorated query, result materialized, and record it in ``history``.

    Records name, milliseconds, rows returned (``len``/``num_rows`` of the result, 1 for a scalar object)
    and files scanned (reported by the query through :func:`note_files_scanned`); failures are recorded
    with their error and re-raised. A lazy DuckDB relation as result is refused with TypeError: timing
    it would measure query planning, not execution.
    """

    def decorate(func: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            target = history if history is not None else QUERY_HISTORY
            box = [0]
            token = _FILES_SCANNED.set(box)
            start = time.perf_counter()
            error: str | None = None
            rows = 0
            try:
                result = func(*args, **kwargs)
                if type(result).__name__ in _LAZY_TYPES:
                    raise TypeError(f"{name}: returned a lazy relation; materialize it (.df(), .fetchall())")
                rows = _rows_of(result)
                return result
            except BaseException as exc:
                error = f"{type(exc).__name__}: {exc}"
                raise
            finally:
                elapsed_ms = (time.perf_counter() - start) * 1000
                _FILES_SCANNED.reset(token)
                note_files_scanned(box[0])  # a monitored call inside another counts for both
                target.add(QueryRecord(name, datetime.now(UTC), elapsed_ms, rows, box[0], error))
                log.debug("%s: %.1f ms, %d rows, %d files", name, elapsed_ms, rows, box[0])

        return wrapper

    return decorate
