"""What an operator asks of groups and servers: the library under `servergroup group|server`.

Each lifecycle operation checks that the request makes sense (one sentence
when it does not), writes the server's spec, and waits until the host that
owns the server reports it done (`Server.settled()`) or `timeout` passes.
Nothing here opens a connection: the caller hands in a `Registry`.

Concurrency (no lost update, under any interleaving of operators):

- Every spec change is a read-modify-write compared on the spec's revision:
  the request's checks run again on each fresh read, and a conflict reads
  again and decides again (with jittered backoff, until the timeout). Two
  reboots count two; a pause that races a delete either lands before it or
  is refused ("being deleted"), never written over it.
- Placing a server (create, migrate, evacuate) is decided on the group's
  members and written in one transaction with the group's record, which
  every placement in the group writes: two placements decided on the same
  members cannot both land, so concurrent creates and moves never break a
  hard affinity or anti-affinity policy.
- Each spec written carries a fresh `change_id`, so a write retried after
  its answer was lost is recognised as ours, not taken for a conflict.
- Waiting follows the server's records with a watch from the revision of
  our write. It ends with success once the status shows our request carried
  out; with `OperationFailed` if the host reports ERROR after our write or
  a later request superseded ours before the host carried ours out. Errors
  raised after our write carry `written_revision`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace

from servergroup.common.errors import LocalError, RemoteError
from servergroup.coordination import CoordinationError, EventKind, RevisionConflict
from servergroup.servers.drivers.registry import driver_info
from servergroup.servers.evacuation import rebuild_plan
from servergroup.servers.manager import iso_now
from servergroup.servers.model import (
    MAX_VCPUS,
    Desired,
    DriverKind,
    Evacuate,
    GroupRecord,
    HostRecord,
    Policy,
    RecordError,
    Server,
    ServerSpec,
    ServerStatus,
    VmState,
    check_name,
    decode_spec,
    decode_status,
    make_instance_name,
)
from servergroup.servers.placement import PlacementError, choose_host, load_of
from servergroup.servers.registry import (
    HOSTS,
    GroupNotFound,
    Registry,
    ServerNotFound,
    server_prefix,
    spec_key,
    status_key,
)

log = logging.getLogger(__name__)

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
    """The server's host did not report the request done in time.

    `written_revision` is the revision of our spec write (0: nothing was written).
    """

    def __init__(self, message: str, *, written_revision: int = 0) -> None:
        super().__init__(message)
        self.written_revision = written_revision


class OperationFailed(RemoteError):
    """The server's host reported that it could not carry the request out.

    Also raised when a later request superseded ours before the host carried
    ours out. `written_revision` is the revision of our spec write.
    """

    def __init__(self, message: str, *, written_revision: int = 0) -> None:
        super().__init__(message)
        self.written_revision = written_revision


class OperationSuperseded(OperationFailed):
    """Another request changed or deleted the server before its host carried ours out."""


#: The spec of a server as a request changes it; raises OperationError when it makes no sense.
Change = Callable[[Server], ServerSpec]


class Operations:
    """Group and server operations on one registry; waits bounded by `timeout` seconds.

    `conflicts` counts the writes that found the records changed since they
    were read and were decided again (for benchmarks and tests).
    """

    def __init__(
        self,
        registry: Registry,
        *,
        timeout: float = 10.0,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry
        self.timeout = timeout
        self._wall = wall
        self.conflicts = 0

    # -- groups ------------------------------------------------------------------------

    async def create_group(
        self, name: str, policy: Policy = Policy.AFFINITY, *, evacuate: Evacuate = Evacuate.AUTO
    ) -> GroupRecord:
        _valid("group", name)
        record = GroupRecord(
            name=name,
            policy=policy,
            uuid=str(uuid.uuid4()),
            created_at=iso_now(self._wall()),
            evacuate=evacuate,
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
        server_uuid = uuid.uuid4()
        instance = make_instance_name(server_uuid)
        deadline = self._deadline(timeout, driver)
        attempt = 0
        while True:
            group_kv, snap = await self.registry.group_for_placement(group)
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
            if any(s.spec.instance == instance for s in snap.servers.values()):
                server_uuid = uuid.uuid4()
                instance = make_instance_name(server_uuid)
                continue
            chosen = choose_host(
                group=group,
                policy=record.policy,
                members=snap.members(group),
                live_hosts=able,
                load=load_of(snap.servers.values()),
                requested=host,
            )
            spec = ServerSpec(
                name=name,
                instance=instance,
                uuid=str(server_uuid),
                group=group,
                host=chosen,
                vcpus=vcpus,
                min_vcpus=min_vcpus,
                driver=driver,
                created_at=iso_now(self._wall()),
                change_id=_change_id(),
            )
            if memory_mb is not None:
                spec = replace(spec, memory_mb=memory_mb)
            try:
                revision = await self.registry.place(group_kv, spec, spec_revision=0)
            except RevisionConflict:
                attempt = await self._conflicted(name, attempt, deadline)
                continue
            return await self._wait(spec, revision, "active", deadline)

    async def pause(self, name: str, *, timeout: float | None = None) -> Server:
        def change(server: Server) -> ServerSpec:
            if server.spec.desired is Desired.STOPPED:
                raise OperationError(f"server {name} is stopped: start it before pausing it")
            return replace(server.spec, desired=Desired.PAUSED)

        return await self._change(name, "paused", timeout, change)

    async def unpause(self, name: str, *, timeout: float | None = None) -> Server:
        def change(server: Server) -> ServerSpec:
            if server.spec.desired is Desired.STOPPED:
                raise OperationError(
                    f"server {name} is stopped, not paused: use `servergroup server start {name}`"
                )
            return replace(server.spec, desired=Desired.ACTIVE)

        return await self._change(name, "active", timeout, change)

    async def stop(self, name: str, *, timeout: float | None = None) -> Server:
        return await self._change(
            name, "stopped", timeout, lambda s: replace(s.spec, desired=Desired.STOPPED)
        )

    async def start(self, name: str, *, timeout: float | None = None) -> Server:
        def change(server: Server) -> ServerSpec:
            if server.spec.desired is Desired.PAUSED:
                raise OperationError(
                    f"server {name} is paused, not stopped: use `servergroup server unpause {name}`"
                )
            return replace(server.spec, desired=Desired.ACTIVE)

        return await self._change(name, "active", timeout, change)

    async def reboot(self, name: str, *, timeout: float | None = None) -> Server:
        def change(server: Server) -> ServerSpec:
            desired = server.spec.desired
            if desired is Desired.STOPPED:
                raise OperationError(f"server {name} is stopped: start it instead of rebooting it")
            if desired is Desired.PAUSED:
                raise OperationError(f"server {name} is paused: unpause it before rebooting it")
            return replace(server.spec, reboot_count=server.spec.reboot_count + 1)

        return await self._change(name, "rebooted", timeout, change)

    async def rebuild(self, name: str, *, timeout: float | None = None) -> Server:
        """Make the active server again from nothing on its host (Nova's rebuild).

        Seed 003: a scaled-down server stays scaled down (its record keeps
        its online vCPUs; its guest takes the others offline at boot).
        """

        def change(server: Server) -> ServerSpec:
            desired = server.spec.desired
            if desired is not Desired.ACTIVE:
                raise OperationError(
                    f"server {name} is {desired.value}: only an active server can be rebuilt"
                )
            return replace(server.spec, rebuild_count=server.spec.rebuild_count + 1)

        return await self._change(name, "rebuilt", timeout, change)

    async def resize(
        self,
        name: str,
        vcpus: int,
        min_vcpus: int | None = None,
        *,
        timeout: float | None = None,
    ) -> Server:
        """Give the server a new flavor (`vcpus`, `min_vcpus`); a running one boots again.

        Seed 003: a resized server comes back with every vCPU of its new
        flavor, scaled down or not before. `min_vcpus` None keeps the old
        minimum (lowered to `vcpus` if it is more).
        """

        def change(server: Server) -> ServerSpec:
            spec = server.spec
            least = min(spec.min_vcpus, vcpus) if min_vcpus is None else min_vcpus
            if not 1 <= least <= vcpus <= MAX_VCPUS:
                raise OperationError(
                    f"vCPUs must satisfy 1 <= min_vcpus <= vcpus <= {MAX_VCPUS}; "
                    f"got min_vcpus {least} and vcpus {vcpus}"
                )
            if spec.desired is Desired.PAUSED:
                raise OperationError(f"server {name} is paused: unpause it before resizing it")
            if (vcpus, least) == (spec.vcpus, spec.min_vcpus):
                raise OperationError(f"server {name} already has {vcpus} vCPU(s), {least} at least")
            # The reboot count makes the wait end once the host booted the new flavor.
            reboots = spec.reboot_count + (1 if spec.desired is Desired.ACTIVE else 0)
            return replace(spec, vcpus=vcpus, min_vcpus=least, reboot_count=reboots)

        return await self._change(name, f"resized to {vcpus} vCPU(s)", timeout, change)

    async def delete(self, name: str, *, timeout: float | None = None) -> None:
        """Delete the server; returns once its host has removed it and its records."""
        await self._change(
            name,
            "deleted",
            timeout,
            lambda s: replace(s.spec, desired=Desired.DELETED),
            deleting=True,
        )

    async def migrate(
        self,
        name: str,
        to: str,
        *,
        live: bool = True,
        force: bool = False,
        timeout: float | None = None,
    ) -> Server:
        """Move the server to host `to` (live: its processes keep running).

        A move that would break its group's hard policy is refused unless `force`.
        """
        _valid("host", to)
        server = await self._existing(name)
        deadline = self._deadline(timeout, server.spec.driver)
        attempt = 0
        while True:
            group_kv, snap = await self.registry.group_for_placement(server.spec.group)
            server = snap.servers.get(name) or server
            spec = server.spec
            if spec.desired is Desired.DELETED:
                raise OperationError(f"server {name} is being deleted")
            if spec.host != server.host:
                raise OperationError(
                    f"server {name} is already moving to {spec.host}: wait for it to arrive"
                )
            if server.status is None:
                # Its host is building it; a new spec.host now would have a
                # second host build it at the same time (a lab server is
                # machine-wide: the two would fight over its processes).
                raise OperationError(
                    f"server {name} is still being built on {spec.host}: wait for it to be "
                    "active before moving it"
                )
            if to == spec.host:
                raise OperationError(f"server {name} already runs on {to}")
            if server.host not in snap.hosts:
                # Nothing is left on a dead host to move: the write would wait
                # (and leave the server "moving") until that host came back.
                raise OperationError(
                    f"host {server.host} of server {name} is not running: rebuild it elsewhere "
                    f"with `servergroup server evacuate {name} --to {to}`"
                )
            if to not in snap.hosts:
                running = ", ".join(sorted(snap.hosts)) or "none"
                raise OperationError(f"host {to} is not running; running hosts: {running}")
            record = snap.groups.get(spec.group)
            if record is not None and not force:
                others = [m for m in snap.members(spec.group) if m.name != name]
                try:
                    choose_host(
                        group=spec.group,
                        policy=record.policy,
                        members=others,
                        live_hosts=snap.hosts,
                        load=load_of(snap.servers.values()),
                        requested=to,
                    )
                except PlacementError as exc:
                    raise OperationError(f"{exc} (--force moves it anyway)") from None
            new = replace(spec, host=to, live_migration=live, change_id=_change_id())
            try:
                revision = await self.registry.place(
                    group_kv, new, spec_revision=server.spec_revision
                )
            except RevisionConflict:
                attempt = await self._conflicted(name, attempt, deadline)
                continue
            return await self._wait(new, revision, f"{spec.desired.value} on {to}", deadline)

    async def evacuate(
        self,
        name: str | None = None,
        *,
        host: str | None = None,
        to: str | None = None,
        timeout: float | None = None,
    ) -> list[Server]:
        """Rebuild the servers of a dead host elsewhere: `name`, or every server of `host`.

        Refused while their host is alive. Each goes to `to`, or where its
        group's policy puts it among the live hosts; returns once each runs.
        """
        if (name is None) == (host is None):
            raise OperationError("name a server, or a host with --host, to evacuate")
        if to is not None:
            _valid("host", to)
        deadline = self._deadline(timeout, DriverKind.QEMU)
        attempt = 0
        while True:
            snap = await self.registry.snapshot()
            if name is not None:
                server = snap.servers.get(name)
                if server is None:
                    raise ServerNotFound(f"server {name!r} does not exist")
                dead = server.host
                names = [name]
            else:
                assert host is not None
                _valid("host", host)
                dead = host
                names = [n for n, s in sorted(snap.servers.items()) if s.host == host]
                if not names:
                    raise OperationError(f"host {host} has no servers to evacuate")
            if dead in snap.hosts:
                raise OperationError(
                    f"host {dead} is alive: evacuate only rebuilds the servers of a dead host "
                    "(use `servergroup server migrate` to move a server off a live host)"
                )
            if not snap.hosts:
                raise NoHostRunning()
            try:
                plan = rebuild_plan(snap, dead, names, to=to, now_iso=iso_now(self._wall()))
            except PlacementError as exc:
                raise OperationError(str(exc)) from None
            written: list[tuple[ServerSpec, int]] = []
            try:
                for step in plan:
                    group_kv, _ = await self.registry.group_for_placement(step.spec.group)
                    revision = await self.registry.place(
                        group_kv,
                        step.spec,
                        spec_revision=step.spec_revision,
                        status=step.status,
                        status_revision=step.status_revision,
                    )
                    written.append((step.spec, revision))
            except RevisionConflict:
                if written:
                    raise OperationFailed(
                        f"evacuating {', '.join(s.name for s, _ in written)} started, but the "
                        "other servers changed meanwhile: run the command again for them"
                    ) from None
                attempt = await self._conflicted(name or str(host), attempt, deadline)
                continue
            return [await self._wait(spec, rev, "rebuilt", deadline) for spec, rev in written]

    # -- helpers -----------------------------------------------------------------------

    def _deadline(self, timeout: float | None, driver: DriverKind) -> _Budget:
        limit = timeout if timeout is not None else self.timeout
        if timeout is None:  # a VM, say, boots or migrates in seconds, not at once
            limit = max(limit, driver_info(driver).least_timeout)
        return _Budget(at=time.monotonic() + limit, limit=limit)

    async def _conflicted(self, name: str, attempt: int, deadline: _Budget) -> int:
        """Count a conflict and back off (jittered) before deciding again."""
        self.conflicts += 1
        if time.monotonic() >= deadline.at:
            raise OperationTimeout(
                f"server {name}: its records kept changing under concurrent requests; try again"
            )
        delay = min(0.005 * 2**attempt, 0.2)
        await asyncio.sleep(delay * (0.5 + random.random()))
        return attempt + 1

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
        name: str,
        what: str,
        timeout: float | None,
        change: Change,
        *,
        deleting: bool = False,
    ) -> Server:
        """Apply `change` to the spec as read, compared on its revision; then wait."""
        attempt = 0
        server = await self.registry.require_server(name)
        deadline = self._deadline(timeout, server.spec.driver)
        if not (deleting and server.spec.desired is Desired.DELETED):
            await self._need_hosts()
        while True:
            if server.spec.desired is Desired.DELETED and not deleting:
                raise OperationError(f"server {name} is being deleted")
            spec = change(server)
            if spec == server.spec:
                return await self._wait(server.spec, 0, what, deadline)
            spec = replace(spec, change_id=_change_id())
            try:
                revision = await self.registry.put_spec(spec, if_mod_revision=server.spec_revision)
            except RevisionConflict:
                attempt = await self._conflicted(name, attempt, deadline)
                server = await self.registry.require_server(name)
                continue
            return await self._wait(spec, revision, what, deadline)

    async def _wait(
        self, spec: ServerSpec, written_at: int, what: str, deadline: _Budget
    ) -> Server:
        """The server once our request is carried out; else one sentence why not.

        Follows the server's records with a watch from the revision of our
        write (see the module docstring for when it ends).
        """
        name = spec.name
        limit = max(0.0, deadline.at - time.monotonic())
        view = _View(spec=spec, written_at=written_at, what=what)
        try:
            async with asyncio.timeout(limit):
                coordinator = self.registry.coordinator
                rng = await coordinator.get_prefix(server_prefix(name))
                for kv in rng.items:
                    view.put(kv.key, kv.value, kv.mod_revision)
                done = view.outcome()
                if done is not None:
                    return done
                watch = await coordinator.watch(
                    server_prefix(name), start_revision=rng.revision + 1
                )
                try:
                    async for event in watch:
                        if event.kind is EventKind.DELETE:
                            view.delete(event.key)
                        else:
                            view.put(event.key, event.value, event.revision)
                        done = view.outcome()
                        if done is not None:
                            return done
                finally:
                    await watch.close()
        except TimeoutError:
            pass
        except CoordinationError as exc:
            raise OperationTimeout(
                f"server {name}: lost track of it while waiting for it to become {what}: {exc}",
                written_revision=written_at,
            ) from None
        current = view.server() or Server(spec=spec)
        why = await self._why(current)
        raise OperationTimeout(
            f"server {name} did not become {what} within {deadline.limit:g} s: {why}",
            written_revision=written_at,
        )

    async def _why(self, server: Server) -> str:
        hosts = await self.live_hosts()
        waiting_for = server.host
        moving = server.status is not None and server.spec.host != server.status.host
        if moving and server.host in hosts and server.spec.host not in hosts:
            waiting_for = server.spec.host
        if waiting_for not in hosts:
            if waiting_for != server.host:
                return f"host {waiting_for} is not running"
            # The request stays written: its host carries it out if it comes back.
            return (
                f"host {waiting_for} is not running (the request stays for when it is back; "
                f"`servergroup server evacuate {server.name}` rebuilds the server elsewhere)"
            )
        status = server.status
        if status is None:
            return f"host {waiting_for} has not reported it yet"
        task = f" ({status.task_state})" if status.task_state else ""
        return f"host {status.host} reports it {status.state.value}{task}"


@dataclass(frozen=True, slots=True)
class _Budget:
    """When an operation must be over (monotonic), and the timeout it was given."""

    at: float
    limit: float


class _View:
    """One server's records as a wait follows them, and whether the wait is over."""

    def __init__(self, *, spec: ServerSpec, written_at: int, what: str) -> None:
        self.ours = spec
        self.written_at = written_at
        self.what = what
        self.spec: ServerSpec | None = None
        self.status: ServerStatus | None = None
        self.status_revision = 0
        self.seen_spec = False

    def put(self, key: str, value: bytes, revision: int) -> None:
        name = self.ours.name
        try:
            if key == spec_key(name):
                self.spec = decode_spec(value)
                self.seen_spec = True
            elif key == status_key(name):
                self.status = decode_status(value)
                self.status_revision = revision
        except RecordError as exc:
            log.warning("ignoring key %s: %s", key, exc)

    def delete(self, key: str) -> None:
        if key == spec_key(self.ours.name):
            self.spec = None
            self.seen_spec = True
        elif key == status_key(self.ours.name):
            self.status = None

    def server(self) -> Server | None:
        return Server(spec=self.spec, status=self.status) if self.spec is not None else None

    def outcome(self) -> Server | None:
        """The server if our request is done; raises if it cannot be; None: wait on."""
        name, ours = self.ours.name, self.ours
        if self.spec is None or self.spec.uuid != ours.uuid:
            if ours.desired is Desired.DELETED:
                return Server(spec=ours, status=None)
            raise OperationSuperseded(
                f"server {name} did not become {self.what}: it was deleted meanwhile",
                written_revision=self.written_at,
            )
        status = self.status
        if (
            status is not None
            and self.status_revision > self.written_at
            and status.state is VmState.ERROR
        ):
            raise OperationFailed(
                f"server {name} could not become {self.what}: {status.error or 'unknown error'}",
                written_revision=self.written_at,
            )
        if ours.desired is Desired.DELETED:
            return None  # done once its host has forgotten its records (above)
        if Server(spec=ours, status=status).settled():
            return Server(spec=self.spec, status=status)
        superseded = replace(self.spec, change_id="") != replace(ours, change_id="")
        if superseded and Server(spec=self.spec, status=status).settled():
            raise OperationSuperseded(
                f"server {name} did not become {self.what}: another request changed it first",
                written_revision=self.written_at,
            )
        return None


def _change_id() -> str:
    return uuid.uuid4().hex[:16]


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
    "OperationSuperseded",
    "OperationTimeout",
    "Operations",
]
