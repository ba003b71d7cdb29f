"""The session state machine: when a lease holder may act. Pure: no I/O, no clock.

Theory of operation. A session owns one lease. Each renewal is sent at some
`sent_at`; when its reply says the lease has `remaining` seconds, the lease is
known alive until `sent_at + min(ttl, remaining)` (`valid_until`): the
store received the renewal after we sent it, so it cannot expire earlier.

- CONNECTED while `now < valid_until - fence_margin` (`fence_at`).
- SUSPENDED from `fence_at` until a renewal succeeds again: the lease may
  still exist, but we can no longer prove it will outlive our next action,
  so owners stop acting. This happens *before* the store can expire the
  lease, so nobody else can have taken over while we still act
  (self-fencing).
- LOST at `valid_until` or when the store says the lease is gone. LOST is
  final for that lease; the driver grants a new one and the machine starts
  again CONNECTED with a new `lease_id`.

The driver calls `granted`, `renew_started`, `renewed`, `renew_failed` and
`tick(now)`, and sleeps until `next_timer()`. Every call returns the state
changes it caused, which the driver publishes. `may_act(now)` is the check
an owner makes right before it acts: it is synchronous, so a process thawed
after SIGSTOP cannot act on a stale view before its timers have run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from servergroup.coordination.types import Lease, SessionState

INFINITY = math.inf


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionChanged:
    """The session moved to `state` (past tense: an event)."""

    state: SessionState
    lease_id: int
    reason: str
    at: float


class SessionMachine:
    """Decides the session state from renewals and time."""

    def __init__(
        self,
        *,
        ttl: float,
        renew_interval: float,
        fence_margin: float,
        retry_interval: float | None = None,
    ) -> None:
        self._ttl = ttl
        self._renew_interval = renew_interval
        self._fence_margin = fence_margin
        self._retry_interval = retry_interval or renew_interval / 4
        self.state = SessionState.LOST
        self.lease_id = 0
        self.valid_until = -INFINITY
        self._next_renew_at = INFINITY
        self._in_flight = False

    @property
    def fence_at(self) -> float:
        """When the holder must stop acting unless a renewal succeeds first."""
        return self.valid_until - self._fence_margin

    def may_act(self, now: float) -> bool:
        """True if a lease holder may act at `now`."""
        return self.state is SessionState.CONNECTED and now < self.fence_at

    def _move(self, state: SessionState, reason: str, now: float) -> list[SessionChanged]:
        if state is self.state:
            return []
        self.state = state
        return [SessionChanged(state=state, lease_id=self.lease_id, reason=reason, at=now)]

    def granted(self, lease: Lease, *, sent_at: float, now: float) -> list[SessionChanged]:
        """A new lease was granted in reply to a request sent at `sent_at`."""
        self.lease_id = lease.id
        self.valid_until = sent_at + min(self._ttl, lease.ttl)
        self._next_renew_at = sent_at + self._renew_interval
        self._in_flight = False
        self.state = SessionState.LOST  # force the event even when re-granted
        if now >= self.fence_at:
            return self._move(SessionState.SUSPENDED, "lease granted too late to use", now)
        return self._move(SessionState.CONNECTED, f"lease {lease.id:x} granted", now)

    def renew_due(self, now: float) -> bool:
        """True if the driver should send a renewal now."""
        return (
            self.state is not SessionState.LOST
            and not self._in_flight
            and now >= self._next_renew_at
        )

    def renew_started(self, now: float) -> int:
        """The driver sent a renewal at `now`; returns the lease it renews."""
        self._in_flight = True
        return self.lease_id

    def renewed(
        self, lease_id: int, *, sent_at: float, remaining: float, now: float
    ) -> list[SessionChanged]:
        """A renewal sent at `sent_at` succeeded with `remaining` seconds of TTL."""
        if lease_id != self.lease_id or self.state is SessionState.LOST:
            return []
        self._in_flight = False
        self.valid_until = max(self.valid_until, sent_at + min(self._ttl, remaining))
        self._next_renew_at = sent_at + self._renew_interval
        events = self.tick(now)
        if self.state is SessionState.SUSPENDED and now < self.fence_at:
            events += self._move(SessionState.CONNECTED, "lease renewed", now)
        return events

    def renew_failed(self, lease_id: int, *, gone: bool, now: float) -> list[SessionChanged]:
        """A renewal failed; `gone` when the store said the lease no longer exists."""
        if lease_id != self.lease_id or self.state is SessionState.LOST:
            return []
        self._in_flight = False
        if gone:
            self.valid_until = min(self.valid_until, now)
            return self._move(SessionState.LOST, "the store says the lease is gone", now)
        self._next_renew_at = now + self._retry_interval
        return self.tick(now)

    def tick(self, now: float) -> list[SessionChanged]:
        """Apply the passage of time."""
        events: list[SessionChanged] = []
        if self.state is SessionState.CONNECTED and now >= self.fence_at:
            events += self._move(SessionState.SUSPENDED, "lease renewal overdue", now)
        if self.state is SessionState.SUSPENDED and now >= self.valid_until:
            events += self._move(SessionState.LOST, "lease may have expired", now)
        return events

    def lost(self, reason: str, now: float) -> list[SessionChanged]:
        """Give the lease up (closing, or revoked on purpose)."""
        self.valid_until = min(self.valid_until, now)
        return self._move(SessionState.LOST, reason, now)

    def next_timer(self) -> float:
        """When the driver must call `tick` (or renew) next."""
        if self.state is SessionState.LOST:
            return INFINITY
        deadline = self.fence_at if self.state is SessionState.CONNECTED else self.valid_until
        renew = INFINITY if self._in_flight else self._next_renew_at
        return min(deadline, renew)


__all__ = ["SessionChanged", "SessionMachine"]
