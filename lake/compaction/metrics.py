"""What a compaction and a cycle did: files in and out, rows, bytes, time (delta-rs style metrics).

Outputs are counted once the commit adding them has landed, so a compaction reports exactly what it
committed (an interrupted one its finished outputs, one whose inputs went stale nothing).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from lake import layout
from lake.retention import Expiry
from lake.snapshot import DataFile
from lake.storage import FileInfo


@dataclass
class CompactionMetrics:
    """What one compaction did (delta-rs style): files in, rows, bytes in -> out, time."""

    snapshot_files: int = 0  # files the snapshot allowed this compaction to replace
    version: int | None = None  # the table version it committed (None: nothing committed)
    files_in: int = 0  # files actually replaced (removed by its commit)
    landing_in: int = 0
    compacted_in: int = 0  # tiering: compacted files under the floor merged again
    rows: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    outputs: list[str] = field(default_factory=list)
    output_sizes: list[int] = field(default_factory=list)
    predicted_sizes: list[int] = field(default_factory=list)  # the estimate at the output's start
    rewrites: int = 0  # outputs discarded for ending above the ceiling, written again smaller
    unreadable: list[str] = field(default_factory=list)  # inputs it could not read: still in the table
    stale: bool = False  # an input left the table before the commit: nothing committed, outputs deleted
    interrupted: bool = False
    seconds: float = 0.0
    commit_seconds: float = 0.0

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def add_output(self, inputs: Sequence[DataFile], rows: int, info: FileInfo, predicted: int) -> None:
        """Count a committed output of ``rows`` rows replacing ``inputs``, predicted at ``predicted`` bytes."""
        self.files_in += len(inputs)
        self.landing_in += sum(1 for f in inputs if f.info.zone == layout.LANDING)
        self.compacted_in += sum(1 for f in inputs if f.info.zone == layout.COMPACTED)
        self.rows += rows
        self.bytes_in += sum(f.info.size for f in inputs)
        self.bytes_out += info.size
        self.outputs.append(info.key)
        self.output_sizes.append(info.size)
        self.predicted_sizes.append(predicted)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rows_per_second": self.rows_per_second}

    def summary(self) -> str:
        """The one log line of a compaction."""
        mb = 1024 * 1024
        return (
            f"compacted {self.files_in} files ({self.landing_in} landing + {self.compacted_in} compacted) "
            f"-> {len(self.outputs)} file(s): {self.rows:,} rows, {self.bytes_in / mb:.1f} MB -> "
            f"{self.bytes_out / mb:.1f} MB, {self.seconds:.2f} s ({self.rows_per_second / 1e6:.2f} M rows/s)"
            + (f", {self.rewrites} rewrite(s)" if self.rewrites else "")
            + (f", {len(self.unreadable)} unreadable input(s) left in the table" if self.unreadable else "")
            + (", interrupted" if self.interrupted else "")
        )


@dataclass
class CycleReport:
    """One cycle: compactions run while due, inputs that could not be read, files deleted after grace."""

    compactions: list[CompactionMetrics] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    expiry: Expiry | None = None  # what retention removed this cycle

    def as_dict(self) -> dict[str, Any]:
        return {
            "compactions": [m.as_dict() for m in self.compactions],
            "unreadable": self.unreadable,
            "deleted": self.deleted,
            "expired": None if self.expiry is None else list(self.expiry.files),
        }
