"""Automatic scaling's records and the pure parts of its host component (`scaling.autoscale`)."""

from __future__ import annotations

import contextlib
import json
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from servergroup.scaling.autoscale import (
    AUTOSCALE_EVENT,
    PolicyRecord,
    autoscale_event,
    decode_policy_record,
    encode_policy_record,
    held_at_limit,
    online_of,
    parse_policy_key,
    policy_key,
    sample_interval,
    target_for,
)
from servergroup.scaling.policy import Decision, Policy
from servergroup.scaling.protocol import Direction
from servergroup.servers.model import (
    Desired,
    RecordError,
    Server,
    ServerSpec,
    ServerStatus,
    VmState,
    decode_event,
    encode_record,
)

SPEC = ServerSpec(
    name="s1", instance="instance-0000000a", uuid="u-1", group="g", host="h1", vcpus=4, min_vcpus=2
)
STATUS = ServerStatus(
    name="s1", host="h1", state=VmState.ACTIVE, online_cpus=(0, 1, 2), vcpus=4, launched_at="t0"
)
SERVER = Server(spec=SPEC, status=STATUS)
POLICY = Policy(up_above=70, down_below=20, window_interval=10, cooldown_interval=5)
RECORD = PolicyRecord(server="s1", uuid="u-1", policy=POLICY, set_at="now")

percents = st.floats(0.001, 100, allow_nan=False)


@given(
    low=percents,
    high=percents,
    window=st.floats(0.001, 1e6, allow_nan=False),
    cooldown=st.floats(0, 1e6, allow_nan=False),
)
def test_policy_records_round_trip(low: float, high: float, window: float, cooldown: float) -> None:
    if not low < high:
        low, high = min(low, high) / 2, max(low, high)
    if not low < high:
        return
    record = PolicyRecord(
        server="s1",
        uuid="u",
        policy=Policy(
            up_above=high, down_below=low, window_interval=window, cooldown_interval=cooldown
        ),
    )
    assert decode_policy_record(encode_policy_record(record)) == record


@given(raw=st.binary(max_size=200))
def test_anything_else_is_a_record_error(raw: bytes) -> None:
    with contextlib.suppress(RecordError):
        decode_policy_record(raw)


@pytest.mark.parametrize(
    ("obj", "words"),
    [
        ([], "not a JSON object"),
        ({"uuid": "u", "policy": {}}, "no string 'server'"),
        ({"server": "s1", "uuid": "u", "policy": 12}, "not a JSON object"),
        (
            {
                "server": "s1",
                "uuid": "u",
                "policy": {
                    "up_above": 10,
                    "down_below": 20,
                    "window_interval": 1,
                    "cooldown_interval": 0,
                },
            },
            "must be below",
        ),
        ({"server": "s1", "uuid": "u", "policy": {"up_above": 10}}, "no number 'down_below'"),
        (
            {"server": "s1", "uuid": "u", "set_at": 3, "policy": {}},
            "'set_at' that is not a string",
        ),
    ],
)
def test_a_malformed_record_says_why_in_one_sentence(obj: object, words: str) -> None:
    with pytest.raises(RecordError, match=words) as caught:
        decode_policy_record(json.dumps(obj).encode())
    assert "\n" not in str(caught.value)
    with pytest.raises(RecordError, match="not JSON"):
        decode_policy_record(b"{nope")


def test_keys() -> None:
    assert policy_key("s1") == "scaling/policies/s1"
    assert parse_policy_key("scaling/policies/s1") == "s1"
    for key in ("scaling/policies/", "scaling/policies/a/b", "scaling/requests/s1/x"):
        assert parse_policy_key(key) is None


def test_a_policy_runs_on_the_host_that_runs_the_server_active() -> None:
    target = target_for(RECORD, SERVER, "h1")
    assert target is not None
    assert (target.policy, target.vcpus, target.min_vcpus, target.launched_at) == (
        POLICY,
        4,
        2,
        "t0",
    )
    assert target_for(RECORD, SERVER, "h2") is None  # not ours
    assert target_for(None, SERVER, "h1") is None  # no policy
    assert target_for(RECORD, None, "h1") is None  # no server
    assert target_for(RECORD, Server(spec=SPEC), "h1") is None  # not running yet
    for state in (VmState.PAUSED, VmState.STOPPED, VmState.MIGRATING, VmState.ERROR):
        assert (
            target_for(RECORD, replace(SERVER, status=replace(STATUS, state=state)), "h1") is None
        )
    deleting = replace(SERVER, spec=replace(SPEC, desired=Desired.DELETED))
    assert target_for(RECORD, deleting, "h1") is None
    # A server created again under the same name does not inherit the policy.
    assert target_for(RECORD, replace(SERVER, spec=replace(SPEC, uuid="u-2")), "h1") is None
    # A resize under way: nothing until its status is for the new flavor.
    resizing = replace(SERVER, spec=replace(SPEC, vcpus=6))
    assert target_for(RECORD, resizing, "h1") is None
    # A reboot, or another policy, is another target (the policy starts afresh);
    # a scale (another online set) is not.
    rebooted = replace(SERVER, status=replace(STATUS, reboot_count=1))
    assert target_for(RECORD, rebooted, "h1") != target
    other = replace(RECORD, policy=replace(POLICY, up_above=80))
    assert target_for(other, SERVER, "h1") != target
    scaled = replace(SERVER, status=replace(STATUS, online_cpus=(0, 1)))
    assert target_for(RECORD, scaled, "h1") == target


def test_online_and_the_sample_interval() -> None:
    assert online_of(SERVER) == (0, 1, 2)
    assert online_of(Server(spec=SPEC)) == (0, 1, 2, 3)
    assert online_of(None) == ()
    assert sample_interval(POLICY) == 1.0
    assert sample_interval(replace(POLICY, window_interval=2)) == pytest.approx(0.2)
    assert sample_interval(replace(POLICY, window_interval=0.01)) == 0.1


def test_held_at_a_limit() -> None:
    def nothing(busy: float | None) -> Decision:
        return Decision(direction=None, sentence="x", busy_percent=busy)

    assert held_at_limit(POLICY, nothing(90)) is Direction.UP
    assert held_at_limit(POLICY, nothing(5)) is Direction.DOWN
    assert held_at_limit(POLICY, nothing(50)) is None
    assert held_at_limit(POLICY, nothing(None)) is None
    acted = Decision(direction=Direction.UP, sentence="x", busy_percent=90, target_vcpus=4)
    assert held_at_limit(POLICY, acted) is None


def test_the_event_of_a_decision_round_trips_as_a_server_event() -> None:
    decision = Decision(
        direction=Direction.DOWN, sentence="server s1 was idle", busy_percent=1.5, target_vcpus=2
    )
    event = autoscale_event(
        "s1",
        decision,
        policy=POLICY,
        host="h1",
        at="t1",
        online=3,
        done=False,
        sentence="server s1 was idle, which failed: no",
        error="no",
    )
    assert event.what == AUTOSCALE_EVENT
    assert decode_event(encode_record(event)) == event
    assert dict(event.details) == {
        "direction": "down",
        "busy_percent": 1.5,
        "from_vcpus": 3,
        "to_vcpus": 2,
        "done": False,
        "online_cpus": [],
        "error": "no",
        "policy": {
            "up_above": 70.0,
            "down_below": 20.0,
            "window_interval": 10.0,
            "cooldown_interval": 5.0,
        },
    }
    with pytest.raises(RecordError, match="must be an object"):
        decode_event(
            b'{"name": "s1", "what": "x", "host": "h", "at": "t", "sentence": "s", "details": 1}'
        )
