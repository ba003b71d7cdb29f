"""Property tests of the wire codecs: round trips, any split of a stream, garbage in."""

from __future__ import annotations

import contextlib
from ipaddress import IPv4Address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from servergroup.multicast.protocol import (
    Abort,
    Auth,
    BufferInfo,
    Counters,
    DataPacket,
    Done,
    Hello,
    Keepalive,
    Message,
    Packet,
    ProtocolError,
    Ready,
    Request,
    Result,
    Sent,
    StreamDecoder,
    Welcome,
    check_data,
    decode_data,
    decode_message,
    encode_data,
    encode_message,
    encode_packet,
    from_ranges,
    to_ranges,
)

u32 = st.integers(0, 2**32 - 1)
u16 = st.integers(0, 2**16 - 1)
text = st.text(max_size=40)
keys = st.none() | st.binary(min_size=1, max_size=40).map(Auth)

counters = st.builds(
    Counters,
    multicast=u32,
    repaired=u32,
    duplicate=u32,
    corrupt=u32,
    foreign=u32,
    forged=u32,
    stale=u32,
)


@st.composite
def buffer_infos(draw: st.DrawFn) -> BufferInfo:
    count = draw(st.integers(0, 2**32 - 1))
    length = 0 if count == 0 else draw(st.integers(count, 2**64 - 1))
    return BufferInfo(
        buffer_id=draw(u32),
        packet_count=count,
        byte_length=length,
        total_bytes=draw(st.integers(0, 2**64 - 1)),
        digest=draw(st.binary(min_size=32, max_size=32)),
    )


@st.composite
def requests(draw: st.DrawFn) -> Request:
    starts = draw(st.lists(st.integers(0, 2**31), max_size=20))
    ranges = tuple((s, draw(st.integers(1, 2**31))) for s in starts)
    return Request(buffer_id=draw(u32), pass_number=draw(u16), received=draw(u32), missing=ranges)


messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(Hello, name=text),
    st.builds(
        Welcome,
        group=st.integers(0xE0000000, 0xEFFFFFFF).map(IPv4Address),
        port=st.integers(1, 65535),
        payload_size=st.integers(1, 65535),
        buffer_packets=st.integers(1, 2**32 - 1),
        keepalive_interval=st.integers(0, 2**32 - 1).map(lambda ms: ms / 1000),
    ),
    buffer_infos(),
    st.builds(Ready, buffer_id=u32),
    st.builds(Sent, buffer_id=u32, pass_number=u16),
    requests(),
    st.builds(Done, buffer_id=u32, counters=counters),
    st.builds(Result, ok=st.booleans(), total_bytes=st.integers(0, 2**64 - 1), reason=text),
    st.just(Keepalive()),
    st.builds(Abort, reason=text),
)
data_packets = st.builds(
    DataPacket, session=u32, buffer_id=u32, index=u32, payload=st.binary(max_size=300)
)


@given(messages, u32, keys)
def test_a_message_round_trips(message: Message, session: int, auth: Auth | None) -> None:
    assert decode_message(encode_message(message, session, auth), auth) == (session, message)


@given(data_packets, keys)
def test_a_data_packet_round_trips(packet: DataPacket, auth: Auth | None) -> None:
    decoded = decode_data(encode_data(packet, auth), auth)
    assert decoded.session == packet.session
    assert (decoded.buffer_id, decoded.index) == (packet.buffer_id, packet.index)
    assert bytes(decoded.payload) == packet.payload


@given(st.lists(messages | data_packets, max_size=8), keys, st.data())
def test_any_split_of_a_stream_gives_the_same_packets(
    packets: list[Packet], auth: Auth | None, data: st.DataObject
) -> None:
    stream = b"".join(encode_packet(p, 7, auth) for p in packets)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    decoder = StreamDecoder(auth)
    got: list[Packet] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        got += [p for _, p in decoder.feed(stream[start:end])]
    assert decoder.pending == 0
    assert len(got) == len(packets)
    for want, have in zip(packets, got, strict=True):
        if isinstance(want, DataPacket):
            assert isinstance(have, DataPacket)
            assert bytes(have.payload) == want.payload
        else:
            assert have == want


def test_byte_by_byte_with_trailing_data() -> None:
    stream = encode_message(Ready(buffer_id=3), 1) + encode_message(Keepalive(), 1) + b"SG"
    decoder = StreamDecoder()
    got = [p for i in range(len(stream)) for _, p in decoder.feed(stream[i : i + 1])]
    assert got == [Ready(buffer_id=3), Keepalive()]
    assert decoder.pending == 2


@given(st.binary(max_size=200), keys)
def test_garbage_raises_only_our_protocol_error(data: bytes, auth: Auth | None) -> None:
    for decode in (decode_data, decode_message):
        with contextlib.suppress(ProtocolError):
            decode(data, auth)
    with contextlib.suppress(ProtocolError):
        StreamDecoder(auth).feed(data)


@given(messages | data_packets, keys, st.data())
def test_a_flipped_bit_is_always_caught(
    packet: Packet, auth: Auth | None, data: st.DataObject
) -> None:
    encoded = bytearray(encode_packet(packet, 9, auth))
    bit = data.draw(st.integers(0, len(encoded) * 8 - 1))
    encoded[bit // 8] ^= 1 << (bit % 8)
    decoder = StreamDecoder(auth)
    try:
        out = decoder.feed(bytes(encoded))
    except ProtocolError:
        return
    # Not refused: only because the flip made the length larger, so it waits for more.
    assert out == []
    assert decoder.pending == len(encoded)


@given(data_packets, st.binary(min_size=1, max_size=20), st.binary(min_size=1, max_size=20))
def test_a_packet_signed_with_another_key_is_forged(
    packet: DataPacket, ours: bytes, theirs: bytes
) -> None:
    if ours == theirs:
        return
    with pytest.raises(ProtocolError) as caught:
        decode_data(encode_data(packet, Auth(theirs)), Auth(ours))
    assert caught.value.fault.name == "FORGED"


@given(data_packets, keys, st.binary(max_size=30), st.binary(max_size=30))
def test_a_packet_is_checked_in_place_inside_a_larger_buffer(
    packet: DataPacket, auth: Auth | None, before: bytes, after: bytes
) -> None:
    encoded = encode_data(packet, auth)
    buffer = bytearray(before + encoded + after)
    view = memoryview(buffer)[len(before) : len(before) + len(encoded)]
    session, buffer_id, index, length = check_data(view, auth)
    assert (session, buffer_id, index) == (packet.session, packet.buffer_id, packet.index)
    assert bytes(view[24 : 24 + length]) == packet.payload
    assert check_data(encoded, auth) == check_data(bytearray(encoded), auth)


@given(data_packets, st.binary(min_size=1, max_size=20))
def test_the_fast_path_names_each_kind_of_refusal(packet: DataPacket, key: bytes) -> None:
    def fault(data: bytes, auth: Auth | None) -> str:
        with pytest.raises(ProtocolError) as caught:
            check_data(data, auth)
        return caught.value.fault.name

    plain = encode_data(packet)
    signed = encode_data(packet, Auth(key))
    assert fault(plain, Auth(key)) == "UNAUTHENTICATED"
    assert fault(signed, None) == "KEY_NEEDED"
    assert fault(plain[:-1], None) == "MALFORMED"
    assert fault(plain[:2] + bytes([9]) + plain[3:], None) == "VERSION"
    assert fault(plain[:3] + bytes([2]) + plain[4:], None) == "MALFORMED"  # a control kind
    assert fault(plain[:18] + bytes([0, 4]) + plain[20:], None) == "MALFORMED"  # unknown flag
    corrupt = bytearray(plain)
    corrupt[-1 if packet.payload else 8] ^= 1
    assert fault(bytes(corrupt), None) == "CORRUPT"


@given(st.lists(st.integers(0, 1000), max_size=50))
def test_ranges_round_trip(indices: list[int]) -> None:
    assert from_ranges(to_ranges(indices)) == sorted(set(indices))
