"""`servergroup host`: the daemon that runs on every host.

Theory of operation. The daemon is a list of components (the protocol of
`common.component`) around a shared context:

- the **shared context** (`HostShared`), made first and closed last: one
  etcd client, a **session** whose lease carries this host's record
  `registry/hosts/<name>` (claimed at start, put back on a new lease after
  the session lost its old one: while the daemon lives the record exists,
  when it dies the lease expires and every other host learns that its
  servers are lost), the typed `Registry` and the `RegistryCache` that
  follows `registry/`;
- the **components**, built by `build_components` from the configuration
  through the factories of `COMPONENTS`, in order: the **exec brokers** of
  the qemu servers (`servers.drivers.qemu.execbroker`), the **channel relay**
  (`guestcomm.relay`: one stream per guest found in the channel directory,
  and the host's abstract `cgcs.messaging` for host tools), the **group
  service** (`groups.service`: broadcast, status, notifications; it watches
  `broadcasts/<group>/` of the groups with a server here) and the **server
  manager** (`servers.manager`: the lifecycle of the servers the registry
  puts on this host, through the server drivers), the **evacuator** and the
  **scaler** (`scaling.scaler`: `servergroup scale` requests for the servers
  here, their vCPUs' places in the host's CPU pool, the guests' boot sync),
  the **autoscaler** (`scaling.autoscaler`: the scaling policies of the
  servers here, carried out through the scaler) and the service manager's
  **node role** (`services.node`: the service instances placement gives this
  host, run through their OCF agents; off with `[services] enabled = false`),
  and last the **HTTP API** (`api.server`: the cluster's state, the CLI's
  actions and `/metrics`, on `[api] bind`:`port`; off with `[api] enabled =
  false`).

Components start in that order and stop in the reverse order, one log line
each; a component may use those before it. A capability that runs on a host
(scaling, the service manager's node role, the HTTP API) is one more entry
in `COMPONENTS`, not an edit of `run_host`. `HostDaemon.health()` is each
component's health view (and the session's); SIGUSR1 logs it.

The daemon owns no state of its own: everything it needs after a restart is
in etcd (the registry) or observable (running servers), so a restart loses
nothing and guests reconnect by themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar, cast

from servergroup.api.server import ApiServer
from servergroup.common.component import Component, ComponentHealth, HealthState
from servergroup.common.errors import LocalError, ProcessFailed
from servergroup.common.logsetup import log_bug
from servergroup.config import Config, Endpoint
from servergroup.coordination import (
    CoordinationError,
    Coordinator,
    EventKind,
    Guard,
    Session,
    SessionState,
    connect,
)
from servergroup.groups.service import GroupService
from servergroup.guestcomm.protocol import MESSAGING_ADDR
from servergroup.guestcomm.relay import ChannelRelay
from servergroup.scaling.autoscaler import Autoscaler
from servergroup.scaling.cpus import parse_cpu_list
from servergroup.scaling.scaler import Scaler
from servergroup.servers.drivers.base import ServerDriver
from servergroup.servers.drivers.qemu.execbroker import ExecBrokers
from servergroup.servers.drivers.registry import (
    Driver,
    DriverContext,
    DriverKind,
    build_drivers,
)
from servergroup.servers.evacuator import Evacuator
from servergroup.servers.manager import ServerManager
from servergroup.servers.model import HostRecord, check_name, decode_host, encode_record
from servergroup.servers.registry import Registry, RegistryCache, host_key
from servergroup.services.node import NodeRole, registry_group_hosts

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


# -- the shared context ------------------------------------------------------------------


class Registration:
    """This host's record in the store: the lease and create revision it was written with.

    `guard()` is the fence of every write the host makes for its servers: the
    record's key with the create revision of our own registration, while the
    session may act on the lease that record lives on. Once the lease is gone
    the store deletes the record, so a guarded write of a host that was frozen
    or cut off is refused; after registering again the host has a new token.
    """

    def __init__(self, session: Session, key: str) -> None:
        self.session = session
        self.key = key
        self.lease = 0
        self.token = 0

    def registered(self, lease: int, token: int) -> None:
        self.lease, self.token = lease, token

    def guard(self) -> Guard | None:
        """The guard for a write now; None while this host must not write."""
        session = self.session
        if not self.token or self.lease != session.lease_id:
            return None
        if session.state is not SessionState.CONNECTED or not session.may_act():
            return None
        return Guard(key=self.key, create_revision=self.token)


@dataclass(frozen=True, slots=True, kw_only=True)
class HostShared:
    """What every component of one host daemon may use; made before them, closed after."""

    coordinator: Coordinator
    session: Session
    record: HostRecord  # this host's record, kept at `registry/hosts/<name>` on the session
    registration: Registration  # the fence of this host's writes
    registry: Registry
    cache: RegistryCache  # follows `registry/`


@contextlib.asynccontextmanager
async def host_shared(
    config: Config, options: HostOptions, *, endpoints: tuple[Endpoint, ...]
) -> AsyncIterator[HostShared]:
    """Connect, open the session, claim `registry/hosts/<name>`, start the registry cache."""
    coordination = config.coordination
    coordinator = connect(config, endpoints=endpoints)
    session = Session(coordinator, coordination, name=f"host {options.name}")
    record = HostRecord(
        name=options.name,
        channel_dir=str(options.channel_dir.resolve()),
        pid=os.getpid(),
        started_at=now_iso(),
        drivers=options.drivers,
    )
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(coordinator.close)
        try:
            await session.start(timeout=coordination.operation_timeout)
        except CoordinationError as exc:
            raise ProcessFailed(
                f"host {options.name} cannot reach etcd at "
                f"{', '.join(str(e) for e in endpoints)}: {exc}"
            ) from None
        stack.push_async_callback(session.close)
        registration = Registration(session, host_key(record.name))
        token = await _claim_name(coordinator, session, record, coordination.lease_ttl)
        registration.registered(session.lease_id, token)
        cache = RegistryCache(coordinator)
        await cache.start()
        stack.push_async_callback(cache.stop)
        keeper = asyncio.create_task(_keep_registered(coordinator, registration, record))
        stack.push_async_callback(_cancel, keeper)
        yield HostShared(
            coordinator=coordinator,
            session=session,
            record=record,
            registration=registration,
            registry=Registry(coordinator),
            cache=cache,
        )


# -- the components ------------------------------------------------------------------------

_C = TypeVar("_C")


class Built:
    """The components built so far, for a factory whose component uses an earlier one."""

    def __init__(self) -> None:
        self.components: list[Component] = []

    def find(self, kind: type[_C]) -> _C | None:
        for component in self.components:
            if isinstance(component, kind):
                return component
        return None

    def one(self, kind: type[_C]) -> _C:
        found = self.find(kind)
        if found is None:
            raise LookupError(f"no {kind.__name__} component was built before the one asking")
        return found


#: Builds one component from the configuration; None when the configuration wants none.
ComponentFactory = Callable[[Config, HostOptions, HostShared, Built], Component | None]


def _exec_brokers(
    config: Config, options: HostOptions, shared: HostShared, built: Built
) -> Component | None:
    return ExecBrokers() if DriverKind.QEMU in options.drivers else None


def _relay(config: Config, options: HostOptions, shared: HostShared, built: Built) -> Component:
    # Started before the group service: a message a guest sends in the few
    # milliseconds between is dropped as if the host were not up yet (it is
    # not: `serving` is logged once every component started).
    return ChannelRelay(
        options.channel_dir,
        address=options.address,
        queue_limit=config.servers.channel_queue_limit,
    )


def _groups(config: Config, options: HostOptions, shared: HostShared, built: Built) -> Component:
    relay = built.one(ChannelRelay)
    return GroupService(
        coordinator=shared.coordinator,
        cache=shared.cache,
        relay=relay,
        host=options.name,
        fence=shared.registration.guard,
    )


def _servers(config: Config, options: HostOptions, shared: HostShared, built: Built) -> Component:
    return ServerManager(
        registry=shared.registry,
        cache=shared.cache,
        drivers=make_drivers(config, options, brokers=built.find(ExecBrokers)),
        host=options.name,
        channel_dir=options.channel_dir,
        fence=shared.registration.guard,
    )


def _evacuator(config: Config, options: HostOptions, shared: HostShared, built: Built) -> Component:
    return Evacuator(
        registry=shared.registry,
        cache=shared.cache,
        session=shared.session,
        host=options.name,
        grace=config.servers.evacuation_grace,
    )


def _scaler(config: Config, options: HostOptions, shared: HostShared, built: Built) -> Component:
    manager = built.one(ServerManager)
    pool = config.scaling.cpu_pool
    cpus = parse_cpu_list(pool) if pool.strip() else tuple(sorted(os.sched_getaffinity(0)))
    return Scaler(
        coordinator=shared.coordinator,
        registry=shared.registry,
        cache=shared.cache,
        relay=built.one(ChannelRelay),
        # Every driver the registry builds is also a Hypervisor (`drivers.registry.Driver`).
        hypervisors={kind: cast("Driver", d) for kind, d in manager.drivers.items()},
        host=options.name,
        cpus=cpus,
        floating=tuple(sorted(os.sched_getaffinity(0))),
        lease=lambda: shared.session.lease_id,
        fence=shared.registration.guard,
    )


def _autoscaler(
    config: Config, options: HostOptions, shared: HostShared, built: Built
) -> Component:
    built.one(Scaler)  # its scales are the scaler's to carry out
    manager = built.one(ServerManager)
    return Autoscaler(
        coordinator=shared.coordinator,
        registry=shared.registry,
        cache=shared.cache,
        hypervisors={kind: cast("Driver", d) for kind, d in manager.drivers.items()},
        host=options.name,
        fence=shared.registration.guard,
    )


def _services(
    config: Config, options: HostOptions, shared: HostShared, built: Built
) -> Component | None:
    settings = config.services
    if not settings.enabled:
        return None
    cache = shared.cache
    # A session of its own: the host's lease stays short (fast evacuation and `lost`
    # notifications) while the services' lease leaves time for their stops.
    coordination = config.services_coordination
    return NodeRole(
        coordinator=shared.coordinator,
        session=Session(shared.coordinator, coordination, name=f"services {options.name}"),
        own_session=True,
        node=options.name,
        node_ip=settings.node_ip or options.migration_address,
        ocf_root=Path(settings.ocf_root),
        state_dir=Path(config.state_dir),
        coordination=coordination,
        group_hosts=lambda: registry_group_hosts(cache.snapshot),
        group_changes=cache.subscribe,
    )


def _api(
    config: Config, options: HostOptions, shared: HostShared, built: Built
) -> Component | None:
    if not config.api.enabled:
        return None
    components = built.components  # the list grows: the API's own entry is added after this
    return ApiServer(
        config.api,
        coordinator=shared.coordinator,
        host=options.name,
        health=lambda: host_health(shared, components),
        operation_timeout=config.coordination.operation_timeout,
    )


def make_drivers(
    config: Config, options: HostOptions, *, brokers: ExecBrokers | None
) -> list[ServerDriver]:
    """The server drivers this host has (`options.drivers`)."""
    context = DriverContext(
        state_dir=config.state_dir,
        host=options.name,
        channel_dir=options.channel_dir,
        migration_address=options.migration_address,
        brokers=brokers,
        lab_scale_agent=config.servers.lab_scale_agent,
    )
    return list(build_drivers(options.drivers, context))


#: The components of a host daemon by name, in start order (each may use those
#: before it). A capability that runs on a host adds its factory here.
COMPONENTS: dict[str, ComponentFactory] = {
    ExecBrokers.name: _exec_brokers,
    ChannelRelay.name: _relay,
    GroupService.name: _groups,
    ServerManager.name: _servers,
    Evacuator.name: _evacuator,
    Scaler.name: _scaler,
    Autoscaler.name: _autoscaler,
    NodeRole.name: _services,
    ApiServer.name: _api,
}


def build_components(
    config: Config,
    options: HostOptions,
    shared: HostShared,
    factories: dict[str, ComponentFactory] | None = None,
) -> list[Component]:
    """The components the configuration asks for, in start order (no I/O: nothing starts)."""
    built = Built()
    for name, factory in (COMPONENTS if factories is None else factories).items():
        component = factory(config, options, shared, built)
        if component is None:
            continue
        if component.name != name:
            raise LookupError(f"the factory of component {name!r} built {component.name!r}")
        built.components.append(component)
    return built.components


async def _stop_component(host: str, component: Component) -> None:
    started = time.monotonic()
    try:
        await component.stop()
    except Exception:
        log_bug(log, f"stopping component {component.name} of host {host}")
        return
    log.info("host %s: %s stopped (%.3f s)", host, component.name, time.monotonic() - started)


_SESSION_HEALTH = {
    SessionState.CONNECTED: HealthState.HEALTHY,
    SessionState.SUSPENDED: HealthState.DEGRADED,
    SessionState.LOST: HealthState.DEGRADED,
}


def host_health(
    shared: HostShared | None, components: Sequence[Component]
) -> dict[str, ComponentHealth]:
    """The session's health, then each component's, by name."""
    out: dict[str, ComponentHealth] = {}
    if shared is None:
        out["session"] = ComponentHealth(state=HealthState.STARTING, sentence="no session yet")
    else:
        state = shared.session.state
        out["session"] = ComponentHealth(
            state=_SESSION_HEALTH[state],
            sentence=f"session {state.value} on lease {shared.session.lease_id:x}",
        )
    for component in components:
        try:
            out[component.name] = component.health()
        except Exception:
            log_bug(log, f"the health of component {component.name}")
            out[component.name] = ComponentHealth(
                state=HealthState.DEGRADED, sentence="its health view failed (BUG)"
            )
    return out


class HostDaemon:
    """`servergroup host`: the shared context and the components, run until cancelled."""

    def __init__(
        self,
        config: Config,
        options: HostOptions,
        *,
        endpoints: tuple[Endpoint, ...],
        factories: dict[str, ComponentFactory] | None = None,
    ) -> None:
        self.config = config
        self.options = options
        self.endpoints = endpoints
        self.factories = COMPONENTS if factories is None else factories
        self._shared: HostShared | None = None
        self._components: list[Component] = []

    @property
    def components(self) -> Sequence[Component]:
        return tuple(self._components)

    def health(self) -> dict[str, ComponentHealth]:
        """The session's health, then each component's, by name (what the API serves)."""
        return host_health(self._shared, self._components)

    def log_health(self) -> None:
        """One log line per component: its state and sentence."""
        for name, h in self.health().items():
            log.info(
                "host %s health: %s %s: %s", self.options.name, name, h.state.value, h.sentence
            )

    async def run(self, ready: Callable[[], None] | None = None) -> None:
        """Serve until cancelled; `ready()` once every component started."""
        options = self.options
        check_name("host", options.name)
        if not options.drivers:
            raise LocalError(f"a host needs a server driver: {', '.join(k.value for k in DRIVERS)}")
        try:
            options.channel_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LocalError(
                f"cannot use channel directory {options.channel_dir}: {exc.strerror}"
            ) from None
        async with (
            host_shared(self.config, options, endpoints=self.endpoints) as shared,
            contextlib.AsyncExitStack() as stack,
        ):
            self._shared = shared
            stack.callback(setattr, self, "_shared", None)
            self._components = build_components(self.config, options, shared, self.factories)
            for component in self._components:
                # Stopped even if its start fails half-way (stop is idempotent).
                stack.push_async_callback(_stop_component, options.name, component)
                started = time.monotonic()
                await component.start()
                log.info(
                    "host %s: %s started (%.3f s)",
                    options.name,
                    component.name,
                    time.monotonic() - started,
                )
            self._on_sigusr1(stack)
            log.info(
                "host %s serving: channel dir %s, host address %s, etcd %s; components %s",
                options.name,
                options.channel_dir,
                options.address,
                ", ".join(str(e) for e in self.endpoints),
                ", ".join(c.name for c in self._components),
            )
            if ready is not None:
                ready()
            await asyncio.Event().wait()  # until cancelled

    def _on_sigusr1(self, stack: contextlib.AsyncExitStack) -> None:
        """Log the health views on SIGUSR1 (when running in the main thread)."""
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGUSR1, self.log_health)
        except (RuntimeError, ValueError):
            return  # not the main thread: no signals here
        stack.callback(loop.remove_signal_handler, signal.SIGUSR1)


async def run_host(
    config: Config,
    options: HostOptions,
    *,
    endpoints: tuple[Endpoint, ...],
    ready: Callable[[], None] | None = None,
) -> None:
    """Serve as host `options.name` until cancelled; `ready()` once registered and serving."""
    await HostDaemon(config, options, endpoints=endpoints).run(ready)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _claim_name(
    coordinator: Coordinator, session: Session, record: HostRecord, ttl: int
) -> int:
    """Create `registry/hosts/<name>` on our lease; return its create revision (our token).

    A dead predecessor's lease is waited out.

    The predecessor's record goes when its lease expires: that DELETE is
    awaited on a watch of the key, not by reading it again and again.
    """
    key = host_key(record.name)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 2 * ttl + 1.5
    while True:
        token = await coordinator.create(key, encode_record(record), lease=session.lease_id)
        if token is not None:
            return token
        kv = await coordinator.get(key)
        if kv is None:
            continue  # it went in between: create again
        if kv.lease == session.lease_id:
            return kv.create_revision
        left = deadline - loop.time()
        if left > 0:
            with contextlib.suppress(TimeoutError):
                await _deleted(coordinator, key, after=kv.mod_revision, timeout=left)
            continue
        other = ""
        with contextlib.suppress(Exception):
            other = f" (pid {decode_host(kv.value).pid})"
        raise HostNameTaken(
            f"another host daemon named {record.name!r} is running{other}; "
            "stop it or choose another --name"
        )


async def _deleted(coordinator: Coordinator, key: str, *, after: int, timeout: float) -> None:
    """Return once `key` is deleted after revision `after`; TimeoutError after `timeout`."""
    watch = await coordinator.watch(key, start_revision=after + 1)
    try:
        async with asyncio.timeout(timeout):
            async for event in watch:
                if event.key == key and event.kind is EventKind.DELETE:
                    return
    finally:
        await watch.close()


async def _keep_registered(
    coordinator: Coordinator, registration: Registration, record: HostRecord
) -> None:
    """Put the host record back on the new lease after the session lost its old one."""
    session = registration.session
    changes = session.listen()
    try:
        while True:
            lease = session.lease_id
            if session.state is SessionState.CONNECTED and lease != registration.lease:
                try:
                    key = host_key(record.name)
                    await coordinator.put(key, encode_record(record), lease=lease)
                    kv = await coordinator.get(key)
                    if kv is None or kv.lease != lease:
                        continue  # the lease went again meanwhile
                    registration.registered(lease, kv.create_revision)
                    log.warning("host %s registered again on a new lease", record.name)
                except CoordinationError as exc:
                    log.warning("cannot register host %s again yet: %s", record.name, exc)
                    await asyncio.sleep(0.5)
                    continue
            await changes.get()
    finally:
        session.unlisten(changes)


__all__ = [
    "COMPONENTS",
    "DEFAULT_CHANNEL_DIR",
    "Built",
    "ComponentFactory",
    "HostDaemon",
    "HostNameTaken",
    "HostOptions",
    "HostShared",
    "build_components",
    "host_health",
    "host_shared",
    "make_drivers",
    "run_host",
]
