"""The import layers (pyproject.toml's importlinter contract) hold, and a planted back-edge breaks them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
PACKAGES = ("api", "source", "processes", "ingestion", "analytics", "lake", "utils", "testkit", "benchmarks", "tests")


def _copy_tree(dest: Path) -> None:
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    for package in PACKAGES:
        shutil.copytree(ROOT / package, dest / package, ignore=shutil.ignore_patterns("__pycache__", ".work"))


def _lint(cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=120, env={"PATH": ""}
    )


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("layers")
    _copy_tree(dest)
    return dest


def test_the_repository_keeps_its_layers() -> None:
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "planted", "message"),
    [
        ("lake/storage.py", "import api.main", "lake is not allowed to import api"),
        ("lake/writer.py", "from source import client", "lake is not allowed to import source"),
        ("utils/records.py", "import lake.storage", "utils is not allowed to import lake"),
        ("analytics/figures.py", "import ingestion.fetcher", "analytics is not allowed to import ingestion"),
        ("ingestion/fetcher.py", "import processes.cli", "ingestion is not allowed to import processes"),
        ("testkit/lakes.py", "import benchmarks.suite", "testkit is not allowed to import benchmarks"),
    ],
)
def test_a_planted_back_edge_fails_the_lint(tree: Path, module: str, planted: str, message: str) -> None:
    target = tree / module
    original = target.read_text()
    target.write_text(original + f"\n{planted}  # planted back-edge\n")
    try:
        result = _lint(tree)
    finally:
        target.write_text(original)
    assert result.returncode != 0
    assert message in result.stdout.replace("\n", " ")
