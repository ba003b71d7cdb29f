"""One contract for both channels (real TCP on loopback, in memory), and TCP's own failures.

The TCP tests use real sockets and, for a peer that dies inside a frame, a
real process killed with SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator

import pytest

from servergroup.replication.channel import (
    Channel,
    ChannelClosed,
    MemoryChannel,
    TcpChannel,
    connect,
    serve,
)
from servergroup.replication.protocol import (
    Ack,
    EpochBegin,
    Heartbeat,
    Message,
    Pages,
    ReplicationProtocolError,
    encode_message,
    epoch_messages,
)

pytestmark = pytest.mark.timeout(60)
WAIT = 20.0


async def tcp_pair() -> tuple[TcpChannel, TcpChannel, asyncio.Server]:
    accepted: asyncio.Queue[TcpChannel] = asyncio.Queue()
    done = asyncio.Event()

    async def on_channel(channel: TcpChannel) -> None:
        await accepted.put(channel)
        await done.wait()

    server = await serve("127.0.0.1", 0, on_channel)
    port = server.sockets[0].getsockname()[1]
    client = await connect("127.0.0.1", port, timeout=WAIT)
    served = await asyncio.wait_for(accepted.get(), WAIT)
    server.done = done  # type: ignore[attr-defined]
    return client, served, server


@pytest.fixture(params=["tcp", "memory"])
async def ends(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Channel, Channel]]:
    if request.param == "memory":
        left, right = MemoryChannel.pair()
        yield left, right
        await left.close()
        await right.close()
        return
    client, served, server = await tcp_pair()
    yield client, served
    await client.close()
    await served.close()
    server.done.set()  # type: ignore[attr-defined]
    server.close()
    await server.wait_closed()


def an_epoch(epoch: int, mib: int = 3) -> list[Message]:
    data = bytes(range(256)) * 4096  # 1 MiB
    pages = [Pages(region=0, runs=((i * 256, 256),), data=data) for i in range(mib)]
    return epoch_messages(EpochBegin(generation=1, epoch=epoch, full=True), pages)


async def receive_n(channel: Channel, count: int) -> list[Message]:
    async with asyncio.timeout(WAIT):
        return [await channel.receive() for _ in range(count)]


async def test_messages_arrive_in_order_both_ways(ends: tuple[Channel, Channel]) -> None:
    a, b = ends
    epoch = an_epoch(1)
    sending = asyncio.create_task(a.send(epoch))
    assert await receive_n(b, len(epoch)) == epoch
    await sending
    await b.send([Ack(generation=1, epoch=1)])
    assert await receive_n(a, 1) == [Ack(generation=1, epoch=1)]


async def test_concurrent_sends_keep_each_batch_together(ends: tuple[Channel, Channel]) -> None:
    a, b = ends
    epochs = [an_epoch(n, mib=1) for n in range(1, 6)]
    beats: list[list[Message]] = [[Heartbeat(generation=1, epoch=n)] for n in range(20)]
    batches: list[list[Message]] = [*epochs, *beats]
    senders = [asyncio.create_task(a.send(batch)) for batch in batches]
    got = await receive_n(b, sum(len(e) for e in epochs) + len(beats))
    await asyncio.gather(*senders)
    # Every epoch's frames are contiguous: a heartbeat never lands inside one.
    at = 0
    seen = []
    while at < len(got):
        message = got[at]
        if isinstance(message, EpochBegin):
            length = len(epochs[message.epoch - 1])
            assert got[at : at + length] == epochs[message.epoch - 1]
            seen.append(message.epoch)
            at += length
        else:
            assert isinstance(message, Heartbeat)
            at += 1
    assert sorted(seen) == [1, 2, 3, 4, 5]


async def test_a_closed_end_is_seen_by_the_other(ends: tuple[Channel, Channel]) -> None:
    a, b = ends
    await a.send([Heartbeat(generation=1, epoch=0)])
    await a.close()
    await a.close()  # idempotent
    assert await receive_n(b, 1) == [Heartbeat(generation=1, epoch=0)]
    with pytest.raises(ChannelClosed) as closed:
        await receive_n(b, 1)
    assert not closed.value.cut
    with pytest.raises(ChannelClosed):
        await a.send([Heartbeat(generation=1, epoch=1)])
    with pytest.raises(ChannelClosed):
        await send_until_refused(b)


async def test_nothing_more_is_delivered_once_closed_here(ends: tuple[Channel, Channel]) -> None:
    """A reader whose channel another task closed gets no message it had read but not taken."""
    a, b = ends
    beats: list[Message] = [Heartbeat(generation=1, epoch=n) for n in range(50)]
    await a.send(beats)
    assert await receive_n(b, 1) == beats[:1]
    # Give the rest time to arrive, then let one more be read and close the channel
    # while the reader holds what it read.
    await asyncio.sleep(0.05)
    assert await receive_n(b, 1) == beats[1:2]
    await b.close()
    with pytest.raises(ChannelClosed, match="closed here"):
        await receive_n(b, 1)


async def test_a_reader_waiting_when_its_channel_is_closed_gets_nothing(
    ends: tuple[Channel, Channel],
) -> None:
    """Closed while waiting to read: what arrives next is not delivered."""
    a, b = ends
    reading = asyncio.create_task(b.receive())
    await asyncio.sleep(0.05)
    await a.send([Heartbeat(generation=1, epoch=0)])
    await b.close()
    with pytest.raises(ChannelClosed, match="closed here"):
        await asyncio.wait_for(reading, WAIT)


async def send_until_refused(channel: Channel) -> None:
    """Send until the channel refuses (a TCP send may be buffered before the reset shows)."""
    async with asyncio.timeout(WAIT):
        while True:
            await channel.send([Heartbeat(generation=1, epoch=2)])
            await asyncio.sleep(0.01)


async def test_garbage_is_a_protocol_error_then_the_channel_is_closed() -> None:
    left, right = MemoryChannel.pair()
    right.inject(b"GARBAGE" * 10)
    with pytest.raises(ReplicationProtocolError):
        await receive_n(right, 1)
    with pytest.raises(ChannelClosed):
        await receive_n(right, 1)
    with pytest.raises(ChannelClosed):
        await receive_n(left, 1)  # the other end learns it too


async def raw_client(port: int, payload: bytes) -> None:
    """Send `payload` from a plain socket and close it."""
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    await writer.drain()
    writer.close()
    await writer.wait_closed()


async def served_channel() -> tuple[asyncio.Queue[TcpChannel], asyncio.Server, asyncio.Event]:
    accepted: asyncio.Queue[TcpChannel] = asyncio.Queue()
    done = asyncio.Event()

    async def on_channel(channel: TcpChannel) -> None:
        await accepted.put(channel)
        await done.wait()

    return accepted, await serve("127.0.0.1", 0, on_channel), done


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (b"\x00" * 100, ReplicationProtocolError),  # not our magic
        (encode_message(Heartbeat(generation=1, epoch=2))[:-3], ChannelClosed),  # truncated
        (
            bytes([b ^ (0x40 if i == 30 else 0) for i, b in enumerate(encode_message(Ack(
                generation=1, epoch=1)))]),
            ReplicationProtocolError,
        ),  # a flipped bit in the body
    ],
)  # fmt: skip
async def test_a_tcp_peer_sending_bad_bytes_is_refused(
    payload: bytes, error: type[Exception]
) -> None:
    accepted, server, done = await served_channel()
    try:
        port = server.sockets[0].getsockname()[1]
        await raw_client(port, payload)
        channel = await asyncio.wait_for(accepted.get(), WAIT)
        with pytest.raises(error) as raised:
            await receive_n(channel, 1)
        if isinstance(raised.value, ChannelClosed):
            assert raised.value.cut
        with pytest.raises(ChannelClosed):
            await receive_n(channel, 1)
    finally:
        done.set()
        server.close()
        await server.wait_closed()


async def test_a_peer_killed_inside_a_frame_leaves_a_cut_stream() -> None:
    accepted, server, done = await served_channel()
    port = server.sockets[0].getsockname()[1]
    frame = b"".join(encode_message(m) for m in an_epoch(1, mib=1))
    script = textwrap.dedent(
        f"""
        import socket, sys, time
        s = socket.create_connection(("127.0.0.1", {port}))
        s.sendall(sys.stdin.buffer.read())
        print("sent", flush=True)
        time.sleep(60)
        """
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert proc.stdin is not None
        assert proc.stdout is not None
        proc.stdin.write(frame[: len(frame) // 2])
        proc.stdin.close()
        channel = await asyncio.wait_for(accepted.get(), WAIT)
        line = await asyncio.wait_for(proc.stdout.readline(), WAIT)
        assert line == b"sent\n"
        first = await receive_n(channel, 1)
        assert isinstance(first[0], EpochBegin)
        os.kill(proc.pid, signal.SIGKILL)
        with pytest.raises(ChannelClosed) as closed:
            await receive_n(channel, 1)
        assert closed.value.cut
    finally:
        # Killed above, it may already be reaped while `returncode` is not yet set.
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await asyncio.wait_for(proc.wait(), WAIT)
        done.set()
        server.close()
        await server.wait_closed()


async def test_a_peer_that_does_not_read_pushes_back_on_the_sender() -> None:
    client, served, server = await tcp_pair()
    try:
        big = an_epoch(1, mib=64)
        sending = asyncio.create_task(client.send(big))
        # 64 MiB cannot all sit in the socket buffers: the send waits for the reader.
        for _ in range(50):
            await asyncio.sleep(0)
        assert not sending.done()
        assert len(await receive_n(served, len(big))) == len(big)
        await asyncio.wait_for(sending, WAIT)
    finally:
        await client.close()
        await served.close()
        server.done.set()  # type: ignore[attr-defined]
        server.close()
        await server.wait_closed()


async def test_connect_to_nothing_is_one_clear_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ChannelClosed, match=f"cannot connect to 127.0.0.1:{port}"):
        await connect("127.0.0.1", port, timeout=WAIT)
