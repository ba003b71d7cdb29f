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
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from servergroup.common.clock import Clock, SystemClock
from servergroup.common.process import stop_process_async
from servergroup.config import CoordinationConfig, Endpoint
from servergroup.coordination.connect import connect
from servergroup.coordination.election import Ownership, OwnershipAcquired
from servergroup.coordination.errors import CoordinationError, FencingError, StoreUnavailable
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
    coordinator = connect(config, endpoints=endpoints, clock=clock)
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
        with contextlib.suppress(CoordinationError, TimeoutError):
            async with asyncio.timeout(2.0):
                await ownership.resign()
        await session.close()
        await coordinator.close()


class ContenderProcess:
    """A `servergroup election contend` subprocess, with its event lines in a queue."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process) -> None:
        self.name = name
        self.proc = proc
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def spawn(
        cls, key: str, name: str, *, endpoints: Sequence[Endpoint], config: CoordinationConfig
    ) -> ContenderProcess:
        """Start a contender for `key` against `endpoints` with `config`'s prefix and TTL."""
        env: Mapping[str, str] = {
            **os.environ,
            "SERVERGROUP_ETCD_ENDPOINTS": ",".join(str(e) for e in endpoints),
            "SERVERGROUP_PREFIX": config.prefix,
            "SERVERGROUP_LEASE_TTL": str(config.lease_ttl),
            "SERVERGROUP_ETCD_CA": config.ca_file,
            "SERVERGROUP_ETCD_CERT": config.cert_file,
            "SERVERGROUP_ETCD_KEY": config.key_file,
            "SERVERGROUP_ETCD_INSECURE": "1" if config.insecure else "0",
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "servergroup",
            "election",
            "contend",
            key,
            "--name",
            name,
            env=dict(env),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        return cls(name, proc)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self.events.put_nowait(json.loads(raw))

    async def next_event(self, kind: str) -> dict[str, Any]:
        """The next event line of this `kind` (earlier lines of other kinds are dropped)."""
        while True:
            ev = await self.events.get()
            if ev.get("event") == kind:
                return ev

    async def kill(self) -> None:
        """SIGKILL: the contender cannot resign; its lease has to expire."""
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        await self.proc.wait()

    async def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM (it resigns and revokes its lease), SIGKILL after `timeout`."""
        if self.proc.returncode is None:  # our child, not yet reaped: its PID is still its own
            await stop_process_async(self.proc.pid, term_timeout=timeout)
            await self.proc.wait()
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)


async def first_event(
    contenders: Sequence[ContenderProcess], kind: str, timeout: float
) -> tuple[ContenderProcess, dict[str, Any]]:
    """The first of `contenders` to report an event of `kind`, and that event."""
    tasks = {asyncio.ensure_future(c.next_event(kind)): c for c in contenders}
    try:
        done, _ = await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if not done:
            raise StoreUnavailable(f"no contender reported '{kind}' within {timeout:g} s.")
        task = next(iter(done))
        return tasks[task], task.result()
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


__all__ = [
    "OWNER_PREFIX",
    "WORK_PREFIX",
    "ContenderProcess",
    "emit",
    "first_event",
    "run_contender",
]
