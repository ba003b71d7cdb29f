"""The node role in real host daemons (`servergroup up --hosts 3`), with real OCF agents.

Each test brings up three lab hosts whose host daemons run the node role
against the managed etcd, writes definitions into the store as `servergroup
service add` will, and watches the key space and the agents: the ClusterLabs
`ocf:heartbeat:Dummy`, and the journal agent (`ocf:sgtest:journal`), whose
journal `services.journal.check` reads for two owners at once and tokens
going back. Faults are real: kill -9 of a daemon, `servergroup lab freeze`
and `thaw`, an agent whose monitor fails or whose stop hangs.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from servergroup.services import store
from servergroup.services.ledger import ledger_path
from servergroup.services.model import (
    AgentRef,
    DomainMember,
    FailoverDomain,
    Monitor,
    Service,
)
from servergroup.services.placement import InstanceId
from tests.fixtures.setup import SetupFactory
from tests.integration.services import cluster

pytestmark = pytest.mark.timeout(180)

DUMMY = AgentRef(provider="heartbeat", type="Dummy")
JOURNAL = AgentRef(provider="sgtest", type="journal")


def ordered(name: str, *nodes: str, nofailback: bool = False) -> FailoverDomain:
    return FailoverDomain(
        name=name,
        members=tuple(DomainMember(node=n, priority=i + 1) for i, n in enumerate(nodes)),
        ordered=True,
        nofailback=nofailback,
    )


def journal_service(
    name: str, work: Path, *, domain: str, instances: int = 1, promotable: bool = False
) -> Service:
    return Service(
        name=name,
        agent=JOURNAL,
        parameters={
            "state": str(work / "{node}-{instance}.state"),
            "journal": str(work / "journal"),
            "node": "{node}",
        },
        monitors=(Monitor(depth=0, interval=1.0, timeout=0.5),),
        start_timeout=2.0,
        stop_timeout=0.5,
        instances=instances,
        promotable=promotable,
        domain=domain,
        address="{node_ip}:7000",
    )


def test_placed_on_the_best_node_restarted_in_place_then_moved(
    servergroup_up: SetupFactory, tmp_path: Path
) -> None:
    setup = servergroup_up(3, env=cluster.env(cluster.ocf_root(tmp_path)))
    service = Service(
        name="dummy",
        agent=DUMMY,
        parameters={"state": str(tmp_path / "{node}-dummy.state")},
        monitors=(Monitor(depth=0, interval=1.0, timeout=0.5),),
        start_timeout=2.0,
        stop_timeout=0.5,
        max_restarts=1,
        restart_expire_time=120.0,
        domain="lab",
        address="{node_ip}:7000",
    )
    cluster.define(setup, services=[service], domains=[ordered("lab", "h2", "h1", "h3")])
    instance = InstanceId(service="dummy", index=0)
    held = cluster.wait_for(setup, "dummy placed", cluster.owner_of(instance))
    assert held.record.node == "h2"  # the best-priority member, not the first by name
    master = cluster.wait_for(setup, "dummy published", lambda lst: lst.masters.get("dummy"))
    assert (master.node, master.token) == ("h2", held.token)
    assert master.address is not None
    assert master.address.endswith(":7000")
    state = tmp_path / "h2-dummy.state"
    assert state.exists()  # Dummy's resource: its state file

    # Its monitor fails (the resource vanished): restarted in place, same key.
    state.unlink()
    cluster.wait_for(
        setup,
        "restarted in place",
        lambda lst: any(e.action == "start" for e in lst.history["dummy"].entries[1:]),
    )
    again = cluster.wait_for(setup, "dummy running again", cluster.owner_of(instance))
    assert (again.record.node, again.token) == ("h2", held.token)
    assert state.exists()
    listing = cluster.listing(setup)
    failures = listing.failures[("dummy", "h2")]
    assert len(failures.times) == 1
    # The history says the monitor failed: its 7 (not running) is no "ok" here.
    monitors = [e for e in listing.history["dummy"].entries if e.action == "monitor 0"]
    assert len(monitors) == 1
    assert monitors[0].result.startswith("failed: monitor returned 7 (NOT_RUNNING)")

    # A second failure within restart_expire_time is past max_restarts = 1: it moves.
    state.unlink()
    moved = cluster.wait_for(
        setup,
        "moved to h1",
        cluster.owned_by(instance, "h1"),
    )
    assert moved.token > held.token
    assert (tmp_path / "h1-dummy.state").exists()
    cluster.wait_for(setup, "h2 stopped it", lambda lst: not state.exists())

    # A definition removed (as `service remove` will): its owner stops it and drops the keys.
    cluster.delete(setup, store.def_key("dummy"))
    cluster.wait_for(
        setup,
        "dummy stopped and gone",
        lambda lst: instance not in lst.owners and "dummy" not in lst.masters,
    )
    assert not (tmp_path / "h1-dummy.state").exists()


def test_kill_9_of_the_owners_daemon_fails_over_with_one_owner_at_a_time(
    servergroup_up: SetupFactory, tmp_path: Path
) -> None:
    setup = servergroup_up(3, env=cluster.env(cluster.ocf_root(tmp_path)))
    service = journal_service("db", tmp_path, domain="lab")
    cluster.define(setup, services=[service], domains=[ordered("lab", "h1", "h2", "h3")])
    instance = InstanceId(service="db", index=0)
    first = cluster.wait_for(setup, "db placed", cluster.owner_of(instance))
    assert first.record.node == "h1"

    cluster.kill_unsupervised(setup, "h1")
    assert cluster.act_as_supervisor(setup, "h1") == 1  # the ledger listed db/0
    second = cluster.wait_for(
        setup,
        "db failed over",
        cluster.owned_by(instance, "h2"),
    )
    assert second.token > first.token
    master = cluster.wait_for(
        setup,
        "db published on h2",
        cluster.master_where("db", lambda m: m.node == "h2"),
    )
    assert master.token == second.token
    records = cluster.journal(tmp_path / "journal")
    assert [(r.node, r.action, r.phase.value, r.token) for r in records] == [
        ("h1", "start", "begin", first.token),
        ("h1", "start", "end", first.token),
        ("h1", "stop", "begin", first.token),
        ("h1", "stop", "end", first.token),
        ("h2", "start", "begin", second.token),
        ("h2", "start", "end", second.token),
    ]
    assert cluster.violations(tmp_path / "journal") == []

    # A clean stop of h2's daemon hands db over at once: stopped, keys deleted, ledger cleared.
    os.kill(cluster.pid_of(setup, "h2"), signal.SIGTERM)
    third = cluster.wait_for(setup, "db handed over to h3", cluster.owned_by(instance, "h3"))
    assert third.token > second.token
    assert not ledger_path(setup.state_dir, "h2").exists()
    assert [(r.node, r.action, r.phase.value) for r in cluster.journal(tmp_path / "journal")][
        -4:
    ] == [
        ("h2", "stop", "begin"),
        ("h2", "stop", "end"),
        ("h3", "start", "begin"),
        ("h3", "start", "end"),
    ]
    assert cluster.violations(tmp_path / "journal") == []


def test_a_cut_off_owner_stops_before_its_lease_can_expire(
    servergroup_up: SetupFactory, tmp_path: Path
) -> None:
    setup = servergroup_up(3, env=cluster.env(cluster.ocf_root(tmp_path)))
    service = journal_service("db", tmp_path, domain="lab")
    domain = ordered("lab", "h1", "h2", "h3", nofailback=True)
    cluster.define(setup, services=[service], domains=[domain])
    instance = InstanceId(service="db", index=0)
    first = cluster.wait_for(setup, "db placed", cluster.owner_of(instance))
    assert first.record.node == "h1"

    setup.run("lab", "cut", "h1")  # h1 runs on, without etcd
    second = cluster.wait_for(setup, "db failed over", cluster.owned_by(instance, "h2"))
    assert second.token > first.token
    # h1 stopped its copy on its own, before the store let h2 win the key: no overlap.
    assert cluster.violations(tmp_path / "journal") == []
    records = cluster.journal(tmp_path / "journal")
    h1_stop = next(r for r in records if (r.node, r.action, r.phase.value) == ("h1", "stop", "end"))
    h2_start = next(r for r in records if (r.node, r.action) == ("h2", "start"))
    assert h1_stop.at < h2_start.at

    healed_at = time.time()
    setup.run("lab", "heal", "h1")
    cluster.wait_for(
        setup,
        "h1 rejoined",
        lambda lst: (n := lst.nodes.get("h1")) is not None and n.joined_at > healed_at,
    )
    time.sleep(2.0)  # a node that fought would start again now
    after = cluster.listing(setup).owners[instance]
    assert (after.record.node, after.token) == ("h2", second.token)
    assert [r.action for r in cluster.journal(tmp_path / "journal") if r.node == "h1"] == [
        "start",
        "start",
        "stop",
        "stop",
    ]
    assert cluster.violations(tmp_path / "journal") == []


def test_a_frozen_owner_stops_itself_on_thaw_and_does_not_fight(
    servergroup_up: SetupFactory, tmp_path: Path
) -> None:
    setup = servergroup_up(3, env=cluster.env(cluster.ocf_root(tmp_path)))
    service = journal_service("db", tmp_path, domain="lab")
    domain = ordered("lab", "h1", "h2", "h3", nofailback=True)
    cluster.define(setup, services=[service], domains=[domain])
    instance = InstanceId(service="db", index=0)
    first = cluster.wait_for(setup, "db placed", cluster.owner_of(instance))
    assert first.record.node == "h1"

    setup.run("lab", "freeze", "h1")
    frozen_at = time.time()
    second = cluster.wait_for(
        setup,
        "db failed over",
        cluster.owned_by(instance, "h2"),
    )
    assert second.token > first.token
    thawed_at = time.time()
    setup.run("lab", "thaw", "h1")
    cluster.wait_for(
        setup,
        "h1 rejoined",
        lambda lst: (n := lst.nodes.get("h1")) is not None and n.joined_at > thawed_at,
    )

    def h1_stopped() -> bool:
        return any(
            (r.node, r.action, r.phase.value) == ("h1", "stop", "end")
            for r in cluster.journal(tmp_path / "journal")
        )

    cluster.wait_for(setup, "h1 stopped its stale copy", lambda lst: h1_stopped())
    time.sleep(2.0)  # a node that fought would start or promote again now
    after = cluster.listing(setup).owners[instance]
    assert (after.record.node, after.token) == ("h2", second.token)
    records = cluster.journal(tmp_path / "journal")
    h1 = [(r.action, r.phase.value, r.token) for r in records if r.node == "h1"]
    assert h1 == [
        ("start", "begin", first.token),
        ("start", "end", first.token),
        ("stop", "begin", first.token),  # on thaw, its first act: self-fencing
        ("stop", "end", first.token),
    ]
    assert all(r.at >= thawed_at for r in records if r.node == "h1" and r.action == "stop")
    # While h1 was frozen its copy could not act; the checker's conservative view counts
    # it as held until h1's stop, and finds nothing else: no other overlap, tokens rise.
    found = cluster.violations(tmp_path / "journal")
    assert all("h1" in v.sentence and "h2" in v.sentence for v in found), found
    assert len(found) <= 1
    assert frozen_at < thawed_at


def test_one_master_and_a_slave_promoted_when_the_master_goes(
    servergroup_up: SetupFactory, tmp_path: Path
) -> None:
    setup = servergroup_up(3, env=cluster.env(cluster.ocf_root(tmp_path)))
    service = journal_service("csnap", tmp_path, domain="lab", instances=3, promotable=True)
    cluster.define(setup, services=[service], domains=[ordered("lab", "h1", "h2", "h3")])

    def settled(lst: store.Listing) -> store.MasterRecord | None:
        owners = [h for i, h in lst.owners.items() if i.service == "csnap"]
        masters = [h for h in owners if h.record.master]
        master = lst.masters.get("csnap")
        quiet = len(owners) == 3 and not any(h.record.busy for h in owners)
        if quiet and len(masters) == 1 and master is not None and master.address is not None:
            return master
        return None

    master = cluster.wait_for(setup, "csnap settled", settled)
    assert master.node == "h1"
    assert {h.record.node for h in cluster.listing(setup).owners.values()} == {"h1", "h2", "h3"}

    cluster.kill_unsupervised(setup, "h1")
    assert cluster.act_as_supervisor(setup, "h1") == 1
    promoted = cluster.wait_for(
        setup,
        "a slave promoted",
        cluster.master_where("csnap", lambda m: m.node != "h1" and m.address is not None),
    )
    assert promoted.node == "h2"  # the best-ranked slave
    assert promoted.address is not None
    assert promoted.address.startswith("198.18.")
    masters = [h for h in cluster.listing(setup).owners.values() if h.record.master]
    assert [h.record.node for h in masters] == ["h2"]
    assert cluster.violations(tmp_path / "journal") == []


def test_a_stop_that_hangs_blocks_the_instance_everywhere(
    servergroup_up: SetupFactory, tmp_path: Path
) -> None:
    setup = servergroup_up(3, env=cluster.env(cluster.ocf_root(tmp_path)))
    service = journal_service("db", tmp_path, domain="lab")
    cluster.define(setup, services=[service], domains=[ordered("lab", "h1", "h2", "h3")])
    instance = InstanceId(service="db", index=0)
    first = cluster.wait_for(setup, "db placed", cluster.owner_of(instance))
    assert first.record.node == "h1"

    (tmp_path / "h1-0.state.hang-stop").write_text("")
    relocation = store.RelocationRecord(from_node="h1", to_node="h2", at=time.time())
    cluster.put(setup, store.relocation_key(instance), store.encode_relocation(relocation))
    block = cluster.wait_for(setup, "db blocked", lambda lst: lst.blocked.get(instance))
    assert (block.node, block.token) == ("h1", first.token)
    assert "stop timed out" in block.reason
    time.sleep(2.0)  # a node that ignored the block would start db now
    lst = cluster.listing(setup)
    assert instance not in lst.owners
    assert instance in lst.blocked
    starts = [r for r in cluster.journal(tmp_path / "journal") if r.action == "start"]
    assert {r.node for r in starts} == {"h1"}

    # An operator who made sure it is down clears the block (as `service clear` will):
    # the pending relocation then starts it on h2, and h1 drops the relocation.
    (tmp_path / "h1-0.state.hang-stop").unlink()
    cluster.delete(setup, store.blocked_key(instance))
    moved = cluster.wait_for(setup, "db started on h2", cluster.owned_by(instance, "h2"))
    assert moved.token > first.token
    cluster.wait_for(setup, "relocation done", lambda lst: instance not in lst.relocations)
