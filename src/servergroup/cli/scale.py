"""`servergroup scale ...`: scale a server's online vCPUs down and up (seed 003)."""

from __future__ import annotations

import json

import click

from servergroup.cli import complete
from servergroup.cli.common import CliState, pass_state, run_async
from servergroup.common.errors import UsageError
from servergroup.coordination.connect import connect
from servergroup.scaling.autoscale import PolicyRecord, policy_json
from servergroup.scaling.client import DEFAULT_TIMEOUT, scale_cpu
from servergroup.scaling.cpus import format_cpu_list
from servergroup.scaling.policy import (
    DEFAULT_COOLDOWN_INTERVAL,
    DEFAULT_WINDOW_INTERVAL,
    Policy,
)
from servergroup.scaling.policyclient import get_policy, remove_policy, set_policy
from servergroup.scaling.protocol import MAX_TIMEOUT_MS, Direction
from servergroup.scaling.store import ScaleOutcome, timings_json
from servergroup.servers.registry import Registry


@click.group()
def scale() -> None:
    """Scale a server's resources (its online vCPUs), on request or by a policy."""


@scale.command("cpu")
@click.argument("direction", type=click.Choice([d.value for d in Direction]))
@click.argument("server", shell_complete=complete.servers)
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


@scale.command("policy")
@click.argument("server", shell_complete=complete.servers)
@click.option(
    "--up-above",
    type=float,
    metavar="PCT",
    help="Scale up one vCPU when the online vCPUs were busier than PCT % over the window.",
)
@click.option(
    "--down-below",
    type=float,
    metavar="PCT",
    help="Scale down one vCPU when they were less busy than PCT % (below --up-above).",
)
@click.option(
    "--window",
    type=float,
    metavar="S",
    default=DEFAULT_WINDOW_INTERVAL,
    show_default=True,
    help="Seconds of measurement the policy judges (a full window is needed before each decision).",
)
@click.option(
    "--cooldown",
    type=float,
    metavar="S",
    default=DEFAULT_COOLDOWN_INTERVAL,
    show_default=True,
    help="Seconds after a scale before the next one.",
)
@click.option("--off", is_flag=True, help="Remove the server's policy.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_state
def policy(
    state: CliState,
    server: str,
    up_above: float | None,
    down_below: float | None,
    window: float,
    cooldown: float,
    off: bool,
    as_json: bool,
) -> None:
    """Scale SERVER automatically by how busy its vCPUs are, or show or remove its policy.

    The host that runs SERVER measures its online vCPUs' busy time (the CPU
    time of their host threads over wall time and online vCPUs) every
    second or so. After a full --window, above --up-above % it scales one
    vCPU up, below --down-below % one down (never past the flavor's limits),
    then waits --cooldown seconds and a new window. Each decision to scale is
    one sentence in the host's log and a compute.instance.autoscale
    notification to the server's group. With no option, prints the policy.

    Examples: servergroup scale policy vm1 --up-above 80 --down-below 20 --window 30;
    servergroup scale policy vm1; servergroup scale policy vm1 --off
    """
    setting = up_above is not None or down_below is not None
    if off and setting:
        raise UsageError("give either --off or the thresholds, not both")
    ctx = click.get_current_context()
    timings = [
        f"--{name}"
        for name in ("window", "cooldown")
        if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT
    ]
    if timings and not setting:
        # They only shape a policy being set: shown or removed, they would be ignored.
        verb = "is" if len(timings) == 1 else "are"
        raise UsageError(
            f"{' and '.join(timings)} {verb} only used when setting a policy: "
            "give --up-above and --down-below too"
        )
    wanted: Policy | None = None
    if setting:
        if up_above is None or down_below is None:
            raise UsageError("give both --up-above and --down-below (or --off to remove it)")
        wanted = Policy(
            up_above=up_above,
            down_below=down_below,
            window_interval=window,
            cooldown_interval=cooldown,
        )
    coordinator = connect(state.config(), start_local=setting or off)

    async def main() -> tuple[PolicyRecord | None, bool]:
        async with coordinator:
            registry = Registry(coordinator)
            if off:
                return None, await remove_policy(registry, server)
            if wanted is not None:
                return await set_policy(registry, server, wanted), True
            return await get_policy(registry, server), False

    record, changed = run_async(main())
    if as_json:
        click.echo(
            json.dumps(
                {"server": server, "policy": None}
                if record is None
                else {"server": server, "policy": policy_json(record)}
            )
        )
        return
    if off:
        click.echo(
            f"server {server}: scaling policy removed"
            if changed
            else f"server {server} had no scaling policy"
        )
    elif record is None:
        click.echo(f"server {server} has no scaling policy")
    else:
        verb = "set" if changed else "is"
        click.echo(f"server {server}: scaling policy {verb}: {record.policy.describe()}")


__all__ = ["scale"]
