"""The README's commands and settings exist: .env.example, the settings table and the README agree."""

from __future__ import annotations

import re
from pathlib import Path

from testkit.processes import ROOT
from utils.config import SPECS, load_settings

ENV_LINE = re.compile(r"^([A-Z][A-Z0-9_]*)=(.*)$")


def _env_example() -> dict[str, str]:
    out: dict[str, str] = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        m = ENV_LINE.match(line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def test_env_example_lists_every_setting_and_nothing_else() -> None:
    example = _env_example()
    assert set(example) == {s.name for s in SPECS}


def test_env_example_values_are_the_defaults() -> None:
    example = _env_example()
    assert load_settings(example, env_file=None) == load_settings({}, env_file=None)


def test_every_setting_has_a_one_line_meaning_in_env_example() -> None:
    lines = (ROOT / ".env.example").read_text().splitlines()
    for i, line in enumerate(lines):
        if ENV_LINE.match(line):
            assert lines[i - 1].startswith("# "), f"{line} has no comment line above it"


def test_readme_opens_with_the_two_commands_and_names_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    head = readme[:400]
    assert "make run" in head and "make test" in head
    missing = [s.name for s in SPECS if f"`{s.name}`" not in readme and f"`{s.name} " not in readme]
    assert not missing, f"settings missing from the README: {missing}"


def test_readme_commands_exist() -> None:
    readme = (ROOT / "README.md").read_text()
    makefile = (ROOT / "Makefile").read_text()
    for target in re.findall(r"`make (\w+)`", readme):
        assert re.search(rf"^{target}:", makefile, re.M), f"make {target} is in the README but not the Makefile"
    for script in ("pipeline.py", "compaction_monitoring.py", "analytics_app.py", "api/main.py", "lake/__main__.py"):
        assert (ROOT / script).is_file(), script
    image = re.search(r"!\[[^]]*\]\(([^)]+)\)", readme)
    assert image is not None and (ROOT / image.group(1)).is_file()


PACKAGES = "analytics|api|benchmarks|docs|ingestion|lake|processes|source|testkit|tests|utils"
# a repository path: one of our top-level directories, then a file with an extension (not part of a URL)
REPO_PATH = re.compile(rf"(?<![\w/.:-])((?:{PACKAGES})/[\w./-]*\.(?:py|md|toml|txt|json|png))\b")
# a document named on its own (README.md, lake-protocol.md, ...)
DOCUMENT = re.compile(r"(?<![\w/.-])([\w-]+\.md)\b")
SKIP = {".venv", ".git", ".work", "data_lake", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache"}


def _sources() -> list[Path]:
    out = []
    for path in ROOT.rglob("*"):
        wanted = path.suffix in {".py", ".md", ".toml"} or path.name in {"Makefile", ".env.example"}
        if wanted and SKIP.isdisjoint(path.relative_to(ROOT).parts) and path.is_file():
            out.append(path)
    return out


def test_every_file_named_in_code_or_docs_is_in_the_repository() -> None:
    documents = {p.name for p in ROOT.rglob("*.md") if SKIP.isdisjoint(p.relative_to(ROOT).parts)}
    dangling = []
    for source in _sources():
        text = source.read_text()
        for m in REPO_PATH.finditer(text):
            if not (ROOT / m.group(1)).exists():
                dangling.append(f"{source.relative_to(ROOT)}: {m.group(1)}")
        for m in DOCUMENT.finditer(text):
            name = m.group(1)
            # a name a test or benchmark creates in a temporary directory is not a reference
            if name not in documents and not re.search(rf"[\"']{re.escape(name)}[\"']", text):
                dangling.append(f"{source.relative_to(ROOT)}: {name}")
    assert not dangling, "names of files that are not in the repository:\n" + "\n".join(sorted(set(dangling)))
