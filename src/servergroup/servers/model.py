"""The server model: groups, servers, hosts and broadcasts as records in the store.

Theory of operation (pure data; no I/O, no clock: times are passed in):

- A **group** (`GroupRecord`) has a name and a scheduling policy; servers join
  exactly one group when they are created.
- A **server** is two records so that no key has two writers: `ServerSpec` is
  what the operator asked for (written by the CLI), `ServerStatus` is what the
  host that runs the server last observed (written by that host only). A
  request is done when the status has caught up with the spec: same host,
  the desired state reached, the same `reboot_count`.
- A **host** (`HostRecord`) is present in the store only while its daemon's
  session lease lives; a server whose `status.host` has no record is *lost*.
- An **incoming** record (`IncomingRecord`) is written by the target host of
  a live migration whose driver copies the running server (QEMU): the
  address where the copy waits for the migration stream. The owner reads it
  and sends the server there.
- A **server event** (`ServerEvent`, `registry/servers/<name>/event`) is news
  about a server that is no change of its spec or status, written by the host
  that runs it: the last decision a host component took about it (the
  autoscaler's scale up or down, with its sentence). The group service turns
  each new one into `compute.instance.<what>` for the other members; it goes
  with the server's other records.
- A **broadcast batch** (`BroadcastBatch`) is what one transaction of a
  host's group service wrote to `broadcasts/<group>/<host>`, the key only
  that host writes: the group's broadcasts from that host, in order, and
  `host_total`, how many broadcasts of the group that host has written in
  all up to this batch. Receivers number the items from the totals of every
  host (`groups.sequencing.GroupFeed`). It has its own compact codec
  (`encode_batch` / `decode_batch`), not `encode_record`.

Every record encodes to compact JSON with sorted keys (`encode_record`) and
decodes with a `decode_*` function that raises `RecordError` with one sentence
when the bytes are not a record of that kind; a record written by a newer
version with extra keys still decodes (unknown keys are ignored).
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, NamedTuple, TypeVar
from uuid import UUID

from servergroup.common.errors import RemoteError

#: Names of groups, servers and hosts: they become etcd key segments, netns
#: and cgroup names, so keep them short and plain.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")
#: Instance names (`instance-` + 8 hex digits) fit the spec's 20 characters.
INSTANCE_PATTERN = re.compile(r"^instance-[0-9a-f]{8}$")

MAX_VCPUS = 64


class RecordError(RemoteError):
    """A record in the store is not what its key says it is."""


class Policy(enum.Enum):
    """The scheduling policy of a server group (seed 000 step a: affinity).

    `affinity`: every member on one host; `anti-affinity`: no two members on
    one host. The soft variants (as Nova has them) are preferences: placement
    follows them when it can and never refuses a server because of them.
    """

    AFFINITY = "affinity"
    ANTI_AFFINITY = "anti-affinity"
    SOFT_AFFINITY = "soft-affinity"
    SOFT_ANTI_AFFINITY = "soft-anti-affinity"


class Evacuate(enum.Enum):
    """What happens to a group's servers when their host dies.

    `auto`: once the host's lease has been gone for the grace period, one
    surviving host rebuilds them elsewhere by the group's policy. `manual`:
    they wait for `servergroup server evacuate`.
    """

    AUTO = "auto"
    MANUAL = "manual"


class DriverKind(enum.Enum):
    """Which server driver runs a server: its value is the driver's name in records and options.

    What each kind needs and offers (its settings, and how a host builds it)
    is in `servergroup.servers.drivers.registry`.
    """

    LAB = "lab"  # a network namespace, a cgroup and a guest agent on this machine
    QEMU = "qemu"  # a real Linux VM


class Desired(enum.Enum):
    """What the operator wants a server to be."""

    ACTIVE = "active"
    PAUSED = "paused"
    STOPPED = "stopped"
    DELETED = "deleted"


class VmState(enum.Enum):
    """What a server is, as its host reports it (`vm_state` in the original)."""

    BUILDING = "building"
    ACTIVE = "active"
    PAUSED = "paused"
    STOPPED = "stopped"
    MIGRATING = "migrating"
    ERROR = "error"
    DELETED = "deleted"


#: The task state of a server rebuilt on another host after its host died (the
#: evacuation wrote it; the new host's first report of the server ends it).
REBUILDING_TASK = "rebuilding"

#: The state a server reaches when its desired state is honoured.
REACHED: Mapping[Desired, VmState] = {
    Desired.ACTIVE: VmState.ACTIVE,
    Desired.PAUSED: VmState.PAUSED,
    Desired.STOPPED: VmState.STOPPED,
    Desired.DELETED: VmState.DELETED,
}

#: OpenStack's power states, as the original status payload carried them.
POWER_STATE: Mapping[VmState, str] = {
    VmState.BUILDING: "nostate",
    VmState.ACTIVE: "running",
    VmState.PAUSED: "paused",
    VmState.STOPPED: "shutdown",
    VmState.MIGRATING: "running",
    VmState.ERROR: "crashed",
    VmState.DELETED: "nostate",
}


def check_name(kind: str, name: str) -> str:
    """`name` if it is a valid name for a `kind` (group, server, host); else RecordError."""
    if not NAME_PATTERN.match(name):
        raise RecordError(
            f"{kind} name {name!r} is not valid: use 1 to 32 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def make_instance_name(uuid: UUID) -> str:
    """The instance name of a server: `instance-` and the first 8 hex digits of its UUID."""
    return f"instance-{uuid.hex[:8]}"


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupRecord:
    """A server group."""

    name: str
    policy: Policy
    uuid: str
    created_at: str  # wall time, ISO 8601 UTC, for display only
    evacuate: Evacuate = Evacuate.AUTO


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerSpec:
    """What the operator asked for one server."""

    name: str
    instance: str
    uuid: str
    group: str
    host: str  # the host that should run it (a migration changes this)
    vcpus: int = 1
    min_vcpus: int = 1
    memory_mb: int = 64
    driver: DriverKind = DriverKind.LAB
    desired: Desired = Desired.ACTIVE
    reboot_count: int = 0
    #: Rebuilds asked (`server rebuild`): the server is made again from nothing, same flavor.
    rebuild_count: int = 0
    live_migration: bool = True  # how to move when `host` changes
    created_at: str = ""
    #: How many times the server was rebuilt on another host after its host died.
    evacuations: int = 0
    #: A fresh id for each change of the spec: a write retried after its answer
    #: was lost is recognised as ours by it (see coordination's `put`).
    change_id: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerStatus:
    """What the host running a server last observed of it."""

    name: str
    host: str
    state: VmState
    task_state: str | None = None
    #: The vCPUs online in the guest, as the scaler last recorded them (a scale
    #: down removes one, a scale up adds one); a boot keeps them (the guest's
    #: boot sync takes the others offline again), a cold move or a resize makes
    #: them every vCPU of the flavor again.
    online_cpus: tuple[int, ...] = ()
    #: The flavor's vCPUs (`spec.vcpus`) this status was made for (0: unknown,
    #: written by an older version); a different `spec.vcpus` is a resize.
    vcpus: int = 0
    reboot_count: int = 0
    rebuild_count: int = 0
    launched_at: str | None = None
    updated_at: str = ""
    error: str | None = None
    #: Set by the source of a live migration that copied the server: where it went.
    migrated_to: str | None = None

    @property
    def power_state(self) -> str:
        return POWER_STATE[self.state]


@dataclass(frozen=True, slots=True, kw_only=True)
class IncomingRecord:
    """The target of a live migration waits for the server's state at `uri` (e.g. `tcp:A:P`)."""

    name: str
    host: str
    uri: str
    at: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerEvent:
    """News about a server from the host that runs it: `compute.instance.<what>` to its group.

    Each write is one notification (a rewrite with the same content is none);
    `details` (a JSON object) goes into the notification's payload beside the
    sentence.
    """

    name: str
    what: str  # the event type after `compute.instance.`, e.g. "autoscale"
    host: str
    at: str  # wall time, ISO 8601 UTC; two events of one server differ in it
    sentence: str
    priority: str = "INFO"
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class HostRecord:
    """A live host daemon (the record lives on the daemon's session lease)."""

    name: str
    channel_dir: str
    pid: int
    started_at: str
    address: str | None = None  # where other hosts reach it, when it serves anything
    #: The kinds of server it runs; kinds this version does not know are left out on decoding.
    drivers: tuple[DriverKind, ...] = (DriverKind.LAB,)


class BroadcastItem(NamedTuple):
    """One broadcast inside a `BroadcastBatch`: who sent it and the text.

    A named tuple, not a dataclass: a receiving host makes one per broadcast.
    """

    sender: str  # server name
    sender_instance: str
    text: str


@dataclass(frozen=True, slots=True, kw_only=True)
class BroadcastBatch:
    """Broadcasts of one group written by one host in one transaction, in their order.

    `host_total` counts every broadcast of the group the writing host has
    stored, this batch's included: the host's previous batch had
    `host_total - len(items)`. A batch carries no group sequence number:
    the order of the group is the store's order of the writes of all its
    hosts' keys, and item i of a batch gets seq (the sum of every host's
    latest `host_total` once this batch is written) - len(items) + 1 + i.
    """

    group: str
    host: str
    host_total: int
    sent_at: str
    items: tuple[BroadcastItem, ...]


def encode_batch(batch: BroadcastBatch) -> bytes:
    """Compact JSON; each item is `[sender, sender_instance, text]`."""
    plain = {
        "group": batch.group,
        "host": batch.host,
        "host_total": batch.host_total,
        "items": batch.items,  # each a named tuple: a JSON list
        "sent_at": batch.sent_at,
    }
    return json.dumps(plain, separators=(",", ":")).encode()


def decode_batch(raw: bytes) -> BroadcastBatch:
    """The batch in `raw`; raises `RecordError` with one sentence."""
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RecordError(f"broadcast batch is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise RecordError("broadcast batch is not a JSON object")
    group, host, total, sent_at, items = (
        obj.get(k) for k in ("group", "host", "host_total", "sent_at", "items")
    )
    if not isinstance(group, str) or not isinstance(host, str) or not isinstance(sent_at, str):
        raise RecordError("broadcast batch has no group, host or sent_at string")
    if not isinstance(items, list) or not items:
        raise RecordError("broadcast batch has no items")
    if not isinstance(total, int) or isinstance(total, bool) or total < len(items):
        raise RecordError("broadcast batch has no host_total of at least its items")
    try:
        out = tuple(BroadcastItem._make(item) for item in items)
    except TypeError:  # not a sequence of three
        out = ()
    if len(out) != len(items) or not all(
        type(item) is list and type(a) is str and type(b) is str and type(c) is str
        for item, (a, b, c) in zip(items, out, strict=True)
    ):
        raise RecordError("broadcast batch has an item that is not [sender, instance, text]")
    return BroadcastBatch(group=group, host=host, host_total=total, sent_at=sent_at, items=out)


@dataclass(frozen=True, slots=True, kw_only=True)
class Server:
    """A server as the store knows it: its spec and, once a host ran it, its status.

    `spec_revision` and `status_revision` are the store revisions at which the
    two records were last written (0: absent, or not read from the store): a
    conditional write compares on them.
    """

    spec: ServerSpec
    status: ServerStatus | None = None
    incoming: IncomingRecord | None = None  # a live migration's target, ready to receive
    event: ServerEvent | None = None  # the last news about it (`ServerEvent`)
    spec_revision: int = 0
    status_revision: int = 0

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def state(self) -> VmState:
        return self.status.state if self.status is not None else VmState.BUILDING

    @property
    def host(self) -> str:
        """Where the server runs (its status), or where it is to run (its spec)."""
        return self.status.host if self.status is not None else self.spec.host

    def settled(self) -> bool:
        """Whether the host has carried out everything the spec asks."""
        st = self.status
        if st is None:
            return False
        if self.spec.desired is Desired.DELETED:
            return st.state is VmState.DELETED
        return (
            st.host == self.spec.host
            and st.state is REACHED[self.spec.desired]
            and st.reboot_count >= self.spec.reboot_count
            and st.rebuild_count >= self.spec.rebuild_count
        )


Record = GroupRecord | ServerSpec | ServerStatus | HostRecord | IncomingRecord | ServerEvent
_R = TypeVar("_R", GroupRecord, ServerSpec, ServerStatus, HostRecord, IncomingRecord, ServerEvent)


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def encode_record(record: Record) -> bytes:
    """Compact JSON with sorted keys."""
    plain = {k: _plain(v) for k, v in asdict(record).items()}
    return json.dumps(plain, sort_keys=True, separators=(",", ":")).encode()


def _decode(cls: type[_R], raw: bytes, what: str) -> _R:
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RecordError(f"{what} record is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise RecordError(f"{what} record is not a JSON object")
    kwargs: dict[str, Any] = {}
    for f in fields(cls):
        if f.name not in obj:
            continue  # the dataclass default applies, or construction fails below
        kwargs[f.name] = obj[f.name]
    try:
        record = cls(**kwargs)
        return _coerce(record, what)
    except (TypeError, ValueError) as exc:
        raise RecordError(f"{what} record is not valid: {exc}") from None


_ENUMS: Mapping[str, type[enum.Enum]] = {
    "Policy": Policy,
    "Desired": Desired,
    "VmState": VmState,
    "DriverKind": DriverKind,
    "Evacuate": Evacuate,
}


def _coerce(record: _R, what: str) -> _R:
    """Turn JSON-native values into the record's types, checking each."""
    changes: dict[str, Any] = {}
    for f in fields(record):
        value = getattr(record, f.name)
        annotation = str(f.type)
        if annotation in _ENUMS:
            enum_type = _ENUMS[annotation]
            if not isinstance(value, enum_type):
                changes[f.name] = enum_type(value)
        elif annotation == "tuple[DriverKind, ...]":
            if not isinstance(value, list | tuple):
                raise ValueError(f"{f.name} must be a list of driver names")
            names = [v.value if isinstance(v, DriverKind) else v for v in value]
            if not all(isinstance(v, str) for v in names):
                raise ValueError(f"{f.name} must be a list of driver names")
            # A newer host may run kinds we do not know: we cannot place servers of those.
            known = {k.value: k for k in DriverKind}
            changes[f.name] = tuple(known[v] for v in names if v in known)
        elif annotation == "tuple[int, ...]" or annotation == "tuple[str, ...]":
            item = int if "int" in annotation else str
            if not isinstance(value, list | tuple) or not all(isinstance(v, item) for v in value):
                raise ValueError(f"{f.name} must be a list of {item.__name__}")
            changes[f.name] = tuple(value)
        elif annotation == "int":
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{f.name} must be an integer")
        elif annotation == "bool":
            if not isinstance(value, bool):
                raise ValueError(f"{f.name} must be true or false")
        elif annotation == "str":
            if not isinstance(value, str):
                raise ValueError(f"{f.name} must be a string")
        elif annotation == "str | None" and value is not None and not isinstance(value, str):
            raise ValueError(f"{f.name} must be a string or null")
        elif annotation == "Mapping[str, Any]" and not isinstance(value, Mapping):
            raise ValueError(f"{f.name} must be an object")
    if not changes:
        return record
    kwargs = {f.name: getattr(record, f.name) for f in fields(record)}
    kwargs.update(changes)
    return type(record)(**kwargs)


def decode_group(raw: bytes) -> GroupRecord:
    return _decode(GroupRecord, raw, "group")


def decode_spec(raw: bytes) -> ServerSpec:
    return _decode(ServerSpec, raw, "server spec")


def decode_status(raw: bytes) -> ServerStatus:
    return _decode(ServerStatus, raw, "server status")


def decode_incoming(raw: bytes) -> IncomingRecord:
    return _decode(IncomingRecord, raw, "incoming")


def decode_host(raw: bytes) -> HostRecord:
    return _decode(HostRecord, raw, "host")


def decode_event(raw: bytes) -> ServerEvent:
    return _decode(ServerEvent, raw, "server event")


def server_info(server: Server, *, host_alive: bool = True) -> dict[str, Any]:
    """The server's description in status responses and notification payloads.

    The keys are those the original host sent (spec section 4), plus ours
    (`min_vcpus`, `online_cpus`, `host_alive`) that old clients ignore. A
    server whose host is gone reports `vm_state` "error" and `task_state` "lost".
    """
    spec, status = server.spec, server.status
    state = server.state
    task_state = status.task_state if status is not None else "scheduling"
    if not host_alive and state is not VmState.DELETED:
        state, task_state = VmState.ERROR, "lost"
    return {
        "instance_name": spec.instance,
        "name": spec.name,
        "uuid": spec.uuid,
        "host": server.host,
        "vm_state": state.value,
        "power_state": POWER_STATE[state],
        "task_state": task_state,
        "vcpus": spec.vcpus,
        "min_vcpus": spec.min_vcpus,
        "online_cpus": list(status.online_cpus) if status is not None else [],
        "memory_mb": spec.memory_mb,
        "created_at": spec.created_at,
        "launched_at": status.launched_at if status is not None else None,
        "server_group": spec.group,
        "host_alive": host_alive,
    }


@dataclass(frozen=True, slots=True, kw_only=True)
class RegistrySnapshot:
    """Everything the registry holds, as of one store revision (immutable)."""

    revision: int = 0
    groups: Mapping[str, GroupRecord] = field(default_factory=dict)
    servers: Mapping[str, Server] = field(default_factory=dict)
    hosts: Mapping[str, HostRecord] = field(default_factory=dict)

    def members(self, group: str) -> list[Server]:
        """The servers of `group`, by name (deleted ones excluded)."""
        return [
            s
            for _, s in sorted(self.servers.items())
            if s.spec.group == group and s.state is not VmState.DELETED
        ]

    def by_instance(self, instance: str) -> Server | None:
        for server in self.servers.values():
            if server.spec.instance == instance:
                return server
        return None

    def host_alive(self, server: Server) -> bool:
        return server.host in self.hosts


__all__ = [
    "INSTANCE_PATTERN",
    "MAX_VCPUS",
    "NAME_PATTERN",
    "POWER_STATE",
    "REACHED",
    "REBUILDING_TASK",
    "BroadcastBatch",
    "BroadcastItem",
    "Desired",
    "DriverKind",
    "Evacuate",
    "GroupRecord",
    "HostRecord",
    "IncomingRecord",
    "Policy",
    "Record",
    "RecordError",
    "RegistrySnapshot",
    "Server",
    "ServerEvent",
    "ServerSpec",
    "ServerStatus",
    "VmState",
    "check_name",
    "decode_batch",
    "decode_event",
    "decode_group",
    "decode_host",
    "decode_incoming",
    "decode_spec",
    "decode_status",
    "encode_batch",
    "encode_record",
    "make_instance_name",
    "server_info",
]
