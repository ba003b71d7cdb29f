"""`servergroup scale-agent`: the guest's scale agent alone (`servergroup guest` runs it too)."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from servergroup.guestcomm.protocol import MESSAGING_ADDR, SCALE_ADDR
from servergroup.scaling.agent import DEFAULT_SYNC_TIMEOUT, ScaleAgent, ScaleAgentConfig
from servergroup.scaling.helper import DEFAULT_HELPER

F = TypeVar("F", bound=Callable[..., Any])


def scale_options(prefix: str) -> Callable[[F], F]:
    """The options of the scale agent; `prefix` ("scale-" inside `servergroup guest`) names them."""
    options = [
        click.option(
            "--sysfs-root",
            type=click.Path(path_type=Path, file_okay=False),
            default=Path("/"),
            show_default=True,
            envvar="SERVERGROUP_SYSFS_ROOT",
            metavar="DIR",
            help="The CPUs are under DIR/sys/devices/system/cpu: / is this kernel's; a lab "
            "server gets a tree of its own [env SERVERGROUP_SYSFS_ROOT].",
        ),
        click.option(
            "--lab-cpus",
            type=click.IntRange(min=1),
            metavar="N",
            help="For a lab server: make a CPU tree of N CPUs (all online, as at boot) "
            "under --sysfs-root at start; never on a kernel's sysfs.",
        ),
        click.option(
            f"--{prefix}helper",
            "helper",
            type=click.Path(path_type=Path, dir_okay=False),
            default=DEFAULT_HELPER,
            show_default=True,
            metavar="PATH",
            help="The application's scale helper: run with --cpu_del, its exit status names "
            "the CPU to take offline; run with --cpu_add N [LIST] after a scale-up.",
        ),
        click.option(
            "--metadata-url",
            metavar="URL",
            help="Boot sync from the original's metadata (its offline_cpuset, like "
            "set([1, 2])) at URL instead of asking the host over the channel.",
        ),
        click.option(
            f"--{prefix}sync-timeout",
            "sync_timeout",
            type=click.FloatRange(min=0),
            default=DEFAULT_SYNC_TIMEOUT,
            show_default=True,
            metavar="S",
            help="How long the boot sync waits for the host before going on (0: no boot sync).",
        ),
        click.option(
            f"--{prefix}ready-file",
            "scale_ready_file",
            type=click.Path(path_type=Path, dir_okay=False),
            metavar="PATH",
            help="Write PATH (the PID) once the boot sync is over, for what starts the "
            "applications; removed at stop.",
        ),
    ]

    def decorate(func: F) -> F:
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


def scale_config(
    *,
    sysfs_root: Path,
    helper: Path,
    metadata_url: str | None,
    sync_timeout: float,
    scale_ready_file: Path | None,
    lab_cpus: int | None,
    address: str = SCALE_ADDR,
    messaging_address: str = MESSAGING_ADDR,
) -> ScaleAgentConfig:
    return ScaleAgentConfig(
        sysfs_root=sysfs_root,
        helper=helper,
        metadata_url=metadata_url,
        sync_timeout=sync_timeout,
        ready_file=scale_ready_file,
        lab_cpus=lab_cpus,
        address=address,
        messaging_address=messaging_address,
    )


@click.command("scale-agent")
@scale_options("")
@click.option(
    "--address",
    default=SCALE_ADDR,
    show_default=True,
    metavar="NAME",
    help="The abstract address the agent binds.",
)
@click.option(
    "--messaging-address",
    default=MESSAGING_ADDR,
    show_default=True,
    metavar="NAME",
    help="The guest agent's address: requests are taken only from it, replies go through it.",
)
def scale_agent(
    sysfs_root: Path,
    lab_cpus: int | None,
    helper: Path,
    metadata_url: str | None,
    sync_timeout: float,
    scale_ready_file: Path | None,
    address: str,
    messaging_address: str,
) -> None:
    """Run the scale agent: take this server's vCPUs offline and online when its host asks.

    The host's requests (scale_request, spec section 5) arrive through the
    guest agent at the abstract address cgcs.scale. Scaling down runs the
    helper with --cpu_del; its exit status names the CPU to take offline (0,
    200 or more, a CPU that is not online, or no helper: the highest online
    CPU; never CPU 0). Scaling up takes the CPU the host names online, then
    runs the helper with --cpu_add. A request's timeout_ms is enforced: a
    helper still running then is killed and the reply is a failure.

    At start (boot sync) the agent asks the host which vCPUs must be offline
    and takes them offline, before it writes its ready file.

    `servergroup guest` runs the same agent beside the guest agent unless
    given --no-scale-agent; run this command instead when the guest agent
    runs without it. Runs until SIGTERM or Ctrl-C.
    """
    config = scale_config(
        sysfs_root=sysfs_root,
        helper=helper,
        metadata_url=metadata_url,
        sync_timeout=sync_timeout,
        scale_ready_file=scale_ready_file,
        lab_cpus=lab_cpus,
        address=address,
        messaging_address=messaging_address,
    )
    agent = ScaleAgent(config)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda _signum, _frame: agent.stop())
    agent.run()
