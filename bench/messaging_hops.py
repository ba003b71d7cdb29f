"""Benchmark: the latency of the delivery path's own hops, without etcd and without a lab.

A broadcast at low load goes app -> guest agent -> channel -> host daemon
(relay, group service) -> etcd -> host daemons -> channel -> agents -> apps.
This times the hops of the guest side and the relay, round trip, so that
the low-load tail of bench/messaging.py can be split into what these hops
add and what etcd and the group service add:

    app --datagram--> guest agent --channel--> relay (in this process) --+
    app <--datagram-- guest agent <--channel-- relay: the same frame back  <--+

The app is a process of its own (`--app`: a bound abstract socket, the
client library's datagram), the guest agent is `python -m
servergroup.guestcomm --channel-listen` (the real agent), and the relay is
the real `ChannelRelay` in this process, its route for `cgcs.server_grp`
answering each broadcast at once with the frame the group service writes
(`host_frame_with` of `encode_broadcast_json`) to the sender's address.
Round trip = the app's receive stamp - its send stamp (one clock).

Beside it, the same number of bare wake-ups: a chain of 4 processes passing
a datagram on (the floor of 4 hops on this machine now: scheduling only).
Then the wake-ups a reader of bursts pays per datagram, with and without
`sockets.BurstReader` (which the client library and the agent use): bursts
of 8 datagrams from another process, 5 ms and 0.5 ms apart, and when the
last datagram of each burst was read.

    .venv/bin/python bench/messaging_hops.py [--count 1000] [--rate 100]

Runs in the root network namespace with names of its own (abstract names
are per namespace); prints the table, writes nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import select
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from servergroup.groups.protocol import encode_broadcast_json
from servergroup.guestcomm.protocol import SERVER_GROUP_ADDR, Envelope, host_frame_with
from servergroup.guestcomm.relay import ChannelRelay
from servergroup.guestcomm.sockets import BurstReader

TEXT = "t3 msg0 1234 12345.678901 " + "." * 74
INSTANCE = "instance-0000beef"


def quantiles(samples: list[float]) -> str:
    samples = sorted(samples)

    def q(p: float) -> float:
        return samples[min(len(samples) - 1, int(p * len(samples)))] * 1e3

    return (
        f"p50 {q(0.5):.3f} ms, p90 {q(0.9):.3f} ms, p99 {q(0.99):.3f} ms, "
        f"max {samples[-1] * 1e3:.3f} ms (n={len(samples)})"
    )


def app_main(agent: str, name: str, count: int, rate: float) -> None:
    """The app: `count` broadcasts at `rate`, each waiting for its echo; prints the round trips."""
    from servergroup.groups.protocol import broadcast_request_datagram

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(5.0)
    address = b"\0" + agent.encode()
    trips: list[float] = []
    for ident in range(1, count + 1):
        datagram = broadcast_request_datagram(TEXT, ident)
        assert datagram is not None
        sent_at = time.monotonic()
        sock.sendto(datagram, address)
        sock.recv(4096)
        trips.append(time.monotonic() - sent_at)
        time.sleep(max(0.0, 1.0 / rate - (time.monotonic() - sent_at)))
    print(" ".join(f"{t:.7f}" for t in trips))


def chain(hops: int, count: int, rate: float) -> list[float]:
    """Round trips of a datagram through `hops` forwarding processes (bare wake-ups)."""
    tag = f"mh-chain-{os.getpid()}"
    names = [b"\0" + f"{tag}-{i}".encode() for i in range(hops + 1)]
    socks = []
    for name in names:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.bind(name)
        socks.append(s)
    pids = []
    for i in range(hops):
        pid = os.fork()
        if pid == 0:  # pragma: no cover (a child)
            while True:
                data = socks[i].recv(64)
                if data == b"q":
                    os._exit(0)
                socks[i].sendto(data, names[i + 1])
        pids.append(pid)
    out = socks[hops]
    trips = []
    try:
        for _ in range(count):
            sent_at = time.monotonic()
            out.sendto(b"x", names[0])
            out.recv(64)
            trips.append(time.monotonic() - sent_at)
            time.sleep(max(0.0, 1.0 / rate - (time.monotonic() - sent_at)))
    finally:
        for i in range(hops):
            out.sendto(b"q", names[i])
        for pid in pids:
            os.waitpid(pid, 0)
        for s in socks:
            s.close()
    return trips


def bursts(burst: int, rounds: int, gap: float, *, yielding: bool) -> tuple[float, list[float]]:
    """Wake-ups per datagram of a reader of bursts, and when each burst's last one was read.

    A sender process sends `rounds` bursts of `burst` datagrams (a little work
    between two, as the agent's delivery loop does), `gap` seconds apart; the
    reader polls, then (with `yielding`) calls `BurstReader.woken()` as the
    client library does, and reads what waits.
    """
    tag = f"mh-burst-{os.getpid()}"
    reader_name, sender_name = b"\0" + f"{tag}-r".encode(), b"\0" + f"{tag}-s".encode()
    reader = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    reader.bind(reader_name)
    reader.setblocking(False)
    pid = os.fork()
    if pid == 0:  # pragma: no cover (a child)
        sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sender.bind(sender_name)
        payload = b"." * 260
        for _ in range(rounds):
            started = time.monotonic()
            for index in range(burst):
                sender.sendto(struct.pack("dI", started, index) + payload, reader_name)
                sum(range(300))  # the agent's own work between two sends
            time.sleep(gap)
        os._exit(0)
    poller = select.poll()
    poller.register(reader, select.POLLIN)
    burst_reader = BurstReader()
    wakes = got = 0
    done: list[float] = []
    try:
        while got < burst * rounds:
            if not poller.poll(5000):
                break
            wakes += 1
            if yielding:
                burst_reader.woken()
            while True:
                try:
                    data = reader.recv(4096)
                except BlockingIOError:
                    break
                got += 1
                started, index = struct.unpack("dI", data[:12])
                if index == burst - 1:
                    done.append(time.monotonic() - started)
    finally:
        os.waitpid(pid, 0)
        reader.close()
    return wakes / max(1, got), done


async def relay_round_trips(count: int, rate: float) -> list[float]:
    tag = f"{os.getpid()}"
    agent_addr, app_addr, relay_addr = f"mh-agent-{tag}", f"mh-app-{tag}", f"mh-relay-{tag}"
    with tempfile.TemporaryDirectory(prefix="mh-") as tmp:
        channel_dir = Path(tmp)
        agent = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "servergroup.guestcomm", "--address", agent_addr,
            "--no-scale-agent",
            "--channel-listen", str(channel_dir / f"cgcs.messaging.{INSTANCE}.sock"),
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        relay = ChannelRelay(channel_dir, address=relay_addr, retry_interval=0.05)

        def echo(instance: str, envelope: Envelope) -> None:
            data = encode_broadcast_json(TEXT, instance, 1)
            assert data is not None
            assert envelope.source_addr is not None
            relay.write_frames(
                instance, [host_frame_with(envelope.source_addr, SERVER_GROUP_ADDR, data)]
            )

        relay.route(SERVER_GROUP_ADDR, echo)
        connected = asyncio.Event()
        relay.on_change(lambda instance, up: connected.set() if up else None)
        try:
            await relay.start()
            async with asyncio.timeout(20):
                await connected.wait()
            app = await asyncio.create_subprocess_exec(
                sys.executable, __file__, "--app", agent_addr, app_addr,
                str(count), str(rate), stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, _ = await app.communicate()
            if app.returncode != 0:
                sys.exit(f"the app failed (exit {app.returncode})")
            return [float(word) for word in out.split()]
        finally:
            await relay.stop()
            agent.terminate()
            await agent.wait()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--app":
        agent, name, count, rate = sys.argv[2:6]
        app_main(agent, name, int(count), float(rate))
        return
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--count", type=int, default=1000, help="round trips of each kind")
    parser.add_argument("--rate", type=float, default=100.0, help="round trips per second")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    trips = asyncio.run(relay_round_trips(args.count, args.rate))
    floor = chain(4, args.count, args.rate)
    print(f"1-minute load average {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end")
    print(f"app -> agent -> relay -> agent -> app: {quantiles(trips)}")
    print(f"4 bare wake-ups in a chain:            {quantiles(floor)}")
    for gap in (0.005, 0.0005):
        for yielding in (False, True):
            per, done = bursts(8, args.count // 2, gap, yielding=yielding)
            print(
                f"bursts of 8, {gap * 1e3:g} ms apart, {'with' if yielding else 'without'} "
                f"BurstReader: {per:.2f} wake-ups per datagram; burst read after {quantiles(done)}"
            )


if __name__ == "__main__":
    main()
