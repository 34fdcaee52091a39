"""The compactor's lease on object storage (lake/lease.py), against moto's S3 server (testkit/s3.py).

Time is injected where a test is about expiry (each holder has its own wall clock and monotonic clock,
moved by hand), so nothing waits for a TTL; the renewer tests use real time with a short TTL.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import obstore as obs
import pytest

from lake.lease import LEASE_KEY, Lease, LeaseRecord
from testkit.clock import ManualClock
from testkit.processes import wait_until
from testkit.s3 import S3Lake, s3_lake
from utils.errors import LakeError, LakeLockedError, LeaseLostError

pytestmark = pytest.mark.integration

__all__ = ["s3_lake"]  # the fixture, imported for pytest to find

TTL = 30.0
SKEW = 5.0


class Clocks:
    """One holder's clocks: wall (``expires_at``, judging others) and monotonic (its own deadline)."""

    def __init__(self) -> None:
        self.wall = ManualClock()
        self.mono = ManualClock()

    def advance(self, seconds: float) -> None:
        self.wall.advance(seconds)
        self.mono.advance(seconds)


def lease(lake: S3Lake, clocks: Clocks | None = None, **kwargs: object) -> Lease:
    """A lease on the lake's compactor key, on its own obstore client, with hand-moved clocks if given."""
    options: dict[str, object] = {"ttl": TTL, "max_skew": SKEW, "poll_interval": 0.05, **kwargs}
    if clocks is not None:
        options.update(clock=clocks.wall, monotonic=clocks.mono)
    return Lease(lake.store(), **options)  # type: ignore[arg-type]


def stored(lake: S3Lake) -> LeaseRecord:
    return LeaseRecord.from_bytes(bytes(obs.get(lake.store(), LEASE_KEY).bytes()), LEASE_KEY)


@pytest.fixture
def lake(s3_lake: S3Lake) -> Iterator[S3Lake]:
    yield s3_lake


def test_acquire_creates_the_lease_with_create_only_semantics(lake: S3Lake) -> None:
    clocks = Clocks()
    a = lease(lake, clocks)
    assert a.acquire(0)
    assert a.held and a.epoch == 1
    record = stored(lake)
    assert record.holder == a.holder_id and record.epoch == 1 and not record.released
    assert record.expires_at == pytest.approx(clocks.wall() + TTL)
    assert a.check() == pytest.approx(TTL)  # nothing moved on the hand-held monotonic clock
    puts = lake.requests.matching("PUT", LEASE_KEY)
    assert [(r.if_none_match, r.if_match, r.status) for r in puts] == [("*", None, 200)]
    assert lake.keys() == [LEASE_KEY]


def test_a_second_holder_waits_and_is_told_who_holds_it(lake: S3Lake) -> None:
    a, b = lease(lake), lease(lake)
    assert a.acquire(0)
    assert not b.acquire(0)
    started = time.monotonic()
    assert not b.acquire(timeout=0.3)
    assert time.monotonic() - started >= 0.3
    assert b.last_seen is not None and b.last_seen.holder == a.holder_id
    with pytest.raises(LakeLockedError, match=a.holder_id), b.hold(timeout=0.1):
        pass
    assert not b.held
    a.check()  # untouched by the attempts
    assert stored(lake).holder == a.holder_id


def test_an_expired_lease_is_taken_over_and_the_old_holder_is_fenced(lake: S3Lake) -> None:
    clocks_a, clocks_b = Clocks(), Clocks()
    a, b = lease(lake, clocks_a), lease(lake, clocks_b)
    assert a.acquire(0)
    clocks_b.wall.advance(TTL + SKEW - 0.5)  # expired by A's record, but not beyond the skew allowance
    assert not b.acquire(0)
    clocks_b.wall.advance(1.0)
    assert b.acquire(0)
    assert b.epoch == 2
    record = stored(lake)
    assert record.holder == b.holder_id and record.epoch == 2
    puts = lake.requests.matching("PUT", LEASE_KEY)
    assert puts[-1].if_match is not None and puts[-1].if_none_match is None and puts[-1].status == 200
    # A's own clocks did not move: by them it has 30 s left. The store says otherwise.
    assert a.remaining == pytest.approx(TTL)
    with pytest.raises(LeaseLostError, match="changed"):
        a.check()
    assert not a.held
    with pytest.raises(LeaseLostError):
        a.check()
    b.check()


def test_a_renewal_after_a_takeover_fails_and_leaves_the_new_holder_alone(lake: S3Lake) -> None:
    clocks_a, clocks_b = Clocks(), Clocks()
    a, b = lease(lake, clocks_a), lease(lake, clocks_b)
    assert a.acquire(0)
    a.renew()  # a renewal of a lease still ours succeeds
    clocks_b.wall.advance(TTL + SKEW + 1)
    assert b.acquire(0)
    with pytest.raises(LeaseLostError):
        a.renew()
    assert stored(lake).holder == b.holder_id
    assert lake.requests.matching("PUT", LEASE_KEY)[-1].status == 412
    with pytest.raises(LeaseLostError):
        a.renew()  # lost for good: no more writes
    assert lake.requests.matching("PUT", LEASE_KEY)[-1].status == 412
    a.release()  # never raises, never touches another holder's lease
    assert stored(lake).holder == b.holder_id
    b.check()


def test_renewing_moves_the_expiry_forward(lake: S3Lake) -> None:
    clocks = Clocks()
    a = lease(lake, clocks)
    assert a.acquire(0)
    first = stored(lake).expires_at
    clocks.advance(10)
    assert a.check() == pytest.approx(TTL - 10)
    a.renew()
    assert stored(lake).expires_at == pytest.approx(first + 10)
    assert a.check() == pytest.approx(TTL)
    assert lake.requests.matching("PUT", LEASE_KEY)[-1].if_match is not None


def test_the_check_fails_when_the_local_deadline_runs_out_and_passes_again_after_a_renewal(lake: S3Lake) -> None:
    clocks = Clocks()
    a = lease(lake, clocks, commit_margin=5.0)
    assert a.acquire(0)
    clocks.advance(TTL - 5.0 + 0.1)  # renewals did not happen: under the commit margin
    with pytest.raises(LeaseLostError, match=r"under the 5\.0s a commit needs"):
        a.check()
    assert a.held  # not lost: nobody took it over, and a renewal can still prove that
    a.renew()
    assert a.check() == pytest.approx(TTL)


def test_a_holder_whose_lease_lapsed_unseen_takes_it_again(lake: S3Lake) -> None:
    clocks = Clocks()
    a, b = lease(lake, clocks), lease(lake)
    assert a.acquire(0)
    clocks.mono.advance(TTL + 1)  # no renewals; by its wall clock (and everyone's) the lease is still live
    with pytest.raises(LeaseLostError):
        a.check()
    assert a.acquire(0)  # its own lease: If-Match on the version it reads back, a new epoch
    assert a.epoch == 2 and stored(lake).holder == a.holder_id
    assert a.check() == pytest.approx(TTL)
    assert not b.acquire(0)


def test_release_lets_a_waiting_holder_in_at_once(lake: S3Lake) -> None:
    a, b = lease(lake), lease(lake)
    assert a.acquire(0)
    got: list[bool] = []
    waiter = threading.Thread(target=lambda: got.append(b.acquire(timeout=20)))
    waiter.start()
    wait_until(lambda: b.last_seen is not None, 10, what="the second holder to see the first")
    released_at = time.monotonic()
    a.release()
    waiter.join(20)
    assert got == [True]
    assert time.monotonic() - released_at < 5  # not a TTL: the released record is taken at once
    assert b.epoch == 2 and stored(lake).holder == b.holder_id
    with pytest.raises(LeaseLostError, match="not held"):
        a.check()
    a.release()  # twice: nothing happens
    assert stored(lake).holder == b.holder_id


def test_the_same_instance_can_acquire_again_after_releasing(lake: S3Lake) -> None:
    a = lease(lake)
    assert a.acquire(0)
    a.release()
    assert stored(lake).released
    assert a.acquire(0)
    assert a.epoch == 2
    a.check()


def test_concurrent_acquires_yield_exactly_one_holder(lake: S3Lake) -> None:
    contenders = 8
    all_clocks = [Clocks() for _ in range(contenders)]
    leases = [lease(lake, c) for c in all_clocks]

    def race() -> list[int]:
        barrier = threading.Barrier(contenders)
        winners: list[int] = []

        def run(i: int) -> None:
            barrier.wait()
            if leases[i].acquire(0):
                winners.append(i)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(contenders)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        return winners

    first = race()  # the lease object does not exist: create-only
    assert len(first) == 1
    assert stored(lake).holder == leases[first[0]].holder_id
    for c in all_clocks:
        c.wall.advance(TTL + SKEW + 1)  # every contender sees the lease expired ...
    all_clocks[first[0]].wall.advance(-(TTL + SKEW + 1))  # ... but its holder (who would just renew)
    second = race()  # takeover: If-Match on the one ETag all of them read
    assert first[0] in second  # its holder keeps answering True: it still holds the lease
    takers = [i for i in second if i != first[0]]
    assert len(takers) == 1
    winner = leases[takers[0]]
    assert stored(lake).holder == winner.holder_id and winner.epoch == 2
    holders = []
    for candidate in leases:
        try:
            candidate.check()
            holders.append(candidate)
        except LeaseLostError:
            pass
    assert holders == [winner]


def test_the_renewer_keeps_the_lease_alive_past_its_ttl(lake: S3Lake) -> None:
    a = lease(lake, ttl=1.5, max_skew=0.2, renew_every=0.25, commit_margin=0.25)
    b = lease(lake, ttl=1.5, max_skew=0.2)
    with a.hold(timeout=0):
        first = stored(lake).expires_at
        deadline = time.monotonic() + 3.0  # twice the TTL
        while time.monotonic() < deadline:
            assert a.check() >= 0.25
            assert not b.acquire(0)
            time.sleep(0.1)
        assert stored(lake).expires_at > first + 2.0
    assert stored(lake).released
    assert b.acquire(0)


def test_a_holder_that_stops_renewing_is_replaced_after_ttl_and_skew(lake: S3Lake) -> None:
    a = lease(lake, ttl=1.0, max_skew=0.2, renew_every=0.2)
    b = lease(lake, ttl=1.0, max_skew=0.2)
    assert a.acquire(0)
    a.start_renewing()
    time.sleep(1.5)
    assert not b.acquire(0)
    a.stop_renewing()  # as if the process froze or died without releasing
    stopped = time.monotonic()
    assert b.acquire(timeout=10)
    assert time.monotonic() - stopped >= 0.8  # TTL + skew after A's last renewal, at most renew_every before the stop
    with pytest.raises(LeaseLostError):
        a.check()


def test_the_renewer_reports_a_loss(lake: S3Lake) -> None:
    clocks_b = Clocks()
    lost: list[LeaseLostError] = []
    a = lease(lake, ttl=5.0, renew_every=0.1, on_lost=lost.append)
    b = lease(lake, clocks_b, ttl=5.0)
    assert a.acquire(0)
    a.start_renewing()
    clocks_b.wall.advance(3600)  # B's wall clock is an hour ahead: it takes A's lease (the skew assumption broken)
    assert b.acquire(0)
    wait_until(lambda: bool(lost), 10, what="the renewer to notice the loss")
    assert isinstance(lost[0], LeaseLostError) and not a.held
    a.stop_renewing()
    with pytest.raises(LeaseLostError):
        a.check()
    b.check()


def test_a_write_whose_answer_was_lost_still_counts_as_ours(lake: S3Lake) -> None:
    """The store took the write but answered 500: the client retries, gets 412, reads back its own bytes."""
    a, b = lease(lake), lease(lake)
    with lake.server.fault("PUT", LEASE_KEY) as fault:
        assert a.acquire(0)
    assert fault.hit
    statuses = [r.status for r in lake.requests.matching("PUT", LEASE_KEY)]
    assert statuses == [500, 412]
    assert a.held and stored(lake).holder == a.holder_id
    a.check()
    lake.requests.clear()
    with lake.server.fault("PUT", LEASE_KEY):
        a.renew()
    assert [r.status for r in lake.requests.matching("PUT", LEASE_KEY)] == [500, 412]
    a.check()
    assert not b.acquire(0)


def test_a_lost_answer_without_retries_is_settled_by_the_next_check(lake: S3Lake) -> None:
    a = Lease(lake.store(retry_config={"max_retries": 0}), ttl=TTL, max_skew=SKEW)
    assert a.acquire(0)
    with lake.server.fault("PUT", LEASE_KEY), pytest.raises(LakeError) as caught:
        a.renew()
    assert not isinstance(caught.value, LeaseLostError)  # unknown outcome, not a loss
    record = stored(lake)
    assert record.renewed_at > record.acquired_at  # the renewal landed: the store's ETag is not the one A knows
    a.check()  # reads back its own unconfirmed bytes and adopts them
    a.renew()  # If-Match on the adopted ETag
    a.check()


def test_the_check_asks_the_store_and_an_unreachable_store_is_no_pass(lake: S3Lake) -> None:
    a = Lease(lake.store(retry_config={"max_retries": 0}), ttl=TTL, max_skew=SKEW)
    assert a.acquire(0)
    with lake.server.fault("HEAD", LEASE_KEY), pytest.raises(LakeError) as caught:
        a.check()
    assert not isinstance(caught.value, LeaseLostError)
    assert a.check() > 0  # the store answers again: the lease was ours all along


def test_a_lease_object_that_was_deleted_is_lost(lake: S3Lake) -> None:
    a = lease(lake)
    assert a.acquire(0)
    obs.delete(lake.store(), LEASE_KEY)
    with pytest.raises(LeaseLostError, match="gone"):
        a.check()


def test_a_foreign_object_at_the_key_is_refused_not_taken(lake: S3Lake) -> None:
    obs.put(lake.store(), LEASE_KEY, b"not json")
    with pytest.raises(LakeError, match="is not a lease object"):
        lease(lake).acquire(0)
    obs.put(lake.store(), LEASE_KEY, json.dumps({"holder": "x"}).encode())
    with pytest.raises(LakeError, match="is not a lease object"):
        lease(lake).acquire(0)
    assert bytes(obs.get(lake.store(), LEASE_KEY).bytes()) == json.dumps({"holder": "x"}).encode()


def test_without_the_lease_there_is_nothing_to_check_or_renew(lake: S3Lake) -> None:
    a = lease(lake)
    with pytest.raises(LeaseLostError, match="not held"):
        a.check()
    with pytest.raises(LeaseLostError, match="not held"):
        a.renew()
    with pytest.raises(LeaseLostError):
        a.start_renewing()
    a.release()
    assert lake.keys() == []


@pytest.mark.parametrize(
    "options",
    [
        {"ttl": 0},
        {"ttl": 10, "renew_every": 10},
        {"ttl": 10, "commit_margin": 10},
        {"max_skew": -1},
        {"poll_interval": 0},
    ],
)
def test_timings_that_cannot_work_are_refused(lake: S3Lake, options: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=r"must be|need"):
        Lease(lake.store(), **options)  # type: ignore[arg-type]
