"""`servergroup guest`: the guest agent, run inside every server (with its scale agent)."""

from __future__ import annotations

from pathlib import Path

import click

from servergroup.cli.scale_agent import scale_config, scale_options
from servergroup.guestcomm.guest import (
    DEFAULT_APP_QUEUE_BYTES,
    DEFAULT_APP_QUEUE_LIMIT,
    DEFAULT_CHANNEL_DEVICE,
    MAX_APP_QUEUE_BYTES,
    MAX_APP_QUEUE_LIMIT,
    Companion,
    guest_config,
    run_guest,
)
from servergroup.guestcomm.protocol import MAX_DATAGRAM, MESSAGING_ADDR
from servergroup.scaling.agent import ScaleAgent


@click.command()
@click.option(
    "--channel",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="SERVERGROUP_GUEST_CHANNEL",
    metavar="DEV",
    help="Character device of the channel to the host [env SERVERGROUP_GUEST_CHANNEL; "
    f"default {DEFAULT_CHANNEL_DEVICE} when it exists].",
)
@click.option(
    "--channel-listen",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="SERVERGROUP_GUEST_CHANNEL_LISTEN",
    metavar="PATH",
    help="Instead of a device: create a UNIX stream socket at PATH and let the host "
    "connect to it, as a hypervisor's channel socket [env SERVERGROUP_GUEST_CHANNEL_LISTEN].",
)
@click.option(
    "--address",
    default=MESSAGING_ADDR,
    show_default=True,
    envvar="SERVERGROUP_GUEST_ADDRESS",
    metavar="NAME",
    help="Abstract UNIX datagram name applications send to [env SERVERGROUP_GUEST_ADDRESS].",
)
@click.option(
    "--ready-file",
    type=click.Path(path_type=Path, dir_okay=False),
    metavar="PATH",
    help="Write PATH (the agent's PID) once it serves, for a supervisor that starts "
    "things in order; removed when the agent stops.",
)
@click.option(
    "--app-queue-limit",
    type=click.IntRange(1, MAX_APP_QUEUE_LIMIT),
    default=DEFAULT_APP_QUEUE_LIMIT,
    show_default=True,
    envvar="SERVERGROUP_GUEST_APP_QUEUE_LIMIT",
    metavar="N",
    help="Datagrams that may wait for one application that does not read before more are "
    "dropped (it sees the gap) [env SERVERGROUP_GUEST_APP_QUEUE_LIMIT].",
)
@click.option(
    "--app-queue-bytes",
    type=click.IntRange(MAX_DATAGRAM, MAX_APP_QUEUE_BYTES),
    default=DEFAULT_APP_QUEUE_BYTES,
    show_default=True,
    envvar="SERVERGROUP_GUEST_APP_QUEUE_BYTES",
    metavar="BYTES",
    help="The same bound in bytes [env SERVERGROUP_GUEST_APP_QUEUE_BYTES].",
)
@click.option(
    "--scale-agent/--no-scale-agent",
    default=True,
    show_default=True,
    envvar="SERVERGROUP_SCALE_AGENT",
    help="Run the scale agent (abstract cgcs.scale) beside the guest agent "
    "[env SERVERGROUP_SCALE_AGENT]; see `servergroup scale-agent --help`.",
)
@scale_options("scale-")
def guest(
    channel: Path | None,
    channel_listen: Path | None,
    address: str,
    ready_file: Path | None,
    app_queue_limit: int,
    app_queue_bytes: int,
    scale_agent: bool,
    sysfs_root: Path,
    lab_cpus: int | None,
    helper: Path,
    metadata_url: str | None,
    sync_timeout: float,
    scale_ready_file: Path | None,
) -> None:
    """Run the guest agent: relay messages between this server's applications and its host.

    Applications send protocol-v2 JSON envelopes as datagrams to the abstract
    address (cgcs.messaging); the agent passes them to the host over the
    channel, and delivers what the host sends to the applications' own
    abstract addresses. In a VM the channel is the virtio-serial port
    (--channel); a lab server or a container uses a socket the host connects
    to (--channel-listen). Runs until SIGTERM or Ctrl-C.

    Beside it runs the scale agent (unless --no-scale-agent), which takes
    this server's vCPUs offline and online when the host asks, and at start
    takes offline those the host recorded as offline (boot sync).

    `python -m servergroup.guestcomm` takes the same options without this
    CLI's start-up cost; a qemu server's /init starts the agent that way.
    """
    config = guest_config(
        channel,
        channel_listen,
        address,
        ready_file,
        app_queue_limit=app_queue_limit,
        app_queue_bytes=app_queue_bytes,
    )
    companions: list[Companion] = []
    if scale_agent:
        companions.append(
            ScaleAgent(
                scale_config(
                    sysfs_root=sysfs_root,
                    helper=helper,
                    metadata_url=metadata_url,
                    sync_timeout=sync_timeout,
                    scale_ready_file=scale_ready_file,
                    lab_cpus=lab_cpus,
                    messaging_address=address,
                )
            )
        )
    # SIGTERM or Ctrl-C is how a daemon is asked to stop: the agent ends cleanly.
    run_guest(config, companions)
