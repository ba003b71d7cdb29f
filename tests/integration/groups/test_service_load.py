"""The group service under load: bursts, several senders on two hosts, a frozen guest, etcd down.

The world is `test_service.world`: real etcd, two hosts (h1: a, b, e; h2: c, d)
each with its own etcd client, `RegistryCache`, real `ChannelRelay` and
`GroupService`; guests are played by the test at their channel sockets,
except the frozen one, which is a real guest agent in its own network
namespace. Broadcasts carry ids (as the new client library sends them), so
every one is answered: an ack (cumulative) or a nack naming its id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from servergroup.config import CoordinationConfig
from servergroup.coordination import EtcdCoordinator
from servergroup.coordination.errors import StoreUnavailable
from servergroup.coordination.etcd_process import EtcdCluster
from servergroup.coordination.types import Compare, Put, TxnOp, TxnResult
from servergroup.groups.protocol import (
    Broadcast,
    BroadcastAck,
    GroupMessage,
    Nack,
    decode_group_message,
    encode_group_message,
)
from servergroup.groups.service import GroupService
from servergroup.guestcomm.drops import Reason
from servergroup.guestcomm.protocol import SERVER_GROUP_ADDR, Envelope, encode_guest_frame
from servergroup.guestcomm.relay import ChannelRelay
from servergroup.servers.model import (
    BroadcastBatch,
    BroadcastItem,
    GroupRecord,
    Policy,
    decode_batch,
    encode_batch,
)
from servergroup.servers.registry import (
    BROADCASTS,
    Registry,
    RegistryCache,
    broadcast_key,
    broadcast_prefix,
)
from tests.fixtures.etcd import compact
from tests.fixtures.tcpproxy import TcpProxy
from tests.integration.groups.conftest import GuestFactory
from tests.integration.groups.test_service import (
    CONFIG,
    WAIT,
    TestGuest,
    World,
    batch_of,
    eventually,
    host_record,
    spec,
    status,
    world,
)

__all__ = ["world"]  # the fixture, shared with test_service

#: A burst is bounded by this, generously: the test is about what arrives, not how fast.
BURST_TIMEOUT = 120.0


def burst(texts: Iterable[str], *, first_id: int = 0) -> bytes:
    """The channel frames of broadcasts with ids `first_id`, `first_id + 1`, ..."""
    return b"".join(
        encode_guest_frame(
            Envelope(
                data=encode_group_message(Broadcast(text=text, id=first_id + i)),
                dest_addr=SERVER_GROUP_ADDR,
                source_addr=SERVER_GROUP_ADDR,
            )
        )
        for i, text in enumerate(texts)
    )


@dataclass
class Seen:
    """What one guest received: broadcasts, and the answers to its own broadcasts, in order."""

    broadcasts: list[Broadcast] = field(default_factory=list)
    answers: list[BroadcastAck | Nack] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def acked_up_to(self) -> int:
        return max((a.id for a in self.answers if isinstance(a, BroadcastAck)), default=-1)

    @property
    def nacked(self) -> dict[int, Nack]:
        return {a.id: a for a in self.answers if isinstance(a, Nack) and a.id is not None}

    def has(self, n: int) -> Callable[[], bool]:
        """A predicate: at least `n` broadcasts received."""
        return lambda: len(self.broadcasts) >= n

    def all_answered(self, n: int) -> Callable[[], bool]:
        """A predicate: each of the ids 0..n-1 acked or nacked."""
        return lambda: self.answered(range(n))

    def answered(self, ids: Iterable[int]) -> bool:
        top, nacked = self.acked_up_to, self.nacked
        return all(i <= top or i in nacked for i in ids)


async def watch_guest(guest: TestGuest, seen: Seen) -> None:
    """Sort what `guest` receives into `seen` until cancelled (notifications are skipped)."""
    while True:
        env = await guest.received.get()
        msg = decode_group_message(env.data)
        if isinstance(msg, Broadcast):
            seen.broadcasts.append(msg)
        elif isinstance(msg, BroadcastAck | Nack):
            seen.answers.append(msg)
        seen.changed.set()


async def until(
    seen: Seen, predicate: Callable[[], bool], what: str, timeout: float = BURST_TIMEOUT
) -> None:
    """Wait until `predicate` holds, checked after each message `seen` gets."""
    try:
        async with asyncio.timeout(timeout):
            while not predicate():
                seen.changed.clear()
                await seen.changed.wait()
    except TimeoutError:
        pytest.fail(f"timed out waiting for {what}")


@contextlib.asynccontextmanager
async def watching(guests: dict[str, TestGuest]) -> AsyncIterator[dict[str, Seen]]:
    seen = {name: Seen() for name in guests}
    tasks = [asyncio.create_task(watch_guest(g, seen[n])) for n, g in guests.items()]
    try:
        yield seen
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def check_acks_only(seen: Seen, n: int) -> None:
    """Every id 0..n-1 acknowledged, none refused; acks cumulative and increasing."""
    assert seen.nacked == {}, list(seen.nacked.values())[:3]
    ids = [a.id for a in seen.answers if isinstance(a, BroadcastAck)]
    assert ids == sorted(set(ids))
    assert ids[-1] == n - 1


async def test_a_burst_of_10000_from_one_guest_is_acked_and_delivered_once_in_order(
    world: World,
) -> None:
    n = 10_000
    texts = [f"burst {i:05d} " + "x" * 50 for i in range(n)]
    a = world.guests["a"]
    receivers = {name: world.guests[name] for name in ("b", "c", "d")}
    async with watching({"a": a, **receivers}) as seen:
        a.send_raw(burst(texts))
        await until(seen["a"], lambda: seen["a"].answered(range(n)), "every id answered")
        for name in receivers:
            await until(seen[name], seen[name].has(n), name)
        check_acks_only(seen["a"], n)
        # One sender on a fresh key: the broadcast with id i got seq i + 1.
        assert all(
            ack.seq == ack.id + 1 for ack in seen["a"].answers if isinstance(ack, BroadcastAck)
        )
        for name in receivers:
            got = seen[name].broadcasts
            assert [m.seq for m in got] == list(range(1, n + 1)), name
            assert [m.text for m in got] == texts, name
            assert {m.source_instance for m in got} == {a.instance}
        assert await world.guests["e"].quiet(0.1) == []
    h1 = world.hosts["h1"].service.counters
    assert h1.broadcasts_accepted == n
    assert h1.batch_max > 1  # batched: fewer transactions than broadcasts
    assert h1.batches < n
    assert h1.acks == len(seen["a"].answers)
    assert h1.busy_nacks == 0
    assert world.hosts["h2"].service.counters.broadcasts_delivered == 2 * n
    health = world.hosts["h1"].service.health().sentence
    assert f"{n} broadcast(s) stored in {h1.batches} batch(es)" in health


async def test_four_senders_on_two_hosts_one_total_order(world: World) -> None:
    n = 2_500
    senders = {name: world.guests[name] for name in ("a", "b", "c", "d")}
    texts = {name: [f"{name} {i:04d}" for i in range(n)] for name in senders}
    async with watching(senders) as seen:
        for name, guest in senders.items():
            guest.send_raw(burst(texts[name]))
        for name in senders:
            await until(seen[name], seen[name].all_answered(n), name)
            await until(seen[name], seen[name].has(3 * n), f"{name} all")
        await asyncio.sleep(0.2)  # anything extra (a duplicate) would show up now
    instance = {name: g.instance for name, g in senders.items()}
    by_seq: dict[int, tuple[str | None, str]] = {}
    for name in senders:
        check_acks_only(seen[name], n)
        got = seen[name].broadcasts
        assert len(got) == 3 * n, name  # exactly once each
        seqs = [m.seq or 0 for m in got]
        assert seqs == sorted(set(seqs)), name  # increasing: no seq twice, none out of order
        for m in got:
            assert m.seq is not None
            assert m.source_instance != instance[name]
            assert by_seq.setdefault(m.seq, (m.source_instance, m.text)) == (
                m.source_instance,
                m.text,
            )
    # One order everywhere: seq 1..4n, each broadcast once, nothing missing.
    assert sorted(by_seq) == list(range(1, 4 * n + 1))
    for name in senders:
        # Every receiver saw every seq but those of its own broadcasts.
        own = {s for s, (src, _) in by_seq.items() if src == instance[name]}
        assert {m.seq for m in seen[name].broadcasts} == set(by_seq) - own
        # Each sender's order is kept, and its acks name the seqs its broadcasts got.
        mine = [text for _, (src, text) in sorted(by_seq.items()) if src == instance[name]]
        assert mine == texts[name]
        for ack in seen[name].answers:
            assert isinstance(ack, BroadcastAck)
            assert by_seq[ack.seq] == (instance[name], texts[name][ack.id])
    services = [h.service.counters for h in world.hosts.values()]
    # Each host writes its own key: the hosts never compete for one.
    assert [c.txn_conflicts for c in services] == [0, 0]
    assert all(c.batches > 0 for c in services)
    assert sum(c.broadcasts_accepted for c in services) == 4 * n


async def test_a_frozen_guest_loses_its_own_messages_only(
    world: World, guest: GuestFactory
) -> None:
    """A member whose agent is stopped (SIGSTOP) mid-burst: the others get everything;
    the relay drops and counts what the frozen one cannot take, its buffer bounded."""
    h1 = world.hosts["h1"]
    salt = secrets.token_hex(3)
    frozen_spec = spec("s", "h1", "g", salt)
    await world.registry.create_server(frozen_spec)
    await world.registry.put_status(status("s", "h1"))
    agent = guest("s")  # a real guest agent, listening in its own namespace
    assert agent.agent is not None
    link = h1.channel_dir / f"cgcs.messaging.{frozen_spec.instance}.sock"
    link.symlink_to(agent.channel)
    await eventually(lambda: frozen_spec.instance in h1.relay.connected(), "the agent connected")
    await h1.cache.wait_for(lambda snap: "s" in snap.servers, WAIT)
    agent.agent.freeze()

    n = 5_000
    texts = [f"big {i:04d} " + "y" * 600 for i in range(n)]
    limit = h1.relay.queue_limit
    dropped_before = h1.relay.counters.dropped.get(Reason.CHANNEL_QUEUE_FULL, 0)
    most = 0

    async def sample() -> None:
        nonlocal most
        while True:
            most = max(most, h1.relay.buffered(frozen_spec.instance))
            await asyncio.sleep(0.002)

    a = world.guests["a"]
    receivers = {name: world.guests[name] for name in ("b", "c", "d")}
    sampler = asyncio.create_task(sample())
    try:
        async with watching({"a": a, **receivers}) as seen:
            a.send_raw(burst(texts))
            await until(seen["a"], lambda: seen["a"].answered(range(n)), "every id answered")
            for name in receivers:
                await until(seen[name], seen[name].has(n), name)
            check_acks_only(seen["a"], n)
            for name in receivers:
                assert [m.seq for m in seen[name].broadcasts] == list(range(1, n + 1)), name
                assert [m.text for m in seen[name].broadcasts] == texts
    finally:
        sampler.cancel()
        await asyncio.gather(sampler, return_exceptions=True)
    # The frozen guest's buffer filled up to the bound and no further; the rest was dropped.
    assert h1.relay.counters.dropped.get(Reason.CHANNEL_QUEUE_FULL, 0) > dropped_before
    assert limit // 2 < most <= limit
    assert h1.relay.buffered(frozen_spec.instance) <= limit
    assert frozen_spec.instance in h1.relay.connected()
    agent.agent.thaw()


async def test_a_member_that_lost_the_end_of_a_burst_gets_the_newest_and_sees_the_gap(
    world: World,
) -> None:
    """A member that does not read loses what does not fit its bound, but not the
    newest broadcast: once it reads again it gets the oldest, then the newest, so that
    its applications see the gap though nothing follows the burst (the end of a
    backlog that overflowed two members was lost without a trace: their clients had no
    later seq to see the gap by)."""
    h1 = world.hosts["h1"]
    a, b = world.guests["a"], world.guests["b"]  # both on h1
    b.hold()
    n = 5_000
    texts = [f"big {i:04d} " + "y" * 600 for i in range(n)]
    dropped_before = h1.relay.counters.dropped.get(Reason.CHANNEL_QUEUE_FULL, 0)
    receivers = {name: world.guests[name] for name in ("b", "c", "d")}
    async with watching({"a": a, **receivers}) as seen:
        a.send_raw(burst(texts))
        await until(seen["a"], lambda: seen["a"].answered(range(n)), "every id answered")
        for name in ("c", "d"):
            await until(seen[name], seen[name].has(n), name)
        check_acks_only(seen["a"], n)
        assert h1.relay.counters.dropped.get(Reason.CHANNEL_QUEUE_FULL, 0) > dropped_before
        b.resume()
        await until(
            seen["b"],
            lambda: n in (m.seq for m in seen["b"].broadcasts[-1:]),
            "the newest",
            timeout=30.0,
        )
        got = [m.seq for m in seen["b"].broadcasts]
        assert len(got) < n
        assert got == [*range(1, len(got)), n]  # the oldest, the gap, the newest
        assert seen["b"].broadcasts[-1].text == texts[-1]


@dataclass
class OneHost:
    """One host h1 (group g: a, b) on its own etcd client, optionally through a proxy."""

    admin: EtcdCoordinator
    coordinator: EtcdCoordinator  # the service's
    service: GroupService
    relay: ChannelRelay
    guests: dict[str, TestGuest]
    proxy: TcpProxy | None


@contextlib.asynccontextmanager
async def one_host(
    etcd: EtcdCluster,
    prefix: str,
    channel_dir: Path,
    *,
    proxied: bool = False,
    config: CoordinationConfig = CONFIG,
    coordinator_type: type[EtcdCoordinator] = EtcdCoordinator,
    **service_options: Any,
) -> AsyncIterator[OneHost]:
    salt = secrets.token_hex(3)
    admin = EtcdCoordinator(etcd.endpoints, prefix=prefix, config=CONFIG)
    registry = Registry(admin)
    stack = contextlib.AsyncExitStack()
    async with stack:
        stack.push_async_callback(admin.close)
        await registry.create_group(
            GroupRecord(name="g", policy=Policy.AFFINITY, uuid="u1", created_at="")
        )
        for name in ("a", "b"):
            await registry.create_server(spec(name, "h1", "g", salt))
            await registry.put_status(status(name, "h1"))
        await registry.register_host(host_record("h1"), lease=(await admin.grant(60)).id)
        proxy = None
        endpoints = etcd.endpoints
        if proxied:
            proxy = await stack.enter_async_context(TcpProxy(etcd.endpoints[0]))
            endpoints = (proxy.endpoint,)
        coordinator = coordinator_type(endpoints, prefix=prefix, config=config)
        stack.push_async_callback(coordinator.close)
        cache = RegistryCache(coordinator)
        await cache.start()
        stack.push_async_callback(cache.stop)
        relay = ChannelRelay(channel_dir, address=f"sgt{secrets.token_hex(5)}", retry_interval=0.1)
        service = GroupService(
            coordinator=coordinator, cache=cache, relay=relay, host="h1", **service_options
        )
        await service.start()
        stack.push_async_callback(service.stop)
        await relay.start()
        stack.push_async_callback(relay.stop)
        guests = {}
        for name in ("a", "b"):
            g = TestGuest(spec(name, "h1", "g", salt).instance, channel_dir)
            await g.start()
            stack.push_async_callback(g.stop)
            guests[name] = g
        await eventually(
            lambda: set(relay.connected()) == {g.instance for g in guests.values()},
            "both guests connected",
        )
        for g in guests.values():  # the relay connected; the guest's side has accepted too
            await asyncio.wait_for(g.connected.wait(), WAIT)
        await cache.wait_for(lambda snap: len(snap.servers) == 2, WAIT)
        yield OneHost(admin, coordinator, service, relay, guests, proxy)
        await admin.delete_prefix("")


@pytest.mark.parametrize("outage", ["link cut", "etcd frozen"])
async def test_etcd_down_mid_burst_every_broadcast_is_acked_or_nacked(
    etcd_single: EtcdCluster, etcd_prefix: str, tmp_path: Path, outage: str
) -> None:
    """The host loses etcd during a burst (its link cut, or etcd SIGSTOPped): each
    broadcast is acked or nacked with its id, nacks before any ack that passes them,
    and the receiver gets exactly what was stored (with a frozen etcd, a transaction
    sent before the freeze may land after its nack: it is counted)."""
    quick = CoordinationConfig(request_timeout=0.3, operation_timeout=1.0)
    async with one_host(
        etcd_single, etcd_prefix, tmp_path, proxied=True, config=quick, in_doubt_timeout=1.5
    ) as host:
        proxy, service, guests = host.proxy, host.service, host.guests
        assert proxy is not None
        etcd = etcd_single.members[0]
        n = 6_000
        texts = [f"m {i:04d}" for i in range(n)]
        async with watching(guests) as seen:
            a = seen["a"]
            guests["a"].send_raw(burst(texts))
            await until(a, lambda: a.acked_up_to >= 0, "a first ack")
            if outage == "link cut":
                await proxy.cut()
            else:
                etcd.freeze()
            await until(a, lambda: bool(a.nacked), "a nack while etcd is away", timeout=30)
            if outage == "link cut":
                await proxy.heal()
            else:
                etcd.thaw()
            await until(a, lambda: a.answered(range(n)), "every id answered")
            nacked = a.nacked
            stored = [i for i in range(n) if i not in nacked]
            await until(
                seen["b"],
                lambda: len(seen["b"].broadcasts) >= len(stored),
                "b to receive every stored broadcast",
            )
            await asyncio.sleep(0.2)  # anything extra would show up now

        # Every nack names its id and why; none comes after an ack that passes it.
        for nack in nacked.values():
            assert nack.orig_msg_type == "broadcast"
            assert nack.log_msg.startswith("the host cannot reach etcd: ")
        top = -1
        for answer in a.answers:
            if isinstance(answer, BroadcastAck):
                top = max(top, answer.id)
            else:
                assert answer.id is not None
                assert answer.id > top
        assert a.acked_up_to == max(stored)
        # b got exactly what was stored, once, in order, with no gap in seq.
        got = seen["b"].broadcasts
        assert [m.seq for m in got] == list(range(1, len(got) + 1))
        extra = [m.text for m in got if int(m.text.split()[1]) in nacked]
        assert len(extra) == service.counters.nacked_but_stored
        assert [m.text for m in got if int(m.text.split()[1]) not in nacked] == [
            texts[i] for i in stored
        ]


class LosesOneAnswer(EtcdCoordinator):
    """A real etcd client, but the first broadcast transaction after `arm` lands and
    then loses its answer: `meanwhile` runs (while the sender waits), then the call
    raises `StoreUnavailable`, as when a reply is lost on a busy machine."""

    meanwhile: Callable[[], Awaitable[None]] | None = None

    def arm(self, meanwhile: Callable[[], Awaitable[None]]) -> None:
        self.meanwhile = meanwhile

    async def txn(
        self, compares: Sequence[Compare], success: Sequence[TxnOp], failure: Sequence[TxnOp] = ()
    ) -> TxnResult:
        result = await super().txn(compares, success, failure)
        meanwhile, writes_broadcasts = (
            self.meanwhile,
            any(isinstance(op, Put) and op.key.startswith(BROADCASTS) for op in success),
        )
        if meanwhile is not None and writes_broadcasts and result.succeeded:
            self.meanwhile = None
            await meanwhile()
            raise StoreUnavailable("the answer was lost (test)")
        return result


class LateBroadcastWatches(EtcdCoordinator):
    """A real etcd client whose broadcast watches open only once `gate` is set: a host
    whose watch falls behind while its transactions go on."""

    gate: asyncio.Event | None = None

    async def watch(self, prefix: str, *, start_revision: int) -> Any:
        if prefix.startswith(BROADCASTS):
            if self.gate is None:
                self.gate = asyncio.Event()
            await self.gate.wait()
        return await super().watch(prefix, start_revision=start_revision)


async def test_a_batch_a_compaction_hid_from_the_watch_is_acked_with_an_upper_bound(
    etcd_single: EtcdCluster, etcd_prefix: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A host stored its member's batch, but its watch had not numbered it when the
    store compacted past it: the one ack whose seq is not exact. It is acked with the
    highest seq it can have (what other hosts wrote after it included), never lower,
    and exactly once."""
    async with one_host(
        etcd_single, etcd_prefix, tmp_path, coordinator_type=LateBroadcastWatches
    ) as host:
        coordinator = host.coordinator
        assert isinstance(coordinator, LateBroadcastWatches)
        service, a = host.service, host.guests["a"]
        for i in range(3):  # seqs 1..3, stored in one batch or more; not numbered yet
            a.send(Broadcast(text=f"mine {i}", id=i))
        await eventually(lambda: service.counters.broadcasts_accepted == 3, "a's batch stored")
        assert service.counters.acks == 0  # the watch has numbered nothing
        # Another host writes after it (seq 4); then the store compacts it all.
        revision = await host.admin.put(broadcast_key("g", "hx"), batch_of("g", 1, "theirs"))
        await compact(etcd_single, revision)
        caplog.set_level(logging.WARNING, logger="servergroup.groups.service")
        assert coordinator.gate is not None
        coordinator.gate.set()
        acks: list[GroupMessage] = []
        while not acks or acks[-1] != BroadcastAck(id=2, seq=4):
            acks.append(await a.next_of(BroadcastAck, timeout=20))
            assert len(acks) <= 3, acks
        # The last of a's got seq 3; what hx wrote after it makes the bound 4. (Stored in
        # more than one batch, each is acked with its own bound: never below its seq.)
        assert all(isinstance(x, BroadcastAck) and x.seq > x.id for x in acks), acks
        assert any("upper bounds" in r.getMessage() for r in caplog.records)
        # Following again: the next one is numbered exactly, after hx's.
        a.send(Broadcast(text="mine 3", id=3))
        assert await a.next_of(BroadcastAck) == BroadcastAck(id=3, seq=5)
        assert service.counters.acks == len(acks) + 1


async def test_a_lost_answer_after_another_host_wrote_is_acked_once_never_stored_twice(
    etcd_server: EtcdCluster, etcd_prefix: str, tmp_path: Path
) -> None:
    """A batch lands, its answer is lost, the watch delivers it, and another host
    writes a batch of the group before the batch is sent again: the resend's compare
    fails (this host's key moved), and the batch must count as stored (the key still
    holds it), not be made again with its items (a broadcast stored twice, delivered
    twice), and be acked with the seq the group's order gave it."""
    async with one_host(
        etcd_server, etcd_prefix, tmp_path, coordinator_type=LosesOneAnswer
    ) as host:
        coordinator = host.coordinator
        assert isinstance(coordinator, LosesOneAnswer)
        own = broadcast_key("g", "h1")
        async with watching(host.guests) as seen:
            b = seen["b"]
            landed: list[BroadcastBatch] = []

            async def other_host_writes() -> None:
                await until(b, lambda: len(b.broadcasts) >= 1, "b to get the landed batch")
                kv = await host.admin.get(own)
                assert kv is not None
                landed.append(decode_batch(kv.value))
                other = BroadcastBatch(
                    group="g",
                    host="h9",
                    host_total=1,
                    sent_at="",
                    items=(BroadcastItem("x", "instance-x", "from another host"),),
                )
                done = await host.admin.txn(
                    [Compare.absent(broadcast_key("g", "h9"))],
                    [Put(key=broadcast_key("g", "h9"), value=encode_batch(other))],
                )
                assert done.succeeded

            coordinator.arm(other_host_writes)
            n = 50
            texts = [f"d {i:02d}" for i in range(n)]
            host.guests["a"].send_raw(burst(texts))
            a = seen["a"]
            await until(a, a.all_answered(n), "every id answered")
            await until(b, b.has(n + 1), "b to get every broadcast")
            await asyncio.sleep(0.3)  # a second copy would show up now
        assert coordinator.meanwhile is None, "no answer was lost: the test tested nothing"
        assert a.nacked == {}
        assert a.acked_up_to == n - 1
        got = b.broadcasts
        assert sorted(m.text for m in got) == sorted([*texts, "from another host"])
        assert [m.seq for m in got] == list(range(1, n + 2))
        assert [m.text for m in got if m.text != "from another host"] == texts
        # The batch whose answer was lost got its seqs before the other host's batch.
        seq_of = {m.text: m.seq for m in got}
        (lost,) = landed
        assert seq_of["from another host"] == len(lost.items) + 1
        for answer in a.answers:
            assert isinstance(answer, BroadcastAck)
            assert answer.seq == seq_of[texts[answer.id]]
        assert host.service.counters.nacked_but_stored == 0


async def test_a_restarted_service_numbers_on_from_its_hosts_key(
    etcd_server: EtcdCluster, etcd_prefix: str, tmp_path: Path
) -> None:
    """The service of the only sending host stops and starts again (as its daemon
    would): it reads its own key's total back, so its next batches number on, and
    neither its members nor its acks see a seq twice or a gap."""
    async with one_host(etcd_server, etcd_prefix, tmp_path) as host:
        n = 100
        first = [f"before {i:03d}" for i in range(n)]
        then = [f"after {i:03d}" for i in range(n)]
        async with watching(host.guests) as seen:
            a, b = seen["a"], seen["b"]
            host.guests["a"].send_raw(burst(first))
            await until(a, a.all_answered(n), "the first burst answered")
            await until(b, b.has(n), "b to get the first burst")
            await host.service.stop()
            await host.service.start()
            host.guests["a"].send_raw(burst(then, first_id=n))
            await until(a, a.all_answered(2 * n), "the second burst answered")
            await until(b, b.has(2 * n), "b to get the second burst")
            await asyncio.sleep(0.2)  # anything extra would show up now
        assert a.nacked == {}
        got = b.broadcasts
        assert [m.text for m in got] == [*first, *then]
        assert [m.seq for m in got] == list(range(1, 2 * n + 1))
        assert all(
            answer.seq == answer.id + 1 for answer in a.answers if isinstance(answer, BroadcastAck)
        )
        assert host.service.counters.txn_conflicts == 0  # it knew its key: no failed compare


async def test_beyond_the_hard_cap_a_request_is_nacked_busy_never_dropped(
    etcd_server: EtcdCluster, etcd_prefix: str, tmp_path: Path
) -> None:
    """With marks far below what one read of the channel brings, the queue passes
    its hard cap: those broadcasts are nacked `busy` with their ids, the rest acked."""
    async with one_host(
        etcd_server, etcd_prefix, tmp_path, high_water=4, low_water=2, hard_cap=8, batch_pending=4
    ) as host:
        n = 3_000
        texts = [f"q {i:04d}" for i in range(n)]
        async with watching(host.guests) as seen:
            a = seen["a"]
            host.guests["a"].send_raw(burst(texts))
            await until(a, lambda: a.answered(range(n)), "every id answered")
            nacked = a.nacked
            stored = [i for i in range(n) if i not in nacked]
            await until(seen["b"], lambda: len(seen["b"].broadcasts) >= len(stored), "b")
            await asyncio.sleep(0.2)  # anything extra would show up now
        counters = host.service.counters
        assert nacked  # one read of the channel holds far more than 8 requests
        assert counters.busy_nacks == len(nacked)
        assert counters.throttles > 0
        for nack in nacked.values():
            assert nack.orig_msg_type == "broadcast"
            assert nack.log_msg.startswith("busy: host h1 already has 8 requests of ")
        assert [m.text for m in seen["b"].broadcasts] == [texts[i] for i in stored]
        assert [m.seq for m in seen["b"].broadcasts] == list(range(1, len(stored) + 1))


async def test_acks_per_address_and_none_without_id(
    etcd_server: EtcdCluster, etcd_prefix: str, tmp_path: Path
) -> None:
    """Two apps of one guest get their own cumulative acks; an old app (no id) gets none."""
    async with one_host(etcd_server, etcd_prefix, tmp_path) as host:
        a = host.guests["a"]
        frames = b"".join(
            encode_guest_frame(
                Envelope(
                    data=encode_group_message(Broadcast(text=f"{src} {i}", id=ident)),
                    dest_addr=SERVER_GROUP_ADDR,
                    source_addr=src,
                )
            )
            for i in range(100)
            for src, ident in (("app1", i), ("app2", 1000 + i), ("old", None))
        )
        async with watching(host.guests) as seen:
            a.send_raw(frames)
            await until(seen["b"], lambda: len(seen["b"].broadcasts) >= 300, "b gets all 300")
            await until(
                seen["a"],
                lambda: {x.id for x in seen["a"].answers} >= {99, 1099},
                "both apps' last acks",
            )
            await asyncio.sleep(0.2)  # anything extra would show up now
        by_addr: dict[str, list[BroadcastAck]] = {}
        seq_of = {m.text: m.seq for m in seen["b"].broadcasts}
        for answer in seen["a"].answers:
            assert isinstance(answer, BroadcastAck)
            mine = "app1" if answer.id < 1000 else "app2"
            by_addr.setdefault(mine, []).append(answer)
            assert seq_of[f"{mine} {answer.id % 1000}"] == answer.seq
        assert sorted(by_addr) == ["app1", "app2"]
        assert host.service.counters.acks == len(seen["a"].answers)


async def test_receivers_number_from_every_hosts_totals_skip_repeats_and_count_gaps(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """Batches written by other hosts to their own keys: seqs follow the store's order
    of the writes; a write that adds nothing to its host's total delivers nothing
    again, a host total past what was seen is one gap (counted, logged once), and the
    group's keys deleted and written again number from 1."""
    b = world.guests["b"]
    admin = world.registry.coordinator
    caplog.set_level(logging.WARNING, logger="servergroup.groups.service")
    async with watching({"b": b}) as seen:
        await admin.put(broadcast_key("g", "hx"), batch_of("g", 2, "one", "two"))
        await admin.put(broadcast_key("g", "hy"), batch_of("g", 1, "three", host="hy"))
        await admin.put(broadcast_key("g", "hx"), batch_of("g", 2, "one", "two"))  # again
        await admin.put(broadcast_key("g", "hx"), batch_of("g", 4, "four", "five"))
        await admin.put(broadcast_key("g", "hy"), batch_of("g", 4, "eight", host="hy"))
        await until(seen["b"], lambda: len(seen["b"].broadcasts) >= 6, "six broadcasts")
        await admin.delete_prefix(broadcast_prefix("g"))
        await admin.put(broadcast_key("g", "hy"), batch_of("g", 1, "again", host="hy"))
        await until(seen["b"], lambda: len(seen["b"].broadcasts) >= 7, "the new key's first")
        await asyncio.sleep(0.2)  # anything extra would show up now
    got = [(m.seq, m.text) for m in seen["b"].broadcasts]
    assert got == [
        (1, "one"),
        (2, "two"),
        (3, "three"),
        (4, "four"),
        (5, "five"),
        (8, "eight"),
        (1, "again"),
    ]
    counters = world.hosts["h1"].service.counters
    assert counters.broadcasts_missed == 2
    missed = [r.getMessage() for r in caplog.records if "host h1 missed" in r.getMessage()]
    assert missed == [
        "host h1 missed 2 broadcast(s) of group g (seq 6 to 7): the store compacted "
        "them before this host read them; members see the gap"
    ]
