"""A clock the test moves by hand, for code that takes a ``clock`` (grace periods, clean-up)."""

from __future__ import annotations

import time


class ManualClock:
    """Wall-clock seconds that start at the real time and move only by :meth:`advance`."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now
