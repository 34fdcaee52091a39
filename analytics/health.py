"""Lake health for the dashboard: what waits for compaction, what was compacted, what waits for clean-up.

What the lake holds comes from the table's snapshot (its log); the only listings are of the files in
storage that the table does not hold (awaiting clean-up after the grace period) and of temp/. No data page
is read. The same on a local disk and on object storage (where temp/ is always empty: files are staged on
the writer's machine).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime

import pandas as pd

from analytics.monitor import sql_monitoring
from lake import layout, retention
from lake.quarantine import count_quarantine
from lake.snapshot import Snapshot
from lake.storage import FileInfo
from utils.config import Settings


@dataclass(frozen=True)
class LakeHealth:
    """One look at the lake's table and zones, beside the compaction settings."""

    version: int | None  # the table's version (None: no table yet)
    table_files: int
    table_rows: int
    table_bytes: int
    landing_files: int  # landing files in the table: the compactor's backlog
    landing_bytes: int
    compaction_min_files: int
    compacted: tuple[FileInfo, ...]  # compacted files in the table
    target_min_bytes: int
    target_max_bytes: int
    # On disk in landing/ or compacted/ but not in the table (removed by a compaction, orphaned by a
    # crash, or foreign): never read, deleted by the clean-up after the grace period.
    awaiting_cleanup: tuple[FileInfo, ...]
    quarantine_files: int
    quarantined_records: int
    temp_files: int
    retention_days: int = 0  # RETENTION_DAYS (0: kept forever)
    first_kept: date | None = None  # the first date retention keeps (None: every date)
    expired_through: int | None = None  # the last event id retention has expired so far
    oldest_event: datetime | None = None  # the oldest event time the table holds (naive UTC)

    @property
    def retained_window(self) -> str:
        """What the lake keeps, in words: ``"from 2026-11-29 (RETENTION_DAYS=1)"`` or ``"everything"``."""
        if self.first_kept is None:
            return "everything"
        return f"from {self.first_kept.isoformat()} (RETENTION_DAYS={self.retention_days})"

    @property
    def compaction_due(self) -> bool:
        return self.landing_files >= self.compaction_min_files

    @property
    def compacted_bytes(self) -> int:
        return sum(f.size for f in self.compacted)

    @property
    def last_compaction(self) -> datetime | None:
        """When the newest compacted file of the table was published (aware UTC), or None."""
        if not self.compacted:
            return None
        return datetime.fromtimestamp(max(f.mtime_ns for f in self.compacted) / 1e9, UTC)

    def compacted_frame(self) -> pd.DataFrame:
        """The table's compacted files: ``file, mb, published`` (newest first)."""
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
            ("table version", "" if self.version is None else self.version),
            ("files in the table", self.table_files),
            ("rows in the table", self.table_rows),
            ("bytes in the table", self.table_bytes),
            ("landing files", self.landing_files),
            ("compaction threshold (files)", self.compaction_min_files),
            ("compaction due", self.compaction_due),
            ("compacted files", len(self.compacted)),
            ("compacted bytes", self.compacted_bytes),
            ("last compaction (UTC)", last.isoformat() if last else ""),
            ("files not in the table, awaiting clean-up", len(self.awaiting_cleanup)),
            ("quarantine files", self.quarantine_files),
            ("quarantined records", self.quarantined_records),
            ("temp files", self.temp_files),
            ("retained", self.retained_window),
            ("oldest event held (UTC)", self.oldest_event.isoformat() if self.oldest_event else ""),
            ("expired through event id", "" if self.expired_through is None else self.expired_through),
        ]
        return pd.DataFrame({"measure": [k for k, _ in items], "value": [str(v) for _, v in items]})


@sql_monitoring("lake health")
def lake_health(snapshot: Snapshot, settings: Settings) -> LakeHealth:
    """Zones and compaction state of the lake at ``snapshot`` (the table's files), and what lies beside it."""
    storage = snapshot.storage
    landing = snapshot.in_zone(layout.LANDING)
    compacted = tuple(f.info for f in snapshot.in_zone(layout.COMPACTED))
    held = set(snapshot.keys)
    beside = tuple(
        info for zone in layout.DATA_ZONES for info in storage.list_tree(zone, suffix="") if info.key not in held
    )
    quarantine = count_quarantine(storage)  # from the quarantine table's log
    return LakeHealth(
        version=snapshot.version,
        table_files=len(snapshot.files),
        table_rows=snapshot.rows,
        table_bytes=snapshot.bytes,
        landing_files=len(landing),
        landing_bytes=sum(f.info.size for f in landing),
        compaction_min_files=settings.compaction_min_files,
        compacted=compacted,
        target_min_bytes=settings.compaction_target_min_bytes,
        target_max_bytes=settings.compaction_target_max_bytes,
        awaiting_cleanup=beside,
        quarantine_files=quarantine.files,
        quarantined_records=quarantine.rows,
        temp_files=len(storage.list_all(layout.TEMP)),
        retention_days=settings.retention_days,
        first_kept=retention.horizon(settings.retention_days, datetime.now(UTC).date()),
        expired_through=snapshot.expired_through,
        oldest_event=min((f.badge_out_min for f in snapshot.files if f.badge_out_min is not None), default=None),
    )
