"""`servergroup election`: contend for an ownership key, or show who owns it."""

from __future__ import annotations

import json
import os
import socket
import sys

import click

from servergroup.cli.common import CliState, pass_state, run_async, run_daemon
from servergroup.coordination.connect import connect
from servergroup.coordination.contender import OWNER_PREFIX, run_contender
from servergroup.coordination.local_etcd import resolve_endpoints


@click.group()
def election() -> None:
    """Ownership of a key with fencing tokens (the recipe every HA loop uses)."""


@election.command()
@click.argument("key")
@click.option("--name", default=None, help="This contender's name [default: host:pid].")
@click.option(
    "--ttl",
    type=int,
    default=None,
    help="Lease TTL in whole seconds [default 1; env SERVERGROUP_LEASE_TTL].",
)
@click.option(
    "--work-interval",
    type=float,
    default=0.05,
    show_default=True,
    help="Seconds between the owner's guarded writes.",
)
@pass_state
def contend(
    state: CliState, key: str, name: str | None, ttl: int | None, work_interval: float
) -> None:
    """Campaign for KEY until interrupted, printing one JSON event per line.

    While owner, write a heartbeat to work/KEY guarded by the fencing token,
    so that a stale owner's writes are refused by the store. Kill the owner
    and watch another contender take over with a larger token.
    """
    config = state.config(lease_ttl=ttl)
    endpoints = resolve_endpoints(config)
    run_daemon(
        run_contender(
            endpoints=endpoints,
            config=config.coordination,
            key=key,
            name=name or f"{socket.gethostname()}:{os.getpid()}",
            out=sys.stdout,
            work_interval=work_interval,
        )
    )


@election.command()
@click.argument("key")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_state
def show(state: CliState, key: str, as_json: bool) -> None:
    """Show who owns KEY and with which fencing token."""
    coordinator = connect(state.config(), start_local=False)

    async def read() -> tuple[str | None, int | None]:
        async with coordinator as coord:
            kv = await coord.get(OWNER_PREFIX + key)
        if kv is None:
            return None, None
        return kv.value.decode(errors="replace"), kv.create_revision

    owner, token = run_async(read())
    if as_json:
        click.echo(json.dumps({"key": key, "owner": owner, "token": token}))
    elif owner is None:
        click.echo(f"{key}: no owner")
    else:
        click.echo(f"{key}: owned by {owner} with token {token}")
