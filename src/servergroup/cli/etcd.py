"""`servergroup etcd`: the managed local etcd (foreground, --start, --status, --stop);
`servergroup etcd certs DIR`: a test CA and certificates for an etcd cluster with TLS."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import click

from servergroup.cli.common import CliState, pass_state
from servergroup.common.errors import UsageError
from servergroup.config import Config
from servergroup.coordination.local_etcd import LocalEtcd, LocalEtcdStatus

# `--status` exit statuses, as `systemctl status` has them.
STATUS_RUNNING = 0
STATUS_NOT_RUNNING = 3


@click.group(invoke_without_command=True)
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
@click.pass_context
@pass_state
def etcd(
    state: CliState,
    ctx: click.Context,
    action: str | None,
    as_json: bool,
    port: int | None,
    peer_port: int | None,
) -> None:
    """Run the managed local etcd, the store used when no endpoint is configured.

    Without an option, run it in the foreground (its log on stderr) until
    Ctrl-C. Other servergroup commands that change something start it in
    the background when it is not running and share it (commands that only
    look do not); --start does that, --status says where it is (exit status
    0 when it runs, 3 when not), --stop stops it.

    It is a single member on loopback with its data under the state
    directory (<state-dir>/etcd), tuned for a 1 s minimum lease. To use an
    etcd cluster of your own instead, configure its endpoints ([coordination]
    endpoints, with ca_file, cert_file and key_file for TLS); `etcd certs`
    makes a test CA for one.
    """
    if ctx.invoked_subcommand is not None:
        if action or as_json or port or peer_port:
            raise click.UsageError("--start/--status/--stop/--port go without a subcommand.")
        return
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


@etcd.command()
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False))
@click.option(
    "--member",
    "members",
    multiple=True,
    metavar="NAME=ADDR[,ADDR...]",
    help="An etcd member and the IP addresses or DNS names it is reached at (repeat).",
)
@click.option(
    "--client",
    "clients",
    multiple=True,
    metavar="NAME",
    help="A client certificate to make (repeat) [default: one called client].",
)
@click.option(
    "--days",
    type=click.IntRange(1, 36500),
    default=365,
    show_default=True,
    help="How long the certificates are valid.",
)
def certs(directory: Path, members: tuple[str, ...], clients: tuple[str, ...], days: int) -> None:
    """Make a test CA and TLS certificates for an etcd cluster in DIRECTORY.

    Writes ca.crt/ca.key (kept if DIRECTORY has them, so certificates made
    later still trust each other), NAME.crt/NAME.key for each --member (its
    server and peer certificate, valid for NAME and the addresses given), and
    NAME.crt/NAME.key for each --client. Keys are readable by the owner only.
    For labs and tests; a production cluster uses the operator's own PKI.

    Example, for three members and the servergroup daemons as the client:

    \b
        servergroup etcd certs /etc/servergroup/etcd --client servergroup \\
            --member m1=10.0.0.1 --member m2=10.0.0.2 --member m3=10.0.0.3
    """
    from servergroup.coordination.certs import make_certs

    parsed: dict[str, list[str]] = {}
    for item in members:
        name, sep, addresses = item.partition("=")
        if not sep or not name or not addresses.strip():
            raise UsageError(f"--member {item!r} must be NAME=ADDR[,ADDR...].")
        if name in parsed:
            raise UsageError(f"--member {name} is given twice.")
        parsed[name] = addresses.split(",")
    issued = make_certs(directory, parsed, clients or ("client",), days=days)
    made = "made" if issued.ca_created else "kept"
    click.echo(f"CA: {issued.ca_file} ({made})")
    for name, (cert, key) in {**issued.members, **issued.clients}.items():
        kind = "member" if name in issued.members else "client"
        click.echo(f"{kind} {name}: {cert} {key}")


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
