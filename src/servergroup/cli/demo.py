"""`servergroup demo`: the main job on the embedded default, step by step."""

from __future__ import annotations

import os
from collections.abc import Sequence

import click

from servergroup.api.standalone import Dashboard
from servergroup.cli.common import CliState, pass_state, run_async
from servergroup.common.errors import ConfigError, RemoteError
from servergroup.config import Config, Endpoint
from servergroup.coordination.local_etcd import LocalEtcd, resolve_endpoints
from servergroup.daemons.up import clean_servers, read_status
from servergroup.daemons.up import down as take_down
from servergroup.daemons.up import up as bring_up
from servergroup.demo import (
    distribution_lab_name,
    run_distribution_demo,
    run_election_demo,
    run_messaging_demo,
    run_replication_demo,
    run_scaling_demo,
)
from servergroup.demo.failover import SERVICE, run_failover_demo
from servergroup.demo.messaging import choose_driver, remove_messaging_demo
from servergroup.scaling.cpus import format_cpu_list
from servergroup.servers.drivers.registry import driver_info

#: The messaging part's server of 2 vCPUs, which the scaling part scales.
SCALED_SERVER = "demo-1"


def _say(text: str) -> None:
    click.echo(text)


def _step(n: int, title: str) -> None:
    click.echo()
    click.secho(f"== {n}. {title}", bold=True)


@click.command()
@pass_state
def demo(state: CliState) -> None:
    """Show servergroup at work on this machine, step by step.

    Starts the managed local etcd (or uses --endpoints), then runs three
    contenders for one ownership, kills the owner with SIGKILL and shows the
    takeover with a larger fencing token and how long it took. Then, on two
    lab hosts (`servergroup up`, reused when already up), three servers
    without IP networking broadcast, query status, and learn that one of them
    was paused; a server of 2 vCPUs is scaled down and up, and prints its own
    view of its CPUs after each; on three lab hosts, an HA service run by the
    Dummy OCF agent moves to the next host when its host freezes, with a
    larger fencing token, and back when it thaws. Then, on a lab of four
    hosts with 1 Gbit/s links, one image goes from one host to the other
    three by multicast, and each receiver's SHA-256 is checked. Last, the kv
    example service runs protected by a backup (checkpoint replication), its
    primary is killed with SIGKILL, and every put a client saw acknowledged
    is read back from the backup.
    """
    config = state.config()
    _step(1, "The shared store")
    endpoints = resolve_endpoints(config)
    if config.managed_etcd:
        status = LocalEtcd(config).status()
        _say(f"Managed local etcd at {endpoints[0]} (pid {status.pid}, data in {status.data_dir}).")
    else:
        _say(f"Using etcd at {', '.join(str(e) for e in endpoints)}.")

    dashboard = _dashboard(config, endpoints)
    try:
        _steps(config, endpoints)
    finally:
        dashboard.stop()


def _dashboard(config: Config, endpoints: Sequence[Endpoint]) -> Dashboard:
    """Serve the live dashboard on this machine's loopback for the demo's length; say where."""
    dashboard = Dashboard(config, endpoints)
    if not config.api.enabled:
        _say("No live dashboard: [api] enabled is off.")
        return dashboard
    try:
        url = dashboard.start()
    except ConfigError as exc:
        _say(f"No live dashboard: {exc}")
        return dashboard
    access = (
        "its buttons need the token of [api] token_file"
        if config.api.token_file
        else "read-only: set [api] token_file for its buttons"
    )
    _say(f"Live dashboard: {url} (open it in a browser on this machine; {access}).")
    return dashboard


def _steps(config: Config, endpoints: Sequence[Endpoint]) -> None:
    _step(2, "Ownership with fencing tokens, and takeover after kill -9")
    result = run_async(run_election_demo(config, endpoints, _say))
    verdict = "within" if result.takeover_seconds <= 1.5 else "over"
    _say(f"Takeover took {result.takeover_seconds:.2f} s ({verdict} the 1.5 s goal).")

    if config.managed_etcd:
        _messaging_and_scaling(config)

    _step(6 if config.managed_etcd else 3, "One image to many lab hosts by multicast")
    _distribution(config)

    _step(7 if config.managed_etcd else 4, "A replicated service survives kill -9 of its primary")
    replicated = run_async(run_replication_demo(config, endpoints, _say))
    if replicated.lost:
        raise RemoteError(f"{replicated.lost} acknowledged puts were lost in the failover.")

    click.echo()
    if config.managed_etcd:
        _say(
            "The managed etcd keeps running for later commands; stop it with "
            "'servergroup etcd --stop'."
        )


def _messaging_and_scaling(config: Config) -> None:
    """Steps 3 to 5, on the lab hosts of `servergroup up` (brought up for them if needed)."""
    _step(3, "Group messaging between servers with no IP networking")
    previous = read_status(config)
    if previous is not None:
        _say("Using the set-up of `servergroup up` that is already running.")
        status = bring_up(config, hosts=max(2, len(previous.hosts)))
    else:
        _say("Bringing up 2 lab hosts (network namespaces), each with a host daemon.")
        status = bring_up(config, hosts=2, lab_name=os.environ.get("SERVERGROUP_LAB"))
    driver, why = choose_driver()
    _say(f"Using {driver.value} servers ({driver_info(driver).description}): {why}.")
    try:
        endpoint = Endpoint.parse(status.etcd)
        result = run_async(
            run_messaging_demo(config, endpoint, _say, driver=driver, keep_servers=True)
        )
        _say(
            f"Broadcast reached {', '.join(result.broadcast_receivers)} (never the sender); "
            f"the pause was notified to {', '.join(result.pause_notified)}."
        )
        _step(4, "A server's vCPUs scaled down and up")
        try:
            scaled = run_async(
                run_scaling_demo(config, endpoint, _say, driver=driver, server=SCALED_SERVER)
            )
        finally:
            run_async(remove_messaging_demo(config, endpoint))
        if not (
            len(scaled.after_down) == len(scaled.before) - 1 and scaled.after_up == scaled.before
        ):
            raise RemoteError(
                f"server {scaled.server} does not see what it was scaled to (see above)."
            )
        _say(
            f"{scaled.server} saw its online CPUs go {format_cpu_list(scaled.before)} -> "
            f"{format_cpu_list(scaled.after_down)} -> {format_cpu_list(scaled.after_up)}, "
            "as its host recorded them."
        )
        _step(5, "One HA service, exactly one instance, through a host freeze")
        hosts = max(3, len(status.hosts))
        _say(f"Bringing the lab to {hosts} hosts for it; each host daemon has the node role.")
        status = bring_up(config, hosts=hosts, lab_name=status.lab)
        names = [h.name for h in status.hosts][:3]
        failover = run_async(run_failover_demo(config, endpoint, _say, lab=status.lab, hosts=names))
        _say(
            f"{SERVICE} ran on {failover.first.node}, then {failover.taken_over.node} "
            f"({failover.takeover_seconds:.2f} s after the freeze), then "
            f"{failover.back.node} again; tokens {failover.first.token} < "
            f"{failover.taken_over.token} < {failover.back.token}."
        )
    finally:
        if previous is None:
            _say("Taking the lab hosts down again (`servergroup down`).")
            take_down(config, clean_servers=clean_servers)


def _distribution(config: Config) -> None:
    """Multicast a generated image on a lab of its own; fail the demo if any copy is wrong."""
    lab_name = distribution_lab_name(os.environ.get("SERVERGROUP_LAB"))
    result = run_distribution_demo(config, _say, lab_name=lab_name)
    if not result.ok:
        raise RemoteError("the image did not reach every lab host intact (see above).")
    _say(
        f"Every receiver has the image, SHA-256 checked; lab {result.lab} and the "
        "image are removed again."
    )
