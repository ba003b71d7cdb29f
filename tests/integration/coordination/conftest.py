"""Coordinator fixtures: the same contract, against memory and a real etcd."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from servergroup.config import CoordinationConfig
from servergroup.coordination import Coordinator, EtcdCoordinator, MemoryCoordinator, MemoryStore

CONFIG = CoordinationConfig()

CoordinatorFactory = Callable[[], Coordinator]


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
