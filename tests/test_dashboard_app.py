"""The dashboard under Streamlit's AppTest: empty and populated lakes, filters, and a failing query."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from analytics.engine import Snapshot
from lake import layout
from lake.parquet import write_file
from lake.storage import LocalStorage
from lake.table import read_snapshot
from testkit import lakes as lg
from testkit.processes import ROOT
from utils.config import get_settings

APP = str(ROOT / "analytics_app.py")
TIMEOUT = 60


@pytest.fixture
def use_lake(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """Point the app's settings at a lake (the app reads DATA_LAKE_PATH through get_settings())."""

    def point(path: Path) -> None:
        monkeypatch.setenv("DATA_LAKE_PATH", str(path))
        get_settings.cache_clear()

    yield point
    get_settings.cache_clear()
    st.cache_resource.clear()


@pytest.fixture(scope="module")
def populated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    root = tmp_path_factory.mktemp("lake")
    table = lg.make_table(12_000, seed=21, users=400)
    built = lg.publish(LocalStorage(root), table, landing_files=4, compacted_share=0.5)
    lg.add_quarantine(LocalStorage(root), ["bad timestamp"], first_event_id=table.num_rows)
    # Beside the table, in no commit: the three replaced landing files, a foreign file and three forgeries.
    lg.add_foreign_file(built.storage)
    lg.add_forged_files(built.storage, built)
    return root, lg.truth_frame(table)


def _run(at: AppTest) -> AppTest:
    at.run(timeout=TIMEOUT)
    assert not at.exception, [e.value for e in at.exception]
    return at


def _metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def _expected(df: pd.DataFrame) -> dict[str, str]:
    t = lg.truth_kpis(df)
    sessions, compliant = int(t["sessions"] or 0), int(t["compliant"] or 0)
    return {
        "Total logs": f"{t['total_events']:,}",
        "Access denied": f"{t['denied']:,}",
        "Compliant sessions": f"{compliant:,}",
        "Compliance rate": f"{compliant / sessions * 100:.1f} %" if sessions else "—",
    }


def _charts(at: AppTest) -> int:
    return len(at.get("plotly_chart"))


def test_empty_lake_explains_how_to_start(use_lake, lake_root: Path) -> None:
    use_lake(lake_root)
    at = _run(AppTest.from_file(APP, default_timeout=TIMEOUT))
    text = " ".join(i.value for i in at.info)
    assert "No badge data yet" in text and "python pipeline.py" in text and "does not exist" not in text
    assert _charts(at) == 0 and not at.error
    assert "Total logs" not in _metrics(at)


def test_missing_lake_says_so(use_lake, tmp_path: Path) -> None:
    use_lake(tmp_path / "not-created-yet")
    at = _run(AppTest.from_file(APP, default_timeout=TIMEOUT))
    assert "does not exist yet" in " ".join(i.value for i in at.info)
    assert not at.error


def test_an_unmigrated_lake_says_to_migrate_in_one_line(use_lake, lake_root: Path) -> None:
    write_file(LocalStorage(lake_root), lg.make_table(100, seed=1), layout.LANDING, "landing")  # no log
    use_lake(lake_root)
    at = _run(AppTest.from_file(APP, default_timeout=TIMEOUT))
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and "python -m lake migrate" in errors[0] and "\n" not in errors[0], errors
    assert _charts(at) == 0 and "Total logs" not in _metrics(at)


def test_populated_lake_shows_ground_truth(use_lake, populated: tuple[Path, pd.DataFrame]) -> None:
    root, truth = populated
    use_lake(root)
    at = _run(AppTest.from_file(APP, default_timeout=TIMEOUT))
    metrics = _metrics(at)
    assert {k: metrics[k] for k in _expected(truth)} == _expected(truth)
    assert metrics["Quarantined records"] == "1"
    assert metrics["Awaiting clean-up"] == "7"
    assert metrics["Table version"] == f"{read_snapshot(LocalStorage(root)).version:,}"
    assert metrics["Freshness"] != "—"
    assert _charts(at) == 10  # eight analyses, compacted sizes, query history
    assert not at.error
    perf = [d.value for d in at.dataframe if "p95_ms" in d.value.columns]
    assert perf and {"kpis", "refresh", "repeat non-compliant employees"} <= set(perf[0]["query"])
    assert len(at.tabs) >= 10  # the raw-data expander: one tab per analysis


def test_filters_change_the_figures(use_lake, populated: tuple[Path, pd.DataFrame]) -> None:
    root, truth = populated
    use_lake(root)
    at = _run(AppTest.from_file(APP, default_timeout=TIMEOUT))
    before = _metrics(at)["Total logs"]

    at.multiselect(key="f_depts").set_value(["Sales", "HR"])
    _run(at)
    expected = _expected(lg.select(truth, depts=["Sales", "HR"]))
    assert {k: _metrics(at)[k] for k in expected} == expected
    assert _metrics(at)["Total logs"] != before

    at.multiselect(key="f_buildings").set_value(["Grace"])
    _run(at)
    expected = _expected(lg.select(truth, depts=["Sales", "HR"], buildings=["Grace"]))
    assert {k: _metrics(at)[k] for k in expected} == expected

    at.selectbox(key="f_range").set_value("Last 6 hours")
    _run(at)
    newest = lg.EPOCH + timedelta(microseconds=int(truth["out_us"].max()))
    end = newest.replace(second=0, microsecond=0) + timedelta(minutes=1)
    expected = _expected(lg.select(truth, end - timedelta(hours=6), end, ["Sales", "HR"], ["Grace"]))
    assert {k: _metrics(at)[k] for k in expected} == expected


def test_a_failing_query_shows_its_error_and_the_rest_renders(
    use_lake, populated: tuple[Path, pd.DataFrame], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, truth = populated
    use_lake(root)

    def boom(self: Snapshot, *args: object, **kwargs: object) -> pd.DataFrame:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(Snapshot, "denial_rates", boom)
    at = _run(AppTest.from_file(APP, default_timeout=TIMEOUT))
    errors = [e.value for e in at.error]
    assert any("denial rates failed: RuntimeError: disk on fire" in e for e in errors), errors
    assert _charts(at) == 9  # all but the failed one
    assert _metrics(at)["Total logs"] == f"{len(truth):,}"


def test_refresh_controls(use_lake, populated: tuple[Path, pd.DataFrame]) -> None:
    root, _ = populated
    use_lake(root)
    at = _run(AppTest.from_file(APP, default_timeout=TIMEOUT))
    assert not at.select_slider(key="refresh_interval").disabled
    at.toggle(key="auto_refresh").set_value(False)
    _run(at)
    assert at.select_slider(key="refresh_interval").disabled
    at.button(key="refresh_now").click()
    _run(at)
    assert _charts(at) == 10
