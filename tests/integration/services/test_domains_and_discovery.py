"""Failover domains, recovery policies and discovery on three supervised node daemons.

Issue 14's "Must hold" on real daemons (`servergroup host --supervised` in
three lab hosts, tests/fixtures/services.py), a real etcd and the real
journal agent, in one lab for time's sake, part after part:

1. promotable: one master on the best node; when its daemon is killed a
   slave is promoted, and `servergroup service where --watch` (a real
   process) reports the new address once; the returning node does not take
   the master back;
2. recovery `relocate` moves a failed instance at once (no restart in
   place), recovery `disable` stops the service everywhere and keeps it
   stopped;
3. restricted: with no member of its domain up, the service stays stopped
   while a node outside the domain is up (and takes other work).

The journal of every part is checked for two owners at once.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import Any

import pytest

from servergroup.services.journal import Record, check
from servergroup.services.model import (
    DomainMember,
    FailoverDomain,
    Recovery,
    Service,
    encode_domain,
)
from servergroup.services.store import (
    NODES,
    decode_master,
    decode_state,
    domain_key,
    master_key,
)
from servergroup.services.store import state_key as service_state_key
from tests.fixtures.daemons import Daemon, DaemonFactory
from tests.fixtures.services import ServiceLab, ServiceLabFactory, until
from tests.integration.services.test_cli_service import lines_of

pytestmark = [pytest.mark.root, pytest.mark.timeout(240)]

WAIT = 30.0


def domain(name: str, *nodes: str, restricted: bool = False) -> FailoverDomain:
    return FailoverDomain(
        name=name,
        members=tuple(DomainMember(node=n, priority=i + 1) for i, n in enumerate(nodes)),
        ordered=True,
        restricted=restricted,
        nofailback=True,
    )


async def put_domain(lab: ServiceLab, d: FailoverDomain) -> None:
    c = lab.coordinator()
    try:
        await c.put(domain_key(d.name), encode_domain(d))
    finally:
        await c.close()


def service(lab: ServiceLab, name: str, dom: str, **changes: Any) -> Service:
    return dataclasses.replace(lab.journal_service(name), domain=dom, **changes)


def acts(lab: ServiceLab, service: str, action: str, *, since: float = 0.0) -> list[Record]:
    """Successful ends of `action` on any instance of `service`, in journal order."""
    return [
        r
        for r in lab.journal_records()
        if r.instance.startswith(f"{service}:")
        and r.action == action
        and r.phase.value == "end"
        and r.code == 0
        and r.at >= since
    ]


def nodes_of(lab: ServiceLab, records: list[Record]) -> list[str]:
    return [lab.node_of_journal(r.node) for r in records]


async def held(lab: ServiceLab, name: str, instances: int) -> dict[int, str]:
    return await lab.owners(name, instances)


async def alive_nodes(lab: ServiceLab) -> set[str]:
    """The nodes whose node role is alive (their `services/nodes/<node>` key)."""
    c = lab.coordinator()
    try:
        rng = await c.get_prefix(NODES)
        return {kv.key.rsplit("/", 1)[1] for kv in rng.items}
    finally:
        await c.close()


async def master_of(lab: ServiceLab, name: str) -> tuple[str, str | None] | None:
    c = lab.coordinator()
    try:
        kv = await c.get(master_key(name))
        if kv is None:
            return None
        record = decode_master(kv.value)
        return record.node, record.address
    finally:
        await c.close()


async def test_domains_recovery_policies_and_where_watch(
    service_lab: ServiceLabFactory, daemon: DaemonFactory
) -> None:
    # A 2 s lease: a promotable journal service demotes and stops within 0.3 s each.
    lab = await service_lab(etcd_members=1, lease_ttl=2)
    await put_domain(lab, domain("all", "h1", "h2", "h3"))
    await put_domain(lab, domain("pair", "h1", "h2", restricted=True))

    # -- 1. promotable, and discovery as events ------------------------------------------
    await lab.define(
        service(lab, "p", "all", instances=2, promotable=True, address="{node_ip}:7001")
    )
    endpoints = ",".join(str(e) for e in lab.etcd.endpoints)
    where: Daemon = daemon(
        [
            *(sys.executable, "-m", "servergroup", "--endpoints", endpoints),
            *("--prefix", lab.prefix, "service", "where", "p", "--watch", "--json"),
        ],
        name="where-watch",
        env={"SERVERGROUP_CONFIG": ""},
    )

    async def mastered_on(node: str) -> tuple[str, str | None] | None:
        found = await master_of(lab, "p")
        return found if found is not None and found[0] == node and found[1] else None

    first = await until(lambda: mastered_on("h1"), "p's master on h1, published", WAIT)
    assert isinstance(first, tuple)

    def watcher_saw(node: str, address: str | None) -> bool:
        return any((e.get("node"), e.get("address")) == (node, address) for e in lines_of(where))

    await until(lambda: watcher_saw(*first), "the watcher reporting h1", WAIT)
    await until(lambda: len(acts(lab, "p", "start")) >= 2, "p's slave started", WAIT)
    lab.kill_daemon("h1")  # its supervisor demotes, stops and revokes: h2 is promoted
    second = await until(lambda: mastered_on("h2"), "p's slave on h2 promoted", WAIT)
    assert isinstance(second, tuple)
    assert second[1] is not None
    assert second[1] != first[1]
    await lab.wait_registered()  # h1 is back under its supervisor: it takes no master

    async def two_copies() -> bool:
        return len(await held(lab, "p", 2)) == 2

    await until(two_copies, "p's two copies again", WAIT)
    await until(lambda: watcher_saw(*second), "the watcher reporting h2", WAIT)
    lines = lines_of(where)
    moved = [(e["node"], e["address"]) for e in lines if e["event"] == "moved"]
    assert moved.count(("h2", second[1])) == 1, lines
    assert [n for n, a in moved if a is not None] == ["h1", "h2"], lines
    assert await master_of(lab, "p") == second
    assert check(lab.journal_records()) == []

    # -- 2. recovery policies ---------------------------------------------------------------
    await lab.define(service(lab, "rel", "all", recovery=Recovery.RELOCATE))
    await lab.define(service(lab, "dis", "all", recovery=Recovery.DISABLE))
    await until(lambda: acts(lab, "rel", "start"), "rel started", WAIT)
    await until(lambda: acts(lab, "dis", "start"), "dis started", WAIT)
    rel_owner = nodes_of(lab, acts(lab, "rel", "start"))[-1]
    dis_owner = nodes_of(lab, acts(lab, "dis", "start"))[-1]
    failed_at = time.time()
    lab.fail("monitor", 1, instance="rel:0", node=rel_owner, depth=0)
    lab.fail("monitor", 1, instance="dis:0", node=dis_owner, depth=0)
    moved_to = await until(
        lambda: nodes_of(lab, acts(lab, "rel", "start", since=failed_at)), "rel relocated", WAIT
    )
    assert isinstance(moved_to, list)
    assert rel_owner not in moved_to, lab.journal_records()  # relocate: not restarted in place

    async def disabled() -> bool:
        c = lab.coordinator()
        try:
            kv = await c.get(service_state_key("dis"))
            return kv is not None and decode_state(kv.value).disabled
        finally:
            await c.close()

    await until(disabled, "dis disabled by its policy", WAIT)

    async def dis_stopped() -> bool:
        return not await held(lab, "dis", 1)

    await until(dis_stopped, "dis stopped", WAIT)
    assert acts(lab, "dis", "start", since=failed_at) == []
    lab.clear_switches()

    # -- 3. restricted, no member up -----------------------------------------------------
    await lab.define(service(lab, "r", "pair"))
    await until(lambda: acts(lab, "r", "start"), "r started", WAIT)
    crashed_at = time.time()
    lab.crash("h1")
    lab.crash("h2")

    async def both_gone() -> bool:
        alive = await alive_nodes(lab)
        return "h1" not in alive and "h2" not in alive

    await until(both_gone, "h1 and h2 seen dead", WAIT)
    # A sentinel h3 must start after it saw both go: by then it has decided on r too.
    await lab.define(service(lab, "after", "all"))
    await until(lambda: acts(lab, "after", "start", since=crashed_at), "the sentinel", WAIT)
    assert await held(lab, "r", 1) == {}
    assert acts(lab, "r", "start", since=crashed_at) == []
    assert check(lab.journal_records()) == []
    assert lines_of(where)  # the watcher ran throughout
