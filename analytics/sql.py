"""SQL bodies of the dashboard's queries, each over ``src``: the selected rows in one aggregate's columns.

Constant text: values enter only as DuckDB parameters (``$bucket``, ``$min_premature``, ``$limit``); the
engine (:mod:`analytics.engine`) prepends ``WITH src AS (...)`` built from cached partials or file reads.
"""

from __future__ import annotations

from typing import Final

# over partials.CUBE; columns minute, dept, building, granted, events, premature, last_out_us
KPIS_SQL: Final = """
SELECT coalesce(sum(events), 0)::BIGINT AS total_events,
       coalesce(sum(events) FILTER (WHERE NOT granted), 0)::BIGINT AS denied,
       coalesce(sum(events) FILTER (WHERE granted), 0)::BIGINT AS sessions,
       coalesce(sum(premature), 0)::BIGINT AS premature,
       max(last_out_us) AS newest_out_us
FROM src"""
ACCESS_SQL: Final = """
SELECT CASE WHEN granted THEN 'Granted' ELSE 'Denied' END AS access, sum(events)::BIGINT AS events
FROM src GROUP BY granted ORDER BY granted DESC"""
PREMATURE_SQL: Final = """
SELECT dept, building, sum(premature)::BIGINT AS premature, sum(events)::BIGINT AS sessions
FROM src WHERE granted GROUP BY dept, building ORDER BY dept, building"""
COMPLIANCE_SQL: Final = """
SELECT status, n AS sessions FROM (
    SELECT unnest([
        {'status': 'Compliant (4 h or more)', 'n': (sum(events) - sum(premature))::BIGINT, 'o': 1},
        {'status': 'Premature (under 4 h)', 'n': sum(premature)::BIGINT, 'o': 2}
    ], recursive := true), sum(events) AS total
    FROM src WHERE granted
) WHERE total > 0 ORDER BY o"""
TRAFFIC_SQL: Final = """
SELECT (minute // $bucket) * $bucket AS minute,
       sum(events)::BIGINT AS events,
       coalesce(sum(events) FILTER (WHERE NOT granted), 0)::BIGINT AS denied
FROM src GROUP BY 1 ORDER BY 1"""
DENIAL_SQL: Final = """
SELECT CASE WHEN grouping(dept) = 0 THEN 'Department' ELSE 'Building' END AS dimension,
       coalesce(dept, building) AS value,
       sum(events)::BIGINT AS events,
       coalesce(sum(events) FILTER (WHERE NOT granted), 0)::BIGINT AS denied,
       (coalesce(sum(events) FILTER (WHERE NOT granted), 0) / sum(events))::DOUBLE AS denial_rate
FROM src GROUP BY GROUPING SETS ((dept), (building)) ORDER BY dimension, value"""
COMPLIANCE_BY_DEPT_SQL: Final = """
SELECT dept,
       sum(events)::BIGINT AS sessions,
       (sum(events) - sum(premature))::BIGINT AS compliant,
       sum(premature)::BIGINT AS premature,
       ((sum(events) - sum(premature)) / sum(events))::DOUBLE AS compliance_rate
FROM src WHERE granted GROUP BY dept ORDER BY dept"""
FRESHNESS_SQL: Final = "SELECT max(last_out_us) AS newest_out_us FROM src"
BOUNDS_SQL: Final = "SELECT min(minute) AS lo, max(minute) AS hi FROM src"
# over partials.ARRIVALS; columns hour, dept, building, in_hour, events
HEATMAP_SQL: Final = """
SELECT building, in_hour AS hour, sum(events)::BIGINT AS events FROM src GROUP BY ALL
HAVING sum(events) <> 0  -- cells cancelled by subtracted minutes are not cells
ORDER BY building, hour"""
# over partials.USERS; columns hour, user_id, dept, building, sessions, premature (granted sessions only)
REPEAT_SQL: Final = """
SELECT user_id, min(dept) AS dept, sum(sessions)::BIGINT AS sessions, sum(premature)::BIGINT AS premature,
       (sum(premature) / sum(sessions))::DOUBLE AS premature_share,
       count(*) OVER ()::BIGINT AS repeat_employees
FROM (
    -- per employee and department first: rows subtracted from a cached bucket cancel out here, so a
    -- department only seen in unselected minutes cannot leak into min(dept)
    SELECT user_id, dept, sum(sessions) AS sessions, sum(premature) AS premature
    FROM src GROUP BY user_id, dept HAVING sum(sessions) <> 0
)
GROUP BY user_id HAVING sum(premature) >= $min_premature
ORDER BY premature DESC, user_id LIMIT $limit"""

# over partials.DOORS; columns hour, dept, building, door, events (records with a door only)
DOORS_SQL: Final = """
SELECT building, door, sum(events)::BIGINT AS events, count(*) OVER ()::BIGINT AS doors
FROM src GROUP BY building, door HAVING sum(events) <> 0
ORDER BY events DESC, door LIMIT $limit"""


__all__ = [
    "ACCESS_SQL",
    "BOUNDS_SQL",
    "COMPLIANCE_BY_DEPT_SQL",
    "COMPLIANCE_SQL",
    "DENIAL_SQL",
    "DOORS_SQL",
    "FRESHNESS_SQL",
    "HEATMAP_SQL",
    "KPIS_SQL",
    "PREMATURE_SQL",
    "REPEAT_SQL",
    "TRAFFIC_SQL",
]
