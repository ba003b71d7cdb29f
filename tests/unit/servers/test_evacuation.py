"""evacuation.decide / rebuild_plan: scripted snapshots in, rebuilds and one sentence out."""

from __future__ import annotations

from dataclasses import replace

import pytest

from servergroup.servers.evacuation import dead_hosts, decide, rebuild_plan
from servergroup.servers.model import (
    REBUILDING_TASK,
    Desired,
    DriverKind,
    Evacuate,
    GroupRecord,
    HostRecord,
    Policy,
    RegistrySnapshot,
    Server,
    ServerSpec,
    ServerStatus,
    VmState,
)
from servergroup.servers.placement import PlacementError

NOW = "2026-01-01T00:00:00.000+00:00"


def host(
    name: str, drivers: tuple[DriverKind, ...] = (DriverKind.LAB, DriverKind.QEMU)
) -> HostRecord:
    return HostRecord(name=name, channel_dir=f"/ch/{name}", pid=1, started_at="", drivers=drivers)


def server(name: str, group: str, on: str, *, state: VmState = VmState.ACTIVE) -> Server:
    spec = ServerSpec(
        name=name,
        instance=f"instance-{abs(hash(name)) % 16**8:08x}",
        uuid=name,
        group=group,
        host=on,
    )
    status = ServerStatus(name=name, host=on, state=state, online_cpus=(0,))
    return Server(spec=spec, status=status, spec_revision=10, status_revision=11)


def snapshot(
    servers: list[Server],
    hosts: list[str],
    policy: Policy = Policy.ANTI_AFFINITY,
    evacuate: Evacuate = Evacuate.AUTO,
) -> RegistrySnapshot:
    groups = {
        g: GroupRecord(name=g, policy=policy, uuid=g, created_at="", evacuate=evacuate)
        for g in {s.spec.group for s in servers}
    }
    return RegistrySnapshot(
        revision=20,
        groups=groups,
        servers={s.name: s for s in servers},
        hosts={h: host(h) for h in hosts},
    )


def test_no_dead_host_means_nothing_to_do() -> None:
    snap = snapshot([server("a", "g", "h1")], ["h1", "h2"])
    assert dead_hosts(snap) == []
    d = decide(snap, gone_since={}, grace=5.0, now=100.0, now_iso=NOW)
    assert d.rebuilds == ()
    assert d.next_check_at is None
    assert d.sentence == "no dead host owns servers"


def test_grace_period_is_waited_out_then_servers_are_rebuilt() -> None:
    snap = snapshot([server("a", "g", "h1"), server("b", "g", "h2")], ["h2", "h3"])
    assert dead_hosts(snap) == ["h1"]
    early = decide(snap, gone_since={"h1": 100.0}, grace=5.0, now=102.0, now_iso=NOW)
    assert early.rebuilds == ()
    assert early.next_check_at == 105.0
    assert "host h1 is gone: rebuilding its servers in 3.0 s" in early.sentence
    due = decide(snap, gone_since={"h1": 100.0}, grace=5.0, now=105.0, now_iso=NOW)
    assert [(r.name, r.spec.host, r.dead_host) for r in due.rebuilds] == [("a", "h3", "h1")]
    rebuild = due.rebuilds[0]
    # anti-affinity: h2 already runs b, so a goes to h3
    assert rebuild.spec.evacuations == 1
    assert (rebuild.spec_revision, rebuild.status_revision) == (10, 11)
    assert (rebuild.status.host, rebuild.status.state, rebuild.status.task_state) == (
        "h3",
        VmState.BUILDING,
        REBUILDING_TASK,
    )
    assert due.sentence.startswith("rebuilding the servers of dead hosts: a to h3")


def test_a_host_not_yet_seen_gone_counts_from_now() -> None:
    snap = snapshot([server("a", "g", "h1")], ["h2"])
    d = decide(snap, gone_since={}, grace=5.0, now=50.0, now_iso=NOW)
    assert d.rebuilds == ()
    assert d.next_check_at == 55.0
    assert decide(snap, gone_since={}, grace=0.0, now=50.0, now_iso=NOW).rebuilds


def test_anti_affinity_members_of_one_dead_host_are_spread() -> None:
    snap = snapshot(
        [server("a", "g", "h1"), server("b", "g", "h1"), server("c", "g", "h2")],
        ["h2", "h3", "h4"],
    )
    d = decide(snap, gone_since={"h1": 0.0}, grace=0.0, now=1.0, now_iso=NOW)
    hosts = sorted(r.spec.host for r in d.rebuilds)
    assert hosts == ["h3", "h4"]


def test_affinity_members_move_together() -> None:
    servers = [server("a", "g", "h1"), server("b", "g", "h1"), server("c", "g", "h1")]
    snap = snapshot(servers, ["h2", "h3"], policy=Policy.AFFINITY)
    d = decide(snap, gone_since={"h1": 0.0}, grace=0.0, now=1.0, now_iso=NOW)
    assert len(d.rebuilds) == 3
    assert len({r.spec.host for r in d.rebuilds}) == 1


def test_anti_affinity_without_enough_hosts_is_stuck_with_a_sentence() -> None:
    snap = snapshot([server("a", "g", "h1"), server("b", "g", "h2")], ["h2"])
    d = decide(snap, gone_since={"h1": 0.0}, grace=0.0, now=1.0, now_iso=NOW)
    assert d.rebuilds == ()
    assert "a" in d.stuck
    assert "anti-affinity" in d.stuck["a"]
    assert "a cannot be rebuilt now" in d.sentence


def test_manual_groups_wait_for_the_operator() -> None:
    snap = snapshot([server("a", "g", "h1")], ["h2"], evacuate=Evacuate.MANUAL)
    d = decide(snap, gone_since={"h1": 0.0}, grace=0.0, now=10.0, now_iso=NOW)
    assert d.rebuilds == ()
    assert "1 server(s) of h1 wait for `servergroup server evacuate`" in d.sentence
    plan = rebuild_plan(snap, "h1", ["a"], to="h2", now_iso=NOW)
    assert [(r.name, r.spec.host) for r in plan] == [("a", "h2")]


def test_a_server_being_deleted_is_handed_over_to_finish_the_delete() -> None:
    doomed = server("a", "g", "h1")
    doomed = replace(doomed, spec=replace(doomed.spec, desired=Desired.DELETED))
    snap = snapshot([doomed], ["h2"], evacuate=Evacuate.MANUAL)
    d = decide(snap, gone_since={"h1": 0.0}, grace=0.0, now=10.0, now_iso=NOW)
    assert [(r.name, r.spec.host) for r in d.rebuilds] == [("a", "h2")]


def test_deleted_servers_and_drivers_the_hosts_lack() -> None:
    gone = server("a", "g", "h1", state=VmState.DELETED)
    assert dead_hosts(snapshot([gone], ["h2"])) == []
    vm = server("v", "g", "h1")
    vm = replace(vm, spec=replace(vm.spec, driver=DriverKind.QEMU))
    snap = replace(snapshot([vm], ["h2"]), hosts={"h2": host("h2", drivers=(DriverKind.LAB,))})
    with pytest.raises(PlacementError, match="no running host has the qemu driver"):
        rebuild_plan(snap, "h1", ["v"], now_iso=NOW)
