"""Smoke run of the query benchmark (tiny lakes in tmp_path): it runs, covers every query, and its forms agree."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import bench_queries as bq
from lake.liveset import live_set

pytestmark = pytest.mark.slow


def test_quick_benchmark_covers_every_query_and_form(tmp_path: Path) -> None:
    rows = bq.run("quick", work=tmp_path)
    figures = {r["figure"] for r in rows}
    for name in bq.QUERIES:
        assert sum(1 for f in figures if f.startswith(f"{name}: ") and "docs/original.md" not in f) == 5, name
    assert any(f.startswith("full refresh: dashboard, compacted, 1 new landing file") for f in figures)
    for r in rows:
        assert r["value"] > 0 and r["unit"] == "ms", r
        if r["reference_value"]:
            assert r["ratio"] == pytest.approx(r["reference_value"] / r["value"], rel=0.05)  # both are rounded
    # The three stored forms hold the same records; the timed landing files were removed again.
    lakes = bq.build(
        tmp_path / "queries-quick", **{k: bq.SIZES["quick"][k] for k in ("rows", "small_files", "compacted_files")}
    )
    assert live_set(lakes.compacted).rows == live_set(lakes.small).rows == lakes.rows
    assert len(live_set(lakes.small).files) == bq.SIZES["quick"]["small_files"]
    (total, *_), *_ = bq.original_query(lakes.original, "kpis")
    assert total == lakes.rows
