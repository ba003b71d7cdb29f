"""The registry: groups, servers and hosts in the shared store, typed.

`Registry` reads and writes the records of `servers.model` under the key
space of docs/design/messaging.md:

    registry/groups/<group>            GroupRecord      durable, written by `group create`
    registry/servers/<name>/spec       ServerSpec       durable, written by the operator
    registry/servers/<name>/status     ServerStatus     durable, written by the host running it
    registry/servers/<name>/incoming   IncomingRecord   durable, written by a migration's target
    registry/servers/<name>/event      ServerEvent      durable, written by the host running it
    registry/hosts/<host>              HostRecord       on the host daemon's session lease
    broadcasts/<group>/<host>          BroadcastBatch   durable; written by that host only, each
                                                        put one transaction's batch; the
                                                        group's order is the store's order
                                                        of the writes under broadcasts/<group>/

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
    Compare,
    CoordinationError,
    Coordinator,
    Delete,
    EventKind,
    FencingError,
    Get,
    Guard,
    Put,
    RevisionConflict,
    TxnOp,
    TxnResult,
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
    ServerEvent,
    ServerSpec,
    ServerStatus,
    decode_event,
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
#: Each group's latest broadcasts, one key per sending host: the group service follows
#: them, not the registry cache.
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


def server_prefix(name: str) -> str:
    """The prefix of every record of server `name` (and of no other server)."""
    return f"{SERVERS}{name}/"


def spec_key(name: str) -> str:
    return f"{SERVERS}{name}/spec"


def status_key(name: str) -> str:
    return f"{SERVERS}{name}/status"


def incoming_key(name: str) -> str:
    return f"{SERVERS}{name}/incoming"


def event_key(name: str) -> str:
    return f"{SERVERS}{name}/event"


def host_key(name: str) -> str:
    return f"{HOSTS}{name}"


def broadcast_prefix(group: str) -> str:
    """The prefix of every broadcast key of `group` (and of no other group's)."""
    return f"{BROADCASTS}{group}/"


def broadcast_key(group: str, host: str) -> str:
    """The key where `host` writes its batches of `group` (no other host writes it)."""
    return f"{BROADCASTS}{group}/{host}"


def legacy_broadcast_key(group: str) -> str:
    """The one key of a group's broadcasts before one key per host (not under the prefix)."""
    return f"{BROADCASTS}{group}"


def parse_broadcast_key(key: str) -> tuple[str, str] | None:
    """(group, host) of a key `broadcast_key` made; None for any other key (a legacy one)."""
    if not key.startswith(BROADCASTS):
        return None
    group, sep, host = key[len(BROADCASTS) :].partition("/")
    if not sep or not group or not host or "/" in host:
        return None
    return group, host


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
        """Delete an empty group; a server placed in it meanwhile makes it not empty."""
        while True:
            kv = await self._c.get(group_key(name))
            if kv is None:
                raise GroupNotFound(f"group {name!r} does not exist")
            snap = await self.snapshot()
            members = [s.name for s in snap.members(name)]
            if members:
                raise GroupNotEmpty(
                    f"group {name!r} still has servers ({', '.join(members)}): delete them first"
                )
            try:
                # Every placement writes the group record: compare on its revision.
                await self._c.delete(group_key(name), if_mod_revision=kv.mod_revision)
            except RevisionConflict:
                continue
            # Its broadcasts go with it: made again, the group numbers from 1.
            await self._c.delete_prefix(broadcast_prefix(name))
            await self._c.delete(legacy_broadcast_key(name))
            return

    # -- servers -------------------------------------------------------------

    async def create_server(self, spec: ServerSpec) -> None:
        """Create the server's spec unconditionally placed (no compare on the group's members).

        Placement that must hold against concurrent placements uses `place`.
        """
        if await self.get_group(spec.group) is None:
            raise GroupNotFound(f"group {spec.group!r} does not exist: create it first")
        if await self._c.create(spec_key(spec.name), encode_record(spec)) is None:
            raise ServerExists(f"server {spec.name!r} already exists")

    async def group_for_placement(self, group: str) -> tuple[KeyValue, RegistrySnapshot]:
        """The group's record as stored, then everything, read after it.

        Hand the record to `place`: the placement holds only if no other
        placement in the group happened since this read.
        """
        kv = await self._c.get(group_key(group))
        if kv is None:
            raise GroupNotFound(f"group {group!r} does not exist: create it first")
        return kv, await self.snapshot()

    async def place(
        self,
        group: KeyValue,
        spec: ServerSpec,
        *,
        spec_revision: int,
        status: ServerStatus | None = None,
        status_revision: int = 0,
        guard: Guard | None = None,
    ) -> int:
        """Write a spec whose host was chosen from the group's members; return the revision.

        One transaction: the group record is written again as it is (every
        placement in a group moves its revision, so two placements decided
        on the same members cannot both land), the spec (created when
        `spec_revision` is 0), and `status` if given; each compared on the
        revision it was read at, and on `guard` when given. A concurrent
        change raises `RevisionConflict` (read again and decide again), a
        stale guard `FencingError`.
        """
        name = spec.name
        value = encode_record(spec)
        compares = [
            Compare.unchanged(group.key, group.mod_revision),
            Compare.unchanged(spec_key(name), spec_revision),
        ]
        ops: list[TxnOp] = [
            Put(key=group.key, value=group.value),
            Put(key=spec_key(name), value=value),
        ]
        if status is not None:
            compares.append(Compare.unchanged(status_key(name), status_revision))
            ops.append(Put(key=status_key(name), value=encode_record(status)))
        failure: list[TxnOp] = [Get(key=spec_key(name))]
        if guard is not None:
            compares.append(Compare.held(guard))
            failure.append(Get(key=guard.key))
        result = await self._c.txn(compares, ops, failure)
        return _written(
            result,
            key=spec_key(name),
            value=value,
            guard=guard,
            what=f"placing server {name}",
            why=f"group {spec.group} or the server changed meanwhile",
        )

    async def put_spec(self, spec: ServerSpec, *, if_mod_revision: int | None = None) -> int:
        """Write the spec; return the store revision of the write.

        With `if_mod_revision` (the spec's revision when it was read), raise
        `RevisionConflict` if it was written since.
        """
        return await self._c.put(
            spec_key(spec.name), encode_record(spec), if_mod_revision=if_mod_revision
        )

    async def put_status(
        self,
        status: ServerStatus,
        *,
        if_mod_revision: int | None = None,
        spec_revision: int | None = None,
        guard: Guard | None = None,
    ) -> int:
        """Write the status; return the store revision of the write.

        A host writes a status compared on the revision of the status it
        decided on (`RevisionConflict` if another host wrote since) and under
        `guard`, its own live registration (`FencingError` once its lease is
        gone), so that a host that was cut off or frozen never overwrites the
        status written by the host that took the server over.

        With `spec_revision`, also compared on the revision of the spec it
        decided on: a status decided for a server whose records were removed
        meanwhile (its status compared as absent, 0, still matches) would
        otherwise outlive it and be taken for the status of the next server
        created under that name.
        """
        key = status_key(status.name)
        value = encode_record(status)
        if spec_revision is None:
            return await self._c.put(key, value, guard=guard, if_mod_revision=if_mod_revision)
        compares = [Compare.unchanged(spec_key(status.name), spec_revision)]
        if if_mod_revision is not None:
            compares.append(Compare.unchanged(key, if_mod_revision))
        failure: list[TxnOp] = [Get(key=key)]
        if guard is not None:
            compares.append(Compare.held(guard))
            failure.append(Get(key=guard.key))
        result = await self._c.txn(compares, [Put(key=key, value=value)], failure)
        return _written(
            result,
            key=key,
            value=value,
            guard=guard,
            what=f"write to {key}",
            why="the server's spec or status changed since it was read",
        )

    async def put_event(
        self, event: ServerEvent, *, spec_revision: int, guard: Guard | None = None
    ) -> int:
        """Write news about a server (`ServerEvent`); return the store revision of the write.

        Compared on the revision of the spec it was decided on (a server
        deleted or changed meanwhile: `RevisionConflict`, read again) and
        under `guard` (`FencingError`), so that it never outlives its server.
        """
        key = event_key(event.name)
        value = encode_record(event)
        compares = [Compare.unchanged(spec_key(event.name), spec_revision)]
        failure: list[TxnOp] = [Get(key=key)]
        if guard is not None:
            compares.append(Compare.held(guard))
            failure.append(Get(key=guard.key))
        result = await self._c.txn(compares, [Put(key=key, value=value)], failure)
        return _written(
            result,
            key=key,
            value=value,
            guard=guard,
            what=f"write to {key}",
            why="the server's spec changed since it was read",
        )

    async def put_incoming(self, incoming: IncomingRecord, *, guard: Guard | None = None) -> int:
        """Say where a live migration's target waits; return the store revision of the write."""
        return await self._c.put(incoming_key(incoming.name), encode_record(incoming), guard=guard)

    async def delete_incoming(self, name: str, *, guard: Guard | None = None) -> None:
        await self._c.delete(incoming_key(name), guard=guard)

    async def forget_server(
        self, name: str, *, status_revision: int, guard: Guard | None = None
    ) -> None:
        """Remove a deleted server's records, if its status is still the one we wrote.

        Compared on `status_revision` (0: not compared) and under `guard`; a
        server written meanwhile raises `RevisionConflict` (or `FencingError`).
        """
        compares = [Compare.unchanged(status_key(name), status_revision)] if status_revision else []
        if guard is not None:
            compares.append(Compare.held(guard))
        ops: list[TxnOp] = [
            Delete(key=spec_key(name)),
            Delete(key=status_key(name)),
            Delete(key=incoming_key(name)),
            Delete(key=event_key(name)),
        ]
        result = await self._c.txn(compares, ops, [Get(key=status_key(name))])
        if result.succeeded:
            return
        if guard is not None:
            held = await self._c.get(guard.key)
            if held is None or held.create_revision != guard.create_revision:
                raise FencingError(f"forgetting server {name} refused: fencing token is stale")
        if result.reads.get(status_key(name)) is None:
            return  # already forgotten
        raise RevisionConflict(f"forgetting server {name} refused: it changed meanwhile")

    async def get_server(self, name: str) -> Server | None:
        """The server's records, read at one revision (None: it has no spec)."""
        keys = (spec_key(name), status_key(name), incoming_key(name), event_key(name))
        result = await self._c.txn([], [Get(key=k) for k in keys])
        spec_kv, status_kv, incoming_kv, event_kv = (result.reads[k] for k in keys)
        spec = _decoded(spec_kv, decode_spec)
        if spec is None or spec_kv is None:
            return None
        status = _decoded(status_kv, decode_status)
        return Server(
            spec=spec,
            status=status,
            incoming=_decoded(incoming_kv, decode_incoming),
            event=_decoded(event_kv, decode_event),
            spec_revision=spec_kv.mod_revision,
            status_revision=status_kv.mod_revision if status_kv is not None else 0,
        )

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
        await self._c.delete_prefix(server_prefix(name))

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


def _written(
    result: TxnResult, *, key: str, value: bytes, guard: Guard | None, what: str, why: str
) -> int:
    """The revision of a conditional write of `value` to `key`, or why it was refused.

    The failure branch of its transaction read `key` (and `guard.key`): a
    stale guard is a `FencingError`; finding exactly `value` is our own
    earlier attempt, whose answer was lost; anything else a `RevisionConflict`.
    """
    if result.succeeded:
        return result.revision
    if guard is not None:
        held = result.reads.get(guard.key)
        if held is None or held.create_revision != guard.create_revision:
            raise FencingError(f"{what} refused: fencing token is stale")
    current = result.reads.get(key)
    if current is not None and current.value == value:
        return current.mod_revision
    raise RevisionConflict(f"{what} refused: {why}")


def build_snapshot(items: list[KeyValue], revision: int) -> RegistrySnapshot:
    """A snapshot from the key-values under the prefix (others are ignored)."""
    groups: dict[str, GroupRecord] = {}
    specs: dict[str, tuple[ServerSpec, int]] = {}
    statuses: dict[str, tuple[ServerStatus, int]] = {}
    incomings: dict[str, IncomingRecord] = {}
    events: dict[str, ServerEvent] = {}
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
                specs[name] = (sp, kv.mod_revision)
        elif part == "status":
            st = _decoded(kv, decode_status)
            if st is not None:
                statuses[name] = (st, kv.mod_revision)
        elif part == "incoming":
            inc = _decoded(kv, decode_incoming)
            if inc is not None:
                incomings[name] = inc
        elif part == "event":
            ev = _decoded(kv, decode_event)
            if ev is not None:
                events[name] = ev
    servers: dict[str, Server] = {}
    for n, (sp, spec_revision) in specs.items():
        st, status_revision = statuses.get(n, (None, 0))
        servers[n] = Server(
            spec=sp,
            status=st,
            incoming=incomings.get(n),
            event=events.get(n),
            spec_revision=spec_revision,
            status_revision=status_revision,
        )
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
        if part in ("spec", "status", "incoming", "event"):
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
                        replace(old_server, spec=spec, spec_revision=event.revision)
                        if old_server is not None
                        else Server(spec=spec, spec_revision=event.revision)
                    )
            elif old_server is not None and part == "status":
                status = None if deleted else _decoded(_kv(event), decode_status)
                after = replace(
                    old_server,
                    status=status,
                    status_revision=event.revision if status is not None else 0,
                )
            elif old_server is not None and part == "event":
                news = None if deleted else _decoded(_kv(event), decode_event)
                after = replace(old_server, event=news)
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
    "broadcast_prefix",
    "build_snapshot",
    "diff",
    "event_key",
    "group_key",
    "host_key",
    "incoming_key",
    "legacy_broadcast_key",
    "parse_broadcast_key",
    "server_prefix",
    "spec_key",
    "status_key",
]
