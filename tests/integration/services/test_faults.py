"""The fault harness of the exactly-one proof (tests/fixtures/services.py), on real lab hosts.

Three supervised host daemons in lab hosts on a 3-member etcd; each fault
of issue 14's "Must hold" is applied and undone, and its effect checked from
the outside (a registry record gone and back, a new daemon pid, the store
still serving with a member down). The journal agent is run inside the lab
hosts by hand, to check that each host journals under its own name, that its
fail and hang switches hit one node only, and that the checker reads the
journal the harness reads.

The randomized rounds themselves (`FaultRounds`, a few here and at least
100 in a test marked slow) need the node role in the daemons; they are added
with it.
"""

from __future__ import annotations

import random
import time

import pytest

from servergroup.servers.registry import host_key
from servergroup.services.model import AgentRef, decode_service
from servergroup.services.placement import InstanceId
from servergroup.services.store import BlockRecord, blocked_key, def_key, encode_block
from tests.fixtures.services import (
    FAULTS,
    FaultRounds,
    Freeze,
    ServiceLab,
    ServiceLabFactory,
    until,
)

pytestmark = [pytest.mark.root, pytest.mark.timeout(240)]

JOURNAL = AgentRef(provider="sgtest", type="journal")


async def record_gone(lab: ServiceLab, node: str) -> None:
    coordinator = lab.coordinator()
    try:

        async def gone() -> bool:
            return await coordinator.get(host_key(node)) is None

        await until(gone, f"the record of {node} gone", lab.lease_ttl + 15.0)
    finally:
        await coordinator.close()


async def test_each_fault_is_applied_and_undone_on_real_lab_hosts(
    service_lab: ServiceLabFactory,
) -> None:
    lab = await service_lab(etcd_members=3)
    pids = await lab.wait_registered()

    # kill -9 of a daemon: its supervisor starts it again (and revoked its lease).
    killed = lab.kill_daemon("h1")
    after = await until(lambda: _registered_anew(lab, "h1", killed), "h1's daemon restarted", 30.0)
    assert after
    assert lab.supervisor_alive("h1")

    # freeze past the TTL: the lease expires; thaw: the same daemon registers again.
    lab.freeze("h2")
    await record_gone(lab, "h2")
    lab.thaw("h2")
    assert (await lab.wait_registered(["h2"]))["h2"] == pids["h2"]

    # cut: cut off from the store, the record expires; heal: it comes back.
    lab.cut("h3")
    await record_gone(lab, "h3")
    lab.heal("h3")
    assert (await lab.wait_registered(["h3"]))["h3"] == pids["h3"]

    # lab crash: the supervisor dies with its daemon; restore starts the node again.
    lab.crash("h2")
    assert not lab.supervisor_alive("h2")
    await record_gone(lab, "h2")
    back = await lab.restore()
    assert back["h2"] != pids["h2"]

    # An etcd member killed: the store still serves (writes need a quorum).
    lab.kill_etcd_member(1)
    coordinator = lab.coordinator()
    try:
        await coordinator.put("probe", b"1")
        kv = await coordinator.get("probe")
        assert kv is not None
    finally:
        await coordinator.close()
    await lab.restore()
    assert not lab.dead_members

    # All three nodes at once: every daemon is new.
    before = await lab.wait_registered()
    lab.restart_all()
    again = await lab.wait_registered()
    assert all(again[n] != before[n] for n in lab.nodes)

    # The rounds' switch faults: the files land on the target only, and restore clears them.
    rounds = FaultRounds(lab, "svc", rng=random.Random(14))
    assert set(rounds.faults) == set(FAULTS)  # 3 members: the etcd fault is in
    for fault in ("monitor_fails_0", "monitor_fails_10", "stop_hangs", "start_fails_hard"):
        await rounds.apply(fault, "h3")
    switches = sorted(
        (lab.node_of_journal(p.name.split("-svc:0")[0].removeprefix("sgtest-journal-")), p.suffix)
        for p in lab.agent_state_dir.glob("*.state.*")
    )
    assert switches == [
        ("h1", ".fail-start"),  # the start elsewhere fails (the target's daemon was killed)
        ("h2", ".fail-start"),
        ("h3", ".fail-monitor-0"),
        ("h3", ".fail-monitor-10"),
        ("h3", ".hang-stop"),
    ]
    await lab.restore()
    assert not list(lab.agent_state_dir.glob("*.state.*"))


async def _registered_anew(lab: ServiceLab, node: str, old: int) -> bool:
    coordinator = lab.coordinator()
    try:
        found = await lab.registered(coordinator)
    finally:
        await coordinator.close()
    return node in found and found[node] != old


async def test_the_journal_agent_names_its_host_and_obeys_its_switches(
    service_lab: ServiceLabFactory,
) -> None:
    lab = await service_lab(etcd_members=1)
    instance = "svc:0"
    # A clean handover from h1 to h2 checks clean, under the hosts' own names.
    assert await lab.run_agent("h1", "start", instance=instance, token=10) == 0
    assert await lab.run_agent("h1", "stop", instance=instance, token=10) == 0
    assert await lab.run_agent("h2", "start", instance=instance, token=12) == 0
    records = lab.journal_records()
    assert {lab.node_of_journal(r.node) for r in records} == {"h1", "h2"}
    assert lab.violations() == []

    # Switches hit one node: h3's start fails with 5, h1's does not.
    lab.fail("start", 5, instance=instance, node="h3")
    assert await lab.run_agent("h3", "start", instance=instance, token=13) == 5
    lab.hang("stop", instance=instance, node="h2")
    assert await lab.run_agent("h2", "stop", instance=instance, token=12, timeout=1.0) is None
    # h2 never stopped, and both h2 and h3 (a failed start may leave it running) own it.
    violations = lab.violations()
    assert violations
    assert all("svc:0" in v.sentence for v in violations)
    lab.clear_switches()
    assert await lab.run_agent("h2", "stop", instance=instance, token=12) == 0
    assert await lab.run_agent("h3", "stop", instance=instance, token=13) == 0
    assert await lab.run_agent("h1", "start", instance=instance, token=9) == 0
    assert any("token" in v.sentence for v in lab.violations())

    # A crashed machine's resource dies with it: the harness ends it in the journal.
    assert await lab.run_agent("h3", "start", instance="other:0", token=20) == 0
    assert lab.machine_died("h3", time.time()) == ["other:0"]
    last = lab.journal_records()[-1]
    assert (lab.node_of_journal(last.node), last.action, last.code) == ("h3", "stop", 0)
    assert not any(lab.agent_state_dir.glob(f"*{lab.journal_node('h3')}-other:0.state"))

    # The rounds' service is valid as stored; reset_service stops what a blocked stop left.
    await lab.define(lab.journal_service("svc", instances=2, promotable=True))
    coordinator = lab.coordinator()
    try:
        kv = await coordinator.get(def_key("svc"))
        assert kv is not None
        assert decode_service(kv.value).instances == 2
        assert await lab.run_agent("h2", "start", instance="svc:1", token=30) == 0
        block = BlockRecord(node="h2", token=30, reason="stop timed out", at=time.time())
        await coordinator.put(blocked_key(InstanceId(service="svc", index=1)), encode_block(block))
        await lab.reset_service("svc")
        assert not (await coordinator.get_prefix("services/blocked/")).items
    finally:
        await coordinator.close()
    last = lab.journal_records()[-1]
    assert (lab.node_of_journal(last.node), last.instance, last.action) == ("h2", "svc:1", "stop")


async def test_a_frozen_copy_is_judged_ended_at_the_freeze_and_must_stop_first_on_thaw(
    service_lab: ServiceLabFactory,
) -> None:
    lab = await service_lab(etcd_members=1)
    rounds = FaultRounds(lab, "fz", rng=random.Random(0))
    h1 = lab.journal_node("h1")
    assert await lab.run_agent("h1", "start", instance="fz:0", token=10) == 0
    frozen_at = time.time()
    assert await lab.run_agent("h2", "start", instance="fz:0", token=12) == 0
    thawed_at = time.time()
    rounds.freezes.append(Freeze(node=h1, frozen_at=frozen_at, thawed_at=thawed_at))
    assert lab.violations()  # the raw journal: h1 held it until its stop
    assert await lab.run_agent("h1", "stop", instance="fz:0", token=10) == 0
    rounds.check()  # judged: h1's copy could not act while frozen, and stopped first
    # A thawed node that starts again instead of stopping fights: that is reported.
    assert await lab.run_agent("h2", "stop", instance="fz:0", token=12) == 0
    assert await lab.run_agent("h3", "start", instance="fz:1", token=20) == 0
    rounds.freezes.append(
        Freeze(node=lab.journal_node("h3"), frozen_at=time.time(), thawed_at=time.time())
    )
    assert await lab.run_agent("h3", "promote", instance="fz:1", token=20) == 0
    with pytest.raises(AssertionError, match="promote begin before a successful stop"):
        rounds.check()
