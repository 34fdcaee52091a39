"""Planning a compaction: whether one is due, and which files it may replace, as pure functions of a live set.

A plan only holds runs of files consecutive in the live set, so no output's event-id range overlaps a
file it does not replace; files overlapping another live file are left out.
"""

from __future__ import annotations

from dataclasses import dataclass

from lake import layout
from lake.liveset import DataFile, LiveSet


@dataclass(frozen=True)
class CompactionPlan:
    """A snapshot: the files one compaction may read and replace, cut into runs of consecutive files."""

    runs: tuple[tuple[DataFile, ...], ...]
    overlapping: tuple[str, ...] = ()  # live files whose event ranges overlap: left alone, reported

    @property
    def inputs(self) -> list[DataFile]:
        return [f for run in self.runs for f in run]

    @property
    def keys(self) -> list[str]:
        return [f.key for f in self.inputs]


def is_due(live: LiveSet, min_files: int) -> bool:
    """True when ``live`` holds at least ``min_files`` landing files."""
    return len(live.in_zone(layout.LANDING)) >= min_files


def plan(live: LiveSet, min_bytes: int) -> CompactionPlan:
    """The snapshot of ``live``: landing files and compacted files under ``min_bytes``, in runs.

    A run holds files that are consecutive in the live set's event order, so an output's id range
    overlaps no other live file. A run of one compacted file is left as it is (nothing to merge).
    Files whose event ranges overlap another live file's are left out and reported.
    """
    overlapping: set[str] = set()
    previous: DataFile | None = None
    for f in live.files:
        if f.row_count == 0:
            continue
        if previous is not None and f.event_id_min <= previous.event_id_max:
            overlapping.update((f.key, previous.key))
        if previous is None or f.event_id_max > previous.event_id_max:
            previous = f
    empty: list[DataFile] = []
    runs: list[list[DataFile]] = []
    current: list[DataFile] = []
    for f in live.files:
        candidate = f.key not in overlapping and (
            f.info.zone == layout.LANDING or (f.info.zone == layout.COMPACTED and f.info.size < min_bytes)
        )
        if candidate and f.row_count == 0:
            empty.append(f)  # holds no rows: fits in any run without disturbing its order
        elif candidate:
            current.append(f)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    runs = [r for r in runs if not (len(r) == 1 and r[0].info.zone == layout.COMPACTED)]
    if empty:
        if runs:
            runs[0] = empty + runs[0]
        else:
            runs.append(empty)
    return CompactionPlan(tuple(tuple(r) for r in runs), tuple(sorted(overlapping)))
