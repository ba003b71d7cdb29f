"""The coordination contract of ARCHITECTURE.md, run against every backend.

The etcd side runs against a real etcd process (fixture `etcd_server`).
"""

from __future__ import annotations

import asyncio

import pytest

from servergroup.coordination import (
    Coordinator,
    EventKind,
    FencingError,
    Guard,
    LeaseNotFound,
    MemoryCoordinator,
    MemoryStore,
    WatchCompacted,
    WatchEvent,
)
from tests.fixtures.coordinators import CoordinatorFactory


async def collect(watch: object, n: int, timeout: float = 5.0) -> list[WatchEvent]:
    events: list[WatchEvent] = []

    async def run() -> None:
        async for ev in watch:  # type: ignore[attr-defined]
            events.append(ev)
            if len(events) >= n:
                return

    await asyncio.wait_for(run(), timeout)
    return events


async def test_put_get_revisions(coordinator: Coordinator) -> None:
    assert await coordinator.get("a") is None
    r1 = await coordinator.put("a", b"1")
    r2 = await coordinator.put("a", b"2")
    assert r2 > r1
    kv = await coordinator.get("a")
    assert kv is not None
    assert (kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version) == (
        "a",
        b"2",
        r1,
        r2,
        2,
    )


async def test_get_prefix_sorted_with_read_revision(coordinator: Coordinator) -> None:
    await coordinator.put("p/b", b"2")
    await coordinator.put("p/a", b"1")
    last = await coordinator.put("q/x", b"3")
    r = await coordinator.get_prefix("p/")
    assert [kv.key for kv in r.items] == ["p/a", "p/b"]
    assert r.revision >= last


async def test_delete_and_delete_prefix(coordinator: Coordinator) -> None:
    await coordinator.put("d/1", b"")
    await coordinator.put("d/2", b"")
    await coordinator.put("e", b"")
    assert await coordinator.delete("e") is True
    assert await coordinator.delete("e") is False
    assert await coordinator.delete_prefix("d/") == 2
    assert (await coordinator.get_prefix("d/")).items == ()


async def test_create_if_absent_returns_fencing_token(coordinator: Coordinator) -> None:
    token = await coordinator.create("owner", b"me")
    assert token is not None
    assert await coordinator.create("owner", b"you") is None
    kv = await coordinator.get("owner")
    assert kv is not None
    assert kv.create_revision == token
    assert kv.value == b"me"
    await coordinator.delete("owner")
    second = await coordinator.create("owner", b"you")
    assert second is not None
    assert second > token


async def test_create_retry_by_same_holder_gets_same_token(coordinator: Coordinator) -> None:
    lease = await coordinator.grant(5)
    token = await coordinator.create("owner", b"me", lease=lease.id)
    assert await coordinator.create("owner", b"me", lease=lease.id) == token
    assert await coordinator.create("owner", b"other", lease=lease.id) is None
    await coordinator.revoke(lease.id)


async def test_guarded_writes_refuse_stale_tokens(coordinator: Coordinator) -> None:
    token = await coordinator.create("owner", b"me")
    assert token is not None
    guard = Guard(key="owner", create_revision=token)
    await coordinator.put("resource", b"ok", guard=guard)
    await coordinator.delete("owner")
    with pytest.raises(FencingError):
        await coordinator.put("resource", b"stale", guard=guard)
    new = await coordinator.create("owner", b"next")
    assert new is not None
    with pytest.raises(FencingError):
        await coordinator.delete("resource", guard=guard)
    await coordinator.put("resource", b"fresh", guard=Guard(key="owner", create_revision=new))
    kv = await coordinator.get("resource")
    assert kv is not None
    assert kv.value == b"fresh"


async def test_lease_expiry_deletes_attached_keys(coordinator: Coordinator) -> None:
    lease = await coordinator.grant(1)
    assert lease.ttl >= 1
    await coordinator.put("live", b"x", lease=lease.id)
    assert await coordinator.keep_alive(lease.id) >= 1
    kv = await coordinator.get("live")
    assert kv is not None
    assert kv.lease == lease.id
    deadline = asyncio.get_running_loop().time() + lease.ttl + 2.0
    while await coordinator.get("live") is not None:
        assert asyncio.get_running_loop().time() < deadline, "lease did not expire"
        await asyncio.sleep(0.05)
    with pytest.raises(LeaseNotFound):
        await coordinator.keep_alive(lease.id)


async def test_keep_alive_keeps_keys(coordinator: Coordinator) -> None:
    lease = await coordinator.grant(1)
    await coordinator.put("live", b"x", lease=lease.id)
    for _ in range(8):
        await asyncio.sleep(0.25)
        await coordinator.keep_alive(lease.id)
    assert await coordinator.get("live") is not None
    await coordinator.revoke(lease.id)
    assert await coordinator.get("live") is None
    await coordinator.revoke(lease.id)  # already gone: not an error


async def test_put_with_unknown_lease_fails(coordinator: Coordinator) -> None:
    lease = await coordinator.grant(1)
    await coordinator.revoke(lease.id)
    with pytest.raises(LeaseNotFound):
        await coordinator.put("k", b"v", lease=lease.id)


async def test_watch_orders_events_from_start_revision(coordinator: Coordinator) -> None:
    first = await coordinator.put("w/a", b"1")
    await coordinator.put("other", b"x")
    await coordinator.put("w/b", b"2")
    await coordinator.delete("w/a")
    watch = await coordinator.watch("w/", start_revision=first)
    try:
        events = await collect(watch, 3)
    finally:
        await watch.close()
    assert [(e.kind, e.key, e.value) for e in events] == [
        (EventKind.PUT, "w/a", b"1"),
        (EventKind.PUT, "w/b", b"2"),
        (EventKind.DELETE, "w/a", b""),
    ]
    assert [e.revision for e in events] == sorted(e.revision for e in events)


async def test_watch_events_number_the_values_of_a_key(coordinator: Coordinator) -> None:
    first = await coordinator.put("v/k", b"1")
    await coordinator.put("v/k", b"2")
    await coordinator.put("v/k", b"3")
    await coordinator.delete("v/k")
    await coordinator.put("v/k", b"again")
    watch = await coordinator.watch("v/", start_revision=first)
    try:
        events = await collect(watch, 5)
    finally:
        await watch.close()
    assert [(e.kind, e.version) for e in events] == [
        (EventKind.PUT, 1),
        (EventKind.PUT, 2),
        (EventKind.PUT, 3),
        (EventKind.DELETE, 0),
        (EventKind.PUT, 1),
    ]


async def test_watch_sees_live_changes_and_lease_expiry(coordinator: Coordinator) -> None:
    start = (await coordinator.get_prefix("")).revision + 1
    watch = await coordinator.watch("live/", start_revision=start)
    try:
        lease = await coordinator.grant(1)
        await coordinator.put("live/k", b"v", lease=lease.id)
        events = await collect(watch, 2, timeout=5.0)
    finally:
        await watch.close()
    assert [e.kind for e in events] == [EventKind.PUT, EventKind.DELETE]


async def test_two_clients_share_one_store(make_coordinator: CoordinatorFactory) -> None:
    a, b = make_coordinator(), make_coordinator()
    await a.put("shared", b"from a")
    kv = await b.get("shared")
    assert kv is not None
    assert kv.value == b"from a"
    token = await a.create("own", b"a")
    assert token is not None
    assert await b.create("own", b"b") is None


async def test_closed_watch_ends_iteration(coordinator: Coordinator) -> None:
    watch = await coordinator.watch("x/", start_revision=1)
    await watch.close()
    assert await collect(watch, 1, timeout=2.0) == []


async def test_memory_watch_from_compacted_revision_fails_clearly() -> None:
    """Memory-only: etcd compaction is exercised by etcd itself, not by us."""
    store = MemoryStore()
    c = MemoryCoordinator(store, prefix="/t/")
    first = await c.put("k", b"1")
    last = await c.put("k", b"2")
    store.compact(last)
    with pytest.raises(WatchCompacted) as caught:
        await c.watch("k", start_revision=first)
    assert caught.value.compact_revision == last - 1
    watch = await c.watch("k", start_revision=last)
    assert [e.value for e in await collect(watch, 1)] == [b"2"]
    await watch.close()
    await c.close()
    await store.close()
