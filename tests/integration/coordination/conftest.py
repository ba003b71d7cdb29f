"""Coordinator fixtures: the same contract, against memory and a real etcd."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from servergroup.config import CoordinationConfig
from servergroup.coordination import Coordinator, EtcdCoordinator, MemoryCoordinator, MemoryStore

CONFIG = CoordinationConfig()

CoordinatorFactory = Callable[[], Coordinator]


@pytest.fixture(autouse=True)
async def dump_tasks_before_timeout(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """Print every asyncio task's stack shortly before pytest-timeout fires.

    pytest-timeout shows only the event loop's poll; when a test hangs on an
    await, the stacks of the tasks say which one.
    """
    marker = request.node.get_closest_marker("timeout")
    limit = (
        float(marker.args[0])
        if marker and marker.args
        else float(request.config.getini("timeout") or 120)
    )

    async def watchdog() -> None:
        await asyncio.sleep(max(1.0, limit - 5.0))
        print(f"\n--- asyncio tasks of {request.node.nodeid} ---", file=sys.stderr)
        for task in asyncio.all_tasks():
            task.print_stack(limit=8, file=sys.stderr)

    dog = asyncio.ensure_future(watchdog())
    yield
    dog.cancel()


@pytest.fixture(params=["memory", "etcd"])
async def make_coordinator(
    request: pytest.FixtureRequest,
) -> AsyncIterator[CoordinatorFactory]:
    """A factory of clients of one store (several clients share it), per backend."""
    made: list[Any] = []
    if request.param == "memory":
        store = MemoryStore()

        def make() -> Coordinator:
            c = MemoryCoordinator(store, prefix="/sgtest/memory/")
            made.append(c)
            return c

        yield make
        for c in made:
            await c.close()
        await store.close()
    else:
        server = request.getfixturevalue("etcd_server")
        prefix = request.getfixturevalue("etcd_prefix")

        def make() -> Coordinator:
            c = EtcdCoordinator(server.endpoints, prefix=prefix, config=CONFIG)
            made.append(c)
            return c

        yield make
        if made:
            await made[0].delete_prefix("")
        for c in made:
            await c.close()


@pytest.fixture
def coordinator(make_coordinator: CoordinatorFactory) -> Coordinator:
    return make_coordinator()
