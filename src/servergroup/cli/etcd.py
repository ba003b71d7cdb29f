"""`servergroup etcd`: the managed local etcd (foreground, --start, --status, --stop)."""

from __future__ import annotations

import dataclasses
import json
import sys

import click

from servergroup.cli.common import CliState, pass_state
from servergroup.config import Config
from servergroup.coordination.local_etcd import LocalEtcd, LocalEtcdStatus

# `--status` exit statuses, as `systemctl status` has them.
STATUS_RUNNING = 0
STATUS_NOT_RUNNING = 3


@click.command()
@click.option("--start", "action", flag_value="start", help="Start it in the background if needed.")
@click.option("--status", "action", flag_value="status", help="Say whether and where it runs.")
@click.option("--stop", "action", flag_value="stop", help="Stop it if it runs.")
@click.option("--json", "as_json", is_flag=True, help="With --status: print one JSON object.")
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    help="Client port [env SERVERGROUP_ETCD_PORT; default 12379].",
)
@click.option(
    "--peer-port",
    type=click.IntRange(1, 65535),
    help="Peer port [env SERVERGROUP_ETCD_PEER_PORT; default 12380].",
)
@pass_state
def etcd(
    state: CliState, action: str | None, as_json: bool, port: int | None, peer_port: int | None
) -> None:
    """Run the managed local etcd, the store used when no endpoint is configured.

    Without an option, run it in the foreground (its log on stderr) until
    Ctrl-C. Other servergroup commands start it in the background when they
    need it and share it; --start does that, --status says where it is
    (exit status 0 when it runs, 3 when not), --stop stops it.

    It is a single member on loopback with its data under the state
    directory (<state-dir>/etcd), tuned for a 1 s minimum lease.
    """
    if as_json and action != "status":
        raise click.UsageError("--json goes with --status.")
    local = LocalEtcd(_config(state, port, peer_port))
    if action == "status":
        status = local.status()
        click.echo(json.dumps(status.as_dict()) if as_json else status.describe())
        sys.exit(STATUS_RUNNING if status.running else STATUS_NOT_RUNNING)
    elif action == "start":
        local.ensure_running()
        click.echo(local.status().describe())
    elif action == "stop":
        pid = local.stop()
        click.echo(
            f"stopped the local etcd (pid {pid})." if pid else "the local etcd was not running."
        )
    else:
        sys.exit(local.run_foreground(echo=sys.stderr, on_ready=_announce))


def _config(state: CliState, port: int | None, peer_port: int | None) -> Config:
    config = state.config()
    if port is None and peer_port is None:
        return config
    settings = dataclasses.replace(
        config.etcd,
        client_port=config.etcd.client_port if port is None else port,
        peer_port=config.etcd.peer_port if peer_port is None else peer_port,
    )
    return dataclasses.replace(config, etcd=settings.validate())


def _announce(status: LocalEtcdStatus) -> None:
    click.echo(f"servergroup: {status.describe()} Ctrl-C stops it.", err=True)
