"""The client's I/O-free core: what it sends, which datagrams it accepts, status joining."""

from __future__ import annotations

import json

import pytest

from servergroup.groups.client import (
    BroadcastReceived,
    ClientCore,
    InvalidAddress,
    InvalidBroadcast,
    NackReceived,
    StatusReceived,
)
from servergroup.groups.protocol import (
    Broadcast,
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
    assert json.loads(core.broadcast("hi")) == {
        "version": 2,
        "dest_addr": "cgcs.server_grp",
        "data": {"version": 2, "msg_type": "broadcast", "data": "hi"},
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
