"""The registry: groups, servers and hosts in the shared store, typed.

`Registry` reads and writes the records of `servers.model` under the key
space of docs/design/messaging.md:

    registry/groups/<group>            GroupRecord      durable, written by `group create`
    registry/servers/<name>/spec       ServerSpec       durable, written by the operator
    registry/servers/<name>/status     ServerStatus     durable, written by the host running it
    registry/servers/<name>/incoming   IncomingRecord   durable, written by a migration's target
    registry/hosts/<host>              HostRecord       on the host daemon's session lease
    broadcasts/<group>                 BroadcastRecord  durable; each put is one broadcast

The registry has a prefix of its own (`REGISTRY`) so that following it
brings no broadcast, election or other capability's key.

`RegistryCache` keeps an immutable `RegistrySnapshot` up to date from one
read of `registry/` and one watch of it (resumed by the coordinator across reconnects; on
`WatchCompacted` it reads everything again and reports the differences), and
hands each change to its subscribers as a `RegistryChange` with the record
before and after. A record that does not decode is logged and treated as
absent: one bad key must not stop a host from serving the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TypeVar

from servergroup.common.errors import LocalError
from servergroup.common.logsetup import log_bug
from servergroup.coordination import (
    CoordinationError,
    Coordinator,
    EventKind,
    WatchCompacted,
    WatchEvent,
)
from servergroup.coordination.types import KeyValue
from servergroup.servers.model import (
    GroupRecord,
    HostRecord,
    IncomingRecord,
    RecordError,
    RegistrySnapshot,
    Server,
    ServerSpec,
    ServerStatus,
    decode_group,
    decode_host,
    decode_incoming,
    decode_spec,
    decode_status,
    encode_record,
)

log = logging.getLogger(__name__)

#: Groups, servers and hosts: what the registry cache follows.
REGISTRY = "registry/"
GROUPS = f"{REGISTRY}groups/"
SERVERS = f"{REGISTRY}servers/"
HOSTS = f"{REGISTRY}hosts/"
#: Each group's latest broadcast: the group service follows it, not the registry cache.
BROADCASTS = "broadcasts/"


class RegistryError(LocalError):
    """The operator asked for something the registry cannot do (exit status 2)."""

    exit_status = 2


class GroupExists(RegistryError):
    pass


class GroupNotFound(RegistryError):
    pass


class GroupNotEmpty(RegistryError):
    pass


class ServerExists(RegistryError):
    pass


class ServerNotFound(RegistryError):
    pass


def group_key(name: str) -> str:
    return f"{GROUPS}{name}"


def spec_key(name: str) -> str:
    return f"{SERVERS}{name}/spec"


def status_key(name: str) -> str:
    return f"{SERVERS}{name}/status"


def incoming_key(name: str) -> str:
    return f"{SERVERS}{name}/incoming"


def host_key(name: str) -> str:
    return f"{HOSTS}{name}"


def broadcast_key(group: str) -> str:
    return f"{BROADCASTS}{group}"


_T = TypeVar("_T")


def _decoded(kv: KeyValue | None, decode: Callable[[bytes], _T]) -> _T | None:
    if kv is None:
        return None
    try:
        return decode(kv.value)
    except RecordError as exc:
        log.warning("ignoring key %s: %s", kv.key, exc)
        return None


class Registry:
    """Typed reads and writes of groups, servers and hosts."""

    def __init__(self, coordinator: Coordinator) -> None:
        self._c = coordinator

    @property
    def coordinator(self) -> Coordinator:
        return self._c

    # -- groups --------------------------------------------------------------

    async def create_group(self, group: GroupRecord) -> None:
        if await self._c.create(group_key(group.name), encode_record(group)) is None:
            raise GroupExists(f"group {group.name!r} already exists")

    async def get_group(self, name: str) -> GroupRecord | None:
        return _decoded(await self._c.get(group_key(name)), decode_group)

    async def list_groups(self) -> list[GroupRecord]:
        snap = await self.snapshot()
        return [g for _, g in sorted(snap.groups.items())]

    async def delete_group(self, name: str) -> None:
        snap = await self.snapshot()
        if name not in snap.groups:
            raise GroupNotFound(f"group {name!r} does not exist")
        members = [s.name for s in snap.members(name)]
        if members:
            raise GroupNotEmpty(
                f"group {name!r} still has servers ({', '.join(members)}): delete them first"
            )
        await self._c.delete(group_key(name))
        await self._c.delete(broadcast_key(name))

    # -- servers -------------------------------------------------------------

    async def create_server(self, spec: ServerSpec) -> None:
        if await self.get_group(spec.group) is None:
            raise GroupNotFound(f"group {spec.group!r} does not exist: create it first")
        if await self._c.create(spec_key(spec.name), encode_record(spec)) is None:
            raise ServerExists(f"server {spec.name!r} already exists")

    async def put_spec(self, spec: ServerSpec) -> int:
        """Write the spec; return the store revision of the write."""
        return await self._c.put(spec_key(spec.name), encode_record(spec))

    async def put_status(self, status: ServerStatus) -> int:
        """Write the status; return the store revision of the write."""
        return await self._c.put(status_key(status.name), encode_record(status))

    async def put_incoming(self, incoming: IncomingRecord) -> int:
        """Say where a live migration's target waits; return the store revision of the write."""
        return await self._c.put(incoming_key(incoming.name), encode_record(incoming))

    async def delete_incoming(self, name: str) -> None:
        await self._c.delete(incoming_key(name))

    async def get_server(self, name: str) -> Server | None:
        spec = _decoded(await self._c.get(spec_key(name)), decode_spec)
        if spec is None:
            return None
        status = _decoded(await self._c.get(status_key(name)), decode_status)
        incoming = _decoded(await self._c.get(incoming_key(name)), decode_incoming)
        return Server(spec=spec, status=status, incoming=incoming)

    async def require_server(self, name: str) -> Server:
        server = await self.get_server(name)
        if server is None:
            raise ServerNotFound(f"server {name!r} does not exist")
        return server

    async def list_servers(self, group: str | None = None) -> list[Server]:
        snap = await self.snapshot()
        return [
            s for _, s in sorted(snap.servers.items()) if group is None or s.spec.group == group
        ]

    async def remove_server(self, name: str) -> None:
        """Forget the server: both of its records."""
        await self._c.delete_prefix(f"{SERVERS}{name}/")

    # -- hosts ---------------------------------------------------------------

    async def register_host(self, host: HostRecord, *, lease: int) -> None:
        await self._c.put(host_key(host.name), encode_record(host), lease=lease)

    async def list_hosts(self) -> list[HostRecord]:
        snap = await self.snapshot()
        return [h for _, h in sorted(snap.hosts.items())]

    # -- everything ----------------------------------------------------------

    async def snapshot(self) -> RegistrySnapshot:
        """Groups, servers and hosts, read at one revision."""
        rng = await self._c.get_prefix(REGISTRY)
        return build_snapshot([kv for kv in rng.items], rng.revision)


def build_snapshot(items: list[KeyValue], revision: int) -> RegistrySnapshot:
    """A snapshot from the key-values under the prefix (others are ignored)."""
    groups: dict[str, GroupRecord] = {}
    specs: dict[str, ServerSpec] = {}
    statuses: dict[str, ServerStatus] = {}
    incomings: dict[str, IncomingRecord] = {}
    hosts: dict[str, HostRecord] = {}
    for kv in items:
        kind, name, part = _classify(kv.key)
        if kind is None:
            continue
        if kind is ChangeKind.GROUP:
            g = _decoded(kv, decode_group)
            if g is not None:
                groups[name] = g
        elif kind is ChangeKind.HOST:
            h = _decoded(kv, decode_host)
            if h is not None:
                hosts[name] = h
        elif part == "spec":
            sp = _decoded(kv, decode_spec)
            if sp is not None:
                specs[name] = sp
        elif part == "status":
            st = _decoded(kv, decode_status)
            if st is not None:
                statuses[name] = st
        elif part == "incoming":
            inc = _decoded(kv, decode_incoming)
            if inc is not None:
                incomings[name] = inc
    servers = {
        n: Server(spec=sp, status=statuses.get(n), incoming=incomings.get(n))
        for n, sp in specs.items()
    }
    return RegistrySnapshot(revision=revision, groups=groups, servers=servers, hosts=hosts)


class ChangeKind(enum.Enum):
    GROUP = "group"
    SERVER = "server"
    HOST = "host"


def _classify(key: str) -> tuple[ChangeKind | None, str, str]:
    if key.startswith(GROUPS):
        return ChangeKind.GROUP, key[len(GROUPS) :], ""
    if key.startswith(HOSTS):
        return ChangeKind.HOST, key[len(HOSTS) :], ""
    if key.startswith(SERVERS):
        name, _, part = key[len(SERVERS) :].partition("/")
        if part in ("spec", "status", "incoming"):
            return ChangeKind.SERVER, name, part
    return None, "", ""


@dataclass(frozen=True, slots=True, kw_only=True)
class RegistryChange:
    """One record changed: what it was and what it is (None: absent)."""

    kind: ChangeKind
    name: str
    before: GroupRecord | Server | HostRecord | None
    after: GroupRecord | Server | HostRecord | None
    revision: int
    snapshot: RegistrySnapshot  # the whole registry right after this change


def diff(old: RegistrySnapshot, new: RegistrySnapshot) -> list[RegistryChange]:
    """The changes that turn `old` into `new` (used after a re-read)."""
    changes: list[RegistryChange] = []
    for kind, a, b in (
        (ChangeKind.GROUP, old.groups, new.groups),
        (ChangeKind.SERVER, old.servers, new.servers),
        (ChangeKind.HOST, old.hosts, new.hosts),
    ):
        for name in sorted(set(a) | set(b)):
            before, after = a.get(name), b.get(name)
            if before != after:
                changes.append(
                    RegistryChange(
                        kind=kind,
                        name=name,
                        before=before,
                        after=after,
                        revision=new.revision,
                        snapshot=new,
                    )
                )
    return changes


Subscriber = Callable[[RegistryChange], Awaitable[None] | None]


class RegistryCache:
    """The registry as of the latest change, and a stream of changes.

    `start()` reads everything and starts following; `snapshot` is always a
    consistent immutable view; `subscribe()` returns a queue that gets every
    later `RegistryChange` in store order.
    """

    def __init__(self, coordinator: Coordinator) -> None:
        self._c = coordinator
        self._snapshot = RegistrySnapshot()
        self._queues: list[asyncio.Queue[RegistryChange]] = []
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    @property
    def snapshot(self) -> RegistrySnapshot:
        return self._snapshot

    def subscribe(self) -> asyncio.Queue[RegistryChange]:
        q: asyncio.Queue[RegistryChange] = asyncio.Queue()
        self._queues.append(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[RegistryChange]) -> None:
        with contextlib.suppress(ValueError):
            self._queues.remove(q)

    async def wait_for(
        self, predicate: Callable[[RegistrySnapshot], bool], timeout: float
    ) -> RegistrySnapshot:
        """The first snapshot (current or later) for which `predicate` holds.

        Raises TimeoutError after `timeout` seconds.
        """
        async with asyncio.timeout(timeout):
            while not predicate(self._snapshot):
                self._changed.clear()
                await self._changed.wait()
        return self._snapshot

    async def start(self) -> None:
        self._snapshot = await self._read()
        self._task = asyncio.create_task(self._follow(), name="registry-cache")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _read(self) -> RegistrySnapshot:
        rng = await self._c.get_prefix(REGISTRY)
        return build_snapshot(list(rng.items), rng.revision)

    async def _follow(self) -> None:
        while True:
            try:
                await self._follow_once()
            except asyncio.CancelledError:
                raise
            except WatchCompacted:
                log.warning("registry watch compacted: reading the registry again")
                await self._reread_later(0.0)
            except CoordinationError as exc:
                log.warning("registry watch ended (%s); reading the registry again", exc)
                await self._reread_later()
            except Exception:
                log_bug(log, "the registry watch")
                await self._reread_later()

    async def _reread_later(self, delay: float = 1.0) -> None:
        await asyncio.sleep(delay)
        try:
            await self._reread()
        except CoordinationError as exc:
            log.warning("cannot read the registry (%s); retrying", exc)

    async def _reread(self) -> None:
        new = await self._read()
        old = self._snapshot
        self._snapshot = new
        for change in diff(old, new):
            self._publish(change)
        self._changed.set()

    async def _follow_once(self) -> None:
        watch = await self._c.watch(REGISTRY, start_revision=self._snapshot.revision + 1)
        try:
            async for event in watch:
                self._apply(event)
        finally:
            await watch.close()

    def _apply(self, event: WatchEvent) -> None:
        kind, name, part = _classify(event.key)
        snap = self._snapshot
        if kind is None:
            self._snapshot = replace(snap, revision=event.revision)
            return
        deleted = event.kind is EventKind.DELETE
        before: GroupRecord | Server | HostRecord | None
        after: GroupRecord | Server | HostRecord | None
        if kind is ChangeKind.GROUP:
            groups = dict(snap.groups)
            before = groups.pop(name, None)
            after = None if deleted else _decoded(_kv(event), decode_group)
            if after is not None:
                groups[name] = after
            new = replace(snap, revision=event.revision, groups=groups)
        elif kind is ChangeKind.HOST:
            hosts = dict(snap.hosts)
            before = hosts.pop(name, None)
            after = None if deleted else _decoded(_kv(event), decode_host)
            if after is not None:
                hosts[name] = after
            new = replace(snap, revision=event.revision, hosts=hosts)
        else:
            servers = dict(snap.servers)
            old_server = servers.pop(name, None)
            before = old_server
            after = None
            if part == "spec":
                spec = None if deleted else _decoded(_kv(event), decode_spec)
                if spec is not None:
                    after = (
                        replace(old_server, spec=spec)
                        if old_server is not None
                        else Server(spec=spec)
                    )
            elif old_server is not None and part == "status":
                status = None if deleted else _decoded(_kv(event), decode_status)
                after = replace(old_server, status=status)
            elif old_server is not None:
                incoming = None if deleted else _decoded(_kv(event), decode_incoming)
                after = replace(old_server, incoming=incoming)
            if after is not None:
                servers[name] = after
            new = replace(snap, revision=event.revision, servers=servers)
        self._snapshot = new
        if before != after:
            self._publish(
                RegistryChange(
                    kind=kind,
                    name=name,
                    before=before,
                    after=after,
                    revision=event.revision,
                    snapshot=new,
                )
            )
        self._changed.set()

    def _publish(self, change: RegistryChange) -> None:
        for q in self._queues:
            q.put_nowait(change)


def _kv(event: WatchEvent) -> KeyValue:
    return KeyValue(
        key=event.key,
        value=event.value,
        create_revision=event.create_revision,
        mod_revision=event.revision,
        version=event.version,
        lease=event.lease,
    )


__all__ = [
    "BROADCASTS",
    "GROUPS",
    "HOSTS",
    "REGISTRY",
    "SERVERS",
    "ChangeKind",
    "GroupExists",
    "GroupNotEmpty",
    "GroupNotFound",
    "Registry",
    "RegistryCache",
    "RegistryChange",
    "RegistryError",
    "ServerExists",
    "ServerNotFound",
    "broadcast_key",
    "build_snapshot",
    "diff",
    "group_key",
    "host_key",
    "incoming_key",
    "spec_key",
    "status_key",
]
