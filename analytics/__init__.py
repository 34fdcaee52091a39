"""Analytics over the lake table's snapshot: timed DuckDB queries, Plotly figures and the Streamlit dashboard.

``LakeAnalytics(storage).snapshot()`` gives a consistent view of the lake whose methods answer the
dashboard's questions for a :class:`Filters` selection; see :mod:`analytics.engine` for the definitions.
"""

from analytics.engine import LakeAnalytics, Snapshot
from analytics.filters import ALL, Filters
from analytics.health import LakeHealth, lake_health
from analytics.results import Freshness, Kpis

__all__ = ["ALL", "Filters", "Freshness", "Kpis", "LakeAnalytics", "LakeHealth", "Snapshot", "lake_health"]
