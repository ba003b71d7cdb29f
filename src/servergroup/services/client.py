"""The service manager's client library: discovery, reads, and the operator's writes.

Theory of operation
-------------------
Everything here talks to the store through a `Coordinator` and to the
service manager only through its records (`services.store`): the node
roles act on what they read there, so a write here is a request they carry
out, and a read is what they last reported.

**Discovery** (the csnap agent's wish in seed 002: ask where the master is,
and be told, as an event, whenever it moves). `services/master/<service>`
holds a `MasterRecord` (node, instance, fencing token, address) on the
master's session lease, written by the node that holds the master (a plain
service's instance 0). `where(coordinator, name)` reads it once.
`watch_master(coordinator, name)` is an async iterator of `MasterEvent`s:
the first says how things stand, then one per change -- `MasterMoved` for
a new node, instance, token or address, `MasterGone` when the key goes
(the master's lease ended or it was demoted), `MasterUnreadable` for a
record that does not decode. It reads the key and its revision in one
step, then watches from the next revision; the coordinator resumes the
watch across reconnects without loss or repeat. When the store has
compacted the history the watch needs (`WatchCompacted`), or the watch
fails, it reads the key again and goes on watching from there; every event
is compared with the last one reported, so a re-read reports the change it
finds exactly once and nothing when nothing changed (states that came and
went inside the compacted window are not seen by anyone: the latest is
reported). Nothing polls: between changes the iterator waits on the
watch.

**Reads** (`read_services`, `service_status`): one prefix read of
`services/`, decoded by `store.read_listing` (a bad record is named, not
fatal) and viewed by `services.status`.

**Writes** are read-modify-writes in one transaction each, compared on
what they read (every key's mod revision, 0 for absent), retried from a
fresh read when a concurrent write got there first (`RevisionConflict` is
never shown to the caller unless the store keeps changing for
`ATTEMPTS` tries), so no update is lost:

- `add_definitions`: the file's services and domains, checked against the
  stored domains they name (a domain in the file replaces the stored one
  of that name, and every stored service using it must still fit), written
  together; unchanged definitions are left alone.
- `set_enabled`: the state record (`disabled`), keeping a fatal flag; a
  disable also drops the service's pending relocations (stopping makes a
  move moot), so a relocation racing a disable either lands before it (and
  is dropped) or sees the service disabled and is refused.
- `relocate`: a relocation record for a running instance, compared on the
  owner key (same token), the state record and, with a target, the
  target's node key (alive now). For a promotable service's master the
  record says `master` (compared on the master key too): the node roles
  move the master role, demoting it and promoting the target's copy. A
  target that already runs another copy of a plain instance is refused.
- `clear`: deletes failures, bans and blocks and the fatal flag.
- `remove`: the definition and every durable record of the service; the
  node roles stop its instances and drop their owner and master keys.

`check_agents` resolves a file's services against the OCF agents
installed here (`service validate`, `service add`): the agent exists, its
meta-data parses, and `model.resolve` accepts the service.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeVar

from servergroup.common.errors import LocalError, RemoteError
from servergroup.coordination import (
    Compare,
    CoordinationError,
    Coordinator,
    Delete,
    EventKind,
    Get,
    Put,
    TxnOp,
    WatchCompacted,
)
from servergroup.coordination.types import KeyValue
from servergroup.services.metadata import AgentInfo, MetadataError
from servergroup.services.model import (
    DefinitionError,
    Definitions,
    FailoverDomain,
    Service,
    check_domain_reference,
    encode_domain,
    encode_service,
    parse_definitions,
    resolve,
)
from servergroup.services.ocf import DEFAULT_OCF_ROOT, AgentNotFound, OcfAgent
from servergroup.services.placement import InstanceId
from servergroup.services.status import ServiceStatus, service_status, unreadable_definitions
from servergroup.services.store import (
    BANS,
    BLOCKED,
    FAILURES,
    REFUSED,
    RELOCATIONS,
    SERVICES,
    Listing,
    MasterRecord,
    RelocationRecord,
    ServiceRecordError,
    StateRecord,
    decode_master,
    def_key,
    domain_key,
    encode_relocation,
    encode_state,
    master_key,
    node_key,
    owner_key,
    read_listing,
    relocation_key,
    service_keys,
    state_key,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Tries of one read-modify-write before giving up on a store that keeps changing.
ATTEMPTS: Final = 20
#: Seconds before reading again when a watch failed for another reason than compaction.
RETRY_INTERVAL: Final = 1.0


class UnknownService(LocalError):
    """No service of that name is defined."""


class ServiceRefused(LocalError):
    """The request does not fit the service's state (one sentence that says why)."""


class StoreBusy(RemoteError):
    """A read-modify-write kept losing to concurrent writes."""


# -- discovery -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class MasterMoved:
    """The master is (now) instance `index` on `node`, holding fencing token `token`."""

    service: str
    node: str
    index: int
    token: int
    address: str | None
    revision: int  # the store revision this was seen at


@dataclass(frozen=True, slots=True, kw_only=True)
class MasterGone:
    """There is no master (now): its lease ended, it was demoted, or it never was."""

    service: str
    revision: int


@dataclass(frozen=True, slots=True, kw_only=True)
class MasterUnreadable:
    """The master record is there but does not decode (`reason` says why)."""

    service: str
    reason: str
    revision: int


MasterEvent = MasterMoved | MasterGone | MasterUnreadable


def _master_event(name: str, value: bytes | None, revision: int) -> MasterEvent:
    if value is None:
        return MasterGone(service=name, revision=revision)
    try:
        record = decode_master(value)
    except ServiceRecordError as exc:
        return MasterUnreadable(service=name, reason=str(exc), revision=revision)
    return MasterMoved(
        service=name,
        node=record.node,
        index=record.index,
        token=record.token,
        address=record.address,
        revision=revision,
    )


def _sameness(event: MasterEvent) -> tuple[object, ...]:
    """What two events must share to describe the same state (the revision aside)."""
    if isinstance(event, MasterMoved):
        return ("moved", event.node, event.index, event.token, event.address)
    if isinstance(event, MasterUnreadable):
        return ("unreadable", event.reason)
    return ("gone",)


async def _read_key(coordinator: Coordinator, key: str) -> tuple[KeyValue | None, int]:
    """The key and the store revision of the read, in one step."""
    result = await coordinator.txn([], [Get(key=key)])
    return result.reads.get(key), result.revision


async def where(coordinator: Coordinator, name: str) -> MasterRecord | None:
    """Where service `name`'s master is now; None when there is none.

    Raises `UnknownService` when the service is not defined and has no
    master, `ServiceRecordError` when the master record does not decode.
    """
    result = await coordinator.txn([], [Get(key=def_key(name)), Get(key=master_key(name))])
    master = result.reads.get(master_key(name))
    if master is None:
        if result.reads.get(def_key(name)) is None:
            raise UnknownService(f"no service {name!r} is defined.")
        return None
    return decode_master(master.value)


async def watch_master(
    coordinator: Coordinator, name: str, *, retry_interval: float = RETRY_INTERVAL
) -> AsyncIterator[MasterEvent]:
    """The state of service `name`'s master now, then one event per change, for ever.

    Survives reconnects and compactions (see the module's docstring); ends
    only when the caller stops iterating or the coordinator is closed. The
    first read's errors (the store unreachable) are raised; later ones are
    retried every `retry_interval` seconds.
    """
    key = master_key(name)
    last: tuple[object, ...] | None = None
    first = True
    while True:
        try:
            kv, revision = await _read_key(coordinator, key)
        except CoordinationError as exc:
            if first:
                raise
            log.warning("cannot read where %s's master is (%s); retrying", name, exc)
            await asyncio.sleep(retry_interval)
            continue
        first = False
        event = _master_event(name, None if kv is None else kv.value, revision)
        if _sameness(event) != last:
            last = _sameness(event)
            yield event
        try:
            watch = await coordinator.watch(key, start_revision=revision + 1)
        except CoordinationError as exc:
            log.warning("cannot watch where %s's master is (%s); retrying", name, exc)
            await asyncio.sleep(retry_interval)
            continue
        try:
            async for change in watch:
                if change.key != key:  # the watch is on a prefix: skip longer names
                    continue
                value = None if change.kind is EventKind.DELETE else change.value
                event = _master_event(name, value, change.revision)
                if _sameness(event) != last:
                    last = _sameness(event)
                    yield event
            return  # the coordinator was closed
        except WatchCompacted as exc:
            log.info("watch of %s's master compacted (%s): reading it again", name, exc)
        except CoordinationError as exc:
            log.warning("watch of %s's master ended (%s): reading it again", name, exc)
            await asyncio.sleep(retry_interval)
        finally:
            await watch.close()


# -- reads ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class _Read:
    """One read of `services/`: decoded, and the raw keys (for the compares of a write)."""

    listing: Listing
    items: Mapping[str, KeyValue]

    def mod(self, key: str) -> int:
        kv = self.items.get(key)
        return 0 if kv is None else kv.mod_revision

    def unchanged(self, key: str) -> Compare:
        return Compare.unchanged(key, self.mod(key))

    def under(self, prefix: str) -> list[KeyValue]:
        return [kv for key, kv in self.items.items() if key.startswith(prefix)]

    def service(self, name: str) -> Service:
        """The service's definition; one sentence when it is not there or does not decode."""
        service = self.listing.services.get(name)
        if service is not None:
            return service
        broken = unreadable_definitions(self.listing).get(name)
        if broken is not None:
            raise ServiceRecordError(f"the definition of service {name!r} is unreadable: {broken}")
        raise UnknownService(f"no service {name!r} is defined.")


async def _read(coordinator: Coordinator) -> _Read:
    rng = await coordinator.get_prefix(SERVICES)
    return _Read(
        listing=read_listing(rng.items, revision=rng.revision),
        items={kv.key: kv for kv in rng.items},
    )


async def read_services(coordinator: Coordinator) -> Listing:
    """Every record of the service manager, decoded (bad ones named in `errors`)."""
    return (await _read(coordinator)).listing


async def get_status(coordinator: Coordinator, name: str) -> ServiceStatus:
    """The status of service `name`; `UnknownService` when it is not defined."""
    read = await _read(coordinator)
    read.service(name)
    status = service_status(read.listing, name)
    assert status is not None
    return status


# -- writes --------------------------------------------------------------------------------


async def _retrying(
    coordinator: Coordinator,
    what: str,
    attempt: Callable[[_Read], tuple[Sequence[Compare], Sequence[TxnOp], T]],
) -> T:
    """Read, decide, write compared on the read; again from a fresh read on a conflict."""
    for tries in range(ATTEMPTS):
        read = await _read(coordinator)
        compares, ops, outcome = attempt(read)
        if not ops:
            return outcome
        result = await coordinator.txn(compares, ops)
        if result.succeeded:
            return outcome
        log.debug("%s: the store changed since it was read; reading again", what)
        await asyncio.sleep(random.uniform(0, 0.01 * (tries + 1)))
    raise StoreBusy(f"{what}: the service records kept changing while writing; try again.")


@dataclass(frozen=True, slots=True, kw_only=True)
class Added:
    """What `add_definitions` did to each name: "added", "updated" or "unchanged"."""

    services: Mapping[str, str]
    domains: Mapping[str, str]


def _change(read: _Read, key: str, value: bytes) -> str:
    kv = read.items.get(key)
    if kv is None:
        return "added"
    return "unchanged" if kv.value == value else "updated"


async def add_definitions(coordinator: Coordinator, text: str) -> Added:
    """Store the services and domains of a definitions file's `text`, together.

    The file is checked whole first (`DefinitionError`, naming the field):
    a service may name a domain of the file or one already stored, and a
    domain of the file that replaces a stored one must still fit every
    stored service that uses it.
    """
    parse_file(text)  # a malformed file fails before the store is asked
    return await _retrying(coordinator, "service add", lambda read: _add(read, text))


def _add(read: _Read, text: str) -> tuple[list[Compare], list[TxnOp], Added]:
    stored_domains = dict(read.listing.domains)
    definitions = parse_definitions(text, known_domains=stored_domains)
    domains = {**stored_domains, **{d.name: d for d in definitions.domains}}
    mine = {s.name for s in definitions.services}
    for service in read.listing.services.values():
        if service.name not in mine:
            try:
                check_domain_reference(service, domains)
            except DefinitionError as exc:
                raise DefinitionError(f"{exc} (stored service {service.name!r})") from None
    compares: list[Compare] = []
    ops: list[TxnOp] = []
    services: dict[str, str] = {}
    added_domains: dict[str, str] = {}
    for service in definitions.services:
        key, value = def_key(service.name), encode_service(service)
        services[service.name] = _change(read, key, value)
        compares.append(read.unchanged(key))
        if services[service.name] != "unchanged":
            ops.append(Put(key=key, value=value))
    for domain in definitions.domains:
        key, value = domain_key(domain.name), encode_domain(domain)
        added_domains[domain.name] = _change(read, key, value)
        compares.append(read.unchanged(key))
        if added_domains[domain.name] != "unchanged":
            ops.append(Put(key=key, value=value))
    # The stored domains the file relies on must not change under it, nor may the
    # stored services the file's domains were checked against.
    named = {s.domain for s in definitions.services if s.domain is not None}
    file_domains = {d.name for d in definitions.domains}
    compares += [read.unchanged(domain_key(n)) for n in sorted(named - file_domains)]
    compares += [
        read.unchanged(def_key(s.name))
        for s in read.listing.services.values()
        if s.name not in mine and s.domain in file_domains
    ]
    return compares, ops, Added(services=services, domains=added_domains)


def _state_of(read: _Read, name: str) -> StateRecord | None:
    return read.listing.states.get(name)


def enabled_sentence(name: str, enabled: bool, changed: bool) -> str:
    """What `service enable|disable` prints (the CLI and the API alike)."""
    return f"service {name} {'enabled' if enabled else 'disabled'}" + (
        "" if changed else " (it was)"
    )


async def set_enabled(coordinator: Coordinator, name: str, enabled: bool) -> bool:
    """Enable or disable service `name`; return whether that changed anything.

    A disable drops the service's pending relocations in the same transaction.
    """

    def attempt(read: _Read) -> tuple[list[Compare], list[TxnOp], bool]:
        service = read.service(name)
        state = _state_of(read, name)
        was_disabled = read.listing.disabled(service)
        if was_disabled == (not enabled) and state is not None:
            return [], [], False
        record = StateRecord(
            disabled=not enabled,
            fatal=state.fatal if state is not None else False,
            reason=state.reason
            if state is not None and state.fatal
            else ("" if enabled else "operator"),
            at=time.time(),
        )
        compares = [read.unchanged(def_key(name)), read.unchanged(state_key(name))]
        ops: list[TxnOp] = [Put(key=state_key(name), value=encode_state(record))]
        if not enabled:
            for kv in read.under(f"{RELOCATIONS}{name}/"):
                compares.append(Compare.unchanged(kv.key, kv.mod_revision))
                ops.append(Delete(key=kv.key))
            # A relocation written after this read must fail this write too: compare
            # every instance's relocation key, absent ones included.
            read_keys = {c.key for c in compares}
            for index in range(service.instances):
                key = relocation_key(InstanceId(service=name, index=index))
                if key not in read_keys:
                    compares.append(read.unchanged(key))
        return compares, ops, was_disabled != (not enabled)

    return await _retrying(coordinator, f"service {'enable' if enabled else 'disable'}", attempt)


@dataclass(frozen=True, slots=True, kw_only=True)
class Relocated:
    """The relocation asked: `instance` off `from_node`, to `to_node` (None: anywhere allowed).

    `master`: the instance is a promotable service's master, and the master role moves.
    """

    instance: InstanceId
    from_node: str
    to_node: str | None
    master: bool = False

    def describe(self) -> str:
        """One sentence (what `service relocate` prints)."""
        what = f"move of the master of {self.instance.service}" if self.master else None
        what = what or f"relocation of {self.instance}"
        return f"{what} asked: from {self.from_node} to {self.to_node or 'the best other node'}"


def _instance_to_move(read: _Read, service: Service, index: int | None) -> InstanceId:
    listing = read.listing
    if index is not None:
        if not 0 <= index < service.instances:
            raise ServiceRefused(
                f"service {service.name!r} has instances 0 to {service.instances - 1}, not {index}."
            )
        return InstanceId(service=service.name, index=index)
    if service.promotable:
        master = listing.masters.get(service.name)
        if master is None:
            raise ServiceRefused(
                f"service {service.name!r} has no master to relocate; name one with --instance."
            )
        return InstanceId(service=service.name, index=master.index)
    if service.instances > 1:
        raise ServiceRefused(
            f"service {service.name!r} runs {service.instances} instances; "
            "say which with --instance."
        )
    return InstanceId(service=service.name, index=0)


async def relocate(
    coordinator: Coordinator, name: str, *, to: str | None = None, index: int | None = None
) -> Relocated:
    """Ask the node roles to move an instance of `name` off its node (to `to`, a live node).

    By default the instance is the master of a promotable service, else
    instance 0 (a service of several plain instances needs `index`).
    """

    def attempt(read: _Read) -> tuple[list[Compare], list[TxnOp], Relocated]:
        service = read.service(name)
        listing = read.listing
        if listing.fatal(name):
            raise ServiceRefused(f"service {name!r} stopped on a fatal error; clear it first.")
        if listing.disabled(service):
            raise ServiceRefused(f"service {name!r} is disabled; enable it first.")
        instance = _instance_to_move(read, service, index)
        held = listing.owners.get(instance)
        if held is None:
            raise ServiceRefused(f"instance {instance} is not running: there is nothing to move.")
        master = listing.masters.get(name)
        # The master of a promotable service: its role moves (to a copy already on the
        # target, or with the instance to a free target), as `pcs resource move` does.
        moves_master = (
            service.promotable
            and master is not None
            and master.index == instance.index
            and master.node == held.record.node
        )
        compares = [
            read.unchanged(def_key(name)),
            read.unchanged(state_key(name)),
            Compare.created_at(owner_key(instance), held.token),
            read.unchanged(relocation_key(instance)),
        ]
        if moves_master:
            compares.append(read.unchanged(master_key(name)))
        if to is not None:
            node = read.items.get(node_key(to))
            if node is None:
                alive = ", ".join(sorted(listing.nodes)) or "none"
                raise ServiceRefused(f"node {to!r} is not a live node (live nodes: {alive}).")
            if to == held.record.node:
                what = f"the master of {name!r}" if moves_master else f"instance {instance}"
                raise ServiceRefused(f"{what} already runs on {to}.")
            domain = listing.domains.get(service.domain) if service.domain else None
            if _outside_restricted(domain, to):
                raise ServiceRefused(
                    f"node {to!r} is outside the restricted domain {service.domain!r} "
                    f"of service {name!r}."
                )
            other = next(
                (
                    i
                    for i, h in sorted(listing.owners.items())
                    if i.service == name and i != instance and h.record.node == to
                ),
                None,
            )
            if other is not None and not moves_master:
                raise ServiceRefused(
                    f"{to} already runs instance {other} and copies of a service run on "
                    f"distinct nodes; move {other} away first, or pick a node without a copy."
                )
            compares.append(Compare.created_at(node_key(to), node.create_revision))
        record = RelocationRecord(
            from_node=held.record.node, to_node=to, at=time.time(), master=moves_master
        )
        ops: list[TxnOp] = [Put(key=relocation_key(instance), value=encode_relocation(record))]
        done = Relocated(
            instance=instance, from_node=held.record.node, to_node=to, master=moves_master
        )
        return compares, ops, done

    return await _retrying(coordinator, "service relocate", attempt)


def _outside_restricted(domain: FailoverDomain | None, node: str) -> bool:
    if domain is None or not domain.restricted or domain.server_group is not None:
        return False  # a server-group domain's members are known to the node roles only
    return node not in {m.node for m in domain.members}


@dataclass(frozen=True, slots=True, kw_only=True)
class Cleared:
    """What `clear` forgot: failure records, bans and blocks (by node), and a fatal flag;
    and the refusal of the definition it left (`refused`: the reason, or "")."""

    failures: tuple[str, ...]
    bans: tuple[str, ...]
    blocks: tuple[InstanceId, ...]
    fatal: bool
    refused: str = ""

    def describe(self, service: str) -> str:
        """What `service clear` prints: one sentence, and one more if a refusal stays."""
        parts = [
            f"{len(self.failures)} failure record(s)",
            f"{len(self.bans)} ban(s)",
            f"{len(self.blocks)} block(s)",
        ]
        if self.fatal:
            parts.append("the fatal error")
        text = f"service {service}: cleared " + ", ".join(parts)
        if self.refused:
            text += f"\nservice {service}: still refused (a definition that fits lifts it): "
            text += self.refused
        return text


async def clear(coordinator: Coordinator, name: str) -> Cleared:
    """Forget service `name`'s failures, bans, blocks and fatal flag.

    A refused definition stays refused: no failure caused it, and the node
    roles would refuse it again; a definition that fits (`add`) lifts it.
    """

    def attempt(read: _Read) -> tuple[list[Compare], list[TxnOp], Cleared]:
        read.service(name)
        compares = [read.unchanged(def_key(name))]
        ops: list[TxnOp] = []
        for prefix in (f"{FAILURES}{name}/", f"{BANS}{name}/", f"{BLOCKED}{name}/"):
            for kv in read.under(prefix):
                compares.append(Compare.unchanged(kv.key, kv.mod_revision))
                ops.append(Delete(key=kv.key))
        listing = read.listing
        state = _state_of(read, name)
        refused = state is not None and state.refused
        fatal = state is not None and state.fatal and not refused
        if state is not None and fatal:
            compares.append(read.unchanged(state_key(name)))
            record = StateRecord(disabled=state.disabled, fatal=False, reason="", at=time.time())
            ops.append(Put(key=state_key(name), value=encode_state(record)))
        cleared = Cleared(
            failures=tuple(sorted(n for s, n in listing.failures if s == name)),
            bans=tuple(sorted(n for s, n in listing.bans if s == name)),
            blocks=tuple(sorted(i for i in listing.blocked if i.service == name)),
            fatal=fatal,
            refused=state.reason.removeprefix(REFUSED) if state is not None and refused else "",
        )
        return compares, ops, cleared

    return await _retrying(coordinator, "service clear", attempt)


async def remove(coordinator: Coordinator, name: str) -> int:
    """Delete service `name`'s definition and durable records; return how many keys went.

    Its owner and master keys belong to the node roles, which stop the
    instances of a service that is no longer defined and delete them.
    """

    def attempt(read: _Read) -> tuple[list[Compare], list[TxnOp], int]:
        if def_key(name) not in read.items:
            raise UnknownService(f"no service {name!r} is defined.")
        keys: list[str] = []
        for key in service_keys(name):  # prefixes end with "/"
            keys += [kv.key for kv in read.under(key)] if key.endswith("/") else [key]
        keys = [k for k in keys if k in read.items]
        compares = [read.unchanged(k) for k in keys]
        return compares, [Delete(key=k) for k in keys], len(keys)

    return await _retrying(coordinator, "service remove", attempt)


# -- files and agents ----------------------------------------------------------------------


class _AnyDomain(Mapping[str, FailoverDomain]):
    """Stands for the stored domains when no store is asked: any name is a domain."""

    def __getitem__(self, name: str) -> FailoverDomain:
        return FailoverDomain(name=name)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


@dataclass(frozen=True, slots=True, kw_only=True)
class ParsedFile:
    """A definitions file checked without the store; `outside`: domains it names but lacks."""

    definitions: Definitions
    outside: tuple[str, ...]


def parse_file(text: str) -> ParsedFile:
    """Check a definitions file on its own (`DefinitionError` naming the field).

    A service may name a domain the file does not define: `service add`
    looks for it in the store; such names are listed in `outside`.
    """
    definitions = parse_definitions(text, known_domains=_AnyDomain())
    mine = {d.name for d in definitions.domains}
    named = {s.domain for s in definitions.services if s.domain is not None}
    return ParsedFile(definitions=definitions, outside=tuple(sorted(named - mine)))


@dataclass(frozen=True, slots=True, kw_only=True)
class Checked:
    """A service of a file as the node roles will run it, resolved against its agent."""

    service: Service
    resolved: Service | None  # None when the agents were not checked


async def check_agents(
    definitions: Definitions, *, ocf_root: Path = DEFAULT_OCF_ROOT
) -> tuple[Checked, ...]:
    """Resolve every service against its agent's meta-data here; `DefinitionError` naming it."""
    infos: dict[str, AgentInfo] = {}
    out = []
    for service in definitions.services:
        where = f"service {service.name!r}"
        ref = str(service.agent)
        if ref not in infos:
            try:
                agent = OcfAgent(
                    service.agent, instance=f"{service.name}-validate", ocf_root=ocf_root
                )
            except AgentNotFound as exc:
                raise DefinitionError(f"{where}: {exc}") from None  # "agent X is not installed"
            try:
                infos[ref] = await agent.metadata()
            except MetadataError as exc:
                raise DefinitionError(f"{where}: {exc}") from None  # "agent X: ..."
        out.append(Checked(service=service, resolved=resolve(service, infos[ref])))
    return tuple(out)


def unchecked(definitions: Definitions) -> tuple[Checked, ...]:
    """The services of a file, not resolved (`--skip-agents`)."""
    return tuple(Checked(service=s, resolved=None) for s in definitions.services)


__all__ = [
    "ATTEMPTS",
    "Added",
    "Checked",
    "Cleared",
    "MasterEvent",
    "MasterGone",
    "MasterMoved",
    "MasterUnreadable",
    "ParsedFile",
    "Relocated",
    "ServiceRefused",
    "StoreBusy",
    "UnknownService",
    "add_definitions",
    "check_agents",
    "clear",
    "enabled_sentence",
    "get_status",
    "parse_file",
    "read_services",
    "relocate",
    "remove",
    "set_enabled",
    "unchecked",
    "watch_master",
    "where",
]
