"""The scaling messages of spec section 5 and our boot-sync extension."""

from __future__ import annotations

import json

import pytest

from servergroup.guestcomm.protocol import Json, ProtocolError
from servergroup.scaling.protocol import (
    DEFAULT_TIMEOUT_MS,
    Direction,
    Result,
    ScaleNack,
    ScaleReply,
    ScaleRequest,
    SyncReply,
    SyncRequest,
    decode_reply,
    decode_request,
    encode_message,
)


def test_the_spec_examples_decode() -> None:
    down = json.loads(
        '{"version": 2, "msg_type": "scale_request", "timeout_ms": 9000,'
        ' "resource": "cpu", "direction": "down"}'
    )
    assert decode_request(down) == ScaleRequest(direction=Direction.DOWN, timeout_ms=9000)
    up = json.loads(
        '{"version": 2, "msg_type": "scale_request", "timeout_ms": 9000, "resource": "cpu",'
        ' "direction": "up", "online_cpu": 3, "online_cpus": [0,1,2,3]}'
    )
    assert decode_request(up) == ScaleRequest(
        direction=Direction.UP, timeout_ms=9000, online_cpu=3, online_cpus=(0, 1, 2, 3)
    )
    reply = json.loads(
        '{"version": 2, "resource": "cpu", "direction": "down", "result": "success",'
        ' "offline_cpu": 3, "online_cpus": [0,1,2]}'
    )
    assert decode_reply(reply) == ScaleReply(
        direction=Direction.DOWN, result=Result.SUCCESS, cpu=3, online_cpus=(0, 1, 2)
    )
    fail = json.loads(
        '{"version": 2, "resource": "cpu", "direction": "down", "result": "fail", "err_msg": "no"}'
    )
    assert decode_reply(fail) == ScaleReply(
        direction=Direction.DOWN, result=Result.FAIL, err_msg="no"
    )


def test_encoded_replies_have_the_original_keys_in_order() -> None:
    reply = ScaleReply(direction=Direction.DOWN, result=Result.SUCCESS, cpu=3, online_cpus=(0, 1))
    assert list(encode_message(reply)) == [
        "version",
        "resource",
        "direction",
        "result",
        "offline_cpu",
        "online_cpus",
    ]
    up = ScaleReply(direction=Direction.UP, result=Result.SUCCESS, cpu=2, online_cpus=(0, 1, 2))
    assert encode_message(up)["online_cpu"] == 2
    assert encode_message(ScaleNack(log_msg="why")) == {
        "version": 2,
        "msg_type": "nack",
        "log_msg": "why",
    }


@pytest.mark.parametrize(
    "msg",
    [
        ScaleRequest(direction=Direction.DOWN),
        ScaleRequest(direction=Direction.DOWN, timeout_ms=1, id=7),
        ScaleRequest(direction=Direction.UP, online_cpu=3, online_cpus=(0, 3)),
        ScaleRequest(direction=Direction.UP, online_cpu=1),
        SyncRequest(),
        SyncReply(offline_cpus=()),
        SyncReply(offline_cpus=(1, 2)),
    ],
)
def test_requests_round_trip(msg: ScaleRequest | SyncRequest | SyncReply) -> None:
    assert decode_request(json.loads(json.dumps(encode_message(msg)))) == msg


@pytest.mark.parametrize(
    "msg",
    [
        ScaleReply(direction=Direction.DOWN, result=Result.SUCCESS, cpu=1, online_cpus=(0,)),
        ScaleReply(direction=Direction.UP, result=Result.FAIL, err_msg="x", id=3),
        ScaleNack(log_msg="bad"),
    ],
)
def test_replies_round_trip(msg: ScaleReply | ScaleNack) -> None:
    assert decode_reply(json.loads(json.dumps(encode_message(msg)))) == msg


def test_timeout_defaults() -> None:
    raw: Json = {"version": 2, "msg_type": "scale_request", "resource": "cpu", "direction": "down"}
    request = decode_request(raw)
    assert isinstance(request, ScaleRequest)
    assert request.timeout_ms == DEFAULT_TIMEOUT_MS


BASE = {"version": 2, "msg_type": "scale_request", "resource": "cpu", "direction": "down"}


@pytest.mark.parametrize(
    "raw",
    [
        [],
        "scale",
        {**BASE, "version": 1},
        {**BASE, "version": True},
        {**BASE, "msg_type": "other"},
        {k: v for k, v in BASE.items() if k != "msg_type"},
        {**BASE, "resource": "memory"},
        {**BASE, "direction": "sideways"},
        {**BASE, "timeout_ms": 0},
        {**BASE, "timeout_ms": "9000"},
        {**BASE, "timeout_ms": 10**9},
        {**BASE, "direction": "up"},
        {**BASE, "direction": "up", "online_cpu": -1},
        {**BASE, "direction": "up", "online_cpu": True},
        {**BASE, "direction": "up", "online_cpu": 1, "online_cpus": "0-1"},
        {**BASE, "direction": "up", "online_cpu": 1, "online_cpus": [0, "1"]},
        {**BASE, "id": -1},
        {"version": 2, "msg_type": "scale_sync", "resource": "cpu"},
    ],
)
def test_malformed_requests_get_one_sentence(raw: Json) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_request(raw)
    message = str(caught.value)
    assert message.endswith(".")
    assert "\n" not in message
    assert message[0].islower() or message.startswith("the")
