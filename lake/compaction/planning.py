"""Planning a compaction: whether one is due, and which files it may replace, as pure functions of a snapshot.

A plan only holds runs of files consecutive in the table's snapshot, so no output's event-id range
overlaps a file it does not replace; files overlapping another file of the snapshot are left out. A run
never crosses a date partition (:mod:`lake.partitions`), so no output mixes two dates.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from lake import layout
from lake.snapshot import DataFile, Snapshot


@dataclass(frozen=True)
class CompactionPlan:
    """The files one compaction may read and replace, cut into runs of consecutive files."""

    version: int | None  # the table version the plan was made from
    runs: tuple[tuple[DataFile, ...], ...]
    overlapping: tuple[str, ...] = ()  # files whose event ranges overlap: left alone, reported

    @property
    def inputs(self) -> list[DataFile]:
        return [f for run in self.runs for f in run]

    @property
    def keys(self) -> list[str]:
        return [f.key for f in self.inputs]


def is_due(snapshot: Snapshot, min_files: int, skip: Collection[str] = ()) -> bool:
    """True when ``snapshot`` holds at least ``min_files`` landing files (not counting those in ``skip``)."""
    return sum(1 for f in snapshot.in_zone(layout.LANDING) if f.key not in skip) >= min_files


def plan(snapshot: Snapshot, min_bytes: int, skip: Collection[str] = ()) -> CompactionPlan:
    """The plan for ``snapshot``: its landing files and compacted files under ``min_bytes``, in runs.

    A run holds files of one date partition that are consecutive in its event order, so an output's id
    range overlaps no other file of its date, and no output mixes two dates. A run of one compacted file
    is left as it is (nothing to merge). Files whose event ranges overlap another file's are left out and
    reported; files in ``skip`` (unreadable this cycle) are left out and cut the runs around them.
    """
    groups: dict[object, list[DataFile]] = {}
    for f in snapshot.files:  # by date partition (one group in an unpartitioned table), each in id order
        groups.setdefault(f.partition, []).append(f)
    overlapping: set[str] = set()
    runs: list[list[DataFile]] = []
    for group in groups.values():
        group_runs, group_overlapping = _runs(group, min_bytes, skip)
        runs += group_runs
        overlapping |= group_overlapping
    return CompactionPlan(snapshot.version, tuple(tuple(r) for r in runs), tuple(sorted(overlapping)))


def _runs(files: list[DataFile], min_bytes: int, skip: Collection[str]) -> tuple[list[list[DataFile]], set[str]]:
    """The runs of one date partition's files (sorted by first event id), and the files left out as overlapping.

    Files of two dates may interleave in ids (a source whose event times are not in id order); within a
    date they must not, or an output's range would overlap a file it does not replace.
    """
    overlapping: set[str] = set()
    previous: DataFile | None = None
    for f in files:
        if f.row_count == 0:
            continue
        if previous is not None and f.event_id_min <= previous.event_id_max:
            overlapping.update((f.key, previous.key))
        if previous is None or f.event_id_max > previous.event_id_max:
            previous = f
    empty: list[DataFile] = []
    runs: list[list[DataFile]] = []
    current: list[DataFile] = []
    for f in files:
        candidate = (
            f.key not in overlapping
            and f.key not in skip
            and (f.info.zone == layout.LANDING or (f.info.zone == layout.COMPACTED and f.info.size < min_bytes))
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
    return runs, overlapping
