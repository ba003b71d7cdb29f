"""Apps in servers without IP networking, through real guest agents, relays and etcd.

Three servers x, y (host h1) and z (host h2) of one group, each a network
namespace with only `lo` running `servergroup guest`, whose channel socket
sits in its host's channel directory; each host is a ChannelRelay and a
GroupService on one real etcd. The apps are the client library, bound in the
servers' namespaces: the seed's validation in small (status, a broadcast
seen by the others only, a notification), plus a second app per server.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import select
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from servergroup.config import CoordinationConfig
from servergroup.coordination import EtcdCoordinator
from servergroup.coordination.etcd_process import EtcdCluster
from servergroup.groups.client import (
    AsyncServerGroupClient,
    BroadcastReceived,
    ClientEvent,
    NotificationReceived,
    StatusReceived,
    init,
)
from servergroup.groups.service import GroupService
from servergroup.guestcomm.protocol import JsonObject
from servergroup.guestcomm.relay import ChannelRelay
from servergroup.servers.model import (
    GroupRecord,
    HostRecord,
    Policy,
    ServerSpec,
    ServerStatus,
    VmState,
)
from servergroup.servers.registry import Registry, RegistryCache
from tests.integration.groups.conftest import WAIT, Guest, GuestFactory

CONFIG = CoordinationConfig()
PLACEMENT = {"x": "h1", "y": "h1", "z": "h2"}


@dataclass
class Setup:
    registry: Registry
    guests: dict[str, Guest]
    instances: dict[str, str]
    relays: dict[str, ChannelRelay]


@pytest.fixture
async def setup(
    etcd_server: EtcdCluster, etcd_prefix: str, guest: GuestFactory, short_dir: Path
) -> AsyncIterator[Setup]:
    salt = secrets.token_hex(3)
    instances = {name: f"instance-{salt}{ord(name):02x}" for name in PLACEMENT}
    guests: dict[str, Guest] = {}
    for name, host in PLACEMENT.items():
        channel_dir = short_dir / host
        channel_dir.mkdir(exist_ok=True)
        guests[name] = guest(name, channel=channel_dir / f"cgcs.messaging.{instances[name]}.sock")
    admin = EtcdCoordinator(etcd_server.endpoints, prefix=etcd_prefix, config=CONFIG)
    registry = Registry(admin)
    stack = contextlib.AsyncExitStack()
    async with stack:
        stack.push_async_callback(admin.close)
        lease = (await admin.grant(60)).id
        await registry.create_group(
            GroupRecord(name="g", policy=Policy.AFFINITY, uuid="u", created_at="")
        )
        for name, host in PLACEMENT.items():
            await registry.create_server(
                ServerSpec(name=name, instance=instances[name], uuid=name, group="g", host=host)
            )
            await registry.put_status(ServerStatus(name=name, host=host, state=VmState.ACTIVE))
        for host in ("h1", "h2"):
            await registry.register_host(
                HostRecord(name=host, channel_dir="", pid=1, started_at=""), lease=lease
            )
        relays: dict[str, ChannelRelay] = {}
        for host in ("h1", "h2"):
            coordinator = EtcdCoordinator(etcd_server.endpoints, prefix=etcd_prefix, config=CONFIG)
            stack.push_async_callback(coordinator.close)
            cache = RegistryCache(coordinator)
            await cache.start()
            stack.push_async_callback(cache.stop)
            relay = ChannelRelay(
                short_dir / host, address=f"sgt{secrets.token_hex(5)}", retry_interval=0.1
            )
            service = GroupService(coordinator=coordinator, cache=cache, relay=relay, host=host)
            await service.start()
            stack.push_async_callback(service.stop)
            await relay.start()
            stack.push_async_callback(relay.stop)
            relays[host] = relay
            await cache.wait_for(lambda s: len(s.servers) == 3 and len(s.hosts) == 2, WAIT)

        def all_connected() -> bool:
            return all(instances[n] in relays[h].connected() for n, h in PLACEMENT.items())

        async with asyncio.timeout(WAIT):
            while not all_connected():  # noqa: ASYNC110 (the state of two relays)
                await asyncio.sleep(0.02)
        yield Setup(registry=registry, guests=guests, instances=instances, relays=relays)
        await admin.delete_prefix("")


def client_in(g: Guest, address: str = "cgcs.server_grp") -> AsyncServerGroupClient:
    client = AsyncServerGroupClient(address=address)
    g.call(client.bind)
    return client


async def next_of(client: AsyncServerGroupClient, kind: type) -> ClientEvent:
    async with asyncio.timeout(WAIT):
        while True:
            event = await client.next_event(WAIT)
            if isinstance(event, kind):
                return event


async def test_status_broadcast_and_notification_through_real_agents(setup: Setup) -> None:
    clients = {name: client_in(g) for name, g in setup.guests.items()}
    second = client_in(setup.guests["x"], "app2")  # a second app in server x
    async with contextlib.AsyncExitStack() as stack:
        for client in (*clients.values(), second):
            await stack.enter_async_context(client)
        # Status: every member, the asker included.
        seq = await clients["x"].request_status()
        status = await next_of(clients["x"], StatusReceived)
        assert isinstance(status, StatusReceived)
        assert status.seq == seq
        assert [s["instance_name"] for s in status.servers] == [
            setup.instances[n] for n in ("x", "y", "z")
        ]
        # Broadcast from y reaches x (both apps) and z on the other host, not y.
        await clients["y"].broadcast("this is a test")
        for receiver in (clients["x"], clients["z"], second):
            event = await next_of(receiver, BroadcastReceived)
            assert event == BroadcastReceived(
                text="this is a test", source_instance=setup.instances["y"], seq=1
            )
        with pytest.raises(TimeoutError):
            await clients["y"].next_event(0.5)
        # A pause of z (its host's observation) is news to x and y only.
        await setup.registry.put_status(ServerStatus(name="z", host="h2", state=VmState.PAUSED))
        for name in ("x", "y"):
            event = await next_of(clients[name], NotificationReceived)
            assert isinstance(event, NotificationReceived)
            assert event.event_type == "compute.instance.pause.end"
            payload = event.event["payload"]
            assert isinstance(payload, dict)
            assert payload["instance_name"] == setup.instances["z"]
        with pytest.raises(TimeoutError):
            await clients["z"].next_event(0.5)


def pump_sync_client(g: Guest) -> list[list[JsonObject]]:
    """The original-shaped API: callbacks, select on fileno(), process()."""
    statuses: list[list[JsonObject]] = []
    with g.call(lambda: init(status_cb=statuses.append)) as client:
        client.request_status()
        deadline = time.monotonic() + WAIT
        while not statuses and time.monotonic() < deadline:
            ready, _, _ = select.select([client.fileno()], [], [], 0.2)
            if ready:
                client.process()
    return statuses


async def test_sync_client_through_real_agents(setup: Setup) -> None:
    statuses = await asyncio.to_thread(pump_sync_client, setup.guests["z"])
    assert len(statuses) == 1
    assert [s["name"] for s in statuses[0]] == ["x", "y", "z"]
    assert {s["host"] for s in statuses[0]} == {"h1", "h2"}
