"""Evacuation: rebuilding the servers of a dead host on the surviving ones (pure).

Theory of operation (no I/O, no clock: `now` is passed in).

A host is *dead* when its record (`hosts/<h>`, on its daemon's session
lease) is gone while servers are still owned by it (`Server.host`). After
the grace period, each of those servers is rebuilt elsewhere:

- **Where**: by its group's policy over the live hosts that have its
  driver (`placement.choose_host`), counting the members that do not run on
  the dead host and the ones already placed by this plan, so that a plan
  that moves several members of one anti-affinity group spreads them and an
  affinity group moves together.
- **How** (`Rebuild`): the spec gets the new host and one more
  `evacuations`; the status is handed over on behalf of the dead host:
  host = the new one, state BUILDING, task `rebuilding`. Both are written in
  one transaction with the group's record (as every placement is), compared
  on the revisions they were read at, and under the evacuator's fencing
  token. From that write on the new host owns the server and builds it from
  scratch; its first report ends the rebuild (`compute.instance.evacuate.end`).
- **When** (`decide`): a group with `evacuate = "manual"` waits for the
  operator (`servergroup server evacuate`); otherwise a dead host's servers
  are rebuilt once it has been gone for `grace` seconds, counted from when
  the evacuator first saw it gone.

The dead host, if it comes back, finds its servers owned elsewhere; the
server manager destroys what is left of them there (reconcile's rule for a
copy that is not ours).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from servergroup.servers.model import (
    REBUILDING_TASK,
    Desired,
    Evacuate,
    RegistrySnapshot,
    Server,
    ServerSpec,
    ServerStatus,
    VmState,
)
from servergroup.servers.placement import PlacementError, choose_host, load_of


@dataclass(frozen=True, slots=True, kw_only=True)
class Rebuild:
    """Write this spec and status (each compared on its revision) to rebuild one server."""

    spec: ServerSpec
    spec_revision: int
    status: ServerStatus
    status_revision: int
    dead_host: str

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass(frozen=True, slots=True, kw_only=True)
class EvacuationDecision:
    """What the evacuator does now, one sentence why, and when to look again."""

    rebuilds: tuple[Rebuild, ...]
    sentence: str
    next_check_at: float | None  # None: nothing is waiting for its grace period
    #: Servers that cannot be placed now, with the sentence why.
    stuck: Mapping[str, str]


def dead_hosts(snapshot: RegistrySnapshot) -> list[str]:
    """The hosts that own servers but have no live record, by name."""
    return sorted(
        {s.host for s in snapshot.servers.values() if _evacuable(s)} - set(snapshot.hosts)
    )


def _evacuable(server: Server) -> bool:
    return server.state is not VmState.DELETED


def rebuild_plan(
    snapshot: RegistrySnapshot,
    dead: str,
    names: Iterable[str],
    *,
    to: str | None = None,
    now_iso: str,
) -> list[Rebuild]:
    """How to rebuild the servers `names` of the dead host `dead` (in name order).

    Raises `PlacementError` with one sentence if one of them cannot be placed.
    """
    placed: dict[str, Server] = dict(snapshot.servers)
    plan: list[Rebuild] = []
    for name in sorted(names):
        server = placed[name]
        spec = server.spec
        record = snapshot.groups.get(spec.group)
        able = [h for h, rec in snapshot.hosts.items() if spec.driver in rec.drivers]
        if not able:
            raise PlacementError(
                f"server {name} cannot be rebuilt: "
                f"no running host has the {spec.driver.value} driver"
            )
        others = [
            m for m in _members(placed.values(), spec.group) if m.name != name and m.host != dead
        ]
        if record is None:
            host = to or min(able)
        else:
            host = choose_host(
                group=spec.group,
                policy=record.policy,
                members=others,
                live_hosts=able,
                load=load_of(placed.values()),
                requested=to,
            )
        new_spec = replace(spec, host=host, evacuations=spec.evacuations + 1)
        base = server.status or ServerStatus(name=name, host=dead, state=VmState.BUILDING)
        status = replace(
            base,
            host=host,
            state=VmState.BUILDING,
            task_state=REBUILDING_TASK,
            error=None,
            migrated_to=None,
            updated_at=now_iso,
        )
        plan.append(
            Rebuild(
                spec=new_spec,
                spec_revision=server.spec_revision,
                status=status,
                status_revision=server.status_revision,
                dead_host=dead,
            )
        )
        placed[name] = replace(server, spec=new_spec, status=status)
    return plan


def _members(servers: Iterable[Server], group: str) -> list[Server]:
    return [s for s in servers if s.spec.group == group and s.state is not VmState.DELETED]


def decide(
    snapshot: RegistrySnapshot,
    *,
    gone_since: Mapping[str, float],
    grace: float,
    now: float,
    now_iso: str,
) -> EvacuationDecision:
    """What the evacuator does for the dead hosts of `snapshot` at `now`.

    `gone_since` says since when each dead host is known to be gone (a host
    missing from it counts as gone since `now`).
    """
    rebuilds: list[Rebuild] = []
    stuck: dict[str, str] = {}
    waiting: list[float] = []
    notes: list[str] = []
    for dead in dead_hosts(snapshot):
        due_at = gone_since.get(dead, now) + grace
        servers = [
            s
            for _, s in sorted(snapshot.servers.items())
            if s.host == dead and _evacuable(s) and _auto(snapshot, s)
        ]
        manual = sum(
            1
            for s in snapshot.servers.values()
            if s.host == dead and _evacuable(s) and not _auto(snapshot, s)
        )
        if manual:
            notes.append(f"{manual} server(s) of {dead} wait for `servergroup server evacuate`")
        if not servers:
            continue
        if now < due_at:
            waiting.append(due_at)
            notes.append(f"host {dead} is gone: rebuilding its servers in {due_at - now:.1f} s")
            continue
        for server in servers:
            try:
                step = rebuild_plan(snapshot, dead, [server.name], now_iso=now_iso)
            except PlacementError as exc:
                stuck[server.name] = str(exc)
                continue
            rebuilds.extend(step)
            # Later servers of the same plan see this one placed.
            snapshot = replace(
                snapshot,
                servers={
                    **snapshot.servers,
                    server.name: replace(server, spec=step[0].spec, status=step[0].status),
                },
            )
    if rebuilds:
        moves = ", ".join(f"{r.name} to {r.spec.host}" for r in rebuilds)
        notes.insert(0, f"rebuilding the servers of dead hosts: {moves}")
    for name, why in sorted(stuck.items()):
        notes.append(f"{name} cannot be rebuilt now: {why}")
    sentence = "; ".join(notes) if notes else "no dead host owns servers"
    return EvacuationDecision(
        rebuilds=tuple(rebuilds),
        sentence=sentence,
        next_check_at=min(waiting) if waiting else None,
        stuck=stuck,
    )


def _auto(snapshot: RegistrySnapshot, server: Server) -> bool:
    record = snapshot.groups.get(server.spec.group)
    if server.spec.desired is Desired.DELETED:
        return True  # nothing to wait for: the new owner finishes the delete
    return record is None or record.evacuate is Evacuate.AUTO


def servers_of(snapshot: RegistrySnapshot, host: str) -> Sequence[Server]:
    """The servers host `host` owns (deleted ones excluded), by name."""
    return [s for _, s in sorted(snapshot.servers.items()) if s.host == host and _evacuable(s)]


__all__ = [
    "EvacuationDecision",
    "Rebuild",
    "dead_hosts",
    "decide",
    "rebuild_plan",
    "servers_of",
]
