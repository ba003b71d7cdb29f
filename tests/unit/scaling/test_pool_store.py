"""The scaling key space and records (pure), and the scaler's small pure helpers."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from servergroup.scaling.protocol import Direction
from servergroup.scaling.scaler import offline_vcpus, scale_address
from servergroup.scaling.store import (
    PoolRecord,
    ScaleOrder,
    ScaleOutcome,
    ScaleTimings,
    decode_order,
    decode_outcome,
    decode_pool,
    encode_order,
    encode_outcome,
    encode_pool,
    parse_request_key,
    request_key,
)
from servergroup.servers.model import RecordError, Server, ServerSpec, ServerStatus, VmState

cpus = st.lists(st.integers(0, 63), max_size=8).map(lambda c: tuple(sorted(set(c))))


@given(
    ident=st.text("0123456789abcdef", min_size=1, max_size=16),
    direction=st.sampled_from(Direction),
    timeout_ms=st.integers(1, 60_000),
    lease=st.integers(0, 2**62),
)
def test_orders_round_trip(ident: str, direction: Direction, timeout_ms: int, lease: int) -> None:
    order = ScaleOrder(
        id=ident, server="s1", direction=direction, timeout_ms=timeout_ms, lease=lease
    )
    assert decode_order(encode_order(order)) == order
    assert parse_request_key(request_key("s1", ident)) == ("s1", ident)


@given(ok=st.booleans(), cpu=st.none() | st.integers(0, 63), online=cpus)
def test_outcomes_round_trip(ok: bool, cpu: int | None, online: tuple[int, ...]) -> None:
    outcome = ScaleOutcome(
        id="x",
        server="s1",
        host="h1",
        direction=Direction.UP,
        ok=ok,
        cpu=cpu,
        online_cpus=online,
        error=None if ok else "no",
    )
    assert decode_outcome(encode_outcome(outcome)) == outcome


durations = st.floats(0, 60, allow_nan=False).map(lambda s: round(s, 6))


@given(phases=st.tuples(durations, durations, durations, durations, durations))
def test_outcomes_with_timings_round_trip(
    phases: tuple[float, float, float, float, float],
) -> None:
    queued, check, guest, hypervisor, record = phases
    timings = ScaleTimings(
        queued=queued, check=check, guest=guest, hypervisor=hypervisor, record=record
    )
    outcome = ScaleOutcome(
        id="x", server="s1", host="h1", direction=Direction.DOWN, ok=True, timings=timings
    )
    assert decode_outcome(encode_outcome(outcome)) == outcome
    assert outcome.timings is not None
    assert outcome.timings.total == pytest.approx(sum(phases))


def test_outcomes_without_timings_decode_as_before() -> None:
    """A result written by a host from before the timings (no key) still decodes."""
    old = b'{"direction":"down","error":null,"host":"h1","id":"x","ok":true,"server":"s1"}'
    assert decode_outcome(old).timings is None
    # A host that measures only some phases: the others are 0.
    some = json.loads(old) | {"timings": {"guest": 0.002}}
    assert decode_outcome(json.dumps(some).encode()).timings == ScaleTimings(guest=0.002)
    for bad in ([1], {"guest": -1}, {"record": "1"}, {"check": True}):
        with pytest.raises(RecordError, match="timing"):
            decode_outcome(json.dumps(json.loads(old) | {"timings": bad}).encode())


def test_pool_records_round_trip() -> None:
    record = PoolRecord(
        host="h1", cpus=(0, 1, 2), free=(2,), placed={"a": {0: 0, 1: 1}}, shared={"b": (0,)}
    )
    assert decode_pool(encode_pool(record)) == record


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=4),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
keys = st.sampled_from(
    [
        "id",
        "server",
        "host",
        "direction",
        "ok",
        "cpus",
        "free",
        "placed",
        "shared",
        "online_cpus",
        "timeout_ms",
        "cpu",
        "timings",
    ]
)


@given(
    raw=st.binary(max_size=64)
    | st.dictionaries(keys, json_values).map(lambda d: json.dumps(d).encode())
)
def test_garbage_is_a_record_error(raw: bytes) -> None:
    for decode in (decode_order, decode_outcome, decode_pool):
        with contextlib.suppress(RecordError):
            decode(raw)


@pytest.mark.parametrize(
    "key", ["scaling/requests/s1", "scaling/requests//x", "scaling/results/s1/x", "x/y/z"]
)
def test_keys_that_are_not_requests(key: str) -> None:
    assert parse_request_key(key) is None


def test_order_with_a_timeout_out_of_range_is_refused() -> None:
    raw = encode_order(ScaleOrder(id="x", server="s1", direction=Direction.DOWN)).replace(
        b'"timeout_ms":9000', b'"timeout_ms":0'
    )
    with pytest.raises(RecordError, match="timeout_ms 0"):
        decode_order(raw)


SPEC = ServerSpec(name="s1", instance="instance-0a1b2c3d", uuid="u", group="g", host="h1", vcpus=4)


def test_boot_sync_says_what_the_record_says_is_offline() -> None:
    def server(online: tuple[int, ...], vcpus: int = 4) -> Server:
        status = ServerStatus(
            name="s1", host="h1", state=VmState.ACTIVE, online_cpus=online, vcpus=vcpus
        )
        return Server(spec=SPEC, status=status)

    assert offline_vcpus(None) == ()
    assert offline_vcpus(Server(spec=SPEC)) == ()
    assert offline_vcpus(server((0, 2))) == (1, 3)
    assert offline_vcpus(server((0, 1, 2, 3))) == ()
    assert offline_vcpus(server((1, 2))) == ()  # vCPU 0 never offline: nonsense, so none
    assert offline_vcpus(server((0,), vcpus=2)) == ()  # resized: every vCPU comes back


def test_the_scale_address_is_scale_and_the_instance_hex() -> None:
    assert scale_address("instance-0a1b2c3d") == "scale-0a1b2c3d"
    assert len(scale_address("something-else")) <= 15
