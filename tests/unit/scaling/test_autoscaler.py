"""The autoscaler component on the in-memory store, a fake clock and a scripted hypervisor.

The real thing (etcd, host daemons, lab servers and a VM) is in
tests/integration/scaling/test_autoscale*.py; here the component's own
bookkeeping is checked quickly and deterministically: which servers it runs
a policy for as records come and go, that a record that does not decode is
logged and survived, that a decision is carried out through the scale
function and told to the group as a `ServerEvent`, and that a deleted
server's policy goes with it.

The vCPU "threads" are this test's own thread: over fake seconds it uses
next to no CPU, so every server looks idle and the policy scales it down.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace

import pytest

from servergroup.common.clock import FakeClock
from servergroup.coordination.memory import MemoryCoordinator, MemoryStore
from servergroup.scaling.autoscale import (
    AUTOSCALE_EVENT,
    PolicyRecord,
    encode_policy_record,
    policy_key,
)
from servergroup.scaling.autoscaler import Autoscaler
from servergroup.scaling.client import ScaleRefused
from servergroup.scaling.policy import Policy
from servergroup.scaling.protocol import Direction
from servergroup.scaling.store import ScaleOutcome
from servergroup.servers.drivers.base import DriverError
from servergroup.servers.drivers.hypervisor import VcpuThread
from servergroup.servers.model import (
    DriverKind,
    GroupRecord,
    ServerSpec,
    ServerStatus,
    VmState,
)
from servergroup.servers.model import (
    Policy as GroupPolicy,
)
from servergroup.servers.registry import Registry, RegistryCache

pytestmark = pytest.mark.timeout(30)

POLICY = Policy(up_above=80, down_below=20, window_interval=2, cooldown_interval=0)
SPEC = ServerSpec(
    name="s1", instance="instance-0000000a", uuid="u-1", group="g", host="h1", vcpus=3
)


class Threads:
    """A hypervisor whose servers' vCPUs are this thread (it cannot pin)."""

    def __init__(self) -> None:
        self.running = True

    async def vcpu_threads(self, spec: ServerSpec) -> tuple[VcpuThread, ...]:
        if not self.running:
            raise DriverError(f"server {spec.name} does not run here")
        tid = threading.get_native_id()
        return tuple(VcpuThread(index=i, thread_ids=(tid,), affinity=(0,)) for i in range(3))

    async def pin_vcpu(self, spec: ServerSpec, vcpu: int, cpus: Sequence[int]) -> VcpuThread:
        raise DriverError("no pinning here")


@dataclass
class Rig:
    registry: Registry
    cache: RegistryCache
    clock: FakeClock
    autoscaler: Autoscaler
    scales: list[tuple[str, Direction]]
    refuse: list[bool]

    async def status(self, online: tuple[int, ...], *, host: str = "h1") -> None:
        server = await self.registry.get_server("s1")
        assert server is not None
        status = ServerStatus(
            name="s1", host=host, state=VmState.ACTIVE, online_cpus=online, vcpus=3
        )
        await self.registry.put_status(status, if_mod_revision=server.status_revision)

    async def policy(self, raw: bytes | None = None, *, uuid: str = "u-1") -> None:
        record = PolicyRecord(server="s1", uuid=uuid, policy=POLICY)
        await self.registry.coordinator.put(policy_key("s1"), raw or encode_policy_record(record))

    async def until(self, check: Callable[[], bool], what: str, steps: int = 400) -> None:
        """Move the fake clock by a sample interval at a time until `check` holds."""
        for _ in range(steps):
            if check():
                return
            self.clock.advance(0.2)
            for _ in range(20):
                await asyncio.sleep(0)
            await asyncio.sleep(0.001)
        raise AssertionError(f"never: {what}")


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    coordinator = MemoryCoordinator(MemoryStore())
    registry = Registry(coordinator)
    await registry.create_group(
        GroupRecord(name="g", policy=GroupPolicy.AFFINITY, uuid="g", created_at="")
    )
    await registry.create_server(SPEC)
    cache = RegistryCache(coordinator)
    await cache.start()
    clock = FakeClock()
    scales: list[tuple[str, Direction]] = []
    refuse: list[bool] = [False]

    async def scale(registry: Registry, name: str, direction: Direction) -> ScaleOutcome:
        scales.append((name, direction))
        if refuse[0]:
            raise ScaleRefused(f"server {name} is at a limit")
        server = await registry.get_server(name)
        assert server is not None
        assert server.status is not None
        online = server.status.online_cpus
        new = online[:-1] if direction is Direction.DOWN else (*online, len(online))
        await registry.put_status(
            replace(server.status, online_cpus=new), if_mod_revision=server.status_revision
        )
        return ScaleOutcome(
            id="x", server=name, host="h1", direction=direction, ok=True, online_cpus=new
        )

    autoscaler = Autoscaler(
        coordinator=coordinator,
        registry=registry,
        cache=cache,
        hypervisors={DriverKind.LAB: Threads()},
        host="h1",
        clock=clock,
        scale=scale,
    )
    await autoscaler.start()
    try:
        yield Rig(registry, cache, clock, autoscaler, scales, refuse)
    finally:
        await autoscaler.stop()
        await cache.stop()


async def test_an_idle_server_is_scaled_down_to_its_minimum_and_the_group_told(rig: Rig) -> None:
    await rig.status((0, 1, 2))
    await rig.policy()
    await rig.until(lambda: rig.autoscaler.running == {"s1"}, "the policy runs for s1")
    await rig.until(lambda: len(rig.scales) == 2, "two scales down")
    assert rig.scales == [("s1", Direction.DOWN), ("s1", Direction.DOWN)]
    await rig.until(
        lambda: (
            (s := rig.cache.snapshot.servers["s1"]).event is not None
            and s.event.details["to_vcpus"] == 1
        ),
        "the second decision is told",
    )
    server = rig.cache.snapshot.servers["s1"]
    assert server.status is not None
    assert server.status.online_cpus == (0,)
    event = server.event
    assert event is not None
    assert (event.what, event.host) == (AUTOSCALE_EVENT, "h1")
    assert event.details["done"] is True
    assert "scale down from 2 to 1 vCPUs: done, online vCPUs 0" in event.sentence
    # At its minimum (1, the flavor's min_vcpus): no more scales, however long.
    await rig.until(lambda: rig.clock.monotonic() >= 1030, "time passes")
    assert len(rig.scales) == 2
    assert rig.autoscaler.health().sentence.startswith("servers scaled by policy here: s1")


async def test_a_refused_scale_is_told_as_not_done(rig: Rig) -> None:
    rig.refuse[0] = True
    await rig.status((0, 1, 2))
    await rig.policy()
    await rig.until(
        lambda: rig.cache.snapshot.servers["s1"].event is not None, "the decision is told"
    )
    event = rig.cache.snapshot.servers["s1"].event
    assert event is not None
    assert event.details["done"] is False
    assert event.details["error"] == "server s1 is at a limit"
    assert ", which failed: server s1 is at a limit" in event.sentence


async def test_records_come_and_go(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="servergroup.scaling.autoscaler")
    # No status yet, then a malformed record: nothing runs, one line, no crash.
    await rig.policy()
    await rig.until(lambda: True, "a turn")
    assert rig.autoscaler.running == frozenset()
    await rig.status((0, 1, 2))
    await rig.until(lambda: rig.autoscaler.running == {"s1"}, "the policy runs for s1")
    await rig.policy(b"{garbage")
    await rig.until(lambda: rig.autoscaler.running == frozenset(), "the policy stops")
    assert "ignoring the scaling policy of server s1" in caplog.text
    assert "its policy record is unreadable" in caplog.text
    # A policy of another server that had this name: not ours.
    await rig.policy(uuid="u-0")
    await rig.until(lambda: True, "a turn")
    assert rig.autoscaler.running == frozenset()
    await rig.policy()
    await rig.until(lambda: rig.autoscaler.running == {"s1"}, "the policy runs again")
    # It moves to h2: not ours any more; back: ours again.
    await rig.status((0, 1, 2), host="h2")
    await rig.until(lambda: rig.autoscaler.running == frozenset(), "h1 lets go")
    await rig.status((0, 1, 2))
    await rig.until(lambda: rig.autoscaler.running == {"s1"}, "h1 takes it back")
    # --off.
    await rig.registry.coordinator.delete(policy_key("s1"))
    await rig.until(lambda: rig.autoscaler.running == frozenset(), "the policy is removed")
    assert "its policy was removed" in caplog.text
    # Set again, then the server is deleted: its last host removes the policy.
    await rig.policy()
    await rig.until(lambda: rig.autoscaler.running == {"s1"}, "the policy runs again")
    server = await rig.registry.get_server("s1")
    assert server is not None
    await rig.registry.forget_server("s1", status_revision=server.status_revision)
    await rig.until(lambda: rig.autoscaler.running == frozenset(), "s1 is gone")
    for _ in range(200):
        if await rig.registry.coordinator.get(policy_key("s1")) is None:
            break
        await asyncio.sleep(0.005)
    assert await rig.registry.coordinator.get(policy_key("s1")) is None
    assert rig.scales == [] or all(d is Direction.DOWN for _, d in rig.scales)


async def test_a_server_that_cannot_be_measured_is_never_judged(rig: Rig) -> None:
    hypervisor = rig.autoscaler._hypervisors[DriverKind.LAB]
    assert isinstance(hypervisor, Threads)
    hypervisor.running = False
    await rig.status((0, 1, 2))
    await rig.policy()
    await rig.until(lambda: rig.clock.monotonic() > 1020, "ten windows pass")
    assert rig.scales == []
    hypervisor.running = True
    await rig.until(lambda: rig.scales != [], "measured, it is judged")
