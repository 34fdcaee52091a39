"""Lake health: backlog against the compaction threshold, compacted files, replaced, invalid, quarantined."""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq

from analytics.health import lake_health
from analytics.monitor import QUERY_HISTORY
from lake import layout
from lake.audit import stats
from lake.liveset import live_set
from lake.quarantine import SIDECAR_SUFFIX, count_quarantine, quarantine_file
from lake.storage import LocalStorage
from testkit import lakes as lg
from utils.config import Settings


def test_health_counts_every_kind_of_file(storage: LocalStorage, settings: Settings) -> None:
    table = lg.make_table(9_000, seed=2)
    built = lg.publish(storage, table, landing_files=9, compacted_share=0.4, compacted_files=2)
    lg.add_foreign_file(storage)
    lg.add_quarantine(storage, ["bad timestamp", "missing user", "negative duration"])
    lg.add_quarantine(storage, ["bad timestamp"])
    # A readable Parquet file without badge metadata (moved there by hand): counted from its footer.
    pq.write_table(pa.table({"x": [1, 2, 3, 4, 5]}), storage.path("quarantine/foreign.parquet"))
    storage.path("quarantine/notes.txt").write_text("not data")
    storage.path("quarantine/notes.txt.reason.json").write_text('{"reason": "foreign name"}')  # not counted
    storage.path("temp/half-written.tmp").write_bytes(b"x")

    before = datetime.now(UTC)
    health = lake_health(live_set(storage), settings)

    assert health.landing_files == 9 and health.compaction_min_files == 8 and health.compaction_due
    assert health.landing_bytes == sum(f.size for f in built.landing)
    assert {f.key for f in health.compacted} == {f.key for f in built.compacted}
    assert health.compacted_bytes == sum(f.size for f in built.compacted)
    assert {f.key for f in health.replaced} == {f.key for f in built.replaced} and len(health.replaced) == 6
    assert health.invalid == ("landing/foreign.parquet",)
    assert health.quarantine_files == 4
    assert health.quarantined_records == 3 + 1 + 5
    assert health.quarantine_unreadable == 1  # the text file
    assert health.temp_files == 1
    assert health.live_rows == table.num_rows and health.live_files == 11
    newest = max(f.mtime_ns for f in built.compacted)
    assert health.last_compaction == datetime.fromtimestamp(newest / 1e9, UTC)
    assert health.last_compaction is not None and health.last_compaction <= before
    assert list(health.compacted_frame()["file"]) == [
        f.name for f in sorted(built.compacted, key=lambda f: f.mtime_ns, reverse=True)
    ]
    frame = dict(zip(health.as_frame()["measure"], health.as_frame()["value"], strict=True))
    assert frame["quarantined records"] == "9" and frame["compaction due"] == "True"


def test_health_reads_each_quarantine_footer_once(storage: LocalStorage, settings: Settings) -> None:
    storage.ensure_layout()
    lg.add_quarantine(storage, ["a", "b"])
    QUERY_HISTORY.clear()
    lake_health(live_set(storage), settings)
    lake_health(live_set(storage), settings)
    files = [r.files for r in QUERY_HISTORY.records("lake health")]
    assert files == [1, 0]


def test_health_of_an_empty_or_missing_lake(tmp_path, settings: Settings) -> None:
    health = lake_health(live_set(LocalStorage(tmp_path / "nowhere")), settings)
    assert (health.live_files, health.landing_files, health.quarantine_files, health.temp_files) == (0, 0, 0, 0)
    assert health.last_compaction is None and not health.compaction_due
    assert health.compacted_frame().empty


def test_reason_files_are_never_counted_as_quarantined_files(storage: LocalStorage, settings: Settings) -> None:
    storage.ensure_layout()
    refused = lg.add_quarantine(storage, ["bad timestamp", "missing user"])
    storage.path("landing/junk.parquet").write_bytes(b"PAR1 junk")
    moved = quarantine_file(
        storage, "landing/junk.parquet", "not readable Parquet", by="test", temp_name="test-sidecar"
    )
    assert storage.exists(moved + SIDECAR_SUFFIX), "quarantining writes a reason file beside the file"
    files = storage.list_all(layout.QUARANTINE)
    assert len(files) == 3  # the refused records, the moved file and its reason file

    count = count_quarantine(storage)
    assert (count.files, count.rows, count.unreadable) == (2, 2, 1)  # the junk file: counted, unreadable
    assert count.bytes == refused.size + storage.path(moved).stat().st_size
    health = lake_health(live_set(storage), settings)
    assert (health.quarantine_files, health.quarantined_records, health.quarantine_unreadable) == (2, 2, 1)
    zone = stats(storage)["zones"][layout.QUARANTINE]
    assert zone == {"files": 2, "rows": 2, "bytes": count.bytes}
