"""The node role: a component of `servergroup host` that runs this node's service instances.

Theory of operation (docs/design/services.md, "The node role").

**One cycle.** The role keeps a copy of every key under `services/` (one
prefix read, then a watch that applies each event), and on every change, on
a change of the registry (the hosts of server-group domains), of the
session, of an instance of its own, and at placement's `next_timer`, it
decodes the keys (`store.read_listing`), resolves the definitions against
their agents' meta-data (once per definition revision), builds the
snapshot (`store.snapshot`, with this node's own instances laid over it as
it knows them, since the watch may lag behind its own writes), calls
`placement.decide`, logs the decision's sentence when it changes, and
carries out the actions that name this node. Each instance has at most one
action in flight, in a task of its own, so a slow agent delays nobody else.
Nothing is decided or started while the session may not act. An operator's
relocation from this node that placement cannot carry out gets the reason
written in its record (`waiting`, on a change), which `service status`
shows; the record is deleted once what it moves runs elsewhere
(`store.relocated_to`), by this node or the new holder.

**Ownership.** A start creates `owners/<s>/<i>` on the session's lease only
if it is absent and the instance is not blocked, in one transaction (losing
the race means another node owns it: nothing is done). The key's create
revision is the **fencing token**, handed to every action of the agent as
`OCF_RESKEY_fencing_token` and recorded in the history. The local ledger
(`services.ledger`) lists the instance before its `start` or `promote` runs
and forgets it only after its `stop` (or `demote`) ended, so the supervisor
that outlives a dead daemon knows what to stop. A stop demotes first if
master, runs `stop`, then deletes the key with a compare on its create
revision. A stop that fails or times out (the runner killed the agent's
process group) writes `blocked/<s>/<i>` in the same transaction that drops
the key, so the instance is started nowhere until an operator clears it. A
restart in place runs the agent's `recover` when it has one, else stop and
start under the same key. A promote creates `master/<s>` first (the master
key is the exclusion: of two nodes asked to promote, one wins it), then runs
`promote`, then publishes the address; a demote runs `demote`, then deletes
the master key. A plain service publishes its instance 0 in `master/<s>` as
well, which is what discovery reads.

**Monitors** run per depth on their intervals while no action is in flight;
a result other than the one expected (running, or running as master) is a
failure of its class: soft marks the owner record failed and appends a
failure (placement restarts or moves it by the recovery policy), hard also
bans this node for the service, fatal also marks the service fatal. A start
or promote that fails is handled the same way. A definition whose
parameters changed is `reload`ed when the agent can, else restarted.

**Refusals.** A definition that does not resolve against its agent
(`model.resolve`) or whose demote, stop and kill cannot end within what the
lease leaves (`model.check_stop_fits`; a promote runs within the start
timeout and a demote within the stop timeout) is refused by every node
alike: one log line, and the service's state record marked fatal with the
reason (`REFUSED` first), which a later definition that fits lifts. An
agent missing on this node, or whose meta-data fails here, bans this node
for the service (a hard error, as Pacemaker reads ERR_INSTALLED).

**Self-fencing.** The session proves its lease alive until `valid_until`
and has `fence_at = valid_until - fence_margin`. The role computes
`stop_by = fence_at - budget`, the budget being the largest `stop_budget` of
its instances, and when `stop_by` comes without a renewal having moved it,
it cancels every action and monitor and demotes and stops every local
instance at once (a timeout kills the agent's process group), so that
everything is stopped before the store may expire the lease and another
node may win a key. Keys are deleted afterwards if the store answers; a key
of this node that the role holds no instance for (after a fence, or left by
its previous run) is deleted on sight, and an instance whose key is gone
(lease expired while frozen, cut off) is stopped: a node that comes back
does not fight. An instance of a service whose definition was removed is
stopped by its owner.

**Fencing.** A stop that fails or times out hands the copy to the role's
`Fencer` (`services.fencing`; the default kills what the copy's agents left
running and claims nothing) before anything else: when the fencer is
certain the copy is fenced (a real device said so), the instance counts as
stopped and may run elsewhere at once; otherwise it is marked failed-stop
(`blocked/<s>/<i>`, written while the key is still ours), started nowhere
until an operator clears it.

**Clean stop** (SIGTERM): every local instance is stopped and its keys
deleted, the node key is deleted, and the ledger is cleared when nothing is
left running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

from servergroup.common import metrics
from servergroup.common.component import ComponentHealth, HealthState, cancel_and_wait
from servergroup.common.errors import phrase
from servergroup.common.logsetup import log_bug
from servergroup.config import CoordinationConfig
from servergroup.coordination import (
    CoordinationError,
    Coordinator,
    EventKind,
    FencingError,
    RevisionConflict,
    Session,
    SessionState,
    WatchCompacted,
)
from servergroup.coordination.protocol import Watch
from servergroup.coordination.types import Compare, Delete, Guard, KeyValue, Put, WatchEvent
from servergroup.servers.model import RegistrySnapshot
from servergroup.services import store
from servergroup.services.fencing import FENCE_TIMEOUT, Fencer, FenceRequest, KillLeftovers
from servergroup.services.ledger import (
    Ledger,
    LedgerEntry,
    clear_ledger,
    ledger_path,
    read_ledger,
    write_ledger,
)
from servergroup.services.metadata import AgentInfo, MetadataError
from servergroup.services.model import (
    DefinitionError,
    Service,
    check_lease_fits,
    resolve,
    stop_budget,
)
from servergroup.services.ocf import KILL_GRACE, Agent, AgentNotFound, AgentResult, OcfAgent
from servergroup.services.ocf_codes import OcfStatus, Severity
from servergroup.services.placement import (
    Action,
    Demote,
    Disable,
    Failure,
    InstanceId,
    Owner,
    Promote,
    Restart,
    Snapshot,
    Start,
    Stop,
    decide,
    next_timer,
)

log = logging.getLogger(__name__)

#: How a state record says a definition was refused at load (a later one that fits lifts it).
REFUSED: Final = store.REFUSED
#: Attempts of a read-modify-write (failures, history) against concurrent writers.
RMW_ATTEMPTS: Final = 5
#: The longest the loop sleeps with nothing to do (it re-decides then anyway).
IDLE_INTERVAL: Final = 5.0
#: Owner keys whose loss a node remembers (those it did not restart itself are dropped).
LOST_REMEMBERED: Final = 4096
#: A revision the watch never reaches.
NEVER: Final = sys.maxsize

#: Builds the agent of one instance of a (resolved, rendered) service.
AgentFactory = Callable[[Service, InstanceId], Agent]


def instance_name(instance: InstanceId) -> str:
    """OCF_RESOURCE_INSTANCE of an instance: `<service>:<index>`, as Pacemaker names clones."""
    return f"{instance.service}:{instance.index}"


def ocf_agents(ocf_root: Path) -> AgentFactory:
    """The factory of real agents under `ocf_root`."""

    def make(service: Service, instance: InstanceId) -> Agent:
        return OcfAgent(
            service.agent,
            instance=instance_name(instance),
            parameters=service.parameters,
            ocf_root=ocf_root,
        )

    return make


@dataclass(frozen=True, slots=True, kw_only=True)
class _Resolved:
    """A definition revision resolved here: the service and its agent's info, or why not."""

    service: Service | None = None
    info: AgentInfo | None = None
    refusal: str = ""  # the definition is refused everywhere
    unusable: str = ""  # this node cannot run it (agent missing, meta-data failing)


@dataclass(slots=True, kw_only=True)
class _Stuck:
    """An instance whose stop failed here: it may still run until an operator clears it."""

    reason: str
    #: The store revision of its block record; until the watch passed it, the record's
    #: absence means nothing (NEVER: it could not be written, it stays until a restart).
    revision: int = NEVER


@dataclass(slots=True, kw_only=True)
class _Local:
    """An instance this node holds the key of (or is taking down)."""

    instance: InstanceId
    service: Service  # resolved and rendered for this node
    info: AgentInfo
    agent: Agent
    token: int
    lease: int
    started_at: float  # wall
    master: bool = False
    master_token: int = 0  # create revision of master/<s> while we hold it
    failed: bool = False
    action: str = ""  # the action in flight
    monitors: dict[int, store.MonitorResult] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None
    monitor_task: asyncio.Task[None] | None = None
    #: When this node saw the instance's previous owner key go (monotonic), if it did.
    lost_at: float | None = None

    @property
    def publishes(self) -> bool:
        """Whether this instance belongs in master/<s> (a master, or a plain service's 0)."""
        return self.master or (not self.service.promotable and self.instance.index == 0)

    def budget(self) -> float:
        timeout = self.service.stop_timeout or 0.0
        return stop_budget(
            self.service,
            kill_grace=KILL_GRACE,
            demote_timeout=(timeout + KILL_GRACE) if self.master else 0.0,
        )


class NodeRole:
    """The service manager's node role on host `node` (see the module's docstring)."""

    name = "services"

    def __init__(
        self,
        *,
        coordinator: Coordinator,
        session: Session,
        node: str,
        node_ip: str,
        ocf_root: Path,
        state_dir: Path,
        coordination: CoordinationConfig,
        group_hosts: Callable[[], Mapping[str, frozenset[str]]] | None = None,
        group_changes: Callable[[], asyncio.Queue[Any]] | None = None,
        agents: AgentFactory | None = None,
        wall: Callable[[], float] = time.time,
        own_session: bool = False,
        fencer: Fencer | None = None,
    ) -> None:
        """`own_session`: the role starts and closes `session` itself (a lease of its own,
        `[services] lease_ttl`, rather than the host's). `fencer`: what a stop that failed
        is handed to (`services.fencing`; default `KillLeftovers`)."""
        self._c = coordinator
        self._session = session
        self._own_session = own_session
        self.node = node
        self.node_ip = node_ip
        self.ocf_root = ocf_root
        #: The daemon's state directory: the ledger lives under it, and `{state_dir}`
        #: in a service's parameters names it.
        self.state_dir = state_dir
        self.ledger_path = ledger_path(state_dir, node)
        self._coordination = coordination
        self._group_hosts = group_hosts
        self._group_changes = group_changes
        self._agents = agents or ocf_agents(ocf_root)
        self._wall = wall
        self.fencer: Fencer = fencer or KillLeftovers()
        self._items: dict[str, KeyValue] = {}
        self._revision = 0
        self._resolved: dict[tuple[str, int], _Resolved] = {}
        self._local: dict[InstanceId, _Local] = {}
        self._starting: set[InstanceId] = set()
        #: Owner keys whose DELETE this node's watch saw, and when (monotonic): the
        #: moment the cluster knew the instance was lost, for the failover's duration.
        self._lost_at: dict[str, float] = {}
        self._stuck: dict[InstanceId, _Stuck] = {}  # a stop failed here: may still run
        # The failure times this node last wrote, by service, with the write's revision:
        # the watch may not have brought them back when the next cycle plans the
        # recovery (see _overlay).
        self._written_failures: dict[str, tuple[int, tuple[float, ...]]] = {}
        self._ledger = Ledger(
            node=node, lease=0, pid=os.getpid(), ocf_root=str(ocf_root), entries=()
        )
        self._wake = asyncio.Event()
        self._node_lease = 0
        self._fencing = False
        self._last_sentence = ""
        self._refused: dict[str, str] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._running = False

    # -- component ------------------------------------------------------------------------

    async def start(self) -> None:
        if self._own_session:
            await self._session.start(timeout=self._coordination.operation_timeout)
        await self._stop_leftovers()
        self._write_ledger()
        await self._ensure_node_key()
        self._running = True
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._run(), name=f"services-{self.node}"),
            loop.create_task(self._fence_watch(), name=f"services-fence-{self.node}"),
            loop.create_task(self._follow_session(), name=f"services-session-{self.node}"),
        ]
        if self._group_changes is not None:
            self._tasks.append(loop.create_task(self._follow_groups(self._group_changes())))

    async def stop(self) -> None:
        if not self._running:
            return
        self._running = False
        await cancel_and_wait(self._tasks)
        self._tasks = []
        await cancel_and_wait(
            [t for local in self._local.values() for t in (local.task, local.monitor_task) if t]
        )
        await asyncio.gather(
            *(
                self._take_down(local, why="the node role stops")
                for local in list(self._local.values())
            ),
            return_exceptions=True,
        )
        with contextlib.suppress(CoordinationError, TimeoutError):
            async with asyncio.timeout(self._coordination.request_timeout):
                await self._c.delete(store.node_key(self.node))
        if not self._local and not self._stuck:
            clear_ledger(self.ledger_path)
        else:
            log.warning(
                "services on %s: the ledger keeps %d instance(s) whose stop failed",
                self.node,
                len(self._ledger.entries),
            )
        if self._own_session:
            # Revoked, the lease takes the owner keys with it at once (failover does not
            # wait for its expiry); not when a stop failed and the instance may still run.
            await self._session.close(revoke=not self._stuck)

    def health(self) -> ComponentHealth:
        if not self._running:
            return ComponentHealth(state=HealthState.STOPPED, sentence="not running services")
        local = ", ".join(
            f"{i}{' (master)' if v.master else ''}{' (failed)' if v.failed else ''}"
            for i, v in sorted(self._local.items())
        )
        problems = []
        if self._fencing:
            problems.append("fencing itself: the lease is not renewed in time")
        problems += [f"{i} may still run: {st.reason}" for i, st in sorted(self._stuck.items())]
        problems += [f"{s} refused: {why}" for s, why in sorted(self._refused.items())]
        sentence = f"running {local or 'no instance'}; {self._last_sentence or 'no decision yet'}"
        if problems:
            sentence += "; " + "; ".join(problems)
        state = HealthState.DEGRADED if problems else HealthState.HEALTHY
        return ComponentHealth(state=state, sentence=sentence)

    # -- the loop -------------------------------------------------------------------------

    def _poke(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
        while True:
            try:
                await self._follow()
            except asyncio.CancelledError:
                raise
            except WatchCompacted:
                log.warning("services on %s: watch compacted; reading again", self.node)
            except (CoordinationError, TimeoutError) as exc:
                log.warning("services on %s: %s; reading again", self.node, exc)
                await asyncio.sleep(0.5)
            except Exception:
                log_bug(log, f"the node role of {self.node}")
                await asyncio.sleep(1.0)

    async def _follow(self) -> None:
        rng = await self._c.get_prefix(store.SERVICES)
        self._items = {kv.key: kv for kv in rng.items}
        self._revision = rng.revision
        watch = await self._c.watch(store.SERVICES, start_revision=rng.revision + 1)
        pump = asyncio.create_task(self._pump(watch))
        try:
            while True:
                if pump.done():
                    pump.result()  # raises what ended the watch
                delay = await self._cycle()
                self._wake.clear()
                waiter = asyncio.ensure_future(self._wake.wait())
                await asyncio.wait({waiter, pump}, timeout=delay, return_when="FIRST_COMPLETED")
                waiter.cancel()
        finally:
            await cancel_and_wait([pump])
            await watch.close()

    async def _pump(self, watch: Watch) -> None:
        async for event in watch:
            self._apply(event)
            self._poke()

    def _apply(self, event: WatchEvent) -> None:
        self._revision = max(self._revision, event.revision)
        if event.kind is EventKind.DELETE:
            self._items.pop(event.key, None)
            if event.key.startswith(store.OWNERS):
                self._note_lost(event.key)
            return
        self._items[event.key] = KeyValue(
            key=event.key,
            value=event.value,
            create_revision=event.create_revision,
            mod_revision=event.revision,
            version=event.version,
            lease=event.lease,
        )

    def _note_lost(self, key: str) -> None:
        now = time.monotonic()
        self._lost_at[key] = now
        if len(self._lost_at) > LOST_REMEMBERED:  # instances others took over: forget the oldest
            for old in sorted(self._lost_at, key=self._lost_at.__getitem__)[: LOST_REMEMBERED // 2]:
                del self._lost_at[old]

    async def _follow_session(self) -> None:
        changes = self._session.listen()
        try:
            while True:
                await changes.get()
                self._poke()
        finally:
            self._session.unlisten(changes)

    async def _follow_groups(self, queue: asyncio.Queue[Any]) -> None:
        while True:
            await queue.get()
            self._poke()

    async def _cycle(self) -> float | None:
        """Decide once and launch this node's actions; the delay until the next cycle."""
        if not self._may_act():
            return IDLE_INTERVAL
        await self._ensure_node_key()
        listing = store.read_listing(self._items.values(), revision=self._revision)
        services = await self._resolve_all(listing)
        await self._tidy(listing)
        snap = self._overlay(
            store.snapshot(listing, services=services, group_hosts=self._hosts_of_groups())
        )
        now = self._wall()
        decision = decide(snap, now)
        if decision.sentence != self._last_sentence:
            log.info("services on %s: %s", self.node, decision.sentence)
            self._last_sentence = decision.sentence
        for action in decision.actions:
            self._launch(action, listing)
        await self._say_waiting(listing, decision.waiting)
        self._follow_definitions(listing)
        self._republish(listing)
        timer = next_timer(snap, now)
        return IDLE_INTERVAL if timer is None else min(IDLE_INTERVAL, max(0.0, timer - now) + 0.05)

    def _may_act(self) -> bool:
        return (
            self._running
            and not self._fencing
            and self._session.state is SessionState.CONNECTED
            and self._session.may_act()
        )

    def _hosts_of_groups(self) -> Mapping[str, frozenset[str]]:
        return self._group_hosts() if self._group_hosts is not None else {}

    def _overlay(self, snap: Snapshot) -> Snapshot:
        """The snapshot with this node's instances as this node knows them (the watch may lag)."""
        owners = dict(snap.owners)
        for instance, owner in list(owners.items()):
            if owner.node == self.node and instance not in self._local:
                owners[instance] = replace(owner, busy=True)  # being started or deleted
        for instance, local in self._local.items():
            owners[instance] = Owner(
                node=self.node,
                token=local.token,
                master=local.master,
                failed=local.failed,
                busy=local.task is not None,
                started_at=local.started_at,
            )
        for instance in self._starting:
            owners.setdefault(instance, Owner(node=self.node, token=0, busy=True))
        for instance in self._stuck:
            owners.setdefault(instance, Owner(node=self.node, token=0, busy=True))
        # A failure this node wrote counts at once: an instance seen failed here with its
        # failure not yet back through the watch was restarted in place while the other
        # nodes, which had it, stopped it for a relocation (seen under load in CI).
        # Until the watch has passed the write, this node's own record of the service
        # is the one it wrote.
        for service, (revision, _) in list(self._written_failures.items()):
            if self._revision >= revision:
                del self._written_failures[service]
        failures = snap.failures
        if self._written_failures:
            mine = {(service, self.node) for service in self._written_failures}
            failures = tuple(
                sorted(
                    (
                        *(f for f in snap.failures if (f.service, f.node) not in mine),
                        *(
                            Failure(service=service, node=self.node, at=at)
                            for service, (_, times) in self._written_failures.items()
                            for at in times
                        ),
                    )
                )
            )
        return replace(snap, owners=owners, failures=failures)

    async def _ensure_node_key(self) -> None:
        lease = self._session.lease_id
        if not lease or lease == self._node_lease:
            return
        record = store.NodeRecord(node=self.node, ip=self.node_ip, joined_at=self._wall())
        await self._c.put(store.node_key(self.node), store.encode_node(record), lease=lease)
        self._node_lease = lease
        if self._ledger.lease != lease:
            self._ledger = replace(self._ledger, lease=lease)
            self._write_ledger()

    # -- definitions ----------------------------------------------------------------------

    async def _resolve_all(self, listing: store.Listing) -> dict[str, Service]:
        """Each definition resolved here where it can be, else as stored."""
        out: dict[str, Service] = {}
        for name, service in listing.services.items():
            kv = self._items.get(store.def_key(name))
            revision = kv.mod_revision if kv is not None else 0
            resolved = self._resolved.get((name, revision))
            if resolved is None:
                resolved = await self._resolve(service)
                self._resolved = {k: v for k, v in self._resolved.items() if k[0] != name}
                self._resolved[(name, revision)] = resolved
                await self._record_resolution(name, resolved, listing)
            out[name] = resolved.service or service
        self._refused = {
            name: r.refusal or r.unusable
            for (name, _), r in self._resolved.items()
            if (r.refusal or r.unusable) and name in listing.services
        }
        return out

    async def _resolve(self, service: Service) -> _Resolved:
        rendered = self._rendered(service, InstanceId(service=service.name, index=0))
        try:
            agent = self._agents(rendered, InstanceId(service=service.name, index=0))
            info = await agent.metadata()
        except (AgentNotFound, MetadataError) as exc:
            return _Resolved(unusable=phrase(exc))
        try:
            resolved = resolve(service, info)
            check_lease_fits(
                resolved,
                self._coordination,
                kill_grace=KILL_GRACE,
                agent_default=service.stop_timeout is None,
            )
        except DefinitionError as exc:
            return _Resolved(refusal=phrase(exc))
        return _Resolved(service=resolved, info=info)

    async def _record_resolution(
        self, name: str, resolved: _Resolved, listing: store.Listing
    ) -> None:
        """Log a refusal once per revision and record it; lift an earlier refusal that is over."""
        state_kv = self._items.get(store.state_key(name))
        state = listing.states.get(name)
        try:
            if resolved.refusal:
                log.warning("services on %s: %s", self.node, resolved.refusal)
                if state is not None and state.fatal and state.reason.startswith(REFUSED):
                    return
                record = store.StateRecord(
                    disabled=state.disabled if state is not None else False,
                    fatal=True,
                    reason=REFUSED + resolved.refusal,
                    at=self._wall(),
                )
                await self._c.put(
                    store.state_key(name),
                    store.encode_state(record),
                    if_mod_revision=state_kv.mod_revision if state_kv is not None else 0,
                )
            elif resolved.unusable:
                log.warning(
                    "services on %s: %s: banned here for %s", self.node, resolved.unusable, name
                )
                if (name, self.node) not in listing.bans:
                    ban = store.BanRecord(reason=resolved.unusable, at=self._wall())
                    await self._c.put(store.ban_key(name, self.node), store.encode_ban(ban))
            elif state is not None and state.fatal and state.reason.startswith(REFUSED):
                assert state_kv is not None
                lifted = store.StateRecord(
                    disabled=state.disabled, fatal=False, reason="", at=self._wall()
                )
                await self._c.put(
                    store.state_key(name),
                    store.encode_state(lifted),
                    if_mod_revision=state_kv.mod_revision,
                )
                log.info("services on %s: %s now fits; its refusal is lifted", self.node, name)
        except RevisionConflict:
            pass  # another node recorded it first

    def _definition(self, name: str) -> _Resolved | None:
        kv = self._items.get(store.def_key(name))
        if kv is None:
            return None
        return self._resolved.get((name, kv.mod_revision))

    def _rendered(self, service: Service, instance: InstanceId) -> Service:
        return service.render_parameters(
            node=self.node,
            node_ip=self.node_ip,
            instance=instance.index,
            state_dir=str(self.state_dir.absolute()),
        )

    def _follow_definitions(self, listing: store.Listing) -> None:
        """Adopt a changed definition in running instances: reload or restart on new parameters."""
        for instance, local in list(self._local.items()):
            if local.task is not None or local.failed:
                continue
            resolved = self._definition(instance.service)
            if resolved is None or resolved.service is None or resolved.info is None:
                continue
            new = self._rendered(resolved.service, instance)
            if new == local.service:
                continue
            if dict(new.parameters) == dict(local.service.parameters):
                local.service = new
                self._ledger_put(local)
                self._restart_monitors(local)
                continue
            self._spawn(local, self._change_parameters(local, new, resolved.info), "reload")

    def _republish(self, listing: store.Listing) -> None:
        """Publish a plain service's instance 0 whose master key was still taken at its start."""
        for instance, local in self._local.items():
            if (
                local.publishes
                and not local.master_token
                and local.task is None
                and not local.failed
                and instance.service not in listing.masters
            ):
                self._spawn(local, self._publish(local), "publish")

    # -- tidying what the store says ------------------------------------------------------

    async def _tidy(self, listing: store.Listing) -> None:
        """Drop keys of ours we hold nothing for; stop instances whose key is gone; relocations."""
        for instance, held in listing.owners.items():
            if (
                held.record.node == self.node
                and instance not in self._local
                and instance not in self._starting
                and instance not in self._stuck
            ):
                await self._delete_owner(instance, held.token)
        for instance, local in list(self._local.items()):
            mine = listing.owners.get(instance)
            if self._revision < local.token:
                continue  # the watch has not shown our own key yet
            if (mine is None or mine.token != local.token) and local.task is None:
                log.warning(
                    "services on %s: %s lost its key (token %d): stopping it",
                    self.node,
                    instance,
                    local.token,
                )
                self._spawn(local, self._stop(local, "its key is gone", keyless=True), "stop")
            elif instance.service not in listing.services and local.task is None:
                self._spawn(local, self._stop(local, "its service was removed"), "stop")
        for instance, stuck in list(self._stuck.items()):
            if self._revision >= stuck.revision and instance not in listing.blocked:
                log.info("services on %s: %s was cleared by an operator", self.node, instance)
                del self._stuck[instance]
                self._ledger_drop(instance)
        for instance, relocation in listing.relocations.items():
            holder = store.relocated_to(listing, instance, relocation)
            kv = self._items.get(store.relocation_key(instance))
            if holder is not None and self.node in (relocation.from_node, holder) and kv:
                # Done: the instance (or the master) runs elsewhere now. The new holder
                # deletes it too, for a `from_node` that is gone.
                with contextlib.suppress(CoordinationError):
                    await self._c.delete(
                        store.relocation_key(instance), if_mod_revision=kv.mod_revision
                    )

    async def _say_waiting(self, listing: store.Listing, waiting: Mapping[InstanceId, str]) -> None:
        """Write in each relocation from this node why it waits (or that it no longer does),
        so that `service status` says it; only on a change."""
        for instance, relocation in listing.relocations.items():
            why = waiting.get(instance, "")
            kv = self._items.get(store.relocation_key(instance))
            if relocation.from_node != self.node or relocation.waiting == why or kv is None:
                continue
            record = replace(relocation, waiting=why)
            with contextlib.suppress(CoordinationError):
                await self._c.put(
                    store.relocation_key(instance),
                    store.encode_relocation(record),
                    if_mod_revision=kv.mod_revision,
                )

    async def _delete_owner(self, instance: InstanceId, token: int) -> None:
        with contextlib.suppress(CoordinationError):
            await self._c.txn(
                [Compare.created_at(store.owner_key(instance), token)],
                [Delete(key=store.owner_key(instance))],
            )

    # -- actions --------------------------------------------------------------------------

    def _launch(self, action: Action, listing: store.Listing) -> None:
        if isinstance(action, Disable):
            if any(i.service == action.service for i in self._local):
                self._background(self._disable(action.service, listing))
            return
        if action.node != self.node:
            return
        instance = action.instance
        if isinstance(action, Start):
            if instance in self._local or instance in self._starting or instance in self._stuck:
                return
            resolved = self._definition(instance.service)
            if resolved is None or resolved.service is None or resolved.info is None:
                return  # refused, or not runnable here (banned: placement moves it)
            service = self._rendered(resolved.service, instance)
            self._starting.add(instance)
            self._background(self._start(instance, service, resolved.info))
            return
        local = self._local.get(instance)
        if local is None or local.task is not None:
            return
        if isinstance(action, Stop):
            self._spawn(local, self._stop(local, action.reason.value), "stop")
        elif isinstance(action, Restart):
            self._spawn(local, self._restart(local), "restart")
        elif isinstance(action, Promote):
            self._spawn(local, self._promote(local), "promote")
        elif isinstance(action, Demote):
            self._spawn(local, self._demote(local), "demote")

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.append(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        with contextlib.suppress(ValueError):
            self._tasks.remove(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log_bug(log, f"a services task on {self.node}: {exc!r}")
        self._poke()

    def _spawn(self, local: _Local, coro: Coroutine[Any, Any, None], action: str) -> None:
        local.action = action

        async def run() -> None:
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except CoordinationError as exc:
                log.warning("services on %s: %s of %s: %s", self.node, action, local.instance, exc)
            except Exception:
                log_bug(log, f"{action} of {local.instance} on {self.node}")
            finally:
                local.task = None
                local.action = ""
                self._poke()

        local.task = asyncio.ensure_future(run())

    def _fits(self, extra: float) -> bool:
        """Whether an instance with stop budget `extra` could still be stopped in time now."""
        budget = max([extra, *(local.budget() for local in self._local.values())])
        return self._may_act() and time.monotonic() < self._session.fence_at - budget

    async def _start(self, instance: InstanceId, service: Service, info: AgentInfo) -> None:
        try:
            lease = self._session.lease_id
            budget = stop_budget(service, kill_grace=KILL_GRACE)
            if not self._fits(budget):
                return
            began = self._wall()
            record = store.OwnerRecord(node=self.node, busy=True, action="start", started_at=began)
            key = store.owner_key(instance)
            # Created only if absent and not blocked, in one step: a view that lags behind
            # a failed stop elsewhere can never start the instance beside it.
            created = await self._c.txn(
                [Compare.absent(key), Compare.absent(store.blocked_key(instance))],
                [Put(key=key, value=store.encode_owner(record), lease=lease)],
            )
            if not created.succeeded:
                return  # another node won the key, or the instance is blocked
            token = created.revision  # the key's create revision: the fencing token
            local = _Local(
                lost_at=self._lost_at.pop(key, None),
                instance=instance,
                service=service,
                info=info,
                agent=self._agents(service, instance),
                token=token,
                lease=lease,
                started_at=began,
                action="start",
            )
            self._local[instance] = local
        finally:
            self._starting.discard(instance)
        self._stuck.pop(instance, None)
        self._spawn(local, self._run_start(local), "start")

    async def _run_start(self, local: _Local) -> None:
        self._ledger_put(local)  # before the agent may run anything
        if not self._fits(local.budget()):
            await self._stop(local, "the lease could not cover its stop")
            return
        result = await local.agent.run(
            "start", timeout=local.service.start_timeout or 0.0, fencing_token=local.token
        )
        await self._history(local, "start", result)
        if result.ok:
            local.failed = False
            await self._publish(local)
            self._restart_monitors(local)
        else:
            await self._failed(local, result)

    async def _stop(self, local: _Local, why: str, *, keyless: bool = False) -> None:
        """Demote if master, stop, drop the keys (or block the instance if the stop failed)."""
        await self._stop_monitors(local)
        ok, reason = await self._agent_down(local)
        if not ok:
            await self._stop_failed(local, reason, keyless=keyless)
            return
        await self._stopped(local, why, "ok", keyless=keyless)

    async def _stopped(self, local: _Local, why: str, result: str, *, keyless: bool) -> None:
        """The copy is down (or fenced): drop its key, forget it, write the history."""
        log.info("services on %s: %s stopped (%s)", self.node, local.instance, why)
        try:
            if not keyless:
                await self._delete_owner(local.instance, local.token)
        finally:
            self._local.pop(local.instance, None)
            self._ledger_drop(local.instance)
        await self._history_entry(local, "stop", result)

    async def _stop_failed(self, local: _Local, reason: str, *, keyless: bool = False) -> None:
        """A stop failed: stopped if the fencer is certain it fenced the copy, else blocked."""
        if await self._fence_copy(local, reason):
            fenced = f"failed ({reason}), fenced by {self.fencer.name}"
            await self._stopped(local, f"stop {fenced}", fenced, keyless=keyless)
            return
        await self._block(local, reason)

    async def _fence_copy(self, local: _Local, reason: str) -> bool:
        """Hand the copy to the fencer, within FENCE_TIMEOUT; whether it is certainly fenced."""
        request = FenceRequest(
            node=self.node, instance=local.instance, token=local.token, reason=reason
        )
        try:
            async with asyncio.timeout(FENCE_TIMEOUT):
                fenced = await self.fencer.fence(request)
        except TimeoutError:
            log.error(
                "services on %s: %s did not fence %s within %g s",
                self.node,
                self.fencer.name,
                local.instance,
                FENCE_TIMEOUT,
            )
            return False
        except Exception:
            log_bug(log, f"{self.fencer.name} fencing {local.instance} on {self.node}")
            return False
        if fenced:
            log.warning(
                "services on %s: %s fenced by %s after its stop failed (%s)",
                self.node,
                local.instance,
                self.fencer.name,
                reason,
            )
        return bool(fenced)

    async def _agent_down(self, local: _Local) -> tuple[bool, str]:
        """Demote (if master) and stop the agent; whether it stopped, and why not."""
        if local.master:
            demoted = await local.agent.run(
                "demote", timeout=local.service.stop_timeout or 0.0, fencing_token=local.token
            )
            if not demoted.ok:
                log.warning(
                    "services on %s: %s: %s; stopping it anyway",
                    self.node,
                    local.instance,
                    demoted.describe(),
                )
        if local.publishes and local.master_token:
            await self._unpublish(local)
        local.master = False
        result = await local.agent.run(
            "stop", timeout=local.service.stop_timeout or 0.0, fencing_token=local.token
        )
        return result.ok, result.describe()

    async def _block(self, local: _Local, reason: str) -> None:
        """A stop failed and the copy is not certainly fenced: mark it failed-stop (a block
        written while the key is still held, the key dropped in the same step)."""
        stuck = self._stuck[local.instance] = _Stuck(reason=reason)
        self._local.pop(local.instance, None)
        log.error(
            "services on %s: %s may still run (%s): blocked, started nowhere until cleared",
            self.node,
            local.instance,
            reason,
        )
        block = store.BlockRecord(node=self.node, token=local.token, reason=reason, at=self._wall())
        key = store.owner_key(local.instance)
        put = Put(key=store.blocked_key(local.instance), value=store.encode_block(block))
        written = await self._c.txn(
            [Compare.created_at(key, local.token)], [put, Delete(key=key)], [put]
        )
        stuck.revision = written.revision
        await self._history_entry(local, "stop", f"failed, blocked: {reason}")

    async def _restart(self, local: _Local) -> None:
        """Recover in place: the agent's `recover`, else stop then start under the same key."""
        await self._stop_monitors(local)
        if local.info.has("recover"):
            result = await local.agent.run(
                "recover", timeout=local.service.start_timeout or 0.0, fencing_token=local.token
            )
            await self._history(local, "recover", result)
            if result.ok:
                local.failed = False
                await self._publish(local)
                self._restart_monitors(local)
                return
        ok, reason = await self._agent_down(local)
        if not ok:
            await self._stop_failed(local, reason)
            return
        await self._history_entry(local, "stop", "ok (restart)")
        await self._run_start(local)

    async def _change_parameters(self, local: _Local, new: Service, info: AgentInfo) -> None:
        """Reload with the new parameters when the agent can, else restart with them."""
        agent = self._agents(new, local.instance)
        if info.has("reload"):
            result = await agent.run(
                "reload", timeout=new.start_timeout or 0.0, fencing_token=local.token
            )
            await self._history(local, "reload", result)
            if result.ok:
                local.service, local.agent, local.info = new, agent, info
                self._ledger_put(local)
                self._restart_monitors(local)
                return
        await self._stop_monitors(local)
        ok, reason = await self._agent_down(local)
        if not ok:
            await self._stop_failed(local, reason)
            return
        local.service, local.agent, local.info = new, agent, info
        await self._run_start(local)

    async def _promote(self, local: _Local) -> None:
        if not self._fits(local.budget() + (local.service.stop_timeout or 0.0) + KILL_GRACE):
            return
        master = store.MasterRecord(
            node=self.node, index=local.instance.index, token=local.token, at=self._wall()
        )
        key = store.master_key(local.instance.service)
        created = await self._c.create(key, store.encode_master(master), lease=local.lease)
        if created is None:
            return  # another node is master
        local.master, local.master_token = True, created
        self._ledger_put(local)  # before promote
        await self._put_owner(local)
        result = await local.agent.run(
            "promote", timeout=local.service.start_timeout or 0.0, fencing_token=local.token
        )
        await self._history(local, "promote", result)
        if result.ok:
            await self._publish(local)
            self._restart_monitors(local)
        else:
            await self._failed(local, result)

    async def _demote(self, local: _Local) -> None:
        await self._stop_monitors(local)
        result = await local.agent.run(
            "demote", timeout=local.service.stop_timeout or 0.0, fencing_token=local.token
        )
        await self._history(local, "demote", result)
        if not result.ok:
            await self._failed(local, result)
            return
        await self._unpublish(local)
        local.master = False
        self._ledger_put(local)  # after demote
        local.action = ""  # the record says it is done (others wait on a busy copy)
        await self._put_owner(local)
        self._restart_monitors(local)

    async def _disable(self, service: str, listing: store.Listing) -> None:
        state = listing.states.get(service)
        kv = self._items.get(store.state_key(service))
        record = store.StateRecord(
            disabled=True,
            fatal=state.fatal if state is not None else False,
            reason="disabled by its recovery policy after a failure",
            at=self._wall(),
        )
        with contextlib.suppress(RevisionConflict):
            await self._c.put(
                store.state_key(service),
                store.encode_state(record),
                if_mod_revision=kv.mod_revision if kv is not None else 0,
            )

    # -- publishing -----------------------------------------------------------------------

    async def _put_owner(self, local: _Local) -> None:
        record = store.OwnerRecord(
            node=self.node,
            master=local.master,
            failed=local.failed,
            busy=bool(local.action),
            action=local.action,
            started_at=local.started_at,
            monitors=tuple(local.monitors[d] for d in sorted(local.monitors)),
            address=self._address(local) if local.publishes else None,
        )
        key = store.owner_key(local.instance)
        with contextlib.suppress(FencingError):
            await self._c.put(
                key,
                store.encode_owner(record),
                lease=local.lease,
                guard=Guard(key=key, create_revision=local.token),
            )

    def _address(self, local: _Local) -> str | None:
        return local.service.render_address(
            node=self.node, node_ip=self.node_ip, instance=local.instance.index, token=local.token
        )

    async def _publish(self, local: _Local) -> None:
        """The owner record, and master/<s> for a master or a plain service's instance 0."""
        local.action = ""
        await self._put_owner(local)
        if not local.publishes:
            return
        key = store.master_key(local.instance.service)
        record = store.MasterRecord(
            node=self.node,
            index=local.instance.index,
            token=local.token,
            address=self._address(local),
            at=self._wall(),
        )
        value = store.encode_master(record)
        if local.master_token:
            with contextlib.suppress(FencingError):
                await self._c.put(
                    key,
                    value,
                    lease=local.lease,
                    guard=Guard(key=key, create_revision=local.master_token),
                )
            return
        created = await self._c.create(key, value, lease=local.lease)
        if created is not None:
            local.master_token = created

    async def _unpublish(self, local: _Local) -> None:
        if local.master_token:
            key = store.master_key(local.instance.service)
            await self._c.txn([Compare.created_at(key, local.master_token)], [Delete(key=key)])
            local.master_token = 0

    # -- failures and history -------------------------------------------------------------

    async def _failed(self, local: _Local, result: AgentResult) -> None:
        """Record a failure of `local` by its class; a monitor's unexpected 0, 7 or 8 is soft."""
        sev = result.severity
        if sev is Severity.NONE:
            sev = Severity.SOFT
        reason = result.describe()
        log.warning(
            "services on %s: %s failed (%s, %s)", self.node, local.instance, reason, sev.value
        )
        service = local.instance.service
        # The failure is in the store before the instance is seen failed, so that the
        # recovery decided then counts it (restart in place, or move past max_restarts).
        await self._append_failure(service, reason)
        if sev is Severity.HARD:
            ban = store.BanRecord(reason=reason, at=self._wall(), token=local.token)
            await self._c.put(store.ban_key(service, self.node), store.encode_ban(ban))
        elif sev is Severity.FATAL:
            await self._mark_fatal(service, reason)
        local.failed = True
        local.action = ""
        await self._put_owner(local)

    async def _mark_fatal(self, service: str, reason: str) -> None:
        for _ in range(RMW_ATTEMPTS):
            kv = await self._c.get(store.state_key(service))
            old = store.decode_state(kv.value) if kv is not None else None
            record = store.StateRecord(
                disabled=old.disabled if old is not None else False,
                fatal=True,
                reason=reason,
                at=self._wall(),
            )
            try:
                await self._c.put(
                    store.state_key(service),
                    store.encode_state(record),
                    if_mod_revision=kv.mod_revision if kv is not None else 0,
                )
                return
            except RevisionConflict:
                continue

    async def _append_failure(self, service: str, reason: str) -> None:
        key = store.failure_key(service, self.node)
        for _ in range(RMW_ATTEMPTS):
            kv = await self._c.get(key)
            times: tuple[float, ...] = ()
            if kv is not None:
                with contextlib.suppress(store.ServiceRecordError):
                    times = store.decode_failure(kv.value).times
            record = store.FailureRecord(times=(*times, self._wall()), reason=reason)
            try:
                revision = await self._c.put(
                    key,
                    store.encode_failure(record),
                    if_mod_revision=kv.mod_revision if kv is not None else 0,
                )
                self._written_failures[service] = (revision, record.times[-store.FAILURE_LIMIT :])
                return
            except RevisionConflict:
                continue

    async def _history(self, local: _Local, action: str, result: AgentResult) -> None:
        await self._history_entry(local, action, "ok" if result.ok else result.describe())

    async def _history_entry(self, local: _Local, action: str, result: str) -> None:
        entry = store.HistoryEntry(
            at=self._wall(),
            node=self.node,
            index=local.instance.index,
            token=local.token,
            action=action,
            result=result,
        )
        key = store.history_key(local.instance.service)
        try:
            for _ in range(RMW_ATTEMPTS):
                kv = await self._c.get(key)
                history = store.HistoryRecord()
                if kv is not None:
                    with contextlib.suppress(store.ServiceRecordError):
                        history = store.decode_history(kv.value)
                try:
                    await self._c.put(
                        key,
                        store.encode_history(history.appended(entry)),
                        if_mod_revision=kv.mod_revision if kv is not None else 0,
                    )
                    if action == "start" and result == "ok" and _took_over(history, entry):
                        metrics.SERVICE_FAILOVERS.inc()
                        if local.lost_at is not None:
                            lost = time.monotonic() - local.lost_at
                            metrics.SERVICE_FAILOVER_DURATION.observe(lost)
                    return
                except RevisionConflict:
                    continue
        except CoordinationError as exc:
            log.info(
                "services on %s: history of %s not written: %s", self.node, local.instance, exc
            )

    # -- monitors -------------------------------------------------------------------------

    def _restart_monitors(self, local: _Local) -> None:
        if local.monitor_task is not None:
            local.monitor_task.cancel()
        local.monitor_task = asyncio.ensure_future(self._monitor(local))

    async def _stop_monitors(self, local: _Local) -> None:
        task, local.monitor_task = local.monitor_task, None
        if task is not None and task is not asyncio.current_task():
            await cancel_and_wait([task])

    async def _monitor(self, local: _Local) -> None:
        """Run each monitor depth on its interval while no action is in flight."""
        loop = asyncio.get_running_loop()
        due = {m.depth: loop.time() + m.interval for m in local.service.monitors}
        intervals = {m.depth: m for m in local.service.monitors}
        while due:
            depth = min(due, key=lambda d: due[d])
            await asyncio.sleep(max(0.0, due[depth] - loop.time()))
            monitor = intervals[depth]
            due[depth] = loop.time() + monitor.interval
            if local.task is not None or local.failed or not self._may_act():
                continue
            result = await local.agent.run(
                "monitor",
                timeout=monitor.timeout,
                depth=depth,
                interval=monitor.interval,
                fencing_token=local.token,
            )
            if (
                local.task is not None
                or local.failed
                or self._local.get(local.instance) is not local
            ):
                continue  # an action began meanwhile: its outcome counts, not this
            expected = OcfStatus.RUNNING_MASTER if local.master else OcfStatus.SUCCESS
            ok = result.code == int(expected)
            before = local.monitors.get(depth)
            local.monitors[depth] = store.MonitorResult(
                depth=depth,
                ok=ok,
                code=result.code,
                reason="" if ok else result.describe(),
                at=self._wall(),
            )
            if ok:
                if before is None or not before.ok:
                    await self._put_owner(local)
                continue
            # Shielded: an action that cancels this monitor must not cut the record short.
            await asyncio.shield(self._monitor_failed(local, depth, result))
            self._poke()
            return

    async def _monitor_failed(self, local: _Local, depth: int, result: AgentResult) -> None:
        metrics.MONITOR_FAILURES.inc()
        # Not `_history`: a monitor's "not running" (7) is a valid answer (`result.ok`), but
        # here it is not the one expected, so the entry must not say "ok".
        await self._history_entry(local, f"monitor {depth}", f"failed: {result.describe()}")
        await self._failed(local, result)

    # -- self-fencing ---------------------------------------------------------------------

    def _budget(self) -> float | None:
        budgets = [local.budget() for local in self._local.values()]
        return max(budgets) if budgets else None

    async def _fence_watch(self) -> None:
        """Stop every local instance when `stop_by` comes without a renewal moving it."""
        while True:
            budget = self._budget()
            if budget is None or self._fencing:
                await self._wait_change(IDLE_INTERVAL)
                continue
            stop_by = self._session.fence_at - budget
            delay = stop_by - time.monotonic()
            if delay > 0:
                await self._wait_change(delay)
                continue
            await self._self_fence()

    async def _wait_change(self, delay: float) -> None:
        changed = asyncio.ensure_future(self._session.changed().wait())
        try:
            await asyncio.wait({changed}, timeout=min(delay, IDLE_INTERVAL))
        finally:
            changed.cancel()

    async def _self_fence(self) -> None:
        self._fencing = True
        try:
            locals_ = list(self._local.values())
            log.warning(
                "services on %s: the lease was not renewed in time: stopping %s before it expires",
                self.node,
                ", ".join(str(local.instance) for local in locals_),
            )
            await cancel_and_wait(
                [t for local in locals_ for t in (local.task, local.monitor_task) if t]
            )
            results = await asyncio.gather(*(self._fence_one(local) for local in locals_))
            stopped = [local for local, ok in zip(locals_, results, strict=True) if ok]
            log.warning(
                "services on %s: self-fenced: %d of %d instance(s) stopped",
                self.node,
                len(stopped),
                len(locals_),
            )
        finally:
            self._fencing = False
            self._poke()

    async def _fence_one(self, local: _Local) -> bool:
        local.task = local.monitor_task = None
        try:
            ok, reason = await self._agent_down_offline(local)
        finally:
            self._local.pop(local.instance, None)
        if not ok and await self._fence_copy(local, reason):
            ok = True
        if ok:
            self._ledger_drop(local.instance)
            # The keys go with the lease; if the store answers, they go now.
            with contextlib.suppress(CoordinationError, TimeoutError):
                async with asyncio.timeout(self._coordination.request_timeout):
                    await self._delete_owner(local.instance, local.token)
            return True
        self._stuck[local.instance] = _Stuck(reason=reason)
        log.error(
            "services on %s: %s may still run after a failed stop (%s) that its fencer did "
            "not make safe, and the store may be unreachable",
            self.node,
            local.instance,
            reason,
        )
        with contextlib.suppress(CoordinationError, TimeoutError):
            async with asyncio.timeout(self._coordination.request_timeout):
                await self._block(local, reason)
        return False

    async def _agent_down_offline(self, local: _Local) -> tuple[bool, str]:
        """Demote and stop without the store (the master key goes with the lease)."""
        if local.master:
            await local.agent.run(
                "demote", timeout=local.service.stop_timeout or 0.0, fencing_token=local.token
            )
        local.master = False
        result = await local.agent.run(
            "stop", timeout=local.service.stop_timeout or 0.0, fencing_token=local.token
        )
        return result.ok, result.describe()

    # -- the ledger -----------------------------------------------------------------------

    def _write_ledger(self) -> None:
        write_ledger(self.ledger_path, self._ledger)

    def _ledger_put(self, local: _Local) -> None:
        entry = LedgerEntry(
            instance=local.instance, token=local.token, service=local.service, master=local.master
        )
        self._ledger = replace(self._ledger, lease=local.lease).with_entry(entry)
        self._write_ledger()

    def _ledger_drop(self, instance: InstanceId) -> None:
        self._ledger = self._ledger.without(instance)
        self._write_ledger()

    async def _stop_leftovers(self) -> None:
        """Stop what a previous run of this node's daemon left in its ledger (no supervisor ran)."""
        try:
            old = read_ledger(self.ledger_path)
        except Exception as exc:  # a ledger we cannot read: say so, carry on
            log.error("services on %s: %s", self.node, exc)
            return
        if old is None or not old.entries:
            return
        log.warning(
            "services on %s: stopping %d instance(s) a previous run left running",
            self.node,
            len(old.entries),
        )
        kept = []
        for entry in old.entries:
            try:
                agent = self._agents(entry.service, entry.instance)
            except AgentNotFound as exc:
                kept.append(entry)
                log.error("services on %s: cannot stop %s: %s", self.node, entry.instance, exc)
                continue
            local = _Local(
                instance=entry.instance,
                service=entry.service,
                info=AgentInfo(name="", parameters=(), actions=()),
                agent=agent,
                token=entry.token,
                lease=old.lease,
                started_at=0.0,
                master=entry.master,
            )
            ok, reason = await self._agent_down_offline(local)
            if ok or await self._fence_copy(local, reason):
                await self._delete_owner(entry.instance, entry.token)
            else:
                kept.append(entry)
                await self._block(local, reason)
        self._ledger = replace(self._ledger, entries=tuple(kept))

    async def _take_down(self, local: _Local, *, why: str) -> None:
        try:
            await self._stop(local, why)
        except CoordinationError as exc:
            log.warning("services on %s: stopping %s: %s", self.node, local.instance, exc)


def registry_group_hosts(snapshot: RegistrySnapshot) -> Mapping[str, frozenset[str]]:
    """The hosts of each server group's servers (what a server-group domain means)."""
    groups = {server.spec.group for server in snapshot.servers.values()}
    return {g: frozenset(server.host for server in snapshot.members(g)) for g in groups}


def _took_over(history: store.HistoryRecord, entry: store.HistoryEntry) -> bool:
    """Whether the instance of `entry` was last recorded on another node (a failover or move)."""
    for earlier in reversed(history.entries):
        if earlier.index == entry.index:
            return earlier.node != entry.node
    return False


__all__ = [
    "REFUSED",
    "AgentFactory",
    "NodeRole",
    "instance_name",
    "ocf_agents",
    "registry_group_hosts",
]
