"""The HTTP API's request and response bodies: typed pydantic models (pure).

Theory of operation. Every body the API takes or gives is a model here, so
the OpenAPI document (`/openapi.json`) is generated from them and a request
that does not fit is refused with 422 before any handler runs. Each view is
built from the same library objects the CLI prints (`servers.model.Server`,
`services.status.status_json`, `replication.status.PairStatus`, ...), by the
`*_view` functions below, and carries the fields the CLI's `--json` output
carries, under the same names where one exists (docs/design/api.md). Models
are frozen; none holds a secret (the token never leaves `api.auth`).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from servergroup.common.component import ComponentHealth
from servergroup.replication.status import NodeStatus, PairStatus
from servergroup.scaling.protocol import Direction
from servergroup.scaling.store import PoolRecord, ScaleOutcome
from servergroup.servers.model import (
    MAX_VCPUS,
    NAME_PATTERN,
    DriverKind,
    Evacuate,
    GroupRecord,
    HostRecord,
    Policy,
    Server,
    VmState,
    server_info,
)
from servergroup.transfers.record import (
    ClientRow,
    ReceiverRecord,
    SenderRecord,
    Transfer,
    TransferState,
)

#: A group, server or host name (`servers.model.check_name`).
Name = Annotated[
    str, Field(pattern=NAME_PATTERN.pattern, description="1 to 32 letters, digits, '.', '_' or '-'")
]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# -- the daemon ----------------------------------------------------------------------------


class ComponentView(_Frozen):
    state: str = Field(description="starting, healthy, degraded or stopped")
    sentence: str


class HealthView(_Frozen):
    host: str = Field(description="The host whose daemon serves this API.")
    components: dict[str, ComponentView]


def health_view(host: str, health: Mapping[str, ComponentHealth]) -> HealthView:
    return HealthView(
        host=host,
        components={
            name: ComponentView(state=h.state.value, sentence=h.sentence)
            for name, h in health.items()
        },
    )


# -- hosts, groups, servers ------------------------------------------------------------------


class HostView(_Frozen):
    name: str
    alive: bool = Field(description="Its daemon's record is on a live lease.")
    pid: int | None = None
    started_at: str | None = None
    drivers: list[str] = Field(default_factory=list)
    cpus: list[int] | None = Field(default=None, description="Its CPU pool (None: unpublished).")
    free_cpus: list[int] | None = Field(default=None, description="Pool CPUs no vCPU holds.")
    servers: list[str] = Field(default_factory=list, description="The servers placed on it.")


def host_views(
    live: Iterable[HostRecord], pools: Mapping[str, PoolRecord], servers: Iterable[Server]
) -> list[HostView]:
    """The live hosts, then the dead hosts servers are still placed on (alive false)."""
    placed: dict[str, list[str]] = {}
    for s in servers:
        if s.state is not VmState.DELETED:
            placed.setdefault(s.host, []).append(s.name)
    out: dict[str, HostView] = {}
    for h in live:
        pool = pools.get(h.name)
        out[h.name] = HostView(
            name=h.name,
            alive=True,
            pid=h.pid,
            started_at=h.started_at,
            drivers=[d.value for d in h.drivers],
            cpus=list(pool.cpus) if pool is not None else None,
            free_cpus=list(pool.free) if pool is not None else None,
            servers=sorted(placed.get(h.name, [])),
        )
    for name, names in placed.items():
        if name not in out:
            out[name] = HostView(name=name, alive=False, servers=sorted(names))
    return [out[n] for n in sorted(out)]


class GroupView(_Frozen):
    name: str
    policy: Policy
    evacuate: Evacuate
    uuid: str
    created_at: str
    members: list[str]


def group_view(group: GroupRecord, servers: Iterable[Server]) -> GroupView:
    return GroupView(
        name=group.name,
        policy=group.policy,
        evacuate=group.evacuate,
        uuid=group.uuid,
        created_at=group.created_at,
        members=sorted(
            s.name for s in servers if s.spec.group == group.name and s.state is not VmState.DELETED
        ),
    )


class GroupCreate(_Frozen):
    name: Name
    policy: Policy = Policy.AFFINITY
    evacuate: Evacuate = Evacuate.AUTO


class ServerView(_Frozen):
    name: str
    instance_name: str
    uuid: str
    group: str
    host: str
    host_alive: bool
    vm_state: VmState = Field(
        description="building, active, paused, stopped, migrating, error, deleted"
    )
    task_state: str | None
    desired: str
    driver: str
    vcpus: int = Field(description="The most vCPUs (the flavor's).")
    min_vcpus: int = Field(description="The fewest vCPUs scaling may leave online.")
    online_cpus: list[int]
    memory_mb: int
    created_at: str
    launched_at: str | None
    error: str | None


def server_view(server: Server, live_hosts: Iterable[str]) -> ServerView:
    info = server_info(server, host_alive=server.host in set(live_hosts))
    status = server.status
    return ServerView(
        name=info["name"],
        instance_name=info["instance_name"],
        uuid=info["uuid"],
        group=info["server_group"],
        host=info["host"],
        host_alive=info["host_alive"],
        vm_state=VmState(info["vm_state"]),
        task_state=info["task_state"],
        desired=server.spec.desired.value,
        driver=server.spec.driver.value,
        vcpus=info["vcpus"],
        min_vcpus=info["min_vcpus"],
        online_cpus=info["online_cpus"],
        memory_mb=info["memory_mb"],
        created_at=info["created_at"],
        launched_at=info["launched_at"],
        error=status.error if status is not None else None,
    )


class ServerCreate(_Frozen):
    name: Name
    group: Name
    vcpus: int = Field(default=1, ge=1, le=MAX_VCPUS)
    min_vcpus: int = Field(default=1, ge=1, le=MAX_VCPUS)
    host: Name | None = None
    driver: DriverKind = DriverKind.LAB
    memory_mb: int | None = Field(default=None, ge=64, le=1 << 20)


class Lifecycle(enum.Enum):
    """The lifecycle actions of `POST /servers/{name}/{action}` (`servergroup server ACTION`)."""

    PAUSE = "pause"
    UNPAUSE = "unpause"
    STOP = "stop"
    START = "start"
    REBOOT = "reboot"
    REBUILD = "rebuild"


class MigrateRequest(_Frozen):
    to: Name
    live: bool = True


class ScaleView(_Frozen):
    server: str
    host: str
    direction: Direction
    cpu: int | None = Field(description="The vCPU taken offline or brought online.")
    online_cpus: list[int]
    host_cpu: int | None = None


def scale_view(outcome: ScaleOutcome) -> ScaleView:
    return ScaleView(
        server=outcome.server,
        host=outcome.host,
        direction=outcome.direction,
        cpu=outcome.cpu,
        online_cpus=list(outcome.online_cpus),
        host_cpu=outcome.host_cpu,
    )


# -- services --------------------------------------------------------------------------------


class MasterView(_Frozen):
    node: str
    index: int
    token: int = Field(description="The owner key's create revision: the fencing token.")
    address: str | None = None
    at: float | None = None


class ServiceSummaryView(_Frozen):
    name: str
    state: str
    agent: str | None
    instances: int
    running: int
    nodes: list[str]
    master: MasterView | None
    error: str | None


class MonitorView(_Frozen):
    depth: int
    ok: bool
    code: int | None = Field(description="The agent's exit code (None: a timeout or signal).")
    reason: str | None
    at: float


class RelocationView(_Frozen):
    model_config = ConfigDict(frozen=True, populate_by_name=True)
    from_node: str = Field(alias="from")
    to: str | None
    at: float | None = None
    master: bool = Field(
        default=False, description="What moves is a promotable service's master role."
    )
    waiting: str | None = Field(
        default=None, description="Why it cannot go on now (None: it goes on)."
    )


class BlockView(_Frozen):
    node: str
    token: int
    reason: str
    at: float | None = None


class InstanceView(_Frozen):
    index: int
    node: str | None
    token: int | None = Field(description="The fencing token of its owner, if any.")
    master: bool
    failed: bool
    busy: bool
    action: str | None
    started_at: float | None
    address: str | None
    monitors: list[MonitorView]
    relocation: RelocationView | None
    block: BlockView | None


class FailuresView(_Frozen):
    count: int
    times: list[float]
    reason: str | None


class BanView(_Frozen):
    reason: str
    at: float | None
    token: int | None = None


class HistoryView(_Frozen):
    at: float
    node: str
    index: int
    token: int
    action: str
    result: str


class ServiceView(_Frozen):
    name: str
    state: str
    disabled: bool
    fatal: bool
    reason: str | None
    definition: dict[str, Any] = Field(description="The service's table, as in its file.")
    instances: list[InstanceView]
    master: MasterView | None
    failures: dict[str, FailuresView] = Field(description="Failure times per node.")
    bans: dict[str, BanView]
    history: list[HistoryView]
    errors: list[str]


class ServicesView(_Frozen):
    services: list[ServiceSummaryView]
    errors: list[str] = Field(description="Records in the store that did not decode.")


class RelocateRequest(_Frozen):
    to: str | None = Field(default=None, min_length=1, description="A live node [default: best].")
    instance: int | None = Field(default=None, ge=0, description="[default: master, else 0]")


class Done(_Frozen):
    """What an action did, in one sentence (as the CLI prints it)."""

    done: str
    changed: bool = True


# -- replication -----------------------------------------------------------------------------


class NodeView(_Frozen):
    node: str
    role: str
    state: str | None
    generation: int | None
    epoch: int | None
    committed: int | None
    applied: int | None
    lag: int | None = Field(description="Epochs captured and not yet acknowledged.")
    last_checkpoint_bytes: int | None
    last_pause_ms: float | None
    held_output_bytes: int | None
    clients: int | None
    precopied_pages: int | None = Field(
        description="Pages the primary copied in pre-copy rounds, while its service ran."
    )
    pause_realtime: bool | None = Field(
        description="The primary's last pause ran at real-time priority."
    )
    listen: str | None = Field(
        description="A backup's checkpoint stream address (HOST:PORT), where a primary finds it."
    )


class PairView(_Frozen):
    name: str
    generation: int = Field(description="The pair's fencing generation.")
    active: str
    backup: str | None
    nodes: list[NodeView]


def node_view(node: NodeStatus) -> NodeView:
    return NodeView(**asdict(node))


def pair_view(pair: PairStatus) -> PairView:
    return PairView(
        name=pair.name,
        generation=pair.record.generation,
        active=pair.record.active,
        backup=pair.record.backup,
        nodes=[node_view(n) for n in pair.nodes],
    )


# -- image transfers -----------------------------------------------------------------------


class ClientRowView(_Frozen):
    """One client as the sender's final report has it."""

    name: str
    address: str
    status: str = Field(description="finished, failed, dropped or missing")
    reason: str
    tcp_only: bool
    loss: float = Field(description="Fraction of multicast packets it missed.")
    repaired: int = Field(description="Packets it had repaired over TCP.")


class SenderView(_Frozen):
    transfer_id: str
    host: str = Field(description="The sender's host name.")
    address: str
    port: int
    group: str = Field(description="The multicast group.")
    mtu: int
    expected_clients: int
    state: TransferState
    started_at: float = Field(description="Wall-clock seconds (Unix time).")
    updated_at: float
    ended_at: float | None
    size: int | None = Field(description="Image bytes (None: not known before the end).")
    done_bytes: int = Field(description="Bytes every client has.")
    rate: float = Field(description="The sending rate the rate control chose last (bytes/s).")
    repairs: int = Field(description="Packets sent again over TCP.")
    result: str
    clients: list[ClientRowView] = Field(description="Filled in at the end, from the report.")


class ReceiverView(_Frozen):
    name: str
    host: str
    address: str
    state: TransferState
    started_at: float
    updated_at: float
    ended_at: float | None
    received_bytes: int
    throughput: float = Field(description="Bytes/s from its start to its last record.")
    repaired: int
    tcp_only: bool
    size: int | None
    result: str


class TransferView(_Frozen):
    """One transfer: its sender's record and each receiver's, as they wrote them to etcd."""

    endpoint: str = Field(description="The sender's ADDRESS:PORT: the transfer's key.")
    state: TransferState = Field(description="The sender's state (running without one).")
    stale: bool = Field(
        description="Running, but its sender's record was not written for 30 s: the sender "
        "died or lost etcd."
    )
    progress: float | None = Field(description="Fraction of the image every client has.")
    sender: SenderView | None
    receivers: list[ReceiverView]
    problems: list[str] = Field(description="Records under this endpoint that did not decode.")


def _row(row: ClientRow) -> ClientRowView:
    return ClientRowView(**asdict(row))


def sender_view(s: SenderRecord) -> SenderView:
    data = asdict(s)
    data["clients"] = [_row(r) for r in s.clients]
    return SenderView(**data)


def receiver_view(r: ReceiverRecord) -> ReceiverView:
    return ReceiverView(**asdict(r))


def transfer_view(t: Transfer, now: float) -> TransferView:
    s = t.sender
    progress = None
    if s is not None and s.size:
        progress = min(1.0, s.done_bytes / s.size)
    elif s is not None and s.state is TransferState.FINISHED:
        progress = 1.0
    return TransferView(
        endpoint=t.endpoint,
        state=s.state if s is not None else TransferState.RUNNING,
        stale=t.stale(now),
        progress=progress,
        sender=None if s is None else sender_view(s),
        receivers=[receiver_view(r) for r in t.receivers],
        problems=list(t.problems),
    )


class Problem(_Frozen):
    """An error: one sentence."""

    detail: str


__all__ = [
    "ClientRowView",
    "ComponentView",
    "Done",
    "GroupCreate",
    "GroupView",
    "HealthView",
    "HostView",
    "Lifecycle",
    "MigrateRequest",
    "Name",
    "PairView",
    "Problem",
    "ReceiverView",
    "RelocateRequest",
    "ScaleView",
    "SenderView",
    "ServerCreate",
    "ServerView",
    "ServiceSummaryView",
    "ServiceView",
    "ServicesView",
    "TransferView",
    "group_view",
    "health_view",
    "host_views",
    "pair_view",
    "scale_view",
    "server_view",
    "transfer_view",
]
