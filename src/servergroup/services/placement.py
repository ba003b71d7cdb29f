"""Who runs which service instance where: one decision per cycle from a snapshot (pure).

Theory of operation (no I/O, no clock: `now` is passed in, in seconds of the
same clock the failure times use).

Every node role builds the same immutable `Snapshot` from the store (nodes
alive, service definitions, domains, the owner of each instance, failures,
bans, disabled and fatal services, instances blocked after a failed stop)
and calls `decide(snapshot, now)`. The `Decision` lists actions, each naming
the node that must carry it out, and one sentence for the log. A node
carries out only its own actions; exclusivity does not rest on everyone
deciding alike, it rests on the ownership key (created only if absent, its
revision the fencing token) that a node must win before `start` and holds
while the instance runs. Placement's part is never to propose what the key
would refuse:

- **One owner per instance.** A `Start` is proposed only for an instance
  with no owner and not blocked (a `stop` that failed leaves the instance
  blocked until an operator clears it, so it is never started elsewhere
  while it may still run unfenced), at most one per instance per cycle.
  The copies of a service go to distinct nodes.
- **Where** (rgmanager's failover domains, REFERENCE.md): candidates are the
  alive nodes that are not banned for the service (a hard error banned
  them) and do not run another copy of it. With a domain, its members come
  first; `restricted` keeps to the members (an instance stays stopped when
  none is up); `ordered` ranks members by priority (lower first), otherwise
  they rank equal; equal ranks go to the node running the fewest instances,
  then by name. Nodes with recent failures of the service (see recovery)
  come last. A server-group domain's members are the hosts the snapshot
  lists for that group.
- **Failback.** A healthy running instance moves (a `Stop` with reason
  FAILBACK; it starts on the better node next cycle) when a node of
  strictly better rank *joined after the instance started* (rgmanager fails
  back when a better node comes back, not whenever one is up: so a manual
  relocation or a move away from failures is not undone by the next
  cycle), unless the domain says `nofailback`. Ranks are membership, then
  priority in an ordered domain; load never moves a running instance. A
  promoted master never moves for failback. Where join or start times are
  unknown, a better node counts as having joined later.
- **Operator relocation** (`Relocation`, pending until the node role sees
  the instance off `from_node`): the instance is stopped (RELOCATE) when
  the target, `to_node` or any other allowed free node, exists, and then
  started there; otherwise it stays, and `Decision.waiting` and the
  sentence say why.
- **Moving a master** (a `Relocation` with `master`, of a promotable
  service; pending until a master runs off `from_node`), as Pacemaker moves
  a promotable resource's promoted role: when the target (`to_node`, or
  the best other node) runs a healthy copy, the master is demoted in place
  (`Demote`) and, once no owner claims master, the target's copy is
  promoted (nobody else's, and nothing is promoted while the target's copy
  is on its way); when the target runs no copy but is allowed and free,
  the master's instance is stopped, started there, and promoted there. The
  old master's copy stays as a slave. If the target cannot take it after
  the demote (its copy failed meanwhile), the usual choice promotes.
- **Recovery** of an instance its owner reports failed (a soft error of
  `monitor`, or a failed `start`): `restart` restarts it in place
  (`Restart`: the agent's `recover` if it has one, else stop and start,
  keeping the key) while the failures of the service on that node within
  `restart_expire_time` number at most `max_restarts` (`0`: no limit); past
  that, or under `relocate`, it is stopped (reason FAILED) and the node is
  avoided for that service until those failures expire; under `disable`
  every instance is stopped and the service is disabled (`Disable`).
- **Hard and fatal.** A ban stops the instance on the banned node; a fatal
  service is stopped everywhere and never started.
- **Disabled** services are stopped everywhere; an instance whose index is
  at or above `instances` (the count was lowered) is stopped (SURPLUS).
- **Promotable** services: when no healthy master runs, the best-ranked
  healthy slave is promoted (the target's, for a master being moved),
  unless a copy being started (busy, or started this cycle) ranks better:
  then the promotion waits for it; of two masters (which the master key
  should prevent) all but the best-ranked are demoted.
- An instance whose owner is **busy** (an action in flight) gets no action.

Actions come in the order stop, demote, disable, restart, start, promote;
the same snapshot always gives the same decision (inputs are sorted first).
`next_timer(snapshot, now)` is when the decision may change with nothing
else changing: the next failure to expire.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from servergroup.services.model import FailoverDomain, Recovery, Service


@dataclass(frozen=True, slots=True, kw_only=True, order=True)
class InstanceId:
    """One copy of a service: its name and index (0 .. instances-1)."""

    service: str
    index: int

    def __str__(self) -> str:
        return f"{self.service}/{self.index}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Owner:
    """Who holds an instance's ownership key, and what its node reports of it."""

    node: str
    token: int
    master: bool = False
    #: The owner reports the instance failed (monitor or start) and has recorded the
    #: failure in `Snapshot.failures`; it awaits recovery.
    failed: bool = False
    #: An action on the instance is in flight; decide nothing for it.
    busy: bool = False
    #: When its current start began (the clock of `Snapshot.joined_at`), None if unknown.
    started_at: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Relocation:
    """An operator's request to move an instance off `from_node`, to `to_node` or anywhere.

    `master`: the instance was the master of a promotable service when asked, and
    what moves is the master role (pending until a master runs off `from_node`).
    """

    from_node: str
    to_node: str | None = None
    master: bool = False


@dataclass(frozen=True, slots=True, kw_only=True, order=True)
class Failure:
    """A soft failure of a service on a node at `at` (seconds, the caller's clock)."""

    service: str
    node: str
    at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    """Everything one placement cycle looks at."""

    nodes: frozenset[str]  # the nodes alive
    services: tuple[Service, ...]
    domains: Mapping[str, FailoverDomain] = field(default_factory=dict)
    #: Hosts of each server group (for domains with `server_group`).
    group_hosts: Mapping[str, frozenset[str]] = field(default_factory=dict)
    owners: Mapping[InstanceId, Owner] = field(default_factory=dict)
    failures: tuple[Failure, ...] = ()
    bans: frozenset[tuple[str, str]] = frozenset()  # (service, node)
    disabled: frozenset[str] = frozenset()
    fatal: frozenset[str] = frozenset()
    blocked: frozenset[InstanceId] = frozenset()
    #: When each alive node last joined (failback goes only to a node that joined
    #: after the instance started); a node missing here counts as joined late.
    joined_at: Mapping[str, float] = field(default_factory=dict)
    #: Operator relocations still pending (the node role drops one once done).
    relocations: Mapping[InstanceId, Relocation] = field(default_factory=dict)


class StopReason(enum.Enum):
    """Why an instance is stopped."""

    DISABLED = "disabled"
    FATAL = "fatal"
    BANNED = "banned"
    FAILED = "failed"
    FAILBACK = "failback"
    OUTSIDE_DOMAIN = "outside its restricted domain"
    SURPLUS = "surplus"
    RELOCATE = "relocation asked"


@dataclass(frozen=True, slots=True, kw_only=True)
class Start:
    instance: InstanceId
    node: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Stop:
    instance: InstanceId
    node: str
    reason: StopReason


@dataclass(frozen=True, slots=True, kw_only=True)
class Restart:
    """Recover in place (the agent's `recover`, else stop then start), keeping the key."""

    instance: InstanceId
    node: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Promote:
    instance: InstanceId
    node: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Demote:
    instance: InstanceId
    node: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Disable:
    """Record the service as disabled (its recovery policy is `disable`)."""

    service: str


Action = Stop | Demote | Disable | Restart | Start | Promote

_ORDER: Final[Mapping[type, int]] = {
    Stop: 0,
    Demote: 1,
    Disable: 2,
    Restart: 3,
    Start: 4,
    Promote: 5,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    actions: tuple[Action, ...]
    sentence: str
    #: Why each pending relocation that cannot go ahead now waits (one phrase each).
    waiting: Mapping[InstanceId, str] = field(default_factory=dict)


def _recent(snapshot: Snapshot, service: Service, node: str, now: float) -> int:
    horizon = now - service.restart_expire_time
    return sum(
        1
        for f in snapshot.failures
        if f.service == service.name and f.node == node and horizon < f.at <= now
    )


def _avoided(snapshot: Snapshot, service: Service, node: str, now: float) -> bool:
    """True when recent failures of `service` on `node` say: run it elsewhere if you can."""
    count = _recent(snapshot, service, node, now)
    if count == 0:
        return False
    if service.recovery is Recovery.RESTART and service.max_restarts == 0:
        return False
    return service.recovery is not Recovery.RESTART or count > service.max_restarts


class _Planner:
    """One cycle's working state: the snapshot, `now`, and what was proposed so far."""

    def __init__(self, snapshot: Snapshot, now: float) -> None:
        self.snapshot = snapshot
        self.now = now
        self.actions: list[Action] = []
        self.notes: list[str] = []
        self.waiting: dict[InstanceId, str] = {}
        self.load: dict[str, int] = {node: 0 for node in snapshot.nodes}
        for owner in snapshot.owners.values():
            if owner.node in self.load:
                self.load[owner.node] += 1

    # --- domains ---

    def members(self, domain: FailoverDomain) -> dict[str, int]:
        """Member node -> priority (a server-group domain's hosts all rank 1)."""
        if domain.server_group is not None:
            hosts = self.snapshot.group_hosts.get(domain.server_group, frozenset())
            return dict.fromkeys(sorted(hosts), 1)
        return {m.node: m.priority for m in domain.members}

    def domain_of(self, service: Service) -> FailoverDomain | None:
        if service.domain is None:
            return None
        return self.snapshot.domains.get(service.domain)

    def rank(self, service: Service, node: str) -> tuple[int, int] | None:
        """How much the domain wants `node` (lower is better); None: never here."""
        domain = self.domain_of(service)
        if domain is None:
            return (0, 0)
        members = self.members(domain)
        if node in members:
            return (0, members[node] if domain.ordered else 0)
        if domain.restricted:
            return None
        return (1, 0)

    def allowed(self, service: Service, node: str) -> bool:
        return (
            node in self.snapshot.nodes
            and (service.name, node) not in self.snapshot.bans
            and self.rank(service, node) is not None
        )

    def candidates(self, service: Service, taken: set[str]) -> list[str]:
        """Nodes that may start a copy of `service`, best first."""
        found = []
        for node in self.snapshot.nodes:
            rank = self.rank(service, node)
            if rank is None or node in taken or not self.allowed(service, node):
                continue
            avoided = _avoided(self.snapshot, service, node, self.now)
            found.append(((avoided, rank, self.load[node], node), node))
        return [node for _, node in sorted(found)]

    # --- one service ---

    def avoided(self, service: Service, node: str) -> bool:
        return _avoided(self.snapshot, service, node, self.now)

    def stop_all(self, service: Service, owners: dict[InstanceId, Owner], why: StopReason) -> None:
        for instance, owner in owners.items():
            if not owner.busy:
                self.actions.append(Stop(instance=instance, node=owner.node, reason=why))

    def place(self, service: Service) -> None:
        snap = self.snapshot
        owners = {i: o for i, o in sorted(snap.owners.items()) if i.service == service.name}
        if service.name in snap.fatal:
            self.stop_all(service, owners, StopReason.FATAL)
            self.notes.append(f"{service.name} is stopped everywhere after a fatal error")
            return
        if not service.enabled or service.name in snap.disabled:
            self.stop_all(service, owners, StopReason.DISABLED)
            return
        kept: dict[InstanceId, Owner] = {}
        for instance, owner in owners.items():
            why = self.unwanted(service, instance, owner)
            if why is not None:
                if not owner.busy:
                    self.actions.append(Stop(instance=instance, node=owner.node, reason=why))
                continue
            if owner.failed and not owner.busy:
                if self.recover(service, instance, owner, owners):
                    return  # the service is disabled: nothing more for it
                continue
            if self.relocate(service, instance, owner, owners):
                continue
            kept[instance] = owner
        self.failback(service, kept, taken={o.node for o in owners.values()})
        taken = {o.node for o in owners.values()}
        for index in range(service.instances):
            instance = InstanceId(service=service.name, index=index)
            if instance in owners or instance in snap.blocked:
                if instance in snap.blocked and instance not in owners:
                    self.notes.append(f"{instance} stays stopped: its last stop failed")
                continue
            choice = self.candidates(service, taken)
            asked = snap.relocations.get(instance)
            moving = self.master_moving(service) if service.promotable else None
            if asked is not None and asked.to_node in choice:
                choice = [asked.to_node]
            elif asked is None and moving is not None and moving.to_node in choice:
                choice = [moving.to_node]  # the copy the master is to move to
            elif asked is not None and len(choice) > 1 and asked.from_node in choice:
                choice.remove(asked.from_node)
            if not choice:
                self.notes.append(f"{instance} stays stopped: {self.why_nowhere(service)}")
                continue
            taken.add(choice[0])
            self.load[choice[0]] += 1
            self.actions.append(Start(instance=instance, node=choice[0]))
        if service.promotable:
            self.masters(service, owners)

    def unwanted(self, service: Service, instance: InstanceId, owner: Owner) -> StopReason | None:
        if instance.index >= service.instances:
            return StopReason.SURPLUS
        if (service.name, owner.node) in self.snapshot.bans:
            return StopReason.BANNED
        if self.rank(service, owner.node) is None:
            return StopReason.OUTSIDE_DOMAIN
        return None

    def recover(
        self,
        service: Service,
        instance: InstanceId,
        owner: Owner,
        owners: dict[InstanceId, Owner],
    ) -> bool:
        """Act on a failed instance by the recovery policy; True when the service is disabled."""
        if service.recovery is Recovery.DISABLE:
            self.stop_all(service, owners, StopReason.DISABLED)
            self.actions.append(Disable(service=service.name))
            self.notes.append(f"{service.name} is disabled after {instance} failed")
            return True
        if _avoided(self.snapshot, service, owner.node, self.now):
            self.actions.append(Stop(instance=instance, node=owner.node, reason=StopReason.FAILED))
        else:
            self.actions.append(Restart(instance=instance, node=owner.node))
        return False

    def relocate(
        self, service: Service, instance: InstanceId, owner: Owner, owners: dict[InstanceId, Owner]
    ) -> bool:
        """Carry out a pending relocation of `instance` where it can be; True when stopped."""
        asked = self.snapshot.relocations.get(instance)
        if asked is None or owner.busy or owner.node != asked.from_node:
            return False
        if asked.master and service.promotable:
            # Once demoted, the copy stays where it is: masters() promotes the target's.
            return owner.master and self.move_master(service, instance, owner, asked, owners)
        free = self.candidates(service, {o.node for o in owners.values()})
        if asked.to_node is not None and asked.to_node not in free:
            self.wait(instance, self.unfit(service, asked.to_node) or self.occupied(asked.to_node))
            return False
        return self.move_off(instance, owner, free, "no other allowed node is free")

    def move_off(self, instance: InstanceId, owner: Owner, free: list[str], why: str) -> bool:
        """Stop `instance` to start it on one of `free` (True); with none, say `why` it waits."""
        if not free:
            self.wait(instance, why)
            return False
        self.actions.append(Stop(instance=instance, node=owner.node, reason=StopReason.RELOCATE))
        return True

    def move_master(
        self,
        service: Service,
        instance: InstanceId,
        owner: Owner,
        asked: Relocation,
        owners: dict[InstanceId, Owner],
    ) -> bool:
        """Move the master role off `owner.node`: demote it for a healthy copy on the target,
        or stop it for a free target (it is started and promoted there); True when stopped."""
        copies = {o.node: o for i, o in owners.items() if i != instance}
        free = self.candidates(service, {o.node for o in owners.values()})
        target = asked.to_node
        if target is not None:
            copy = copies.get(target)
            why = self.unfit(service, target)
            if why is None and copy is not None and copy.failed:
                why = f"its copy on {target} has failed"
            if why is None and copy is None and target not in free:
                why = self.occupied(target)
            if why is not None:
                self.wait(instance, why)
                return False
            if copy is None and self.missing(service, owners):
                return False  # a missing copy starts on the target first (place())
            if copy is None:  # checked free above
                return self.move_off(instance, owner, [target], why="")
            if not copy.busy:  # a copy being started or recovered: wait for it, quietly
                self.actions.append(Demote(instance=instance, node=owner.node))
            return False
        if any(self.allowed(service, n) and not (o.failed or o.busy) for n, o in copies.items()):
            self.actions.append(Demote(instance=instance, node=owner.node))
            return False
        return self.move_off(
            instance, owner, free, "no other allowed node runs a healthy copy or is free"
        )

    def missing(self, service: Service, owners: Mapping[InstanceId, Owner]) -> bool:
        """Whether an instance of `service` has no owner and may be started."""
        return any(
            i not in owners and i not in self.snapshot.blocked
            for i in (InstanceId(service=service.name, index=n) for n in range(service.instances))
        )

    def unfit(self, service: Service, node: str) -> str | None:
        """Why `node` may run no copy of `service` now, None if it may."""
        if node not in self.snapshot.nodes:
            return f"{node} is not up"
        if (service.name, node) in self.snapshot.bans:
            return f"{service.name} is banned from {node}"
        if self.rank(service, node) is None:
            domain = self.domain_of(service)
            name = domain.name if domain is not None else "-"
            return f"{node} is outside the restricted domain {name!r}"
        return None

    def occupied(self, node: str) -> str:
        return f"{node} already runs a copy of it (copies run on distinct nodes)"

    def wait(self, instance: InstanceId, why: str) -> None:
        """Say why the relocation of `instance` cannot go ahead this cycle."""
        self.waiting[instance] = why
        self.notes.append(f"the relocation of {instance} waits: {why}")

    def joined_since(self, node: str, owner: Owner) -> bool:
        joined = self.snapshot.joined_at.get(node)
        return joined is None or owner.started_at is None or joined > owner.started_at

    def failback(self, service: Service, kept: dict[InstanceId, Owner], *, taken: set[str]) -> None:
        domain = self.domain_of(service)
        if domain is None or domain.nofailback:
            return
        moving = self.master_moving(service) if service.promotable else None
        target = moving.to_node if moving is not None else None
        for instance, owner in kept.items():
            if owner.busy or owner.master or owner.node not in self.snapshot.nodes:
                continue
            if owner.node == target:
                continue  # the copy the master is being moved to
            current = self.rank(service, owner.node)
            assert current is not None  # unwanted() stopped it otherwise
            better = []
            for node in self.candidates(service, taken):
                rank = self.rank(service, node)
                if (
                    rank is not None
                    and rank < current
                    and not self.avoided(service, node)
                    and self.joined_since(node, owner)
                ):
                    better.append(node)
            if better:
                self.actions.append(
                    Stop(instance=instance, node=owner.node, reason=StopReason.FAILBACK)
                )
                taken.add(better[0])  # one move per better node per cycle

    def masters(self, service: Service, owners: dict[InstanceId, Owner]) -> None:
        """Promote when no owner claims master; demote all masters but the best of several.

        A master that failed or is being stopped still claims the role until
        its key is gone, so no slave is promoted beside it (two masters at no
        moment, even for a cycle).
        """
        stopping = {a.instance for a in self.actions if isinstance(a, Stop | Restart)}

        def order(item: tuple[InstanceId, Owner]) -> tuple[object, ...]:
            instance, owner = item
            usable = not (owner.failed or owner.busy or instance in stopping)
            return (not usable, self.rank(service, owner.node) or (9, 0), owner.node, instance)

        masters = sorted(((i, o) for i, o in owners.items() if o.master), key=order)
        if not masters:
            slaves = sorted(
                ((i, o) for i, o in owners.items() if not (o.failed or o.busy or i in stopping)),
                key=order,
            )
            moving = self.master_moving(service)
            if moving is not None and self.promote_target(service, owners, slaves, moving):
                return
            if moving is not None and moving.to_node is None:
                # Anywhere but there: the old master's node only when no other can.
                slaves = sorted(slaves, key=lambda item: item[1].node == moving.from_node)
            if not slaves:
                return
            instance, owner = slaves[0]
            # A copy on its way to a better-ranked node (starting now, or proposed this
            # cycle) is waited for: the master goes where the domain prefers it, and
            # does not move once there.
            best = self.rank(service, owner.node) or (9, 0)
            coming = [o.node for o in owners.values() if o.busy and not o.master] + [
                a.node
                for a in self.actions
                if isinstance(a, Start) and a.instance.service == service.name
            ]
            if any((self.rank(service, node) or (9, 0)) < best for node in coming):
                self.notes.append(f"{service.name} promotes once its better-placed copy runs")
                return
            self.actions.append(Promote(instance=instance, node=owner.node))
            return
        demoting = {a.instance for a in self.actions if isinstance(a, Demote)}
        for instance, owner in masters[1:]:
            if not owner.busy and instance not in stopping and instance not in demoting:
                self.actions.append(Demote(instance=instance, node=owner.node))

    def master_moving(self, service: Service) -> Relocation | None:
        """The pending move of `service`'s master, if an operator asked one."""
        moves = sorted(
            (i, r)
            for i, r in self.snapshot.relocations.items()
            if i.service == service.name and r.master
        )
        return moves[0][1] if moves else None

    def promote_target(
        self,
        service: Service,
        owners: dict[InstanceId, Owner],
        slaves: list[tuple[InstanceId, Owner]],
        moving: Relocation,
    ) -> bool:
        """With no master and the master being moved to a node: promote the copy there, or
        wait while one is on its way there; False when the target cannot take it."""
        target = moving.to_node
        if target is None:
            return False
        for instance, owner in slaves:
            if owner.node == target:
                self.actions.append(Promote(instance=instance, node=target))
                return True
        coming = any(o.busy and not o.failed and o.node == target for o in owners.values()) or any(
            isinstance(a, Start) and a.instance.service == service.name and a.node == target
            for a in self.actions
        )
        if coming:
            self.notes.append(f"{service.name} promotes on {target} once its copy there runs")
        return coming

    def why_nowhere(self, service: Service) -> str:
        domain = self.domain_of(service)
        if domain is not None and domain.restricted:
            return f"no allowed member of restricted domain {domain.name!r} is up"
        return "no allowed node is up"


def _describe(action: Action) -> str:
    if isinstance(action, Start):
        return f"start {action.instance} on {action.node}"
    if isinstance(action, Stop):
        return f"stop {action.instance} on {action.node} ({action.reason.value})"
    if isinstance(action, Restart):
        return f"restart {action.instance} on {action.node}"
    if isinstance(action, Promote):
        return f"promote {action.instance} on {action.node}"
    if isinstance(action, Demote):
        return f"demote {action.instance} on {action.node}"
    return f"disable {action.service}"


def decide(snapshot: Snapshot, now: float) -> Decision:
    """The actions of this cycle and one sentence saying what was decided (see the docstring)."""
    planner = _Planner(snapshot, now)
    for service in sorted(snapshot.services, key=lambda s: s.name):
        planner.place(service)
    actions = tuple(sorted(planner.actions, key=lambda a: _ORDER[type(a)]))
    running = len(snapshot.owners)
    if actions:
        sentence = "; ".join(_describe(a) for a in actions)
    else:
        sentence = f"{running} instance(s) of {len(snapshot.services)} service(s) placed"
    if planner.notes:
        sentence += "; " + "; ".join(planner.notes)
    return Decision(actions=actions, sentence=sentence + ".", waiting=dict(planner.waiting))


def next_timer(snapshot: Snapshot, now: float) -> float | None:
    """When the next failure expires (the decision may change then), None if none will."""
    expiries = []
    by_name = {s.name: s for s in snapshot.services}
    for failure in snapshot.failures:
        service = by_name.get(failure.service)
        if service is not None and failure.at + service.restart_expire_time > now:
            expiries.append(failure.at + service.restart_expire_time)
    return min(expiries, default=None)


__all__ = [
    "Action",
    "Decision",
    "Demote",
    "Disable",
    "Failure",
    "InstanceId",
    "Owner",
    "Promote",
    "Relocation",
    "Restart",
    "Snapshot",
    "Start",
    "Stop",
    "StopReason",
    "decide",
    "next_timer",
]
