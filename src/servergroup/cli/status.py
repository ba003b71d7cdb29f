"""`servergroup status`: the whole cluster on one screen, and what needs attention.

It reads what the dashboard shows (`api.events.read_snapshot`: hosts,
groups, servers, services, replication pairs, image transfers) once, and
prints a few lines per kind, then the things an operator should look at:
lost or failed servers, services that are not running as wanted, pairs
without a backup, stale transfers. `--json` prints the snapshot itself (the
dashboard's JSON, the API's view models) with the store it was read from
and the same list under "attention". Exit status: 0 when it could read the
store, whatever it found; 1 (one sentence) when it could not. Like every
command that only looks, it does not start the managed local etcd.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterable
from typing import Any

import click

from servergroup.cli.common import CliState, pass_state, run_async
from servergroup.coordination.connect import connect
from servergroup.servers.model import VmState

#: Service states that need nobody: running as wanted, or stopped on purpose.
_SETTLED = {"running", "disabled"}


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (the dashboard's).")
@pass_state
def status(state: CliState, as_json: bool) -> None:
    """Show the cluster: store, hosts, groups, servers, services, pairs, transfers.

    Ends with what needs attention (lost or failed servers, services not
    running as wanted, pairs without a backup, stale transfers). Reads only:
    the managed local etcd is not started for it. Exit status 0 when the
    store could be read, 1 when not.
    """
    from servergroup.api.events import read_snapshot

    config = state.config()
    coordinator = connect(config, start_local=False)
    store = ", ".join(str(e) for e in coordinator.endpoints)
    if not config.coordination.endpoints:
        store += " (the managed local etcd)"

    async def read() -> dict[str, Any]:
        async with coordinator:
            return await read_snapshot(coordinator, socket.gethostname())

    snapshot = run_async(read())
    attention = needs_attention(snapshot)
    if as_json:
        snapshot.pop("error", None)
        snapshot.pop("host", None)  # the API's own host: none here
        click.echo(json.dumps({**snapshot, "store": store, "attention": attention}))
        return
    for line in describe(snapshot, store):
        click.echo(line)
    click.echo("attention: " + ("none" if not attention else f"{len(attention)}"))
    for item in attention:
        click.echo(f"  {item}")


def describe(snapshot: dict[str, Any], store: str) -> list[str]:
    """The snapshot as lines: a heading per kind, then its things in aligned columns."""
    lines = [f"store: {store}"]
    hosts = snapshot["hosts"]
    gone = sum(not h["alive"] for h in hosts)
    lines.append(f"hosts: {len(hosts) - gone} live" + (f", {gone} gone" if gone else ""))
    lines += _rows(
        [
            h["name"],
            f"pid {h['pid']}" if h["alive"] else "gone",
            ",".join(h["drivers"]) or "-",
            ", ".join(h["servers"]),
        ]
        for h in hosts
    )
    groups = snapshot["groups"]
    lines.append(f"groups: {len(groups)}")
    lines += _rows([g["name"], g["policy"], ", ".join(g["members"])] for g in groups)
    servers = snapshot["servers"]
    lines.append(f"servers: {len(servers)}{_counts(s['vm_state'] for s in servers)}")
    lines += _rows(
        [
            s["name"],
            s["vm_state"] + (f" ({s['task_state']})" if s["task_state"] else ""),
            f"on {s['host']}" + ("" if s["host_alive"] else " (gone)"),
            f"{len(s['online_cpus'])}/{s['vcpus']} vCPUs",
            f"group {s['group']}",
        ]
        for s in servers
    )
    services = [entry["summary"] for entry in snapshot["services"]]
    lines.append(f"services: {len(services)}{_counts(s['state'] for s in services)}")
    lines += _rows(
        [
            s["name"],
            s["state"],
            f"{s['running']}/{s['instances']} running",
            "on " + (", ".join(s["nodes"]) or "no node"),
            _master(s["master"]),
        ]
        for s in services
    )
    pairs = snapshot["replication"]
    lines.append(f"replication pairs: {len(pairs)}")
    lines += _rows(
        [
            p["name"],
            f"generation {p['generation']}",
            f"active {p['active']}",
            f"backup {p['backup']}" if p["backup"] else "no backup",
        ]
        for p in pairs
    )
    transfers = snapshot["transfers"]
    lines.append(f"image transfers: {len(transfers)}")
    lines += _rows(
        [
            t["endpoint"],
            t["state"] + (" (stale)" if t["stale"] else ""),
            "" if t["progress"] is None else f"{t['progress']:.0%}",
            f"{len(t['receivers'])} receiver(s)",
        ]
        for t in transfers
    )
    return lines


def _master(master: dict[str, Any] | None) -> str:
    if master is None:
        return ""
    at = f" at {master['address']}" if master["address"] else ""
    return f"master {master['node']}{at} (token {master['token']})"


def _rows(rows: Iterable[list[str]]) -> list[str]:
    """Rows as indented lines, each column as wide as its widest cell."""
    table = list(rows)
    if not table:
        return []
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return [
        "  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in table
    ]


def needs_attention(snapshot: dict[str, Any]) -> list[str]:
    """One sentence per thing an operator should look at, most pressing kinds first."""
    out: list[str] = []
    by_hand = {g["name"] for g in snapshot["groups"] if g.get("evacuate") == "manual"}
    for s in snapshot["servers"]:
        if s["vm_state"] == VmState.DELETED.value:
            continue
        if not s["host_alive"]:
            lost = f"server {s['name']} is lost: its host {s['host']} is not live"
            if s["group"] in by_hand:
                lost += (
                    f" (group {s['group']} is evacuated by hand: "
                    f"servergroup server evacuate {s['name']})"
                )
            out.append(lost)
        elif s["vm_state"] == VmState.ERROR.value:
            out.append(f"server {s['name']} is in error: {s['error'] or 'no reason recorded'}")
    for entry in snapshot["services"]:
        s = entry["summary"]
        if s["state"] not in _SETTLED:
            why = f": {s['error']}" if s["error"] else ""
            out.append(f"service {s['name']} is {s['state']}{why}")
        elif entry.get("problem"):
            out.append(f"service {s['name']}: {entry['problem']}")
    for p in snapshot["replication"]:
        if not p["backup"]:
            out.append(f"pair {p['name']} has no backup: {p['active']} serves unprotected")
    for t in snapshot["transfers"]:
        if t["stale"]:
            out.append(f"transfer {t['endpoint']} is stale: its sender stopped writing its record")
    return out


def _counts(states: Iterable[str]) -> str:
    """` (2 active, 1 paused)`, or nothing for none."""
    counted: dict[str, int] = {}
    for value in states:
        counted[value] = counted.get(value, 0) + 1
    if not counted:
        return ""
    return " (" + ", ".join(f"{n} {word}" for word, n in sorted(counted.items())) + ")"


__all__ = ["status"]
