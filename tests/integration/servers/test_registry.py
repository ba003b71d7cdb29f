"""Registry and RegistryCache against the in-memory store and a real etcd."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from servergroup.coordination import FencingError, Guard, RevisionConflict
from servergroup.servers.model import (
    GroupRecord,
    HostRecord,
    Policy,
    ServerSpec,
    ServerStatus,
    VmState,
)
from servergroup.servers.registry import (
    SERVERS,
    ChangeKind,
    GroupExists,
    GroupNotEmpty,
    GroupNotFound,
    Registry,
    RegistryCache,
    RegistryChange,
    ServerExists,
    broadcast_key,
    host_key,
    legacy_broadcast_key,
    spec_key,
)
from tests.fixtures.coordinators import CoordinatorFactory

GROUP = GroupRecord(name="g1", policy=Policy.ANTI_AFFINITY, uuid="gu", created_at="t0")
SPEC = ServerSpec(name="vm1", instance="instance-00000001", uuid="su", group="g1", host="h0")
STATUS = ServerStatus(name="vm1", host="h0", state=VmState.ACTIVE, online_cpus=(0,))


async def next_change(q: asyncio.Queue[RegistryChange], kind: ChangeKind) -> RegistryChange:
    async with asyncio.timeout(5):
        while True:
            change = await q.get()
            if change.kind is kind:
                return change


async def test_records_round_trip_through_the_store(make_coordinator: CoordinatorFactory) -> None:
    registry = Registry(make_coordinator())
    await registry.create_group(GROUP)
    with pytest.raises(GroupExists):
        await registry.create_group(GROUP)
    with pytest.raises(GroupNotFound, match="create it first"):
        await registry.create_server(replace(SPEC, group="nope"))
    await registry.create_server(SPEC)
    with pytest.raises(ServerExists):
        await registry.create_server(SPEC)
    first = await registry.put_status(STATUS)
    second = await registry.put_spec(replace(SPEC, reboot_count=1))
    assert second > first > 0
    server = await registry.require_server("vm1")
    assert server.spec.reboot_count == 1
    assert server.status == STATUS
    assert [g.name for g in await registry.list_groups()] == ["g1"]
    with pytest.raises(GroupNotEmpty, match="vm1"):
        await registry.delete_group("g1")
    await registry.remove_server("vm1")
    assert await registry.get_server("vm1") is None
    await registry.delete_group("g1")
    assert await registry.list_groups() == []


async def test_deleting_a_group_deletes_its_broadcast_keys_only(
    make_coordinator: CoordinatorFactory,
) -> None:
    """Every host's key of the group and a key of the previous layout go; a group whose
    name extends this one's keeps its keys (made again, the group numbers from 1)."""
    coordinator = make_coordinator()
    registry = Registry(coordinator)
    await registry.create_group(GROUP)
    mine = [broadcast_key("g1", "h1"), broadcast_key("g1", "h2"), legacy_broadcast_key("g1")]
    other = [broadcast_key("g12", "h1"), legacy_broadcast_key("g12")]
    for key in [*mine, *other]:
        await coordinator.put(key, b"batch")
    await registry.delete_group("g1")
    for key in mine:
        assert await coordinator.get(key) is None, key
    for key in other:
        assert await coordinator.get(key) is not None, key


async def test_bad_record_is_ignored_not_fatal(make_coordinator: CoordinatorFactory) -> None:
    coordinator = make_coordinator()
    registry = Registry(coordinator)
    await registry.create_group(GROUP)
    await registry.create_server(SPEC)
    await coordinator.put(spec_key("broken"), b"{not json")
    snap = await registry.snapshot()
    assert set(snap.servers) == {"vm1"}


async def test_cache_follows_every_change(make_coordinator: CoordinatorFactory) -> None:
    writer = Registry(make_coordinator())
    cache = RegistryCache(make_coordinator())
    await writer.create_group(GROUP)
    await cache.start()
    try:
        assert "g1" in cache.snapshot.groups
        q = cache.subscribe()
        await writer.create_server(SPEC)
        change = await next_change(q, ChangeKind.SERVER)
        assert change.before is None
        assert change.after is not None
        await writer.put_status(STATUS)
        change = await next_change(q, ChangeKind.SERVER)
        assert change.after == change.snapshot.servers["vm1"]
        assert change.snapshot.servers["vm1"].status == STATUS
        revision = await writer.put_status(replace(STATUS, state=VmState.PAUSED))
        snap = await cache.wait_for(lambda s: s.revision >= revision, timeout=5)
        assert snap.servers["vm1"].state is VmState.PAUSED
        host = HostRecord(name="h0", channel_dir="/c", pid=1, started_at="t")
        lease = await writer.coordinator.grant(1)
        await writer.register_host(host, lease=lease.id)
        assert (await next_change(q, ChangeKind.HOST)).after == host
        await writer.coordinator.revoke(lease.id)
        gone = await next_change(q, ChangeKind.HOST)
        assert (gone.before, gone.after) == (host, None)
        await writer.remove_server("vm1")
        await cache.wait_for(lambda s: "vm1" not in s.servers, timeout=5)
        with pytest.raises(TimeoutError):
            await cache.wait_for(lambda s: "vm9" in s.servers, timeout=0.2)
    finally:
        await cache.stop()


async def test_a_status_is_written_only_for_the_spec_it_was_decided_on(
    make_coordinator: CoordinatorFactory,
) -> None:
    registry = Registry(make_coordinator())
    await registry.create_group(GROUP)
    await registry.create_server(SPEC)
    server = await registry.require_server("vm1")
    # the spec changed after the host read it: the status it decided is refused
    await registry.put_spec(replace(SPEC, reboot_count=1), if_mod_revision=server.spec_revision)
    with pytest.raises(RevisionConflict):
        await registry.put_status(STATUS, if_mod_revision=0, spec_revision=server.spec_revision)
    server = await registry.require_server("vm1")
    written = await registry.put_status(
        STATUS, if_mod_revision=0, spec_revision=server.spec_revision
    )
    # the same write again (its answer lost) is recognised as ours
    again = await registry.put_status(STATUS, if_mod_revision=0, spec_revision=server.spec_revision)
    assert again == written
    # the server's records are removed while a host still acts on it: its
    # status (compared as absent) must not outlive it
    await registry.forget_server("vm1", status_revision=written)
    with pytest.raises(RevisionConflict):
        await registry.put_status(
            replace(STATUS, state=VmState.ERROR),
            if_mod_revision=0,
            spec_revision=server.spec_revision,
        )
    assert not (await registry.coordinator.get_prefix(SERVERS)).items


async def test_writes_under_a_stale_registration_are_fenced(
    make_coordinator: CoordinatorFactory,
) -> None:
    """A host whose registration key went (lease expired) or was made again has its writes
    refused, placements and statuses alike, and nothing it wrote lands."""
    c = make_coordinator()
    registry = Registry(c)
    await registry.create_group(GROUP)
    token = await c.create(host_key("h0"), b"h0")
    assert token is not None
    guard = Guard(key=host_key("h0"), create_revision=token)
    group, _ = await registry.group_for_placement("g1")
    await registry.place(group, SPEC, spec_revision=0, guard=guard)
    server = await registry.require_server("vm1")
    written = await registry.put_status(
        STATUS, if_mod_revision=0, spec_revision=server.spec_revision, guard=guard
    )
    await c.delete(host_key("h0"))
    await c.create(host_key("h0"), b"h0 again")  # registered again: a new token
    with pytest.raises(FencingError, match="fencing token is stale"):
        await registry.put_status(
            replace(STATUS, state=VmState.PAUSED),
            if_mod_revision=written,
            spec_revision=server.spec_revision,
            guard=guard,
        )
    group, _ = await registry.group_for_placement("g1")
    with pytest.raises(FencingError, match="placing server vm1 refused: fencing token is stale"):
        await registry.place(
            group, replace(SPEC, host="h1"), spec_revision=server.spec_revision, guard=guard
        )
    after = await registry.require_server("vm1")
    assert after.spec == SPEC
    assert after.status == STATUS
