"""`servergroup host`: the daemon that runs on every host.

It joins, in one asyncio process:

- a **session** on etcd, whose lease carries this host's record
  `hosts/<name>`: while the daemon lives the record exists; when it dies the
  lease expires and every other host learns that its servers are lost;
- the **channel relay** (`guestcomm.relay`): one stream per guest found in the
  channel directory, and the host's abstract `cgcs.messaging` for host tools;
- the **group service** (`groups.service`): broadcast, status, notifications;
- the **server manager** (`servers.manager`): carries out the lifecycle of
  the servers the registry puts on this host, through a server driver.

The daemon owns no state of its own: everything it needs after a restart is
in etcd (the registry) or observable (running servers), so a restart loses
nothing and guests reconnect by themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from servergroup.common.errors import LocalError, ProcessFailed
from servergroup.config import Config, Endpoint
from servergroup.coordination import (
    CoordinationError,
    EtcdCoordinator,
    Session,
    SessionState,
)
from servergroup.groups.service import GroupService
from servergroup.guestcomm.protocol import MESSAGING_ADDR
from servergroup.guestcomm.relay import ChannelRelay
from servergroup.servers.drivers.registry import DriverContext, DriverKind, build_drivers
from servergroup.servers.manager import ServerManager
from servergroup.servers.model import HostRecord, check_name, decode_host, encode_record
from servergroup.servers.registry import Registry, RegistryCache, host_key

log = logging.getLogger(__name__)

#: The server drivers a host can have.
DRIVERS = tuple(DriverKind)

#: Where libvirt puts the channel sockets of its guests (spec section 2).
DEFAULT_CHANNEL_DIR = Path("/var/lib/libvirt/qemu")


class HostNameTaken(LocalError):
    """Another live host daemon already serves under this name."""


@dataclass(frozen=True, slots=True, kw_only=True)
class HostOptions:
    """What one host daemon serves."""

    name: str
    channel_dir: Path = DEFAULT_CHANNEL_DIR
    address: str = MESSAGING_ADDR
    drivers: tuple[DriverKind, ...] = DRIVERS
    #: The address of this host a live migration's source connects to (qemu servers).
    migration_address: str = "127.0.0.1"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


async def run_host(
    config: Config,
    options: HostOptions,
    *,
    endpoints: tuple[Endpoint, ...],
    ready: Callable[[], None] | None = None,
) -> None:
    """Serve as host `options.name` until cancelled; `ready()` once registered."""
    check_name("host", options.name)
    if not options.drivers:
        raise LocalError(f"a host needs a server driver: {', '.join(k.value for k in DRIVERS)}")
    try:
        options.channel_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LocalError(
            f"cannot use channel directory {options.channel_dir}: {exc.strerror}"
        ) from None
    coordination = config.coordination
    coordinator = EtcdCoordinator(endpoints, prefix=coordination.prefix, config=coordination)
    session = Session(coordinator, coordination, name=f"host {options.name}")
    record = HostRecord(
        name=options.name,
        channel_dir=str(options.channel_dir.resolve()),
        pid=os.getpid(),
        started_at=now_iso(),
        drivers=options.drivers,
    )
    stack = contextlib.AsyncExitStack()
    async with stack:
        stack.push_async_callback(coordinator.close)
        try:
            await session.start(timeout=coordination.operation_timeout)
        except CoordinationError as exc:
            raise ProcessFailed(
                f"host {options.name} cannot reach etcd at "
                f"{', '.join(str(e) for e in endpoints)}: {exc}"
            ) from None
        stack.push_async_callback(session.close)
        registry = Registry(coordinator)
        await _claim_name(coordinator, session, record, coordination.lease_ttl)
        cache = RegistryCache(coordinator)
        await cache.start()
        stack.push_async_callback(cache.stop)

        relay = ChannelRelay(options.channel_dir, address=options.address)
        service = GroupService(coordinator=coordinator, cache=cache, relay=relay, host=options.name)
        drivers = build_drivers(
            options.drivers,
            DriverContext(
                state_dir=config.state_dir,
                host=options.name,
                channel_dir=options.channel_dir,
                migration_address=options.migration_address,
            ),
        )
        for driver in drivers:
            stack.push_async_callback(driver.close)
        manager = ServerManager(
            registry=registry,
            cache=cache,
            drivers=drivers,
            host=options.name,
            channel_dir=options.channel_dir,
        )
        await service.start()
        stack.push_async_callback(service.stop)
        await relay.start()
        stack.push_async_callback(relay.stop)
        await manager.start()
        stack.push_async_callback(manager.stop)
        keeper = asyncio.create_task(_keep_registered(coordinator, session, record))
        stack.push_async_callback(_cancel, keeper)
        log.info(
            "host %s serving: channel dir %s, host address %s, etcd %s",
            options.name,
            options.channel_dir,
            options.address,
            ", ".join(str(e) for e in endpoints),
        )
        if ready is not None:
            ready()
        await asyncio.Event().wait()  # until cancelled


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _claim_name(
    coordinator: EtcdCoordinator, session: Session, record: HostRecord, ttl: int
) -> None:
    """Create `hosts/<name>` on our lease; wait out a dead predecessor's lease."""
    key = host_key(record.name)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 2 * ttl + 1.5
    while True:
        token = await coordinator.create(key, encode_record(record), lease=session.lease_id)
        if token is not None:
            return
        kv = await coordinator.get(key)
        if kv is not None and kv.lease == session.lease_id:
            return
        if loop.time() >= deadline:
            other = ""
            if kv is not None:
                with contextlib.suppress(Exception):
                    other = f" (pid {decode_host(kv.value).pid})"
            raise HostNameTaken(
                f"another host daemon named {record.name!r} is running{other}; "
                "stop it or choose another --name"
            )
        await asyncio.sleep(0.1)


async def _keep_registered(
    coordinator: EtcdCoordinator, session: Session, record: HostRecord
) -> None:
    """Put the host record back on the new lease after the session lost its old one."""
    changes = session.listen()
    registered = session.lease_id
    try:
        while True:
            if session.state is SessionState.CONNECTED and session.lease_id != registered:
                try:
                    await coordinator.put(
                        host_key(record.name), encode_record(record), lease=session.lease_id
                    )
                    registered = session.lease_id
                    log.warning("host %s registered again on a new lease", record.name)
                except CoordinationError as exc:
                    log.warning("cannot register host %s again yet: %s", record.name, exc)
                    await asyncio.sleep(0.5)
                    continue
            await changes.get()
    finally:
        session.unlisten(changes)


__all__ = ["DEFAULT_CHANNEL_DIR", "HostNameTaken", "HostOptions", "run_host"]
