"""The storage contract (lake.storage.Storage), held alike by the local file system and by S3 (moto's server).

Publishing is the commit point of a data file: whole or nothing, never over an existing file; reads tell a
missing file from a failed request from bytes that are not Parquet; deleting is idempotent.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from lake import layout
from lake.objectstore import ObjectStorage, new_scratch_dir, parse_s3_url, s3_options
from lake.parquet import write_file
from lake.storage import LocalStorage, Storage
from testkit.records import lake_table
from testkit.s3 import S3Lake, moto_s3
from utils.errors import CommitError, CorruptFileError, LakeError

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Lake]:
    with moto_s3() as lake:
        yield lake


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    if request.param == "local":
        storage: Storage = LocalStorage(tmp_path / "lake")
    else:
        lake: S3Lake = request.getfixturevalue("s3")
        storage = ObjectStorage(f"{lake.url}/{tmp_path.name}", lake.env)  # a prefix of its own per test
    storage.ensure_layout()
    yield storage
    if isinstance(storage, ObjectStorage):
        storage.close()


def test_a_published_file_is_whole_listed_and_read_back(backend: Storage) -> None:
    info = write_file(backend, lake_table(0, 1_000), layout.LANDING, "landing")
    assert backend.list_files(layout.LANDING) == [info]
    assert backend.exists(info.key) and info.size > 0
    assert backend.read_row_count(info.key) == 1_000
    assert backend.read_metadata(info.key)["badge.event_id_max"] == "999"


def test_a_file_opened_for_input_reads_back_what_was_written(backend: Storage) -> None:
    table = lake_table(0, 50_000)
    info = write_file(backend, table, layout.LANDING, "landing")
    with backend.open_input(info.key) as source:
        parquet = pq.ParquetFile(source)
        ids = [b.column("event_id") for b in parquet.iter_batches(batch_size=8_192, columns=["event_id"])]
    assert sum(len(c) for c in ids) == 50_000 and ids[0][0].as_py() == 0 and ids[-1][-1].as_py() == 49_999
    with pytest.raises(FileNotFoundError):
        backend.open_input("landing/missing.parquet")


def test_a_large_footer_is_read_whole(backend: Storage) -> None:
    # 300,000 rows in row groups of their own: a footer larger than the first range read from S3.
    table = lake_table(0, 300_000)
    with backend.staged("big.parquet") as tmp:
        pq.write_table(table, tmp, row_group_size=1_000)
        info = backend.publish(tmp, layout.COMPACTED, "big.parquet")
    footer = backend.read_footer(info.key)
    assert footer.num_rows == 300_000 and footer.num_row_groups == 300


def test_publish_never_overwrites(backend: Storage) -> None:
    first = write_file(backend, lake_table(0, 10), layout.LANDING, "landing")
    with pytest.raises(CommitError), backend.staged(first.name) as tmp:
        pq.write_table(lake_table(100, 5), tmp)
        backend.publish(tmp, layout.LANDING, first.name)
    assert not tmp.exists()  # the staged copy is gone
    assert backend.read_row_count(first.key) == 10  # the first file stands
    assert backend.list_files(layout.LANDING) == [first]


def test_a_failed_write_publishes_nothing(backend: Storage) -> None:
    with pytest.raises(RuntimeError), backend.staged("landing-x.parquet") as tmp:
        tmp.write_bytes(b"half a file")
        raise RuntimeError("the writer failed")
    assert not tmp.exists()
    assert backend.list_all(layout.LANDING) == []


def test_listing_takes_the_zone_and_suffix_only(backend: Storage) -> None:
    a = write_file(backend, lake_table(0, 5), layout.LANDING, "landing")
    b = write_file(backend, lake_table(5, 5), layout.LANDING, "landing")
    with backend.staged("notes.txt") as tmp:
        tmp.write_text("not data")
        note = backend.publish(tmp, layout.LANDING, "notes.txt")
    write_file(backend, lake_table(10, 5), layout.COMPACTED, "compacted")
    assert backend.list_files(layout.LANDING) == sorted([a, b])
    assert backend.list_all(layout.LANDING) == sorted([a, b, note])
    assert backend.list_files(layout.QUARANTINE) == []


def test_reads_tell_missing_from_damaged(backend: Storage) -> None:
    with pytest.raises(FileNotFoundError):
        backend.read_footer("landing/missing.parquet")
    with backend.staged("junk.parquet") as tmp:
        tmp.write_bytes(b"these bytes are not Parquet" * 10)
        junk = backend.publish(tmp, layout.LANDING, "junk.parquet")
    with pytest.raises(CorruptFileError):
        backend.read_footer(junk.key)


def test_delete_is_idempotent(backend: Storage) -> None:
    info = write_file(backend, lake_table(0, 5), layout.LANDING, "landing")
    assert backend.delete(info.key) is True
    assert backend.delete(info.key) is False
    assert not backend.exists(info.key) and backend.list_files(layout.LANDING) == []


def test_a_failed_request_is_an_error_to_retry_never_damage() -> None:
    with moto_s3() as lake:
        storage = ObjectStorage(lake.url, lake.env)
        info = write_file(storage, lake_table(0, 5), layout.LANDING, "landing")
        lake.server.stop()  # the endpoint is down: every request fails
        with pytest.raises(LakeError) as failed:
            storage.read_footer(info.key)
        assert not isinstance(failed.value, CorruptFileError)
        storage.close()


def test_the_lake_url_and_the_aws_environment() -> None:
    assert parse_s3_url("s3://bucket/some/prefix/") == ("bucket", "some/prefix")
    assert parse_s3_url("s3://bucket") == ("bucket", "")
    for bad in ("s3:///prefix", "gs://bucket/p", "/local/path", "s3://bucket/p?x=1"):
        with pytest.raises(ValueError, match="s3://bucket/prefix"):
            parse_s3_url(bad)
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_REGION": "eu-west-1", "AWS_ALLOW_HTTP": "", "HOME": "/"}
    assert s3_options(env) == {"aws_endpoint": "http://127.0.0.1:9", "aws_region": "eu-west-1"}


def test_scratch_directories_of_dead_writers_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    # A writer killed between writing a file locally and uploading it leaves its scratch directory behind.
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = tmp_path / f"badge-lake-{int(gone.stdout)}-abc123"
    dead.mkdir()
    (dead / "landing-x.parquet.1234.tmp").write_bytes(b"half a file")
    alive = tmp_path / f"badge-lake-{os.getppid()}-def456"  # a running process's: never touched
    alive.mkdir()
    other = tmp_path / "badge-lake-notapid"
    other.mkdir()
    mine = new_scratch_dir(tmp_path)
    assert mine.name.startswith(f"badge-lake-{os.getpid()}-") and mine.is_dir()
    assert not dead.exists() and alive.exists() and other.exists()
