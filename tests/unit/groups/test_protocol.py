"""Server-group messages (spec section 4): byte-exact fixtures, errors, round trips."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from servergroup.groups.protocol import (
    MAX_BROADCAST_BYTES,
    Broadcast,
    BroadcastAck,
    GroupMessage,
    MsgType,
    Nack,
    Notification,
    StatusQuery,
    StatusResponse,
    StatusResponseDone,
    Subscribe,
    UnknownMessageType,
    Unsubscribe,
    broadcast_request_datagram,
    check_broadcast_text,
    decode_delivered_broadcast,
    decode_group_message,
    delivered_broadcast_fields,
    delivered_broadcast_size,
    encode_broadcast_json,
    encode_group_message,
    msg_type_of,
)
from servergroup.guestcomm.protocol import (
    MAX_DATAGRAM,
    SERVER_GROUP_ADDR,
    Envelope,
    Json,
    JsonObject,
    ProtocolError,
    decode_envelope,
    encode_envelope,
)

SERVER: JsonObject = {"instance_name": "instance-0000000a", "name": "vm-1", "vcpus": 2}
EVENT: JsonObject = {
    "event_type": "compute.instance.pause.end",
    "priority": "INFO",
    "timestamp": "2026-11-21T14:00:00Z",
    "payload": SERVER,
}

# (message, its bytes as an app sends it or receives it inside an envelope)
FIXTURES: list[tuple[GroupMessage, bytes]] = [
    (
        Broadcast(text="this is a test"),
        b'{"version":2,"msg_type":"broadcast","data":"this is a test"}',
    ),
    (
        Broadcast(text="final test", source_instance="instance-0000000b", seq=7),
        b'{"version":2,"msg_type":"broadcast","data":"final test",'
        b'"source_instance":"instance-0000000b","seq":7}',
    ),
    (StatusQuery(seq=3), b'{"version":2,"msg_type":"status_query","seq":3}'),
    (
        StatusResponse(seq=3, server=SERVER),
        b'{"version":2,"msg_type":"status_response","seq":3,"data":'
        b'{"instance_name":"instance-0000000a","name":"vm-1","vcpus":2}}',
    ),
    (StatusResponseDone(seq=3), b'{"version":2,"msg_type":"status_response_done","seq":3}'),
    (
        Notification(event=EVENT),
        b'{"version":2,"msg_type":"notification","data":{"event_type":'
        b'"compute.instance.pause.end","priority":"INFO","timestamp":"2026-11-21T14:00:00Z",'
        b'"payload":{"instance_name":"instance-0000000a","name":"vm-1","vcpus":2}}}',
    ),
    (
        Nack(orig_msg_type="broadcast", log_msg="too long"),
        b'{"version":2,"msg_type":"nack","orig_msg_type":"broadcast","log_msg":"too long"}',
    ),
    (
        Nack(orig_msg_type="broadcast", log_msg="busy", id=7),
        b'{"version":2,"msg_type":"nack","orig_msg_type":"broadcast","log_msg":"busy","id":7}',
    ),
    (
        Broadcast(text="hi", id=7),
        b'{"version":2,"msg_type":"broadcast","data":"hi","id":7}',
    ),
    (BroadcastAck(id=7, seq=120), b'{"version":2,"msg_type":"broadcast_ack","id":7,"seq":120}'),
    (Subscribe(), b'{"version":2,"msg_type":"subscribe"}'),
    (Unsubscribe(), b'{"version":2,"msg_type":"unsubscribe"}'),
]


def compact(obj: Json) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


@pytest.mark.parametrize(("msg", "raw"), FIXTURES)
def test_encode_is_byte_exact(msg: GroupMessage, raw: bytes) -> None:
    assert compact(encode_group_message(msg)) == raw


@pytest.mark.parametrize(("msg", "raw"), FIXTURES)
def test_decode_fixture(msg: GroupMessage, raw: bytes) -> None:
    assert decode_group_message(json.loads(raw)) == msg
    assert msg_type_of(msg).value == json.loads(raw)["msg_type"]


def test_whole_datagram_an_app_sends() -> None:
    """Spec section 3: app -> agent, the broadcast of the seed's step e."""
    env = Envelope(
        dest_addr=SERVER_GROUP_ADDR, data=encode_group_message(Broadcast(text="this is a test"))
    )
    assert encode_envelope(env) == (
        b'{"version":2,"dest_addr":"cgcs.server_grp","data":'
        b'{"version":2,"msg_type":"broadcast","data":"this is a test"}}'
    )


def test_original_host_messages_decode() -> None:
    """What the original host sent: a done with a stale `data` (ignored)."""
    raw = b'{"version":2,"msg_type":"status_response_done","seq":9,"data":"[]"}'
    assert decode_group_message(json.loads(raw)) == StatusResponseDone(seq=9)


def test_relayed_string_version_is_refused() -> None:
    """Spec section 6: the original relayed broadcasts with "version": "version"."""
    raw = b'{"version":"version","msg_type":"broadcast","data":"x","source_instance":"i"}'
    with pytest.raises(ProtocolError, match="version"):
        decode_group_message(json.loads(raw))


@pytest.mark.parametrize(
    ("obj", "words"),
    [
        ([], "not a JSON object"),
        ("broadcast", "not a JSON object"),
        ({"msg_type": "broadcast", "data": "x"}, "no 'version'"),
        ({"version": 1, "msg_type": "broadcast", "data": "x"}, "version 1"),
        ({"version": True, "msg_type": "broadcast", "data": "x"}, "version True"),
        ({"version": 2.0, "msg_type": "broadcast", "data": "x"}, "version 2.0"),
        ({"version": 2, "data": "x"}, "no 'msg_type'"),
        ({"version": 2, "msg_type": 5}, "no 'msg_type'"),
        ({"version": 2, "msg_type": "broadcast"}, "broadcast message has no 'data'"),
        ({"version": 2, "msg_type": "broadcast", "data": 5}, "'data' that is not a string"),
        (
            {"version": 2, "msg_type": "broadcast", "data": "x", "seq": "1"},
            "'seq' that is not an integer",
        ),
        (
            {"version": 2, "msg_type": "broadcast", "data": "x", "source_instance": 1},
            "'source_instance' that is not a string",
        ),
        ({"version": 2, "msg_type": "status_query"}, "status_query message has no 'seq'"),
        ({"version": 2, "msg_type": "status_query", "seq": True}, "not an integer"),
        ({"version": 2, "msg_type": "status_query", "seq": 1.5}, "not an integer"),
        ({"version": 2, "msg_type": "status_response", "seq": 1, "data": "[]"}, "not a JSON obj"),
        ({"version": 2, "msg_type": "status_response_done"}, "no 'seq'"),
        ({"version": 2, "msg_type": "notification", "data": []}, "not a JSON object"),
        ({"version": 2, "msg_type": "nack", "log_msg": "x"}, "no 'orig_msg_type'"),
        ({"version": 2, "msg_type": "nack", "orig_msg_type": "x"}, "no 'log_msg'"),
    ],
)
def test_decode_errors_say_why(obj: Json, words: str) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_group_message(obj)
    assert words in str(info.value)
    assert not isinstance(info.value, UnknownMessageType)


def test_unknown_msg_type_names_it() -> None:
    with pytest.raises(UnknownMessageType) as info:
        decode_group_message({"version": 2, "msg_type": "scale_request"})
    assert info.value.msg_type == "scale_request"
    assert "unknown msg_type 'scale_request'" in str(info.value)


def test_extra_keys_are_ignored() -> None:
    obj: JsonObject = {"version": 2, "msg_type": "status_query", "seq": 1, "future": [1, 2]}
    assert decode_group_message(obj) == StatusQuery(seq=1)


# -- the broadcast text rule ---------------------------------------------------


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", None),
        ("this is a test", None),
        ("a" * MAX_BROADCAST_BYTES, None),
        ("a" * (MAX_BROADCAST_BYTES + 1), "3051 bytes of UTF-8; the limit is 3050"),
        ("é" * 1526, "3052 bytes of UTF-8"),
        ("a\x00b", "NUL"),
        ("a\nb", "newline"),
        ("\ud800", "lone surrogate"),
        ("\x01" * 1000, "once escaped as JSON"),
        ('"' * 2000, "once escaped as JSON"),
    ],
)
def test_check_broadcast_text(text: str, words: str | None) -> None:
    reason = check_broadcast_text(text)
    if words is None:
        assert reason is None
    else:
        assert reason is not None
        assert words in reason


@given(st.text(max_size=4000))
def test_an_accepted_text_always_fits_one_datagram(text: str) -> None:
    if check_broadcast_text(text) is None:
        assert delivered_broadcast_size(text) <= MAX_DATAGRAM
        delivered = encode_envelope(
            Envelope(
                source_addr=SERVER_GROUP_ADDR,
                data=encode_group_message(
                    Broadcast(text=text, source_instance="instance-ffffffff", seq=2**40)
                ),
            )
        )
        assert len(delivered) <= MAX_DATAGRAM


@given(st.text(alphabet=st.sampled_from(["a", "\x01", '"', "\u00e9", "\U0001f600"]), max_size=3050))
def test_a_text_is_refused_exactly_when_its_delivery_would_not_fit(text: str) -> None:
    if len(text.encode("utf-8")) > MAX_BROADCAST_BYTES:
        return
    fits = delivered_broadcast_size(text) <= MAX_DATAGRAM
    assert (check_broadcast_text(text) is None) == fits


# -- properties ------------------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=5)
ints = st.integers(min_value=-(2**63), max_value=2**63 - 1)

messages: st.SearchStrategy[GroupMessage] = st.one_of(
    st.builds(
        Broadcast,
        text=st.text(),
        source_instance=st.none() | st.text(max_size=20),
        seq=st.none() | ints,
        id=st.none() | st.integers(min_value=0, max_value=2**63),
    ),
    st.builds(BroadcastAck, id=st.integers(min_value=0, max_value=2**63), seq=ints),
    st.builds(StatusQuery, seq=ints),
    st.builds(StatusResponse, seq=ints, server=json_objects),
    st.builds(StatusResponseDone, seq=ints),
    st.builds(Notification, event=json_objects),
    st.builds(
        Nack,
        orig_msg_type=st.text(),
        log_msg=st.text(),
        id=st.none() | st.integers(min_value=0, max_value=2**63),
    ),
    st.just(Subscribe()),
    st.just(Unsubscribe()),
)


@given(messages)
def test_round_trip(msg: GroupMessage) -> None:
    assert decode_group_message(encode_group_message(msg)) == msg


@given(messages)
def test_round_trip_through_an_envelope(msg: GroupMessage) -> None:
    raw = encode_envelope(Envelope(source_addr=SERVER_GROUP_ADDR, data=encode_group_message(msg)))
    assert decode_group_message(decode_envelope(raw).data) == msg


# Objects that look like messages: a right version and a known msg_type, with
# arbitrary other keys, so the checks past the header are exercised too.
near_messages = st.builds(
    lambda extra, version, msg_type: {**extra, "version": version, "msg_type": msg_type},
    st.dictionaries(
        st.sampled_from(["data", "seq", "source_instance", "orig_msg_type", "log_msg", "x"]),
        json_values,
    ),
    st.sampled_from([2, 2, 2, 1, "2", "version", None, True]),
    st.sampled_from([t.value for t in MsgType] + ["", "scale_request", None, 3]),
)


@given(json_values | json_objects | near_messages)
def test_any_json_raises_only_protocol_error(obj: Json) -> None:
    try:
        msg = decode_group_message(obj)
    except ProtocolError:
        return
    assert decode_group_message(encode_group_message(msg)) == msg


@given(st.text(), st.text(max_size=20), st.integers(min_value=-(2**63), max_value=2**63))
def test_a_broadcast_built_from_its_pieces_is_what_the_encoder_writes(
    text: str, source: str, seq: int
) -> None:
    built = encode_broadcast_json(text, source, seq)
    data = encode_group_message(Broadcast(text=text, source_instance=source, seq=seq))
    try:
        expected = json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        assert built is None
        return
    assert built == expected


@given(st.text(), st.integers(min_value=0, max_value=2**64))
def test_a_broadcast_request_built_from_its_pieces_is_what_the_encoder_writes(
    text: str, ident: int
) -> None:
    built = broadcast_request_datagram(text, ident)
    data = encode_group_message(Broadcast(text=text, id=ident))
    expected = encode_envelope(Envelope(dest_addr=SERVER_GROUP_ADDR, data=data))
    if any("\ud800" <= c <= "\udfff" for c in text):
        assert built is None  # the encoder escapes the whole message; the caller does too
    else:
        assert built == expected


_valid_inner = st.fixed_dictionaries(
    {"version": st.just(2), "msg_type": st.just("broadcast"), "data": st.text(max_size=50)},
    optional={
        "source_instance": st.none() | st.text(max_size=25),
        "seq": st.none() | st.integers(),
    },
)
#: Ways to spoil a valid delivered broadcast, each a (where, key, value); value
#: None removes the key.
_spoilers: st.SearchStrategy[tuple[str, str, Json]] = st.tuples(
    st.sampled_from(["outer", "inner"]),
    st.sampled_from(["version", "source_addr", "data", "msg_type", "seq", "id", "dest_addr"]),
    st.sampled_from([None, 2, 2.0, True, "2", 3, "broadcast", "nack", SERVER_GROUP_ADDR, [1]]),
)


def _spoiled(inner: JsonObject, spoilers: list[tuple[str, str, Json]]) -> JsonObject:
    outer: JsonObject = {"version": 2, "source_addr": SERVER_GROUP_ADDR, "data": dict(inner)}
    for where, key, value in spoilers:
        target = outer if where == "outer" else outer.get("data")
        if not isinstance(target, dict):
            continue
        if value is None:
            target.pop(key, None)
        else:
            target[key] = value
    return outer


def _general(raw: bytes) -> GroupMessage | str:
    try:
        env = decode_envelope(raw)
        if env.source_addr != SERVER_GROUP_ADDR:
            return "not from the group service"
        return decode_group_message(env.data)
    except ProtocolError:
        return "refused"


@given(_valid_inner, st.lists(_spoilers, max_size=2))
def test_the_broadcast_fast_path_never_differs_from_the_general_decoding(
    inner: JsonObject, spoilers: list[tuple[str, str, Json]]
) -> None:
    raw = json.dumps(_spoiled(inner, spoilers), ensure_ascii=False).encode("utf-8", "surrogatepass")
    fast = decode_delivered_broadcast(raw)
    if fast is not None:
        assert _general(raw) == fast
    elif not spoilers and "\ud800" not in raw.decode("utf-8", "replace"):
        assert isinstance(_general(raw), Broadcast)


@given(_valid_inner, st.lists(_spoilers, max_size=2), st.booleans())
def test_the_compact_fast_path_never_differs_from_the_general_decoding(
    inner: JsonObject, spoilers: list[tuple[str, str, Json]], ascii: bool
) -> None:
    # Compact, as the host writes it: the form that the string scan (not a JSON parse) reads.
    obj = _spoiled(inner, spoilers)
    compact = json.dumps(obj, ensure_ascii=ascii, separators=(",", ":"))
    raw = compact.encode("utf-8", "surrogatepass")
    fields = delivered_broadcast_fields(raw)
    if fields is not None:
        text, source, seq = fields
        assert _general(raw) == Broadcast(text=text, source_instance=source, seq=seq)
    else:  # the general decoding has the last word; only a spoiled one may need it
        assert spoilers or b"\\ud" in raw or b"\xed" in raw  # a surrogate, escaped or not


#: What a byte of a delivered datagram may be replaced with, to spoil its form.
_BYTES = st.sampled_from([*list(b'"\\}{,:0-9 \x01u'), 255, 195])


@given(
    st.text(max_size=30),
    st.text(max_size=20),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.lists(st.tuples(st.integers(min_value=0), _BYTES | st.none()), min_size=1, max_size=3),
)
def test_a_spoiled_datagram_is_never_read_otherwise_than_by_the_general_decoding(
    text: str, source: str, seq: int, edits: list[tuple[int, int | None]]
) -> None:
    msg = Broadcast(text=text, source_instance=source, seq=seq)
    raw = bytearray(
        encode_envelope(Envelope(source_addr=SERVER_GROUP_ADDR, data=encode_group_message(msg)))
    )
    for where, byte in edits:  # a byte replaced, or (None) the datagram cut there
        where %= len(raw)
        if byte is None:
            del raw[where:]
            if not raw:
                break
        else:
            raw[where] = byte
    fields = delivered_broadcast_fields(bytes(raw))
    general = _general(bytes(raw))
    if fields is not None:  # None: the caller decodes it the general way
        got_text, got_source, got_seq = fields
        assert general == Broadcast(text=got_text, source_instance=got_source, seq=got_seq)


@given(st.text(max_size=100), st.text(max_size=20), st.none() | st.integers(min_value=1))
def test_a_relayed_broadcast_takes_the_fast_path(text: str, source: str, seq: int | None) -> None:
    msg = Broadcast(text=text, source_instance=source, seq=seq)
    raw = encode_envelope(Envelope(source_addr=SERVER_GROUP_ADDR, data=encode_group_message(msg)))
    fast = decode_delivered_broadcast(raw)
    if any("\ud800" <= c <= "\udfff" for c in text + source):
        return  # escaped as a whole by the encoder; the general path decodes it
    assert fast == msg
