"""The dashboard in a real browser: ``streamlit run`` on a loopback port, headless Chromium via playwright.

The browser is ``BROWSER_EXECUTABLE`` (``make test`` sets it from ``python -m testkit.provision browser``,
which installs one when needed). Run directly, the test finds one the same way but installs nothing: without
a browser it fails with the line saying what to install, it is never skipped. Run as a script to refresh
the README's screenshot over a lake of a few million rows::

    .venv/bin/python -m tests.test_dashboard_browser --rows 3000000 --out docs/dashboard.png
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from lake.storage import LocalStorage
from testkit import lakes as lg
from testkit import provision
from testkit.processes import BIN, ROOT, ManagedProcess, free_port, http_ok, wait_until

pytestmark = [pytest.mark.browser, pytest.mark.integration]

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = ROOT / "test-artifacts"
KPIS = ("Total logs", "Access denied", "Compliant sessions", "Compliance rate")


@functools.cache
def chromium() -> str:
    """``BROWSER_EXECUTABLE``, else a browser found as ``make test`` would, installing nothing.

    Its absence fails the test with the one line saying what to install; it is never skipped silently.
    """
    try:
        return provision.resolve(provision.BROWSER, provision.SystemProbe(os.environ), install=False)
    except provision.ProvisionError as exc:
        missing = str(exc)
    pytest.fail(missing, pytrace=False)


@contextlib.contextmanager
def dashboard(lake: Path, log_path: Path) -> Iterator[str]:
    """``streamlit run analytics_app.py`` over ``lake`` on a free loopback port; always stopped."""
    port = free_port()
    args = [str(BIN / "streamlit"), "run", "analytics_app.py", "--server.port", str(port)]
    args += ["--server.address", "127.0.0.1", "--server.headless", "true"]
    env = {"DATA_LAKE_PATH": str(lake), "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"}
    with ManagedProcess(args, env=env, log_path=log_path) as proc:
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until(lambda: http_ok(f"{url}/_stcore/health"), 60, what="streamlit health")
        except AssertionError:
            raise AssertionError(f"streamlit did not start:\n{proc.output()[-3000:]}") from None
        yield url


ANALYSIS_TITLES = (
    "Access distribution",
    "Compliance (granted sessions)",
    "Premature badge-outs (< 4 h) by department and building",
    "Traffic over time",
    "Arrivals by building and hour of day (badge-in, UTC)",
    "Denial rate by building and department",
    "Compliance rate by department",
    "Repeat non-compliant employees",
)


def capture(url: str, shot: Path, *, charts: int, height: int = 2300, settle_s: float = 1.5) -> dict[str, str]:
    """Open the page, wait for the KPIs and ``charts`` Plotly charts, save a screenshot, return the KPI texts."""
    from playwright.sync_api import sync_playwright

    executable = chromium()  # before playwright starts: finding playwright's own Chromium starts it too
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            # Tall viewport: Streamlit scrolls inside its own container, so a full-page shot needs the height.
            page = browser.new_page(viewport={"width": 1600, "height": height})
            page.goto(url, wait_until="domcontentloaded", timeout=60_000)
            page.wait_for_selector('[data-testid="stMetricValue"]', timeout=90_000)
            page.wait_for_function(
                f"document.querySelectorAll('.js-plotly-plot .main-svg').length >= {charts}", timeout=90_000
            )
            page.wait_for_timeout(int(settle_s * 1000))  # let the last charts finish drawing
            metrics: dict[str, str] = {}
            for element in page.query_selector_all('[data-testid="stMetric"]'):
                label = element.query_selector('[data-testid="stMetricLabel"]')
                value = element.query_selector('[data-testid="stMetricValue"]')
                if label and value:
                    metrics[label.inner_text().strip()] = value.inner_text().strip()
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot))
            metrics["_charts"] = str(page.evaluate("document.querySelectorAll('.js-plotly-plot').length"))
            titles = page.evaluate(
                "Array.from(document.querySelectorAll('.js-plotly-plot .gtitle')).map(e => e.textContent)"
            )
            metrics["_titles"] = "\n".join(str(t) for t in titles)
            return metrics
        finally:
            browser.close()


def test_dashboard_in_chromium(tmp_path: Path) -> None:
    chromium()
    lake = tmp_path / "lake"
    table = lg.make_table(20_000, seed=31, users=500)
    lg.publish(LocalStorage(lake), table, landing_files=5, compacted_share=0.5)
    truth = lg.truth_kpis(lg.truth_frame(table))
    sessions, compliant = int(truth["sessions"] or 0), int(truth["compliant"] or 0)
    expected = {
        "Total logs": f"{truth['total_events']:,}",
        "Access denied": f"{truth['denied']:,}",
        "Compliant sessions": f"{compliant:,}",
        "Compliance rate": f"{compliant / sessions * 100:.1f} %",
    }
    shot = ARTIFACTS / "dashboard.png"
    with dashboard(lake, tmp_path / "streamlit.log") as url:
        metrics = capture(url, shot, charts=10)
    assert {k: metrics.get(k) for k in KPIS} == expected
    # The ten analyses are always drawn; the lake-health and query-history charts join them as data allows.
    assert int(metrics["_charts"]) >= 10
    titles = metrics["_titles"].splitlines()
    for title in ANALYSIS_TITLES:
        assert any(t.startswith(title) for t in titles), (title, titles)
    assert "Freshness" in metrics and metrics["Freshness"] != "—"
    assert shot.stat().st_size > 50_000  # a rendered page, not a blank one


# -- the README screenshot ----------------------------------------------------------------------------
def build_demo_lake(root: Path, rows: int) -> None:
    """A lake like a running platform leaves: compacted files, a landing backlog, a quarantined batch, committed.

    Records come from the generator service's own model when it is available (else from lakegen),
    ending a minute ago, so the freshness KPI reads like a live pipeline's.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lake import layout
    from lake.filestats import FileStats
    from lake.identity import StreamIdentity
    from lake.parquet import write_file
    from lake.table import LakeTable
    from utils.records import with_duration

    storage = LocalStorage(root)
    storage.ensure_layout()
    try:
        from api.generators import generate_table

        def chunk(lo: int, n: int, start: datetime) -> pa.Table:
            return with_duration(generate_table(42, lo, n, stream_start=start, events_per_second=0))

        # Choose the stream start so that the newest event is a few seconds old when the page opens
        # (iterated: the stream's rate follows a weekly shape, so moving the start does not move every
        # event equally).
        start = datetime.now(UTC) - timedelta(seconds=rows / 200)
        for _ in range(12):
            newest = chunk(rows - 1, 1, start).column("badge_out_timestamp")[0].as_py().replace(tzinfo=UTC)
            miss = datetime.now(UTC) - newest
            if abs(miss.total_seconds()) < 1:
                break
            start += miss
        tables = (chunk(lo, min(500_000, rows - lo), start) for lo in range(0, rows, 500_000))
        identity = StreamIdentity(
            seed=42, events_per_second=200.0, stream_start=start.isoformat().replace("+00:00", "Z")
        )
    except ImportError:
        tables = (with_duration(t) for t in lg.generate(rows, chunk_rows=500_000))
        identity = StreamIdentity(seed=7, events_per_second=200.0, stream_start="2025-03-03T00:00:00Z")
    pieces = list(tables)
    table = pa.concat_tables(pieces)
    backlog = max(1, rows // 200)
    head, tail = table.slice(0, rows - backlog * 12), table.slice(rows - backlog * 12)
    lake = LakeTable.open_or_create(storage, identity)  # before any data file: a lake without a log is unmigrated
    files = [
        write_file(storage, part, layout.COMPACTED, "compacted", {layout.META_SOURCES: "[]"})
        for part in lg.split(head, 3)
    ]
    files += [write_file(storage, part, layout.LANDING, "landing") for part in lg.split(tail, 12)]
    position = None
    for info in files:  # each committed as the pipeline (or, for the first three, the compactor) would
        stats = FileStats.of_footer(pq.read_metadata(storage.path(info.key)))
        lake.append(info, stats, through_event_id=stats.event_id_max or 0, expected=position)
        position = stats.event_id_max
    lg.add_quarantine(storage, ["badge_out before badge_in"] * 17 + ["unknown department"] * 4, first_event_id=rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=3_000_000)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "dashboard.png")
    parser.add_argument("--height", type=int, default=2750)
    parser.add_argument("--lake", type=Path, help="an existing lake (one `make run` is filling) instead of a built one")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dashboard-shot-"))
    try:
        lake = args.lake or work / "lake"
        if args.lake is None:
            started = time.perf_counter()
            build_demo_lake(lake, args.rows)
            print(f"built {args.rows:,} rows in {time.perf_counter() - started:.1f} s")
        with dashboard(lake, work / "streamlit.log") as url:
            metrics = capture(url, args.out, charts=10, height=args.height, settle_s=3)
        print({k: v for k, v in metrics.items() if not k.startswith("_")})
        print(f"saved {args.out}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
