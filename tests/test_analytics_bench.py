"""Smoke run of the query benchmark (tiny lakes in tmp_path): it runs, covers every query, and its forms agree."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import bench_queries as bq
from lake import audit
from lake.table import read_snapshot

pytestmark = pytest.mark.slow


def test_quick_benchmark_covers_every_query_and_form(tmp_path: Path) -> None:
    rows = bq.run("quick", work=tmp_path)
    figures = {r["figure"] for r in rows}
    for name in bq.QUERIES:
        assert sum(1 for f in figures if f.startswith(f"{name}: ") and "docs/original.md" not in f) == 5, name
    assert any(f.startswith("full refresh: dashboard, compacted, 1 new landing file") for f in figures)
    for r in rows:
        # >= 0: the whole lake's freshness comes from the log's statistics, in microseconds.
        assert r["value"] >= 0 and r["unit"] == "ms", r
        if r["reference_value"] and r["value"] >= 2:  # both are rounded to 0.1 ms
            assert r["ratio"] == pytest.approx(r["reference_value"] / r["value"], rel=0.05)
    # The three stored forms hold the same records, the first two as tables; the timed landing files went
    # into a clone of the compacted lake, which is gone again.
    lakes = bq.build(
        tmp_path / "queries-quick", **{k: bq.SIZES["quick"][k] for k in ("rows", "small_files", "compacted_files")}
    )
    compacted, small = read_snapshot(lakes.compacted), read_snapshot(lakes.small)
    assert compacted.rows == small.rows == lakes.rows
    assert compacted.committed_event_id == small.committed_event_id == lakes.rows - 1
    assert len(compacted.files) == bq.SIZES["quick"]["compacted_files"]
    assert len(small.files) == bq.SIZES["quick"]["small_files"]
    for lake in (lakes.compacted, lakes.small):
        report = audit.verify(lake, grace_seconds=30)
        assert report.ok and report.table_rows == lakes.rows, report.problems
    assert not (tmp_path / "queries-quick" / "new-file-clone").exists()
    (total, *_), *_ = bq.original_query(lakes.original, "kpis")
    assert total == lakes.rows
