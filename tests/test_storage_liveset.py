from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lake import layout
from lake.liveset import MetadataCache, live_set
from lake.parquet import badge_metadata, write_file
from lake.storage import LocalStorage
from utils.errors import CommitError, CorruptFileError


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


def test_the_footer_cache_reads_each_footer_once_and_stays_bounded(storage: LocalStorage) -> None:
    cache = MetadataCache(capacity=2)
    good = write_file(storage, _table(0, 9), layout.LANDING, "landing")
    pq.write_table(pa.table({"x": [1, 2, 3]}), storage.path("landing/foreign.parquet"))
    (storage.root / "landing" / "junk.parquet").write_bytes(b"not parquet")
    foreign, junk = (
        next(f for f in storage.list_files(layout.LANDING) if f.name == n) for n in ("foreign.parquet", "junk.parquet")
    )

    footer, fresh = cache.footer(storage, good)
    assert fresh and footer.rows == 10 and cache.get(storage, good).row_count == 10
    assert cache.footer(storage, good) == (footer, False)
    footer, _ = cache.footer(storage, foreign)
    assert footer.rows == 3 and isinstance(footer.badge, CorruptFileError)  # rows from the footer, no badge
    with pytest.raises(CorruptFileError):
        cache.get(storage, foreign)
    assert cache.footer(storage, junk)[0].rows is None
    assert len(cache) == 2  # bounded: the least recently used entry went
    assert cache.footer(storage, good)[1], "evicted, so read again"
    assert live_set(storage, cache).keys == [good.key]
