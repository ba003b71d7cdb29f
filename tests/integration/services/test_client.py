"""The service client library on the memory store and a real etcd: discovery, reads, writes, races.

A test here plays the node role where it needs one, writing what
`services.store` says a node role writes: its node key and its owner key on
its session lease (the owner key's create revision is the fencing token),
and the master record on the same lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from servergroup.coordination import Coordinator
from servergroup.services import client, store
from servergroup.services.client import (
    MasterEvent,
    MasterGone,
    MasterMoved,
    MasterUnreadable,
    ServiceRefused,
    UnknownService,
)
from servergroup.services.model import DefinitionError
from servergroup.services.placement import InstanceId
from servergroup.services.status import ServiceState, service_status, summaries
from tests.fixtures.coordinators import CoordinatorFactory

pytestmark = pytest.mark.timeout(60)
WAIT = 15.0

WEB = """
[[domain]]
name = "pair"
restricted = true
ordered = true
nodes = ["h1", "h2"]

[[service]]
name = "web"
agent = "ocf:heartbeat:Dummy"
domain = "pair"
address = "{node_ip}:80"
"""


class Node:
    """What a node role writes, by hand: its node key, owner keys and master record."""

    def __init__(self, c: Coordinator, name: str, lease: int) -> None:
        self.c, self.name, self.lease = c, name, lease

    @classmethod
    async def join(cls, c: Coordinator, name: str) -> Node:
        lease = (await c.grant(60)).id
        record = store.NodeRecord(node=name, ip=f"198.18.0.{name[1:]}", joined_at=time.time())
        await c.put(store.node_key(name), store.encode_node(record), lease=lease)
        return cls(c, name, lease)

    async def own(self, service: str, index: int = 0, *, master: bool = True) -> int:
        """Create the owner key (its create revision is the token) and, if master, the master."""
        instance = InstanceId(service=service, index=index)
        token = await self.c.create(
            store.owner_key(instance),
            store.encode_owner(store.OwnerRecord(node=self.name, master=master)),
            lease=self.lease,
        )
        assert token is not None, f"{instance} is owned already"
        if master:
            await self.publish(service, index, token, f"198.18.0.{self.name[1:]}:80")
        return token

    async def publish(self, service: str, index: int, token: int, address: str | None) -> None:
        record = store.MasterRecord(
            node=self.name, index=index, token=token, address=address, at=time.time()
        )
        await self.c.put(store.master_key(service), store.encode_master(record), lease=self.lease)

    async def leave(self) -> None:
        await self.c.revoke(self.lease)


class Events:
    """`watch_master` consumed by a task; `next()` is the next event, `quiet()` none comes."""

    def __init__(self, c: Coordinator, name: str) -> None:
        self.queue: asyncio.Queue[MasterEvent] = asyncio.Queue()
        self.task = asyncio.create_task(self._run(c, name))

    async def _run(self, c: Coordinator, name: str) -> None:
        async for event in client.watch_master(c, name, retry_interval=0.1):
            self.queue.put_nowait(event)

    async def next(self, timeout: float = WAIT) -> MasterEvent:
        async with asyncio.timeout(timeout):
            return await self.queue.get()

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


@contextlib.asynccontextmanager
async def events(c: Coordinator, name: str) -> AsyncIterator[Events]:
    e = Events(c, name)
    try:
        yield e
    finally:
        await e.close()


def moved(event: MasterEvent) -> tuple[str, int, str | None]:
    assert isinstance(event, MasterMoved), event
    return event.node, event.token, event.address


# -- discovery -----------------------------------------------------------------------------


async def test_where_is_none_then_the_master(coordinator: Coordinator) -> None:
    with pytest.raises(UnknownService, match="no service 'web' is defined"):
        await client.where(coordinator, "web")
    await client.add_definitions(coordinator, WEB)
    assert await client.where(coordinator, "web") is None
    h1 = await Node.join(coordinator, "h1")
    token = await h1.own("web")
    master = await client.where(coordinator, "web")
    assert master is not None
    assert (master.node, master.index, master.token, master.address) == (
        "h1",
        0,
        token,
        "198.18.0.1:80",
    )


async def test_watch_reports_each_change_once(coordinator: Coordinator) -> None:
    await client.add_definitions(coordinator, WEB)
    async with events(coordinator, "web") as e:
        assert isinstance(await e.next(), MasterGone)  # how things stand: no master
        h1 = await Node.join(coordinator, "h1")
        t1 = await h1.own("web")
        assert moved(await e.next()) == ("h1", t1, "198.18.0.1:80")
        await h1.publish("web", 0, t1, "198.18.0.1:80")  # rewritten, nothing new: no event
        await h1.publish("web", 0, t1, "198.18.0.1:81")
        assert moved(await e.next()) == ("h1", t1, "198.18.0.1:81")
        await h1.leave()  # the lease ends: owner and master keys go together
        assert isinstance(await e.next(), MasterGone)
        h2 = await Node.join(coordinator, "h2")
        t2 = await h2.own("web")
        assert t2 > t1
        assert moved(await e.next()) == ("h2", t2, "198.18.0.2:80")
        await coordinator.put(store.master_key("web"), b"{not json")
        assert isinstance(await e.next(), MasterUnreadable)
        await coordinator.put(store.master_key("webx"), b"another service's key")
        await h2.publish("web", 0, t2, None)
        assert moved(await e.next()) == ("h2", t2, None)
        assert e.queue.empty()


async def test_watch_survives_a_cut_and_a_compaction(etcd_single: Any, etcd_prefix: str) -> None:
    """Cut from etcd: the changes made meanwhile arrive after the heal, each once.

    Cut again while the history is compacted: the watch reads the key again and
    reports the state it finds once, or nothing when it is what it last said.
    """
    from servergroup.coordination import connect
    from tests.fixtures.coordinators import CONFIG
    from tests.fixtures.etcd import compact
    from tests.fixtures.tcpproxy import TcpProxy

    writer = connect(CONFIG, endpoints=etcd_single.endpoints, prefix=etcd_prefix)
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(writer.close)
        proxy = await stack.enter_async_context(TcpProxy(etcd_single.endpoints[0]))
        watcher = connect(CONFIG, endpoints=[proxy.endpoint], prefix=etcd_prefix)
        stack.push_async_callback(watcher.close)
        await client.add_definitions(writer, WEB)
        h1 = await Node.join(writer, "h1")
        t1 = await h1.own("web")
        e = await stack.enter_async_context(events(watcher, "web"))
        assert moved(await e.next()) == ("h1", t1, "198.18.0.1:80")

        await proxy.cut()
        await h1.publish("web", 0, t1, "198.18.0.1:81")
        await h1.publish("web", 0, t1, "198.18.0.1:82")
        await proxy.heal()
        assert moved(await e.next()) == ("h1", t1, "198.18.0.1:81")
        assert moved(await e.next()) == ("h1", t1, "198.18.0.1:82")

        await proxy.cut()
        await h1.leave()
        h2 = await Node.join(writer, "h2")
        t2 = await h2.own("web")
        revision = await h2.c.put("unrelated", b"x")
        await compact(etcd_single, revision)
        await proxy.heal()
        # Gone and back happened inside the compacted window: the latest is reported.
        assert moved(await e.next(timeout=30)) == ("h2", t2, "198.18.0.2:80")

        await proxy.cut()
        await h2.publish("web", 0, t2, "elsewhere")
        await h2.publish("web", 0, t2, "198.18.0.2:80")
        revision = await writer.put("unrelated", b"y")
        await compact(etcd_single, revision)
        await proxy.heal()
        # What the re-read finds is what was last reported: nothing; the next change, once.
        await h2.publish("web", 0, t2, "198.18.0.2:90")
        assert moved(await e.next(timeout=30)) == ("h2", t2, "198.18.0.2:90")
        assert e.queue.empty()
        await writer.delete_prefix("")


# -- reads ---------------------------------------------------------------------------------


async def test_bad_records_are_named_and_hide_nothing(coordinator: Coordinator) -> None:
    await client.add_definitions(coordinator, WEB)
    h1 = await Node.join(coordinator, "h1")
    await h1.own("web")
    await coordinator.put(store.def_key("broken"), b"[]")
    await coordinator.put(store.failure_key("web", "h2"), b'{"times": "often"}')
    await coordinator.put(store.owner_key(InstanceId(service="web", index=1)), b"\xff")
    await coordinator.put("services/whatever/x", b"{}")
    listing = await client.read_services(coordinator)
    assert len(listing.errors) == 4
    found = {s.name: s for s in summaries(listing)}
    assert found["broken"].state is ServiceState.UNREADABLE
    assert "services/defs/broken" in found["broken"].error
    assert found["web"].state is ServiceState.RUNNING
    status = await client.get_status(coordinator, "web")
    assert status.instances[0].node == "h1"
    assert [e.split(":")[0] for e in status.errors] == [
        "key services/failures/web/h2",
        "key services/owners/web/1",
    ]
    with pytest.raises(store.ServiceRecordError, match="definition of service 'broken'"):
        await client.get_status(coordinator, "broken")
    with pytest.raises(UnknownService):
        await client.get_status(coordinator, "nothing")


# -- writes --------------------------------------------------------------------------------


async def test_add_reports_changes_and_refuses_unknown_domains(coordinator: Coordinator) -> None:
    added = await client.add_definitions(coordinator, WEB)
    assert added.services == {"web": "added"}
    assert added.domains == {"pair": "added"}
    again = await client.add_definitions(coordinator, WEB)
    assert again.services == {"web": "unchanged"}
    assert again.domains == {"pair": "unchanged"}
    # A service may name a stored domain ...
    api = '[[service]]\nname = "api"\nagent = "ocf:heartbeat:Dummy"\ndomain = "pair"\n'
    assert (await client.add_definitions(coordinator, api)).services == {"api": "added"}
    # ... but not one that is neither in the file nor stored.
    lost = api.replace('"pair"', '"nowhere"')
    with pytest.raises(DefinitionError, match="service 'api': domain 'nowhere' is not defined"):
        await client.add_definitions(coordinator, lost)
    # A domain replaced by a file must still fit the stored services using it.
    one = '[[domain]]\nname = "pair"\nrestricted = true\nnodes = ["h1"]\n'
    two = api.replace('name = "api"', 'name = "api"\ninstances = 2')
    assert (await client.add_definitions(coordinator, two)).services == {"api": "updated"}
    with pytest.raises(DefinitionError, match="stored service 'api'"):
        await client.add_definitions(coordinator, one)
    listing = await client.read_services(coordinator)
    assert set(listing.services) == {"web", "api"}
    assert listing.services["api"].instances == 2
    assert len(listing.domains["pair"].members) == 2


async def test_two_adds_racing_never_store_what_neither_allowed(
    make_coordinator: CoordinatorFactory,
) -> None:
    """One add shrinks a restricted domain, the other grows a service on it: one must lose."""
    a, b = make_coordinator(), make_coordinator()
    shrink = '[[domain]]\nname = "pair"\nrestricted = true\nnodes = ["h1"]\n'
    grow = (
        '[[service]]\nname = "web"\nagent = "ocf:heartbeat:Dummy"\ndomain = "pair"\ninstances = 2\n'
    )
    for _ in range(5):
        await a.delete_prefix("services/")
        await client.add_definitions(a, WEB)  # web: 1 instance on the 2-node domain
        results = await asyncio.gather(
            client.add_definitions(a, shrink),
            client.add_definitions(b, grow),
            return_exceptions=True,
        )
        refused = [r for r in results if isinstance(r, DefinitionError)]
        assert len(refused) == 1, results
        listing = await client.read_services(a)
        web, pair = listing.services["web"], listing.domains["pair"]
        assert web.instances <= len(pair.members), (web, pair)
    # Two adds of different services both land.
    other = (
        '[[domain]]\nname = "trio"\nnodes = ["h1", "h2", "h3"]\n'
        '[[service]]\nname = "db"\nagent = "ocf:heartbeat:Dummy"\ndomain = "trio"\n'
    )
    await asyncio.gather(client.add_definitions(a, WEB), client.add_definitions(b, other))
    listing = await client.read_services(a)
    assert {"web", "db"} <= set(listing.services)
    assert {"pair", "trio"} <= set(listing.domains)


async def test_enable_disable(coordinator: Coordinator) -> None:
    await client.add_definitions(coordinator, WEB)
    assert await client.set_enabled(coordinator, "web", False)
    assert not await client.set_enabled(coordinator, "web", False)
    listing = await client.read_services(coordinator)
    assert listing.disabled(listing.services["web"])
    assert summaries(listing)[0].state is ServiceState.DISABLED
    assert await client.set_enabled(coordinator, "web", True)
    listing = await client.read_services(coordinator)
    assert not listing.disabled(listing.services["web"])
    with pytest.raises(UnknownService):
        await client.set_enabled(coordinator, "nothing", True)


async def test_relocate(coordinator: Coordinator) -> None:
    await client.add_definitions(coordinator, WEB)
    h1 = await Node.join(coordinator, "h1")
    with pytest.raises(ServiceRefused, match="not running"):
        await client.relocate(coordinator, "web")
    await h1.own("web")
    with pytest.raises(ServiceRefused, match="'h3' is not a live node"):
        await client.relocate(coordinator, "web", to="h3")
    await Node.join(coordinator, "h3")
    with pytest.raises(ServiceRefused, match="outside the restricted domain 'pair'"):
        await client.relocate(coordinator, "web", to="h3")
    with pytest.raises(ServiceRefused, match="already runs on h1"):
        await client.relocate(coordinator, "web", to="h1")
    with pytest.raises(ServiceRefused, match="instances 0 to 0, not 1"):
        await client.relocate(coordinator, "web", index=1)
    await Node.join(coordinator, "h2")
    done = await client.relocate(coordinator, "web", to="h2")
    assert (done.instance.index, done.from_node, done.to_node) == (0, "h1", "h2")
    listing = await client.read_services(coordinator)
    record = listing.relocations[InstanceId(service="web", index=0)]
    assert (record.from_node, record.to_node) == ("h1", "h2")
    status = service_status(listing, "web")
    assert status is not None
    assert status.instances[0].relocation == record


async def test_a_relocate_racing_a_disable_never_leaves_a_relocation_of_a_disabled_service(
    make_coordinator: CoordinatorFactory,
) -> None:
    a, b = make_coordinator(), make_coordinator()
    await client.add_definitions(a, WEB)
    h1 = await Node.join(a, "h1")
    await Node.join(a, "h2")
    await h1.own("web")
    outcomes = set()
    for _ in range(6):
        await client.set_enabled(a, "web", True)
        results = await asyncio.gather(
            client.relocate(a, "web", to="h2"),
            client.set_enabled(b, "web", False),
            return_exceptions=True,
        )
        assert results[1] is True, results
        outcomes.add("refused" if isinstance(results[0], ServiceRefused) else "dropped")
        assert not isinstance(results[0], Exception) or isinstance(results[0], ServiceRefused)
        listing = await client.read_services(a)
        assert listing.disabled(listing.services["web"])
        assert not listing.relocations, "a relocation survived the disable"
    assert outcomes  # which won varies; either way nothing was lost


async def test_clear_forgets_failures_bans_blocks_and_fatal(coordinator: Coordinator) -> None:
    await client.add_definitions(coordinator, WEB)
    now = time.time()
    instance = InstanceId(service="web", index=0)
    await coordinator.put(
        store.failure_key("web", "h1"),
        store.encode_failure(store.FailureRecord(times=(now,), reason="monitor")),
    )
    await coordinator.put(
        store.ban_key("web", "h2"), store.encode_ban(store.BanRecord(reason="hard", at=now))
    )
    await coordinator.put(
        store.blocked_key(instance),
        store.encode_block(store.BlockRecord(node="h1", token=3, reason="stop hung", at=now)),
    )
    await coordinator.put(
        store.state_key("web"),
        store.encode_state(store.StateRecord(disabled=True, fatal=True, reason="rc 6", at=now)),
    )
    await coordinator.put(
        store.failure_key("webx", "h1"), store.encode_failure(store.FailureRecord(times=(now,)))
    )
    status = await client.get_status(coordinator, "web")
    assert status.state is ServiceState.FATAL
    done = await client.clear(coordinator, "web")
    assert (done.failures, done.bans, done.blocks, done.fatal) == (
        ("h1",),
        ("h2",),
        (instance,),
        True,
    )
    listing = await client.read_services(coordinator)
    assert set(listing.failures) == {("webx", "h1")}  # another service's are kept
    assert not listing.bans
    assert not listing.blocked
    assert not listing.fatal("web")
    assert listing.disabled(listing.services["web"])  # the operator's disable stays
    again = await client.clear(coordinator, "web")
    assert (again.failures, again.bans, again.blocks, again.fatal) == ((), (), (), False)


async def test_remove_deletes_the_service_and_its_records(coordinator: Coordinator) -> None:
    await client.add_definitions(coordinator, WEB)
    await client.add_definitions(coordinator, WEB.replace('name = "web"', 'name = "web2"'))
    await client.set_enabled(coordinator, "web", False)
    await coordinator.put(
        store.failure_key("web", "h1"), store.encode_failure(store.FailureRecord(times=(1.0,)))
    )
    await coordinator.put(store.history_key("web"), store.encode_history(store.HistoryRecord()))
    assert await client.remove(coordinator, "web") == 4
    listing = await client.read_services(coordinator)
    assert set(listing.services) == {"web2"}
    assert not listing.failures
    assert not listing.states
    assert not listing.history
    assert "pair" in listing.domains
    with pytest.raises(UnknownService):
        await client.remove(coordinator, "web")
