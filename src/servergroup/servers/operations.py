"""What an operator asks of groups and servers: the library under `servergroup group|server`.

Each lifecycle operation checks that the request makes sense (one sentence
when it does not), writes the server's spec, and waits until the host that
owns the server reports it done (`Server.settled()`) or `timeout` passes.
A host that reports ERROR after our write ends the wait at once with its
reason. Nothing here opens a connection: the caller hands in a `Registry`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import replace

from servergroup.common.errors import LocalError, RemoteError
from servergroup.servers.drivers.registry import driver_info
from servergroup.servers.manager import iso_now
from servergroup.servers.model import (
    MAX_VCPUS,
    Desired,
    DriverKind,
    GroupRecord,
    HostRecord,
    Policy,
    RecordError,
    Server,
    ServerSpec,
    VmState,
    check_name,
    decode_spec,
    decode_status,
    make_instance_name,
)
from servergroup.servers.placement import choose_host, load_of
from servergroup.servers.registry import (
    HOSTS,
    GroupNotFound,
    Registry,
    ServerNotFound,
    spec_key,
    status_key,
)

NO_HOST = "no host is running: start one with `servergroup up`"


class OperationError(LocalError):
    """The operator asked for something that makes no sense now (exit status 2)."""

    exit_status = 2


class NoHostRunning(OperationError):
    """No host daemon is alive to carry the request out."""

    exit_status = 3

    def __init__(self) -> None:
        super().__init__(NO_HOST)


class OperationTimeout(RemoteError):
    """The server's host did not report the request done in time."""


class OperationFailed(RemoteError):
    """The server's host reported that it could not carry the request out."""


class Operations:
    """Group and server operations on one registry; waits bounded by `timeout` seconds."""

    def __init__(
        self,
        registry: Registry,
        *,
        timeout: float = 10.0,
        poll_interval: float = 0.05,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry
        self.timeout = timeout
        self.poll_interval = poll_interval
        self._wall = wall

    # -- groups ------------------------------------------------------------------------

    async def create_group(self, name: str, policy: Policy = Policy.AFFINITY) -> GroupRecord:
        _valid("group", name)
        record = GroupRecord(
            name=name, policy=policy, uuid=str(uuid.uuid4()), created_at=iso_now(self._wall())
        )
        await self.registry.create_group(record)
        return record

    async def list_groups(self) -> list[GroupRecord]:
        return await self.registry.list_groups()

    async def delete_group(self, name: str) -> None:
        await self.registry.delete_group(name)

    # -- reading -----------------------------------------------------------------------

    async def list_servers(self, group: str | None = None) -> list[Server]:
        return await self.registry.list_servers(group)

    async def show_server(self, name: str) -> Server:
        return await self.registry.require_server(name)

    async def live_hosts(self) -> dict[str, HostRecord]:
        return {h.name: h for h in await self.registry.list_hosts()}

    # -- servers -----------------------------------------------------------------------

    async def create_server(
        self,
        name: str,
        group: str,
        vcpus: int = 1,
        min_vcpus: int = 1,
        host: str | None = None,
        *,
        driver: DriverKind = DriverKind.LAB,
        memory_mb: int | None = None,
        timeout: float | None = None,
    ) -> Server:
        """Place and create a server, and wait until its host reports it active."""
        _valid("server", name)
        if host is not None:
            _valid("host", host)
        if not 1 <= min_vcpus <= vcpus <= MAX_VCPUS:
            raise OperationError(
                f"vCPUs must satisfy 1 <= min_vcpus <= vcpus <= {MAX_VCPUS}; "
                f"got min_vcpus {min_vcpus} and vcpus {vcpus}"
            )
        snap = await self.registry.snapshot()
        record = snap.groups.get(group)
        if record is None:
            raise GroupNotFound(f"group {group!r} does not exist: create it first")
        if name in snap.servers:
            raise OperationError(f"server {name!r} already exists")
        if not snap.hosts:
            raise NoHostRunning()
        able = {h: rec for h, rec in snap.hosts.items() if driver in rec.drivers}
        if not able:
            raise OperationError(f"no running host has the {driver.value} driver")
        if host is not None and host in snap.hosts and host not in able:
            raise OperationError(f"host {host} has no {driver.value} driver")
        chosen = choose_host(
            group=group,
            policy=record.policy,
            members=snap.members(group),
            live_hosts=able,
            load=load_of(snap.servers.values()),
            requested=host,
        )
        taken = {s.spec.instance for s in snap.servers.values()}
        while True:
            server_uuid = uuid.uuid4()
            if make_instance_name(server_uuid) not in taken:
                break
        spec = ServerSpec(
            name=name,
            instance=make_instance_name(server_uuid),
            uuid=str(server_uuid),
            group=group,
            host=chosen,
            vcpus=vcpus,
            min_vcpus=min_vcpus,
            driver=driver,
            created_at=iso_now(self._wall()),
        )
        if memory_mb is not None:
            spec = replace(spec, memory_mb=memory_mb)
        await self.registry.create_server(spec)
        return await self._wait(spec, 0, "active", timeout)

    async def pause(self, name: str, *, timeout: float | None = None) -> Server:
        server = await self._existing(name)
        if server.spec.desired is Desired.STOPPED:
            raise OperationError(f"server {name} is stopped: start it before pausing it")
        return await self._change(server, "paused", timeout, desired=Desired.PAUSED)

    async def unpause(self, name: str, *, timeout: float | None = None) -> Server:
        server = await self._existing(name)
        if server.spec.desired is Desired.STOPPED:
            raise OperationError(
                f"server {name} is stopped, not paused: use `servergroup server start {name}`"
            )
        return await self._change(server, "active", timeout, desired=Desired.ACTIVE)

    async def stop(self, name: str, *, timeout: float | None = None) -> Server:
        server = await self._existing(name)
        return await self._change(server, "stopped", timeout, desired=Desired.STOPPED)

    async def start(self, name: str, *, timeout: float | None = None) -> Server:
        server = await self._existing(name)
        if server.spec.desired is Desired.PAUSED:
            raise OperationError(
                f"server {name} is paused, not stopped: use `servergroup server unpause {name}`"
            )
        return await self._change(server, "active", timeout, desired=Desired.ACTIVE)

    async def reboot(self, name: str, *, timeout: float | None = None) -> Server:
        server = await self._existing(name)
        desired = server.spec.desired
        if desired is Desired.STOPPED:
            raise OperationError(f"server {name} is stopped: start it instead of rebooting it")
        if desired is Desired.PAUSED:
            raise OperationError(f"server {name} is paused: unpause it before rebooting it")
        return await self._change(
            server, "rebooted", timeout, reboot_count=server.spec.reboot_count + 1
        )

    async def delete(self, name: str, *, timeout: float | None = None) -> None:
        """Delete the server; returns once its host has removed it and its records."""
        server = await self.registry.require_server(name)
        if server.spec.desired is not Desired.DELETED:
            await self._need_hosts()
        await self._change(server, "deleted", timeout, desired=Desired.DELETED)

    async def migrate(
        self, name: str, to: str, *, live: bool = True, timeout: float | None = None
    ) -> Server:
        """Move the server to host `to` (live: its processes keep running)."""
        server = await self._existing(name)
        _valid("host", to)
        if server.spec.host != server.host:
            raise OperationError(
                f"server {name} is already moving to {server.spec.host}: wait for it to arrive"
            )
        if to == server.spec.host:
            raise OperationError(f"server {name} already runs on {to}")
        hosts = await self.live_hosts()
        if to not in hosts:
            raise OperationError(
                f"host {to} is not running; running hosts: {', '.join(sorted(hosts)) or 'none'}"
            )
        # The group's policy is not checked: moving a server is the operator's override.
        what = f"{server.spec.desired.value} on {to}"
        return await self._change(server, what, timeout, host=to, live_migration=live)

    # -- helpers -----------------------------------------------------------------------

    async def _need_hosts(self) -> None:
        rng = await self.registry.coordinator.get_prefix(HOSTS)
        if not rng.items:
            raise NoHostRunning()

    async def _existing(self, name: str) -> Server:
        """The server, if it exists, is not being deleted, and some host runs."""
        server = await self.registry.require_server(name)
        if server.spec.desired is Desired.DELETED:
            raise OperationError(f"server {name} is being deleted")
        await self._need_hosts()
        return server

    async def _change(
        self,
        server: Server,
        what: str,
        timeout: float | None,
        **changes: object,
    ) -> Server:
        spec = replace(server.spec, **changes)  # type: ignore[arg-type]
        revision = 0
        if spec != server.spec:
            revision = await self.registry.put_spec(spec)
        return await self._wait(spec, revision, what, timeout)

    async def _wait(
        self, spec: ServerSpec, written_at: int, what: str, timeout: float | None
    ) -> Server:
        """The server once settled; OperationFailed / OperationTimeout with one sentence."""
        limit = timeout if timeout is not None else self.timeout
        if timeout is None:  # a VM, say, boots or migrates in seconds, not at once
            limit = max(limit, driver_info(spec.driver).least_timeout)
        deadline = time.monotonic() + limit
        name = spec.name
        coordinator = self.registry.coordinator
        while True:
            spec_kv = await coordinator.get(spec_key(name))
            status_kv = await coordinator.get(status_key(name))
            if spec_kv is None:
                if spec.desired is Desired.DELETED:
                    return Server(spec=spec, status=None)
                raise ServerNotFound(f"server {name!r} was deleted meanwhile")
            try:
                server = Server(
                    spec=decode_spec(spec_kv.value),
                    status=decode_status(status_kv.value) if status_kv is not None else None,
                )
            except RecordError:
                server = Server(spec=spec)
            if server.settled():
                return server
            status = server.status
            if (
                status is not None
                and status_kv is not None
                and status_kv.mod_revision > written_at
                and status.state is VmState.ERROR
            ):
                raise OperationFailed(
                    f"server {name} could not become {what}: {status.error or 'unknown error'}"
                )
            if time.monotonic() >= deadline:
                raise OperationTimeout(
                    f"server {name} did not become {what} within {limit:g} s: "
                    f"{await self._why(server)}"
                )
            await asyncio.sleep(self.poll_interval)

    async def _why(self, server: Server) -> str:
        hosts = await self.live_hosts()
        waiting_for = server.host
        moving = server.status is not None and server.spec.host != server.status.host
        if moving and server.host in hosts and server.spec.host not in hosts:
            waiting_for = server.spec.host
        if waiting_for not in hosts:
            return f"host {waiting_for} is not running"
        status = server.status
        if status is None:
            return f"host {waiting_for} has not reported it yet"
        task = f" ({status.task_state})" if status.task_state else ""
        return f"host {status.host} reports it {status.state.value}{task}"


def _valid(kind: str, name: str) -> None:
    try:
        check_name(kind, name)
    except RecordError as exc:
        raise OperationError(str(exc)) from None


__all__ = [
    "NO_HOST",
    "NoHostRunning",
    "OperationError",
    "OperationFailed",
    "OperationTimeout",
    "Operations",
]
