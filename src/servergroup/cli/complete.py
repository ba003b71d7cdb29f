"""Shell completion of the names a command takes: servers, groups, hosts, services, pairs.

click completes commands and options by itself (see the deployment guide);
these callbacks (`shell_complete=` of an argument or option) add the names
that exist in the store. A completion reads the store once, with the same
options and environment as the command would (the root context's), never
starts the managed local etcd, gives up after `TIMEOUT` seconds, and offers
nothing rather than an error: a shell's TAB must stay quiet and quick.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING

import click
from click.shell_completion import CompletionItem

from servergroup.cli.common import CliState

if TYPE_CHECKING:
    from servergroup.coordination import Coordinator

#: Seconds a completion may take before it offers nothing.
TIMEOUT = 2.0

Complete = Callable[[click.Context, click.Parameter, str], list[CompletionItem]]


def _names(read: Callable[[Coordinator], Awaitable[Iterable[str]]]) -> Complete:
    def complete(
        ctx: click.Context, param: click.Parameter, incomplete: str
    ) -> list[CompletionItem]:
        from servergroup.coordination.connect import connect

        root = ctx.find_root().params
        state = CliState(
            config_path=root.get("config_path"),
            state_dir=root.get("state_dir"),
            endpoints=root.get("endpoints"),
            prefix=root.get("prefix"),
        )

        async def main() -> list[str]:
            async with connect(state.config(), start_local=False) as coordinator:
                return sorted(set(await read(coordinator)))

        found: list[str] = []
        with contextlib.suppress(Exception):  # nothing to offer: the shell shows nothing
            found = asyncio.run(asyncio.wait_for(main(), TIMEOUT))
        return [CompletionItem(name) for name in found if name.startswith(incomplete)]

    return complete


async def _servers(c: Coordinator) -> list[str]:
    from servergroup.servers.registry import Registry

    return [s.name for s in await Registry(c).list_servers()]


async def _groups(c: Coordinator) -> list[str]:
    from servergroup.servers.registry import Registry

    return [g.name for g in await Registry(c).list_groups()]


async def _hosts(c: Coordinator) -> list[str]:
    from servergroup.servers.registry import Registry

    return [h.name for h in await Registry(c).list_hosts()]


async def _services(c: Coordinator) -> list[str]:
    from servergroup.services.client import read_services
    from servergroup.services.status import summaries

    return [s.name for s in summaries(await read_services(c))]


async def _pairs(c: Coordinator) -> list[str]:
    from servergroup.replication.status import pair_names

    return list(await pair_names(c))


servers = _names(_servers)
groups = _names(_groups)
hosts = _names(_hosts)
services = _names(_services)
pairs = _names(_pairs)

__all__ = ["TIMEOUT", "groups", "hosts", "pairs", "servers", "services"]
