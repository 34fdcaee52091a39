"""The query monitor's history as tables for the dashboard's performance panel."""

from __future__ import annotations

import pandas as pd

from analytics.monitor import QUERY_HISTORY, QueryHistory

SUMMARY_COLUMNS = ["query", "runs", "errors", "last_ms", "p50_ms", "p95_ms", "max_ms", "last_rows", "last_files"]
TIMELINE_COLUMNS = ["at", "query", "ms", "rows", "files", "error"]


def summary_frame(history: QueryHistory = QUERY_HISTORY) -> pd.DataFrame:
    """Per query: runs kept, errors, last/p50/p95/max milliseconds, rows and files of the last run."""
    rows = history.summary()
    df = pd.DataFrame(rows, columns=[*SUMMARY_COLUMNS, "last_error"])
    return df.drop(columns=["last_error"]).sort_values("query", ignore_index=True)


def timeline_frame(history: QueryHistory = QUERY_HISTORY, last: int = 200) -> pd.DataFrame:
    """The newest ``last`` runs of each query, oldest first: ``at`` (naive UTC), ``query, ms, rows, files, error``."""
    records = [r for name in history.names() for r in history.records(name)[-last:]]
    records.sort(key=lambda r: r.at)
    df = pd.DataFrame(
        [(r.at.replace(tzinfo=None), r.name, r.ms, r.rows, r.files, r.error) for r in records],
        columns=TIMELINE_COLUMNS,
    )
    return df
