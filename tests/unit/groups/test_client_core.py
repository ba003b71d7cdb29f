"""The client's I/O-free core: what it sends, which datagrams it accepts, status joining,
acks, nacks, the window, ack timeouts (scripted `now`) and the count of missed seqs."""

from __future__ import annotations

import json

import pytest

from servergroup.common.errors import UsageError
from servergroup.groups.client import (
    BroadcastReceived,
    BroadcastStats,
    BroadcastUnconfirmed,
    ClientCore,
    InvalidAddress,
    InvalidBroadcast,
    NackReceived,
    StatusReceived,
)
from servergroup.groups.protocol import (
    Broadcast,
    BroadcastAck,
    GroupMessage,
    Nack,
    StatusResponse,
    StatusResponseDone,
    Subscribe,
    encode_group_message,
)
from servergroup.guestcomm.protocol import (
    MESSAGING_ADDR,
    SERVER_GROUP_ADDR,
    Envelope,
    encode_envelope,
)
from servergroup.guestcomm.sockets import Datagram


def delivered(
    msg: GroupMessage, *, source: str = SERVER_GROUP_ADDR, sender: str | None = MESSAGING_ADDR
) -> Datagram:
    raw = encode_envelope(Envelope(data=encode_group_message(msg), source_addr=source))
    return Datagram(data=raw, sender=sender, truncated=False)


def test_requests_are_addressed_to_the_group_service() -> None:
    core = ClientCore()
    ident, raw = core.broadcast("hi")
    assert ident == 1
    assert json.loads(raw) == {
        "version": 2,
        "dest_addr": "cgcs.server_grp",
        "data": {"version": 2, "msg_type": "broadcast", "data": "hi", "id": 1},
    }
    seq1, _ = core.status_query()
    seq2, raw = core.status_query()
    assert (seq1, seq2) == (1, 2)
    assert json.loads(raw)["data"] == {"version": 2, "msg_type": "status_query", "seq": 2}
    assert not core.subscribes
    assert ClientCore(address="app2").subscribes


@pytest.mark.parametrize("text", ["x" * 3051, "a\x00", "a\nb"])
def test_bad_broadcast_raises(text: str) -> None:
    with pytest.raises(InvalidBroadcast):
        ClientCore().broadcast(text)


@pytest.mark.parametrize("address", ["", "sixteen-chars-xx", "a\x00b"])
def test_bad_address_raises(address: str) -> None:
    with pytest.raises(InvalidAddress):
        ClientCore(address=address)


def test_only_the_agent_and_the_group_service_are_heard() -> None:
    core = ClientCore()
    bcast = Broadcast(text="t", source_instance="instance-0000000b", seq=3)
    assert core.receive(delivered(bcast, sender="someone")) is None
    assert core.receive(delivered(bcast, sender=None)) is None
    assert core.receive(delivered(bcast, source="cgcs.scale")) is None
    truncated = Datagram(data=delivered(bcast).data, sender=MESSAGING_ADDR, truncated=True)
    assert core.receive(truncated) is None
    assert core.receive(Datagram(data=b"{", sender=MESSAGING_ADDR, truncated=False)) is None
    assert core.receive(delivered(Subscribe())) is None  # not something a host sends
    assert core.dropped == 6
    assert core.receive(delivered(bcast)) == BroadcastReceived(
        text="t", source_instance="instance-0000000b", seq=3
    )
    assert core.receive(delivered(Nack(orig_msg_type="broadcast", log_msg="no"))) == NackReceived(
        orig_msg_type="broadcast", reason="no"
    )
    assert core.receive(delivered(BroadcastAck(id=1, seq=1))) is None  # nothing was pending
    assert core.dropped == 6


def test_status_joins_the_latest_query_only() -> None:
    core = ClientCore()
    old, _ = core.status_query()
    assert core.receive(delivered(StatusResponse(seq=old, server={"name": "a"}))) is None
    new, _ = core.status_query()  # a new query forgets what the old one collected
    for msg in (
        StatusResponse(seq=old, server={"name": "stale"}),
        StatusResponse(seq=new, server={"name": "a"}),
        StatusResponseDone(seq=old),
        StatusResponse(seq=new, server={"name": "b"}),
    ):
        assert core.receive(delivered(msg)) is None
    assert core.receive(delivered(StatusResponseDone(seq=new))) == StatusReceived(
        seq=new, servers=({"name": "a"}, {"name": "b"})
    )
    assert core.dropped == 2
    # A done with nothing collected is an empty status, not an error.
    assert core.receive(delivered(StatusResponseDone(seq=new))) == StatusReceived(
        seq=new, servers=()
    )


# -- acks, nacks, the window, timeouts ---------------------------------------------------


def sent(core: ClientCore, *texts: str, now: float = 0.0) -> list[int]:
    """Send `texts` as the drivers do: the datagram, then `broadcast_sent`."""
    idents = []
    for text in texts:
        ident, raw = core.broadcast(text)
        assert json.loads(raw)["data"]["id"] == ident
        core.broadcast_sent(ident, text, now)
        idents.append(ident)
    return idents


def stats(core: ClientCore) -> BroadcastStats:
    result = core.stats
    assert result.sent == (
        result.acknowledged + result.refused + result.unconfirmed + result.pending
    )
    return result


def nack(ident: int | None, reason: str = "busy: try later") -> Datagram:
    return delivered(Nack(orig_msg_type="broadcast", log_msg=reason, id=ident))


def test_ids_increase_from_one_and_only_a_sent_broadcast_takes_one() -> None:
    core = ClientCore()
    assert core.broadcast("a")[0] == 1
    assert core.broadcast("b")[0] == 1  # not sent (the agent was busy): the id is not used
    assert sent(core, "a", "b", "c") == [1, 2, 3]
    assert core.pending_text(2) == "b"
    assert stats(core) == BroadcastStats(
        sent=3, acknowledged=0, refused=0, unconfirmed=0, missed=0, pending=3
    )
    with pytest.raises(UsageError):
        core.broadcast_sent(7, "x", 0.0)


def test_an_ack_is_cumulative() -> None:
    core = ClientCore()
    sent(core, "a", "b", "c", "d")
    assert core.receive(delivered(BroadcastAck(id=3, seq=17))) is None
    assert stats(core) == BroadcastStats(
        sent=4, acknowledged=3, refused=0, unconfirmed=0, missed=0, pending=1
    )
    assert core.pending_text(3) is None
    assert core.pending_text(4) == "d"
    # A repeated or older ack changes nothing; a later one takes the rest.
    core.receive(delivered(BroadcastAck(id=2, seq=16)))
    assert stats(core).acknowledged == 3
    core.receive(delivered(BroadcastAck(id=4, seq=18)))
    assert stats(core) == BroadcastStats(
        sent=4, acknowledged=4, refused=0, unconfirmed=0, missed=0, pending=0
    )
    assert core.dropped == 0


def test_a_nack_refuses_its_id_only_and_comes_before_the_ack_that_passes_it() -> None:
    core = ClientCore()
    sent(core, "a", "b", "c", "d", "e")
    event = core.receive(nack(3))
    assert event == NackReceived(orig_msg_type="broadcast", reason="busy: try later", id=3)
    assert stats(core).pending == 4
    core.receive(delivered(BroadcastAck(id=5, seq=40)))
    assert stats(core) == BroadcastStats(
        sent=5, acknowledged=4, refused=1, unconfirmed=0, missed=0, pending=0
    )
    # A nack for an id that is not pending (already answered) still reaches the
    # app, and counts nothing: the outcome of every broadcast is counted once.
    assert core.receive(nack(2)) == NackReceived(
        orig_msg_type="broadcast", reason="busy: try later", id=2
    )
    assert core.receive(nack(None)) == NackReceived(
        orig_msg_type="broadcast", reason="busy: try later"
    )
    assert stats(core).refused == 1


def test_the_window_fills_and_answers_free_it() -> None:
    core = ClientCore(window=3)
    sent(core, "a", "b")
    assert not core.window_full
    sent(core, "c")
    assert core.window_full
    core.receive(nack(1))
    assert not core.window_full
    sent(core, "d")
    assert core.window_full
    core.receive(delivered(BroadcastAck(id=4, seq=9)))
    assert core.pending == 0
    for window in (0, -1):
        with pytest.raises(UsageError):
            ClientCore(window=window)


def test_no_answer_within_the_ack_timeout_is_unconfirmed_and_told() -> None:
    core = ClientCore(ack_timeout=10.0)
    assert core.next_timer() is None
    now = 100.0
    sent(core, "a", now=now)
    sent(core, "b", "c", now=now + 4)
    assert core.next_timer() == 110.0
    assert core.handle_timer(109.9) == []
    [event] = core.handle_timer(core.next_timer() or 0)
    assert isinstance(event, NackReceived)  # what the app is told: a nack, made by the client
    assert event == BroadcastUnconfirmed(
        orig_msg_type="broadcast",
        reason="the host did not confirm broadcast 1 within 10 s: it may or may not have "
        "been delivered",
        id=1,
    )
    assert core.next_timer() == 114.0
    core.receive(delivered(BroadcastAck(id=2, seq=5)))
    assert [e.id for e in core.handle_timer(1000.0)] == [3]
    assert core.next_timer() is None
    assert stats(core) == BroadcastStats(
        sent=3, acknowledged=1, refused=0, unconfirmed=2, missed=0, pending=0
    )
    # Unconfirmed is final: a late ack or nack changes no counter.
    core.receive(delivered(BroadcastAck(id=3, seq=6)))
    assert core.receive(nack(1)) is not None
    assert stats(core) == BroadcastStats(
        sent=3, acknowledged=1, refused=0, unconfirmed=2, missed=0, pending=0
    )


# -- missed: gaps in the seq of received broadcasts ----------------------------------------


def bcast(seq: int, source: str = "instance-0000000b") -> Datagram:
    return delivered(Broadcast(text=f"m{seq}", source_instance=source, seq=seq))


def receive_seqs(core: ClientCore, *seqs: int) -> None:
    for seq in seqs:
        event = core.receive(bcast(seq))
        assert event == BroadcastReceived(
            text=f"m{seq}", source_instance="instance-0000000b", seq=seq
        )


def test_a_receiver_counts_each_jump_at_once() -> None:
    core = ClientCore()
    receive_seqs(core, 5, 6)  # the first seq only starts the count
    assert stats(core).missed == 0
    receive_seqs(core, 9)
    assert stats(core).missed == 2
    receive_seqs(core, 10, 20)
    assert stats(core).missed == 11


def test_a_seq_that_goes_down_starts_again_without_counting() -> None:
    core = ClientCore()
    receive_seqs(core, 7, 9)
    assert stats(core).missed == 1
    receive_seqs(core, 1, 2)  # the group was created again: numbered from 1
    assert stats(core).missed == 1
    receive_seqs(core, 2)  # the same seq again: starts again too, counts nothing
    receive_seqs(core, 4)
    assert stats(core).missed == 2


def test_own_broadcasts_are_not_missed() -> None:
    """The host never delivers a broadcast back to its server: own seqs are holes."""
    core = ClientCore()
    receive_seqs(core, 1, 2)
    sent(core, "a", "b")
    # Others' 5 arrives before our ack: 3 and 4 may be ours; nothing counted yet.
    receive_seqs(core, 5)
    assert stats(core).missed == 0
    core.receive(delivered(BroadcastAck(id=2, seq=4)))
    assert stats(core).missed == 0
    receive_seqs(core, 7)  # nothing of ours is pending: 6 is missed at once
    assert stats(core).missed == 1


def test_own_broadcasts_acked_before_the_others_arrive() -> None:
    core = ClientCore()
    receive_seqs(core, 1)
    sent(core, "a", "b", "c")
    core.receive(delivered(BroadcastAck(id=1, seq=2)))
    core.receive(delivered(BroadcastAck(id=3, seq=6)))  # ids 2, 3: two of 3..6
    receive_seqs(core, 3)
    assert stats(core).missed == 0
    receive_seqs(core, 8)  # holes 4, 5, 6, 7: two ours (up to 6), 7 missed
    assert stats(core).missed == 2


def test_holes_wait_while_own_broadcasts_are_pending() -> None:
    core = ClientCore(ack_timeout=5.0)
    receive_seqs(core, 1)
    sent(core, "a", now=0.0)
    receive_seqs(core, 3)  # 2 may be ours
    assert stats(core).missed == 0
    core.receive(nack(1))  # refused: it got no seq, so 2 is missed
    assert stats(core).missed == 1
    sent(core, "b", now=10.0)
    receive_seqs(core, 5)
    assert stats(core).missed == 1
    core.handle_timer(15.0)  # unconfirmed: counted as if it had no seq
    assert stats(core).missed == 2


def test_an_ack_after_its_broadcast_went_unconfirmed_still_places_it() -> None:
    core = ClientCore(ack_timeout=1.0)
    receive_seqs(core, 1)
    sent(core, "a", now=0.0)
    core.handle_timer(2.0)
    core.receive(delivered(BroadcastAck(id=1, seq=2)))
    receive_seqs(core, 3)
    assert stats(core) == BroadcastStats(
        sent=1, acknowledged=0, refused=0, unconfirmed=1, missed=0, pending=0
    )


def test_an_app_that_takes_no_events_misses_the_discarded_broadcasts() -> None:
    core = ClientCore()
    receive_seqs(core, 1)
    event = core.receive(bcast(2))
    assert event is not None
    assert core.discarded(event) == 1
    receive_seqs(core, 3)
    assert stats(core).missed == 1


def test_a_sender_that_receives_little_keeps_bounded_state() -> None:
    core = ClientCore()
    for i in range(1, 1001):
        sent(core, "a")
        core.receive(delivered(BroadcastAck(id=i, seq=2 * i)))  # odd seqs: not ours
    assert len(core._gaps.owns) <= 64
    receive_seqs(core, 2001)  # the first received: counting starts here
    sent(core, "b")
    core.receive(delivered(BroadcastAck(id=1001, seq=2002)))
    receive_seqs(core, 2003)
    assert stats(core).missed == 0  # 2002 was ours
    assert len(core._gaps.owns) == 0
    receive_seqs(core, 2005)
    assert stats(core).missed == 1
