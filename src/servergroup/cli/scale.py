"""`servergroup scale ...`: scale a server's online vCPUs down and up (seed 003)."""

from __future__ import annotations

import json

import click

from servergroup.cli.common import CliState, pass_state, run_async
from servergroup.coordination.connect import connect
from servergroup.scaling.client import DEFAULT_TIMEOUT, scale_cpu
from servergroup.scaling.cpus import format_cpu_list
from servergroup.scaling.protocol import MAX_TIMEOUT_MS, Direction
from servergroup.scaling.store import ScaleOutcome, timings_json
from servergroup.servers.registry import Registry


@click.group()
def scale() -> None:
    """Scale a server's resources on request (its online vCPUs)."""


@scale.command("cpu")
@click.argument("direction", type=click.Choice([d.value for d in Direction]))
@click.argument("server")
@click.option(
    "--timeout",
    type=click.FloatRange(0.001, MAX_TIMEOUT_MS / 1000),
    default=DEFAULT_TIMEOUT,
    show_default=True,
    help="Seconds the guest may take (the request's timeout_ms); the host adds a few for "
    "pinning and the record.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_state
def cpu(state: CliState, direction: str, server: str, timeout: float, as_json: bool) -> None:
    """Take one vCPU of SERVER offline (down) or bring one back online (up).

    The host that runs SERVER asks its guest's scale agent (which, going down,
    lets the guest's app_scale_helper choose the vCPU, or takes the highest;
    going up, brings back the lowest-numbered offline vCPU), pins the vCPU's
    thread (an offline vCPU onto vCPU 0's host CPU, freeing its own; an online
    one onto a free CPU of the host's pool), and records the online vCPUs in
    the server's status. Refused past the flavor's limits: `--vcpus` is the
    most, `--min-vcpus` the fewest. Prints the new online list.

    Example: servergroup scale cpu down vm1
    """
    config = state.config()
    coordinator = connect(config)

    async def main() -> ScaleOutcome:
        async with coordinator:
            return await scale_cpu(
                Registry(coordinator), server, Direction(direction), timeout=timeout
            )

    outcome = run_async(main())
    if as_json:
        click.echo(
            json.dumps(
                {
                    "server": outcome.server,
                    "host": outcome.host,
                    "direction": outcome.direction.value,
                    "cpu": outcome.cpu,
                    "online_cpus": list(outcome.online_cpus),
                    "host_cpu": outcome.host_cpu,
                    # Seconds per phase on the host (docs/design/scaling-host.md).
                    "timings": timings_json(outcome.timings) if outcome.timings else None,
                }
            )
        )
        return
    verb = "offline" if outcome.direction is Direction.DOWN else "online"
    click.echo(
        f"server {outcome.server}: vCPU {outcome.cpu} {verb}; online vCPUs "
        f"{format_cpu_list(outcome.online_cpus)}"
    )


__all__ = ["scale"]
