"""`servergroup host`: the daemon of one host (relay, group service, server manager)."""

from __future__ import annotations

import socket
from pathlib import Path

import click

from servergroup.cli.common import CliState, pass_state, run_async
from servergroup.coordination.local_etcd import resolve_endpoints
from servergroup.daemons.host import DEFAULT_CHANNEL_DIR, DRIVERS, HostOptions, run_host
from servergroup.guestcomm.protocol import MESSAGING_ADDR
from servergroup.servers.model import DriverKind


@click.command()
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
@pass_state
def host(
    state: CliState,
    name: str | None,
    channel_dir: Path,
    address: str,
    drivers: tuple[str, ...],
    migration_address: str,
) -> None:
    """Serve this host until interrupted: relay guests' channels, run the group
    service on etcd (broadcast, status, notifications) and carry out the
    lifecycle of the servers placed on this host.

    Registers itself as registry/hosts/NAME on its etcd session: when it dies, the
    other hosts tell the members of its servers' groups that those are lost.
    """
    config = state.config()
    endpoints = resolve_endpoints(config)
    options = HostOptions(
        name=name or socket.gethostname().split(".")[0],
        channel_dir=channel_dir,
        address=address,
        drivers=tuple(dict.fromkeys(DriverKind(d) for d in drivers)),
        migration_address=migration_address,
    )
    run_async(run_host(config, options, endpoints=endpoints))
