"""How the dashboard words and colours numbers: rates as percent text, freshness lags as traffic lights.

Pure functions of their arguments; an undefined value (None, NaN) gets its own rendering, never an error.
"""

from __future__ import annotations

import math
from typing import Final, Literal

FreshnessStatus = Literal["empty", "fresh", "amber", "red"]

# Freshness colours: amber past a minute, red past five (the pipeline flushes at least every 5 s).
FRESHNESS_AMBER_SECONDS: Final = 60.0
FRESHNESS_RED_SECONDS: Final = 300.0


def freshness_status(lag_seconds: float | None) -> FreshnessStatus:
    """Traffic-light colour of a freshness lag.

    ``empty`` for no data; otherwise the colour of the lag against the two thresholds, never an error.
    """
    if lag_seconds is None:
        return "empty"
    if lag_seconds >= FRESHNESS_RED_SECONDS:
        return "red"
    if lag_seconds >= FRESHNESS_AMBER_SECONDS:
        return "amber"
    return "fresh"


def percent_text(rate: float | None) -> str:
    """A rate as the dashboard shows it (one decimal), or an em dash when undefined.

    None and NaN both give the em dash, so a selection without sessions still renders.
    """
    return "—" if rate is None or math.isnan(rate) else f"{rate * 100:.1f} %"


__all__ = ["FRESHNESS_AMBER_SECONDS", "FRESHNESS_RED_SECONDS", "FreshnessStatus", "freshness_status", "percent_text"]
