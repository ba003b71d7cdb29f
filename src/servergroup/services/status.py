"""What `service list` and `service status` show: views of a `Listing` (pure).

Theory of operation (no I/O, no clock: the caller hands in a `store.Listing`).

`summaries(listing)` gives one `ServiceSummary` per service, sorted by
name: how many instances are wanted and held, where the master is, and one
`ServiceState` word that says what an operator should look at first.
`service_status(listing, name)` gives the whole `ServiceStatus` of one
service: each instance (owner node, fencing token, flags, address, last
monitor results, a pending relocation, a block), the master record, the
failure times and bans per node, the history of placements, and the
listing's errors that concern it.

A record that did not decode never hides the others: `store.read_listing`
leaves it out and names it in `Listing.errors`, and here a definition that
did not decode still gets a summary, in state UNREADABLE, with its error,
so `service list` shows it where the service would be.

The `*_json` functions give the JSON objects of `--json`; their keys are
the CLI's contract with scripts (docs/design/services.md, "The CLI").
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from servergroup.services.model import Service, service_table
from servergroup.services.placement import InstanceId
from servergroup.services.store import (
    DEFS,
    SERVICES,
    BanRecord,
    BlockRecord,
    FailureRecord,
    HistoryEntry,
    Listing,
    MasterRecord,
    MonitorResult,
    RelocationRecord,
)

#: "key services/<kind>/<service>[/...]" at the start of a listing error.
_ERROR_KEY: Final = re.compile(rf"^key {re.escape(SERVICES)}([a-z]+)/([^/:\s]+)")


class ServiceState(enum.Enum):
    """One word for a service, the first thing to look at winning."""

    UNREADABLE = "unreadable"  # its definition in the store does not decode
    REFUSED = "refused"  # the node roles refuse its definition: add one that fits
    FATAL = "fatal"  # a fatal error stopped it everywhere: `service clear`
    #: A stop failed and no fence device made it safe: an instance may still run where it
    #: was, and is started nowhere until `service clear` (once it is made sure it stopped).
    BLOCKED = "failed-stop"
    DISABLED = "disabled"  # an operator (or the definition) disabled it
    FAILED = "failed"  # an owner reports its instance failed; recovery is under way
    RUNNING = "running"  # every wanted instance has an owner
    PARTIAL = "partial"  # some wanted instances have an owner
    STOPPED = "stopped"  # enabled, but no instance has an owner (yet)


@dataclass(frozen=True, slots=True, kw_only=True)
class InstanceStatus:
    """One instance of a service: its owner (if any) and what pends on it."""

    index: int
    node: str | None = None
    token: int | None = None  # the owner key's create revision: the fencing token
    master: bool = False
    failed: bool = False
    busy: bool = False
    action: str = ""
    started_at: float | None = None
    address: str | None = None
    monitors: tuple[MonitorResult, ...] = ()
    relocation: RelocationRecord | None = None
    block: BlockRecord | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceSummary:
    """One line of `service list`."""

    name: str
    state: ServiceState
    agent: str = ""
    wanted: int = 0
    running: int = 0
    nodes: tuple[str, ...] = ()  # the owners' nodes, by instance
    master: MasterRecord | None = None
    error: str = ""  # for UNREADABLE: why


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceStatus:
    """Everything the store says of one service (`service status`)."""

    service: Service
    state: ServiceState
    disabled: bool
    fatal: bool
    reason: str  # why it is disabled or fatal ("" when it is neither, or none was given)
    instances: tuple[InstanceStatus, ...]
    master: MasterRecord | None
    failures: Mapping[str, FailureRecord]  # by node
    bans: Mapping[str, BanRecord]  # by node
    history: tuple[HistoryEntry, ...]
    errors: tuple[str, ...]  # the listing's errors that concern this service


def errors_of(listing: Listing, name: str) -> tuple[str, ...]:
    """The listing's errors about a key of service `name`."""
    found = []
    for error in listing.errors:
        match = _ERROR_KEY.match(error)
        if match is not None and match.group(1) != "domains" and match.group(2) == name:
            found.append(error)
    return tuple(found)


def unreadable_definitions(listing: Listing) -> dict[str, str]:
    """Services whose definition is in the store but does not decode: name -> error."""
    found: dict[str, str] = {}
    for error in listing.errors:
        match = _ERROR_KEY.match(error)
        if match is not None and f"{SERVICES}{match.group(1)}/" == DEFS:
            found.setdefault(match.group(2), error)
    return found


def _instances(listing: Listing, service: Service) -> tuple[InstanceStatus, ...]:
    indexes = set(range(service.instances))
    for table in (listing.owners, listing.blocked, listing.relocations):
        indexes.update(i.index for i in table if i.service == service.name)
    out = []
    for index in sorted(indexes):
        instance = InstanceId(service=service.name, index=index)
        held = listing.owners.get(instance)
        relocation = listing.relocations.get(instance)
        block = listing.blocked.get(instance)
        if held is None:
            out.append(InstanceStatus(index=index, relocation=relocation, block=block))
            continue
        record = held.record
        out.append(
            InstanceStatus(
                index=index,
                node=record.node,
                token=held.token,
                master=record.master,
                failed=record.failed,
                busy=record.busy,
                action=record.action,
                started_at=record.started_at,
                address=record.address,
                monitors=record.monitors,
                relocation=relocation,
                block=block,
            )
        )
    return tuple(out)


def _state(
    listing: Listing, service: Service, instances: tuple[InstanceStatus, ...]
) -> ServiceState:
    if listing.refused(service.name):
        return ServiceState.REFUSED
    if listing.fatal(service.name):
        return ServiceState.FATAL
    if any(i.block is not None for i in instances):
        return ServiceState.BLOCKED
    if listing.disabled(service):
        return ServiceState.DISABLED
    held = [i for i in instances if i.node is not None and i.index < service.instances]
    if any(i.failed for i in held):
        return ServiceState.FAILED
    if len(held) >= service.instances:
        return ServiceState.RUNNING
    return ServiceState.PARTIAL if held else ServiceState.STOPPED


def service_status(listing: Listing, name: str) -> ServiceStatus | None:
    """The status of service `name`, or None when the listing has no (readable) definition."""
    service = listing.services.get(name)
    if service is None:
        return None
    instances = _instances(listing, service)
    state = listing.states.get(name)
    history = listing.history.get(name)
    disabled, fatal = listing.disabled(service), listing.fatal(name)
    return ServiceStatus(
        service=service,
        state=_state(listing, service, instances),
        disabled=disabled,
        fatal=fatal,
        # Why it is disabled or stopped; a record's reason says nothing of a running service.
        reason=state.reason if state is not None and (disabled or fatal) else "",
        instances=instances,
        master=listing.masters.get(name),
        failures={node: r for (s, node), r in sorted(listing.failures.items()) if s == name},
        bans={node: r for (s, node), r in sorted(listing.bans.items()) if s == name},
        history=history.entries if history is not None else (),
        errors=errors_of(listing, name),
    )


def summaries(listing: Listing) -> tuple[ServiceSummary, ...]:
    """One summary per service defined (readable or not), sorted by name."""
    out: dict[str, ServiceSummary] = {}
    for name, service in listing.services.items():
        instances = _instances(listing, service)
        held = [i for i in instances if i.node is not None]
        out[name] = ServiceSummary(
            name=name,
            state=_state(listing, service, instances),
            agent=str(service.agent),
            wanted=service.instances,
            running=len(held),
            nodes=tuple(i.node for i in held if i.node is not None),
            master=listing.masters.get(name),
        )
    for name, error in unreadable_definitions(listing).items():
        out.setdefault(name, ServiceSummary(name=name, state=ServiceState.UNREADABLE, error=error))
    return tuple(out[name] for name in sorted(out))


# -- JSON ----------------------------------------------------------------------------------


def master_json(master: MasterRecord | None) -> dict[str, Any] | None:
    if master is None:
        return None
    return {
        "node": master.node,
        "index": master.index,
        "token": master.token,
        "address": master.address,
        "at": master.at,
    }


def summary_json(summary: ServiceSummary) -> dict[str, Any]:
    return {
        "name": summary.name,
        "state": summary.state.value,
        "agent": summary.agent,
        "instances": summary.wanted,
        "running": summary.running,
        "nodes": list(summary.nodes),
        "master": master_json(summary.master),
        "error": summary.error or None,
    }


def _monitor_json(result: MonitorResult) -> dict[str, Any]:
    return {
        "depth": result.depth,
        "ok": result.ok,
        "code": result.code,
        "reason": result.reason,
        "at": result.at,
    }


def _instance_json(instance: InstanceStatus) -> dict[str, Any]:
    relocation = instance.relocation
    block = instance.block
    return {
        "index": instance.index,
        "node": instance.node,
        "token": instance.token,
        "master": instance.master,
        "failed": instance.failed,
        "busy": instance.busy,
        "action": instance.action or None,
        "started_at": instance.started_at,
        "address": instance.address,
        "monitors": [_monitor_json(m) for m in instance.monitors],
        "relocation": None
        if relocation is None
        else {
            "from": relocation.from_node,
            "to": relocation.to_node,
            "at": relocation.at,
            "master": relocation.master,
            "waiting": relocation.waiting or None,
        },
        "block": None
        if block is None
        else {"node": block.node, "token": block.token, "reason": block.reason, "at": block.at},
    }


def status_json(status: ServiceStatus) -> dict[str, Any]:
    return {
        "name": status.service.name,
        "state": status.state.value,
        "disabled": status.disabled,
        "fatal": status.fatal,
        "reason": status.reason or None,
        "definition": service_table(status.service),
        "instances": [_instance_json(i) for i in status.instances],
        "master": master_json(status.master),
        "failures": {
            node: {"count": len(r.times), "times": list(r.times), "reason": r.reason}
            for node, r in status.failures.items()
        },
        "bans": {
            node: {"reason": r.reason, "at": r.at, "token": r.token}
            for node, r in status.bans.items()
        },
        "history": [
            {
                "at": e.at,
                "node": e.node,
                "index": e.index,
                "token": e.token,
                "action": e.action,
                "result": e.result,
            }
            for e in status.history
        ],
        "errors": list(status.errors),
    }


__all__ = [
    "InstanceStatus",
    "ServiceState",
    "ServiceStatus",
    "ServiceSummary",
    "errors_of",
    "master_json",
    "service_status",
    "status_json",
    "summaries",
    "summary_json",
    "unreadable_definitions",
]
