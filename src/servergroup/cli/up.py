"""`servergroup up` / `servergroup down`: the single-machine setup in the background."""

from __future__ import annotations

import json

import click

from servergroup.cli.common import CliState, pass_state
from servergroup.coordination.local_etcd import LocalEtcd
from servergroup.daemons.up import clean_servers
from servergroup.daemons.up import down as take_down
from servergroup.daemons.up import up as bring_up


@click.command()
@click.option(
    "--hosts",
    type=click.IntRange(1, 16),
    default=1,
    show_default=True,
    help="How many lab hosts, each running `servergroup host`.",
)
@click.option(
    "--lab",
    "lab_name",
    default=None,
    envvar="SERVERGROUP_LAB",
    help="Lab name (namespaces <lab>-h<i>) [env SERVERGROUP_LAB; default sg].",
)
@click.option("--json", "as_json", is_flag=True, help="Print where everything is as JSON.")
@pass_state
def up(state: CliState, hosts: int, lab_name: str | None, as_json: bool) -> None:
    """Bring up servergroup on this machine, in the background: the managed
    etcd, and HOSTS lab hosts (network namespaces) each running a host daemon.

    With etcd endpoints configured (--endpoints, or [coordination] endpoints
    in the config file, with ca_file, cert_file and key_file for https://),
    the host daemons use that cluster instead and no local etcd is started;
    its members must be reachable from the lab hosts (not on loopback).

    Idempotent: running it again changes nothing, or only the number of hosts.
    Every `servergroup group|server|app` command then works without options
    (with the same configuration). Undo it with `servergroup down`.
    """
    config = state.config()
    say = None if as_json else (lambda msg: click.echo(f"  {msg}", err=True))
    status = bring_up(
        config, hosts=hosts, lab_name=lab_name, progress=say, config_path=state.config_path
    )
    if as_json:
        click.echo(json.dumps(status.as_dict(), indent=2))
        return
    click.echo("servergroup is up:")
    for line in status.describe():
        click.echo(f"  {line}")


@click.command()
@pass_state
def down(state: CliState) -> None:
    """Stop what `servergroup up` started: delete every server, stop the host
    daemons, remove the lab's namespaces, and stop the etcd if `up` started it
    (a configured cluster is left running, its servergroup keys cleaned).
    """
    config = state.config()
    report = take_down(
        config,
        clean_servers=clean_servers,
        progress=lambda msg: click.echo(f"  {msg}", err=True),
    )
    # The managed etcd stays when something else started it (a command that changes
    # something, `etcd --start`): say so, or it runs on unnoticed.
    running = None if config.coordination.endpoints else LocalEtcd(config).running()
    if report is None:
        click.echo("nothing is up" + (_etcd_left(running[0]) if running else ""))
        return
    click.echo(
        f"servergroup is down: {report.servers_deleted} server(s) deleted, "
        f"{report.hosts_stopped} host daemon(s) stopped"
        + (", etcd stopped" if report.etcd_stopped else "")
        + (_etcd_left(running[0]) if running and not report.etcd_stopped else "")
    )


def _etcd_left(pid: int) -> str:
    return (
        f"; the local etcd (pid {pid}) was not started by up and runs on: "
        "`servergroup etcd --stop` stops it"
    )
