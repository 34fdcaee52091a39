"""Lake health for the dashboard: what waits for compaction, what was compacted, what was refused.

Read from file listings and Parquet footers only (cheap at any size): no data page is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import pandas as pd

from analytics.monitor import note_files_scanned, sql_monitoring
from lake import layout
from lake.liveset import LiveSet
from lake.quarantine import count_quarantine
from lake.storage import FileInfo
from utils.config import Settings


@dataclass(frozen=True)
class LakeHealth:
    """One look at the lake's zones, beside the compaction settings."""

    live_files: int
    live_rows: int
    live_bytes: int
    landing_files: int  # live landing files: the compactor's backlog
    landing_bytes: int
    compaction_min_files: int
    compacted: tuple[FileInfo, ...]  # live compacted files
    target_min_bytes: int
    target_max_bytes: int
    replaced: tuple[FileInfo, ...]  # hidden by a compacted file, awaiting deletion after the grace period
    invalid: tuple[str, ...]  # unreadable or foreign files left out of the live set
    quarantine_files: int  # files in quarantine/, the .reason.json beside moved files not counted
    quarantined_records: int
    quarantine_unreadable: int  # quarantine files whose row count could not be read
    temp_files: int

    @property
    def compaction_due(self) -> bool:
        return self.landing_files >= self.compaction_min_files

    @property
    def compacted_bytes(self) -> int:
        return sum(f.size for f in self.compacted)

    @property
    def last_compaction(self) -> datetime | None:
        """When the newest live compacted file was published (aware UTC), or None."""
        if not self.compacted:
            return None
        return datetime.fromtimestamp(max(f.mtime_ns for f in self.compacted) / 1e9, UTC)

    def compacted_frame(self) -> pd.DataFrame:
        """The live compacted files: ``file, mb, published`` (newest first)."""
        rows = [
            {
                "file": f.name,
                "mb": f.size / 1024 / 1024,
                "published": datetime.fromtimestamp(f.mtime_ns / 1e9, UTC).replace(tzinfo=None),
            }
            for f in sorted(self.compacted, key=lambda f: f.mtime_ns, reverse=True)
        ]
        return pd.DataFrame(rows, columns=["file", "mb", "published"])

    def as_frame(self) -> pd.DataFrame:
        """Every figure as ``measure, value`` rows (for the raw-data tab and its CSV)."""
        last = self.last_compaction
        items: list[tuple[str, object]] = [
            ("live files", self.live_files),
            ("live rows", self.live_rows),
            ("live bytes", self.live_bytes),
            ("landing files", self.landing_files),
            ("compaction threshold (files)", self.compaction_min_files),
            ("compaction due", self.compaction_due),
            ("compacted files", len(self.compacted)),
            ("compacted bytes", self.compacted_bytes),
            ("last compaction (UTC)", last.isoformat() if last else ""),
            ("replaced files awaiting deletion", len(self.replaced)),
            ("invalid files", len(self.invalid)),
            ("quarantine files", self.quarantine_files),
            ("quarantined records", self.quarantined_records),
            ("temp files", self.temp_files),
        ]
        return pd.DataFrame({"measure": [k for k, _ in items], "value": [str(v) for _, v in items]})


@sql_monitoring("lake health")
def lake_health(live: LiveSet, settings: Settings) -> LakeHealth:
    """Zones and compaction state of the lake ``live`` was listed from, read from listings and footers."""
    storage = live.storage
    landing = live.in_zone(layout.LANDING)
    compacted = tuple(f.info for f in live.in_zone(layout.COMPACTED))
    quarantine = count_quarantine(storage)  # footers through the lake's one bounded cache
    note_files_scanned(quarantine.footers_read)
    return LakeHealth(
        live_files=len(live.files),
        live_rows=live.rows,
        live_bytes=live.bytes,
        landing_files=len(landing),
        landing_bytes=sum(f.info.size for f in landing),
        compaction_min_files=settings.compaction_min_files,
        compacted=compacted,
        target_min_bytes=settings.compaction_target_min_bytes,
        target_max_bytes=settings.compaction_target_max_bytes,
        replaced=tuple(f.info for f in live.replaced),
        invalid=live.invalid,
        quarantine_files=quarantine.files,
        quarantined_records=quarantine.rows,
        quarantine_unreadable=quarantine.unreadable,
        temp_files=len(storage.list_all(layout.TEMP)),
    )
