"""`servergroup lab`: lab hosts on this machine (network namespaces on a bridge)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from servergroup.cli.common import CliState, pass_state
from servergroup.daemons.labfaults import fault_lab
from servergroup.lab import (
    DEFAULT_MTU,
    DEFAULT_NAME,
    MAX_HOSTS,
    Lab,
    LabStatus,
    LossScope,
    format_rate,
    remove_stale_labs,
)

F = TypeVar("F", bound=Callable[..., Any])


def name_option(func: F) -> F:
    return click.option(
        "--name",
        "lab_name",
        default=DEFAULT_NAME,
        show_default=True,
        envvar="SERVERGROUP_LAB",
        metavar="NAME",
        help="Which lab: 1-8 lowercase letters and digits; several labs can coexist "
        "[env SERVERGROUP_LAB].",
    )(func)


def _lab(state: CliState, name: str) -> Lab:
    return fault_lab(name, state_dir=state.config().state_dir)


@click.group()
def lab() -> None:
    """Lab hosts on this machine: network namespaces on a bridge.

    Hosts h1..hN get addresses from 198.18.0.0/15 (one /24 per lab, host hI
    is .(10+I)); the root namespace has .1 on the lab's bridge, so lab hosts
    reach what runs here (such as etcd). Each host's link can be rate
    limited (tc tbf, both directions) and can lose a share of the UDP
    datagrams it receives (nftables numgen random). Needs root.
    """


@lab.command()
@name_option
@click.option(
    "--hosts",
    "-n",
    type=click.IntRange(1, MAX_HOSTS),
    required=True,
    metavar="N",
    help=f"Number of hosts, h1..hN (1 to {MAX_HOSTS}).",
)
@click.option(
    "--mtu",
    type=click.IntRange(68, 65535),
    default=DEFAULT_MTU,
    show_default=True,
    help="MTU of every lab link and of the bridge (9000 for jumbo frames).",
)
@click.option(
    "--rate",
    metavar="RATE",
    help="Limit each host's link, both directions, e.g. 1gbit, 100mbit, 512kbit or "
    "bits per second. Default: unlimited.",
)
@click.option(
    "--loss",
    metavar="PERCENT",
    help="Drop this percentage of the datagrams arriving at each host, at random "
    "(0.01 steps). Default: none.",
)
@click.option(
    "--loss-scope",
    type=click.Choice([scope.value for scope in LossScope]),
    default=LossScope.UDP.value,
    show_default=True,
    help="What --loss drops: udp (TCP, such as multicast repair traffic, is spared) "
    "or all IPv4 packets.",
)
@pass_state
def up(
    state: CliState,
    lab_name: str,
    hosts: int,
    mtu: int,
    rate: str | None,
    loss: str | None,
    loss_scope: str,
) -> None:
    """Create the lab, or reshape it to exactly these settings.

    Running it again with the same options changes nothing; with other
    options it reshapes the lab in place: adds or removes hosts, changes MTU,
    rate and loss. Either way it heals cut hosts and thaws frozen ones.
    Options not given take their defaults.
    """
    status = _lab(state, lab_name).up(
        hosts, mtu=mtu, rate=rate, loss=loss, loss_scope=LossScope(loss_scope)
    )
    _print_table(status)


@lab.command(name="list")
@name_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@pass_state
def list_(state: CliState, lab_name: str, as_json: bool) -> None:
    """Show the lab's hosts: addresses, interfaces, MTU, rate, loss, link, frozen or not.

    With --json, prints one object: name, up (false if the lab does not
    exist), bridge, network, root_address, mtu, owner_pid and hosts, each
    with name, netns, address, prefixlen, interface, root_interface, mtu,
    rate (bits/s or null), loss (percent), loss_scope, link_up (false once
    cut) and frozen.
    """
    status = _lab(state, lab_name).status()
    if as_json:
        data = {"up": True, **status.as_dict()} if status else {"name": lab_name, "up": False}
        click.echo(json.dumps(data, indent=2))
    elif status is None:
        click.echo(f"lab {lab_name} is not up.")
    else:
        _print_table(status)


@lab.command(
    name="exec",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@name_option
@click.argument("host")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@pass_state
def exec_(state: CliState, lab_name: str, host: str, command: tuple[str, ...]) -> None:
    """Run COMMAND inside lab host HOST (h1, h2, ...); exit with its status.

    The command joins the host's network namespace only (nsenter --net):
    mounts, /sys and its cgroups, /proc and /etc stay this machine's, so a
    host daemon or an etcd member runs there as on a host of its own
    (`servergroup up` starts its host daemons this way; one started by hand
    needs etcd endpoints the lab host reaches: the host's loopback is its
    own). Put -- before the command so that its options are not taken for
    ours:

    \b
        servergroup lab exec h1 -- ip -br addr
        servergroup lab exec h1 -- servergroup --config FILE host --name h1
    """
    if command[:1] == ("--",):  # after HOST, click passes the separator through
        command = command[1:]
    argv = _lab(state, lab_name).command(host, command)
    sys.stdout.flush()
    sys.stderr.flush()
    # Become the command (through `nsenter`): its exit status, signals and
    # terminal are the caller's, with no Python process in between.
    os.execvp(argv[0], argv)


@lab.command()
@name_option
@click.option(
    "--stale",
    is_flag=True,
    help="Instead, remove every lab on this machine whose owning process has exited "
    "(labs left behind by killed test runs).",
)
@click.option(
    "--force",
    is_flag=True,
    help="Remove it even if it was made from another state directory (one that is gone).",
)
@pass_state
def down(state: CliState, lab_name: str, stale: bool, force: bool) -> None:
    """Remove the lab: end what runs in its hosts, delete them, its links and bridge.

    Taking down a lab that is not up is not an error. A lab made from
    another state directory is left alone unless --force.
    """
    if stale:
        removed = remove_stale_labs(state.config().state_dir)
        click.echo(f"removed stale labs: {', '.join(removed)}." if removed else "no stale labs.")
    elif _lab(state, lab_name).down(force=force):
        click.echo(f"lab {lab_name} is down.")
    else:
        click.echo(f"lab {lab_name} was not up.")


@lab.command()
@name_option
@click.argument("host")
@pass_state
def crash(state: CliState, lab_name: str, host: str) -> None:
    """Crash lab host HOST: SIGKILL everything that runs on it.

    That is every process in its namespace (its host daemon, QEMU of its
    qemu servers, whatever was started there) and every process of the lab
    servers attached to its host daemons. Its namespace and link stay, so
    it can be started again (`servergroup up` starts a new host daemon).
    """
    killed = _lab(state, lab_name).crash(host)
    click.echo(f"lab host {host} crashed: {killed} process{'es' if killed != 1 else ''} killed.")


@lab.command()
@name_option
@click.argument("host")
@pass_state
def freeze(state: CliState, lab_name: str, host: str) -> None:
    """Freeze lab host HOST, as if the machine hung: everything on it stops at once.

    Uses the kernel's cgroup freezer, for its namespace's processes and for
    the lab servers attached to its host daemons (a paused server stays
    paused after `thaw`). Sockets stay open; leases run out.
    """
    frozen = _lab(state, lab_name).freeze(host)
    click.echo(f"lab host {host} is frozen ({frozen} process{'es' if frozen != 1 else ''}).")


@lab.command()
@name_option
@click.argument("host")
@pass_state
def thaw(state: CliState, lab_name: str, host: str) -> None:
    """Thaw lab host HOST: undo `freeze` (a host that is not frozen is left as it is)."""
    if _lab(state, lab_name).thaw(host):
        click.echo(f"lab host {host} is thawed.")
    else:
        click.echo(f"lab host {host} was not frozen.")


@lab.command()
@name_option
@click.argument("host")
@pass_state
def cut(state: CliState, lab_name: str, host: str) -> None:
    """Cut lab host HOST off: take its link to the lab bridge down.

    It loses etcd and every other host; what runs on it goes on running.
    `heal` (or `up`) brings the link back.
    """
    _lab(state, lab_name).cut(host)
    click.echo(f"lab host {host} is cut off.")


@lab.command()
@name_option
@click.argument("host")
@pass_state
def heal(state: CliState, lab_name: str, host: str) -> None:
    """Heal lab host HOST: bring its link to the lab bridge back up."""
    _lab(state, lab_name).heal(host)
    click.echo(f"lab host {host} is connected again.")


def _print_table(status: LabStatus) -> None:
    owner = f", owned by process {status.owner_pid}" if status.owner_pid else ""
    table = Table(
        title=f"lab {status.name}: bridge {status.bridge}, root namespace "
        f"{status.root_address}/{status.network.prefixlen}, mtu {status.mtu}{owner}",
        title_justify="left",
    )
    columns = ("host", "address", "interface", "root side", "mtu", "rate", "loss", "link", "state")
    for column in columns:
        table.add_column(column, justify="right" if column in ("mtu", "rate", "loss") else "left")
    for host in status.hosts:
        loss = f"{host.loss:g}% {host.loss_scope.value}" if host.loss else "-"
        table.add_row(
            host.name,
            f"{host.address}/{host.network.prefixlen}",
            f"{host.netns}:{host.interface}",
            host.root_interface,
            str(host.mtu),
            format_rate(host.rate) if host.rate else "-",
            loss,
            "up" if host.link_up else "DOWN (cut)",
            "FROZEN" if host.frozen else "running",
        )
    # Not on a terminal rich assumes 80 columns; a pipe or a log has room for the whole row.
    Console(width=None if sys.stdout.isatty() else 132).print(table)


__all__ = ["lab"]
