"""Lake health: backlog against the compaction threshold, compacted files, files awaiting clean-up, quarantine.

What the lake holds comes from the table's snapshot; files on disk that no commit added are only
counted as awaiting clean-up.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq

from analytics.health import lake_health
from lake import layout
from lake.audit import stats
from lake.quarantine import count_quarantine
from lake.storage import LocalStorage
from lake.table import read_snapshot
from testkit import lakes as lg
from utils.config import Settings


def test_health_counts_every_kind_of_file(storage: LocalStorage, settings: Settings) -> None:
    table = lg.make_table(9_000, seed=2)
    built = lg.publish(storage, table, landing_files=9, compacted_share=0.4, compacted_files=2)
    foreign = lg.add_foreign_file(storage)
    forged = lg.add_forged_files(storage, built)
    lg.add_quarantine(storage, ["bad timestamp", "missing user", "negative duration"], first_event_id=20_000)
    lg.add_quarantine(storage, ["bad timestamp"], first_event_id=20_003)
    # A Parquet file in quarantine/ that no commit added: not the quarantine.
    pq.write_table(pa.table({"x": [1, 2, 3, 4, 5]}), storage.path("quarantine/foreign.parquet"))
    storage.path("temp/half-written.tmp").write_bytes(b"x")

    before = datetime.now(UTC)
    snapshot = read_snapshot(storage)
    health = lake_health(snapshot, settings)

    assert health.version == snapshot.version is not None
    assert health.landing_files == 9 and health.compaction_min_files == 8 and health.compaction_due
    assert health.landing_bytes == sum(f.size for f in built.landing)
    assert {f.key for f in health.compacted} == {f.key for f in built.compacted}
    assert health.compacted_bytes == sum(f.size for f in built.compacted)
    assert {f.key for f in health.awaiting_cleanup} == {f.key for f in built.replaced} | {foreign, *forged}
    assert len(built.replaced) == 6
    assert health.quarantine_files == 2 and health.quarantined_records == 4
    assert health.temp_files == 1
    assert health.table_rows == table.num_rows and health.table_files == 11
    assert health.table_bytes == sum(f.size for f in built.landing + built.compacted)
    newest = max(f.mtime_ns for f in built.compacted) // 1_000_000 * 1_000_000  # the log keeps milliseconds
    assert health.last_compaction == datetime.fromtimestamp(newest / 1e9, UTC)
    assert health.last_compaction is not None and health.last_compaction <= before
    assert list(health.compacted_frame()["file"]) == [
        f.name for f in sorted(built.compacted, key=lambda f: f.mtime_ns, reverse=True)
    ]
    frame = dict(zip(health.as_frame()["measure"], health.as_frame()["value"], strict=True))
    assert frame["quarantined records"] == "4" and frame["compaction due"] == "True"
    assert frame["files not in the table, awaiting clean-up"] == str(6 + 1 + len(forged))


def test_health_of_an_empty_or_missing_lake(tmp_path, settings: Settings) -> None:
    for root in (tmp_path / "nowhere", settings.data_lake_path):
        health = lake_health(read_snapshot(LocalStorage(root)), settings)
        assert (health.table_files, health.landing_files, health.quarantine_files, health.temp_files) == (0, 0, 0, 0)
        assert health.version is None and health.awaiting_cleanup == ()
        assert health.last_compaction is None and not health.compaction_due
        assert health.compacted_frame().empty


def test_health_and_stats_count_the_quarantine_table(storage: LocalStorage, settings: Settings) -> None:
    storage.ensure_layout()
    refused = lg.add_quarantine(storage, ["bad timestamp", "missing user"])
    storage.path("quarantine/junk.parquet").write_bytes(b"PAR1 junk")  # in no table: not counted
    count = count_quarantine(storage)
    assert (count.files, count.rows, count.bytes) == (1, 2, refused.size)
    health = lake_health(read_snapshot(storage), settings)
    assert (health.quarantine_files, health.quarantined_records) == (1, 2)
    zone = stats(storage)["zones"][layout.QUARANTINE]
    assert zone == {"files": 1, "rows": 2, "bytes": refused.size}
