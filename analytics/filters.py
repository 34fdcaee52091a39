"""The dashboard's selection (time range, departments, buildings) and its rendering as a SQL WHERE body.

Values never enter the SQL text: :meth:`Filters.where` writes only column names and parameter names,
and returns every value as a DuckDB parameter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from analytics.timeutil import minute_of, moment_of_minute


def _names(values: Sequence[str] | None) -> tuple[str, ...] | None:
    return tuple(sorted(set(values))) if values else None


@dataclass(frozen=True)
class Filters:
    """What the dashboard selects; None (or empty) means everything. Hashable, normalized on creation.

    ``start``/``end`` are floored to whole UTC minutes (naive = UTC) and applied to the event time as
    ``start <= badge_out_timestamp < end``.
    """

    start: datetime | None = None
    end: datetime | None = None
    departments: tuple[str, ...] | None = None
    buildings: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("start", "end"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, moment_of_minute(minute_of(value)))
        object.__setattr__(self, "departments", _names(self.departments))
        object.__setattr__(self, "buildings", _names(self.buildings))

    @property
    def minute_lo(self) -> int | None:
        return None if self.start is None else minute_of(self.start)

    @property
    def minute_hi(self) -> int | None:
        return None if self.end is None else minute_of(self.end)

    def where(
        self, *, raw: bool, time_column: str = "minute", lo: int | None = None, hi: int | None = None, tag: str = ""
    ) -> tuple[str, dict[str, Any]]:
        """A WHERE body and its parameters, over raw lake columns (``raw``) or a partial's columns.

        Time bounds ``lo``/``hi`` are in the partial's buckets (raw: minutes, compared as timestamps);
        only the set filters appear in the text, and their values are always parameters.
        """
        clauses: list[str] = []
        params: dict[str, Any] = {}
        time_expr = "badge_out_timestamp" if raw else time_column
        for name, op, bound in (("lo", ">=", lo), ("hi", "<", hi)):
            if bound is not None:
                clauses.append(f"{time_expr} {op} ${tag}{name}")
                params[f"{tag}{name}"] = moment_of_minute(bound) if raw else bound
        if self.departments is not None:
            clauses.append(f"list_contains(${tag}depts, dept)")
            params[f"{tag}depts"] = list(self.departments)
        if self.buildings is not None:
            clauses.append(f"list_contains(${tag}buildings, {'building_location' if raw else 'building'})")
            params[f"{tag}buildings"] = list(self.buildings)
        return (" AND ".join(clauses) or "true"), params

    def with_minutes(self, lo: int | None, hi: int | None) -> Filters:
        """The same selection restricted to badge-out minutes [lo, hi).

        Departments and buildings are kept as they are; None leaves that side of the range open.
        """
        return Filters(
            None if lo is None else moment_of_minute(lo),
            None if hi is None else moment_of_minute(hi),
            self.departments,
            self.buildings,
        )


ALL: Final = Filters()

__all__ = ["ALL", "Filters"]
