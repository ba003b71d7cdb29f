"""The transaction part of the coordination contract, on every backend.

Conditional puts and deletes (compare on the key's mod revision), multi-key
transactions with compares and operations, and the read-modify-write they
make safe: concurrent increments by several clients lose no update. The etcd
side runs against a real etcd process (fixture `etcd_server`).
"""

from __future__ import annotations

import asyncio
import random

import pytest

from servergroup.coordination import (
    Compare,
    CoordinationError,
    Coordinator,
    Delete,
    EventKind,
    FencingError,
    Get,
    Guard,
    LeaseNotFound,
    Put,
    RevisionConflict,
    WatchEvent,
)
from tests.fixtures.coordinators import CoordinatorFactory

pytestmark = pytest.mark.timeout(60)


async def test_put_if_mod_revision(coordinator: Coordinator) -> None:
    r1 = await coordinator.put("k", b"1", if_mod_revision=0)  # create: must be absent
    with pytest.raises(RevisionConflict, match="changed since revision 0"):
        await coordinator.put("k", b"x", if_mod_revision=0)
    r2 = await coordinator.put("k", b"2", if_mod_revision=r1)
    assert r2 > r1
    with pytest.raises(RevisionConflict):
        await coordinator.put("k", b"3", if_mod_revision=r1)  # stale read
    kv = await coordinator.get("k")
    assert kv is not None
    assert (kv.value, kv.mod_revision, kv.version) == (b"2", r2, 2)


async def test_put_if_mod_revision_reports_own_earlier_write(coordinator: Coordinator) -> None:
    # What a retry after a lost answer sees: the key already holds our value.
    r1 = await coordinator.put("k", b"1")
    r2 = await coordinator.put("k", b"2", if_mod_revision=r1)
    assert await coordinator.put("k", b"2", if_mod_revision=r1) == r2


async def test_delete_if_mod_revision(coordinator: Coordinator) -> None:
    r1 = await coordinator.put("k", b"1")
    await coordinator.put("k", b"2")
    with pytest.raises(RevisionConflict):
        await coordinator.delete("k", if_mod_revision=r1)
    kv = await coordinator.get("k")
    assert kv is not None
    assert await coordinator.delete("k", if_mod_revision=kv.mod_revision) is True
    assert await coordinator.get("k") is None


async def test_guard_and_revision_both_checked(coordinator: Coordinator) -> None:
    token = await coordinator.create("owner", b"me")
    assert token is not None
    r = await coordinator.put("k", b"1")
    guard = Guard(key="owner", create_revision=token)
    r2 = await coordinator.put("k", b"2", guard=guard, if_mod_revision=r)
    await coordinator.delete("owner")
    with pytest.raises(FencingError):
        await coordinator.put("k", b"3", guard=guard, if_mod_revision=r2)
    with pytest.raises(FencingError):
        await coordinator.delete("k", guard=guard, if_mod_revision=r2)


async def test_txn_success_branch_is_atomic_at_one_revision(coordinator: Coordinator) -> None:
    r0 = await coordinator.put("a", b"0")
    start = (await coordinator.get_prefix("")).revision + 1
    watch = await coordinator.watch("", start_revision=start)
    result = await coordinator.txn(
        [Compare.unchanged("a", r0), Compare.absent("b")],
        [Put(key="a", value=b"1"), Put(key="b", value=b"1"), Delete(key="c"), Get(key="a")],
        [Get(key="a")],
    )
    assert result.succeeded
    assert result.reads["a"] is not None
    assert result.reads["a"].value == b"1"
    assert result.deleted == frozenset()
    a, b = await coordinator.get("a"), await coordinator.get("b")
    assert a is not None
    assert b is not None
    assert a.mod_revision == b.mod_revision == result.revision
    events: list[WatchEvent] = []
    async with asyncio.timeout(5):
        async for event in watch:
            events.append(event)
            if len(events) == 2:
                break
    await watch.close()
    assert [(e.kind, e.key, e.revision) for e in events] == [
        (EventKind.PUT, "a", result.revision),
        (EventKind.PUT, "b", result.revision),
    ]


async def test_txn_failure_branch_when_any_compare_fails(coordinator: Coordinator) -> None:
    r0 = await coordinator.put("a", b"0")
    await coordinator.put("b", b"0")
    before = (await coordinator.get_prefix("")).revision
    result = await coordinator.txn(
        [Compare.unchanged("a", r0), Compare.absent("b")],
        [Put(key="a", value=b"1")],
        [Get(key="a"), Get(key="b"), Get(key="nothing")],
    )
    assert not result.succeeded
    assert result.revision == before  # reads only: nothing written
    assert result.reads["a"] is not None
    assert result.reads["a"].value == b"0"
    assert result.reads["nothing"] is None
    kv = await coordinator.get("a")
    assert kv is not None
    assert kv.value == b"0"


async def test_txn_compares_value_version_and_create(coordinator: Coordinator) -> None:
    token = await coordinator.create("owner", b"me")
    assert token is not None
    await coordinator.put("v", b"x")
    await coordinator.put("v", b"y")
    ok = await coordinator.txn(
        [
            Compare.value_is("v", b"y"),
            Compare.created_at("owner", token),
            Compare.held(Guard(key="owner", create_revision=token)),
        ],
        [Delete(key="v")],
    )
    assert ok.succeeded
    assert ok.deleted == frozenset({"v"})
    # A value compare on an absent key never holds (as etcd: no value to compare).
    missing = await coordinator.txn([Compare.value_is("v", b"")], [Put(key="z", value=b"")])
    assert not missing.succeeded
    assert await coordinator.get("z") is None


async def test_txn_refuses_writing_a_key_twice(coordinator: Coordinator) -> None:
    with pytest.raises(CoordinationError):
        await coordinator.txn([], [Put(key="a", value=b"1"), Delete(key="a")])
    assert await coordinator.get("a") is None


async def test_txn_with_unknown_lease_writes_nothing(coordinator: Coordinator) -> None:
    with pytest.raises(LeaseNotFound):
        await coordinator.txn([], [Put(key="a", value=b"1"), Put(key="b", value=b"1", lease=1)])
    assert await coordinator.get("a") is None


async def test_concurrent_increments_lose_no_update(make_coordinator: CoordinatorFactory) -> None:
    """Eight clients increment one counter by read-modify-write; every ack is counted.

    Each client also appends its increments to a per-client history key in the
    same transaction, so the history must account for every value exactly once.
    """
    clients = [make_coordinator() for _ in range(8)]
    per_client = 15
    acked: list[int] = []
    conflicts = 0

    async def worker(index: int, c: Coordinator) -> None:
        nonlocal conflicts
        rng = random.Random(index)
        done = 0
        while done < per_client:
            kv = await c.get("counter")
            value = int(kv.value) if kv else 0
            mine = await c.get(f"log/{index}")
            log = mine.value if mine else b""
            result = await c.txn(
                [
                    Compare.unchanged("counter", kv.mod_revision if kv else 0),
                    Compare.unchanged(f"log/{index}", mine.mod_revision if mine else 0),
                ],
                [
                    Put(key="counter", value=str(value + 1).encode()),
                    Put(key=f"log/{index}", value=log + f"{value + 1},".encode()),
                ],
            )
            if result.succeeded:
                acked.append(value + 1)
                done += 1
            else:
                conflicts += 1
                await asyncio.sleep(rng.random() * 0.002)

    await asyncio.gather(*(worker(i, c) for i, c in enumerate(clients)))
    total = 8 * per_client
    kv = await clients[0].get("counter")
    assert kv is not None
    assert int(kv.value) == total
    assert sorted(acked) == list(range(1, total + 1))
    logged: list[int] = []
    for i in range(8):
        mine = await clients[0].get(f"log/{i}")
        assert mine is not None
        logged += [int(x) for x in mine.value.decode().split(",") if x]
    assert sorted(logged) == list(range(1, total + 1))
    assert conflicts > 0  # they did race
