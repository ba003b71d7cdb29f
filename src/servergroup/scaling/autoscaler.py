"""Automatic scaling on a host: a component of the host daemon ("autoscaler").

Theory of operation (docs/design/scaling-host.md, "Automatic scaling").

- **What it follows.** The policies at `scaling/policies/` (listed at start,
  then a watch; after a compaction or a lost watch it lists them again) and
  the registry cache (which servers run where). For each server it keeps one
  `autoscale.Target` (`target_for`): the server runs *here*, active, and has
  a policy made for it. A server that moves here gets one; one that moves
  away, stops, pauses, is deleted, or whose policy is removed loses it and
  its policy state with it. A new target (the policy changed, the server
  rebooted or was resized) starts the policy afresh. A record that does not
  decode is logged once and scales nothing.
- **One loop per target.** Every `autoscale.sample_interval` it measures the
  server's online vCPUs with a `busy.BusyMeter` (their host threads' CPU
  time), feeds the sample to the pure policy (`policy.observe`) and asks it
  (`policy.decide`) with the online vCPUs of the server's record and the
  flavor's limits. A decision to do nothing is logged at debug level (at
  info level when the load starts pressing on a limit: "... but it is at its
  maximum of 4 vCPUs: nothing to do"); a
  decision to scale is carried out, then logged at info level as one
  sentence (the decision's, with what came of it), and recorded as a
  `ServerEvent` at `registry/servers/<name>/event`, which every host's group
  service turns into `compute.instance.autoscale` for the group.
- **The scale itself** goes the way `servergroup scale cpu` goes
  (`client.scale_cpu`: a `ScaleOrder` at `scaling/requests/<server>/<id>`
  that the scaler of the owning host, here, carries out in the server's
  queue): the scaler stays the one place where vCPUs change, and a manual
  scale racing the policy's is queued behind it and checked on a fresh read
  (a policy's scale refused at a limit is one more sentence, not a fault).
  The loop waits for the outcome before it measures again; the policy then
  starts a new window and its cooldown from the decision.

A server whose threads cannot be read (its driver says it does not run here
yet) is measured again at the next interval, and the policy waits for a
full window of samples, so it never judges a server it could not see.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from servergroup.common.clock import Clock, SystemClock
from servergroup.common.component import ComponentHealth, HealthState, cancel_and_wait
from servergroup.common.errors import ServergroupError, phrase
from servergroup.common.logsetup import log_bug
from servergroup.coordination import (
    CoordinationError,
    Coordinator,
    EventKind,
    FencingError,
    Guard,
    RevisionConflict,
    WatchCompacted,
)
from servergroup.coordination.types import KeyValue
from servergroup.scaling.autoscale import (
    POLICIES,
    PolicyRecord,
    Target,
    autoscale_event,
    decode_policy_record,
    held_at_limit,
    online_of,
    parse_policy_key,
    policy_key,
    sample_interval,
    target_for,
)
from servergroup.scaling.busy import BusyMeter
from servergroup.scaling.client import DEFAULT_TIMEOUT, scale_cpu
from servergroup.scaling.cpus import format_cpu_list
from servergroup.scaling.policy import Decision, VcpuLimits, decide, observe, start
from servergroup.scaling.protocol import Direction
from servergroup.scaling.store import ScaleOutcome
from servergroup.servers.drivers.base import DriverError
from servergroup.servers.drivers.hypervisor import Hypervisor
from servergroup.servers.model import DriverKind, RecordError, Server
from servergroup.servers.registry import ChangeKind, Registry, RegistryCache, RegistryChange

log = logging.getLogger(__name__)

#: Carries out one scale (the library under `servergroup scale cpu`; tests may wrap it).
ScaleFunction = Callable[[Registry, str, Direction], Awaitable[ScaleOutcome]]


async def _scale_cpu(registry: Registry, name: str, direction: Direction) -> ScaleOutcome:
    return await scale_cpu(registry, name, direction, timeout=DEFAULT_TIMEOUT)


def _now_iso(wall: float) -> str:
    return datetime.fromtimestamp(wall, tz=UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True, slots=True)
class _Known:
    """A policy key as last seen: its record (None: it does not decode) and revision."""

    record: PolicyRecord | None
    revision: int


class Autoscaler:
    """The autoscaler of one host (see the module docstring).

    A component of the host daemon (`common.component`): `start`, `stop`, `health`.
    """

    name = "autoscaler"

    def __init__(
        self,
        *,
        coordinator: Coordinator,
        registry: Registry,
        cache: RegistryCache,
        hypervisors: Mapping[DriverKind, Hypervisor],
        host: str,
        fence: Callable[[], Guard | None] | None = None,
        clock: Clock | None = None,
        scale: ScaleFunction = _scale_cpu,
    ) -> None:
        self._c = coordinator
        self._registry = registry
        self._cache = cache
        self._hypervisors = dict(hypervisors)
        self.host = host
        self._fence = fence
        self._clock = clock or SystemClock()
        self._scale = scale
        self._policies: dict[str, _Known] = {}
        self._runs: dict[str, tuple[Target, asyncio.Task[None]]] = {}
        self._ending: set[asyncio.Task[None]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._changes: asyncio.Queue[RegistryChange] | None = None
        self.decisions = 0  # decisions acted on
        self.scaled = 0  # of which carried out

    # -- life cycle --------------------------------------------------------------------

    async def start(self) -> None:
        self._changes = self._cache.subscribe()
        rng = await self._c.get_prefix(POLICIES)
        self._relist(rng.items)
        self._tasks = [
            asyncio.create_task(
                self._follow_policies(rng.revision + 1), name="autoscaler-policies"
            ),
            asyncio.create_task(self._follow_registry(), name="autoscaler-registry"),
        ]
        log.info("host %s scales servers by their policies", self.host)

    async def stop(self) -> None:
        tasks = self._tasks + [task for _, task in self._runs.values()] + list(self._ending)
        await cancel_and_wait(tasks)
        self._tasks = []
        self._runs.clear()
        if self._changes is not None:
            self._cache.unsubscribe(self._changes)
            self._changes = None

    def health(self) -> ComponentHealth:
        if not self._tasks:
            return ComponentHealth(state=HealthState.STOPPED, sentence="not scaling by policy")
        names = ", ".join(sorted(self._runs)) or "none"
        return ComponentHealth(
            state=HealthState.HEALTHY,
            sentence=(
                f"servers scaled by policy here: {names}; {self.decisions} decision(s) "
                f"acted on, {self.scaled} carried out"
            ),
        )

    @property
    def running(self) -> frozenset[str]:
        """The servers whose policy runs here now."""
        return frozenset(self._runs)

    # -- what comes in -------------------------------------------------------------------

    def _relist(self, items: Iterable[KeyValue]) -> None:
        seen: set[str] = set()
        for kv in items:
            name = parse_policy_key(kv.key)
            if name is not None:
                seen.add(name)
                self._put(name, kv.value, kv.mod_revision)
        for name in set(self._policies) - seen:
            self._gone(name)

    def _put(self, name: str, value: bytes, revision: int) -> None:
        try:
            record: PolicyRecord | None = decode_policy_record(value)
        except RecordError as exc:
            log.warning("ignoring the scaling policy of server %s: %s", name, exc)
            record = None
        else:
            assert record is not None
            if record.server != name:
                log.warning(
                    "ignoring the scaling policy at %s: it names server %s",
                    policy_key(name),
                    record.server,
                )
                record = None
        self._policies[name] = _Known(record, revision)
        self._sync(name)

    def _gone(self, name: str) -> None:
        if self._policies.pop(name, None) is not None:
            self._sync(name)

    async def _follow_policies(self, start_revision: int) -> None:
        while True:
            try:
                watch = await self._c.watch(POLICIES, start_revision=start_revision)
                try:
                    async for event in watch:
                        start_revision = event.revision + 1
                        name = parse_policy_key(event.key)
                        if name is None:
                            continue
                        if event.kind is EventKind.PUT:
                            self._put(name, event.value, event.revision)
                        else:
                            self._gone(name)
                finally:
                    await watch.close()
            except asyncio.CancelledError:
                raise
            except (WatchCompacted, CoordinationError) as exc:
                log.warning("scaling policy watch ended (%s); listing the policies again", exc)
                await asyncio.sleep(0.5)
                with contextlib.suppress(CoordinationError):
                    rng = await self._c.get_prefix(POLICIES)
                    self._relist(rng.items)
                    start_revision = rng.revision + 1
            except Exception:
                log_bug(log, "the scaling policy watch")
                await asyncio.sleep(0.5)

    async def _follow_registry(self) -> None:
        assert self._changes is not None
        while True:
            change = await self._changes.get()
            try:
                if change.kind is ChangeKind.SERVER:
                    self._sync(change.name)
                    if change.after is None and isinstance(change.before, Server):
                        await self._forget_policy(change.before)
            except asyncio.CancelledError:
                raise
            except Exception:
                log_bug(log, f"following server {change.name}")

    async def _forget_policy(self, server: Server) -> None:
        """A deleted server's policy goes with it (its last host removes it)."""
        known = self._policies.get(server.name)
        status = server.status
        if known is None or status is None or status.host != self.host:
            return
        if known.record is not None and not known.record.applies_to(server):
            return
        try:
            await self._c.delete(policy_key(server.name), if_mod_revision=known.revision)
            log.info("server %s is deleted: its scaling policy is removed", server.name)
        except CoordinationError:
            pass  # rewritten meanwhile (a new server's), or already gone

    # -- one loop per server -------------------------------------------------------------

    def _sync(self, name: str) -> None:
        known = self._policies.get(name)
        server = self._cache.snapshot.servers.get(name)
        target = target_for(known.record if known is not None else None, server, self.host)
        current = self._runs.get(name)
        if current is not None and current[0] == target:
            return
        if current is not None:
            self._runs.pop(name)
            task = current[1]
            task.cancel()
            self._ending.add(task)
            task.add_done_callback(self._ending.discard)
            if known is None:
                why = "its policy was removed"
            elif known.record is None:
                why = "its policy record is unreadable"
            else:
                why = "it no longer runs here under its policy"
            log.info("server %s: no longer scaled by policy here (%s)", name, why)
        if target is not None:
            task = asyncio.create_task(self._run(target), name=f"autoscaler-{name}")
            self._runs[name] = (target, task)

    async def _run(self, target: Target) -> None:
        name, policy = target.server, target.policy
        hypervisor = self._hypervisors.get(target.driver)
        if hypervisor is None:
            log.info(
                "server %s: host %s cannot measure %s servers; its policy does nothing here",
                name,
                self.host,
                target.driver.value,
            )
            return
        server = self._cache.snapshot.servers.get(name)
        if server is None:
            return  # gone before its loop began: its change cancels this target anyway
        meter = BusyMeter(hypervisor, server.spec, clock=self._clock)
        limits = VcpuLimits(min_vcpus=target.min_vcpus, max_vcpus=target.vcpus)
        interval = sample_interval(policy)
        state = start(self._clock.monotonic())
        log.info(
            "server %s: scaled by policy here (%s; vCPUs %d..%d; measured every %g s)",
            name,
            policy.describe(),
            limits.min_vcpus,
            limits.max_vcpus,
            interval,
        )
        unseen = False
        last_held: Direction | None = None
        while True:
            try:
                online = online_of(self._cache.snapshot.servers.get(name))
                try:
                    sample = await meter.measure(online)
                    unseen = False
                except DriverError as exc:
                    if not unseen:
                        log.info("server %s: its vCPUs cannot be measured yet: %s", name, exc)
                    unseen = True
                    sample = None
                now = self._clock.monotonic()
                if sample is not None:
                    state = observe(policy, state, sample)
                decision, state = decide(
                    policy,
                    state,
                    online=len(online),
                    limits=limits,
                    now=now,
                    server=f"server {name}",
                )
                if decision.direction is None:
                    held = held_at_limit(policy, decision)
                    # Held at a limit is worth one line each time it starts, not each sample.
                    log.log(
                        logging.INFO if held not in (None, last_held) else logging.DEBUG,
                        "%s",
                        decision.sentence,
                    )
                    if decision.busy_percent is not None:
                        last_held = held
                else:
                    await self._act(target, decision, len(online))
                    meter.reset()
                    last_held = None
            except asyncio.CancelledError:
                raise
            except Exception:
                log_bug(log, f"the scaling policy of server {name}")
            await self._clock.sleep(interval)

    async def _act(self, target: Target, decision: Decision, online: int) -> None:
        """Carry out a decision to scale, log it as one sentence, and tell the group."""
        name = target.server
        direction = decision.direction
        assert direction is not None
        self.decisions += 1
        error: str | None = None
        cpus: tuple[int, ...] = ()
        try:
            outcome = await self._scale(self._registry, name, direction)
        except ServergroupError as exc:
            error = phrase(exc)
            sentence = f"{decision.sentence}, which failed: {error}"
            log.info("%s", sentence)
        else:
            self.scaled += 1
            cpus = outcome.online_cpus
            sentence = f"{decision.sentence}: done, online vCPUs {format_cpu_list(cpus)}"
            log.info("%s", sentence)
        event = autoscale_event(
            name,
            decision,
            policy=target.policy,
            host=self.host,
            at=_now_iso(self._clock.wall()),
            online=online,
            done=error is None,
            sentence=sentence,
            online_cpus=cpus,
            error=error,
        )
        for _ in range(5):
            try:
                server = await self._registry.get_server(name)
                if server is None or server.spec.uuid != target.uuid:
                    return  # deleted meanwhile: nobody to tell about it
                guard = self._fence() if self._fence is not None else None
                if self._fence is not None and guard is None:
                    log.info(
                        "server %s: host %s lost its session; the group is not told",
                        name,
                        self.host,
                    )
                    return
                await self._registry.put_event(
                    event, spec_revision=server.spec_revision, guard=guard
                )
                return
            except RevisionConflict:
                await asyncio.sleep(0.01)
            except (FencingError, CoordinationError) as exc:
                log.info("server %s: the group is not told of the decision: %s", name, exc)
                return
        log.info("server %s: its records kept changing; the group is not told", name)


__all__ = ["Autoscaler", "ScaleFunction"]
