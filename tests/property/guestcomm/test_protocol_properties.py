"""Properties of the protocol-v2 codec and the channel decoder (hypothesis)."""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Callable

from hypothesis import assume, given
from hypothesis import strategies as st

from servergroup.guestcomm.drops import Counters, DropLog
from servergroup.guestcomm.protocol import (
    MAX_ADDR_LENGTH,
    MAX_INSTANCE_LENGTH,
    ChannelDecoder,
    Dropped,
    DropReason,
    Envelope,
    Json,
    JsonObject,
    ProtocolError,
    decode_envelope,
    delivery_of_frame,
    encode_envelope,
    encode_guest_frame,
    encode_host_frame,
    guest_frame_of_datagram,
    host_frame_with,
)
from servergroup.guestcomm.sockets import Datagram, app_envelope, encode_delivery

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values: st.SearchStrategy[Json] = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=5)


def _names(limit: int) -> st.SearchStrategy[str]:
    return st.text(
        st.characters(exclude_categories=["Cs"], exclude_characters="\0"), min_size=1
    ).filter(lambda s: len(s.encode("utf-8")) <= limit)


envelopes = st.builds(
    Envelope,
    data=json_objects,
    dest_addr=st.none() | _names(MAX_ADDR_LENGTH),
    source_addr=st.none() | _names(MAX_ADDR_LENGTH),
    dest_instance=st.none() | _names(MAX_INSTANCE_LENGTH),
    source_instance=st.none() | _names(MAX_INSTANCE_LENGTH),
)
frames = st.sampled_from([encode_guest_frame, encode_host_frame])


def _decode_all(decoder: ChannelDecoder, chunks: list[bytes]) -> list[Envelope | Dropped]:
    return [item for chunk in chunks for item in decoder.feed(chunk)]


def _cut(data: bytes, points: list[int]) -> list[bytes]:
    cuts = sorted({p % (len(data) + 1) for p in points})
    edges = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


@given(envelopes)
def test_round_trip(env: Envelope) -> None:
    raw = encode_envelope(env)
    assert b"\n" not in raw
    raw.decode("utf-8")  # valid UTF-8 (lone surrogates come out escaped)
    assert decode_envelope(raw) == env


@given(
    st.lists(envelopes, max_size=6),
    st.lists(frames, min_size=6, max_size=6),
    st.lists(st.integers(0, 10**6), max_size=20),
)
def test_any_split_of_the_stream_gives_the_same_messages(
    envs: list[Envelope], framers: list[Callable[[Envelope], bytes]], points: list[int]
) -> None:
    stream = b"".join(frame(env) for frame, env in zip(framers, envs, strict=False))
    whole = ChannelDecoder().feed(stream)
    assert whole == envs
    assert _decode_all(ChannelDecoder(), _cut(stream, points)) == envs


@given(
    st.lists(envelopes, min_size=1, max_size=4),
    st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), min_size=5, max_size=5),
    st.lists(st.integers(0, 10**6), max_size=10),
)
def test_garbage_between_messages_is_skipped(
    envs: list[Envelope], garbage: list[bytes], points: list[int]
) -> None:
    for piece in garbage:
        if piece.strip():
            try:
                decode_envelope(piece)
            except ProtocolError:
                pass
            else:
                assume(False)  # a piece that happens to be a valid envelope is not garbage
    stream = garbage[0] + b"\n"
    for env, piece in zip(envs, garbage[1:], strict=False):
        stream += encode_host_frame(env) + piece + b"\n"
    out = _decode_all(ChannelDecoder(), _cut(stream, points))
    assert [i for i in out if isinstance(i, Envelope)] == envs
    dropped = [i for i in out if isinstance(i, Dropped)]
    assert len(dropped) == sum(1 for g in garbage[: len(envs) + 1] if g.strip())
    assert all(d.reason in (DropReason.GARBAGE, DropReason.BAD_ENVELOPE) for d in dropped)


@given(st.binary(max_size=2000), st.lists(st.integers(0, 10**6), max_size=10))
def test_arbitrary_bytes_never_raise_from_feed(data: bytes, points: list[int]) -> None:
    decoder = ChannelDecoder(max_line=64)
    for item in _decode_all(decoder, _cut(data, points)):
        assert isinstance(item, Envelope | Dropped)
    assert decoder.buffered <= 64


@given(st.integers(65, 5000), st.integers(1, 300), envelopes)
def test_an_over_long_line_is_bounded_and_reported_once(
    size: int, chunk: int, after: Envelope
) -> None:
    decoder = ChannelDecoder(max_line=64)
    line = b"x" * size + b"\n"
    out: list[Envelope | Dropped] = []
    for start in range(0, len(line), chunk):
        out += decoder.feed(line[start : start + chunk])
        assert decoder.buffered <= 64
    frame = encode_host_frame(after)
    out += ChannelDecoder().feed(frame) if len(frame) > 65 else decoder.feed(frame)
    assert out[0] == Dropped(
        reason=DropReason.LINE_TOO_LONG,
        size=size,
        detail=f"a line of {size} bytes is longer than the 64 accepted.",
    )
    assert out[1:] == [after]


@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_protocol_error(raw: bytes) -> None:
    try:
        env = decode_envelope(raw)
    except ProtocolError:
        return
    assert decode_envelope(encode_envelope(env)) == env


@given(json_values)
def test_arbitrary_json_raises_only_protocol_error(value: Json) -> None:
    raw = json.dumps(value).encode()
    try:
        env = decode_envelope(raw)
    except ProtocolError:
        return
    assert decode_envelope(encode_envelope(env)) == env


@given(envelopes)
def test_a_frame_cut_for_delivery_is_what_encoding_the_delivery_gives(env: Envelope) -> None:
    line = encode_host_frame(env)[:-1]
    fast = delivery_of_frame(line)
    if fast is None:
        return  # parsed the long way
    assert env.dest_addr is not None
    assert env.dest_instance is None
    assert fast == (env.dest_addr, encode_delivery(env))


@given(json_objects, st.sampled_from(["cgcs.server_grp", "app-2", "x" * MAX_ADDR_LENGTH]))
def test_the_group_service_frames_are_always_cut_not_parsed(data: JsonObject, dest: str) -> None:
    env = Envelope(data=data, dest_addr=dest, source_addr="cgcs.server_grp")
    assert delivery_of_frame(encode_host_frame(env)[:-1]) == (dest, encode_delivery(env))


@given(st.binary(max_size=300))
def test_cutting_arbitrary_bytes_never_raises(raw: bytes) -> None:
    fast = delivery_of_frame(b'{"version":2,"dest_addr":"' + raw)
    if fast is not None:
        assert fast[1].startswith(b'{"version":2,')


@given(json_objects, _names(MAX_ADDR_LENGTH), _names(MAX_ADDR_LENGTH))
def test_a_frame_built_around_encoded_data_is_the_frame_of_the_envelope(
    data: JsonObject, dest: str, source: str
) -> None:
    env = Envelope(data=data, dest_addr=dest, source_addr=source)
    try:
        data_json = json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return  # a lone surrogate: the encoder escapes the whole envelope instead
    assert host_frame_with(dest, source, data_json) == encode_host_frame(env)


def _general_frame(raw: bytes, sender: str) -> bytes | None:
    """What the agent writes for an application's datagram by the general path (None: dropped)."""
    drops = DropLog(logging.getLogger("test"), Counters())
    env = app_envelope(Datagram(data=raw, sender=sender, truncated=False), drops)
    return None if env is None else encode_guest_frame(env)


_senders = st.sampled_from(["sgc-1234-abcd", "cgcs.server_grp", "ap\u00e9p", 'q"\\'])


@given(json_objects, st.sampled_from(["cgcs.server_grp", "app-2", "x" * MAX_ADDR_LENGTH]), _senders)
def test_an_app_datagram_of_the_client_library_is_stamped_to_the_same_bytes(
    data: JsonObject, dest: str, sender: str
) -> None:
    raw = encode_envelope(Envelope(dest_addr=dest, data=data))
    fast = guest_frame_of_datagram(raw, sender)
    if "\\ud" in raw.decode("utf-8"):
        assert fast is None or decode_envelope(fast.strip()) == decode_envelope(
            (_general_frame(raw, sender) or b"").strip()
        )
        return  # a lone surrogate: the encoder escaped the whole message
    assert fast is not None
    assert fast == _general_frame(raw, sender)


#: What a byte of an application's datagram may be replaced with, to spoil its form.
_SPOIL_BYTES = st.sampled_from([*b'"\\}{,:[]0 \n\x01u', 0xFF, 0xC3])


@given(
    json_objects,
    _senders,
    st.booleans(),
    st.lists(st.tuples(st.integers(min_value=0), _SPOIL_BYTES | st.none()), max_size=3),
)
def test_an_app_datagram_is_never_stamped_otherwise_than_by_the_general_path(
    data: JsonObject, sender: str, spaced: bool, edits: list[tuple[int, int | None]]
) -> None:
    obj = {"version": 2, "dest_addr": "cgcs.server_grp", "data": data}
    raw = bytearray(
        json.dumps(
            obj, separators=(", ", ": ") if spaced else (",", ":"), ensure_ascii=spaced
        ).encode("utf-8", "surrogatepass")
    )
    for where, byte in edits:  # a byte replaced, or (None) the datagram cut there
        if not raw:
            break
        where %= len(raw)
        if byte is None:
            del raw[where:]
        else:
            raw[where] = byte
    fast = guest_frame_of_datagram(bytes(raw), sender)
    if fast is None:
        return  # the agent takes the general path
    general = _general_frame(bytes(raw), sender)
    assert general is not None
    assert fast.startswith(b"\n")
    assert fast.endswith(b"\n")
    assert b"\n" not in fast[1:-1]
    assert decode_envelope(fast[1:-1]) == decode_envelope(general[1:-1])
