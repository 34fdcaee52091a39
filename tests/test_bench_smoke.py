"""`make bench` never rots: the whole suite runs at its quick size and writes its table (no targets judged)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks import suite

pytestmark = pytest.mark.slow


def test_quick_suite_runs_every_benchmark_and_writes_results(tmp_path: Path) -> None:
    assert suite.main(["--size", "quick", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["size"] == "quick"
    assert data["machine"]["cpus"] >= 1 and data["machine"]["libraries"]["pyarrow"] != "-"
    seen = {row["benchmark"] for row in data["rows"]}
    assert seen == set(suite.BENCHMARKS)
    for row in data["rows"]:
        assert isinstance(row["value"], int | float) and math.isfinite(row["value"]), row
        assert row["figure"] and row["unit"], row
    markdown = (tmp_path / "results.md").read_text()
    assert markdown.count("\n| ") >= len(data["rows"])
    assert "BENCH_ARGS='--size quick'" in markdown


def test_update_readme_replaces_only_the_marked_block(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{suite.README_START}\nold table\n{suite.README_END}\noutro\n")
    assert suite.update_readme("| new | table |\n", readme)
    text = readme.read_text()
    assert "old table" not in text and "| new | table |" in text
    assert text.startswith("intro\n") and text.endswith(f"{suite.README_END}\noutro\n")
    bare = tmp_path / "bare.md"
    bare.write_text("no markers here\n")
    assert not suite.update_readme("x", bare)


def test_scale_benchmark_runs_end_to_end_at_a_tiny_size(tmp_path: Path) -> None:
    """`make bench-scale` never rots: 200k events through the real processes, every figure in the report."""
    from benchmarks import bench_scale

    small = {  # small files and a compactor that acts at once, so that 200k events make compactions
        "BATCH_SIZE": 10_000,
        "BUFFER_RECORDS": 10_000,
        "COMPACTION_MIN_FILES": 4,
        "COMPACTION_TARGET_MIN_MB": 1,
        "COMPACTION_TARGET_MAX_MB": 4,
        "COMPACTION_GRACE_SECONDS": 2,
        "COMPACTION_DEBOUNCE_SECONDS": 0.2,
        "COMPACTION_SWEEP_SECONDS": 1,
    }
    argv = ["--scales", "200k", "--work", str(tmp_path / "work"), "--out", str(tmp_path), "--warm-runs", "2"]
    for key, value in small.items():
        argv += ["--set", f"{key}={value}"]
    assert bench_scale.main(argv) == 0
    data = json.loads((tmp_path / "results-scale.json").read_text())
    assert data["scales"] == ["200k"] and data["settings"]["COMPACTION_MIN_FILES"] == "4"
    run = data["runs"][0]
    assert run["events"] == 200_000 and run["verify_status"] == 0
    assert run["compactions_logged"] >= 1 and run["compacted_rows_committed"] >= 200_000
    assert run["samples"], "no backlog sample"
    rows = {row["key"]: row for row in data["rows"] if "key" in row}
    assert set(rows) == {f.key for f in bench_scale.FIGURES}
    for row in data["rows"]:
        value = row["values"]["200k"]
        assert isinstance(value, int | float) and math.isfinite(value), row
    assert rows["cold_refresh_ms"]["ok"] is not None and rows["verify_status"]["ok"] is True
    markdown = (tmp_path / "results-scale.md").read_text()
    assert markdown.count("\n| ") == len(data["rows"]) + 2  # the header, the rule, a line per figure
    assert "make bench-scale SCALES=200k" in markdown
    assert not any((tmp_path / "work").iterdir()), "the lake was not deleted"


def test_scale_sizes_parse_and_label() -> None:
    from benchmarks.bench_scale import parse_scale, scale_label

    assert [parse_scale(s) for s in ("20M", "200m", "1B", "1G", "200k", "1.5M", "5000")] == [
        20_000_000,
        200_000_000,
        1_000_000_000,
        1_000_000_000,
        200_000,
        1_500_000,
        5_000,
    ]
    assert [scale_label(n) for n in (20_000_000, 1_000_000_000, 200_000, 1_500_000, 999)] == [
        "20M",
        "1B",
        "200k",
        "1.5M",
        "999",
    ]
    with pytest.raises(ValueError, match="not a size"):
        parse_scale("20 million")
