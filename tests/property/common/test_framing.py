"""The shared framing: round trip, any split of the stream, garbage raises only FramingError."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from servergroup.common.errors import UsageError
from servergroup.common.framing import (
    Frame,
    FrameDecoder,
    FrameFormat,
    FramingError,
    encode_frame,
    frame_header,
)

pytestmark = pytest.mark.timeout(60)

FMT = FrameFormat(magic=b"TEST", version=3, kinds=frozenset({1, 2, 7}), max_body=300)

frames = st.builds(
    Frame,
    kind=st.sampled_from([1, 2, 7]),
    flags=st.integers(0, 0xFFFF),
    body=st.binary(max_size=300),
)


def encode(frame: Frame) -> bytes:
    return encode_frame(FMT, frame.kind, frame.body, frame.flags)


@given(st.lists(frames, max_size=8), st.data())
def test_any_split_of_a_stream_gives_the_same_frames(
    sent: list[Frame], data: st.DataObject
) -> None:
    stream = b"".join(encode(f) for f in sent)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    decoder = FrameDecoder(FMT)
    got: list[Frame] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        got += decoder.feed(stream[start:end])
    assert got == sent
    assert decoder.pending == 0


def test_byte_by_byte_and_trailing_data() -> None:
    sent = [Frame(kind=1, flags=0, body=b"abc"), Frame(kind=7, flags=9, body=b"")]
    stream = b"".join(encode(f) for f in sent)
    decoder = FrameDecoder(FMT)
    got = [frame for byte in stream for frame in decoder.feed(bytes([byte]))]
    assert got == sent
    assert decoder.feed(stream[:5]) == []
    assert decoder.pending == 5


def test_a_header_in_parts_equals_one_over_the_joined_body() -> None:
    assert frame_header(FMT, 2, b"ab", b"", b"cd") == frame_header(FMT, 2, b"abcd")


@given(st.binary(max_size=400))
def test_garbage_raises_only_framing_errors(garbage: bytes) -> None:
    decoder = FrameDecoder(FMT)
    try:
        decoder.feed(garbage)
    except FramingError:
        assert decoder.broken
        with pytest.raises(FramingError):
            decoder.feed(b"")


@given(frames, st.integers(0, 10**6), st.integers(1, 255))
def test_any_flipped_bit_is_caught(frame: Frame, where: int, mask: int) -> None:
    wire = bytearray(encode(frame))
    wire[where % len(wire)] ^= mask
    decoder = FrameDecoder(FMT)
    # The header CRC covers the length, so no flip can even leave it waiting for more.
    with pytest.raises(FramingError):
        decoder.feed(bytes(wire))


def test_the_encoder_refuses_what_the_wire_cannot_carry() -> None:
    with pytest.raises(UsageError):
        encode_frame(FMT, 3, b"")
    with pytest.raises(UsageError):
        encode_frame(FMT, 1, b"x" * 301)
    with pytest.raises(UsageError):
        FrameFormat(magic=b"ABC", version=1, kinds={1}, max_body=10)
