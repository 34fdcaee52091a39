"""What a reader sees: the table's snapshot, decided by the log alone (the previous live-set rule is gone).

Publishing a file never makes it part of the lake; a commit does. Footers are written for people and
never decide what the lake holds: a compacted file's ``badge.sources`` hides nothing, a footer's id
range moves no position.
"""

from __future__ import annotations

import errno

import pyarrow.parquet as pq
import pytest

from lake import layout
from lake.parquet import badge_metadata, write_file
from lake.storage import LocalStorage
from lake.table import SnapshotReader, read_snapshot
from testkit import lakes as lg
from testkit.landing import publish_landing
from testkit.records import lake_table
from utils.errors import CommitError, CorruptFileError, LakeError


def test_empty_and_missing_lake_is_an_empty_snapshot(tmp_path) -> None:
    for storage in (LocalStorage(tmp_path / "nowhere"), LocalStorage(tmp_path / "empty")):
        if storage.root.name == "empty":
            storage.ensure_layout()
        snap = read_snapshot(storage)
        assert snap.version is None and snap.is_empty and snap.next_event_id == 0 and snap.rows == 0
        assert snap.newest_event_time is None and snap.max_event_id is None


def test_publish_never_overwrites_and_leaves_no_temp(storage: LocalStorage) -> None:
    info = write_file(storage, lake_table(0, 10), layout.LANDING, "landing")
    assert storage.exists(info.key)
    assert storage.list_all(layout.TEMP) == []
    tmp = storage.new_temp_path("x")
    tmp.write_bytes(b"data")
    with pytest.raises(CommitError):
        storage.publish(tmp, layout.LANDING, info.name)
    assert not tmp.exists()
    assert storage.read_metadata(info.key)[layout.META_ROW_COUNT] == "10"


def test_a_published_file_is_not_the_lake_until_a_commit_adds_it(storage: LocalStorage) -> None:
    committed = publish_landing(storage, 0, 10, 2)
    orphan = publish_landing(storage, 20, 10, 1, commit=False)
    snap = read_snapshot(storage)
    assert snap.keys == [f.key for f in committed]
    assert orphan[0].key not in snap.keys and storage.exists(orphan[0].key)
    assert snap.rows == 20 and snap.next_event_id == 20


def test_a_compaction_commit_swaps_its_sources_for_its_output(storage: LocalStorage) -> None:
    a, b, c = publish_landing(storage, 0, 10, 3)
    reader = SnapshotReader(storage)
    before = reader.snapshot()
    merged = lg.compact(storage, [a, b])
    after = reader.snapshot()
    assert before.keys == [a.key, b.key, c.key]  # an old snapshot keeps answering for its own files
    assert before.version is not None and after.version == before.version + 1
    assert after.keys == [merged.key, c.key]
    assert after.rows == before.rows == 30 and after.next_event_id == 30
    assert storage.exists(a.key) and storage.exists(b.key)  # still on disk until the clean-up


def test_foreign_and_forged_files_are_not_in_the_snapshot(storage: LocalStorage) -> None:
    infos = publish_landing(storage, 0, 100, 3)
    foreign = lg.add_foreign_file(storage)
    # A zero-row compacted file naming the committed files as its sources: under the old rule it hid them.
    forged = write_file(
        storage,
        lake_table(0, 0),
        layout.COMPACTED,
        "compacted",
        badge_metadata(0, 299, 0, [f.key for f in infos]),
    )
    # A 10-row landing file whose footer claims ids up to 9,999,999: under the old rule it moved the cursor.
    inflated = write_file(storage, lake_table(300, 10), layout.LANDING, "landing", badge_metadata(300, 9_999_999, 10))
    snap = read_snapshot(storage)
    assert snap.keys == [f.key for f in infos]
    assert not {foreign, forged.key, inflated.key} & set(snap.keys)
    assert snap.rows == 300 and snap.next_event_id == 300 and snap.max_event_id == 299


def test_the_snapshot_figures_come_from_the_log_not_the_footers(storage: LocalStorage) -> None:
    (info,) = publish_landing(storage, 0, 100, 1)
    (f,) = read_snapshot(storage).files
    meta = pq.read_metadata(storage.path(info.key))
    assert (f.row_count, f.event_id_min, f.event_id_max) == (meta.num_rows, 0, 99)
    assert f.info.size == info.size and f.info.mtime_ns == info.mtime_ns // 1_000_000 * 1_000_000
    assert f.badge_out_max == max(lake_table(0, 100)["badge_out_timestamp"].to_pylist())


def test_badge_metadata_shape() -> None:
    meta = badge_metadata(3, 7, 5, ["landing/a.parquet"])
    assert meta == {
        "badge.event_id_min": "3",
        "badge.event_id_max": "7",
        "badge.row_count": "5",
        "badge.sources": '["landing/a.parquet"]',
    }


def test_an_io_error_reading_a_footer_is_not_taken_for_damage(
    storage: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = write_file(storage, lake_table(0, 10), layout.LANDING, "landing")
    (storage.root / layout.LANDING / "garbage.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(CorruptFileError):
        storage.read_footer("landing/garbage.parquet")

    def eio(*_args: object, **_kwargs: object) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(pq, "read_metadata", eio)
    with pytest.raises(LakeError, match="could not be read") as info:
        storage.read_footer(good.key)
    assert not isinstance(info.value, CorruptFileError)
