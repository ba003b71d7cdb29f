"""Coordinator fixtures: the same contract, against memory and a real etcd."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

import pytest

from servergroup.config import CoordinationConfig

CONFIG = CoordinationConfig()


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
