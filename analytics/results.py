"""The engine's answers that are not tables: the headline numbers (:class:`Kpis`) and :class:`Freshness`.

Immutable values: every derived figure (compliance, lag, status) is computed from the stored fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import pandas as pd

from analytics.presentation import FreshnessStatus, freshness_status


@dataclass(frozen=True)
class Kpis:
    """The headline numbers of a selection.

    ``sessions`` counts granted attempts only, so ``compliant + premature == sessions`` always.
    """

    total_events: int
    denied: int
    sessions: int  # granted attempts
    premature: int
    newest_out: datetime | None  # aware UTC

    @property
    def compliant(self) -> int:
        return self.sessions - self.premature

    @property
    def compliance_rate(self) -> float | None:
        return self.compliant / self.sessions if self.sessions else None

    def as_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            [
                {
                    "total_events": self.total_events,
                    "denied": self.denied,
                    "sessions": self.sessions,
                    "compliant": self.compliant,
                    "premature": self.premature,
                    "compliance_rate": self.compliance_rate,
                    "newest_badge_out": self.newest_out,
                }
            ]
        )


@dataclass(frozen=True)
class Freshness:
    """The newest event against a clock: lag in seconds and its colour.

    No data gives no lag and the ``empty`` status, never an error.
    """

    newest: datetime | None  # aware UTC
    now: datetime  # aware UTC

    @property
    def lag_seconds(self) -> float | None:
        return None if self.newest is None else (self.now - self.newest).total_seconds()

    @property
    def status(self) -> FreshnessStatus:
        return freshness_status(self.lag_seconds)

    def at(self, now: datetime) -> Freshness:
        """The same newest event seen at another instant (the KPI ages between refreshes)."""
        return Freshness(self.newest, now)


__all__ = ["Freshness", "Kpis"]
