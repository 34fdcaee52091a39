"""``make bench``: every benchmark in one run, each figure beside a reference measured in the same run.

Each benchmark module exposes ``run(size) -> list[dict]`` returning rows with the keys
``figure, value, unit, reference, reference_value, ratio, target, ok`` and, where a figure is a median
of repeated runs, ``min`` and ``max``. The suite prints one table and writes ``results.json`` and
``results.md`` (with the machine: CPU count, Python and library versions, date). Benchmarks work in
temporary lakes under ``benchmarks/.work/``, never in ``./data_lake``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
WORK = HERE / ".work"
README = HERE.parent / "README.md"
README_START = "<!-- bench:start (generated from benchmarks/results.md by `python -m benchmarks --update-readme`) -->"
README_END = "<!-- bench:end -->"
BENCHMARKS: dict[str, str] = {
    "api": "benchmarks.bench_api",
    "ingest": "benchmarks.bench_ingest",
    "compaction": "benchmarks.bench_compaction",
    "queries": "benchmarks.bench_queries",
    "log": "benchmarks.bench_log",
    "partitions": "benchmarks.bench_partitions",
    "s3": "benchmarks.bench_s3",
}
LIBRARIES = (
    "fastapi",
    "uvicorn",
    "httpx",
    "pyarrow",
    "duckdb",
    "deltalake",
    "numpy",
    "orjson",
    "streamlit",
    "watchdog",
)

Row = dict[str, Any]


def summarize(values: Sequence[float]) -> dict[str, float]:
    """A figure's row fields from repeated measurements: median as ``value``, ``min``, ``max``, ``runs``."""
    return {"value": statistics.median(values), "min": min(values), "max": max(values), "runs": len(values)}


def repeat(func: Callable[[], float], runs: int, warmup: int = 1) -> dict[str, float]:
    """:func:`summarize` of ``runs`` calls after ``warmup`` discarded calls (``func`` returns a figure)."""
    for _ in range(warmup):
        func()
    return summarize([func() for _ in range(runs)])


def timed(func: Callable[[], object]) -> float:
    """Seconds one call of ``func`` takes."""
    start = time.perf_counter()
    func()
    return time.perf_counter() - start


def machine() -> dict[str, Any]:
    versions = {}
    for lib in LIBRARIES:
        try:
            versions[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            versions[lib] = "-"
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "libraries": versions,
    }


def fmt(value: Any) -> str:
    """A table cell: thousands separators, 3 significant digits below 1, '-' for nothing."""
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, int | float):
        v = float(value)
        if abs(v) >= 100:
            return f"{v:,.0f}"
        if abs(v) >= 1:
            return f"{v:,.2f}"
        return f"{v:.3g}"
    return str(value)


def render_markdown(rows: Sequence[Row], info: dict[str, Any], command: str) -> str:
    libs = ", ".join(f"{k} {v}" for k, v in info["libraries"].items())
    lines = [
        f"Measured {info['date']} on {info['cpus']} CPUs, Python {info['python']} ({libs}).",
        f"Reproduce with `{command}`. Values are medians after a warm-up (min-max beside them); each reference",
        "was measured in the same run, so the ratio is the figure to compare across machines.",
        "",
        "| benchmark | figure | value (min-max) | unit | reference | ratio | target | met |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        spread = f" ({fmt(r['min'])}-{fmt(r['max'])})" if r.get("min") is not None else ""
        ref = r.get("reference") or "-"
        if r.get("reference_value") is not None:
            ref = f"{ref}: {fmt(r['reference_value'])}"
        lines.append(
            f"| {r['benchmark']} | {r['figure']} | {fmt(r['value'])}{spread} | {r.get('unit', '')} | {ref} | "
            f"{fmt(r.get('ratio'))} | {r.get('target') or '-'} | {fmt(r.get('ok'))} |"
        )
    return "\n".join(lines) + "\n"


def update_readme(markdown: str, readme: Path = README) -> bool:
    """Replace the README's benchmark block with ``markdown``; False if the markers are missing."""
    text = readme.read_text()
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        return False
    readme.write_text(text[: start + len(README_START)] + "\n" + markdown + text[end:])
    return True


def run_suite(names: Sequence[str], size: str, progress: Callable[[str], None]) -> list[Row]:
    rows: list[Row] = []
    for i, name in enumerate(names, 1):
        progress(f"[{i}/{len(names)}] {name} ({size}) ...")
        started = time.perf_counter()
        module = importlib.import_module(BENCHMARKS[name])
        for row in module.run(size):
            rows.append({"benchmark": name, **row})
        progress(f"[{i}/{len(names)}] {name} done in {time.perf_counter() - started:.0f} s")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--only", choices=sorted(BENCHMARKS), action="append", help="run just this (repeatable)")
    parser.add_argument("--size", choices=("quick", "full"), default="full", help="quick = a smoke run")
    parser.add_argument("--out", type=Path, default=HERE, help="where results.json and results.md go")
    parser.add_argument(
        "--update-readme", action="store_true", help="copy results.md into README.md's benchmark table and exit"
    )
    args = parser.parse_args(argv)
    if args.update_readme:
        if not update_readme((args.out / "results.md").read_text()):
            print(f"error: {README} lacks the benchmark markers", file=sys.stderr)
            return 1
        return 0
    names = args.only or list(BENCHMARKS)
    WORK.mkdir(exist_ok=True)

    def progress(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    rows = run_suite(names, args.size, progress)
    info = machine()
    command = "make bench" + (f" BENCH_ARGS='--size {args.size}'" if args.size != "full" else "")
    if args.only:
        command = f"make bench BENCH_ARGS='{' '.join(f'--only {n}' for n in names)} --size {args.size}'"
    markdown = render_markdown(rows, info, command)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"machine": info, "size": args.size, "rows": rows}, indent=2))
    (args.out / "results.md").write_text(markdown)
    print(markdown)
    return 0
