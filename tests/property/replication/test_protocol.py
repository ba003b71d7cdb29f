"""The checkpoint stream's messages: round trip, any split, garbage, and the epoch digest."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from servergroup.common.errors import UsageError
from servergroup.common.framing import Frame, encode_frame
from servergroup.replication.protocol import (
    FORMAT,
    MAX_DATA_BYTES,
    MAX_RUNS,
    Ack,
    DiskWrite,
    EpochBegin,
    EpochDigest,
    EpochEnd,
    Heartbeat,
    Hello,
    Kind,
    Message,
    MessageDecoder,
    Pages,
    Refuse,
    ReplicationProtocolError,
    Welcome,
    decode_message,
    encode_message,
    encode_parts,
    epoch_messages,
)

pytestmark = pytest.mark.timeout(60)

u64 = st.integers(0, 2**64 - 1)
u32 = st.integers(0, 2**32 - 1)
names = st.text(min_size=1, max_size=20)
data = st.binary(max_size=600)
runs = st.lists(st.tuples(u32, u32), max_size=5).map(tuple)

messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(
        Hello,
        service=names,
        generation=u64,
        page_size=u32,
        disk_size=u64,
        regions=st.lists(st.tuples(names, u64), max_size=5).map(tuple),
    ),
    st.builds(Welcome, generation=u64),
    st.builds(Refuse, reason=st.text(max_size=50)),
    st.builds(EpochBegin, generation=u64, epoch=u64, full=st.booleans()),
    st.builds(Pages, region=st.integers(0, 2**16 - 1), runs=runs, data=data),
    st.builds(DiskWrite, offset=u64, data=data),
    st.builds(EpochEnd, epoch=u64, runs=u32, writes=u32, digest=u64),
    st.builds(Ack, generation=u64, epoch=u64),
    st.builds(Heartbeat, generation=u64, epoch=u64),
)


@given(messages)
def test_every_message_round_trips(message: Message) -> None:
    wire = encode_message(message)
    assert b"".join(encode_parts(message)) == wire
    assert MessageDecoder().feed(wire) == [message]


@given(st.lists(messages, max_size=6), st.data())
def test_any_split_gives_the_same_messages(sent: list[Message], draw: st.DataObject) -> None:
    stream = b"".join(encode_message(m) for m in sent)
    cuts = sorted(draw.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    decoder = MessageDecoder()
    got: list[Message] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        got += decoder.feed(stream[start:end])
    assert got == sent


@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_the_protocol_error(garbage: bytes) -> None:
    decoder = MessageDecoder()
    try:
        decoder.feed(garbage)
    except ReplicationProtocolError:
        with pytest.raises(ReplicationProtocolError):
            decoder.feed(b"")


@given(st.sampled_from(list(Kind)), st.binary(max_size=80))
def test_arbitrary_bodies_in_valid_frames_raise_only_the_protocol_error(
    kind: Kind, body: bytes
) -> None:
    try:
        message = decode_message(Frame(kind=kind, flags=0, body=body))
    except ReplicationProtocolError:
        return
    assert encode_message(message) == encode_frame(FORMAT, kind, body)


@given(
    st.lists(
        st.one_of(
            st.builds(Pages, region=st.integers(0, 3), runs=runs, data=data),
            st.builds(DiskWrite, offset=u64, data=data),
        ),
        min_size=1,
        max_size=6,
    ),
    st.data(),
)
def test_the_digest_catches_a_dropped_repeated_or_changed_part(
    payload: list[Pages | DiskWrite], draw: st.DataObject
) -> None:
    sealed = epoch_messages(EpochBegin(generation=1, epoch=5, full=False), payload)
    end = sealed[-1]
    assert isinstance(end, EpochEnd)
    at = draw.draw(st.integers(0, len(payload) - 1))
    variants = [
        payload[:at] + payload[at + 1 :],
        payload[: at + 1] + payload[at:],
        [*payload[:at], DiskWrite(offset=1, data=b"other"), *payload[at + 1 :]],
    ]
    for changed in variants:
        digest = EpochDigest()
        for message in changed:
            digest.add(message)
        if changed != payload:
            assert digest.end(5) != end


def test_the_encoder_refuses_what_the_wire_cannot_carry() -> None:
    with pytest.raises(UsageError):
        encode_message(Pages(region=0, runs=(), data=b"x" * (MAX_DATA_BYTES + 1)))
    with pytest.raises(UsageError):
        encode_message(Pages(region=0, runs=((0, 1),) * (MAX_RUNS + 1), data=b""))
    with pytest.raises(UsageError):
        encode_message(Ack(generation=-1, epoch=0))
    with pytest.raises(UsageError):
        encode_message(
            Hello(service="x" * 2000, generation=1, page_size=4096, disk_size=0, regions=())
        )


def test_fields_out_of_range_are_refused_in_one_error() -> None:
    with pytest.raises(UsageError):
        encode_message(Pages(region=70000, runs=(), data=b""))
    with pytest.raises(UsageError):
        encode_message(Pages(region=0, runs=((2**32, 1),), data=b""))
    with pytest.raises(UsageError):
        encode_message(EpochEnd(epoch=1, runs=-1, writes=0, digest=0))
