"""The pure figure functions: they plot exactly the query results they get, and survive empty ones."""

from __future__ import annotations

import math
from datetime import datetime
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import pytest

from analytics import figures
from analytics.engine import LakeAnalytics, Snapshot
from analytics.health import lake_health
from analytics.history import timeline_frame
from lake import layout
from lake.storage import LocalStorage
from testkit import lakes as lg
from testkit.processes import make_settings


@pytest.fixture(scope="module")
def snap(tmp_path_factory: pytest.TempPathFactory) -> Snapshot:
    storage = LocalStorage(tmp_path_factory.mktemp("lake"))
    lg.publish(storage, lg.make_table(8_000, seed=1), landing_files=3, compacted_share=0.5)
    return LakeAnalytics(storage).snapshot()


def _total(fig: go.Figure, attr: str) -> float:
    return float(sum(sum(v for v in getattr(trace, attr) if not math.isnan(v)) for trace in fig.data))


def test_donuts_show_the_counts(snap: Snapshot) -> None:
    access = snap.access_distribution()
    fig = figures.make_access_figure(access)
    assert list(fig.data[0].labels) == list(access["access"]) and list(fig.data[0].values) == list(access["events"])
    compliance = snap.compliance_distribution()
    fig = figures.make_compliance_figure(compliance)
    assert list(fig.data[0].values) == list(compliance["sessions"])
    assert fig.data[0].hole == pytest.approx(0.55)


def test_bars_lines_and_heatmap_carry_every_count(snap: Snapshot) -> None:
    premature = snap.premature_by_dept_building()
    fig = figures.make_premature_figure(premature)
    assert len(fig.data) == premature["building"].nunique()
    assert _total(fig, "y") == premature["premature"].sum()

    traffic = snap.traffic(bucket="hour")
    fig = figures.make_traffic_figure(traffic)
    assert list(fig.data[0].y) == list(traffic["events"]) and list(fig.data[1].y) == list(traffic["denied"])
    assert "per hour" in fig.layout.title.text

    heat = snap.building_hour_heatmap()
    fig = figures.make_heatmap_figure(heat)
    z = fig.data[0].z
    assert len(z[0]) == 24 and sum(map(sum, z)) == heat["events"].sum()

    denial = snap.denial_rates()
    fig = figures.make_denial_figure(denial)
    assert _total(fig, "y") == pytest.approx(denial["denial_rate"].sum() * 100)

    by_dept = snap.compliance_by_department()
    fig = figures.make_compliance_by_dept_figure(by_dept)
    assert _total(fig, "y") == pytest.approx(by_dept["compliance_rate"].sum() * 100)

    repeat = snap.repeat_offenders(min_premature=1, limit=7)
    fig = figures.make_repeat_offenders_figure(repeat)
    assert list(fig.data[0].x) == list(repeat["premature"][::-1])
    assert f"top {len(repeat)} of {int(repeat['repeat_employees'].iloc[0]):,}" in fig.layout.title.text


def test_health_and_history_figures(snap: Snapshot, tmp_path: Path) -> None:
    health = lake_health(snap.lake, make_settings(tmp_path))
    fig = figures.make_compacted_sizes_figure(health.compacted_frame(), 1, 4)
    assert len(fig.data[0].y) == len(health.compacted)
    snap.kpis()
    fig = figures.make_query_history_figure(timeline_frame())
    assert {t.name for t in fig.data} >= {"kpis", "refresh"}
    assert fig.layout.yaxis.type == "log"


def _figures(snap: Snapshot) -> list[str]:
    """Every analysis figure of the page, as Plotly JSON."""
    made = [
        figures.make_access_figure(snap.access_distribution()),
        figures.make_compliance_figure(snap.compliance_distribution()),
        figures.make_premature_figure(snap.premature_by_dept_building()),
        figures.make_traffic_figure(snap.traffic(bucket="hour")),
        figures.make_heatmap_figure(snap.building_hour_heatmap()),
        figures.make_denial_figure(snap.denial_rates()),
        figures.make_compliance_by_dept_figure(snap.compliance_by_department()),
        figures.make_repeat_offenders_figure(snap.repeat_offenders(min_premature=1)),
    ]
    return [fig.to_json() for fig in made]


def test_foreign_and_forged_files_change_no_figure(tmp_path: Path) -> None:
    # Files in landing/ and compacted/ that no commit added: junk, a zero-row compacted file whose footer
    # names landing files of the table, a landing file claiming ids up to 9,999,999, a copy of a table file.
    storage = LocalStorage(tmp_path / "lake")
    built = lg.publish(storage, lg.make_table(6_000, seed=5, users=50), landing_files=4, compacted_share=0.5)
    before = {mode: _figures(LakeAnalytics(storage, mode=mode).snapshot()) for mode in ("cached", "direct")}
    lg.add_foreign_file(storage)
    lg.add_foreign_file(storage, zone=layout.COMPACTED)
    lg.add_forged_files(storage, built)
    for mode in ("cached", "direct"):
        assert _figures(LakeAnalytics(storage, mode=mode).snapshot()) == before[mode], mode


def test_every_figure_survives_empty_input() -> None:
    empty = {
        figures.make_access_figure: ["access", "events"],
        figures.make_compliance_figure: ["status", "sessions"],
        figures.make_premature_figure: ["dept", "building", "premature", "sessions"],
        figures.make_traffic_figure: ["time", "events", "denied"],
        figures.make_heatmap_figure: ["building", "hour", "events"],
        figures.make_denial_figure: ["dimension", "value", "events", "denied", "denial_rate"],
        figures.make_compliance_by_dept_figure: ["dept", "sessions", "compliant", "premature", "compliance_rate"],
        figures.make_repeat_offenders_figure: ["user_id", "dept", "sessions", "premature", "repeat_employees"],
        figures.make_query_history_figure: ["at", "query", "ms"],
    }
    for make, columns in empty.items():
        fig = make(pd.DataFrame(columns=columns))
        assert isinstance(fig, go.Figure) and not fig.data, make.__name__
        assert fig.layout.annotations, make.__name__
    fig = figures.make_compacted_sizes_figure(pd.DataFrame(columns=["file", "mb", "published"]), 1, 4)
    assert "No compacted files" in fig.layout.annotations[0].text


def test_unknown_names_still_plot() -> None:
    df = pd.DataFrame({"dept": ["Robotics"], "building": ["Annex"], "premature": [3], "sessions": [5]})
    fig = figures.make_premature_figure(df)
    assert list(fig.data[0].x) == ["Robotics"] and fig.data[0].name == "Annex"
    traffic = pd.DataFrame({"time": [datetime(2025, 1, 1)], "events": [4], "denied": [1]})
    assert "per minute" in figures.make_traffic_figure(traffic).layout.title.text
