"""Micro-benchmark: the CPU of the message path's hot functions, one call at a time.

The end-to-end benchmark (bench/messaging.py) runs some 30 processes on the
machine, and on a machine shared with other work its figures move by half
from one run to the next. This one times the pure functions each broadcast
goes through, in one process, each the best of many short runs (so that a
run the scheduler interrupted does not count), which is steady enough to
compare two versions of the code on a busy machine: run it in each tree
(`PYTHONPATH=<tree>/src python bench/messaging_micro.py`).

    .venv/bin/python bench/messaging_micro.py [--number 500] [--repeat 200]

What it times (a 100-byte broadcast text, the address names the lab uses;
through entry points that older trees have too, so that two trees compare):
the client's datagram; the guest agent's check of an application's
datagram and its guest frame (the client library's form, and another
writer's, which takes the general path); the host's frame of a broadcast
for one address; an item's size in a batch; the socket helpers run per
datagram; decoding a batch of 10. Per receipt (the path each broadcast
takes 9 times in the 10-member benchmark): the client's decoding of one
delivered datagram, the client's `receive()` of 8 waiting datagrams with
its socket reads, and the guest agent's delivery of one channel read of 8
frames with its `sendto`s (a socket bound here receives them, untimed); per
broadcast on the sending host, the relay's decoding and routing of one read
of 30 guest frames.
The kernel lets 10 datagrams wait per socket outside lab servers, hence 8.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import socket
import time
import timeit
from collections.abc import Callable
from pathlib import Path

from servergroup.groups import service
from servergroup.groups.client import ClientCore, ServerGroupClient
from servergroup.groups.protocol import Broadcast, encode_broadcast_json, encode_group_message
from servergroup.guestcomm import sockets
from servergroup.guestcomm.guest import GuestAgent, GuestConfig, WriteResult
from servergroup.guestcomm.protocol import (
    ChannelDecoder,
    Envelope,
    delivery_of_frame,
    encode_envelope,
    encode_guest_frame,
    host_frame_with,
)
from servergroup.guestcomm.relay import ChannelRelay
from servergroup.servers.model import BroadcastBatch, BroadcastItem, decode_batch, encode_batch

TEXT = "t3 msg0 1234 12345.678901 " + "." * 74
INSTANCE = "instance-0123abcd"


class _Channel:
    """A connected channel that keeps what the agent writes (the agent's `_Channel`)."""

    connected = True
    pending = 0

    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def write(self, frame: bytes) -> WriteResult:
        self.frames.append(frame)
        return WriteResult.QUEUED


def cases() -> dict[str, Callable[[], object]]:
    item = BroadcastItem("m0", INSTANCE, TEXT)
    request = encode_group_message(Broadcast(text=TEXT, id=77))
    app_datagram = encode_envelope(Envelope(dest_addr="cgcs.server_grp", data=request))
    sender = ClientCore()
    datagram = sockets.Datagram(data=app_datagram, sender="sgc-1234-abcd", truncated=False)
    value = encode_batch(
        BroadcastBatch(group="bench", host="h1", host_total=100,
                       sent_at="2026-12-06T14:00:00.000+00:00", items=(item,) * 10)
    )  # fmt: skip
    trunc = getattr(sockets, "_MSG_TRUNC", socket.MSG_TRUNC)

    # The agent's whole handling of an app's datagram, up to its channel's write (a stub).
    agent = GuestAgent(GuestConfig(channel_listen=Path("/nonexistent/mb.sock")))
    channel = _Channel()
    agent._channel = channel  # type: ignore[assignment]
    other = sockets.Datagram(
        data=json.dumps(json.loads(app_datagram)).encode(), sender="sgc-1234-abcd", truncated=False
    )  # spaced: not the client library's form

    def guest_frame() -> object:
        agent._from_app(datagram)
        return channel.frames.pop()

    def guest_frame_general() -> object:
        agent._from_app(other)
        return channel.frames.pop()

    def host_frame() -> object:
        data = encode_broadcast_json(TEXT, INSTANCE, 12345)
        assert data is not None
        return host_frame_with("cgcs.server_grp", "cgcs.server_grp", data)

    return {
        "client: a broadcast's datagram": lambda: sender.broadcast(TEXT, checked=True),
        "agent: check an app's datagram, make its guest frame": guest_frame,
        "agent: the same, another writer's form (spaced JSON)": guest_frame_general,
        "host: a broadcast's frame for one address": host_frame,
        "host: an item's size in a batch": lambda: service._item_size(item),
        "socket helpers per datagram (MSG_TRUNC, names)": lambda: (
            64 & trunc,
            sockets.sender_name(b"\0sgc-1234-abcd"),
            sockets.abstract_address("cgcs.messaging"),
        ),
        "host: decode a batch of 10": lambda: decode_batch(value),
    }


#: Datagrams per socket case: the kernel lets 10 wait per socket (net.unix.max_dgram_qlen).
PER_READ = 8


def _delivered(seq: int) -> bytes:
    data = encode_broadcast_json(TEXT, INSTANCE, seq)
    assert data is not None
    cut = delivery_of_frame(host_frame_with("cgcs.server_grp", "cgcs.server_grp", data)[:-1])
    assert cut is not None
    return cut[1]


class Stateful:
    """A case whose calls change state (seqs go up, sockets fill): `prepare` (untimed) makes
    the input of one call, `call` is timed; its result is per item (`per` items a call)."""

    def __init__(self, prepare: Callable[[], object], call: Callable[[object], object], per: int):
        self.prepare, self.call, self.per = prepare, call, per

    def best(self, number: int, repeat: int) -> float:
        best = float("inf")
        for _ in range(repeat):
            total = 0.0
            for _ in range(number):
                arg = self.prepare()
                start = time.perf_counter()
                self.call(arg)
                total += time.perf_counter() - start
            best = min(best, total / number / self.per)
        return best


def receipt_cases() -> dict[str, Stateful]:
    """The per-receipt path: the client's decoding and reads, the agent's delivery."""
    seqs = itertools.count(1000)
    core = ClientCore()

    def decode(raw: object) -> object:
        assert isinstance(raw, bytes)
        return core.receive(sockets.Datagram(data=raw, sender="cgcs.messaging", truncated=False))

    # A client at a name of its own, its agent a socket bound here that sends to it.
    tag = f"{os.getpid() % 100000:05d}"
    agent_sock = sockets.AbstractSocket(f"mb-agent-{tag}", send_buffer=1 << 20)
    client = ServerGroupClient(agent=f"mb-agent-{tag}", address=f"mb-app-{tag}")

    def fill_client() -> object:
        for _ in range(PER_READ):
            agent_sock.send_to(client.address, _delivered(next(seqs)))
        return None

    def client_receive(_: object) -> object:
        events = client.receive()
        assert len(events) == PER_READ
        return events

    # A guest agent delivering a channel read of PER_READ frames to an app bound here.
    app_sock = sockets.AbstractSocket(f"mb-app2-{tag}")
    agent = GuestAgent(GuestConfig(channel_listen=Path("/nonexistent/mb.sock")))
    agent._sock = sockets.AbstractSocket(f"mb-agent2-{tag}", send_buffer=1 << 20)

    def channel_read() -> object:
        while app_sock.receive_nowait() is not None:
            pass
        frames = []
        for _ in range(PER_READ):
            data = encode_broadcast_json(TEXT, INSTANCE, next(seqs))
            assert data is not None
            frames.append(host_frame_with(app_sock.name, "cgcs.server_grp", data))
        return b"".join(frames)

    def deliver(chunk: object) -> object:
        assert isinstance(chunk, bytes)
        agent.channel_data(chunk)
        return None

    # The sending host's relay: one read of 30 guest frames, decoded, stamped and routed.
    relay = ChannelRelay(Path("/nonexistent"), address=f"mb-relay-{tag}")
    routed: list[object] = []
    relay.route("cgcs.server_grp", lambda instance, envelope: routed.append(envelope))
    guest_frames = b"".join(
        encode_guest_frame(
            Envelope(
                dest_addr="cgcs.server_grp",
                source_addr="sgc-1234-abcd",
                data=encode_group_message(Broadcast(text=TEXT, id=ident)),
            )
        )
        for ident in range(1, 31)
    )

    def decoder() -> ChannelDecoder:
        try:
            return ChannelDecoder(source_instance=INSTANCE)  # type: ignore[call-arg,unused-ignore]
        except TypeError:  # an older tree: the relay stamped each envelope after decoding
            return ChannelDecoder()

    def relay_read(_: object) -> object:
        routed.clear()
        relay._from_guest(INSTANCE, decoder().feed(guest_frames))
        assert len(routed) == 30
        return None

    return {
        "relay: a read of 30 guest frames, decoded and routed (per frame)": Stateful(
            lambda: None, relay_read, 30
        ),
        "client: decode one delivered broadcast (per receipt)": Stateful(
            lambda: _delivered(next(seqs)), decode, 1
        ),
        f"client: receive() of {PER_READ} waiting, socket reads (per receipt)": Stateful(
            fill_client, client_receive, PER_READ
        ),
        f"agent: a channel read of {PER_READ} frames to an app (per receipt)": Stateful(
            channel_read, deliver, PER_READ
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--number", type=int, default=500, help="calls per timed run")
    parser.add_argument("--repeat", type=int, default=200, help="timed runs; the best counts")
    args = parser.parse_args()
    for name, fn in cases().items():
        best = min(timeit.repeat(fn, number=args.number, repeat=args.repeat)) / args.number
        print(f"{name:68s} {best * 1e6:7.2f} µs")
    # Fewer runs: each call's input is made anew, untimed.
    for name, case in receipt_cases().items():
        best = case.best(max(1, args.number // 5), max(1, args.repeat // 4))
        print(f"{name:68s} {best * 1e6:7.2f} µs")


if __name__ == "__main__":
    main()
