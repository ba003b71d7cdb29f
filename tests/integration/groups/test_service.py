"""GroupService on a real etcd with real ChannelRelays: two hosts, several guests.

Each host is a `RegistryCache` + `ChannelRelay` (over a temporary channel
directory, its host-app address unique to the test) + `GroupService`, with
its own etcd client, as two `servergroup host` daemons would be. Guests are
played by the test: a UNIX stream listener named
`cgcs.messaging.<instance>.sock` in the host's channel directory, exactly
where a hypervisor puts a VM's channel socket; the relay connects to it and
the test reads the host's frames and writes the guest's frames.

World: group `g` with servers a, b on h1 and c, d on h2; group `other` with
e on h1. Broadcasts must reach every other member of `g` on both hosts and
never the sender nor `other`, numbered 1, 2, 3... in one order everywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from servergroup.common.component import HealthState
from servergroup.config import CoordinationConfig
from servergroup.coordination import EtcdCoordinator, Guard
from servergroup.coordination.etcd_process import EtcdCluster
from servergroup.groups.protocol import (
    Broadcast,
    GroupMessage,
    Nack,
    Notification,
    StatusQuery,
    StatusResponse,
    StatusResponseDone,
    Subscribe,
    decode_group_message,
    encode_group_message,
)
from servergroup.groups.service import GroupService
from servergroup.guestcomm.protocol import (
    SERVER_GROUP_ADDR,
    ChannelDecoder,
    Envelope,
    Json,
    JsonObject,
    encode_envelope,
    encode_guest_frame,
)
from servergroup.guestcomm.relay import ChannelRelay
from servergroup.servers.model import (
    BroadcastBatch,
    BroadcastItem,
    GroupRecord,
    HostRecord,
    Policy,
    ServerSpec,
    ServerStatus,
    VmState,
    encode_batch,
)
from servergroup.servers.registry import (
    Registry,
    RegistryCache,
    broadcast_key,
    group_key,
    host_key,
)
from tests.fixtures import wait
from tests.fixtures.etcd import compact
from tests.fixtures.tcpproxy import TcpProxy

WAIT = 10.0
CONFIG = CoordinationConfig()
#: The relays' bound per guest in `world`: 1 MiB, not the default 4 MiB, so that the
#: tests of what happens at the bound overflow it with a burst of a few megabytes.
WORLD_QUEUE_LIMIT = 1 << 20


class TestGuest:
    """One guest's end of its channel: listens where the hypervisor would."""

    __test__ = False

    def __init__(self, instance: str, channel_dir: Path) -> None:
        self.instance = instance
        self.path = channel_dir / f"cgcs.messaging.{instance}.sock"
        self.received: asyncio.Queue[Envelope] = asyncio.Queue()
        self.connected = asyncio.Event()
        self._writer: asyncio.StreamWriter | None = None
        self._server: asyncio.Server | None = None
        self._readers: set[asyncio.Task[None]] = set()
        self._reading = asyncio.Event()
        self._reading.set()

    def hold(self) -> None:
        """Stop reading the channel (as a frozen guest): what the host writes waits."""
        self._reading.clear()

    def resume(self) -> None:
        """Read the channel again."""
        self._reading.set()

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._accept, str(self.path))

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._writer is not None:
            self._writer.close()
        for task in self._readers:
            task.cancel()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self.connected.set()
        decoder = ChannelDecoder()
        while (await self._reading.wait()) and (data := await reader.read(65536)):
            for item in decoder.feed(data):
                if isinstance(item, Envelope):
                    self.received.put_nowait(item)

    def send(self, msg: GroupMessage | JsonObject, *, source: str = SERVER_GROUP_ADDR) -> None:
        data = msg if isinstance(msg, dict) else encode_group_message(msg)
        self.send_raw(
            encode_guest_frame(Envelope(data=data, dest_addr=SERVER_GROUP_ADDR, source_addr=source))
        )

    def send_raw(self, frame: bytes) -> None:
        assert self._writer is not None, f"{self.instance} has no host connected"
        self._writer.write(frame)

    async def drain(self) -> None:
        assert self._writer is not None
        await self._writer.drain()

    async def next(self, timeout: float = WAIT) -> tuple[Envelope, GroupMessage]:
        async with asyncio.timeout(timeout):
            env = await self.received.get()
        assert env.source_addr == SERVER_GROUP_ADDR
        return env, decode_group_message(env.data)

    async def next_of(self, kind: type, timeout: float = WAIT) -> GroupMessage:
        """The next message of `kind`, skipping others (e.g. notifications)."""
        async with asyncio.timeout(timeout):
            while True:
                _, msg = await self.next(timeout)
                if isinstance(msg, kind):
                    return msg

    async def quiet(self, within: float = 0.5) -> list[GroupMessage]:
        """Whatever arrives within `within` seconds (usually: must be nothing)."""
        await asyncio.sleep(within)
        out = []
        while not self.received.empty():
            out.append(decode_group_message(self.received.get_nowait().data))
        return out


@dataclass
class TestHost:
    __test__ = False

    name: str
    coordinator: EtcdCoordinator
    cache: RegistryCache
    relay: ChannelRelay
    service: GroupService
    channel_dir: Path
    guests: dict[str, TestGuest] = field(default_factory=dict)


@dataclass
class World:
    registry: Registry
    hosts: dict[str, TestHost]
    guests: dict[str, TestGuest]  # by server name
    lease: int
    names: dict[str, str]  # server name -> instance
    #: What each host's fence answers (its registration's guard; None: may not write).
    fences: dict[str, Guard | None] = field(default_factory=dict)


PLACEMENT = {"a": ("h1", "g"), "b": ("h1", "g"), "c": ("h2", "g"), "d": ("h2", "g")}
PLACEMENT_OTHER = {"e": ("h1", "other")}


def instance_of(name: str, salt: str) -> str:
    return f"instance-{salt}{ord(name):02x}"


def spec(name: str, host: str, group: str, salt: str) -> ServerSpec:
    return ServerSpec(
        name=name,
        instance=instance_of(name, salt),
        uuid=f"{salt}-{name}",
        group=group,
        host=host,
        created_at="2026-11-21T00:00:00Z",
    )


def status(name: str, host: str, state: VmState = VmState.ACTIVE) -> ServerStatus:
    return ServerStatus(name=name, host=host, state=state, online_cpus=(0,))


def host_record(name: str) -> HostRecord:
    return HostRecord(name=name, channel_dir="/x", pid=1, started_at="2026-11-21T00:00:00Z")


def batch_of(group: str, host_total: int, *texts: str, host: str = "hx") -> bytes:
    """A batch as another host (`host`, its total so far `host_total`) would write it."""
    items = tuple(
        BroadcastItem(sender="x", sender_instance="instance-elsewhere", text=t) for t in texts
    )
    return encode_batch(
        BroadcastBatch(group=group, host=host, host_total=host_total, sent_at="", items=items)
    )


#: Polls of state spread over relays and services, which has no one event to await.
eventually = functools.partial(wait.eventually, timeout=WAIT)


@pytest.fixture
async def world(etcd_server: EtcdCluster, etcd_prefix: str, tmp_path: Path) -> AsyncIterator[World]:
    salt = secrets.token_hex(3)  # 6 hex digits: instance-<salt><2 hex>
    admin = EtcdCoordinator(etcd_server.endpoints, prefix=etcd_prefix, config=CONFIG)
    registry = Registry(admin)
    lease = (await admin.grant(60)).id
    await registry.create_group(
        GroupRecord(name="g", policy=Policy.AFFINITY, uuid="u1", created_at="")
    )
    await registry.create_group(
        GroupRecord(name="other", policy=Policy.AFFINITY, uuid="u2", created_at="")
    )
    for name, (host, group) in {**PLACEMENT, **PLACEMENT_OTHER}.items():
        await registry.create_server(spec(name, host, group, salt))
        await registry.put_status(status(name, host))
    fences: dict[str, Guard | None] = {}
    for host in ("h1", "h2"):
        await registry.register_host(host_record(host), lease=lease)
        kv = await admin.get(host_key(host))
        assert kv is not None
        fences[host] = Guard(key=host_key(host), create_revision=kv.create_revision)

    hosts: dict[str, TestHost] = {}
    guests: dict[str, TestGuest] = {}
    stack = contextlib.AsyncExitStack()
    async with stack:
        stack.push_async_callback(admin.close)
        for host in ("h1", "h2"):
            coordinator = EtcdCoordinator(etcd_server.endpoints, prefix=etcd_prefix, config=CONFIG)
            stack.push_async_callback(coordinator.close)
            cache = RegistryCache(coordinator)
            await cache.start()
            stack.push_async_callback(cache.stop)
            channel_dir = tmp_path / host
            channel_dir.mkdir()
            relay = ChannelRelay(
                channel_dir,
                address=f"sgt{secrets.token_hex(5)}",
                retry_interval=0.1,
                queue_limit=WORLD_QUEUE_LIMIT,
            )
            service = GroupService(
                coordinator=coordinator,
                cache=cache,
                relay=relay,
                host=host,
                fence=lambda host=host: fences[host],  # type: ignore[misc]
            )
            await service.start()
            stack.push_async_callback(service.stop)
            await relay.start()
            stack.push_async_callback(relay.stop)
            hosts[host] = TestHost(host, coordinator, cache, relay, service, channel_dir)
        for name, (host, _) in {**PLACEMENT, **PLACEMENT_OTHER}.items():
            g = TestGuest(instance_of(name, salt), hosts[host].channel_dir)
            await g.start()
            stack.push_async_callback(g.stop)
            guests[name] = hosts[host].guests[name] = g

        def all_connected() -> bool:
            # The relay connected, and the guest's side has accepted the connection.
            return all(
                g.instance in hosts[h].relay.connected() and g.connected.is_set()
                for h, host_ in hosts.items()
                for g in host_.guests.values()
            )

        await eventually(all_connected, "every guest connected")
        for host_ in hosts.values():
            await host_.cache.wait_for(lambda s: len(s.hosts) == 2 and len(s.servers) == 5, WAIT)
        yield World(
            registry=registry,
            hosts=hosts,
            guests=guests,
            lease=lease,
            names={n: g.instance for n, g in guests.items()},
            fences=fences,
        )
        await admin.delete_prefix("")


# -- broadcast -------------------------------------------------------------------------


async def test_broadcast_reaches_every_other_member_in_one_order(world: World) -> None:
    a, c = world.guests["a"], world.guests["c"]
    sent: list[tuple[str, str]] = []
    for i in range(5):
        a.send(Broadcast(text=f"from a {i}"))
        c.send(Broadcast(text=f"from c {i}"))
        sent += [("a", f"from a {i}"), ("c", f"from c {i}")]
    received: dict[str, list[Broadcast]] = {}
    for name in ("a", "b", "c", "d"):
        expected = sum(1 for sender, _ in sent if sender != name)
        got: list[Broadcast] = []
        for _ in range(expected):
            env, msg = await world.guests[name].next()
            assert isinstance(msg, Broadcast)
            assert env.dest_addr == SERVER_GROUP_ADDR
            got.append(msg)
        received[name] = got
        assert await world.guests[name].quiet(0.3) == []  # never its own
    # One total order: seq numbers the group's broadcasts 1..10, the same text
    # under the same seq everywhere, each receiver's in increasing order.
    by_seq: dict[int, tuple[str | None, str]] = {}
    for name, got in received.items():
        seqs = [m.seq or 0 for m in got]
        assert seqs == sorted(seqs), name
        for m in got:
            assert m.seq is not None
            assert m.source_instance != world.names[name]
            assert by_seq.setdefault(m.seq, (m.source_instance, m.text)) == (
                m.source_instance,
                m.text,
            )
    assert sorted(by_seq) == list(range(1, 11))
    assert sorted(text for _, text in by_seq.values()) == sorted(text for _, text in sent)
    # Per sender, the texts keep the order they were sent in.
    for sender in ("a", "c"):
        texts = [t for _, (src, t) in sorted(by_seq.items()) if src == world.names[sender]]
        assert texts == [f"from {sender} {i}" for i in range(5)]
    assert await world.guests["e"].quiet(0.1) == []  # another group hears nothing
    h1 = world.hosts["h1"].service.counters
    assert h1.broadcasts_accepted == 5
    assert h1.broadcasts_delivered == 10 + 5  # b gets 10, a gets c's 5


async def test_broadcast_refusals_are_nacked(world: World) -> None:
    a = world.guests["a"]
    cases = [
        ("x" * 3051, "3051 bytes of UTF-8; the limit is 3050"),
        ("a\x00b", "NUL"),
        ("a\nb", "newline"),
        ("\x01" * 1000, "once escaped as JSON"),
    ]
    for text, words in cases:
        a.send(Broadcast(text=text))
        _, msg = await a.next()
        assert isinstance(msg, Nack)
        assert msg.orig_msg_type == "broadcast"
        assert words in msg.log_msg
    assert await world.guests["b"].quiet(0.3) == []
    assert world.hosts["h1"].service.counters.nacks == len(cases)


async def test_a_host_that_may_not_write_nacks_broadcasts(world: World) -> None:
    a, b = world.guests["a"], world.guests["b"]
    guard = world.fences["h1"]
    world.fences["h1"] = None  # its session is not connected
    a.send(Broadcast(text="while suspended"))
    _, msg = await a.next()
    assert msg == Nack(
        orig_msg_type="broadcast",
        log_msg="host h1 is not connected to etcd now (its session is not live)",
    )
    assert guard is not None
    world.fences["h1"] = Guard(key=guard.key, create_revision=guard.create_revision - 1)
    a.send(Broadcast(text="with a stale registration"))
    _, msg = await a.next()
    assert isinstance(msg, Nack)
    assert msg.log_msg.startswith("host h1 lost its registration (its lease expired)")
    assert await b.quiet(0.3) == []
    world.fences["h1"] = guard
    a.send(Broadcast(text="registered"))
    _, got = await b.next()
    assert isinstance(got, Broadcast)
    assert got.text == "registered"


async def test_not_a_member_of_any_group_is_nacked(world: World) -> None:
    spec_e = (await world.registry.require_server("e")).spec
    await world.registry.coordinator.delete(group_key("other"))
    await world.hosts["h1"].cache.wait_for(lambda s: "other" not in s.groups, WAIT)
    world.guests["e"].send(Broadcast(text="anyone?"))
    _, msg = await world.guests["e"].next()
    assert msg == Nack(orig_msg_type="broadcast", log_msg="e is not a member of any server group")
    assert spec_e.group == "other"


# -- status ------------------------------------------------------------------------------


async def test_status_one_response_per_member_then_done(world: World) -> None:
    b = world.guests["b"]
    b.send(StatusQuery(seq=7))
    servers: list[JsonObject] = []
    while True:
        env, msg = await b.next()
        assert env.dest_addr == SERVER_GROUP_ADDR
        if isinstance(msg, StatusResponseDone):
            assert msg.seq == 7
            break
        assert isinstance(msg, StatusResponse)
        assert msg.seq == 7
        servers.append(msg.server)
    assert [s["name"] for s in servers] == ["a", "b", "c", "d"]
    assert [s["instance_name"] for s in servers] == [world.names[n] for n in "abcd"]
    assert all(s["host_alive"] is True and s["server_group"] == "g" for s in servers)
    assert [s["host"] for s in servers] == ["h1", "h1", "h2", "h2"]
    # Replies go back to the asking address; a second app subscribed there.
    b.send(Subscribe(), source="app2")
    b.send(StatusQuery(seq=8), source="app2")
    replies = [await b.next() for _ in range(5)]
    assert {env.dest_addr for env, _ in replies} == {"app2"}
    assert replies[-1][1] == StatusResponseDone(seq=8)
    assert world.hosts["h1"].service.subscriptions(b.instance) == frozenset({"app2"})


async def test_every_status_datagram_stays_under_4096_bytes(world: World) -> None:
    b = world.guests["b"]
    b.send(StatusQuery(seq=1))
    while True:
        env, msg = await b.next()
        delivered = encode_envelope(Envelope(data=env.data, source_addr=env.source_addr))
        assert len(delivered) < 4096
        if isinstance(msg, StatusResponseDone):
            break


# -- notifications -------------------------------------------------------------------------


def event_of(msg: GroupMessage) -> JsonObject:
    assert isinstance(msg, Notification), msg
    return msg.event


def payload_name(event: JsonObject) -> Json:
    payload = event["payload"]
    assert isinstance(payload, dict)
    return payload["name"]


async def test_status_change_notifies_the_other_members_only(world: World) -> None:
    await world.registry.put_status(status("c", "h2", VmState.PAUSED))
    for name in ("a", "b", "d"):
        env, msg = await world.guests[name].next()
        event = event_of(msg)
        assert env.dest_addr == SERVER_GROUP_ADDR
        assert event["event_type"] == "compute.instance.pause.end"
        assert event["priority"] == "INFO"
        assert payload_name(event) == "c"
    assert await world.guests["c"].quiet(0.3) == []
    assert await world.guests["e"].quiet(0.0) == []


async def test_subscribed_app_gets_notifications_too(world: World) -> None:
    a = world.guests["a"]
    a.send(Subscribe(), source="app2")
    await eventually(
        lambda: world.hosts["h1"].service.subscriptions(a.instance) == {"app2"}, "subscribed"
    )
    await world.registry.put_status(status("b", "h1", VmState.STOPPED))
    got = {(await a.next())[0].dest_addr for _ in range(2)}
    assert got == {SERVER_GROUP_ADDR, "app2"}


async def test_host_death_makes_its_servers_lost_then_recovered(world: World) -> None:
    await world.registry.coordinator.delete(host_key("h2"))
    for name in ("a", "b"):
        events = [event_of((await world.guests[name].next())[1]) for _ in range(2)]
        assert sorted(str(payload_name(e)) for e in events) == ["c", "d"]
        for e in events:
            assert e["event_type"] == "compute.instance.lost"
            assert e["priority"] == "ERROR"
            payload = e["payload"]
            assert isinstance(payload, dict)
            assert payload["host_alive"] is False
    # h2's own members hear nothing about themselves from their own host.
    assert await world.guests["c"].quiet(0.3) == []
    assert await world.guests["d"].quiet(0.0) == []
    await world.registry.register_host(host_record("h2"), lease=world.lease)
    for name in ("a", "b"):
        events = [event_of((await world.guests[name].next())[1]) for _ in range(2)]
        assert {e["event_type"] for e in events} == {"compute.instance.recovered"}


# -- bad input ---------------------------------------------------------------------------------


async def test_bad_input_is_dropped_or_nacked_and_service_continues(world: World) -> None:
    a, b = world.guests["a"], world.guests["b"]
    counters = world.hosts["h1"].service.counters
    a.send_raw(b'this is not json\n{"version": 2, "dest_addr": "cgcs.server_grp", "data\n')
    a.send_raw(b'\n{"version": 1, "dest_addr": "cgcs.server_grp", "data": {}}\n')
    a.send({"version": 3, "msg_type": "broadcast", "data": "x"})
    a.send({"version": 2, "msg_type": "broadcast", "data": 5})
    a.send({"version": 2, "msg_type": "status_response", "seq": 1, "data": {}})
    a.send({"version": 2, "msg_type": "nack", "orig_msg_type": "x", "log_msg": "loop?"})
    a.send({"version": 2, "msg_type": "frobnicate"})
    _, msg = await a.next()
    assert isinstance(msg, Nack)
    assert msg.orig_msg_type == "status_response"
    _, msg = await a.next()
    assert isinstance(msg, Nack)
    assert msg.orig_msg_type == "frobnicate"
    assert msg.log_msg.startswith("unknown msg_type 'frobnicate'")
    assert await a.quiet(0.3) == []
    assert counters.dropped.get("garbage") == 2
    assert counters.dropped.get("not a request") == 1

    # A 10 000-message burst from a: its own queue passes the high-water mark and
    # its channel is paused (nothing dropped by the service); b is still served.
    burst = encode_guest_frame(
        Envelope(
            data={"version": 2, "msg_type": "frobnicate"},
            dest_addr=SERVER_GROUP_ADDR,
            source_addr=SERVER_GROUP_ADDR,
        )
    )
    a.send_raw(burst * 10_000)
    b.send(StatusQuery(seq=99))
    assert await b.next_of(StatusResponseDone) == StatusResponseDone(seq=99)
    await a.drain()
    # 5 routed before, 10 000 in the burst, b's query: all reached the service.
    await eventually(lambda: counters.received >= 10_006, "the burst routed")
    assert counters.throttles > 0
    assert counters.busy_nacks == 0
    assert counters.dropped == {"garbage": 2, "not a request": 1}
    # Every one was answered (a nack), or counted where a's channel could not take it.
    await eventually(lambda: counters.nacks + counters.send_failures >= 10_002, "every answer")
    # a itself is served again once its queue has drained.
    a.send(StatusQuery(seq=5))
    assert await a.next_of(StatusResponseDone, timeout=30) == StatusResponseDone(seq=5)


async def test_unknown_guest_is_dropped(world: World) -> None:
    host = world.hosts["h1"]
    stranger = TestGuest("instance-ffffffff", host.channel_dir)
    await stranger.start()
    try:
        await eventually(lambda: stranger.instance in host.relay.connected(), "stranger connected")
        stranger.send(StatusQuery(seq=1))
        stranger.send(Broadcast(text="hello?"))
        await eventually(
            lambda: host.service.counters.dropped.get("unknown sender", 0) == 2, "two drops"
        )
        assert await stranger.quiet(0.2) == []
        assert await world.guests["a"].quiet(0.0) == []
    finally:
        await stranger.stop()


async def test_subscriptions_are_forgotten_on_disconnect(world: World) -> None:
    a = world.guests["a"]
    service = world.hosts["h1"].service
    for i in range(10):
        a.send(Subscribe(), source=f"app{i}")
    _, msg = await a.next()  # the ninth and tenth are over the limit of 8
    assert isinstance(msg, Nack)
    assert msg.orig_msg_type == "subscribe"
    assert len(service.subscriptions(a.instance)) == 8
    await a.stop()
    await eventually(lambda: not service.subscriptions(a.instance), "subscriptions forgotten")
    assert service.counters.subscriptions == 0


# -- compaction ----------------------------------------------------------------------------


async def test_a_host_behind_the_compaction_window_says_what_it_missed(
    etcd_single: EtcdCluster, etcd_prefix: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Cut from etcd, a host misses broadcasts that are then compacted away.

    Back, it logs how many it missed; its member sees the gap in seq and the
    latest broadcast, then the next ones, never a seq twice.
    """
    salt = secrets.token_hex(3)
    admin = EtcdCoordinator(etcd_single.endpoints, prefix=etcd_prefix, config=CONFIG)
    registry = Registry(admin)
    stack = contextlib.AsyncExitStack()
    async with stack:
        stack.push_async_callback(admin.close)
        await registry.create_group(
            GroupRecord(name="g", policy=Policy.AFFINITY, uuid="u1", created_at="")
        )
        await registry.create_server(spec("b", "h1", "g", salt))
        await registry.put_status(status("b", "h1"))
        await registry.register_host(host_record("h1"), lease=(await admin.grant(60)).id)

        seqs = iter(range(1, 100))

        async def broadcast(text: str) -> int:
            return await admin.put(broadcast_key("g", "hx"), batch_of("g", next(seqs), text))

        proxy = await stack.enter_async_context(TcpProxy(etcd_single.endpoints[0]))
        coordinator = EtcdCoordinator((proxy.endpoint,), prefix=etcd_prefix, config=CONFIG)
        stack.push_async_callback(coordinator.close)
        cache = RegistryCache(coordinator)
        await cache.start()
        stack.push_async_callback(cache.stop)
        relay = ChannelRelay(tmp_path, address=f"sgt{secrets.token_hex(5)}", retry_interval=0.1)
        service = GroupService(coordinator=coordinator, cache=cache, relay=relay, host="h1")
        await service.start()
        stack.push_async_callback(service.stop)
        await relay.start()
        stack.push_async_callback(relay.stop)
        b = TestGuest(instance_of("b", salt), tmp_path)
        await b.start()
        stack.push_async_callback(b.stop)
        await eventually(lambda: b.instance in relay.connected(), "b connected")

        await broadcast("one")
        assert await b.next_of(Broadcast) == Broadcast(
            text="one", source_instance="instance-elsewhere", seq=1
        )
        await proxy.cut()
        for i in range(2, 7):
            revision = await broadcast(f"number {i}")
        await compact(etcd_single, revision)
        caplog.set_level(logging.WARNING, logger="servergroup.groups.service")
        await proxy.heal()
        # The latest broadcast is still in the store: b gets it, with the gap before it.
        assert await b.next_of(Broadcast, timeout=20) == Broadcast(
            text="number 6", source_instance="instance-elsewhere", seq=6
        )
        assert service.counters.broadcasts_missed == 4
        missed = [r.getMessage() for r in caplog.records if "missed" in r.getMessage()]
        assert missed == [
            "host h1 missed 4 broadcast(s) of group g (seq 2 to 5): the store compacted "
            "them before this host read them; members see the gap"
        ]
        assert service.health().state is HealthState.HEALTHY
        # Following again from the re-read: the next one, once, in order.
        await broadcast("seven")
        assert await b.next_of(Broadcast) == Broadcast(
            text="seven", source_instance="instance-elsewhere", seq=7
        )
        assert await b.quiet(0.5) == []
        assert service.counters.broadcasts_missed == 4
        await admin.delete_prefix("")


async def test_a_host_watches_the_broadcasts_of_its_local_groups_only(world: World) -> None:
    h1, h2 = world.hosts["h1"].service, world.hosts["h2"].service

    def local_groups(service: GroupService) -> str:
        return service.health().sentence.split(";")[0]

    assert local_groups(h1) == "serving 2 local group(s)"  # g and other
    assert local_groups(h2) == "serving 1 local group(s)"  # g
    # A group whose first server lands on h2: h2 follows it from then on.
    await world.registry.create_group(
        GroupRecord(name="late", policy=Policy.AFFINITY, uuid="u3", created_at="")
    )
    salt = secrets.token_hex(3)
    await world.registry.create_server(spec("f", "h2", "late", salt))
    await world.registry.put_status(status("f", "h2"))
    await eventually(lambda: local_groups(h2) == "serving 2 local group(s)", "h2 following late")
    f = TestGuest(instance_of("f", salt), world.hosts["h2"].channel_dir)
    await f.start()
    try:
        await eventually(lambda: f.instance in world.hosts["h2"].relay.connected(), "f connected")
        await world.registry.coordinator.put(broadcast_key("late", "hx"), batch_of("late", 1, "hi"))
        assert await f.next_of(Broadcast) == Broadcast(
            text="hi", source_instance="instance-elsewhere", seq=1
        )
        assert h2.counters.broadcasts_missed == 0
        assert local_groups(h1) == "serving 2 local group(s)"  # late has nobody on h1
    finally:
        await f.stop()
    # The last server of `other` on h1 goes: h1 stops following it.
    await world.registry.remove_server("e")
    await eventually(lambda: local_groups(h1) == "serving 1 local group(s)", "h1 dropping other")
