"""Byte-exact fixtures for protocol v2, written from the spec (sections 2 and 3)."""

from __future__ import annotations

import ast
import inspect

import pytest

from servergroup.common.errors import RemoteError, UsageError
from servergroup.guestcomm import protocol
from servergroup.guestcomm.protocol import (
    MAX_LINE,
    ChannelDecoder,
    Dropped,
    DropReason,
    Envelope,
    JsonObject,
    ProtocolError,
    decode_envelope,
    encode_envelope,
    encode_guest_frame,
    encode_host_frame,
)
from servergroup.guestcomm.sockets import encode_delivery

BROADCAST: JsonObject = {"version": 2, "msg_type": "broadcast", "data": "hello group"}
BROADCAST_JSON = b'{"version":2,"msg_type":"broadcast","data":"hello group"}'


def test_what_a_guest_agent_writes_on_the_channel() -> None:
    env = Envelope(dest_addr="cgcs.server_grp", source_addr="cgcs.server_grp", data=BROADCAST)
    assert encode_guest_frame(env) == (
        b'\n{"version":2,"dest_addr":"cgcs.server_grp","source_addr":"cgcs.server_grp",'
        b'"data":' + BROADCAST_JSON + b"}\n"
    )


def test_what_a_host_writes_on_the_channel() -> None:
    env = Envelope(
        dest_addr="cgcs.server_grp",
        source_addr="cgcs.server_grp",
        data={"version": 2, "msg_type": "status_response_done", "seq": 7},
    )
    assert encode_host_frame(env) == (
        b'{"version":2,"dest_addr":"cgcs.server_grp","source_addr":"cgcs.server_grp",'
        b'"data":{"version":2,"msg_type":"status_response_done","seq":7}}\n'
    )


def test_what_an_application_receives() -> None:
    guest_side = Envelope(
        dest_addr="cgcs.server_grp", source_addr="cgcs.server_grp", data=BROADCAST
    )
    assert encode_delivery(guest_side) == (
        b'{"version":2,"source_addr":"cgcs.server_grp","data":' + BROADCAST_JSON + b"}"
    )
    host_side = Envelope(
        dest_addr="scale-0000000a",
        source_addr="cgcs.scale",
        source_instance="instance-0000000a",
        data={"version": 2, "resource": "cpu", "direction": "down", "result": "success"},
    )
    assert encode_delivery(host_side) == (
        b'{"version":2,"source_addr":"cgcs.scale","source_instance":"instance-0000000a",'
        b'"data":{"version":2,"resource":"cpu","direction":"down","result":"success"}}'
    )


def test_every_address_field_has_its_place() -> None:
    env = Envelope(
        data={},
        dest_addr="d",
        source_addr="s",
        dest_instance="instance-00000001",
        source_instance="instance-00000002",
    )
    assert encode_envelope(env) == (
        b'{"version":2,"dest_addr":"d","dest_instance":"instance-00000001",'
        b'"source_addr":"s","source_instance":"instance-00000002","data":{}}'
    )


def test_non_ascii_text_stays_utf8_and_newlines_are_escaped() -> None:
    env = Envelope(dest_addr="a", data={"text": "h\u00e9llo\nw\u2028rld"})
    raw = encode_envelope(env)
    assert raw == b'{"version":2,"dest_addr":"a","data":{"text":"h\xc3\xa9llo\\nw\xe2\x80\xa8rld"}}'
    assert b"\n" not in raw
    assert decode_envelope(raw) == env


def test_a_lone_surrogate_is_relayed_escaped() -> None:
    env = Envelope(dest_addr="a", data={"text": "h\u00e9 \ud800"})
    raw = encode_envelope(env)
    assert raw == b'{"version":2,"dest_addr":"a","data":{"text":"h\\u00e9 \\ud800"}}'
    assert decode_envelope(raw) == env


def test_an_app_message_as_the_original_library_sends_it() -> None:
    raw = (
        b'{"version": 2, "dest_addr": "cgcs.server_grp", '
        b'"data": {"version": 2, "msg_type": "status_query", "seq": 1}}'
    )
    assert decode_envelope(raw) == Envelope(
        dest_addr="cgcs.server_grp", data={"version": 2, "msg_type": "status_query", "seq": 1}
    )


def test_data_is_opaque_unknown_keys_and_types_pass() -> None:
    data = {"msg_type": "made_up", "nested": {"a": [1, 2.5, None, True, "x"]}}
    raw = (
        b'{"version":2,"dest_addr":"x",'
        b'"data":{"msg_type":"made_up","nested":{"a":[1,2.5,null,true,"x"]}}}'
    )
    assert decode_envelope(raw).data == data
    assert encode_envelope(decode_envelope(raw)) == raw


def test_unknown_top_level_keys_are_ignored() -> None:
    assert decode_envelope(b'{"version":2,"data":{},"extra":[1]}') == Envelope(data={})


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"", "not JSON"),
        (b"garbage", "not JSON"),
        (b'{"version":2,"data":{', "not JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b"\xef\xbb\xbf" + b'{"version":2,"data":{}}', "not JSON"),
        (b"[1,2]", "array, not an object"),
        (b'"text"', "string, not an object"),
        (b'{"data":{}}', "version missing"),
        (b'{"version":3,"data":{}}', "version 3"),
        (b'{"version":"2","data":{}}', 'version "2"'),
        (b'{"version":2.0,"data":{}}', "version 2.0"),
        (b'{"version":true,"data":{}}', "version true"),
        (b'{"version":2}', "no data"),
        (b'{"version":2,"data":"text"}', "data that is a JSON string"),
        (b'{"version":2,"data":null}', "data that is a JSON null"),
        (b'{"version":2,"data":{},"dest_addr":5}', "dest_addr is a JSON number"),
        (b'{"version":2,"data":{},"dest_addr":null}', "dest_addr is a JSON null"),
        (b'{"version":2,"data":{},"dest_addr":""}', "0 bytes"),
        (b'{"version":2,"data":{},"source_addr":"0123456789abcdef"}', "16 bytes"),
        (b'{"version":2,"data":{},"dest_instance":"instance-0123456789ab"}', "21 bytes"),
        (b'{"version":2,"data":{},"dest_addr":"a\\u0000b"}', "NUL"),
        (b'{"version":2,"data":{},"dest_addr":"\\ud800"}', "not valid Unicode"),
        (b'{"version":2,"data":{"x":NaN}}', "not JSON"),
        (b'{"version":2,"data":{"x":-Infinity}}', "not JSON"),
        (b'{"version":2,"data":{"x":' + b"1" * 5000 + b"}}", "not JSON"),
        (b"[" * 100000, "deeper than"),
        (b'{"version":2,"data":' + b'{"a":' * 40 + b"1" + b"}" * 41, "deeper than"),
    ],
)
def test_bad_messages_raise_protocol_error_naming_why(raw: bytes, why: str) -> None:
    with pytest.raises(ProtocolError, match=why.replace("(", r"\(").replace('"', '"')) as caught:
        decode_envelope(raw)
    assert isinstance(caught.value, RemoteError)
    assert str(caught.value).endswith(".")


def test_limits_are_inclusive() -> None:
    env = decode_envelope(
        b'{"version":2,"data":{},"dest_addr":"0123456789abcde",'
        b'"source_instance":"instance-0123456789a"}'
    )
    assert env.dest_addr == "0123456789abcde"
    assert env.source_instance == "instance-0123456789a"
    nested = b'{"version":2,"data":' + b'{"a":' * 30 + b"1" + b"}" * 31
    assert decode_envelope(nested).data


def test_encoding_what_json_cannot_hold_is_a_usage_error() -> None:
    with pytest.raises(UsageError):
        encode_envelope(Envelope(data={"x": float("nan")}))
    with pytest.raises(UsageError):
        encode_envelope(Envelope(data={"x": object()}))  # type: ignore[dict-item]


# --- the channel decoder ---------------------------------------------------------------


def _env(n: int) -> Envelope:
    return Envelope(dest_addr="cgcs.server_grp", source_addr="cgcs.server_grp", data={"n": n})


def test_guest_and_host_framing_decode_the_same() -> None:
    guest_stream = b"".join(encode_guest_frame(_env(n)) for n in range(3))
    host_stream = b"".join(encode_host_frame(_env(n)) for n in range(3))
    assert ChannelDecoder().feed(guest_stream) == [_env(0), _env(1), _env(2)]
    assert ChannelDecoder().feed(host_stream) == [_env(0), _env(1), _env(2)]


def test_one_message_byte_by_byte() -> None:
    decoder = ChannelDecoder()
    frame = encode_host_frame(_env(1))
    out = [item for i in range(len(frame)) for item in decoder.feed(frame[i : i + 1])]
    assert out == [_env(1)]
    assert decoder.buffered == 0


def test_trailing_partial_message_waits_for_its_newline() -> None:
    decoder = ChannelDecoder()
    frame = encode_host_frame(_env(2))
    assert decoder.feed(encode_host_frame(_env(1)) + frame[:10]) == [_env(1)]
    assert decoder.buffered == 10
    assert decoder.feed(frame[10:]) == [_env(2)]


def test_garbage_resets_and_the_next_message_is_read() -> None:
    stream = (
        b"\n\n  \r\n"
        + b"garbage\n"
        + b'{"version":2,"data":{\n'  # truncated JSON, then a newline
        + encode_host_frame(_env(1))
        + b'{"version":1,"data":{}}\n'
        + b"\x00\xff\n"
        + encode_guest_frame(_env(2))
    )
    out = ChannelDecoder().feed(stream)
    assert [i for i in out if isinstance(i, Envelope)] == [_env(1), _env(2)]
    assert [(i.reason, i.size) for i in out if isinstance(i, Dropped)] == [
        (DropReason.GARBAGE, 7),
        (DropReason.GARBAGE, 21),
        (DropReason.BAD_ENVELOPE, 23),
        (DropReason.GARBAGE, 2),
    ]


def test_an_over_long_line_is_dropped_once_with_its_size_and_memory_stays_bounded() -> None:
    decoder = ChannelDecoder(max_line=100)
    out: list[Envelope | Dropped] = []
    out += decoder.feed(encode_host_frame(_env(1)) + b"x" * 60)
    for _ in range(1000):
        out += decoder.feed(b"y" * 50)
        assert decoder.buffered <= 100
    out += decoder.feed(b"z" * 5 + b"\n" + encode_host_frame(_env(2)))
    assert out == [
        _env(1),
        Dropped(
            reason=DropReason.LINE_TOO_LONG,
            size=60 + 50_000 + 5,
            detail="a line of 50065 bytes is longer than the 100 accepted.",
        ),
        _env(2),
    ]


def test_a_line_of_exactly_max_line_is_accepted() -> None:
    frame = encode_host_frame(_env(1))
    decoder = ChannelDecoder(max_line=len(frame) - 1)
    assert decoder.feed(frame[:5]) == []
    assert decoder.feed(frame[5:]) == [_env(1)]
    decoder = ChannelDecoder(max_line=len(frame) - 2)
    assert [type(i) for i in decoder.feed(frame[:5]) + decoder.feed(frame[5:])] == [Dropped]


def test_default_max_line() -> None:
    line = b'{"version":2,"data":{"s":"' + b"a" * (MAX_LINE - 29) + b'"}}'
    assert len(line) == MAX_LINE
    assert isinstance(ChannelDecoder().feed(line + b"\n")[0], Envelope)
    assert isinstance(ChannelDecoder().feed(b" " + line + b"\n")[0], Dropped)


def test_the_pure_module_imports_no_io() -> None:
    tree = ast.parse(inspect.getsource(protocol))
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {
        (node.module or "").split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
    }
    forbidden = {"asyncio", "socket", "subprocess", "threading", "time", "os", "io", "select"}
    assert imported & forbidden == set()
