"""Large files published to S3 (moto's server) go up as a multipart upload that is still create-only.

At or above ``multipart_threshold`` a file is uploaded in parts of ``part_size`` and the upload is completed
with ``If-None-Match: *``: the object appears whole or not at all, never over another, and whatever fails
(the condition refused, a part that does not go up) the upload is aborted so no parts stay behind. Smaller
files keep the single conditional PUT. The thresholds are lowered here (S3's, and moto's, smallest part is
5 MiB, so the parts are 5 MiB and a file of about 12.8 MB takes three).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from botocore.exceptions import EndpointConnectionError

from lake import layout, objectstore
from lake.objectstore import MIN_PART_SIZE, ObjectStorage
from testkit.s3 import S3Lake, s3_lake
from utils.errors import CommitError, LakeError

pytestmark = pytest.mark.integration
__all__ = ["s3_lake"]  # the fixture, imported for pytest

PART = MIN_PART_SIZE  # 5 MiB: the smallest part S3 (and moto) accept before the last one
THRESHOLD = 6 * 1024 * 1024
BIG_ROWS = 1_600_000  # one uncompressed int64 column: about 12.8 MB, three parts of 5 MiB
NAME = "big.parquet"


class SpyClient:
    """A boto3 S3 client that records the parts it sends and ``close()``, and can fail one part."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.part_sizes: list[int] = []
        self.fail_part: int | None = None
        self.error: BaseException = EndpointConnectionError(endpoint_url="http://127.0.0.1:9")
        self.closed = False

    def upload_part(self, **kwargs: Any) -> Any:
        self.part_sizes.append(len(kwargs["Body"]))
        if kwargs["PartNumber"] == self.fail_part:
            raise self.error
        return self.client.upload_part(**kwargs)

    def close(self) -> None:
        self.closed = True
        self.client.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


@pytest.fixture
def spies(monkeypatch: pytest.MonkeyPatch) -> list[SpyClient]:
    """Every boto3 client ObjectStorage builds, wrapped in a :class:`SpyClient`."""
    made: list[SpyClient] = []
    build = objectstore._boto3_s3

    def spied(options: Any) -> SpyClient:
        made.append(SpyClient(build(options)))
        return made[-1]

    monkeypatch.setattr(objectstore, "_boto3_s3", spied)
    return made


@pytest.fixture
def storage(s3_lake: S3Lake) -> Iterator[ObjectStorage]:
    lake = ObjectStorage(s3_lake.url, s3_lake.env, multipart_threshold=THRESHOLD, part_size=PART)
    yield lake
    lake.close()


def big_table(seed: int) -> pa.Table:
    """Random int64s, which do not compress: the file's size is about 8 bytes a row."""
    return pa.table({"x": np.random.default_rng(seed).integers(0, 2**62, BIG_ROWS)})


def stage(storage: ObjectStorage, table: pa.Table, name: str = NAME) -> tuple[Path, bytes]:
    """Write ``table`` to a staged local file; its path and its bytes (publishing removes the file)."""
    with storage.staged(name) as tmp:
        pq.write_table(table, tmp, compression="none", use_dictionary=False)
    return tmp, tmp.read_bytes()


def object_path(lake: S3Lake, key: str) -> str:
    return f"/{lake.bucket}/{lake.prefix}/{key}"


def requests_to(lake: S3Lake, key: str) -> list[tuple[str, str, str | None, int]]:
    """(method, kind, If-None-Match, status) of each request the server answered for ``key``."""
    out = []
    for r in lake.requests.entries():
        if r.path != object_path(lake, key):
            continue
        if r.query == "uploads":
            kind = "create"
        elif "partNumber=" in r.query:
            kind = "part"
        elif r.query.startswith("uploadId="):
            kind = "complete" if r.method == "POST" else "abort" if r.method == "DELETE" else r.query
        else:
            kind = "object"
        out.append((r.method, kind, r.if_none_match, r.status))
    return out


def pending_uploads(lake: S3Lake) -> list[Any]:
    return list(lake.boto3_client().list_multipart_uploads(Bucket=lake.bucket).get("Uploads", []))


def test_a_large_file_goes_up_in_parts_and_reads_back_whole(
    s3_lake: S3Lake, storage: ObjectStorage, spies: list[SpyClient]
) -> None:
    tmp, written = stage(storage, big_table(0))
    assert len(written) > 2 * PART
    info = storage.publish(tmp, layout.COMPACTED, NAME)
    assert not tmp.exists()  # the local copy is gone
    assert info.key == f"{layout.COMPACTED}/{NAME}" and info.size == len(written)
    [spy] = spies
    assert len(spy.part_sizes) >= 3 and sum(spy.part_sizes) == len(written)
    assert max(spy.part_sizes) == PART  # read one part at a time
    parts = len(spy.part_sizes)
    assert requests_to(s3_lake, info.key)[: parts + 2] == [
        ("POST", "create", None, 200),
        *[("PUT", "part", None, 200)] * parts,
        ("POST", "complete", "*", 200),  # the completion is the conditional write
    ]
    head = s3_lake.boto3_client().head_object(Bucket=s3_lake.bucket, Key=f"{s3_lake.prefix}/{info.key}")
    assert head["ETag"].strip('"').endswith(f"-{parts}")  # S3 assembled it from the parts
    assert storage.read_bytes(info.key) == written  # byte for byte
    footer = storage.read_footer(info.key)
    assert footer.num_rows == BIG_ROWS
    assert storage.list_files(layout.COMPACTED) == [info]
    assert pending_uploads(s3_lake) == []
    storage.close()
    assert spy.closed


@pytest.mark.parametrize("first", ["small", "large"])
def test_a_second_publish_of_a_large_file_is_refused_and_leaves_nothing(
    s3_lake: S3Lake, storage: ObjectStorage, first: str
) -> None:
    if first == "small":  # the key taken by a single conditional PUT
        with storage.staged(NAME) as tmp:
            pq.write_table(pa.table({"x": [1, 2, 3]}), tmp)
        original = tmp.read_bytes()
    else:
        tmp, original = stage(storage, big_table(1))
    info = storage.publish(tmp, layout.COMPACTED, NAME)
    s3_lake.requests.clear()
    again, other = stage(storage, big_table(2))
    assert other != original
    with pytest.raises(CommitError, match="an object of that name exists"):
        storage.publish(again, layout.COMPACTED, NAME)
    sent = requests_to(s3_lake, info.key)
    assert sent[-2:] == [
        ("POST", "complete", "*", 412),  # S3 refused the completion
        ("DELETE", "abort", None, 204),  # and the parts were dropped
    ]
    assert not again.exists()
    assert storage.read_bytes(info.key) == original  # the first object stands, untouched
    assert storage.list_files(layout.COMPACTED) == [info]
    assert pending_uploads(s3_lake) == []


@pytest.mark.parametrize("error", [EndpointConnectionError(endpoint_url="http://127.0.0.1:9"), KeyboardInterrupt()])
def test_a_part_that_fails_aborts_the_upload_and_publishes_nothing(
    s3_lake: S3Lake, storage: ObjectStorage, spies: list[SpyClient], error: BaseException
) -> None:
    tmp, _ = stage(storage, big_table(3))
    storage._s3_client()  # built now, to arm it
    [spy] = spies
    spy.fail_part, spy.error = 2, error
    expected: type[BaseException] = LakeError if isinstance(error, Exception) else KeyboardInterrupt
    with pytest.raises(expected) as raised:
        storage.publish(tmp, layout.COMPACTED, NAME)
    key = f"{layout.COMPACTED}/{NAME}"
    assert [(m, k) for m, k, _, _ in requests_to(s3_lake, key)] == [
        ("POST", "create"),
        ("PUT", "part"),  # the first part went up, the second failed: never completed
        ("DELETE", "abort"),
    ]
    assert not isinstance(raised.value, CommitError)  # a failed request, to retry: not "the name is taken"
    assert not tmp.exists()
    assert len(spy.part_sizes) == 2
    assert not storage.exists(key) and s3_lake.keys(layout.COMPACTED) == []
    assert pending_uploads(s3_lake) == []
    # The name is still free: a new attempt publishes.
    again, written = stage(storage, big_table(3))
    spy.fail_part = None
    assert storage.publish(again, layout.COMPACTED, NAME).size == len(written)
    assert storage.read_bytes(key) == written


def test_a_request_the_store_refuses_is_lake_error_and_aborts(s3_lake: S3Lake, storage: ObjectStorage) -> None:
    # A part answered 403 by the server (moto stored it): not retried, the upload aborted, nothing published.
    tmp, _ = stage(storage, big_table(4))
    key = f"{layout.COMPACTED}/{NAME}"
    with s3_lake.server.fault("PUT", object_path(s3_lake, key), status=403), pytest.raises(LakeError) as raised:
        storage.publish(tmp, layout.COMPACTED, NAME)
    assert [(m, k, status) for m, k, _, status in requests_to(s3_lake, key)] == [
        ("POST", "create", 200),
        ("PUT", "part", 403),
        ("DELETE", "abort", 204),
    ]
    assert not isinstance(raised.value, CommitError)
    assert s3_lake.keys(layout.COMPACTED) == [] and pending_uploads(s3_lake) == []


def fail_if_built(options: Any) -> Any:
    raise AssertionError("a boto3 client was built for a file below the threshold")


def test_a_small_file_takes_one_conditional_put(
    s3_lake: S3Lake, storage: ObjectStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(objectstore, "_boto3_s3", fail_if_built)
    with storage.staged("small.parquet") as tmp:
        pq.write_table(pa.table({"x": list(range(1_000))}), tmp)
    written = tmp.read_bytes()
    assert len(written) < THRESHOLD
    info = storage.publish(tmp, layout.LANDING, "small.parquet")
    assert requests_to(s3_lake, info.key)[0] == ("PUT", "object", "*", 200)
    assert [k for _, k, _, _ in requests_to(s3_lake, info.key)] == ["object", "object"]  # the PUT, then a HEAD
    assert storage.read_bytes(info.key) == written


@pytest.mark.parametrize(("offset", "multipart"), [(0, True), (1, False)])
def test_the_threshold_is_the_first_size_that_goes_in_parts(
    s3_lake: S3Lake, spies: list[SpyClient], offset: int, multipart: bool
) -> None:
    # A file exactly at the threshold goes in parts (one part here: a last part may be small); below, one PUT.
    probe = ObjectStorage(s3_lake.url, s3_lake.env)
    with probe.staged("edge.parquet") as tmp:
        pq.write_table(pa.table({"x": list(range(100))}), tmp)
    written = tmp.read_bytes()
    storage = ObjectStorage(s3_lake.url, s3_lake.env, multipart_threshold=len(written) + offset, part_size=PART)
    try:
        info = storage.publish(tmp, layout.LANDING, "edge.parquet")
        kinds = [k for _, k, _, _ in requests_to(s3_lake, info.key)]
        assert kinds[0] == ("create" if multipart else "object")
        assert bool(spies) is multipart
        assert storage.read_bytes(info.key) == written
    finally:
        storage.close()
        probe.close()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda url: ObjectStorage(url, {}, part_size=MIN_PART_SIZE - 1), "smallest part"),
        (lambda url: ObjectStorage(url, {}, multipart_threshold=0), "multipart_threshold=0"),
        (lambda url: ObjectStorage(url, {}, multipart_threshold=5 * 1024**3 + 1), "a PUT's limit"),
    ],
)
def test_sizes_s3_cannot_take_are_refused(make: Callable[[str], ObjectStorage], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make("s3://bucket/lake")
