"""The service manager's key space and its records (pure: keys and codecs, no I/O).

Under the coordinator's prefix (docs/design/services.md, "Key space"):

    services/defs/<service>              a definition (model.encode_service)   no lease
    services/domains/<domain>            a failover domain (model.encode_domain) no lease
    services/nodes/<node>                  NodeRecord: a node role is alive      session
    services/owners/<service>/<index>      OwnerRecord: who runs an instance     owner's session
    services/master/<service>              MasterRecord: where the master is     master's session
    services/failures/<service>/<node>     FailureRecord: recent failure times   no lease
    services/bans/<service>/<node>         BanRecord: a hard error banned a node no lease
    services/state/<service>               StateRecord: disabled / fatal         no lease
    services/blocked/<service>/<index>     BlockRecord: a stop failed            no lease
    services/relocations/<service>/<index> RelocationRecord: an operator's move  no lease
    services/history/<service>             HistoryRecord: the last placements    no lease

Who writes what: the CLI writes definitions, domains, the disabled flag,
relocations, and removes failures, bans and blocks (`service clear`); a node
role writes its own node, owner and master keys on its session lease (the
owner key is created only if absent, and its **create revision is the
fencing token**, so the token is never in the value), the failures, bans
and blocks it saw, the fatal flag, and appends to the history with a compare
on the history key's revision.

Times in records are wall-clock seconds since the epoch (`time.time()`):
records are compared across nodes, so a node's monotonic clock would mean
nothing elsewhere. Placement's `now` is the same clock on the node deciding.

`read_listing` turns one prefix read of `services/` into a `Listing`, the
decoded view that both the node role (through `snapshot`, into
`placement.Snapshot`) and `servergroup service list/status` use. A record
that does not decode is left out and named in `Listing.errors`, one sentence
each, so one bad record never hides the rest.

Every record encodes to compact JSON with sorted keys and decodes with a
`decode_*` that raises `ServiceRecordError` with one sentence.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from servergroup.common.errors import RemoteError
from servergroup.coordination.types import KeyValue
from servergroup.services.model import (
    FailoverDomain,
    Service,
    StoredDefinitionError,
    decode_domain,
    decode_service,
)
from servergroup.services.placement import Failure, InstanceId, Owner, Relocation, Snapshot

#: How a state record says the node roles refuse a definition (a later one that fits lifts it).
REFUSED: Final = "refused: "
SERVICES: Final = "services/"
DEFS: Final = f"{SERVICES}defs/"
DOMAINS: Final = f"{SERVICES}domains/"
NODES: Final = f"{SERVICES}nodes/"
OWNERS: Final = f"{SERVICES}owners/"
MASTERS: Final = f"{SERVICES}master/"
FAILURES: Final = f"{SERVICES}failures/"
BANS: Final = f"{SERVICES}bans/"
STATES: Final = f"{SERVICES}state/"
BLOCKED: Final = f"{SERVICES}blocked/"
RELOCATIONS: Final = f"{SERVICES}relocations/"
HISTORY: Final = f"{SERVICES}history/"

#: Failure times kept per (service, node): more than any `max_restarts` worth counting.
FAILURE_LIMIT: Final = 64
#: History entries kept per service (the oldest go first).
HISTORY_LIMIT: Final = 100


class ServiceRecordError(RemoteError):
    """A record under `services/` is malformed (one sentence)."""


# -- keys ----------------------------------------------------------------------------------


def def_key(service: str) -> str:
    return f"{DEFS}{service}"


def domain_key(domain: str) -> str:
    return f"{DOMAINS}{domain}"


def node_key(node: str) -> str:
    return f"{NODES}{node}"


def owner_key(instance: InstanceId) -> str:
    return f"{OWNERS}{instance.service}/{instance.index}"


def master_key(service: str) -> str:
    return f"{MASTERS}{service}"


def failure_key(service: str, node: str) -> str:
    return f"{FAILURES}{service}/{node}"


def ban_key(service: str, node: str) -> str:
    return f"{BANS}{service}/{node}"


def state_key(service: str) -> str:
    return f"{STATES}{service}"


def blocked_key(instance: InstanceId) -> str:
    return f"{BLOCKED}{instance.service}/{instance.index}"


def relocation_key(instance: InstanceId) -> str:
    return f"{RELOCATIONS}{instance.service}/{instance.index}"


def history_key(service: str) -> str:
    return f"{HISTORY}{service}"


def service_keys(service: str) -> tuple[str, ...]:
    """Every key and prefix that belongs to one service (what `service remove` clears).

    Prefixes end with "/"; the node, owner and master keys are not listed: they
    belong to the node roles, which stop and remove the instances of a removed
    service themselves.
    """
    return (
        def_key(service),
        state_key(service),
        history_key(service),
        f"{FAILURES}{service}/",
        f"{BANS}{service}/",
        f"{BLOCKED}{service}/",
        f"{RELOCATIONS}{service}/",
    )


def _split(key: str, prefix: str, parts: int) -> tuple[str, ...] | None:
    if not key.startswith(prefix):
        return None
    fields = tuple(key[len(prefix) :].split("/"))
    if len(fields) != parts or not all(fields):
        return None
    return fields


def _instance(fields: tuple[str, ...] | None) -> InstanceId | None:
    if fields is None or not fields[1].isdigit():
        return None
    return InstanceId(service=fields[0], index=int(fields[1]))


# -- records -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeRecord:
    """A node role, alive while its key (on its session lease) exists."""

    node: str
    ip: str = ""  # for address templates ({node_ip})
    joined_at: float  # wall time the role (re)joined: failback looks at it


@dataclass(frozen=True, slots=True, kw_only=True)
class MonitorResult:
    """The last result of one monitor depth on an instance."""

    depth: int
    ok: bool
    code: int | None  # the agent's exit code; None for a timeout or a signal
    reason: str = ""
    at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class OwnerRecord:
    """What the node holding an instance's key reports of it.

    The fencing token is the key's create revision, so it is not in the value.
    """

    node: str
    master: bool = False
    failed: bool = False
    busy: bool = False
    action: str = ""  # the action in flight when busy ("start", "promote", ...)
    started_at: float | None = None
    monitors: tuple[MonitorResult, ...] = ()
    address: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class MasterRecord:
    """Where a service's master (a plain service's instance 0) is; discovery reads it."""

    node: str
    index: int
    token: int
    address: str | None = None
    at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class FailureRecord:
    """Recent failure times of a service on a node (the last `FAILURE_LIMIT`)."""

    times: tuple[float, ...]
    reason: str = ""  # the last failure's sentence


@dataclass(frozen=True, slots=True, kw_only=True)
class BanRecord:
    """A hard error of the service's agent on the node: placement avoids the node."""

    reason: str
    at: float
    token: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class StateRecord:
    """An operator's disable (or enable), or a fatal error; overrides the definition's `enabled`.

    A definition the node roles refuse (it does not resolve against its agent,
    or its stop does not fit their lease) is a fatal state whose reason starts
    with `REFUSED`: `refused` tells it apart.
    """

    disabled: bool = False
    fatal: bool = False
    reason: str = ""
    at: float

    @property
    def refused(self) -> bool:
        return self.fatal and self.reason.startswith(REFUSED)


@dataclass(frozen=True, slots=True, kw_only=True)
class BlockRecord:
    """A stop that failed: the instance may still run on `node`; started nowhere until cleared."""

    node: str
    token: int
    reason: str
    at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class RelocationRecord:
    """`service relocate`: move the instance off `from_node`, to `to_node` or anywhere allowed.

    `master`: the instance was a promotable service's master when asked, and the
    master role is what moves (`placement.Relocation`). `waiting`: why the node
    roles cannot carry it out now (written by `from_node`'s; empty while it goes on).
    """

    from_node: str
    to_node: str | None = None
    at: float
    master: bool = False
    waiting: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class HistoryEntry:
    """One thing a node role did to an instance, with the token it held."""

    at: float
    node: str
    index: int
    token: int
    action: str  # start, stop, restart, promote, demote, monitor, disable, fence
    result: str  # "ok" or the failure's sentence


@dataclass(frozen=True, slots=True, kw_only=True)
class HistoryRecord:
    entries: tuple[HistoryEntry, ...] = ()

    def appended(self, entry: HistoryEntry) -> HistoryRecord:
        """This history with `entry` at the end, the oldest dropped past `HISTORY_LIMIT`."""
        return HistoryRecord(entries=(*self.entries, entry)[-HISTORY_LIMIT:])


# -- codecs --------------------------------------------------------------------------------


def _dumps(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _loads(raw: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ServiceRecordError(f"{what} record is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ServiceRecordError(f"{what} record is not a JSON object")
    return obj


def _str(obj: Mapping[str, Any], key: str, what: str, *, default: str | None = None) -> str:
    value = obj.get(key, default)
    if not isinstance(value, str):
        raise ServiceRecordError(f"{what} record has no string {key!r}")
    return value


def _opt_str(obj: Mapping[str, Any], key: str, what: str) -> str | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise ServiceRecordError(f"{what} record has {key!r} that is not a string")
    return value


def _bool(obj: Mapping[str, Any], key: str, what: str) -> bool:
    value = obj.get(key, False)
    if not isinstance(value, bool):
        raise ServiceRecordError(f"{what} record has {key!r} that is not true or false")
    return value


def _int(value: Any, key: str, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ServiceRecordError(f"{what} record has no non-negative integer {key!r}")
    return value


def _time(value: Any, key: str, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ServiceRecordError(f"{what} record has no time {key!r}")
    return float(value)


def _opt_time(obj: Mapping[str, Any], key: str, what: str) -> float | None:
    value = obj.get(key)
    return None if value is None else _time(value, key, what)


def _list(obj: Mapping[str, Any], key: str, what: str) -> list[Any]:
    value = obj.get(key, [])
    if not isinstance(value, list):
        raise ServiceRecordError(f"{what} record has {key!r} that is not a list")
    return value


def encode_node(record: NodeRecord) -> bytes:
    return _dumps({"node": record.node, "ip": record.ip, "joined_at": record.joined_at})


def decode_node(raw: bytes) -> NodeRecord:
    what = "service node"
    obj = _loads(raw, what)
    return NodeRecord(
        node=_str(obj, "node", what),
        ip=_str(obj, "ip", what, default=""),
        joined_at=_time(obj.get("joined_at"), "joined_at", what),
    )


def _monitor_obj(result: MonitorResult) -> dict[str, Any]:
    return {
        "depth": result.depth,
        "ok": result.ok,
        "code": result.code,
        "reason": result.reason,
        "at": result.at,
    }


def _monitor(obj: Any, what: str) -> MonitorResult:
    if not isinstance(obj, dict):
        raise ServiceRecordError(f"{what} record has a monitor result that is not an object")
    code = obj.get("code")
    return MonitorResult(
        depth=_int(obj.get("depth"), "depth", what),
        ok=_bool(obj, "ok", what),
        code=None if code is None else _int(code, "code", what),
        reason=_str(obj, "reason", what, default=""),
        at=_time(obj.get("at"), "at", what),
    )


def encode_owner(record: OwnerRecord) -> bytes:
    return _dumps(
        {
            "node": record.node,
            "master": record.master,
            "failed": record.failed,
            "busy": record.busy,
            "action": record.action,
            "started_at": record.started_at,
            "monitors": [_monitor_obj(m) for m in record.monitors],
            "address": record.address,
        }
    )


def decode_owner(raw: bytes) -> OwnerRecord:
    what = "service owner"
    obj = _loads(raw, what)
    return OwnerRecord(
        node=_str(obj, "node", what),
        master=_bool(obj, "master", what),
        failed=_bool(obj, "failed", what),
        busy=_bool(obj, "busy", what),
        action=_str(obj, "action", what, default=""),
        started_at=_opt_time(obj, "started_at", what),
        monitors=tuple(_monitor(m, what) for m in _list(obj, "monitors", what)),
        address=_opt_str(obj, "address", what),
    )


def encode_master(record: MasterRecord) -> bytes:
    return _dumps(
        {
            "node": record.node,
            "index": record.index,
            "token": record.token,
            "address": record.address,
            "at": record.at,
        }
    )


def decode_master(raw: bytes) -> MasterRecord:
    what = "service master"
    obj = _loads(raw, what)
    return MasterRecord(
        node=_str(obj, "node", what),
        index=_int(obj.get("index"), "index", what),
        token=_int(obj.get("token"), "token", what),
        address=_opt_str(obj, "address", what),
        at=_time(obj.get("at"), "at", what),
    )


def encode_failure(record: FailureRecord) -> bytes:
    return _dumps({"times": list(record.times[-FAILURE_LIMIT:]), "reason": record.reason})


def decode_failure(raw: bytes) -> FailureRecord:
    what = "service failure"
    obj = _loads(raw, what)
    times = tuple(_time(t, "times", what) for t in _list(obj, "times", what))
    return FailureRecord(times=times[-FAILURE_LIMIT:], reason=_str(obj, "reason", what, default=""))


def encode_ban(record: BanRecord) -> bytes:
    return _dumps({"reason": record.reason, "at": record.at, "token": record.token})


def decode_ban(raw: bytes) -> BanRecord:
    what = "service ban"
    obj = _loads(raw, what)
    return BanRecord(
        reason=_str(obj, "reason", what, default=""),
        at=_time(obj.get("at"), "at", what),
        token=_int(obj.get("token", 0), "token", what),
    )


def encode_state(record: StateRecord) -> bytes:
    return _dumps(
        {
            "disabled": record.disabled,
            "fatal": record.fatal,
            "reason": record.reason,
            "at": record.at,
        }
    )


def decode_state(raw: bytes) -> StateRecord:
    what = "service state"
    obj = _loads(raw, what)
    return StateRecord(
        disabled=_bool(obj, "disabled", what),
        fatal=_bool(obj, "fatal", what),
        reason=_str(obj, "reason", what, default=""),
        at=_time(obj.get("at"), "at", what),
    )


def encode_block(record: BlockRecord) -> bytes:
    return _dumps(
        {"node": record.node, "token": record.token, "reason": record.reason, "at": record.at}
    )


def decode_block(raw: bytes) -> BlockRecord:
    what = "service block"
    obj = _loads(raw, what)
    return BlockRecord(
        node=_str(obj, "node", what),
        token=_int(obj.get("token"), "token", what),
        reason=_str(obj, "reason", what, default=""),
        at=_time(obj.get("at"), "at", what),
    )


def encode_relocation(record: RelocationRecord) -> bytes:
    return _dumps(
        {
            "from_node": record.from_node,
            "to_node": record.to_node,
            "at": record.at,
            "master": record.master,
            "waiting": record.waiting,
        }
    )


def decode_relocation(raw: bytes) -> RelocationRecord:
    what = "service relocation"
    obj = _loads(raw, what)
    return RelocationRecord(
        from_node=_str(obj, "from_node", what),
        to_node=_opt_str(obj, "to_node", what),
        at=_time(obj.get("at"), "at", what),
        master=_bool(obj, "master", what),
        waiting=_str(obj, "waiting", what, default=""),
    )


def relocated_to(listing: Listing, instance: InstanceId, record: RelocationRecord) -> str | None:
    """The node that holds what `record` moves, once that is off `from_node` (None: pending).

    An instance has moved once another node owns it; a master once a master
    other than `from_node`'s runs (not busy: its promote ended), wherever that
    is (a failover can make the move moot).
    """
    if record.master:
        for other, copy in sorted(listing.owners.items()):
            if (
                other.service == instance.service
                and copy.record.master
                and not copy.record.busy
                and copy.record.node != record.from_node
            ):
                return copy.record.node
        return None
    held = listing.owners.get(instance)
    if held is not None and held.record.node != record.from_node:
        return held.record.node
    return None


def _entry_obj(entry: HistoryEntry) -> dict[str, Any]:
    return {
        "at": entry.at,
        "node": entry.node,
        "index": entry.index,
        "token": entry.token,
        "action": entry.action,
        "result": entry.result,
    }


def _entry(obj: Any, what: str) -> HistoryEntry:
    if not isinstance(obj, dict):
        raise ServiceRecordError(f"{what} record has an entry that is not an object")
    return HistoryEntry(
        at=_time(obj.get("at"), "at", what),
        node=_str(obj, "node", what),
        index=_int(obj.get("index"), "index", what),
        token=_int(obj.get("token"), "token", what),
        action=_str(obj, "action", what),
        result=_str(obj, "result", what),
    )


def encode_history(record: HistoryRecord) -> bytes:
    return _dumps({"entries": [_entry_obj(e) for e in record.entries[-HISTORY_LIMIT:]]})


def decode_history(raw: bytes) -> HistoryRecord:
    what = "service history"
    obj = _loads(raw, what)
    entries = tuple(_entry(e, what) for e in _list(obj, "entries", what))
    return HistoryRecord(entries=entries[-HISTORY_LIMIT:])


# -- the whole key space, decoded ----------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Held:
    """An owner key as read: the record and its fencing token (the key's create revision)."""

    record: OwnerRecord
    token: int
    lease: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Listing:
    """One read of `services/`, decoded; what did not decode is named in `errors`."""

    revision: int = 0
    services: Mapping[str, Service] = field(default_factory=dict)
    domains: Mapping[str, FailoverDomain] = field(default_factory=dict)
    nodes: Mapping[str, NodeRecord] = field(default_factory=dict)
    owners: Mapping[InstanceId, Held] = field(default_factory=dict)
    masters: Mapping[str, MasterRecord] = field(default_factory=dict)
    failures: Mapping[tuple[str, str], FailureRecord] = field(default_factory=dict)
    bans: Mapping[tuple[str, str], BanRecord] = field(default_factory=dict)
    states: Mapping[str, StateRecord] = field(default_factory=dict)
    blocked: Mapping[InstanceId, BlockRecord] = field(default_factory=dict)
    relocations: Mapping[InstanceId, RelocationRecord] = field(default_factory=dict)
    history: Mapping[str, HistoryRecord] = field(default_factory=dict)
    errors: tuple[str, ...] = ()

    def disabled(self, service: Service) -> bool:
        """Whether `service` is stopped everywhere: an operator's say, else its definition's."""
        state = self.states.get(service.name)
        if state is not None:
            return state.disabled
        return not service.enabled

    def fatal(self, service: str) -> bool:
        state = self.states.get(service)
        return state is not None and state.fatal

    def refused(self, service: str) -> bool:
        """Whether the node roles refuse the service's definition (a fatal state of its own)."""
        state = self.states.get(service)
        return state is not None and state.refused


def read_listing(items: Iterable[KeyValue], *, revision: int = 0) -> Listing:
    """Decode every key of a prefix read of `services/` (keys relative to the prefix)."""
    services: dict[str, Service] = {}
    domains: dict[str, FailoverDomain] = {}
    nodes: dict[str, NodeRecord] = {}
    owners: dict[InstanceId, Held] = {}
    masters: dict[str, MasterRecord] = {}
    failures: dict[tuple[str, str], FailureRecord] = {}
    bans: dict[tuple[str, str], BanRecord] = {}
    states: dict[str, StateRecord] = {}
    blocked: dict[InstanceId, BlockRecord] = {}
    relocations: dict[InstanceId, RelocationRecord] = {}
    history: dict[str, HistoryRecord] = {}
    errors: list[str] = []
    for item in items:
        key = item.key
        try:
            if (one := _split(key, DEFS, 1)) is not None:
                services[one[0]] = decode_service(item.value)
            elif (one := _split(key, DOMAINS, 1)) is not None:
                domains[one[0]] = decode_domain(item.value)
            elif (one := _split(key, NODES, 1)) is not None:
                nodes[one[0]] = decode_node(item.value)
            elif (instance := _instance(_split(key, OWNERS, 2))) is not None:
                owners[instance] = Held(
                    record=decode_owner(item.value), token=item.create_revision, lease=item.lease
                )
            elif (one := _split(key, MASTERS, 1)) is not None:
                masters[one[0]] = decode_master(item.value)
            elif (two := _split(key, FAILURES, 2)) is not None:
                failures[(two[0], two[1])] = decode_failure(item.value)
            elif (two := _split(key, BANS, 2)) is not None:
                bans[(two[0], two[1])] = decode_ban(item.value)
            elif (one := _split(key, STATES, 1)) is not None:
                states[one[0]] = decode_state(item.value)
            elif (instance := _instance(_split(key, BLOCKED, 2))) is not None:
                blocked[instance] = decode_block(item.value)
            elif (instance := _instance(_split(key, RELOCATIONS, 2))) is not None:
                relocations[instance] = decode_relocation(item.value)
            elif (one := _split(key, HISTORY, 1)) is not None:
                history[one[0]] = decode_history(item.value)
            else:
                errors.append(f"key {key} is not one of the service manager's")
        except (ServiceRecordError, StoredDefinitionError) as exc:
            errors.append(f"key {key}: {exc}")
    return Listing(
        revision=revision,
        services=services,
        domains=domains,
        nodes=nodes,
        owners=owners,
        masters=masters,
        failures=failures,
        bans=bans,
        states=states,
        blocked=blocked,
        relocations=relocations,
        history=history,
        errors=tuple(errors),
    )


def snapshot(
    listing: Listing,
    *,
    services: Mapping[str, Service] | None = None,
    group_hosts: Mapping[str, frozenset[str]] | None = None,
) -> Snapshot:
    """The placement snapshot of a listing.

    `services` replaces the listing's definitions (the node role passes them
    resolved against their agents' meta-data); `group_hosts` gives the hosts
    of each server group that a domain names.
    """
    defs = dict(listing.services if services is None else services)
    owners = {
        instance: Owner(
            node=held.record.node,
            token=held.token,
            master=held.record.master,
            failed=held.record.failed,
            busy=held.record.busy,
            started_at=held.record.started_at,
        )
        for instance, held in listing.owners.items()
    }
    failures = tuple(
        sorted(
            Failure(service=service, node=node, at=at)
            for (service, node), record in listing.failures.items()
            for at in record.times
        )
    )
    return Snapshot(
        nodes=frozenset(listing.nodes),
        services=tuple(defs[name] for name in sorted(defs)),
        domains=dict(listing.domains),
        group_hosts=dict(group_hosts or {}),
        owners=owners,
        failures=failures,
        bans=frozenset(listing.bans),
        disabled=frozenset(name for name, s in defs.items() if listing.disabled(s)),
        fatal=frozenset(name for name in defs if listing.fatal(name)),
        blocked=frozenset(listing.blocked),
        joined_at={name: record.joined_at for name, record in listing.nodes.items()},
        relocations={
            instance: Relocation(from_node=r.from_node, to_node=r.to_node, master=r.master)
            for instance, r in listing.relocations.items()
        },
    )


__all__ = [
    "BANS",
    "BLOCKED",
    "DEFS",
    "DOMAINS",
    "FAILURES",
    "FAILURE_LIMIT",
    "HISTORY",
    "HISTORY_LIMIT",
    "MASTERS",
    "NODES",
    "OWNERS",
    "REFUSED",
    "RELOCATIONS",
    "SERVICES",
    "STATES",
    "BanRecord",
    "BlockRecord",
    "FailureRecord",
    "Held",
    "HistoryEntry",
    "HistoryRecord",
    "Listing",
    "MasterRecord",
    "MonitorResult",
    "NodeRecord",
    "OwnerRecord",
    "RelocationRecord",
    "ServiceRecordError",
    "StateRecord",
    "ban_key",
    "blocked_key",
    "decode_ban",
    "decode_block",
    "decode_failure",
    "decode_history",
    "decode_master",
    "decode_node",
    "decode_owner",
    "decode_relocation",
    "decode_state",
    "def_key",
    "domain_key",
    "encode_ban",
    "encode_block",
    "encode_failure",
    "encode_history",
    "encode_master",
    "encode_node",
    "encode_owner",
    "encode_relocation",
    "encode_state",
    "failure_key",
    "history_key",
    "master_key",
    "node_key",
    "owner_key",
    "read_listing",
    "relocated_to",
    "relocation_key",
    "service_keys",
    "snapshot",
    "state_key",
]
