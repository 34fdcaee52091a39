"""Plotly figures for the dashboard: pure ``make_*_figure(df) -> go.Figure`` functions, no Streamlit.

Each takes the DataFrame its query returns (see :mod:`analytics.engine`) and never fails on an empty
one: it then shows a "No data" note in place of the chart.
"""

from __future__ import annotations

from typing import Final

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from utils.records import BUILDINGS, DEPARTMENTS

GRANTED: Final = "#2e7d32"
DENIED: Final = "#c62828"
COMPLIANT: Final = "#1565c0"
PREMATURE: Final = "#ef6c00"
BUILDING_COLOURS: Final = {"Sonic": "#1f77b4", "Re-invent": "#ff7f0e", "Grace": "#2ca02c", "Maverick": "#9467bd"}
HEIGHT: Final = 340


def _layout(fig: go.Figure, title: str, height: int = HEIGHT) -> go.Figure:
    fig.update_layout(
        title={"text": title, "x": 0.0, "font": {"size": 15}},
        height=height,
        margin={"l": 10, "r": 10, "t": 50, "b": 10},
        legend={"orientation": "h", "y": -0.15},
    )
    return fig


def empty_figure(title: str, message: str = "No data for this selection") -> go.Figure:
    """A blank chart with a centred note, so the layout holds its place."""
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, font={"size": 14}, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _layout(fig, title)


def _order(values: pd.Series, known: tuple[str, ...]) -> list[str]:
    """Known names in their usual order, then any others alphabetically."""
    present = set(values.astype(str))
    return [v for v in known if v in present] + sorted(present - set(known))


def _donut(labels: pd.Series, values: pd.Series, colours: list[str], unit: str, title: str) -> go.Figure:
    fig = go.Figure(
        go.Pie(
            labels=labels,
            values=values,
            hole=0.55,
            marker={"colors": colours},
            sort=False,
            textinfo="percent",
            textposition="inside",
            hovertemplate=f"%{{label}}: %{{value:,}} {unit} (%{{percent}})<extra></extra>",
        )
    )
    return _layout(fig, title)


def make_access_figure(df: pd.DataFrame) -> go.Figure:
    """Donut of events by access outcome (``access``, ``events``)."""
    title = "Access distribution"
    if df.empty or df["events"].sum() == 0:
        return empty_figure(title)
    colours = [GRANTED if a == "Granted" else DENIED for a in df["access"]]
    return _donut(df["access"], df["events"], colours, "events", title)


def make_compliance_figure(df: pd.DataFrame) -> go.Figure:
    """Donut of granted sessions, compliant vs premature (``status``, ``sessions``)."""
    title = "Compliance (granted sessions)"
    if df.empty or df["sessions"].sum() == 0:
        return empty_figure(title)
    colours = [COMPLIANT if s.startswith("Compliant") else PREMATURE for s in df["status"]]
    return _donut(df["status"], df["sessions"], colours, "sessions", title)


def make_premature_figure(df: pd.DataFrame) -> go.Figure:
    """Grouped bars: premature badge-outs per department, one bar per building (``dept, building, premature``)."""
    title = "Premature badge-outs (< 4 h) by department and building"
    if df.empty or df["premature"].sum() == 0:
        return empty_figure(title)
    depts = _order(df["dept"], DEPARTMENTS)
    fig = go.Figure()
    for building in _order(df["building"], BUILDINGS):
        part = df[df["building"] == building].set_index("dept").reindex(depts)
        fig.add_trace(
            go.Bar(
                name=building,
                x=depts,
                y=part["premature"].fillna(0),
                marker_color=BUILDING_COLOURS.get(building),
                hovertemplate=f"{building} · %{{x}}: %{{y:,}} premature<extra></extra>",
            )
        )
    fig.update_layout(barmode="group", yaxis_title="sessions")
    return _layout(fig, title)


def make_traffic_figure(df: pd.DataFrame) -> go.Figure:
    """Events and denied attempts per time bucket (``time, events, denied``; ``df.attrs['bucket_minutes']``)."""
    bucket = int(df.attrs.get("bucket_minutes", 1))
    unit = {1: "minute", 60: "hour", 1440: "day"}.get(bucket, f"{bucket} min")
    title = f"Traffic over time (events per {unit}, badge-out, UTC)"
    if df.empty:
        return empty_figure(title)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=df["time"], y=df["events"], name="events", mode="lines", line={"color": COMPLIANT}))
    fig.add_trace(go.Scatter(x=df["time"], y=df["denied"], name="denied", mode="lines", line={"color": DENIED}))
    fig.update_layout(yaxis_title=f"per {unit}", hovermode="x unified")
    return _layout(fig, title)


def make_heatmap_figure(df: pd.DataFrame) -> go.Figure:
    """Arrivals per building (rows) and badge-in hour of day (columns, UTC) (``building, hour, events``)."""
    title = "Arrivals by building and hour of day (badge-in, UTC)"
    if df.empty:
        return empty_figure(title)
    buildings = _order(df["building"], BUILDINGS)
    grid = df.pivot_table(index="building", columns="hour", values="events", aggfunc="sum", fill_value=0)
    grid = grid.reindex(index=buildings, columns=range(24), fill_value=0)
    fig = go.Figure(
        go.Heatmap(
            z=grid.to_numpy(),
            x=[f"{h:02d}" for h in range(24)],
            y=buildings,
            colorscale="Blues",
            hovertemplate="%{y} · %{x}:00 · %{z:,} arrivals<extra></extra>",
        )
    )
    fig.update_xaxes(title="hour of day (UTC)")
    return _layout(fig, title)


def make_denial_figure(df: pd.DataFrame) -> go.Figure:
    """Denial rate per building and per department, side by side (``dimension, value, denial_rate``)."""
    title = "Denial rate by building and department"
    if df.empty:
        return empty_figure(title)
    fig = make_subplots(rows=1, cols=2, subplot_titles=("by building", "by department"), shared_yaxes=True)
    for col, (dimension, known) in enumerate((("Building", BUILDINGS), ("Department", DEPARTMENTS)), start=1):
        part = df[df["dimension"] == dimension]
        order = _order(part["value"], known)
        part = part.set_index("value").reindex(order)
        fig.add_trace(
            go.Bar(
                x=order,
                y=part["denial_rate"] * 100,
                marker_color=DENIED,
                showlegend=False,
                customdata=part[["denied", "events"]].to_numpy(),
                hovertemplate="%{x}: %{y:.2f} % (%{customdata[0]:,} of %{customdata[1]:,})<extra></extra>",
            ),
            row=1,
            col=col,
        )
    fig.update_yaxes(title="% denied", row=1, col=1)
    return _layout(fig, title)


def make_compliance_by_dept_figure(df: pd.DataFrame) -> go.Figure:
    """Compliance rate (granted sessions of 4 h or more) per department (``dept, compliance_rate, sessions``)."""
    title = "Compliance rate by department"
    if df.empty:
        return empty_figure(title)
    order = _order(df["dept"], DEPARTMENTS)
    part = df.set_index("dept").reindex(order)
    fig = go.Figure(
        go.Bar(
            x=order,
            y=part["compliance_rate"] * 100,
            marker_color=COMPLIANT,
            text=[f"{v * 100:.1f} %" for v in part["compliance_rate"]],
            textposition="outside",
            customdata=part[["compliant", "sessions"]].to_numpy(),
            hovertemplate="%{x}: %{y:.1f} % (%{customdata[0]:,} of %{customdata[1]:,})<extra></extra>",
        )
    )
    fig.update_yaxes(title="% compliant", range=[0, 105])
    return _layout(fig, title)


def make_repeat_offenders_figure(df: pd.DataFrame) -> go.Figure:
    """Horizontal bars: premature sessions of the most frequent repeat offenders (``user_id, dept, premature``)."""
    title = "Repeat non-compliant employees"
    if df.empty:
        return empty_figure(title, "No employee left early twice in this selection")
    total = int(df["repeat_employees"].iloc[0]) if "repeat_employees" in df else len(df)
    ordered = df.iloc[::-1]
    labels = [f"{u[:8]}… ({d})" for u, d in zip(ordered["user_id"], ordered["dept"], strict=True)]
    fig = go.Figure(
        go.Bar(
            x=ordered["premature"],
            y=labels,
            orientation="h",
            marker_color=PREMATURE,
            customdata=ordered[["user_id", "sessions"]].to_numpy(),
            hovertemplate="%{customdata[0]}: %{x:,} premature of %{customdata[1]:,} sessions<extra></extra>",
        )
    )
    fig.update_xaxes(title="premature sessions")
    return _layout(fig, f"{title} (top {len(df)} of {total:,})", height=max(HEIGHT, 22 * len(df) + 80))


def make_doors_figure(df: pd.DataFrame) -> go.Figure:
    """Horizontal bars: events at the busiest doors (``building, door, events, doors``; record version 2 on)."""
    title = "Busiest doors"
    if df.empty:
        return empty_figure(title, "No badge with a door in this selection")
    total = int(df["doors"].iloc[0]) if "doors" in df else len(df)
    ordered = df.iloc[::-1]
    fig = go.Figure(
        go.Bar(
            x=ordered["events"],
            y=ordered["door"],
            orientation="h",
            customdata=ordered[["building"]].to_numpy(),
            hovertemplate="%{y} (%{customdata[0]}): %{x:,} events<extra></extra>",
        )
    )
    fig.update_xaxes(title="events")
    return _layout(fig, f"{title} (top {len(df)} of {total:,})", height=max(HEIGHT, 22 * len(df) + 80))


def make_compacted_sizes_figure(df: pd.DataFrame, target_min_mb: float, target_max_mb: float) -> go.Figure:
    """Sizes of the table's compacted files against the compaction target band (``file, mb, published``)."""
    title = "Compacted files (MB) and target band"
    if df.empty:
        return empty_figure(title, "No compacted files yet")
    ordered = df.sort_values("published")
    fig = go.Figure(
        go.Bar(
            x=[f"#{i}" for i in range(1, len(ordered) + 1)],
            y=ordered["mb"],
            marker_color=COMPLIANT,
            customdata=ordered[["file"]].to_numpy(),
            hovertemplate="%{customdata[0]}<br>%{y:.1f} MB<extra></extra>",
        )
    )
    fig.add_hrect(y0=target_min_mb, y1=target_max_mb, fillcolor=GRANTED, opacity=0.12, line_width=0)
    fig.update_xaxes(title="file (oldest first)", type="category")
    fig.update_yaxes(title="MB")
    return _layout(fig, title, height=280)


def make_query_history_figure(df: pd.DataFrame) -> go.Figure:
    """Milliseconds of each monitored query over time (``at, query, ms``)."""
    title = "Query time history (ms)"
    if df.empty:
        return empty_figure(title, "No queries recorded yet")
    fig = go.Figure()
    for name, part in df.groupby("query", sort=True):
        fig.add_trace(go.Scatter(x=part["at"], y=part["ms"], name=str(name), mode="lines+markers", marker={"size": 4}))
    # Log scale: a cold first refresh (seconds) must not flatten the steady state (milliseconds).
    fig.update_yaxes(title="ms (log)", type="log")
    _layout(fig, title, height=380)
    fig.update_layout(legend={"orientation": "v", "y": 1, "x": 1.02, "font": {"size": 10}})
    return fig
