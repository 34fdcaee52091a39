"""The one backoff policy: capped, jittered within bounds, and defined for any retry number (no overflow)."""

from __future__ import annotations

import random

import pytest
import tenacity

from utils.retry import Backoff


def test_grows_by_factor_until_the_cap() -> None:
    backoff = Backoff(first=0.2, factor=2.0, cap=5.0)
    assert [backoff.delay(n) for n in range(1, 8)] == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]


def test_source_policy_is_base_to_the_retry_capped() -> None:
    backoff = Backoff.for_source(3.0, 60.0, jitter=0.0)
    assert [backoff.delay(n) for n in range(1, 6)] == [3.0, 9.0, 27.0, 60.0, 60.0]


@pytest.mark.parametrize("retry", [10**3, 10**6, 10**12, 2**63])
def test_an_outage_of_any_length_never_overflows(retry: int) -> None:
    # Before the one policy, base**failures raised OverflowError after about a day of outage.
    assert Backoff.for_source(3.0, 60.0).delay(retry, random.Random(0)) <= 60.0
    assert Backoff.for_source(100.0, 3600.0, jitter=0.0).delay(retry) == 3600.0


def test_jitter_stays_within_its_share_and_floor_holds() -> None:
    rng = random.Random(7)
    backoff = Backoff(first=10.0, factor=1.0, cap=10.0, jitter=0.5)
    samples = [backoff.delay(3, rng) for _ in range(2000)]
    assert min(samples) >= 5.0
    assert max(samples) <= 10.0
    assert max(samples) - min(samples) > 4.0  # actually jittered
    assert Backoff(first=0.001, factor=1.0, cap=1.0, floor=0.05).delay(1) == 0.05


def test_as_a_tenacity_wait_the_attempt_number_is_the_retry_number() -> None:
    backoff = Backoff(first=1.0, factor=2.0, cap=100.0)
    sleeps: list[float] = []
    calls = iter([ValueError(), ValueError(), ValueError(), "done"])

    def attempt() -> str:
        outcome = next(calls)
        if isinstance(outcome, Exception):
            raise outcome
        return str(outcome)

    retrying = tenacity.Retrying(wait=backoff.tenacity_wait(), sleep=sleeps.append, reraise=True)
    assert retrying(attempt) == "done"
    assert sleeps == [1.0, 2.0, 4.0]


@pytest.mark.parametrize(
    "bad", [{"first": -1.0}, {"factor": 0.5}, {"jitter": 1.5}, {"cap": -2.0}], ids=lambda d: next(iter(d))
)
def test_a_nonsense_policy_is_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="not a backoff"):
        Backoff(**{"first": 1.0, "factor": 2.0, "cap": 10.0, **bad})
