"""Demo part: one HA service, exactly one instance, through a host freeze and its thaw.

On the lab hosts of `servergroup up` (three of them), one service run by
the real `ocf:heartbeat:Dummy` agent, with an ordered failover domain
h1 > h2 > h3, is defined as `servergroup service add` defines it. The
part follows it as a client would, through `services.client.watch_master`
(events, never a poll), and prints each move with its fencing token:

1. it starts on h1, the best node of its domain;
2. h1 is frozen (`servergroup lab freeze h1`: the host hangs, its daemon
   with it): its lease ends and h2 takes the service over with a larger
   token; the time from the freeze to h2's `start` is printed;
3. h1 is thawed: its daemon finds its keys gone and starts nothing it does
   not own; the service fails back to h1 (the domain does not say
   `nofailback`), with a larger token again.

The service is removed at the end whatever happened, and the thaw is
always done, so that the lab is left as it was found. Every node keeps the
agent's state file under its own name (`{node}` in the parameters), since
lab hosts share this machine's filesystem.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from servergroup.common.errors import RemoteError
from servergroup.config import Config, Endpoint
from servergroup.coordination import Coordinator, connect
from servergroup.services.client import (
    MasterEvent,
    MasterMoved,
    add_definitions,
    remove,
    watch_master,
)

Say = Callable[[str], None]

SERVICE = "demo-ha"
DOMAIN = "demo-ha-hosts"
#: Time allowed for each move: a lease (1 s by default) to end, then the start.
MOVE_TIMEOUT = 30.0


class FailoverDemoError(RemoteError):
    """The failover part could not show what it shows (one sentence)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FailoverResult:
    """Where the service ran at each step, with its fencing token."""

    first: MasterMoved
    taken_over: MasterMoved
    back: MasterMoved
    takeover_seconds: float


def definition(hosts: Sequence[str], state_dir: str) -> str:
    """The part's service file: Dummy on an ordered domain of `hosts`, best first."""
    nodes = ", ".join(f'"{h}"' for h in hosts)
    return (
        f'[[domain]]\nname = "{DOMAIN}"\nordered = true\nrestricted = true\nnodes = [{nodes}]\n\n'
        f'[[service]]\nname = "{SERVICE}"\nagent = "ocf:heartbeat:Dummy"\ndomain = "{DOMAIN}"\n'
        'address = "{node_ip}:7000"\nstart_timeout = 20\nstop_timeout = 0.4\n'
        f'[service.parameters]\nstate = "{state_dir}/{{node}}-demo-ha.state"\n'
        "[[service.monitor]]\ndepth = 0\ninterval = 2\ntimeout = 1\n"
    )


async def _next_move(
    events: AsyncIterator[MasterEvent], say: Say, *, on: str | None = None
) -> MasterMoved:
    """The next `MasterMoved` (on `on` when given), saying each event on the way."""
    async with asyncio.timeout(MOVE_TIMEOUT):
        async for event in events:
            if isinstance(event, MasterMoved):
                say(
                    f"  event: {event.service} runs on {event.node} at {event.address} "
                    f"(fencing token {event.token})"
                )
                if on is None or event.node == on:
                    return event
            else:
                say(f"  event: {SERVICE} has no running instance")
    raise FailoverDemoError(f"the watch of {SERVICE} ended before it moved")


async def run_failover_demo(
    config: Config, endpoint: Endpoint, say: Say, *, lab: str, hosts: Sequence[str]
) -> FailoverResult:
    """Run the failover part on lab hosts `hosts` (three, best first) of lab `lab`."""
    if len(hosts) < 2:
        raise FailoverDemoError("the failover part needs at least two lab hosts")
    best = hosts[0]
    state_dir = str(config.state_dir.absolute() / "demo")
    async with connect(config, endpoints=(endpoint,)) as coordinator:
        try:
            return await _run(
                coordinator, say, config=config, lab=lab, hosts=hosts, state_dir=state_dir
            )
        finally:
            with contextlib.suppress(RemoteError, OSError):
                await _lab_command(config, lab, "thaw", best)
            with contextlib.suppress(RemoteError):
                await remove(coordinator, SERVICE)
            say(f"Service {SERVICE} removed; {best} runs again.")


async def _lab_command(config: Config, lab: str, command: str, host: str) -> None:
    """`servergroup lab COMMAND --name LAB HOST`, as the user would type it.

    A process of its own: the lab's netlink calls fork into the host's
    namespace, which a process with etcd client threads must not do (and the
    freeze would catch the fork's child in the frozen namespace).
    """
    argv = [sys.executable, "-m", "servergroup", "--state-dir", str(config.state_dir)]
    argv += ["lab", command, "--name", lab, host]
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise FailoverDemoError(
            f"servergroup lab {command} {host} failed: {err.decode(errors='replace').strip()}"
        )


async def _run(
    coordinator: Coordinator,
    say: Say,
    *,
    config: Config,
    lab: str,
    hosts: Sequence[str],
    state_dir: str,
) -> FailoverResult:
    best, second = hosts[0], hosts[1]
    await asyncio.to_thread(Path(state_dir).mkdir, parents=True, exist_ok=True)
    await add_definitions(coordinator, definition(hosts, state_dir))
    say(
        f"Service {SERVICE} (ocf:heartbeat:Dummy) defined with the ordered domain "
        f"{' > '.join(hosts)}; each host's node role decides alike, and only the one "
        "that creates the instance's ownership key in etcd runs it."
    )
    events = watch_master(coordinator, SERVICE)
    try:
        first = await _next_move(events, say, on=best)
        say(f"Freezing {best} (`servergroup lab freeze {best}`): the host hangs.")
        await _lab_command(config, lab, "freeze", best)
        frozen_at = time.monotonic()  # the command returns once the host is frozen
        taken = await _next_move(events, say, on=second)
        takeover = time.monotonic() - frozen_at
        say(
            f"{second} took {SERVICE} over {takeover:.2f} s after the freeze, with token "
            f"{taken.token} > {first.token}: anything {best} might still do with token "
            f"{first.token} is refused where the token is checked."
        )
        say(f"Thawing {best}: it finds its keys gone and starts nothing it does not own.")
        await _lab_command(config, lab, "thaw", best)
        back = await _next_move(events, say, on=best)
        say(f"{SERVICE} failed back to {best} (its domain prefers it), token {back.token}.")
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()
    if not first.token < taken.token < back.token:
        raise FailoverDemoError(
            f"the fencing tokens of {SERVICE} did not grow: {first.token}, {taken.token}, "
            f"{back.token}"
        )
    return FailoverResult(first=first, taken_over=taken, back=back, takeover_seconds=takeover)


__all__ = ["FailoverDemoError", "FailoverResult", "definition", "run_failover_demo"]
