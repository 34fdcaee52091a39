"""The span planner: which minutes of a selection come from a cached partial and which from the files.

Exact by construction: the cached buckets, plus the ``plus`` spans, minus the ``minus`` spans count every
selected minute once and every other minute zero times (a property test checks it over random bounds).
"""

from __future__ import annotations

from dataclasses import dataclass

Span = tuple[int | None, int | None]  # [lo, hi); None = unbounded on that side


@dataclass(frozen=True)
class SpanPlan:
    """How to answer minutes [lo, hi) from a partial bucketed by ``size`` minutes, exactly.

    ``cached``: bucket ranges read from the cached partial; ``plus``: minute ranges read from the files;
    ``minus``: minute ranges read from the files and subtracted (a bucket mostly selected is cheaper as
    the cached bucket minus its unselected minutes than as its selected minutes read directly).
    """

    cached: list[Span]
    plus: list[Span]
    minus: list[tuple[int, int]]


def plan_spans(lo: int | None, hi: int | None, size: int, *, subtract: bool) -> SpanPlan:
    """Whole buckets from the cache; each partly selected bucket read directly, or cached minus the rest.

    ``subtract=False`` never yields ``minus`` spans (for partials whose measures are not all sums).
    """
    b_lo = None if lo is None else -(-lo // size)
    b_hi = None if hi is None else hi // size
    partial: list[tuple[int, int]] = []  # each inside one bucket
    cached: list[Span] = []
    if b_lo is not None and b_hi is not None and b_lo > b_hi:  # lo and hi inside the same bucket
        assert lo is not None and hi is not None
        if lo < hi:
            partial.append((lo, hi))
    else:
        if b_lo is None or b_hi is None or b_lo < b_hi:
            cached.append((b_lo, b_hi))
        if lo is not None and b_lo is not None and lo < b_lo * size:
            partial.append((lo, b_lo * size))
        if hi is not None and b_hi is not None and b_hi * size < hi:
            partial.append((b_hi * size, hi))
    plus: list[Span] = []
    minus: list[tuple[int, int]] = []
    for s_lo, s_hi in partial:
        bucket = s_lo // size
        if subtract and 2 * (s_hi - s_lo) > size:
            cached.append((bucket, bucket + 1))
            minus += [(a, b) for a, b in ((bucket * size, s_lo), (s_hi, (bucket + 1) * size)) if a < b]
        else:
            plus.append((s_lo, s_hi))
    return SpanPlan(cached, plus, minus)


__all__ = ["Span", "SpanPlan", "plan_spans"]
