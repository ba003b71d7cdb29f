"""Flow control of the client library against a real guest agent in a namespace.

The host end of the guest's channel is a small stub (`HostStub`, a thread)
that reads what the guest sends, as slowly as asked, and answers each
broadcast with an id as a host does: a cumulative `broadcast_ack` after each
read, a `nack` with the id first for the ones it refuses. It checks what
the client promises: ids 1, 2, 3, ... in order, never more than `window`
broadcasts beyond the last one answered. (The group service that sends real
acks is tested end to end elsewhere.)
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from servergroup.groups.client import (
    AgentBusy,
    AgentUnavailable,
    AsyncServerGroupClient,
    BroadcastReceived,
    BroadcastStats,
    BroadcastUnconfirmed,
    ClientEvent,
    NackError,
    NackReceived,
    ServerGroupClient,
)
from servergroup.groups.protocol import (
    Broadcast,
    BroadcastAck,
    GroupMessage,
    Nack,
    decode_group_message,
    encode_group_message,
)
from servergroup.guestcomm.protocol import SERVER_GROUP_ADDR, ChannelDecoder, Envelope
from tests.fixtures.daemons import DaemonFactory
from tests.fixtures.netns import NetnsFactory
from tests.integration.groups.conftest import CLI, WAIT, Guest, GuestFactory, HostEnd

BURST = 10_000


class HostStub:
    """The host's end of one guest channel, played by a thread (see the module docstring)."""

    #: How long the stub waits, idle, before repeating its last ack: the agent drops
    #: a datagram for an app whose queue is full, and a cumulative ack is harmless twice.
    REPEAT_INTERVAL = 0.2

    def __init__(
        self,
        host: HostEnd,
        *,
        window: int,
        read_size: int = 65536,
        read_pause: float = 0.0,
        nack_every: int = 0,
        reading: bool = True,
    ) -> None:
        self._host = host
        self._window = window
        self._read_size = read_size
        self._read_pause = read_pause
        self._nack_every = nack_every
        self._decoder = ChannelDecoder()
        self._lock = threading.Lock()
        self._reading = threading.Event()
        if reading:
            self._reading.set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="host-stub", daemon=True)
        self.ids: list[int] = []
        self.texts: list[str] = []
        self.refused: list[int] = []
        self.others: list[GroupMessage] = []
        self.violations: list[str] = []
        self.answered = 0  # the last id acked or nacked
        self._acked: tuple[int, int] | None = None  # the last (id, seq) acked
        self._seq = 0
        self._reply_to = SERVER_GROUP_ADDR

    def __enter__(self) -> HostStub:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._reading.set()
        self._thread.join(WAIT)

    def pause_reading(self) -> None:
        self._reading.clear()

    def resume_reading(self) -> None:
        self._reading.set()

    def send(self, msg: GroupMessage, dest: str = SERVER_GROUP_ADDR) -> None:
        env = Envelope(
            data=encode_group_message(msg), dest_addr=dest, source_addr=SERVER_GROUP_ADDR
        )
        with self._lock:
            self._host.send(env)

    def deliver(self, seq: int, text: str = "from b") -> None:
        """Deliver another member's broadcast numbered `seq`; the group numbers on from it."""
        self._seq = seq
        self.send(Broadcast(text=text, source_instance="instance-0000000b", seq=seq))

    def _run(self) -> None:
        sock = self._host.sock
        idle_since = time.monotonic()
        repeats = 0
        while not self._stop.is_set():
            if not self._reading.wait(0.05):
                continue
            ready, _, _ = select.select([sock], [], [], 0.05)
            if not ready:
                if (
                    self._acked is not None
                    and repeats < 3
                    and time.monotonic() - idle_since > self.REPEAT_INTERVAL
                ):
                    self.send(BroadcastAck(id=self._acked[0], seq=self._acked[1]), self._reply_to)
                    repeats += 1
                    idle_since = time.monotonic()
                continue
            data = sock.recv(self._read_size)
            if not data:
                return
            idle_since, repeats = time.monotonic(), 0
            self._answer(data)
            if self._read_pause:
                time.sleep(self._read_pause)  # a slow host

    def _answer(self, data: bytes) -> None:
        acked = self._acked
        for item in self._decoder.feed(data):
            if not isinstance(item, Envelope):
                self.violations.append(f"garbage on the channel: {item}")
                continue
            msg = decode_group_message(item.data)
            if not isinstance(msg, Broadcast) or msg.id is None:
                self.others.append(msg)
                continue
            ident = msg.id
            if ident != len(self.ids) + 1:
                self.violations.append(f"broadcast {ident} after {len(self.ids)}")
            if ident > self.answered + self._window:
                self.violations.append(
                    f"broadcast {ident} sent with only {self.answered} answered "
                    f"(window {self._window})"
                )
            self.ids.append(ident)
            self.texts.append(msg.text)
            self._reply_to = item.source_addr or SERVER_GROUP_ADDR
            if self._nack_every and ident % self._nack_every == 0:
                self.refused.append(ident)
                # A nack for an id always goes before an ack that passes it.
                self.send(Nack(orig_msg_type="broadcast", log_msg="busy", id=ident), self._reply_to)
            else:
                self._seq += 1
                acked = (ident, self._seq)
            self.answered = ident
        if acked is not None and acked != self._acked:
            self._acked = acked
            self.send(BroadcastAck(id=acked[0], seq=acked[1]), self._reply_to)


def connected(guest: Guest) -> HostEnd:
    host = HostEnd(guest.channel)
    assert guest.agent is not None
    guest.agent.wait_for_log("host connected", WAIT)
    return host


def flush(client: ServerGroupClient) -> None:
    assert client.flush(WAIT), f"not every broadcast was answered: {client.stats}"


def all_acked(count: int) -> BroadcastStats:
    return BroadcastStats(
        sent=count, acknowledged=count, refused=0, unconfirmed=0, missed=0, pending=0
    )


@contextlib.contextmanager
def sync_client(g: Guest, **options: object) -> Iterator[ServerGroupClient]:
    client = g.call(lambda: ServerGroupClient(**options))  # type: ignore[arg-type]
    with client:
        yield client


# -- the kernel ------------------------------------------------------------------------


def test_the_kernel_reports_room_only_on_a_connected_socket(netns: NetnsFactory) -> None:
    """What the client relies on (Linux `unix_dgram_poll`): POLLOUT on a connected
    datagram socket means the peer's queue has room; unconnected, it is always set."""
    ns = netns()
    receiver = netns.socket_in(ns, socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(b"\0flow-rx")
    senders = [netns.socket_in(ns, socket.AF_UNIX, socket.SOCK_DGRAM) for _ in range(2)]
    try:
        for sender, connect in zip(senders, (False, True), strict=True):
            sender.setblocking(False)
            if connect:
                sender.connect(b"\0flow-rx")
            sent = 0
            with pytest.raises(BlockingIOError):  # noqa: PT012
                while True:
                    if connect:
                        sender.send(b"x" * 100)
                    else:
                        sender.sendto(b"x" * 100, b"\0flow-rx")
                    sent += 1
                    assert sent < 100_000
            poller = select.poll()
            poller.register(sender, select.POLLOUT)
            writable = bool(poller.poll(0))
            assert writable is not connect  # full: only the connected one says so
            with contextlib.suppress(BlockingIOError):
                while receiver.recv(200, socket.MSG_DONTWAIT):
                    pass
            assert poller.poll(0)  # room again: both writable
        # The peer gone: POLLOUT, then ECONNREFUSED, and the socket is disconnected.
        receiver.close()
        poller = select.poll()
        poller.register(senders[1], select.POLLOUT)
        assert poller.poll(0)
        with pytest.raises(ConnectionRefusedError):
            senders[1].send(b"x")
        with pytest.raises(OSError, match="not connected") as info:
            senders[1].send(b"x")
        assert info.value.errno == errno.ENOTCONN
    finally:
        receiver.close()
        for sender in senders:
            sender.close()


# -- the synchronous client ------------------------------------------------------------


def test_a_blocking_burst_to_a_slow_host_is_slowed_and_all_acknowledged(
    guest: GuestFactory,
) -> None:
    g = guest()
    host = connected(g)
    window = 500  # the host is slower than the agent: the window binds
    with (
        sync_client(g, window=window) as client,
        HostStub(host, window=window, read_size=2048, read_pause=0.003) as stub,
    ):
        ids = [client.broadcast(f"burst {i}") for i in range(BURST)]
        flush(client)
        assert ids == list(range(1, BURST + 1))
        assert client.stats == all_acked(BURST)
        assert client.receive() == []  # acks are not events
    assert stub.violations == []
    assert stub.ids == ids
    assert stub.texts == [f"burst {i}" for i in range(BURST)]


def test_refused_broadcasts_are_counted_and_told_with_their_id(guest: GuestFactory) -> None:
    g = guest()
    host = connected(g)
    count = 2000
    nacks: list[tuple[str, str, int | None]] = []
    with (
        sync_client(g, window=300, nack_cb=lambda o, r, i: nacks.append((o, r, i))) as client,
        HostStub(host, window=300, nack_every=100) as stub,
    ):
        for i in range(count):
            client.broadcast(f"b{i}")
        flush(client)
        client.process()  # the nacks were kept while the broadcasts waited
        assert client.stats == BroadcastStats(
            sent=count, acknowledged=count - 20, refused=20, unconfirmed=0, missed=0, pending=0
        )
    assert nacks == [("broadcast", "busy", i) for i in range(100, count + 1, 100)]
    assert stub.violations == []


#: Busy this many times in a row, a short pause apart, is busy for good: the agent
#: catching up with its queue makes only short spells of busy.
BUSY_FOR_GOOD = 50
_BUSY_PAUSE = 0.005


def send_until_busy(client: ServerGroupClient, window: int) -> int:
    """Broadcast without blocking until `AgentBusy` persists; how many were sent."""
    sent = busy = 0
    while busy < BUSY_FOR_GOOD:
        assert sent <= 10 * window, "never busy"
        try:
            client.broadcast(f"b{sent}", block=False)
        except AgentBusy:
            busy += 1
            time.sleep(_BUSY_PAUSE)
        else:
            sent, busy = sent + 1, 0
    return sent


async def async_send_until_busy(client: AsyncServerGroupClient, window: int) -> int:
    """The same with the asyncio client."""
    sent = busy = 0
    while busy < BUSY_FOR_GOOD:
        assert sent <= 10 * window, "never busy"
        try:
            await client.broadcast(f"b{sent}", block=False)
        except AgentBusy:
            busy += 1
            await asyncio.sleep(_BUSY_PAUSE)
        else:
            sent, busy = sent + 1, 0
    return sent


def test_non_blocking_raises_agent_busy_when_the_host_stops_reading(
    guest: GuestFactory,
) -> None:
    g = guest()
    host = connected(g)
    window = 1000
    with (
        sync_client(g, window=window) as client,
        HostStub(host, window=window, reading=False) as stub,
    ):
        sent = send_until_busy(client, window)
        assert 0 < sent <= window
        assert client.stats.sent == client.stats.pending == sent
        stub.resume_reading()
        flush(client)
        assert client.broadcast("after", block=False) == sent + 1
        flush(client)
        assert client.stats == all_acked(sent + 1)
    assert stub.violations == []
    assert stub.ids == list(range(1, sent + 2))


def _wchan(native_id: int) -> str:
    return Path(f"/proc/self/task/{native_id}/wchan").read_text()


def test_a_frozen_agent_fills_its_queue_and_a_blocking_send_waits_in_poll(
    guest: GuestFactory,
) -> None:
    """The agent's own queue (not the window): non-blocking raises at once, blocking
    sleeps in poll() for POLLOUT (no timer loop) and goes on when the agent does."""
    g = guest()
    host = connected(g)
    assert g.agent is not None
    with sync_client(g) as client, HostStub(host, window=4096) as stub:
        client.broadcast("warm-up")
        flush(client)
        g.agent.freeze()
        try:
            busy = 0
            with pytest.raises(AgentBusy, match=r"guest agent at cgcs\.messaging has no room"):  # noqa: PT012
                while True:
                    client.broadcast(f"queued {busy}", block=False)
                    busy += 1
                    assert busy < 1000, "the frozen agent's queue never filled"
            result: list[int | BaseException] = []

            def blocked() -> None:
                try:
                    result.append(client.broadcast("waits"))
                except BaseException as exc:
                    result.append(exc)

            thread = threading.Thread(target=blocked)
            thread.start()
            waits: list[str] = []
            for _ in range(50):
                assert thread.native_id is not None
                waits.append(_wchan(thread.native_id))
                if "poll" in waits[-1]:
                    break
                time.sleep(0.01)
            assert "poll" in waits[-1], f"the blocked send is not in poll(): {waits}"
            assert not any("sleep" in w for w in waits), waits
            assert result == []
        finally:
            g.agent.thaw()
        thread.join(WAIT)
        assert result == [busy + 2]
        flush(client)
        assert client.stats == all_acked(busy + 2)
    assert stub.texts == ["warm-up", *(f"queued {i}" for i in range(busy)), "waits"]


def pump_until(
    client: ServerGroupClient, events: list[ClientEvent], count: int, *, process: bool = False
) -> None:
    """Wait as an application's loop does (`poll_timeout`) until `count` events came
    (with `process`, call `process()` instead, and count nothing)."""
    deadline = time.monotonic() + WAIT
    while len(events) < count:
        left = deadline - time.monotonic()
        assert left > 0, f"only {events} arrived"
        timeout = client.poll_timeout()
        select.select([client.fileno()], [], [], min(left, left if timeout is None else timeout))
        if process:
            client.process()
        else:
            events.extend(client.receive())


def test_unconfirmed_broadcasts_are_told_and_counted(guest: GuestFactory) -> None:
    g = guest()
    host = connected(g)
    with sync_client(g, ack_timeout=0.5) as client:
        client.broadcast("one")
        client.broadcast("two")
        host.receive()  # read, never answered
        host.receive()
        assert client.flush(WAIT) is False  # both went unconfirmed meanwhile
        events = client.receive()
        assert [(e.orig_msg_type, e.id) for e in events if isinstance(e, NackReceived)] == [
            ("broadcast", 1),
            ("broadcast", 2),
        ]
        assert isinstance(events[0], BroadcastUnconfirmed)
        assert "did not confirm broadcast 1 within 0.5 s" in events[0].reason
        assert client.stats == BroadcastStats(
            sent=2, acknowledged=0, refused=0, unconfirmed=2, missed=0, pending=0
        )
        # Without a nack_cb, process() raises it, in one sentence.
        client.broadcast("three")
        host.receive()
        with pytest.raises(NackError) as info:
            pump_until(client, [], 1, process=True)
        assert info.value.unconfirmed
        assert info.value.id == 3
        assert str(info.value) == (
            "The host did not confirm broadcast 3 within 0.5 s: it may or may not have been "
            "delivered"
        )


def test_missed_counts_gaps_but_not_the_clients_own_broadcasts(guest: GuestFactory) -> None:
    g = guest()
    host = connected(g)
    events: list[ClientEvent] = []
    with sync_client(g) as client, HostStub(host, window=4096) as stub:
        stub.deliver(1)
        pump_until(client, events, 1)
        client.broadcast("mine 1")  # numbered 2 and 3 by the stub
        client.broadcast("mine 2")
        flush(client)
        for seq in (4, 6):  # 5 is lost on its way
            stub.deliver(seq)
        pump_until(client, events, 3)
        assert [e.seq for e in events if isinstance(e, BroadcastReceived)] == [1, 4, 6]
        assert client.stats.missed == 1
        # The group created again numbers from 1: no gap counted.
        for seq in (1, 3):
            stub.deliver(seq)
        pump_until(client, events, 5)
        assert client.stats.missed == 2


def test_agent_gone_then_back(guest: GuestFactory, daemon: DaemonFactory) -> None:
    """ECONNREFUSED on the connected socket: connect again once, else AgentUnavailable.
    A client that only receives finds a restarted agent by itself."""
    g = guest()
    host = connected(g)
    assert g.agent is not None
    with sync_client(g) as client:
        client.broadcast("before")
        host.receive()
        g.agent.stop()
        host.close()
        with pytest.raises(AgentUnavailable, match=r"no guest agent at cgcs\.messaging"):
            client.broadcast("nobody")
        agent = daemon(
            [
                *("ip", "netns", "exec", g.ns, *CLI, "guest"),
                *("--channel-listen", str(g.channel), "--no-scale-agent"),
            ],
            name="guest-again",
            ready=r"guest agent ready",
        )
        host = HostEnd(g.channel)
        agent.wait_for_log("host connected", WAIT)
        # Only receiving: the new agent's datagrams reach the client once it
        # connected again by itself (the first ones are refused by the kernel).
        events: list[ClientEvent] = []
        deadline = time.monotonic() + WAIT
        while not events:
            assert time.monotonic() < deadline, "the client never heard the new agent"
            host.send(
                Envelope(
                    data=encode_group_message(Broadcast(text="hello", seq=1)),
                    dest_addr=SERVER_GROUP_ADDR,
                    source_addr=SERVER_GROUP_ADDR,
                )
            )
            select.select([client.fileno()], [], [], 0.2)
            events.extend(client.receive())
        assert isinstance(events[0], BroadcastReceived)
        assert client.broadcast("after") == 2
        assert decode_group_message(host.receive().data) == Broadcast(text="after", id=2)
        host.close()


# -- the asyncio client ------------------------------------------------------------------


def async_client(g: Guest, **options: object) -> AsyncServerGroupClient:
    client = AsyncServerGroupClient(**options)  # type: ignore[arg-type]
    g.call(client.bind)  # the socket lives in the guest's namespace
    return client


async def test_async_blocking_burst_while_another_task_takes_events(guest: GuestFactory) -> None:
    g = guest()
    host = connected(g)
    client = async_client(g)
    events: list[ClientEvent] = []
    got = asyncio.Event()

    async def take() -> None:
        async for event in client.events():
            events.append(event)
            got.set()

    with HostStub(host, window=4096, read_size=4096, read_pause=0.002) as stub:
        async with client:
            taker = asyncio.create_task(take())
            ids = []
            for i in range(BURST):
                ids.append(await client.broadcast(f"burst {i}"))
                if i == BURST // 2:
                    stub.send(Broadcast(text="meanwhile", source_instance="instance-0000000b"))
            assert await client.flush(WAIT)
            await asyncio.wait_for(got.wait(), WAIT)
            taker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await taker
            assert client.stats == all_acked(BURST)
    assert ids == list(range(1, BURST + 1))
    assert events == [
        BroadcastReceived(text="meanwhile", source_instance="instance-0000000b", seq=None)
    ]
    assert stub.violations == []
    assert stub.texts == [f"burst {i}" for i in range(BURST)]


async def test_async_non_blocking_busy_and_a_frozen_agent_never_blocks_the_loop(
    guest: GuestFactory,
) -> None:
    g = guest()
    host = connected(g)
    assert g.agent is not None
    window = 1000
    client = async_client(g, window=window)
    with HostStub(host, window=window, reading=False) as stub:
        async with client:
            sent = await async_send_until_busy(client, window)
            assert 0 < sent <= window
            assert client.stats.pending == sent
            # Blocking: awaits room; the loop goes on meanwhile.
            waiting = asyncio.create_task(client.broadcast("waits"))
            done, _ = await asyncio.wait([waiting], timeout=0.3)
            assert not done
            stub.resume_reading()
            assert await asyncio.wait_for(waiting, WAIT) == sent + 1
            assert await client.flush(WAIT)
            # The agent's own queue: frozen, it fills; the send awaits writability.
            g.agent.freeze()
            try:
                busy = 0
                with pytest.raises(AgentBusy, match="has no room"):  # noqa: PT012
                    while True:
                        await client.broadcast(f"queued {busy}", block=False)
                        busy += 1
                        assert busy < 1000
                waiting = asyncio.create_task(client.broadcast("waits too"))
                done, _ = await asyncio.wait([waiting], timeout=0.3)
                assert not done
            finally:
                g.agent.thaw()
            assert await asyncio.wait_for(waiting, WAIT) == sent + busy + 2
            assert await client.flush(WAIT)
            assert client.stats == all_acked(sent + busy + 2)
    assert stub.violations == []


async def test_async_send_timeout_bounds_the_wait(guest: GuestFactory) -> None:
    g = guest()
    host = connected(g)
    client = async_client(g, window=2, send_timeout=0.3)
    with HostStub(host, window=2, reading=False):
        async with client:
            await client.broadcast("a")
            await client.broadcast("b")
            with pytest.raises(AgentBusy, match=r"window .* stayed full for 0\.3 s"):
                await client.broadcast("c")
            assert client.stats.sent == 2
