"""What a dead node role leaves behind, put right: its instances stopped, its lease revoked.

Theory of operation (docs/design/services.md, "Supervision"). When the host
daemon that runs a node role has died for certain (its supervisor reaped
it, or systemd ran `ExecStopPost=`), nothing renews its session lease any
more, but the lease lives on until its TTL passes and, with it, the node's
ownership keys: no other node may start those instances yet. The node's
ledger (`services.ledger`) lists every instance whose agent may still be
running here, with its token and resolved definition. `clean_up(ledger,
coordinator)` then:

1. **stops** every listed instance with its own agent (a master demoted
   first, its result not counted), all at once, each within its service's
   stop timeout (the runner kills the agent's process
   group when it overruns, and that counts as a failed stop), before it
   asks the store anything: the lease may expire any moment, and the stops
   must be over by then (`stop_all`);
2. for each stop that **failed**, writes `services/blocked/<s>/<i>`
   (`BlockRecord`: this node, the token, the failure in words): the
   instance may still run here, so it is started nowhere until an operator
   clears it, and the lease is **not** revoked: its keys then go only when
   it expires, and the block is there first;
3. when every stop succeeded, **revokes** the ledger's lease (and any other
   lease the caller proved to be the dead daemon's, `extra_leases`), which
   deletes its ownership keys at once: failover need not wait for the TTL
   (steps 2 and 3 are `settle`).

The store may be unreachable (that may be why the daemon died): the stops
happen anyway, since they need only this machine, and the report says in
one sentence what could not be written or revoked (the lease then expires
on its own, which is slow but safe). Nothing here raises for what an agent
or the store did; the result is a `CleanupReport`.

`remaining(report)` is what must stay in the ledger afterwards: the
instances whose stop failed and whose block could not be recorded, so that
a later cleanup tries again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from servergroup.coordination import CoordinationError, Coordinator
from servergroup.services.ledger import Ledger, LedgerEntry
from servergroup.services.model import FALLBACK_TIMEOUT
from servergroup.services.ocf import AgentNotFound, AgentResult, OcfAgent
from servergroup.services.placement import InstanceId
from servergroup.services.store import BlockRecord, blocked_key, encode_block


def resource_instance(instance: InstanceId) -> str:
    """`OCF_RESOURCE_INSTANCE` of `instance`: "<service>:<index>", as Pacemaker names clones."""
    return f"{instance.service}:{instance.index}"


def agent_for(entry: LedgerEntry, ocf_root: Path) -> OcfAgent:
    """The agent of a ledger entry, bound as the node role bound it (`AgentNotFound` if gone)."""
    service = entry.service
    return OcfAgent(
        service.agent,
        instance=resource_instance(entry.instance),
        parameters=service.parameters,
        ocf_root=ocf_root,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class StopOutcome:
    """How the stop of one listed instance went."""

    entry: LedgerEntry
    ok: bool
    what: str  # the result in words ("stop returned 0 (SUCCESS)", "stop timed out after 2.0 s")


@dataclass(frozen=True, slots=True, kw_only=True)
class CleanupReport:
    """What `clean_up` did; `describe()` says it in one sentence."""

    node: str
    stops: tuple[StopOutcome, ...] = ()
    blocked: tuple[InstanceId, ...] = ()  # stop failed, block record written
    unrecorded: tuple[InstanceId, ...] = ()  # stop failed, block record not written
    revoked: tuple[int, ...] = ()
    store_error: str | None = None  # the store's failure, in words, if any

    @property
    def stopped(self) -> tuple[InstanceId, ...]:
        return tuple(s.entry.instance for s in self.stops if s.ok)

    @property
    def failed(self) -> tuple[InstanceId, ...]:
        return tuple(s.entry.instance for s in self.stops if not s.ok)

    def describe(self) -> str:
        parts = [f"node {self.node}: stopped {_names(self.stopped)}"]
        if self.blocked:
            parts.append(f"blocked {_names(self.blocked)} after a failed stop, lease kept")
        if self.unrecorded:
            parts.append(
                f"could not record the failed stop of {_names(self.unrecorded)}, lease kept"
            )
        if self.revoked:
            parts.append("revoked lease " + ", ".join(f"{lease:x}" for lease in self.revoked))
        if self.store_error is not None:
            parts.append(f"store unreachable ({self.store_error}): the lease expires on its own")
        return "; ".join(parts)


def _names(instances: Iterable[InstanceId]) -> str:
    listed = [str(i) for i in instances]
    return ", ".join(listed) if listed else "nothing"


async def stop_entry(entry: LedgerEntry, ocf_root: Path) -> StopOutcome:
    """Stop one listed instance with its agent within its stop timeout."""
    timeout = entry.service.stop_timeout or FALLBACK_TIMEOUT
    try:
        agent = agent_for(entry, ocf_root)
    except AgentNotFound as exc:
        return StopOutcome(entry=entry, ok=False, what=str(exc))
    if entry.master:
        # Demoted first, as Pacemaker does; what counts is the stop that follows.
        await agent.demote(timeout=timeout, fencing_token=entry.token)
    result: AgentResult = await agent.stop(timeout=timeout, fencing_token=entry.token)
    return StopOutcome(entry=entry, ok=result.ok, what=result.describe())


async def stop_all(ledger: Ledger) -> tuple[StopOutcome, ...]:
    """Stop every instance `ledger` lists, all at once (this needs only this machine)."""
    ocf_root = Path(ledger.ocf_root)
    return tuple(await asyncio.gather(*(stop_entry(e, ocf_root) for e in ledger.entries)))


async def settle(
    ledger: Ledger,
    stops: Sequence[StopOutcome],
    coordinator: Coordinator | None,
    *,
    extra_leases: Iterable[int] = (),
    wall_clock: Callable[[], float] = time.time,
) -> CleanupReport:
    """After `stops`: block the failed ones, else revoke the leases (see the module's docstring).

    `coordinator` None means the store is known to be out of reach.
    """
    failed = [s for s in stops if not s.ok]
    blocked: list[InstanceId] = []
    unrecorded: list[InstanceId] = []
    revoked: list[int] = []
    store_error: str | None = None if coordinator is not None else "no connection"
    if coordinator is not None:
        for outcome in failed:
            if store_error is not None:  # one wait for an unreachable store is enough
                unrecorded.append(outcome.entry.instance)
                continue
            record = BlockRecord(
                node=ledger.node,
                token=outcome.entry.token,
                reason=f"the supervisor's {outcome.what}",
                at=wall_clock(),
            )
            try:
                await coordinator.put(blocked_key(outcome.entry.instance), encode_block(record))
            except CoordinationError as exc:
                store_error = str(exc)
                unrecorded.append(outcome.entry.instance)
            else:
                blocked.append(outcome.entry.instance)
        if not failed:
            for lease in dict.fromkeys(x for x in (ledger.lease, *extra_leases) if x):
                try:
                    await coordinator.revoke(lease)
                except CoordinationError as exc:
                    store_error = str(exc)
                    break
                revoked.append(lease)
    else:
        unrecorded = [s.entry.instance for s in failed]
    return CleanupReport(
        node=ledger.node,
        stops=tuple(stops),
        blocked=tuple(blocked),
        unrecorded=tuple(unrecorded),
        revoked=tuple(revoked),
        store_error=store_error,
    )


async def clean_up(
    ledger: Ledger,
    coordinator: Coordinator | None,
    *,
    extra_leases: Iterable[int] = (),
    wall_clock: Callable[[], float] = time.time,
) -> CleanupReport:
    """`stop_all`, then `settle`: the whole cleanup of the module's docstring."""
    stops = await stop_all(ledger)
    return await settle(
        ledger, stops, coordinator, extra_leases=extra_leases, wall_clock=wall_clock
    )


def remaining(ledger: Ledger, report: CleanupReport) -> Ledger:
    """The ledger to keep after `report`: only the failed stops whose block was not recorded."""
    left = set(report.unrecorded)
    return Ledger(
        node=ledger.node,
        lease=ledger.lease,
        pid=ledger.pid,
        ocf_root=ledger.ocf_root,
        entries=tuple(e for e in ledger.entries if e.instance in left),
    )


__all__ = [
    "CleanupReport",
    "StopOutcome",
    "agent_for",
    "clean_up",
    "remaining",
    "resource_instance",
    "settle",
    "stop_all",
    "stop_entry",
]
