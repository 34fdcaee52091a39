"""The platform's one retry-delay policy: capped exponential backoff with jitter, as named data.

Guarantee: :meth:`Backoff.delay` is defined for every retry number, however large (an outage of any
length never overflows), never exceeds ``cap`` and never falls below ``floor``. Every retry loop uses
it: the source client (through tenacity, :meth:`Backoff.tenacity_wait`), the fetcher's outage loop,
the writer's failed flushes and the pipeline's child-compactor restarts.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

import tenacity


@dataclass(frozen=True)
class Backoff:
    """Delay before retry ``n`` (1, 2, ...): ``min(cap, first * factor**(n - 1))``, minus up to ``jitter`` of it.

    ``jitter=0.5`` is "equal jitter" (uniformly between half and all of the capped value); ``0`` is none.
    """

    first: float
    factor: float
    cap: float
    jitter: float = 0.0
    floor: float = 0.0

    def __post_init__(self) -> None:
        if self.first < 0 or self.cap < 0 or self.factor < 1 or not 0 <= self.jitter <= 1:
            raise ValueError(f"not a backoff: {self}")

    def ceiling(self, retry: int) -> float:
        """The capped delay before retry ``retry``, before jitter; exact, without overflow for any ``retry``."""
        n = max(retry, 1) - 1
        if self.first == 0:
            return 0.0
        if self.factor > 1 and n > math.log(max(self.cap / self.first, 1.0), self.factor) + 1:
            return self.cap  # past the cap already: no need to raise factor to a huge power
        return min(self.cap, self.first * self.factor**n)

    def delay(self, retry: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry ``retry``: the ceiling, jittered, at least ``floor``."""
        ceiling = self.ceiling(retry)
        if self.jitter:
            ceiling *= 1.0 - self.jitter * (rng or random).random()
        return max(self.floor, ceiling)

    def tenacity_wait(self, rng: random.Random | None = None) -> Callable[[tenacity.RetryCallState], float]:
        """The same policy as a tenacity ``wait`` (the retry after attempt ``n`` is retry ``n``)."""
        return lambda state: self.delay(state.attempt_number, rng)

    @classmethod
    def for_source(
        cls, backoff_base: float, max_delay_seconds: float, *, jitter: float = 0.5, floor: float = 0.0
    ) -> Backoff:
        """The source's retry settings: ``min(RETRY_MAX_DELAY_SECONDS, RETRY_BACKOFF_BASE**n)``, jittered."""
        return cls(first=backoff_base, factor=backoff_base, cap=max_delay_seconds, jitter=jitter, floor=floor)
