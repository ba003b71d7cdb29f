"""`servergroup demo`: the main job on the embedded default, step by step."""

from __future__ import annotations

import os

import click

from servergroup.cli.common import CliState, pass_state, run_async
from servergroup.common.errors import RemoteError
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
)
from servergroup.demo.messaging import choose_driver
from servergroup.servers.drivers.registry import driver_info


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
    was paused. Last, on a lab of four hosts with 1 Gbit/s links, one image
    goes from one host to the other three by multicast, and each receiver's
    SHA-256 is checked. Finally the kv example service runs protected by a
    backup (checkpoint replication), its primary is killed with SIGKILL,
    and every put a client saw acknowledged is read back from the backup.
    """
    config = state.config()
    _step(1, "The shared store")
    endpoints = resolve_endpoints(config)
    if config.managed_etcd:
        status = LocalEtcd(config).status()
        _say(f"Managed local etcd at {endpoints[0]} (pid {status.pid}, data in {status.data_dir}).")
    else:
        _say(f"Using etcd at {', '.join(str(e) for e in endpoints)}.")

    _step(2, "Ownership with fencing tokens, and takeover after kill -9")
    result = run_async(run_election_demo(config, endpoints, _say))
    verdict = "within" if result.takeover_seconds <= 1.5 else "over"
    _say(f"Takeover took {result.takeover_seconds:.2f} s ({verdict} the 1.5 s goal).")

    if config.managed_etcd:
        _step(3, "Group messaging between servers with no IP networking")
        _messaging(config)

    _step(4 if config.managed_etcd else 3, "One image to many lab hosts by multicast")
    _distribution(config)

    _step(5 if config.managed_etcd else 4, "A replicated service survives kill -9 of its primary")
    replicated = run_async(run_replication_demo(config, endpoints, _say))
    if replicated.lost:
        raise RemoteError(f"{replicated.lost} acknowledged puts were lost in the failover.")

    click.echo()
    if config.managed_etcd:
        _say(
            "The managed etcd keeps running for later commands; stop it with "
            "'servergroup etcd --stop'."
        )


def _messaging(config: Config) -> None:
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
        result = run_async(
            run_messaging_demo(config, Endpoint.parse(status.etcd), _say, driver=driver)
        )
        _say(
            f"Broadcast reached {', '.join(result.broadcast_receivers)} (never the sender); "
            f"the pause was notified to {', '.join(result.pause_notified)}."
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
