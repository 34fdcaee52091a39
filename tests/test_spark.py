"""Apache Spark (pyspark, local mode) reads the lake right: over the files of the table's current snapshot it
gets every dashboard figure the analytics engine gets; over the ``landing/`` and ``compacted/`` directories it
counts a compaction's removed inputs again, so the snapshot, not the directories, is what makes it right.

The lake is built by the real code: the pipeline ingests from a FakeSource, the compactor compacts with a
grace period long enough that its removed inputs stay on disk, then the pipeline ingests again. Spark reads
the files ``lake.table.read_snapshot`` lists from the log with plain ``spark.read.parquet`` (Delta's Spark
package cannot be fetched here; the README shows the cluster way). Java comes from
``testkit.provision.JAVA``, found, never installed, by the session fixture: without one the test fails with
the line saying what to install. The Spark session runs in a non-UTC time zone on purpose: the timestamps
are TIMESTAMP_NTZ (naive UTC), so the figures must not move with it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date

import pyarrow.parquet as pq
import pytest
from pyspark.core.context import SparkContext
from pyspark.sql import DataFrame, Row, SparkSession
from pyspark.sql.types import TimestampNTZType

from analytics.engine import LakeAnalytics
from analytics.engine import Snapshot as Figures
from lake import layout
from lake.compaction import Compactor
from lake.storage import LocalStorage
from lake.table import read_snapshot
from processes.pipeline import RunOptions, run
from testkit import provision
from testkit.fake_source import FakeSource
from testkit.processes import make_settings
from utils.records import COMPLIANCE_SECONDS

pytestmark = pytest.mark.integration

FIRST_RUN_RECORDS = 12_000  # 12 landing files, then compacted into one
SECOND_RUN_RECORDS = 5_000  # 5 landing files beside it
SESSION_TIME_ZONE = "Asia/Kolkata"  # UTC+05:30: a shifted reading would move every hour bucket


# -- Java and Spark, once per session ------------------------------------------------------------------
@pytest.fixture(scope="session")
def java_home() -> str:
    """JAVA_HOME of the java testkit.provision.JAVA finds (nothing is installed here); none found fails the test."""
    try:
        java = provision.resolve(provision.JAVA, provision.SystemProbe(os.environ), install=False)
        return provision.java_home(java)
    except provision.ProvisionError as exc:
        missing = str(exc)
    pytest.fail(missing, pytrace=False)  # outside the except: the one line, without a chained traceback


@pytest.fixture(scope="session")
def spark(java_home: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SparkSession]:
    """A small local SparkSession on loopback; stopped, and its JVM ended, when the session ends."""
    scratch = tmp_path_factory.mktemp("spark")
    saved = {name: os.environ.get(name) for name in ("JAVA_HOME", "SPARK_LOCAL_IP")}
    # pyspark starts the JVM with a copy of os.environ; Spark's launcher runs $JAVA_HOME/bin/java
    os.environ.update(JAVA_HOME=java_home, SPARK_LOCAL_IP="127.0.0.1")
    try:
        session = (
            SparkSession.builder.master("local[2]")
            .appName("badge-lake-test")
            .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
            .config("spark.driver.bindAddress", "127.0.0.1")
            .config("spark.driver.host", "127.0.0.1")
            .config("spark.driver.memory", "1g")
            .config("spark.sql.shuffle.partitions", "2")
            .config("spark.default.parallelism", "2")
            .config("spark.local.dir", str(scratch / "local"))
            .config("spark.sql.warehouse.dir", str(scratch / "warehouse"))
            .config("spark.sql.session.timeZone", SESSION_TIME_ZONE)
            .getOrCreate()
        )
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
    gateway = SparkContext._gateway
    if gateway is not None:  # the JVM outlives stop(); closing its stdin is how pyspark tells it to exit
        gateway.shutdown()
        gateway.proc.stdin.close()
        gateway.proc.wait(timeout=30)
        SparkContext._gateway = None
        SparkContext._jvm = None


# -- the lake ------------------------------------------------------------------------------------------
@dataclass
class Lake:
    storage: LocalStorage
    snapshot_uris: list[str]  # the files of the table's current snapshot
    removed_keys: list[str]  # files on disk in landing/ and compacted/ that the table no longer holds


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Lake:
    """Ingested, compacted (its inputs kept on disk within the grace period), ingested again."""
    root = tmp_path_factory.mktemp("spark-lake") / "lake"
    storage = LocalStorage(root)
    storage.ensure_layout()
    settings = make_settings(
        root, BATCH_SIZE=500, BUFFER_RECORDS=1_000, COMPACTION_MIN_FILES=8, COMPACTION_GRACE_SECONDS=3_600
    )
    source = FakeSource()
    assert run(settings, RunOptions(max_records=FIRST_RUN_RECORDS, compaction=False), source=source) == 0
    landing = len(read_snapshot(storage).in_zone(layout.LANDING))  # a flush per 1,000, cut at midnight
    report = Compactor(storage, settings).run_cycle()
    assert [m.files_in for m in report.compactions] == [landing] and report.deleted == []
    assert run(settings, RunOptions(max_records=SECOND_RUN_RECORDS, compaction=False), source=source) == 0

    snap = read_snapshot(storage)
    assert snap.rows == FIRST_RUN_RECORDS + SECOND_RUN_RECORDS
    assert snap.in_zone(layout.COMPACTED) and snap.in_zone(layout.LANDING)
    on_disk = {f.key for zone in (layout.LANDING, layout.COMPACTED) for f in storage.list_tree(zone)}
    removed = sorted(on_disk - set(snap.keys))
    assert len(removed) == landing  # the compaction's inputs, awaiting clean-up
    return Lake(storage, [f"file://{p}" for p in snap.paths], removed)  # "=" kept: Spark takes it literally


@pytest.fixture(scope="module")
def figures(lake: Lake) -> Iterator[Figures]:
    """What the dashboard shows: the analytics engine over the same lake (its default, cached mode)."""
    engine = LakeAnalytics(lake.storage)
    yield engine.snapshot()
    engine.close()


@pytest.fixture(scope="module")
def badge(spark: SparkSession, lake: Lake) -> DataFrame:
    """The view ``badge``: Spark over exactly the snapshot's files, the local equivalent of a Delta read."""
    frame = spark.read.parquet(*lake.snapshot_uris)
    frame.createOrReplaceTempView("badge")
    return frame


def rows(spark: SparkSession, sql: str, **args: object) -> list[Row]:
    """``sql`` over the view ``badge``; values enter as named parameters (``:name``)."""
    return spark.sql(sql, args={"four_hours": COMPLIANCE_SECONDS, **args}).collect()


# -- the figures ---------------------------------------------------------------------------------------
def test_spark_reads_the_timestamps_as_naive_utc(badge: DataFrame) -> None:
    types = {field.name: field.dataType for field in badge.schema.fields}
    assert isinstance(types["badge_in_timestamp"], TimestampNTZType)
    assert isinstance(types["badge_out_timestamp"], TimestampNTZType)
    assert badge.sparkSession.conf.get("spark.sql.session.timeZone") == SESSION_TIME_ZONE


def test_spark_over_the_snapshot_gets_the_dashboards_kpis(
    spark: SparkSession, badge: DataFrame, figures: Figures
) -> None:
    (got,) = rows(
        spark,
        """SELECT count(*) AS total_events, count(DISTINCT event_id) AS distinct_ids,
                  count_if(NOT access_granted) AS denied, count_if(access_granted) AS sessions,
                  count_if(access_granted AND duration_s < :four_hours) AS premature,
                  count_if(access_granted AND duration_s >= :four_hours) AS compliant,
                  max(badge_out_timestamp) AS newest_out
           FROM badge""",
    )
    k = figures.kpis()
    assert got.total_events == got.distinct_ids == k.total_events  # every event once
    assert (got.denied, got.sessions, got.premature, got.compliant) == (k.denied, k.sessions, k.premature, k.compliant)
    assert got.newest_out.replace(tzinfo=UTC) == k.newest_out
    assert k.total_events == FIRST_RUN_RECORDS + SECOND_RUN_RECORDS and k.denied > 0 and 0 < k.premature < k.sessions


def test_spark_over_the_snapshot_gets_the_dashboards_charts(
    spark: SparkSession, badge: DataFrame, figures: Figures
) -> None:
    access = rows(
        spark,
        """SELECT CASE WHEN access_granted THEN 'Granted' ELSE 'Denied' END AS access, count(*) AS events
           FROM badge GROUP BY 1""",
    )
    want = figures.access_distribution()
    assert {r.access: r.events for r in access} == dict(zip(want["access"], want["events"], strict=True))

    premature = rows(
        spark,
        """SELECT dept, building_location AS building, count_if(duration_s < :four_hours) AS premature,
                  count(*) AS sessions
           FROM badge WHERE access_granted GROUP BY 1, 2""",
    )
    want = figures.premature_by_dept_building()
    assert {(r.dept, r.building): (r.premature, r.sessions) for r in premature} == {
        (d, b): (p, s) for d, b, p, s in want[["dept", "building", "premature", "sessions"]].itertuples(index=False)
    }

    # Hour buckets of badge-out from the fields of the naive timestamp (date_trunc would give a TIMESTAMP in
    # the session's time zone, shifted when collected).
    traffic = rows(
        spark,
        """SELECT to_date(badge_out_timestamp) AS day, hour(badge_out_timestamp) AS hour, count(*) AS events,
                  count_if(NOT access_granted) AS denied
           FROM badge GROUP BY 1, 2""",
    )
    want = figures.traffic(bucket="hour")
    got_traffic: dict[tuple[date, int], tuple[int, int]] = {(r.day, r.hour): (r.events, r.denied) for r in traffic}
    assert got_traffic == {
        (t.date(), t.hour): (e, d) for t, e, d in want[["time", "events", "denied"]].itertuples(index=False)
    }
    assert len(got_traffic) > 24  # the stream spans more than a day of hours

    heat = rows(
        spark,
        """SELECT building_location AS building, hour(badge_in_timestamp) AS hour, count(*) AS events
           FROM badge GROUP BY 1, 2""",
    )
    want = figures.building_hour_heatmap()
    assert {(r.building, r.hour): r.events for r in heat} == {
        (b, h): e for b, h, e in want[["building", "hour", "events"]].itertuples(index=False)
    }

    denial = rows(
        spark,
        """SELECT 'Building' AS dimension, building_location AS value, count(*) AS events,
                  count_if(NOT access_granted) AS denied FROM badge GROUP BY 2
           UNION ALL
           SELECT 'Department', dept, count(*), count_if(NOT access_granted) FROM badge GROUP BY 2""",
    )
    want = figures.denial_rates()
    assert {(r.dimension, r.value): (r.events, r.denied) for r in denial} == {
        (d, v): (e, n) for d, v, e, n in want[["dimension", "value", "events", "denied"]].itertuples(index=False)
    }

    by_dept = rows(
        spark,
        """SELECT dept, count(*) AS sessions, count_if(duration_s >= :four_hours) AS compliant,
                  count_if(duration_s < :four_hours) AS premature
           FROM badge WHERE access_granted GROUP BY dept""",
    )
    want = figures.compliance_by_department()
    assert {r.dept: (r.sessions, r.compliant, r.premature) for r in by_dept} == {
        d: (s, c, p) for d, s, c, p in want[["dept", "sessions", "compliant", "premature"]].itertuples(index=False)
    }

    repeat = rows(
        spark,
        """SELECT user_id, min(dept) AS dept, count(*) AS sessions, count_if(duration_s < :four_hours) AS premature
           FROM badge WHERE access_granted GROUP BY user_id HAVING premature >= :min_premature
           ORDER BY premature DESC, user_id LIMIT 20""",
        min_premature=2,
    )
    want = figures.repeat_offenders(min_premature=2, limit=20)
    got_repeat = [(r.user_id, r.dept, r.sessions, r.premature) for r in repeat]
    assert got_repeat == [tuple(r) for r in want[["user_id", "dept", "sessions", "premature"]].itertuples(index=False)]
    assert len(got_repeat) == 20


# -- the regression: directories are not the lake ------------------------------------------------------
def test_spark_reading_the_directories_counts_the_removed_files_too(
    spark: SparkSession, lake: Lake, figures: Figures
) -> None:
    zones = [(lake.storage.root / zone).as_uri() for zone in (layout.LANDING, layout.COMPACTED)]
    # Every file under the two directories, date partitions included (a naive reader's "the lake").
    files = spark.read.option("recursiveFileLookup", "true").parquet(*zones)
    (got,) = files.selectExpr("count(*) AS n", "count(DISTINCT event_id) AS ids").collect()
    removed_rows = sum(pq.read_metadata(lake.storage.path(key)).num_rows for key in lake.removed_keys)
    total = figures.kpis().total_events
    assert got.ids == total  # the same events...
    assert got.n == total + removed_rows > total  # ...the compaction's inputs counted a second time
    assert removed_rows == FIRST_RUN_RECORDS
