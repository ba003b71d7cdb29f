"""Ownership and sessions on both backends: takeover, resign, self-fencing, regain."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from servergroup.config import CoordinationConfig
from servergroup.coordination import (
    MemoryCoordinator,
    MemoryStore,
    NotOwner,
    Ownership,
    OwnershipAcquired,
    OwnershipLost,
    Session,
    SessionState,
)
from tests.fixtures.coordinators import CoordinatorFactory
from tests.fixtures.wait import eventually

CONFIG = CoordinationConfig()


async def contender(make: CoordinatorFactory, name: str) -> tuple[Session, Ownership]:
    session = Session(make(), CONFIG, name=name)
    await session.start(timeout=5.0)
    ownership = Ownership(session, "owners/svc", name.encode())
    ownership.start()
    return session, ownership


async def one_owner(
    contenders: list[tuple[Session, Ownership]], timeout: float = 5.0
) -> tuple[Session, Ownership]:
    """The contender that becomes owner, checking at every look that no two own at once."""

    def owner() -> tuple[Session, Ownership] | None:
        owners = [c for c in contenders if c[1].is_owner()]
        assert len(owners) <= 1, "two owners at once"
        return owners[0] if owners else None

    found: tuple[Session, Ownership] = await eventually(
        owner, "a contender becoming owner", timeout, interval=0.01
    )
    return found


async def test_exactly_one_owner_and_takeover_after_death(
    make_coordinator: CoordinatorFactory,
) -> None:
    contenders = [await contender(make_coordinator, f"c{i}") for i in range(3)]
    try:
        session, ownership = await one_owner(contenders)
        token = ownership.token
        assert token is not None
        # Die without resigning: stop renewing, keep the lease.
        assert session._task is not None
        session._task.cancel()
        assert ownership._task is not None
        ownership._task.cancel()
        rest = [c for c in contenders if c[0] is not session]
        started = time.monotonic()
        _, successor = await one_owner(rest, timeout=CONFIG.lease_ttl + 3.0)
        took = time.monotonic() - started
        assert successor.token is not None
        assert successor.token > token
        assert took < CONFIG.lease_ttl + 1.5
    finally:
        for s, o in contenders:
            await o.resign()
            await s.close()


async def test_resign_hands_over_at_once(make_coordinator: CoordinatorFactory) -> None:
    contenders = [await contender(make_coordinator, f"c{i}") for i in range(2)]
    try:
        session, ownership = await one_owner(contenders)
        token = ownership.token
        await ownership.resign()
        assert not ownership.is_owner()
        with pytest.raises(NotOwner):
            ownership.guard()
        rest = [c for c in contenders if c[0] is not session]
        _, successor = await one_owner(rest, timeout=2.0)
        assert successor.token is not None
        assert token is not None
        assert successor.token > token
    finally:
        for s, o in contenders:
            await o.resign()
            await s.close()


async def test_store_outage_self_fences_before_expiry_then_regains_same_token() -> None:
    """A short outage: SUSPENDED at the fencing deadline, same lease and token after."""
    store = MemoryStore()
    config = CoordinationConfig(lease_ttl=2, renew_interval=0.2, fence_margin=0.3)
    session = Session(MemoryCoordinator(store), config, name="solo")
    await session.start()
    ownership = Ownership(session, "owners/svc", b"solo")
    ownership.start()
    events: asyncio.Queue[Any] = asyncio.Queue()

    async def record() -> None:
        async for ev in ownership.events():
            events.put_nowait(ev)

    recorder = asyncio.create_task(record())
    try:
        token = await ownership.wait_owner(2.0)
        assert isinstance(await asyncio.wait_for(events.get(), 1.0), OwnershipAcquired)
        store.available = False
        down_at = time.monotonic()
        lost = await asyncio.wait_for(events.get(), 3.0)
        assert isinstance(lost, OwnershipLost)
        assert not ownership.is_owner()
        assert session.state is SessionState.SUSPENDED
        # Stopped before the store could expire the lease (2 s after the last renewal).
        assert time.monotonic() - down_at < config.lease_ttl - 0.2
        store.available = True
        regained = await asyncio.wait_for(events.get(), 3.0)
        assert isinstance(regained, OwnershipAcquired)
        assert regained.token == token
        assert ownership.token == token
    finally:
        recorder.cancel()
        await ownership.resign()
        await session.close()
        await store.close()


async def test_long_outage_loses_lease_and_wins_again_with_new_token() -> None:
    store = MemoryStore()
    session = Session(MemoryCoordinator(store), CONFIG, name="solo")
    await session.start()
    ownership = Ownership(session, "owners/svc", b"solo")
    ownership.start()
    try:
        token = await ownership.wait_owner(2.0)
        first_lease = session.lease_id
        store.available = False
        await session.wait_for(SessionState.LOST, timeout=3.0)
        assert not ownership.is_owner()
        store.available = True
        await session.wait_for(SessionState.CONNECTED, timeout=3.0)
        assert session.lease_id != first_lease
        new = await ownership.wait_owner(3.0)
        assert new > token
    finally:
        await ownership.resign()
        await session.close()
        await store.close()
