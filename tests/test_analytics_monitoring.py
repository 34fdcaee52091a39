"""``@sql_monitoring``: times the materialized result, records rows and files, keeps a bounded history."""

from __future__ import annotations

import threading
import time

import duckdb
import numpy as np
import pandas as pd
import pytest

from analytics.history import summary_frame, timeline_frame
from analytics.monitor import QueryHistory, note_files_scanned, percentile, sql_monitoring


def test_times_execution_including_materialization() -> None:
    history = QueryHistory()

    @sql_monitoring("slow", history)
    def slow() -> pd.DataFrame:
        con = duckdb.connect()
        try:
            # A relation is lazy; .df() runs it: the timer must include that run.
            result: pd.DataFrame = con.sql("SELECT sum(range * range) AS n FROM range(30000000)").df()
            return result
        finally:
            con.close()

    @sql_monitoring("sleep", history)
    def sleepy() -> list[int]:
        time.sleep(0.05)
        return [1, 2, 3]

    assert sleepy() == [1, 2, 3]
    rec = history.records("sleep")[-1]
    assert rec.ms >= 50 and rec.rows == 3 and rec.files == 0 and rec.error is None
    started = time.perf_counter()
    df = slow()
    outside_ms = (time.perf_counter() - started) * 1000
    rec = history.records("slow")[-1]
    assert int(df["n"].iloc[0]) > 0 and rec.rows == 1
    # The record covers the whole call, running the query included (the original's timer covered only
    # building the lazy relation: a fraction of a millisecond of a multi-second query).
    assert 0.9 * outside_ms - 1 <= rec.ms <= outside_ms


def test_refuses_a_lazy_relation() -> None:
    history = QueryHistory()
    con = duckdb.connect()

    @sql_monitoring("lazy", history)
    def lazy() -> object:
        return con.sql("SELECT 1")

    with pytest.raises(TypeError, match="lazy relation"):
        lazy()
    assert history.records("lazy")[-1].error is not None
    con.close()


def test_records_errors_and_reraises() -> None:
    history = QueryHistory()

    @sql_monitoring("broken", history)
    def broken() -> None:
        raise ValueError("no such table")

    with pytest.raises(ValueError, match="no such table"):
        broken()
    rec = history.records("broken")[-1]
    assert rec.error == "ValueError: no such table" and rec.rows == 0
    summary = history.summary()[0]
    assert summary["errors"] == 1 and summary["last_error"] == "ValueError: no such table"


def test_files_scanned_are_counted_and_propagate_to_an_outer_call() -> None:
    history = QueryHistory()

    @sql_monitoring("inner", history)
    def inner() -> int:
        note_files_scanned(3)
        return 7

    @sql_monitoring("outer", history)
    def outer() -> int:
        note_files_scanned(2)
        return inner()

    outer()
    assert history.records("inner")[-1].files == 3
    assert history.records("outer")[-1].files == 5
    note_files_scanned(99)  # outside a monitored call: ignored, no error


def test_history_is_bounded_per_query_and_summarizes_percentiles() -> None:
    history = QueryHistory(per_query=50)

    @sql_monitoring("q", history)
    def q(ms: float) -> None:
        time.sleep(ms / 1000)

    for i in range(60):
        q(1 if i < 55 else 20)
    recs = history.records("q")
    assert len(recs) == 50  # the oldest ten dropped
    ms = [r.ms for r in recs]
    s = history.summary()[0]
    assert s["runs"] == 50
    assert s["p50_ms"] == pytest.approx(float(np.percentile(ms, 50)))
    assert s["p95_ms"] == pytest.approx(float(np.percentile(ms, 95)))
    assert s["last_ms"] == ms[-1] and s["max_ms"] == max(ms)


def test_percentile_matches_numpy() -> None:
    values = [5.0, 1.0, 9.0, 3.0, 7.0, 2.0]
    for q in (0, 25, 50, 90, 95, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
    assert np.isnan(percentile([], 50))
    assert percentile([4.0], 95) == 4.0


def test_history_is_thread_safe() -> None:
    history = QueryHistory(per_query=100_000)

    @sql_monitoring("t", history)
    def t() -> int:
        return 1

    def work() -> None:
        for _ in range(500):
            t()

    threads = [threading.Thread(target=work) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    assert len(history.records("t")) == 4000
    assert history.summary()[0]["runs"] == 4000


def test_history_frames_for_the_dashboard() -> None:
    history = QueryHistory()

    @sql_monitoring("b query", history)
    def b() -> list[int]:
        return [1]

    @sql_monitoring("a query", history)
    def a() -> list[int]:
        note_files_scanned(4)
        return [1, 2]

    for _ in range(3):
        b()
        a()
    summary = summary_frame(history)
    assert list(summary["query"]) == ["a query", "b query"]
    assert list(summary["runs"]) == [3, 3] and list(summary["last_files"]) == [4, 0]
    timeline = timeline_frame(history, last=2)
    assert len(timeline) == 4 and timeline["at"].is_monotonic_increasing
    assert set(timeline.columns) >= {"at", "query", "ms", "rows", "files"}
    assert timeline_frame(QueryHistory()).empty and summary_frame(QueryHistory()).empty
