"""The Streamlit dashboard: sidebar filters, KPIs, the original's charts and the added analyses.

``analytics_app.py`` calls :func:`main`. The engine (DuckDB database and per-file partial aggregates)
is cached per lake with ``st.cache_resource``, so reruns and sessions share it; the data part of the
page is an ``st.fragment`` that reruns on its own every few seconds when auto-refresh is on, and the
freshness KPI is a one-second fragment of its own, so it ages between refreshes. Every figure answers
for one snapshot of the lake's table (the engine's long-lived reader of its log). A failing query shows
its error in its place and the rest of the page still renders; an empty or missing lake shows how to
start the pipeline, a lake in the previous layout the one line saying to migrate it.

The lake may be a local directory or ``s3://bucket/prefix`` (``DATA_LAKE_PATH``; credentials and endpoint
from the ``AWS_*`` variables): :func:`lake.location.open_storage` picks the backend, and the engine reads
each file once either way (see :mod:`analytics.engine`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Final, TypeVar

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from analytics import figures
from analytics.engine import LakeAnalytics, Snapshot
from analytics.filters import Filters
from analytics.health import LakeHealth, lake_health
from analytics.history import summary_frame, timeline_frame
from analytics.presentation import freshness_status, percent_text
from analytics.results import Freshness, Kpis
from lake.location import open_storage
from lake.storage import LocalStorage
from utils.config import Settings, get_settings
from utils.errors import BadgeError, UnmigratedLakeError
from utils.records import BUILDINGS, DEPARTMENTS

T = TypeVar("T")

RANGES: Final[dict[str, timedelta | None]] = {
    "All time": None,
    "Last 15 minutes": timedelta(minutes=15),
    "Last hour": timedelta(hours=1),
    "Last 6 hours": timedelta(hours=6),
    "Last 24 hours": timedelta(hours=24),
    "Last 7 days": timedelta(days=7),
    "Custom dates": None,
}
INTERVALS: Final = (2, 5, 10, 30, 60)
BUCKETS: Final = ("auto", "minute", "hour", "day")
STATUS_COLOURS: Final = {"fresh": "green", "amber": "orange", "red": "red", "empty": "gray"}
STATUS_TEXT: Final = {"fresh": "fresh", "amber": "lagging", "red": "stale", "empty": "no data"}


@dataclass(frozen=True)
class Controls:
    """What the sidebar selected."""

    filters: Filters
    auto_refresh: bool
    interval: int
    bucket: str
    repeat_min: int


@st.cache_resource(show_spinner=False)
def get_engine(lake_path: str, memory_limit_mb: int) -> LakeAnalytics:
    """One engine per lake (a directory or an ``s3://`` URL) for the whole server: its partial aggregates
    survive reruns and sessions; its DuckDB runs under ``memory_limit_mb`` (``DASHBOARD_MEMORY_MB``)."""
    return LakeAnalytics(open_storage(lake_path), memory_limit_mb=memory_limit_mb)


def attempt(name: str, func: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[T | None, str | None]:
    """Run one query; a failure becomes a message for the page instead of an exception."""
    try:
        return func(*args, **kwargs), None
    except Exception as exc:  # any failure of one query must leave the rest of the page standing
        return None, f"{name} failed: {type(exc).__name__}: {exc}"


def show_chart(fig_or_error: go.Figure | str, key: str) -> None:
    if isinstance(fig_or_error, str):
        st.error(fig_or_error)
    else:
        st.plotly_chart(fig_or_error, width="stretch", key=key, config={"displaylogo": False})


def chart(
    name: str, query: Callable[..., pd.DataFrame], make: Callable[[pd.DataFrame], go.Figure], *args: Any, key: str
) -> pd.DataFrame | None:
    """Run ``query``, draw ``make(result)`` (or the error) and return the result for the raw-data tabs."""
    df, error = attempt(name, query, *args)
    show_chart(error if df is None else make(df), key)
    return df


def age_text(seconds: float | None) -> str:
    """A lag as people read it: 12 s, 4 min 5 s, 3 h 20 min, 2 d 4 h."""
    if seconds is None:
        return "—"
    s = max(0, int(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    if s < 86_400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86_400} d {s % 86_400 // 3600} h"


def short_age(seconds: float) -> str:
    """The largest unit only: 42 s, 4 min, 3 h, 2 d."""
    s = max(0, int(seconds))
    for unit, size in (("d", 86_400), ("h", 3600), ("min", 60)):
        if s >= size:
            return f"{s // size} {unit}"
    return f"{s} s"


# -- sidebar -----------------------------------------------------------------------------------------
def time_filter(bounds: tuple[datetime | None, datetime | None]) -> tuple[datetime | None, datetime | None]:
    """The sidebar's time range: presets end at the newest event (so a paused pipeline still shows data)."""
    choice = st.sidebar.selectbox(
        "Time range (badge-out, UTC)",
        list(RANGES),
        key="f_range",
        help="Presets end at the newest event in the lake, so a paused pipeline still shows its last data.",
    )
    first, last = bounds
    if first is None or last is None:
        return None, None
    end = last + timedelta(minutes=1)
    if choice == "Custom dates":
        picked = st.sidebar.date_input(
            "Dates (UTC)",
            value=(first.date(), last.date()),
            min_value=first.date(),
            max_value=last.date(),
            key="f_dates",
        )
        days = [d for d in (picked if isinstance(picked, (tuple, list)) else [picked]) if isinstance(d, date)]
        if not days:
            return None, None
        start_day, end_day = days[0], days[-1]
        return datetime.combine(start_day, datetime.min.time()), datetime.combine(
            end_day + timedelta(days=1), datetime.min.time()
        )
    span = RANGES[choice]
    return (None, None) if span is None else (end - span, end)


def sidebar(snap: Snapshot | None) -> Controls:
    """Filters and refresh settings, in the sidebar."""
    st.sidebar.header("Filters")
    bounds = snap.time_bounds() if snap is not None and not snap.is_empty else (None, None)
    start, end = time_filter(bounds)
    depts = st.sidebar.multiselect("Departments", DEPARTMENTS, key="f_depts", placeholder="All departments")
    buildings = st.sidebar.multiselect("Buildings", BUILDINGS, key="f_buildings", placeholder="All buildings")
    st.sidebar.header("Refresh")
    auto = st.sidebar.toggle("Auto-refresh", value=True, key="auto_refresh")
    interval = st.sidebar.select_slider(
        "Every (seconds)", options=INTERVALS, value=5, key="refresh_interval", disabled=not auto
    )
    st.sidebar.button("Refresh now", key="refresh_now", icon=":material/refresh:", width="stretch")
    st.sidebar.header("Display")
    bucket = st.sidebar.radio("Traffic per", BUCKETS, key="traffic_bucket", horizontal=True)
    repeat_min = st.sidebar.number_input(
        "Repeat offender: premature sessions at least", min_value=2, max_value=1_000_000, value=2, key="repeat_min"
    )
    return Controls(Filters(start, end, tuple(depts), tuple(buildings)), auto, int(interval), bucket, int(repeat_min))


# -- panels ------------------------------------------------------------------------------------------
@st.fragment(run_every=1)
def freshness_clock(freshness: Freshness | None, error: str | None) -> None:
    """The freshness KPI, recomputed against the clock every second (no query: the newest event is known)."""
    if error is not None or freshness is None:
        st.metric("Freshness", "—", help=error or "")
        return
    lag = freshness.at(datetime.now(UTC)).lag_seconds
    status = freshness_status(lag)
    st.metric(
        "Freshness",
        age_text(lag),
        delta=STATUS_TEXT[status],
        delta_color=STATUS_COLOURS[status],  # type: ignore[arg-type]
        delta_arrow="off",
        help="Newest badge-out among the selected events, against now (UTC). Amber past 1 minute, red past 5 minutes.",
    )


def kpi_row(kpis: Kpis | None, kpi_error: str | None, freshness: Freshness | None, fresh_error: str | None) -> None:
    cols = st.columns(5)
    if kpis is None:
        cols[0].error(kpi_error or "KPIs unavailable")
    else:
        cols[0].metric("Total logs", f"{kpis.total_events:,}", help="Badge events (granted and denied) selected.")
        cols[1].metric("Access denied", f"{kpis.denied:,}", help="Denied attempts: events, but not sessions.")
        cols[2].metric("Compliant sessions", f"{kpis.compliant:,}", help="Granted sessions of 4 hours or more.")
        cols[3].metric(
            "Compliance rate",
            percent_text(kpis.compliance_rate),
            help="Compliant share of granted sessions (denied attempts are not sessions).",
        )
    with cols[4]:
        freshness_clock(freshness, fresh_error)


def health_panel(health: LakeHealth | None, error: str | None) -> None:
    st.subheader("Lake health")
    if health is None:
        st.error(error or "lake health unavailable")
        return
    cols = st.columns(7)
    cols[0].metric(
        "Landing files",
        f"{health.landing_files:,} / {health.compaction_min_files:,}",
        delta="compaction due" if health.compaction_due else "below threshold",
        delta_color="orange" if health.compaction_due else "gray",
        delta_arrow="off",
        help="Landing files in the table against COMPACTION_MIN_FILES.",
    )
    cols[1].metric("Compacted files", f"{len(health.compacted):,}", help=f"{health.compacted_bytes / 2**20:,.1f} MB")
    last = health.last_compaction
    cols[2].metric(
        "Last compaction",
        "never" if last is None else f"{short_age((datetime.now(UTC) - last).total_seconds())} ago",
        help=None if last is None else last.isoformat(timespec="seconds"),
    )
    cols[3].metric("Quarantined records", f"{health.quarantined_records:,}", help=f"{health.quarantine_files} files")
    cols[4].metric(
        "Awaiting clean-up",
        f"{len(health.awaiting_cleanup):,}",
        help="Files on disk that the table does not hold (replaced by a compaction, orphaned or foreign): "
        "never read, deleted after the grace period.",
    )
    cols[5].metric("Table version", "—" if health.version is None else f"{health.version:,}")
    oldest = health.oldest_event
    cols[6].metric(
        "Retained",
        "all" if health.first_kept is None else f"since {health.first_kept:%b %d}",
        help=f"The lake keeps {health.retained_window}; the oldest event it holds is "
        f"{'—' if oldest is None else oldest.isoformat(sep=' ', timespec='seconds')} UTC.",
    )
    left, right = st.columns([3, 2])
    with left:
        show_chart(
            figures.make_compacted_sizes_figure(
                health.compacted_frame(), health.target_min_bytes / 2**20, health.target_max_bytes / 2**20
            ),
            "chart_compacted",
        )
    with right:
        st.dataframe(health.as_frame(), hide_index=True, key="health_table", height=280)


def performance_panel(refresh_ms: float) -> None:
    st.subheader("Query performance")
    st.caption(
        f"This refresh: {refresh_ms:,.0f} ms for every query on the page. Times include materializing the "
        "result; files = data files read from storage (0 when answered from cached per-file aggregates)."
    )
    summary = summary_frame()
    left, right = st.columns([1, 1])
    with left:
        st.dataframe(
            summary,
            hide_index=True,
            column_config={
                c: st.column_config.NumberColumn(format="%.1f") for c in ("last_ms", "p50_ms", "p95_ms", "max_ms")
            },
            key="perf_table",
        )
    with right:
        show_chart(figures.make_query_history_figure(timeline_frame()), "chart_history")


def raw_data(tables: dict[str, pd.DataFrame | None]) -> None:
    with st.expander("Raw data", expanded=False):
        names = list(tables)
        for tab, name in zip(st.tabs(names), names, strict=True):
            with tab:
                df = tables[name]
                if df is None:
                    st.info("This query failed; see the message above.")
                    continue
                slug = name.lower().replace(" ", "_").replace("×", "x")
                st.dataframe(df, hide_index=True, key=f"raw_{slug}")
                st.download_button(
                    "Download CSV",
                    df.to_csv(index=False).encode(),
                    file_name=f"{slug}.csv",
                    mime="text/csv",
                    key=f"dl_{slug}",
                    on_click="ignore",
                )


def empty_lake(settings: Settings) -> None:
    """What to do when there is nothing to show yet (a local lake's folder may not exist yet; an object
    storage lake has no folder: its prefix exists once something is written under it)."""
    location = settings.data_lake_path
    missing = isinstance(location, Path) and not LocalStorage(location).path("").exists()
    st.info(
        f"**No badge data yet** in `{location}`" + (" (the folder does not exist yet)" if missing else "") + ".\n\n"
        "Start the platform and this page fills in by itself:\n\n"
        "```\nmake run\n```\n\nor, in three terminals:\n\n"
        "```\nuvicorn api.main:app\npython pipeline.py\nstreamlit run analytics_app.py\n```\n\n"
        "Set `DATA_LAKE_PATH` (environment or `.env`) if the lake lives elsewhere.",
        icon=":material/hourglass_empty:",
    )


def body(engine: LakeAnalytics, settings: Settings, controls: Controls) -> None:
    """Everything that depends on the data: refreshed on its own schedule (a fragment)."""
    started = time.perf_counter()
    try:
        snap = engine.snapshot()
    except UnmigratedLakeError as exc:
        st.error(str(exc))  # the one line: run `python -m lake migrate`
        return
    except Exception as exc:  # the page must say why it shows nothing, whatever the cause
        st.error(f"Could not read the lake at `{settings.data_lake_path}`: {type(exc).__name__}: {exc}")
        return
    if snap.is_empty:
        empty_lake(settings)
        health, health_error = attempt("lake health", lake_health, snap.lake, settings)
        if health is not None and (health.quarantine_files or health.awaiting_cleanup):
            health_panel(health, health_error)
        return
    f = controls.filters
    kpis, kpi_error = attempt("KPIs", snap.kpis, f)
    freshness, fresh_error = attempt("freshness", snap.freshness, f)
    kpi_row(kpis, kpi_error, freshness, fresh_error)

    tables: dict[str, pd.DataFrame | None] = {}
    left, middle, right = st.columns([1, 1, 2])
    with left:
        tables["Access"] = chart(
            "access distribution", snap.access_distribution, figures.make_access_figure, f, key="chart_access"
        )
    with middle:
        tables["Compliance"] = chart(
            "compliance distribution",
            snap.compliance_distribution,
            figures.make_compliance_figure,
            f,
            key="chart_compliance",
        )
    with right:
        tables["Premature badge-outs"] = chart(
            "premature badge-outs",
            snap.premature_by_dept_building,
            figures.make_premature_figure,
            f,
            key="chart_premature",
        )
    left, right = st.columns([3, 2])
    with left:
        tables["Traffic"] = chart(
            "traffic over time",
            lambda flt: snap.traffic(flt, controls.bucket),  # type: ignore[arg-type]
            figures.make_traffic_figure,
            f,
            key="chart_traffic",
        )
    with right:
        tables["Heatmap"] = chart(
            "building x hour heatmap", snap.building_hour_heatmap, figures.make_heatmap_figure, f, key="chart_heatmap"
        )
    left, middle, right = st.columns(3)
    with left:
        tables["Denial rates"] = chart(
            "denial rates", snap.denial_rates, figures.make_denial_figure, f, key="chart_denial"
        )
    with middle:
        tables["Compliance by department"] = chart(
            "compliance by department",
            snap.compliance_by_department,
            figures.make_compliance_by_dept_figure,
            f,
            key="chart_compliance_dept",
        )
    with right:
        tables["Repeat offenders"] = chart(
            "repeat non-compliant employees",
            lambda flt: snap.repeat_offenders(flt, min_premature=controls.repeat_min),
            figures.make_repeat_offenders_figure,
            f,
            key="chart_repeat",
        )
    has_doors, _ = attempt("busiest doors", lambda: snap.has_doors)
    if has_doors:  # record version 2 onwards: a column the table gained (schema evolution)
        tables["Busiest doors"] = chart(
            "busiest doors", snap.busiest_doors, figures.make_doors_figure, f, key="chart_doors"
        )
    health, health_error = attempt("lake health", lake_health, snap.lake, settings)
    refresh_ms = (time.perf_counter() - started) * 1000
    tables["KPIs"] = kpis.as_frame() if kpis is not None else None
    tables["Lake health"] = health.as_frame() if health is not None else None
    health_panel(health, health_error)
    performance_panel(refresh_ms)
    raw_data(tables)
    st.caption(
        f"{snap.lake.rows:,} rows in {len(snap.lake.files):,} files · table version {snap.lake.version} · "
        f"refreshed {snap.taken_at.strftime('%H:%M:%S')} UTC · lake `{settings.data_lake_path}`"
    )


def main() -> None:
    """Build the page (Streamlit runs this on every rerun)."""
    st.set_page_config(page_title="Badge analytics", page_icon=":material/badge:", layout="wide")
    try:
        settings = get_settings()
    except BadgeError as exc:
        st.error(f"Invalid settings: {exc}")
        return
    try:
        engine = get_engine(str(settings.data_lake_path), settings.dashboard_memory_mb)
    except (BadgeError, ValueError) as exc:  # an s3:// URL that is not a bucket and prefix
        st.error(f"Could not open the lake at `{settings.data_lake_path}`: {exc}")
        return
    # The first refresh reads every file once (later ones only new files): say so while it runs.
    with st.spinner("Reading the lake's files (only new ones after the first refresh)..."):
        snap, _ = attempt("refresh", engine.snapshot)
    controls = sidebar(snap)
    st.title("Badge analytics")
    st.caption(
        "Premature = a granted session under 4 hours of elapsed time (badge-out minus badge-in); "
        "denied attempts are not sessions. Times are UTC; the time filter applies to badge-out (event time)."
    )
    run_every = controls.interval if controls.auto_refresh else None
    st.fragment(run_every=run_every)(body)(engine, settings, controls)


__all__ = ["main"]
