"""`ChannelRelay` in-process against real sockets: stand-in guests listening in a temp
channel directory, host applications on unique abstract names (never cgcs.messaging)."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import secrets
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from servergroup.common.errors import UsageError
from servergroup.guestcomm.protocol import (
    ChannelDecoder,
    Dropped,
    Envelope,
    JsonObject,
    encode_guest_frame,
    encode_host_frame,
)
from servergroup.guestcomm.relay import ChannelRelay, instance_of
from tests.fixtures import wait

WAIT = 10.0
RETRY = 0.1
#: Polls of the relay's state in this process: every 0.01 s, as one test waits 200 times in a
#: row (0.05 s makes that test 10 s instead of 2 s).
eventually = functools.partial(wait.eventually, timeout=WAIT, interval=0.01)


def channel_name(instance: str) -> str:
    return f"cgcs.messaging.{instance}.sock"


class FakeGuest:
    """A guest's channel socket: a real UNIX stream listener, as the guest agent makes."""

    def __init__(self, path: Path, *, read: bool = True) -> None:
        self.path = path
        self.read = read
        self.received: list[Envelope] = []
        self.raw = b""
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.AbstractServer | None = None
        #: Connections the relay has closed (EOF seen).
        self.ended = 0
        self._reading = asyncio.Event()
        if read:
            self._reading.set()

    async def listen(self) -> FakeGuest:
        self.server = await asyncio.start_unix_server(self._serve, str(self.path))
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        decoder = ChannelDecoder()
        await self._reading.wait()
        while chunk := await reader.read(65536):
            self.raw += chunk
            for item in decoder.feed(chunk):
                assert not isinstance(item, Dropped), item
                self.received.append(item)
        self.ended += 1

    def thaw(self) -> None:
        """Start reading (a guest made with `read=False`)."""
        self._reading.set()

    @property
    def writer(self) -> asyncio.StreamWriter:
        assert self.writers, "the relay never connected"
        return self.writers[-1]

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        for writer in self.writers:
            writer.close()
        self.writers.clear()
        self.path.unlink(missing_ok=True)


class HostApp:
    """A host-side application on a unique abstract name (root network namespace)."""

    def __init__(self, name: str | None = None) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.name = name
        if name is not None:
            self.sock.bind(b"\0" + name.encode())

    def send(self, relay: ChannelRelay, data: bytes) -> None:
        self.sock.sendto(data, b"\0" + relay.address.encode())

    async def receive(self) -> bytes:
        loop = asyncio.get_running_loop()
        data = await asyncio.wait_for(loop.sock_recv(self.sock, 65536), WAIT)
        return bytes(data)

    def close(self) -> None:
        self.sock.close()


def unique(prefix: str = "t") -> str:
    return f"{prefix}.{secrets.token_hex(4)}"


@pytest.fixture
async def channel_dir(short_dir: Path) -> Path:
    path = short_dir / "channels"
    path.mkdir()
    return path


@pytest.fixture
async def relay(channel_dir: Path) -> AsyncIterator[ChannelRelay]:
    relay = ChannelRelay(channel_dir, address=unique(), retry_interval=RETRY)
    await relay.start()
    yield relay
    await relay.stop()


@pytest.fixture
async def guests(short_dir: Path) -> AsyncIterator[Callable[..., Awaitable[FakeGuest]]]:
    made: list[FakeGuest] = []

    async def make(path: Path, *, read: bool = True) -> FakeGuest:
        guest = await FakeGuest(path, read=read).listen()
        made.append(guest)
        return guest

    yield make
    for guest in made:
        await guest.close()


def test_channel_file_names() -> None:
    assert instance_of("cgcs.messaging.instance-0000000a.sock") == "instance-0000000a"
    assert instance_of("cgcs.messaging..sock") is None
    assert instance_of("cgcs.messaging.x.sock.tmp") is None
    assert instance_of("other.instance-1.sock") is None


async def test_finds_guests_present_at_start_created_later_and_through_a_symlink(
    channel_dir: Path, short_dir: Path, guests: Callable[..., Awaitable[FakeGuest]]
) -> None:
    await guests(channel_dir / channel_name("instance-00000001"))
    relay = ChannelRelay(channel_dir, address=unique(), retry_interval=RETRY)
    changes: list[tuple[str, bool]] = []
    relay.on_change(lambda i, c: changes.append((i, c)))
    async with relay:
        await eventually(lambda: relay.connected() == {"instance-00000001"}, "the first guest")
        await guests(channel_dir / channel_name("instance-00000002"))
        # The lab's way: the socket lives elsewhere, the channel dir holds a symlink.
        target = short_dir / "server3.sock"
        await guests(target)
        (channel_dir / channel_name("instance-00000003")).symlink_to(target)
        await eventually(lambda: len(relay.connected()) == 3, "three guests")
        (channel_dir / "unrelated.sock").touch()
        (channel_dir / channel_name("instance-00000003")).unlink()
        await eventually(lambda: len(relay.connected()) == 2, "the symlink's guest to go")
    assert ("instance-00000003", False) in changes
    assert changes.count(("instance-00000001", True)) == 1
    assert sorted(c for c in changes if c[1]) == [
        ("instance-00000001", True),
        ("instance-00000002", True),
        ("instance-00000003", True),
    ]


async def test_moved_out_and_moved_in(
    relay: ChannelRelay,
    channel_dir: Path,
    short_dir: Path,
    guests: Callable[..., Awaitable[FakeGuest]],
) -> None:
    """Live migration moves the channel symlink from one host's directory to another's."""
    target = short_dir / "migrating.sock"
    guest = await guests(target)
    elsewhere = short_dir / "other-host"
    elsewhere.mkdir()
    link = elsewhere / channel_name("instance-0000000m")
    link.symlink_to(target)
    os.rename(link, channel_dir / link.name)
    await eventually(lambda: relay.connected() == {"instance-0000000m"}, "the moved-in guest")
    await eventually(lambda: len(guest.writers) == 1, "the guest to see the connection")
    os.rename(channel_dir / link.name, link)
    await eventually(lambda: relay.connected() == frozenset(), "the moved-out guest to go")
    await eventually(lambda: guest.ended == 1, "the relay to close its connection")


async def test_retries_until_the_guest_listens(
    relay: ChannelRelay,
    channel_dir: Path,
    short_dir: Path,
    guests: Callable[..., Awaitable[FakeGuest]],
) -> None:
    target = short_dir / "late.sock"
    (channel_dir / channel_name("instance-0000000l")).symlink_to(target)  # dangling: ENOENT
    await asyncio.sleep(3 * RETRY)
    assert relay.connected() == frozenset()
    # A socket file that nobody listens on: ECONNREFUSED.
    refused = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    refused.bind(str(target))
    await asyncio.sleep(3 * RETRY)
    assert relay.connected() == frozenset()
    refused.close()
    target.unlink()
    await guests(target)
    await eventually(lambda: relay.connected() == {"instance-0000000l"}, "the late guest")


async def test_reconnects_after_the_guest_closes_while_the_file_exists(
    relay: ChannelRelay, channel_dir: Path, guests: Callable[..., Awaitable[FakeGuest]]
) -> None:
    guest = await guests(channel_dir / channel_name("instance-0000000r"))
    await eventually(lambda: len(guest.writers) == 1, "the first connection")
    guest.writers[0].close()
    await eventually(lambda: len(guest.writers) == 2, "a new connection")
    await eventually(lambda: relay.connected() == {"instance-0000000r"}, "connected again")
    assert await relay.send_to_guest("instance-0000000r", Envelope(dest_addr="a", data={"n": 1}))
    await eventually(lambda: len(guest.received) == 1, "the message")


async def test_guest_to_route_and_to_host_app_byte_for_byte(
    relay: ChannelRelay, channel_dir: Path, guests: Callable[..., Awaitable[FakeGuest]]
) -> None:
    guest = await guests(channel_dir / channel_name("instance-0000000a"))
    await eventually(lambda: bool(relay.connected()), "the guest")
    routed: list[tuple[str, Envelope]] = []
    relay.route("cgcs.server_grp", lambda i, e: routed.append((i, e)))
    done = asyncio.Event()

    async def slow(instance: str, env: Envelope) -> None:
        await asyncio.sleep(0)
        routed.append((instance, env))
        done.set()

    relay.route("async.route", slow)
    with pytest.raises(UsageError):
        relay.route("async.route", slow)
    app = HostApp(unique("a"))
    assert app.name is not None
    await guest.send(
        b'\n{"version":2,"dest_addr":"cgcs.server_grp","source_addr":"cgcs.server_grp",'
        b'"source_instance":"instance-ffffffff","data":{"version":2,"msg_type":"status_query","seq":3}}\n'
    )
    await guest.send(
        encode_guest_frame(Envelope(dest_addr="async.route", source_addr="s", data={}))
    )
    await guest.send(
        b'\n{"version":2,"dest_addr":"' + app.name.encode() + b'","source_addr":"cgcs.scale",'
        b'"data":{"version":2,"resource":"cpu","direction":"down","result":"success"}}\n'
    )
    assert await app.receive() == (
        b'{"version":2,"source_addr":"cgcs.scale","source_instance":"instance-0000000a",'
        b'"data":{"version":2,"resource":"cpu","direction":"down","result":"success"}}'
    )
    await asyncio.wait_for(done.wait(), WAIT)
    assert routed == [
        (
            "instance-0000000a",
            Envelope(
                dest_addr="cgcs.server_grp",
                source_addr="cgcs.server_grp",
                source_instance="instance-0000000a",  # set by the relay, whatever the guest said
                data={"version": 2, "msg_type": "status_query", "seq": 3},
            ),
        ),
        (
            "instance-0000000a",
            Envelope(
                dest_addr="async.route",
                source_addr="s",
                source_instance="instance-0000000a",
                data={},
            ),
        ),
    ]
    app.close()


async def test_host_app_to_guest_byte_for_byte(
    relay: ChannelRelay, channel_dir: Path, guests: Callable[..., Awaitable[FakeGuest]]
) -> None:
    guest = await guests(channel_dir / channel_name("instance-0000000a"))
    await eventually(lambda: bool(relay.connected()), "the guest")
    app = HostApp(unique("s"))
    assert app.name is not None
    app.send(
        relay,
        b'{"version": 2, "dest_addr": "cgcs.scale", "dest_instance": "instance-0000000a", '
        b'"data": {"version": 2, "msg_type": "scale_request", "timeout_ms": 9000, '
        b'"resource": "cpu", "direction": "down"}}',
    )
    expected = (
        b'{"version":2,"dest_addr":"cgcs.scale","dest_instance":"instance-0000000a",'
        b'"source_addr":"'
        + app.name.encode()
        + b'","data":{"version":2,"msg_type":"scale_request",'
        b'"timeout_ms":9000,"resource":"cpu","direction":"down"}}\n'
    )
    await eventually(lambda: len(guest.raw) >= len(expected), "the frame")
    assert guest.raw == expected
    app.close()


async def test_bad_input_from_host_apps_and_guests_is_dropped(
    relay: ChannelRelay, channel_dir: Path, guests: Callable[..., Awaitable[FakeGuest]]
) -> None:
    guest = await guests(channel_dir / channel_name("instance-0000000b"))
    await eventually(lambda: bool(relay.connected()), "the guest")
    app = HostApp(unique("b"))
    for raw in [
        b"garbage",
        b'{"version":2,"dest_addr":"x","dest_instance":"instance-0000000b","data":{"trunc',
        b'{"version":3,"dest_addr":"x","dest_instance":"instance-0000000b","data":{}}',
        b'{"version":2,"dest_addr":"x","data":{}}',
        b'{"version":2,"dest_instance":"instance-0000000b","data":{}}',
        b'{"version":2,"dest_addr":"x","dest_instance":"instance-0000000c","data":{}}',
        b'{"version":2,"dest_addr":"x","dest_instance":"instance-0000000b","data":{"s":"'
        + b"a" * 65000
        + b'"}}',
    ]:
        app.send(relay, raw)
    unbound = HostApp(None)
    unbound.send(
        relay, b'{"version":2,"dest_addr":"x","dest_instance":"instance-0000000b","data":{}}'
    )
    await guest.send(b"garbage\n" + b"{" * 70000 + b"\n" + b'{"version":2,"data":{}}\n')
    await guest.send(encode_guest_frame(Envelope(dest_addr=unique("n"), source_addr="x", data={})))
    app.send(
        relay, b'{"version":2,"dest_addr":"x","dest_instance":"instance-0000000b","data":{"ok":1}}'
    )
    await eventually(lambda: len(guest.received) == 1, "the good message")
    assert guest.received[0].data == {"ok": 1}
    await eventually(lambda: relay.counters.dropped_total == 12, "every drop counted")
    assert relay.counters.dropped == {
        "bad message": 3,
        "no dest_instance": 1,
        "no dest_addr": 2,
        "guest not connected": 1,
        "datagram too big": 1,
        "sender not abstract": 1,
        "garbage": 1,
        "line too long": 1,
        "app not bound": 1,
    }
    app.close()
    unbound.close()


async def test_a_failing_handler_is_a_logged_bug_and_the_relay_carries_on(
    relay: ChannelRelay,
    channel_dir: Path,
    guests: Callable[..., Awaitable[FakeGuest]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    guest = await guests(channel_dir / channel_name("instance-0000000e"))
    await eventually(lambda: bool(relay.connected()), "the guest")
    seen: list[JsonObject] = []

    def broken(instance: str, env: Envelope) -> None:
        seen.append(env.data)
        if env.data.get("boom"):
            raise RuntimeError("handler bug")

    async def broken_async(instance: str, env: Envelope) -> None:
        raise RuntimeError("async handler bug")

    relay.route("sync", broken)
    relay.route("async", broken_async)

    def broken_callback(instance: str, connected: bool) -> None:
        raise RuntimeError("callback bug")

    relay.on_change(broken_callback)
    with caplog.at_level(logging.ERROR, logger="servergroup.guestcomm.relay"):
        await guest.send(encode_guest_frame(Envelope(dest_addr="sync", data={"boom": True})))
        await guest.send(encode_guest_frame(Envelope(dest_addr="async", data={})))
        await guest.send(encode_guest_frame(Envelope(dest_addr="sync", data={"boom": False})))
        await eventually(lambda: len(seen) == 2, "both sync messages")
        await eventually(lambda: len(caplog.records) >= 2, "two BUG lines")
        guest.writers[-1].close()  # a disconnect calls the broken on_change callback
        await eventually(lambda: len(caplog.records) >= 3, "three BUG lines")
    assert all(r.getMessage().startswith("BUG") for r in caplog.records)
    await eventually(lambda: relay.connected() == {"instance-0000000e"}, "the reconnect")


async def test_a_guest_that_does_not_read_does_not_hold_up_the_others(
    channel_dir: Path, guests: Callable[..., Awaitable[FakeGuest]]
) -> None:
    relay = ChannelRelay(channel_dir, address=unique(), retry_interval=RETRY, queue_limit=64 * 1024)
    async with relay:
        stuck = await guests(channel_dir / channel_name("instance-0000000s"), read=False)
        fine = await guests(channel_dir / channel_name("instance-0000000f"))
        await eventually(lambda: len(relay.connected()) == 2, "both guests")
        await eventually(lambda: bool(stuck.writers), "the stuck guest's connection")
        big = Envelope(dest_addr="x", data={"pad": "p" * 3000})
        results = [await relay.send_to_guest("instance-0000000s", big) for _ in range(2000)]
        assert results[0] is True
        assert results[-1] is False  # its buffer filled up; the rest is dropped
        assert relay.counters.dropped["channel queue full"] >= 1
        for n in range(100):
            assert await relay.send_to_guest(
                "instance-0000000f", Envelope(dest_addr="x", data={"n": n})
            )
        await eventually(lambda: len(fine.received) == 100, "the other guest's messages")
        assert [e.data["n"] for e in fine.received] == list(range(100))
        assert not await relay.send_to_guest("instance-00000404", big)


async def test_the_relay_address_is_exclusive(relay: ChannelRelay, channel_dir: Path) -> None:
    from servergroup.guestcomm.sockets import AddressInUse

    with pytest.raises(AddressInUse):
        await ChannelRelay(channel_dir, address=relay.address).start()


def _json(raw: bytes) -> JsonObject:
    value = json.loads(raw)
    assert isinstance(value, dict)
    return value


async def test_send_to_guests_writes_the_same_bytes_to_each_and_names_those_it_could_not(
    channel_dir: Path, guests: Callable[..., Awaitable[FakeGuest]]
) -> None:
    relay = ChannelRelay(channel_dir, address=unique(), retry_interval=RETRY, queue_limit=64 * 1024)
    async with relay:
        stuck = await guests(channel_dir / channel_name("instance-0000001s"), read=False)
        fine = [await guests(channel_dir / channel_name(f"instance-0000001{c}")) for c in "ab"]
        await eventually(lambda: len(relay.connected()) == 3, "three guests")
        await eventually(lambda: bool(stuck.writers), "the stuck guest's connection")
        everyone = ["instance-0000001s", "instance-0000001a", "instance-0000001b"]
        big = Envelope(dest_addr="x", data={"pad": "p" * 3000})
        failed: list[list[str]] = []

        def read_all(n: int) -> Callable[[], bool]:
            return lambda: all(len(g.received) == n for g in fine)

        for n in range(1, 201):
            failed.append(relay.send_to_guests(everyone, big))
            # The readers keep up (the test lets them read each one); the stuck one does not.
            await eventually(read_all(n), "the others")
        assert failed[0] == []
        # The stuck one's buffer filled up and stayed within its bound; the others got all.
        assert failed[-1] == ["instance-0000001s"]
        assert all(f in ([], ["instance-0000001s"]) for f in failed)
        assert relay.buffered("instance-0000001s") <= relay.queue_limit
        assert relay.counters.dropped["channel queue full"] == sum(len(f) for f in failed)
        assert all(len(g.received) == 200 for g in fine)
        assert fine[0].raw == fine[1].raw
        assert relay.send_to_guests(["instance-00000404"], big) == ["instance-00000404"]
        assert relay.buffered("instance-00000404") == 0


async def test_write_frames_writes_a_guest_its_frames_in_order_up_to_its_bound(
    channel_dir: Path, guests: Callable[..., Awaitable[FakeGuest]]
) -> None:
    relay = ChannelRelay(channel_dir, address=unique(), retry_interval=RETRY, queue_limit=64 * 1024)
    async with relay:
        stuck = await guests(channel_dir / channel_name("instance-0000003s"), read=False)
        fine = await guests(channel_dir / channel_name("instance-0000003a"))
        await eventually(lambda: len(relay.connected()) == 2, "two guests")
        await eventually(lambda: bool(stuck.writers), "the stuck guest's connection")
        frames = [
            encode_host_frame(Envelope(dest_addr="x", data={"n": n, "pad": "p" * 1000}))
            for n in range(100)
        ]
        assert relay.write_frames("instance-0000003a", frames) == 100
        await eventually(lambda: len(fine.received) == 100, "every frame")
        assert [env.data["n"] for env in fine.received] == list(range(100))
        # The stuck guest takes what fits its bound, the first ones; the rest is counted.
        written = 0
        for _ in range(3):
            written += relay.write_frames("instance-0000003s", frames)
        assert 0 < written < 300
        assert relay.buffered("instance-0000003s") <= relay.queue_limit
        assert relay.counters.dropped["channel queue full"] == 300 - written
        assert relay.write_frames("instance-00000404", frames) == 0
        assert relay.counters.dropped["guest not connected"] == 100
        assert relay.write_frames("instance-0000003a", []) == 0


async def test_a_guest_that_lost_frames_gets_the_newest_after_the_gap_then_the_rest(
    channel_dir: Path, guests: Callable[..., Awaitable[FakeGuest]]
) -> None:
    """A burst whose end did not fit: the guest gets the oldest frames, then the newest
    (held until it had room), so that its applications see the gap though nothing follows.
    An answer written meanwhile (it may pass the bound) comes after the held one."""
    relay = ChannelRelay(channel_dir, address=unique(), retry_interval=RETRY, queue_limit=64 * 1024)
    async with relay:
        stuck = await guests(channel_dir / channel_name("instance-0000006s"), read=False)
        await eventually(lambda: bool(stuck.writers), "the stuck guest's connection")
        frames = [
            encode_host_frame(Envelope(dest_addr="x", data={"n": n, "pad": "p" * 1000}))
            for n in range(1000)
        ]
        went = sum(
            relay.write_frames("instance-0000006s", frames[start : start + 50], newest=1)
            for start in range(0, 900, 50)
        )
        dropped = relay.counters.dropped["channel queue full"]
        assert dropped > 0
        assert went + dropped == 900
        assert relay.buffered("instance-0000006s") <= relay.queue_limit
        answer = Envelope(dest_addr="x", data={"n": "answer"})
        assert relay.send_to_guests(["instance-0000006s"], answer, answer=True) == []
        stuck.thaw()
        await eventually(
            lambda: [e.data["n"] for e in stuck.received[-1:]] == ["answer"], "the answer"
        )
        got = [e.data["n"] for e in stuck.received]
        # The oldest, the gap, the newest (held), then the answer.
        assert got == [*range(len(got) - 2), 899, "answer"]
        assert len(got) == went + 1
        # What comes later follows them, in order.
        assert relay.write_frames("instance-0000006s", frames[900:], newest=1) == 100
        await eventually(lambda: len(stuck.received) == went + 101, "the rest")
        assert [e.data["n"] for e in stuck.received[-101:]] == ["answer", *range(900, 1000)]
        assert relay.counters.dropped["channel queue full"] == dropped


async def test_what_one_loop_round_writes_to_a_guest_goes_out_at_its_end_in_order(
    channel_dir: Path, guests: Callable[..., Awaitable[FakeGuest]]
) -> None:
    relay = ChannelRelay(channel_dir, address=unique(), retry_interval=RETRY, queue_limit=16 * 1024)
    async with relay:
        guest = await guests(channel_dir / channel_name("instance-0000003r"))
        await eventually(lambda: relay.connected() == {"instance-0000003r"}, "the guest")
        frames = [
            encode_host_frame(Envelope(dest_addr="x", data={"n": n, "pad": "p" * 1000}))
            for n in range(30)
        ]
        reply = Envelope(dest_addr="x", data={})
        # One round (no await in between): a batch, a reply, another batch.
        assert relay.write_frames("instance-0000003r", frames[:5]) == 5
        assert await relay.send_to_guest("instance-0000003r", reply)
        assert relay.write_frames("instance-0000003r", frames[5:10]) == 5
        # Held for the round's end, and counted toward the guest's bound meanwhile.
        held = sum(map(len, frames[:10])) + len(encode_host_frame(reply))
        assert relay.buffered("instance-0000003r") == held
        # Past the bound, what is held is handed to the kernel at once, and the rest fits.
        assert relay.write_frames("instance-0000003r", frames[10:]) == 20
        assert relay.buffered("instance-0000003r") < 16 * 1024
        await eventually(lambda: len(guest.received) == 31, "every frame")
        assert [env.data.get("n") for env in guest.received] == [*range(5), None, *range(5, 30)]
        await eventually(lambda: relay.buffered("instance-0000003r") == 0, "an empty queue")
        assert relay.counters.dropped == {}


async def test_throttle_stops_reading_a_guest_and_resumes(
    channel_dir: Path, guests: Callable[..., Awaitable[FakeGuest]]
) -> None:
    relay = ChannelRelay(channel_dir, address=unique(), retry_interval=RETRY)
    seen: list[JsonObject] = []
    relay.route("svc", lambda instance, env: seen.append(env.data))
    async with relay:
        guest = await guests(channel_dir / channel_name("instance-0000002t"))
        await eventually(lambda: relay.connected() == {"instance-0000002t"}, "the guest")
        await guest.send(encode_guest_frame(Envelope(dest_addr="svc", data={"n": 0})))
        await eventually(lambda: len(seen) == 1, "the first message")
        relay.throttle("instance-0000002t", True)
        guest.writer.write(encode_guest_frame(Envelope(dest_addr="svc", data={"n": 1})))
        # Nothing is read while paused: the frame waits in the socket, where the
        # guest's own writes back up; a round trip through the loop shows it.
        for _ in range(50):
            await asyncio.sleep(0.01)
        assert len(seen) == 1
        relay.throttle("instance-0000002t", False)
        await eventually(lambda: len(seen) == 2, "the message sent while paused")
        assert seen[1] == {"n": 1}
        relay.throttle("instance-00000404", True)  # not connected: nothing to do


async def test_answers_pass_a_full_queue_up_to_their_allowance_then_none_goes(
    channel_dir: Path, guests: Callable[..., Awaitable[FakeGuest]]
) -> None:
    """A guest's acks and nacks are not dropped with its deliveries at `queue_limit`
    (a cumulative ack after a dropped nack would acknowledge a refused broadcast);
    past their allowance one is lost, and then every later one, however small."""
    relay = ChannelRelay(
        channel_dir,
        address=unique(),
        retry_interval=RETRY,
        queue_limit=64 * 1024,
        answer_allowance=16 * 1024,
    )
    async with relay:
        stuck = await guests(channel_dir / channel_name("instance-0000005s"), read=False)
        await eventually(lambda: bool(stuck.writers), "the stuck guest's connection")
        guest = ["instance-0000005s"]
        big = Envelope(dest_addr="x", data={"pad": "p" * 3000})
        sent = 0
        while not relay.send_to_guests(guest, big):  # up to its bound, then dropped
            sent += 1
            assert sent < 1000
        assert relay.counters.dropped["channel queue full"] == 1
        nack = Envelope(
            dest_addr="x",
            data={"version": 2, "msg_type": "nack", "log_msg": "busy", "id": 1, "pad": "n" * 400},
        )
        kept = 0
        while not relay.send_to_guests(guest, nack, answer=True):
            kept += 1
        # Past the deliveries' bound, within the answers' allowance.
        assert kept >= 16 * 1024 // 600
        assert relay.queue_limit < relay.buffered(guest[0]) <= 80 * 1024
        assert relay.counters.dropped["answer lost"] == 1
        # A delivery still stops at queue_limit; a small answer now goes nowhere either.
        assert relay.send_to_guests(guest, big) == guest
        ack = Envelope(dest_addr="x", data={"version": 2, "msg_type": "broadcast_ack", "id": 9})
        assert relay.send_to_guests(guest, ack, answer=True) == guest
        assert relay.counters.dropped["answer lost"] == 2
