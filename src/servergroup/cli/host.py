"""`servergroup host`: the daemon of one host; `host list|show`: live hosts, their CPU pools."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import click

from servergroup.cli import complete
from servergroup.cli.common import CliState, pass_state, run_async, run_daemon
from servergroup.common.errors import ProcessFailed
from servergroup.common.process import die_with_parent
from servergroup.coordination.connect import connect
from servergroup.coordination.local_etcd import resolve_endpoints
from servergroup.daemons.host import DEFAULT_CHANNEL_DIR, DRIVERS, HostOptions, run_host
from servergroup.daemons.supervisor import (
    SUPERVISOR_ENV,
    after_death,
    kill_agent_actions,
    looks_like_host_daemon,
    supervise,
    unit_processes,
)
from servergroup.guestcomm.protocol import MESSAGING_ADDR
from servergroup.scaling.client import read_pools
from servergroup.scaling.cpus import format_cpu_list
from servergroup.scaling.store import pool_json
from servergroup.servers.model import DriverKind
from servergroup.servers.registry import Registry, ServerNotFound


@click.group(invoke_without_command=True)
@click.option(
    "--name",
    default=None,
    envvar="SERVERGROUP_HOST_NAME",
    help="This host's name in the group service [env SERVERGROUP_HOST_NAME; default: hostname].",
)
@click.option(
    "--channel-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=DEFAULT_CHANNEL_DIR,
    show_default=True,
    help="Where guests' channel sockets appear (cgcs.messaging.<instance>.sock).",
)
@click.option(
    "--address",
    default=MESSAGING_ADDR,
    show_default=True,
    help="Abstract datagram address served to host-side tools.",
)
@click.option(
    "--driver",
    "drivers",
    type=click.Choice([kind.value for kind in DRIVERS]),
    multiple=True,
    default=[kind.value for kind in DRIVERS],
    show_default=True,
    help="How this host runs servers (repeat for several).",
)
@click.option(
    "--migration-address",
    default="127.0.0.1",
    show_default=True,
    help="This host's IP address that a live migration of a qemu server connects to.",
)
@click.option(
    "--supervised",
    is_flag=True,
    help="Run the daemon under a supervisor (this process) that, when the daemon dies, "
    "stops its service instances, revokes its lease at once and restarts it.",
)
@click.pass_context
@pass_state
def host(
    state: CliState,
    ctx: click.Context,
    name: str | None,
    channel_dir: Path,
    address: str,
    drivers: tuple[str, ...],
    migration_address: str,
    supervised: bool,
) -> None:
    """Serve this host until interrupted: relay guests' channels, run the group
    service on etcd (broadcast, status, notifications), carry out the
    lifecycle of the servers placed on this host, scale their vCPUs (on
    request and by policy) and run the service instances the service
    manager places here.

    Registers itself as registry/hosts/NAME on its etcd session: when it dies, the
    other hosts tell the members of its servers' groups that those are lost.

    Serves an HTTP API and Prometheus metrics on 127.0.0.1:8470 ([api] in the
    config; SERVERGROUP_API_BIND, SERVERGROUP_API_PORT, SERVERGROUP_API_TOKEN_FILE):
    the cluster's state, the CLI's actions (with the bearer token), /metrics,
    /openapi.json.

    With --supervised (what `servergroup up` runs) this process stays the
    daemon's parent: when the daemon dies by anything but a clean stop, it
    stops the service instances the daemon ran, revokes the daemon's lease so
    that failover need not wait for it to expire, and starts the daemon again.
    Under systemd, use `servergroup host cleanup` as ExecStopPost= instead.

    `servergroup host list` and `servergroup host show NAME` show the live hosts
    and each one's CPU pool (which host CPUs its servers' vCPUs have).
    """
    if ctx.invoked_subcommand is not None:
        return
    config = state.config()
    node = name or socket.gethostname().split(".")[0]
    if supervised:
        sys.exit(supervise(config, node, sys.argv[1:]))
    _die_with_supervisor()
    endpoints = resolve_endpoints(config)
    options = HostOptions(
        name=node,
        channel_dir=channel_dir,
        address=address,
        drivers=tuple(dict.fromkeys(DriverKind(d) for d in drivers)),
        migration_address=migration_address,
    )
    run_daemon(run_host(config, options, endpoints=endpoints))


def _die_with_supervisor() -> None:
    """Under a supervisor: have SIGTERM when it dies; exit at once if it is already gone."""
    parent = os.environ.pop(SUPERVISOR_ENV, None)
    if (
        parent is not None
        and parent.isdigit()
        and not die_with_parent(signal.SIGTERM, parent=int(parent))
    ):
        raise ProcessFailed("the host daemon's supervisor is gone; not starting.")


@host.command("cleanup")
@click.option(
    "--name",
    default=None,
    envvar="SERVERGROUP_HOST_NAME",
    help="The host whose daemon died [env SERVERGROUP_HOST_NAME; default: hostname].",
)
@click.option(
    "--pid",
    type=int,
    default=None,
    help="The dead daemon's pid, if known (default: the one its ledger names).",
)
@pass_state
def host_cleanup(state: CliState, name: str | None, pid: int | None) -> None:
    """Clean up after this host's daemon died: stop the service instances its
    ledger lists, then revoke its lease so that they fail over at once (or, if
    a stop failed, mark the instance blocked and leave the lease to expire).

    For systemd's ExecStopPost= (servergroup-host.service, see `install-units`);
    `servergroup host --supervised` does the same by itself. Refuses to touch
    the ledger of a daemon that still runs. Never starts the local etcd. Run by
    systemd, it first kills the agent actions the daemon left running in the
    unit (a start must not finish after its stop).
    """
    config = state.config()
    node = name or socket.gethostname().split(".")[0]
    if "INVOCATION_ID" in os.environ:  # run by systemd: the unit's cgroup is the daemon's
        # The daemon is dead: a `servergroup host` left in its unit is a fork of it.
        kill_agent_actions(unit_processes(), is_daemon_fork=looks_like_host_daemon)
    report = run_async(after_death(config, node, pid))
    if report is None:
        raise ProcessFailed(f"nothing was cleaned up after host {node}; see the log above.")
    click.echo(report.describe())
    if report.failed:
        sys.exit(1)


@host.command("install-units")
@click.option(
    "--role",
    type=click.Choice(["host", "guest"]),
    default="host",
    show_default=True,
    help="host: servergroup-host.service and servergroup-etcd.service; guest (inside a "
    "VM): guest-agent.service and servergroup-scale-agent.service.",
)
@click.option(
    "--dir",
    "directory",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("/etc/systemd/system"),
    show_default=True,
    help="Where to write the units.",
)
@click.option(
    "--print",
    "show",
    metavar="UNIT",
    default=None,
    help="Instead, print the shipped unit UNIT (e.g. servergroup-host.service).",
)
def host_install_units(role: str, directory: Path, show: str | None) -> None:
    """Install the systemd units this package ships, for a host or a guest.

    They run this installation's `servergroup` by its full path (a virtual
    environment is not on systemd's search path). Files already the same are
    left alone. Then, on a host:

    \b
        systemctl daemon-reload
        systemctl enable --now servergroup-host.service

    and servergroup-etcd.service too when the host uses the managed local
    etcd rather than a cluster configured in /etc/servergroup/servergroup.toml.
    """
    from servergroup.daemons.units import Role, install_units, unit_text

    if show is not None:
        click.echo(unit_text(show), nl=False)
        return
    for unit in install_units(Role(role), directory):
        click.echo(f"{'wrote' if unit.changed else 'unchanged'} {unit.path}")
    click.echo("then: systemctl daemon-reload, and systemctl enable --now the units you use")


def _hosts(state: CliState) -> list[dict[str, Any]]:
    """Each live host's record and CPU pool, by name."""
    config = state.config()
    coordinator = connect(config, start_local=False)

    async def main() -> list[dict[str, Any]]:
        async with coordinator:
            hosts = await Registry(coordinator).list_hosts()
            pools = await read_pools(coordinator)
        out = []
        for h in hosts:
            pool = pools.get(h.name)
            out.append(
                {
                    "name": h.name,
                    "pid": h.pid,
                    "started_at": h.started_at,
                    "channel_dir": h.channel_dir,
                    "drivers": [d.value for d in h.drivers],
                    "cpu_pool": pool_json(pool) if pool is not None else None,
                }
            )
        return out

    return run_async(main())


def _cpus(pool: dict[str, Any] | None, key: str) -> str:
    if pool is None:
        return "-"
    return format_cpu_list(pool[key]) or "none"


@host.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_state
def host_list(state: CliState, as_json: bool) -> None:
    """List the live hosts with their CPU pools (all CPUs, and the free ones)."""
    hosts = _hosts(state)
    if as_json:
        click.echo(json.dumps(hosts))
        return
    if not hosts:
        click.echo("no host is running")
        return
    rows = [
        [
            h["name"],
            ",".join(h["drivers"]),
            _cpus(h["cpu_pool"], "cpus"),
            _cpus(h["cpu_pool"], "used"),
            _cpus(h["cpu_pool"], "free"),
            str(h["pid"]),
        ]
        for h in hosts
    ]
    headers = ["NAME", "DRIVERS", "CPU POOL", "USED", "FREE", "PID"]
    widths = [max(len(hd), *(len(r[i]) for r in rows)) for i, hd in enumerate(headers)]
    for row in [headers, *rows]:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


@host.command("show")
@click.argument("name", shell_complete=complete.hosts)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_state
def host_show(state: CliState, name: str, as_json: bool) -> None:
    """Show the live host NAME: its record, and which vCPU has which CPU of its pool."""
    found = [h for h in _hosts(state) if h["name"] == name]
    if not found:
        raise ServerNotFound(f"host {name!r} is not running")
    info = found[0]
    if as_json:
        click.echo(json.dumps(info))
        return
    pool = info["cpu_pool"]
    for key in ("name", "pid", "started_at", "channel_dir"):
        click.echo(f"{key + ':':<14}{info[key]}")
    click.echo(f"{'drivers:':<14}{','.join(info['drivers'])}")
    if pool is None:
        click.echo(f"{'cpu pool:':<14}not published yet")
        return
    click.echo(f"{'cpu pool:':<14}{_cpus(pool, 'cpus')}")
    click.echo(f"{'used:':<14}{_cpus(pool, 'used')}")
    click.echo(f"{'free:':<14}{_cpus(pool, 'free')}")
    for server, placed in sorted(pool["placed"].items()):
        pins = ", ".join(f"vCPU {v} on CPU {c}" for v, c in placed.items())
        click.echo(f"  {server}: {pins}")
    for server, vcpus in sorted(pool["shared"].items()):
        listed = format_cpu_list(vcpus)
        click.echo(f"  {server}: vCPU(s) {listed} share the pool (no free CPU when it started)")
    sys.stdout.flush()
