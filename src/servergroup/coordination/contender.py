"""A contender process: campaign for one key and, while owner, do guarded work.

This is the smallest complete user of the coordination layer, used by
`servergroup election contend`, the demo, the benchmark and the fault tests.
It prints one JSON object per line on `out`, flushed at once, so that a
parent process (or an operator) sees every step as it happens:

    {"event": "session", "state": "connected", ...}
    {"event": "acquired", "token": 42, ...}
    {"event": "acted", "token": 42, "seq": 7, ...}   # a guarded write succeeded
    {"event": "refused", "token": 42, ...}           # the store refused a stale token
    {"event": "lost", "token": 42, "reason": "...", ...}

Every line carries `mono` (CLOCK_MONOTONIC, comparable between processes on
one machine) and `wall` (for people).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Sequence
from typing import Any, TextIO

from servergroup.common.clock import Clock, SystemClock
from servergroup.config import CoordinationConfig, Endpoint
from servergroup.coordination.election import Ownership, OwnershipAcquired
from servergroup.coordination.errors import CoordinationError, FencingError
from servergroup.coordination.etcd import EtcdCoordinator
from servergroup.coordination.keeper import Session

OWNER_PREFIX = "owners/"
WORK_PREFIX = "work/"


def emit(out: TextIO, clock: Clock, event: str, **fields: Any) -> None:
    """Write one event line and flush it."""
    record = {"event": event, "mono": round(clock.monotonic(), 6), "wall": round(clock.wall(), 6)}
    record.update(fields)
    out.write(json.dumps(record, sort_keys=True) + "\n")
    out.flush()


async def run_contender(
    *,
    endpoints: Sequence[Endpoint],
    config: CoordinationConfig,
    key: str,
    name: str,
    out: TextIO,
    work_interval: float = 0.05,
    clock: Clock | None = None,
) -> None:
    """Campaign for `OWNER_PREFIX + key` until cancelled, reporting on `out`."""
    clock = clock or SystemClock()
    coordinator = EtcdCoordinator(endpoints, prefix=config.prefix, config=config, clock=clock)
    session = Session(coordinator, config, clock=clock, name=name)
    await session.start(timeout=config.operation_timeout)
    changes = session.listen()
    emit(out, clock, "session", state=session.state.value, lease=session.lease_id, name=name)
    ownership = Ownership(session, OWNER_PREFIX + key, name.encode())
    ownership.start()

    async def report_session() -> None:
        while True:
            ev = await changes.get()
            emit(out, clock, "session", state=ev.state.value, lease=ev.lease_id, reason=ev.reason)

    async def report_ownership() -> None:
        async for ev in ownership.events():
            if isinstance(ev, OwnershipAcquired):
                emit(out, clock, "acquired", token=ev.token, name=name)
            else:
                emit(out, clock, "lost", token=ev.token, reason=ev.reason, name=name)

    async def work() -> None:
        seq = 0
        while True:
            await clock.sleep(work_interval)
            token = ownership.token
            if token is None:
                continue
            seq += 1
            body = json.dumps({"name": name, "token": token, "seq": seq}).encode()
            try:
                await coordinator.put(WORK_PREFIX + key, body, guard=ownership.guard())
            except FencingError:
                emit(out, clock, "refused", token=token, seq=seq, name=name)
            except CoordinationError:
                continue
            else:
                emit(out, clock, "acted", token=token, seq=seq, name=name)

    tasks = [
        asyncio.create_task(report_session()),
        asyncio.create_task(report_ownership()),
        asyncio.create_task(work()),
    ]
    try:
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(CoordinationError, asyncio.TimeoutError):
            await asyncio.wait_for(ownership.resign(), 2.0)
        await session.close()
        await coordinator.close()


__all__ = ["OWNER_PREFIX", "WORK_PREFIX", "emit", "run_contender"]
