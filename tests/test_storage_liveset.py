from __future__ import annotations

import json

import pyarrow as pa
import pytest

from lake import layout
from lake.liveset import live_set
from lake.parquet import badge_metadata, write_file
from lake.storage import LocalStorage
from utils.errors import CommitError


def _table(lo: int, hi: int) -> pa.Table:
    return pa.table({"event_id": pa.array(range(lo, hi + 1), pa.int64())})


def test_empty_and_missing_lake_is_an_empty_live_set(tmp_path) -> None:
    ls = live_set(LocalStorage(tmp_path / "nowhere"))
    assert ls.is_empty and ls.next_event_id == 0 and ls.rows == 0


def test_publish_never_overwrites_and_leaves_no_temp(storage: LocalStorage) -> None:
    info = write_file(storage, _table(0, 9), layout.LANDING, "landing")
    assert storage.exists(info.key)
    assert storage.list_all(layout.TEMP) == []
    tmp = storage.new_temp_path("x")
    tmp.write_bytes(b"data")
    with pytest.raises(CommitError):
        storage.publish(tmp, layout.LANDING, info.name)
    assert not tmp.exists()
    assert storage.read_metadata(info.key)[layout.META_ROW_COUNT] == "10"


def test_live_set_hides_sources_of_compacted_files(storage: LocalStorage) -> None:
    a = write_file(storage, _table(0, 9), layout.LANDING, "landing")
    b = write_file(storage, _table(10, 19), layout.LANDING, "landing")
    c = write_file(storage, _table(20, 29), layout.LANDING, "landing")
    assert live_set(storage).keys == [a.key, b.key, c.key]
    merged = write_file(
        storage,
        _table(0, 19),
        layout.COMPACTED,
        "compacted",
        {layout.META_SOURCES: json.dumps([a.key, b.key])},
    )
    ls = live_set(storage)
    assert ls.keys == [merged.key, c.key]
    assert {f.key for f in ls.replaced} == {a.key, b.key}
    assert ls.rows == 30 and ls.next_event_id == 30


def test_foreign_file_is_left_out_not_fatal(storage: LocalStorage) -> None:
    good = write_file(storage, _table(0, 4), layout.LANDING, "landing")
    (storage.root / "landing" / "junk.parquet").write_bytes(b"not parquet")
    ls = live_set(storage)
    assert ls.keys == [good.key]
    assert ls.invalid == ("landing/junk.parquet",)


def test_badge_metadata_shape() -> None:
    meta = badge_metadata(3, 7, 5, ["landing/a.parquet"])
    assert meta == {
        "badge.event_id_min": "3",
        "badge.event_id_max": "7",
        "badge.row_count": "5",
        "badge.sources": '["landing/a.parquet"]',
    }
