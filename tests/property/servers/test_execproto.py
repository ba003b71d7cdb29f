"""Properties of the exec port codec (hypothesis): round trips, any split, garbage."""

from __future__ import annotations

import contextlib

from hypothesis import given
from hypothesis import strategies as st

from servergroup.servers.drivers.qemu.execproto import (
    MAGIC,
    MAX_FRAME,
    ExecDecoder,
    ExecProtocolError,
    ExitKind,
    ExitStatus,
    Frame,
    FrameType,
    OpenRequest,
    decode_error,
    decode_exit,
    decode_frame,
    decode_open,
    decode_signal,
    encode_exit,
    encode_frame,
    encode_open,
)

frames = st.builds(
    Frame,
    type=st.sampled_from(FrameType),
    session=st.integers(min_value=0, max_value=2**32 - 1),
    # Payloads that look like frames themselves make the decoder's life hardest.
    payload=st.binary(max_size=300) | st.just(MAGIC * 5),
)
_words = st.text(st.characters(exclude_characters="\0"), max_size=12)
requests = st.builds(
    OpenRequest,
    argv=st.lists(_words.filter(bool), min_size=1, max_size=5).map(tuple),
    env=st.none()
    | st.dictionaries(_words.filter(lambda k: bool(k) and "=" not in k), _words, max_size=4),
    cwd=st.none() | _words.filter(bool),
)


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@given(frames)
def test_frame_round_trip(frame: Frame) -> None:
    assert decode_frame(encode_frame(frame)) == frame


@given(st.lists(frames, max_size=8), st.lists(st.integers(min_value=0), max_size=20))
def test_any_split_gives_the_same_frames(sent: list[Frame], cuts: list[int]) -> None:
    stream = b"".join(encode_frame(f) for f in sent)
    decoder = ExecDecoder()
    got = [f for chunk in _split(stream, cuts) for f in decoder.feed(chunk)]
    assert got == sent
    assert decoder.skipped == 0
    assert decoder.buffered == 0


@given(
    st.lists(st.tuples(st.binary(max_size=40), frames), max_size=6),
    st.lists(st.integers(min_value=0), max_size=10),
)
def test_frames_between_garbage_are_found(
    pieces: list[tuple[bytes, Frame]], cuts: list[int]
) -> None:
    # Garbage without the magic cannot swallow a frame: each frame after it is found.
    clean = [(g.replace(MAGIC[:1], b""), f) for g, f in pieces]
    stream = b"".join(g + encode_frame(f) for g, f in clean)
    decoder = ExecDecoder()
    got = [f for chunk in _split(stream, cuts) for f in decoder.feed(chunk)]
    assert got == [f for _, f in clean]
    assert decoder.skipped == sum(len(g) for g, _ in clean)


@given(
    st.lists(st.binary(max_size=300) | frames.map(encode_frame), max_size=8),
    st.lists(st.integers(min_value=0), max_size=10),
)
def test_arbitrary_bytes_never_raise_and_every_byte_is_accounted_for(
    parts: list[bytes], cuts: list[int]
) -> None:
    data = b"".join(parts)
    decoder = ExecDecoder()
    framed = 0
    for chunk in _split(data, cuts):
        framed += sum(len(encode_frame(f)) for f in decoder.feed(chunk))
        assert decoder.buffered < MAX_FRAME
    # Each byte went into a frame, was skipped, or waits for the rest of a frame.
    assert framed + decoder.skipped + decoder.buffered == len(data)
    assert 0 <= decoder.garbage <= decoder.skipped


@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_protocol_errors(data: bytes) -> None:
    for decode in (decode_frame, decode_open, decode_signal, decode_exit, decode_error):
        with contextlib.suppress(ExecProtocolError):
            decode(data)


@given(requests)
def test_open_round_trip(request: OpenRequest) -> None:
    assert decode_open(encode_open(request)) == request


@given(st.sampled_from(ExitKind), st.integers(min_value=0, max_value=2**32 - 1))
def test_exit_round_trip(kind: ExitKind, value: int) -> None:
    status = ExitStatus(kind=kind, value=value)
    assert decode_exit(encode_exit(status)) == status
