"""The pipeline on S3-compatible object storage (moto's S3 server): ``DATA_LAKE_PATH=s3://bucket/prefix``.

Judged by a reader independent of the pipeline's own code: delta-rs opening the table at its URL for the
file list and position, boto3 for the bucket's listing and the files' bytes.
"""

from __future__ import annotations

import io
import os
import threading
import time
from typing import Any
from unittest import mock

import numpy as np
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from api.stream_state import STREAM_START_FILE, resolve_stream_start
from lake import layout
from lake.location import open_storage
from lake.objectstore import ObjectStorage
from lake.table import APP_ID, LakeTable
from lake.writer import BufferedWriter, FlushThresholds, write_landing
from processes import compactor as compactor_process
from processes.pipeline import RunOptions, run
from testkit.fake_source import FakeSource
from testkit.processes import free_port, make_settings
from testkit.records import TEST_IDENTITY, make_records
from testkit.s3 import S3Lake, SerializedMotoServer, aws_environment, s3_client, s3_lake
from utils.errors import ConfigError, FencedError
from utils.records import with_duration

pytestmark = pytest.mark.integration
__all__ = ["s3_lake"]  # the fixture, imported for pytest


def table_ids(lake: S3Lake, table: str = "") -> tuple[np.ndarray, int | None]:
    """(every event id in the table's current files, in file order; the pipeline's position) via delta-rs + boto3."""
    url = f"{lake.url}/{table}" if table else lake.url
    dt = DeltaTable(url, storage_options=lake.env)
    client = lake.boto3_client()
    chunks = []
    for uri in dt.file_uris():
        key = uri.removeprefix(f"s3://{lake.bucket}/")
        body = client.get_object(Bucket=lake.bucket, Key=key)["Body"].read()
        chunks.append(pq.read_table(io.BytesIO(body), columns=["event_id"])["event_id"].to_numpy())
    ids = np.concatenate(chunks) if chunks else np.empty(0, np.int64)
    return ids, dt.transaction_version(APP_ID)


def pipeline_settings(lake: S3Lake, **overrides: Any) -> Any:
    return make_settings(lake.url, BATCH_SIZE=500, BUFFER_RECORDS=1_000, **overrides)


def test_the_pipeline_lands_every_record_once_on_s3_and_resumes(s3_lake: S3Lake) -> None:
    settings = pipeline_settings(s3_lake)
    assert run(settings, RunOptions(max_records=5_000, compaction=False), source=FakeSource()) == 0
    ids, position = table_ids(s3_lake)
    assert sorted(ids.tolist()) == list(range(5_000)) and position == 4_999
    # Published with If-None-Match, one PUT each; nothing staged in the bucket (no temp/ on S3).
    landing_puts = s3_lake.requests.matching("PUT", "/landing/")
    assert landing_puts and all(r.if_none_match == "*" and r.status == 200 for r in landing_puts)
    assert not s3_lake.keys(layout.TEMP)

    assert run(settings, RunOptions(max_records=3_000, compaction=False), source=FakeSource()) == 0
    ids, position = table_ids(s3_lake)
    assert sorted(ids.tolist()) == list(range(8_000)) and position == 7_999  # resumed: no gap, no repeat


def test_refused_records_go_to_the_quarantine_table_on_s3(s3_lake: S3Lake) -> None:
    settings = pipeline_settings(s3_lake)
    source = FakeSource(refuse=lambda i: i % 10 == 3)
    assert run(settings, RunOptions(max_records=2_000, compaction=False), source=source) == 0
    ids, position = table_ids(s3_lake)
    refused, _ = table_ids(s3_lake, layout.QUARANTINE)
    assert sorted(refused.tolist()) == [i for i in range(2_000) if i % 10 == 3]
    assert sorted(ids.tolist() + refused.tolist()) == list(range(2_000)) and position == 1_999


def test_an_orphan_of_a_crashed_flush_is_removed_on_restart(s3_lake: S3Lake) -> None:
    settings = pipeline_settings(s3_lake)
    assert run(settings, RunOptions(max_records=1_000, compaction=False), source=FakeSource()) == 0
    storage = open_storage(s3_lake.url)
    orphan = write_landing(storage, with_duration(make_records(1_000, 500)))  # published, never committed
    assert orphan.key in s3_lake.keys(layout.LANDING)
    assert run(settings, RunOptions(max_records=1_000, compaction=False), source=FakeSource()) == 0
    ids, _ = table_ids(s3_lake)
    assert sorted(ids.tolist()) == list(range(2_000))
    assert orphan.key not in s3_lake.keys(layout.LANDING)  # the next start deleted it (its ids were fetched again)


def test_a_second_writer_on_the_same_position_is_fenced_on_s3(s3_lake: S3Lake) -> None:
    storage = open_storage(s3_lake.url)
    first = LakeTable.open_or_create(storage, TEST_IDENTITY)
    second = LakeTable.open(open_storage(s3_lake.url))
    thresholds = FlushThresholds(records=100, interval_seconds=60)
    with BufferedWriter(storage, thresholds, table=first, position=None) as writer:
        writer.add(make_records(0, 100))
    zombie = BufferedWriter(open_storage(s3_lake.url), thresholds, table=second, position=None)
    zombie.start()
    zombie.add(make_records(0, 100))  # the same range, from the same position: a duplicate if it landed
    with pytest.raises(FencedError):
        zombie.close(timeout=10)
    ids, position = table_ids(s3_lake)
    assert sorted(ids.tolist()) == list(range(100)) and position == 99


def test_the_service_remembers_its_stream_start_in_the_bucket(s3_lake: S3Lake) -> None:
    settings = pipeline_settings(s3_lake)
    first = resolve_stream_start(settings)
    assert s3_lake.keys(STREAM_START_FILE) == [STREAM_START_FILE]
    assert resolve_stream_start(settings) == first  # read back, never written twice
    puts = s3_lake.requests.matching("PUT", STREAM_START_FILE)
    assert len(puts) == 1 and puts[0].if_none_match == "*"


def test_the_storage_of_an_s3_lake_is_object_storage(s3_lake: S3Lake) -> None:
    storage = open_storage(s3_lake.url)
    assert isinstance(storage, ObjectStorage) and storage.location == s3_lake.url


def test_a_lake_url_of_another_scheme_is_refused() -> None:
    with pytest.raises(ConfigError, match="s3://bucket/prefix"):
        make_settings("gs://bucket/lake")


def test_a_pipeline_and_a_compactor_started_while_the_store_is_down_wait_for_it() -> None:
    # Reproduction: both exited with status 1 within seconds ("_delta_log/: could not be listed").
    port = free_port()
    server = SerializedMotoServer(port=port)
    endpoint = f"http://127.0.0.1:{port}"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("AWS_")}, **aws_environment(endpoint)}
    with mock.patch.dict(os.environ, env, clear=True):
        settings = make_settings("s3://badge-late/lake", BATCH_SIZE=500, BUFFER_RECORDS=1_000)
        results: dict[str, int] = {}
        pipeline = threading.Thread(
            target=lambda: results.update(
                pipeline=run(settings, RunOptions(max_records=2_000, compaction=False), source=FakeSource())
            )
        )
        stop = threading.Event()
        compactor = threading.Thread(
            target=lambda: results.update(compactor=compactor_process.run(settings, once=True, stop=stop))
        )
        pipeline.start()
        compactor.start()
        time.sleep(3)
        assert pipeline.is_alive() and compactor.is_alive() and results == {}  # waiting, not exited
        with server:
            s3_client(server.endpoint).create_bucket(Bucket="badge-late")
            pipeline.join(120)
            compactor.join(120)
            assert results == {"pipeline": 0, "compactor": 0}
            dt = DeltaTable("s3://badge-late/lake", storage_options=aws_environment(endpoint))
            assert dt.transaction_version(APP_ID) == 1_999
