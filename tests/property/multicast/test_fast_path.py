"""The receiver's fast path (`datagrams_received`) does exactly what one datagram at a time does.

Two machines in the same state get the same datagrams: one in runs (as
the kernel coalesces them, whatever lies in the run), the other one by one
through `datagram_received`. Their outputs, counters and delivered bytes must
agree, whatever mix of good, duplicate, corrupt, foreign, stale, forged and
truncated datagrams arrives, with and without a key.
"""

from __future__ import annotations

import os
from ipaddress import IPv4Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from servergroup.multicast import receiving as rx
from servergroup.multicast.protocol import (
    Auth,
    BufferInfo,
    DataPacket,
    Welcome,
    encode_data,
)

SESSION = 0x5E55
PAYLOAD = 64
PACKETS = 9
DATA = os.urandom(PAYLOAD * (PACKETS - 1) + 17)  # the last packet is short


def machine(auth: Auth | None) -> rx.ReceiverMachine:
    m = rx.ReceiverMachine(rx.ReceiverSettings(name="r", auth=auth))
    m.connected(0.0)
    welcome = Welcome(
        group=IPv4Address("239.1.2.3"),
        port=9,
        payload_size=PAYLOAD,
        buffer_packets=PACKETS,
        keepalive_interval=1.0,
    )
    m.message_received(SESSION, welcome, 0.0)
    info = BufferInfo(buffer_id=0, packet_count=PACKETS, byte_length=len(DATA))
    m.message_received(SESSION, info, 0.0)
    return m


def datagram(kind: str, index: int, auth: Auth | None) -> bytes:
    payload = DATA[index * PAYLOAD : (index + 1) * PAYLOAD]
    session, buffer_id = SESSION, 0
    if kind == "foreign":
        session = SESSION + 1
    elif kind == "stale":
        buffer_id = 7
    signer = Auth(b"another key") if kind == "forged" and auth is not None else auth
    raw = bytearray(
        encode_data(
            DataPacket(session=session, buffer_id=buffer_id, index=index, payload=payload), signer
        )
    )
    if kind == "corrupt":
        raw[-1 - (16 if auth else 0)] ^= 0x40
    elif kind == "truncated":
        del raw[-3:]
    elif kind == "noise":
        return os.urandom(len(raw))
    return bytes(raw)


KINDS = st.sampled_from(
    ["good", "good", "good", "good", "foreign", "stale", "forged", "corrupt", "truncated", "noise"]
)
ARRIVALS = st.lists(
    st.tuples(KINDS, st.integers(0, PACKETS - 1), st.integers(1, 6)), min_size=1, max_size=40
)


def summary(outputs: list[rx.Output]) -> list[tuple[str, object]]:
    shown: list[tuple[str, object]] = []
    for o in outputs:
        if isinstance(o, rx.Deliver):
            shown.append(("deliver", bytes(o.data)))
        elif isinstance(o, rx.Send):
            shown.append(("send", o.message))
        else:
            shown.append((type(o).__name__, o))
    return shown


@pytest.mark.parametrize("keyed", [False, True])
@settings(max_examples=60, deadline=None)
@given(arrivals=ARRIVALS)
def test_runs_and_single_datagrams_agree(keyed: bool, arrivals: list[tuple[str, int, int]]) -> None:
    auth = Auth(b"the key") if keyed else None
    fast, slow = machine(auth), machine(auth)
    fast_out: list[rx.Output] = []
    slow_out: list[rx.Output] = []
    now = 1.0
    for kind, index, run in arrivals:
        # A run of `run` datagrams of one size, as the kernel coalesces them: the
        # same kind for consecutive indices (the last may be the short one).
        parts = [datagram(kind, min(index + i, PACKETS - 1), auth) for i in range(run)]
        size = len(parts[0])
        cut = next((i for i, p in enumerate(parts) if len(p) != size), len(parts))
        parts = parts[: cut + 1] if cut < len(parts) else parts
        now += 1.0
        fast_out += fast.datagrams_received(memoryview(b"".join(parts)), size, now)
        for p in parts:
            slow_out += slow.datagram_received(memoryview(p), now)
    assert summary(fast_out) == summary(slow_out)
    assert fast.counters() == slow.counters()
    assert fast.next_timer() == slow.next_timer()
    assert fast.phase is slow.phase
