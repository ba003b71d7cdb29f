"""The session state machine under scripted time (no clock, no I/O)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from servergroup.coordination.session import SessionMachine
from servergroup.coordination.types import Lease, SessionState

TTL, RENEW, MARGIN = 1.0, 0.2, 0.2


def machine() -> SessionMachine:
    return SessionMachine(ttl=TTL, renew_interval=RENEW, fence_margin=MARGIN)


def test_starts_lost_and_connects_on_grant() -> None:
    m = machine()
    assert m.state is SessionState.LOST
    events = m.granted(Lease(id=7, ttl=1), sent_at=0.0, now=0.01)
    assert [e.state for e in events] == [SessionState.CONNECTED]
    assert m.lease_id == 7
    assert m.may_act(0.5)
    assert m.next_timer() == RENEW


def test_renewals_keep_it_connected() -> None:
    m = machine()
    m.granted(Lease(id=1, ttl=1), sent_at=0.0, now=0.0)
    now = 0.0
    for _ in range(50):
        now = m.next_timer()
        assert m.renew_due(now)
        lease = m.renew_started(now)
        assert m.renewed(lease, sent_at=now, remaining=1, now=now + 0.01) == []
    assert m.state is SessionState.CONNECTED
    assert m.fence_at == now + TTL - MARGIN


def test_overdue_renewal_suspends_before_expiry_then_loses() -> None:
    m = machine()
    m.granted(Lease(id=1, ttl=1), sent_at=0.0, now=0.0)
    lease = m.renew_started(0.2)  # never answered
    assert m.tick(0.79) == []
    assert m.may_act(0.79)
    events = m.tick(0.8)
    assert [e.state for e in events] == [SessionState.SUSPENDED]
    assert not m.may_act(0.8)
    # The lease cannot have expired at the store before 0 + TTL: we stopped first.
    assert events[0].at < 0.0 + TTL
    assert [e.state for e in m.tick(1.0)] == [SessionState.LOST]
    # A late reply for the lost lease changes nothing: LOST is final.
    assert m.renewed(lease, sent_at=0.2, remaining=1, now=1.1) == []
    assert m.state is SessionState.LOST


def test_renewal_after_suspension_reconnects_same_lease() -> None:
    m = machine()
    m.granted(Lease(id=1, ttl=1), sent_at=0.0, now=0.0)
    m.renew_started(0.2)
    m.renew_failed(1, gone=False, now=0.45)
    m.tick(0.85)
    assert m.state is SessionState.SUSPENDED
    lease = m.renew_started(0.9)
    events = m.renewed(lease, sent_at=0.9, remaining=1, now=0.92)
    assert [e.state for e in events] == [SessionState.CONNECTED]
    assert m.lease_id == 1
    assert m.may_act(0.92)


def test_slow_reply_does_not_reconnect_past_its_own_deadline() -> None:
    m = machine()
    m.granted(Lease(id=1, ttl=1), sent_at=0.0, now=0.0)
    m.tick(0.85)
    lease = m.renew_started(0.1)
    # Sent at 0.1, answered at 0.95: valid until 1.1, fence at 0.9 < now.
    m.renewed(lease, sent_at=0.1, remaining=1, now=0.95)
    assert m.state is SessionState.SUSPENDED
    assert not m.may_act(0.95)


def test_store_saying_gone_loses_at_once() -> None:
    m = machine()
    m.granted(Lease(id=1, ttl=1), sent_at=0.0, now=0.0)
    lease = m.renew_started(0.2)
    events = m.renew_failed(lease, gone=True, now=0.21)
    assert [e.state for e in events] == [SessionState.LOST]
    assert m.next_timer() == float("inf")


def test_regrant_after_loss_is_a_new_lease() -> None:
    m = machine()
    m.granted(Lease(id=1, ttl=1), sent_at=0.0, now=0.0)
    m.tick(2.0)
    assert m.state is SessionState.LOST
    events = m.granted(Lease(id=2, ttl=1), sent_at=2.1, now=2.2)
    assert [(e.state, e.lease_id) for e in events] == [(SessionState.CONNECTED, 2)]


def test_granted_ttl_larger_than_ours_is_not_trusted() -> None:
    m = machine()
    m.granted(Lease(id=1, ttl=5), sent_at=0.0, now=0.0)
    assert m.fence_at == TTL - MARGIN


@given(
    steps=st.lists(
        st.tuples(
            st.floats(min_value=0.0, max_value=0.6),
            st.sampled_from(["ok", "fail", "gone", "silent"]),
            st.floats(min_value=0.0, max_value=0.5),
        ),
        max_size=40,
    )
)
def test_never_may_act_after_the_lease_could_have_expired(
    steps: list[tuple[float, str, float]],
) -> None:
    """Whatever the renewal outcomes, may_act implies the lease is provably alive."""
    m = machine()
    m.granted(Lease(id=1, ttl=1), sent_at=0.0, now=0.0)
    proven_until = TTL  # the store cannot expire the lease before this
    now = 0.0
    for gap, outcome, latency in steps:
        now += gap
        m.tick(now)
        if m.may_act(now):
            assert now < proven_until - MARGIN + 1e-9
        if m.state is SessionState.LOST:
            break
        if not m.renew_due(now):
            continue
        sent = now
        lease = m.renew_started(sent)
        now += latency
        if outcome == "ok":
            m.renewed(lease, sent_at=sent, remaining=1, now=now)
            proven_until = max(proven_until, sent + TTL)
        elif outcome == "fail":
            m.renew_failed(lease, gone=False, now=now)
        elif outcome == "gone":
            m.renew_failed(lease, gone=True, now=now)
            proven_until = now
        else:
            m.renew_failed(lease, gone=False, now=now)
        if m.may_act(now):
            assert now < proven_until - MARGIN + 1e-9
