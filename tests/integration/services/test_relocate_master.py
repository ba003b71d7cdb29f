"""`servergroup service relocate` of a promotable service's master, on real daemons.

Three supervised host daemons in lab hosts (tests/fixtures/services.py), a
real etcd, the real journal agent, and the real command line: a promotable
service with a copy on every node (the guide's csnap case), so that the
master can only move as a role. `relocate --to h2` demotes the master on
h1 (its copy stays there, a slave, under the same token) and promotes h2's
copy (under its own token), with at most one master at any moment in the
agents' journal; the request is then gone. A move that cannot go on says
why in `service status` (a ban on the target) and goes on once the cause
is cleared; a slave asked onto a node that runs a copy is refused at once.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from servergroup.services import store
from servergroup.services.journal import Record, check
from servergroup.services.model import DomainMember, FailoverDomain, encode_domain
from servergroup.services.placement import InstanceId
from tests.fixtures.services import ServiceLab, ServiceLabFactory, until

pytestmark = [pytest.mark.root, pytest.mark.timeout(240)]

WAIT = 30.0


def cli(lab: ServiceLab, *args: str) -> subprocess.CompletedProcess[str]:
    """`servergroup service ARGS...` as a process, on the lab's store."""
    endpoints = ",".join(str(e) for e in lab.etcd.endpoints)
    env = {
        **os.environ,
        "SERVERGROUP_CONFIG": "",
        "SERVERGROUP_STATE_DIR": str(lab.base / "cli"),
    }
    argv = [sys.executable, "-m", "servergroup", "--endpoints", endpoints, "--prefix", lab.prefix]
    return subprocess.run(
        [*argv, "service", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def listing(lab: ServiceLab) -> store.Listing:
    c = lab.coordinator()
    try:
        rng = await c.get_prefix(store.SERVICES)
        return store.read_listing(rng.items, revision=rng.revision)
    finally:
        await c.close()


def settled(found: store.Listing, name: str, copies: int) -> dict[int, store.Held] | None:
    """The owners of `name` by index once `copies` run, none busy or failed, one master."""
    held = {i.index: h for i, h in found.owners.items() if i.service == name}
    if len(held) != copies or any(h.record.busy or h.record.failed for h in held.values()):
        return None
    if sum(h.record.master for h in held.values()) != 1 or name not in found.masters:
        return None
    return held


def acts(lab: ServiceLab, action: str, *, since: float) -> list[tuple[str, str]]:
    """(node, instance) of each successful end of `action` on service p since `since`."""
    records: list[Record] = lab.journal_records()
    return [
        (lab.node_of_journal(r.node), r.instance)
        for r in records
        if r.instance.startswith("p:")
        and r.action == action
        and r.phase.value == "end"
        and r.code == 0
        and r.at >= since
    ]


async def test_relocating_the_master_where_every_node_runs_a_copy_moves_the_role(
    service_lab: ServiceLabFactory,
) -> None:
    # A 2 s lease: the journal agent's promotable service demotes and stops within 0.3 s each.
    lab = await service_lab(etcd_members=1, lease_ttl=2)
    c = lab.coordinator()
    try:
        domain = FailoverDomain(
            name="all",
            members=tuple(DomainMember(node=n, priority=i + 1) for i, n in enumerate(lab.nodes)),
            ordered=True,
        )
        await c.put(store.domain_key("all"), encode_domain(domain))
    finally:
        await c.close()
    service = lab.journal_service("p", instances=3, promotable=True)
    await lab.define(dataclasses.replace(service, domain="all", address="{node}:7001"))

    async def running() -> dict[int, store.Held] | None:
        return settled(await listing(lab), "p", 3)

    before = await until(running, "p's three copies, the master on h1", WAIT)
    assert isinstance(before, dict)
    assert {i: h.record.node for i, h in before.items()} == {0: "h1", 1: "h2", 2: "h3"}
    assert before[0].record.master
    asked_at = (await listing(lab)).masters["p"].at

    # -- the master moves to h2, which runs a slave -----------------------------------------
    done = cli(lab, "relocate", "p", "--to", "h2")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "move of the master of p asked: from h1 to h2\n"

    async def moved() -> dict[int, store.Held] | None:
        found = await listing(lab)
        held = settled(found, "p", 3)
        if held is None or found.relocations or found.masters["p"].node != "h2":
            return None
        return held if found.masters["p"].address == "h2:7001" else None

    def status_text() -> str:
        return cli(lab, "status", "p").stdout

    after = await until(
        moved,
        "p's master on h2 and the request gone",
        WAIT,
        on_timeout=lambda: f"; `service status p`:\n{status_text()}",
    )
    assert isinstance(after, dict)
    # The role moved, the copies did not: same nodes, same tokens (nothing restarted).
    assert {i: (h.record.node, h.token) for i, h in after.items()} == {
        i: (h.record.node, h.token) for i, h in before.items()
    }
    assert after[1].record.master
    assert not after[0].record.master
    assert acts(lab, "demote", since=asked_at) == [("h1", "p:0")]
    assert acts(lab, "promote", since=asked_at)[-1] == ("h2", "p:1")
    assert acts(lab, "stop", since=asked_at) == []
    assert check(lab.journal_records()) == []  # never two masters, no token going back
    assert "pending" not in status_text()

    # -- a slave onto a node that runs a copy: refused at once --------------------------------
    refused = cli(lab, "relocate", "p", "--instance", "2", "--to", "h1")
    assert refused.returncode != 0
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1, refused.stderr
    assert "h1 already runs instance p/0" in lines[0]

    # -- a move that cannot go on says why, and goes on once the cause is gone ----------------
    c = lab.coordinator()
    try:
        ban = store.BanRecord(reason="test: keep off h3", at=0.0)
        await c.put(store.ban_key("p", "h3"), store.encode_ban(ban))
    finally:
        await c.close()

    async def h3_stopped() -> bool:
        found = await listing(lab)
        return all(h.record.node != "h3" for i, h in found.owners.items() if i.service == "p")

    await until(h3_stopped, "p's copy on h3 stopped for the ban", WAIT)
    waits = cli(lab, "relocate", "p", "--to", "h3")
    assert waits.returncode == 0, waits.stderr

    async def says_why() -> bool:
        found = await listing(lab)
        record = found.relocations.get(InstanceId(service="p", index=1))
        return record is not None and record.waiting == "p is banned from h3"

    await until(says_why, "the pending move saying why it waits", WAIT)
    assert (
        "move of the master pending: from h2 to h3; waiting: p is banned from h3" in status_text()
    )
    shown = cli(lab, "status", "p", "--json")
    assert shown.returncode == 0, shown.stderr
    moving = [i["relocation"] for i in json.loads(shown.stdout)["instances"] if i["relocation"]]
    assert [(r["to"], r["master"], r["waiting"]) for r in moving] == [
        ("h3", True, "p is banned from h3")
    ]
    assert (await listing(lab)).masters["p"].node == "h2"  # meanwhile the master stays
    cleared = cli(lab, "clear", "p")
    assert cleared.returncode == 0, cleared.stderr

    async def on_h3() -> bool:
        found = await listing(lab)
        return (
            settled(found, "p", 3) is not None
            and found.masters["p"].node == "h3"
            and not found.relocations
        )

    await until(
        on_h3,
        "p's master on h3 once the ban is cleared",
        WAIT,
        on_timeout=lambda: f"; `service status p`:\n{status_text()}",
    )
    assert check(lab.journal_records()) == []
