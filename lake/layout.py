"""Names in the lake: zones, metadata keys, and file names that cannot collide."""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime
from typing import Final

TEMP: Final = "temp"
LANDING: Final = "landing"
COMPACTED: Final = "compacted"
QUARANTINE: Final = "quarantine"
ZONES: Final[tuple[str, ...]] = (TEMP, LANDING, COMPACTED, QUARANTINE)
DATA_ZONES: Final[tuple[str, ...]] = (LANDING, COMPACTED)  # what the live set is built from

PARQUET_SUFFIX: Final = ".parquet"

META_EVENT_ID_MIN: Final = "badge.event_id_min"
META_EVENT_ID_MAX: Final = "badge.event_id_max"
META_ROW_COUNT: Final = "badge.row_count"
META_SOURCES: Final = "badge.sources"
META_REASON: Final = "badge.reason"  # on quarantined files: why they are there

PIPELINE_LOCK: Final = ".pipeline.lock"
COMPACTOR_LOCK: Final = ".compactor.lock"


def new_file_name(kind: str, event_id_min: int, event_id_max: int) -> str:
    """A file name that sorts by creation time and cannot collide across flushes, processes or restarts.

    ``{kind}-{UTC time to the microsecond}-{first event}-{last event}-{pid}-{random 48 bits}.parquet``;
    uniqueness rests on the random part, and publishing refuses to overwrite in any case.
    """
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return (
        f"{kind}-{stamp}-{event_id_min:012d}-{event_id_max:012d}-{os.getpid()}-{uuid.uuid4().hex[:12]}{PARQUET_SUFFIX}"
    )
