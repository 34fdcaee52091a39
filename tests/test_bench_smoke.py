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
