"""`servergroup demo`: the main job on the embedded default, step by step."""

from __future__ import annotations

import click

from servergroup.cli.common import CliState, pass_state, run_async
from servergroup.coordination.local_etcd import LocalEtcd, resolve_endpoints
from servergroup.demo import run_election_demo


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
    takeover with a larger fencing token and how long it took.
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

    click.echo()
    if config.managed_etcd:
        _say(
            "The managed etcd keeps running for later commands; stop it with "
            "'servergroup etcd --stop'."
        )
