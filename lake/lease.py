"""The compactor's lease on object storage: at most one compactor per lake, across machines.

Locally an OS ``flock`` keeps one compactor per lake (``lake/lock.py``), but a lock on one host cannot
be seen from another. On S3-compatible storage the compactor holds a *lease*: a small JSON object at
``<lake>/_locks/compactor.lease`` (:data:`LEASE_KEY`) naming its holder (a random id, host, pid), its
epoch (one more with every new holder) and when it expires. Every write of it is conditional:

* **acquire**: create it only if absent (``If-None-Match: *``), or replace an *expired* or released
  one only if it is still the version that was read (``If-Match`` on its ETag). Of any number of
  contenders, at most one write succeeds; the others see the winner's lease and wait.
* **renew**: rewrite it with a later expiry, ``If-Match`` on the ETag of our own last write. If that
  fails, someone else wrote it (a takeover): the lease is lost for good (:class:`LeaseLostError`).
  A background thread renews every ``ttl * RENEW_FRACTION`` seconds (:meth:`Lease.start_renewing`).
* **check**: the fencing check right before each commit. It passes only if the lease is ours by the
  local clock with at least ``commit_margin`` seconds to spare *and* the store still holds our own
  last write (a HEAD whose ETag is ours; S3 reads are strongly consistent after writes).
* **release**: overwrite it, ``If-Match`` on our ETag, with a record marked released: the next
  contender takes it at once; a lease that someone else holds by then is left alone.

A write whose answer was lost (a timeout, a 5xx retried by the client after it had landed) is not
taken for a loss: when a conditional write is refused, the lease is read back, and if it holds the
very bytes this holder sent, the write had landed and the lease is ours.

**Clocks.** ``expires_at`` is wall-clock time (seconds since the epoch) on the holder's clock: the
time the write was sent plus the TTL. A contender takes the lease over only once its own wall clock
is past ``expires_at + max_skew``. The holder, for its part, trusts the lease only until the
*monotonic* time at which it sent its last successful write, plus the TTL (a jump of its wall clock
changes nothing). So two holders never overlap as long as the hosts' wall clocks differ by less than
``max_skew`` (keep them NTP-synchronised; the default allows 5 s) and a commit that passed
:meth:`Lease.check` lands within ``commit_margin`` seconds. That last condition is the limit of any
lease on a store that cannot check a fencing token itself: a holder paused (GC, a frozen VM) between
the check and its commit for longer than the margin could commit after its lease expired. The
compactor's own re-check of its inputs against the newest version right before committing still
applies; the lease narrows the window to the commit itself.

The store must answer within the TTL for renewals to keep the lease: give the lease a client whose
request timeout and retry budget are well under it (obstore's default retry budget is minutes).
Errors: :class:`LeaseLostError` when the lease is not (or no longer provably) ours, ``LakeError``
when the store could not be reached to decide, ``LakeLockedError`` from :meth:`Lease.hold` when
another holder keeps it past the wait.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Final

import obstore as obs
from obstore.exceptions import AlreadyExistsError, BaseError, PreconditionError

from utils.errors import LakeError, LakeLockedError, LeaseLostError, one_line

if TYPE_CHECKING:
    from obstore import PutMode
    from obstore.store import ObjectStore

log = logging.getLogger(__name__)

LEASE_KEY: Final = "_locks/compactor.lease"
FORMAT_VERSION: Final = 1
DEFAULT_TTL_S: Final = 30.0
DEFAULT_MAX_SKEW_S: Final = 5.0
RENEW_FRACTION: Final = 1 / 3  # renew three times per TTL
COMMIT_MARGIN_FRACTION: Final = 1 / 4  # check() wants this share of the TTL left for the commit to land in
DEFAULT_POLL_S: Final = 1.0

Clock = Callable[[], float]


@dataclass(frozen=True)
class LeaseRecord:
    """The content of the lease object (JSON). Times are seconds since the epoch on the writer's clock."""

    holder: str
    host: str
    pid: int
    epoch: int
    acquired_at: float
    renewed_at: float
    expires_at: float
    ttl_s: float
    released: bool = False
    version: int = FORMAT_VERSION

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> LeaseRecord:
        """Parse a lease object; LakeError (naming ``where``) if it is not one."""
        try:
            raw = json.loads(data)
            record = cls(
                holder=str(raw["holder"]),
                host=str(raw["host"]),
                pid=int(raw["pid"]),
                epoch=int(raw["epoch"]),
                acquired_at=float(raw["acquired_at"]),
                renewed_at=float(raw["renewed_at"]),
                expires_at=float(raw["expires_at"]),
                ttl_s=float(raw["ttl_s"]),
                released=bool(raw["released"]),
                version=int(raw["version"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise LakeError(
                f"{where} is not a lease object ({exc}); remove it if no compactor runs on this lake"
            ) from exc
        if record.version != FORMAT_VERSION or not math.isfinite(record.expires_at):
            raise LakeError(f"{where} holds a lease of an unknown format (version {record.version})")
        return record

    def describe(self) -> str:
        """The holder and its expiry, for messages."""
        expiry = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.expires_at))
        state = "released" if self.released else f"expires at {expiry} by its clock"
        return f"holder {self.holder} (host {self.host}, pid {self.pid}, epoch {self.epoch}, {state})"


@dataclass(frozen=True)
class _Version:
    """One version of the lease object as read: its ETag, bytes and record."""

    etag: str
    body: bytes
    record: LeaseRecord


class Lease:
    """A lease on one key of an object store, for one holder (this instance).

    Thread-safe: the renewer thread and the caller's :meth:`check` share it. ``clock`` (wall time)
    stamps ``expires_at`` and judges others' leases; ``monotonic`` bounds this holder's own trust in
    its lease; waiting in :meth:`acquire` uses real time. Both clocks are injectable for tests.
    """

    def __init__(
        self,
        store: ObjectStore,
        key: str = LEASE_KEY,
        *,
        ttl: float = DEFAULT_TTL_S,
        max_skew: float = DEFAULT_MAX_SKEW_S,
        renew_every: float | None = None,
        commit_margin: float | None = None,
        poll_interval: float = DEFAULT_POLL_S,
        clock: Clock = time.time,
        monotonic: Clock = time.monotonic,
        on_lost: Callable[[LeaseLostError], None] | None = None,
    ) -> None:
        renew_every = ttl * RENEW_FRACTION if renew_every is None else renew_every
        commit_margin = ttl * COMMIT_MARGIN_FRACTION if commit_margin is None else commit_margin
        if not (ttl > 0 and 0 < renew_every < ttl and 0 <= commit_margin < ttl and max_skew >= 0):
            raise ValueError(
                f"lease timing: need ttl > 0, 0 < renew_every < ttl, 0 <= commit_margin < ttl and max_skew >= 0 "
                f"(ttl={ttl}, renew_every={renew_every}, commit_margin={commit_margin}, max_skew={max_skew})"
            )
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be > 0, not {poll_interval}")
        self.store = store
        self.key = key
        self.ttl = ttl
        self.max_skew = max_skew
        self.renew_every = renew_every
        self.commit_margin = commit_margin
        self.poll_interval = poll_interval
        self.holder_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"
        self._clock = clock
        self._monotonic = monotonic
        self._on_lost = on_lost
        self._lock = threading.RLock()
        self._held: _Version | None = None  # our last write that the store confirmed
        self._deadline = -math.inf  # monotonic time until which this holder trusts its lease
        self._lost: str | None = None  # why the lease was lost (a fact of the store), once it was
        self._unconfirmed: dict[bytes, float] = {}  # bodies sent without an answer -> monotonic send time
        self._last_seen: LeaseRecord | None = None  # the other holder's lease, last time we looked
        self._stop_renewing: threading.Event | None = None
        self._renewer: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"Lease({self.key!r}, holder={self.holder_id!r}, held={self.held})"

    # -- state --------------------------------------------------------------------------------------
    @property
    def held(self) -> bool:
        """True while this holder has a confirmed write of the lease and has not learnt of its loss.

        Says nothing about expiry or the store's current state: :meth:`check` verifies those.
        """
        with self._lock:
            return self._held is not None and self._lost is None

    @property
    def epoch(self) -> int | None:
        """The epoch of the lease this holder holds (one more for every new holder), else None."""
        with self._lock:
            return self._held.record.epoch if self._held is not None else None

    @property
    def remaining(self) -> float:
        """Seconds this holder may still trust its lease by its own clock (negative: expired; -inf: none)."""
        with self._lock:
            return self._deadline - self._monotonic() if self._held is not None else -math.inf

    @property
    def last_seen(self) -> LeaseRecord | None:
        """Another holder's lease as last read by :meth:`acquire` (for messages), if any."""
        return self._last_seen

    def read(self) -> LeaseRecord | None:
        """The lease object's content now (None if there is none); LakeError if the store cannot say."""
        version = self._read()
        return None if version is None else version.record

    # -- acquire ------------------------------------------------------------------------------------
    def acquire(self, timeout: float | None = 0.0) -> bool:
        """Take the lease; True once held, False if another holder kept it for ``timeout`` seconds.

        ``timeout=0`` tries once; ``None`` waits as long as it takes. While another holder's lease is
        live this polls every ``poll_interval`` seconds; it takes the lease over once it is released
        or expired (by this host's wall clock, beyond ``max_skew``). Store errors while waiting are
        logged and retried; with ``timeout=0`` they raise LakeError. Returns True at once if this
        instance already holds it.
        """
        deadline = math.inf if timeout is None else time.monotonic() + max(0.0, timeout)
        announced: str | None = None
        while True:
            try:
                if self._try_acquire():
                    return True
            except LakeError as exc:
                if time.monotonic() >= deadline:
                    raise
                log.warning("could not read or write the lease %s (%s); trying again", self.key, one_line(exc))
            else:
                seen = self._last_seen
                if seen is not None and seen.holder != announced:
                    announced = seen.holder
                    if timeout != 0:
                        log.info("waiting for the lease %s: %s", self.key, seen.describe())
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(self.poll_interval, left))

    def _try_acquire(self) -> bool:
        with self._lock:
            if self._held is not None and self._lost is None and self._deadline > self._monotonic():
                return True
            self._held, self._lost, self._deadline = None, None, -math.inf  # our own lapsed lease is read back below
            current = self._read()
            now = self._clock()
            mode: PutMode
            if current is None:
                epoch, mode = 1, "create"
            else:
                theirs = current.record
                ours = theirs.holder == self.holder_id  # this instance's own: lapsed, or a release that failed
                if not (ours or theirs.released or now > theirs.expires_at + self.max_skew):
                    self._last_seen = theirs
                    return False
                epoch, mode = theirs.epoch + 1, {"e_tag": current.etag}
            record = LeaseRecord(
                holder=self.holder_id,
                host=socket.gethostname(),
                pid=os.getpid(),
                epoch=epoch,
                acquired_at=now,
                renewed_at=now,
                expires_at=now + self.ttl,
                ttl_s=self.ttl,
            )
            written = self._put(record, mode)
            if written is None:  # another contender's write came first
                self._last_seen = None
                return False
            if current is not None and not current.record.released and current.record.holder != self.holder_id:
                log.warning("took over the expired lease %s of %s", self.key, current.record.describe())
            log.info("holding the lease %s (epoch %d, ttl %.0fs)", self.key, epoch, self.ttl)
            return True

    # -- renew, check -------------------------------------------------------------------------------
    def renew(self) -> None:
        """Push the expiry to now + TTL, ``If-Match`` on our last write.

        Raises LeaseLostError if the lease is not ours any more (taken over, removed, never held),
        LakeError if the store could not be reached (the lease may still be ours: try again; the local
        deadline keeps counting down meanwhile).
        """
        with self._lock:
            held = self._require_held()
            now = self._clock()
            record = replace(held.record, renewed_at=now, expires_at=now + self.ttl)
            if self._put(record, {"e_tag": held.etag}) is None:
                raise self._lose("the lease object changed since this holder's last write (taken over or removed)")

    def check(self, min_remaining: float | None = None) -> float:
        """The fencing check before a commit: returns the seconds the lease is still good for.

        Passes only if (1) this holder's own deadline leaves at least ``min_remaining`` seconds
        (default ``commit_margin``), before and after asking the store, and (2) the store still holds
        this holder's last write (HEAD, same ETag). Raises LeaseLostError otherwise (and for good if
        the store shows another write), LakeError if the store could not be asked (do not commit).
        """
        margin = self.commit_margin if min_remaining is None else min_remaining
        with self._lock:
            held = self._require_held()
            self._require_time(margin)
            try:
                meta = obs.head(self.store, self.key)
            except FileNotFoundError:
                raise self._lose("the lease object is gone") from None
            except (BaseError, OSError) as exc:
                raise LakeError(f"could not verify the lease {self.key}: {one_line(exc)}") from exc
            if meta["e_tag"] != held.etag and not self._adopt_unconfirmed():
                raise self._lose("the lease object changed since this holder's last write (taken over)")
            return self._require_time(margin)

    def _require_held(self) -> _Version:
        if self._lost is not None:
            raise LeaseLostError(f"the lease {self.key} was lost: {self._lost}")
        if self._held is None:
            raise LeaseLostError(f"the lease {self.key} is not held by this process")
        return self._held

    def _adopt_unconfirmed(self) -> bool:
        """True if the store holds a write of ours whose answer was lost (it becomes the held version)."""
        if not self._unconfirmed:
            return False
        current = self._read()
        if current is None or current.body not in self._unconfirmed:
            return False
        self._confirm(current, self._unconfirmed[current.body])
        return True

    def _require_time(self, margin: float) -> float:
        left = self._deadline - self._monotonic()
        if left < margin:
            raise LeaseLostError(
                f"the lease {self.key} is good for {left:.1f}s by this host's clock, under the {margin:.1f}s a "
                "commit needs (renewals failing?)"
            )
        return left

    def _lose(self, why: str) -> LeaseLostError:
        self._lost = why
        self._held = None
        self._deadline = -math.inf
        log.error("lost the lease %s: %s", self.key, why)
        return LeaseLostError(f"the lease {self.key} was lost: {why}")

    # -- release ------------------------------------------------------------------------------------
    def release(self) -> None:
        """Stop renewing and hand the lease back (a released record, ``If-Match`` on our last write).

        Never raises: a lease already lost is left alone; if the store cannot be reached the lease
        simply expires. Afterwards this instance holds nothing (it may :meth:`acquire` again).
        """
        self.stop_renewing()
        with self._lock:
            held, lost = self._held, self._lost
            self._held, self._deadline, self._lost = None, -math.inf, None
            if held is None or lost is not None:
                return
            now = self._clock()
            record = replace(held.record, renewed_at=now, expires_at=now, released=True)
            try:
                written = self._put(record, {"e_tag": held.etag})
            except LakeError as exc:
                log.warning("could not release the lease %s (%s): it expires by itself", self.key, one_line(exc))
                return
            finally:
                self._held, self._deadline = None, -math.inf  # the released record is not a lease to hold
            if written is None:
                log.warning("the lease %s had been taken over before it was released", self.key)
            else:
                log.info("released the lease %s", self.key)

    @contextlib.contextmanager
    def hold(self, timeout: float | None = None) -> Iterator[Lease]:
        """Acquire (waiting up to ``timeout`` seconds; None: forever), renew in the background, release at the end.

        Raises LakeLockedError, naming the holder, if another one keeps the lease for ``timeout``.
        """
        if not self.acquire(timeout):
            seen = self._last_seen
            raise LakeLockedError(
                f"another compactor holds the lease {self.key} "
                f"({seen.describe() if seen is not None else 'holder unknown'}); at most one compactor per lake"
            )
        self.start_renewing()
        try:
            yield self
        finally:
            self.release()

    # -- the renewer --------------------------------------------------------------------------------
    def start_renewing(self) -> None:
        """Renew in a daemon thread every ``renew_every`` seconds until :meth:`stop_renewing` or a loss.

        A failed renewal (store unreachable) is retried three times as often; a loss ends the thread
        and calls ``on_lost`` with the LeaseLostError (from the renewer thread).
        """
        with self._lock:
            self._require_held()
            if self._renewer is not None and self._renewer.is_alive():
                return
            stop = threading.Event()
            self._stop_renewing = stop
            self._renewer = threading.Thread(target=self._renew_loop, args=(stop,), name="lease-renewer", daemon=True)
            self._renewer.start()

    def stop_renewing(self) -> None:
        """Stop the renewer thread (if any) and wait for it; the lease stays held until it expires or is released."""
        with self._lock:
            stop, thread = self._stop_renewing, self._renewer
            self._stop_renewing, self._renewer = None, None
        if stop is not None:
            stop.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _renew_loop(self, stop: threading.Event) -> None:
        interval = self.renew_every
        while not stop.wait(interval):
            try:
                self.renew()
            except LeaseLostError as exc:
                if self._on_lost is not None:
                    self._on_lost(exc)
                return
            except LakeError as exc:
                log.warning("renewing the lease %s failed (%s); %.1fs left", self.key, exc, self.remaining)
                interval = self.renew_every / 3
            else:
                interval = self.renew_every

    # -- the store ----------------------------------------------------------------------------------
    def _read(self) -> _Version | None:
        try:
            result = obs.get(self.store, self.key)
            body = bytes(result.bytes())
        except FileNotFoundError:
            return None
        except (BaseError, OSError) as exc:
            raise LakeError(f"could not read the lease {self.key}: {one_line(exc)}") from exc
        etag = result.meta["e_tag"]
        if not etag:
            raise LakeError(f"the store gave no ETag for {self.key}: it cannot hold a lease")
        return _Version(etag, body, LeaseRecord.from_bytes(body, self.key))

    def _put(self, record: LeaseRecord, mode: PutMode) -> _Version | None:
        """Write ``record`` under ``mode``; on success it becomes the held version, with a fresh deadline.

        Returns None if the precondition failed because of someone else's write. A refused write whose
        bytes are in the store anyway (this attempt retried by the client, or an earlier one whose
        answer was lost) counts as ours. LakeError if the store could not be reached.
        """
        body = record.to_bytes()
        sent = self._monotonic()
        try:
            result = obs.put(self.store, self.key, body, mode=mode)
        except (AlreadyExistsError, PreconditionError):
            current = self._read()
            ours = {**self._unconfirmed, body: sent}
            if current is None or current.body not in ours:
                return None
            return self._confirm(current, ours[current.body])
        except (BaseError, OSError) as exc:
            self._unconfirmed[body] = sent
            raise LakeError(f"could not write the lease {self.key}: {one_line(exc)}") from exc
        etag = result["e_tag"]
        if not etag:
            raise LakeError(f"the store gave no ETag for {self.key}: it cannot hold a lease")
        return self._confirm(_Version(etag, body, record), sent)

    def _confirm(self, version: _Version, sent: float) -> _Version:
        self._held = version
        self._deadline = sent + version.record.ttl_s
        self._lost = None
        self._unconfirmed.clear()
        return version
