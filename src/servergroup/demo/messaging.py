"""Demo part: group messaging between three servers on two lab hosts.

Three servers with no IP networking each run the sample app; one broadcasts,
the others receive it with the group's sequence number; a status query lists
all three; pausing one (its processes frozen) notifies the other two. The
set-up (`servergroup up`) is made and removed by the caller.

The servers are real VMs (the qemu driver) when this machine can run them
(`choose_driver`), lab servers (network namespaces) otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from servergroup.common.errors import ServergroupError
from servergroup.config import Config, Endpoint
from servergroup.coordination import connect
from servergroup.servers.drivers.registry import DriverContext, build_driver
from servergroup.servers.model import DriverKind, Policy, Server
from servergroup.servers.operations import Operations
from servergroup.servers.registry import Registry

Say = Callable[[str], None]

GROUP = "demo"
SERVERS = ("demo-1", "demo-2", "demo-3")
#: demo-1 has 2 vCPUs (at least 1): the scaling part scales it, with no server to boot.
VCPUS = {"demo-1": 2}
#: How long an app may take to show an event (apps in emulated VMs start slowly).
EVENT_TIMEOUT = {DriverKind.LAB: 15.0, DriverKind.QEMU: 90.0}
#: How the demo tells of each kind of server.
NO_NETWORK = {DriverKind.LAB: "no IP networking", DriverKind.QEMU: "a VM with no network device"}
HOW_PAUSED = {DriverKind.LAB: "its processes are frozen", DriverKind.QEMU: "QMP stop"}


def choose_driver() -> tuple[DriverKind, str]:
    """(QEMU or LAB, one sentence why): real VMs when this machine can run them."""
    if os.geteuid() != 0:
        return DriverKind.LAB, "not root, so no VMs"
    from servergroup.servers.drivers.qemu import image
    from servergroup.servers.drivers.qemu.boot import QEMU_BINARY

    if shutil.which(QEMU_BINARY) is None:
        return DriverKind.LAB, f"{QEMU_BINARY} is not installed"
    try:
        built = image.ensure_image()
        accel = image.probe_accel(built)
    except ServergroupError as exc:
        return DriverKind.LAB, f"no guest image: {exc}"
    how = "KVM" if accel == "kvm" else "software emulation (TCG): KVM cannot run the guest here"
    return DriverKind.QEMU, f"QEMU runs Linux VMs on this machine, with {how}"


@dataclass(frozen=True, slots=True, kw_only=True)
class MessagingResult:
    """What the messaging demo saw."""

    placement: dict[str, str]
    broadcast_seq: int
    broadcast_receivers: tuple[str, ...]
    status_names: tuple[str, ...]
    pause_notified: tuple[str, ...]
    pause_notification_seconds: float


class _App:
    """`servergroup app --json` inside one server; its JSON lines as events."""

    def __init__(self, server: str, proc: asyncio.subprocess.Process, timeout: float) -> None:
        self.server = server
        self.timeout = timeout
        self.proc = proc
        self.lines: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, config: Config, server: Server, *args: str) -> _App:
        argv = exec_argv(
            config, server, [sys.executable, "-m", "servergroup", "app", "--json", *args]
        )
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        return cls(server.name, proc, EVENT_TIMEOUT[server.spec.driver])

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            with contextlib.suppress(ValueError):
                self.lines.put_nowait(json.loads(line))

    async def next(self, kind: str, match: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        async with asyncio.timeout(self.timeout):
            while True:
                line = await self.lines.get()
                if line.get("kind") == kind and match(line):
                    return line

    async def stop(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                async with asyncio.timeout(5):
                    await self.proc.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()
        self._reader.cancel()


def exec_argv(config: Config, server: Server, argv: Sequence[str]) -> list[str]:
    """The command line that runs `argv` inside `server`, whatever its driver."""
    driver = build_driver(
        server.spec.driver, DriverContext(state_dir=config.state_dir, host=server.host)
    )
    return driver.exec_command(server.spec, argv)


async def run_messaging_demo(
    config: Config,
    endpoint: Endpoint,
    say: Say,
    *,
    driver: DriverKind = DriverKind.LAB,
    keep_servers: bool = False,
) -> MessagingResult:
    """Run the messaging part against the set-up of `servergroup up`; narrate with `say`.

    `keep_servers`: when it went well, leave its servers running for a later
    part (`remove_messaging_demo` removes them); on a failure they go at once.
    """
    coordination = config.coordination
    async with connect(config, endpoints=(endpoint,)) as coordinator:
        ops = Operations(Registry(coordinator), timeout=coordination.operation_timeout)
        await _remove_earlier_demo(ops)
        apps: list[_App] = []
        done = False
        try:
            result = await _script(ops, config, driver, apps, say)
            done = True
            return result
        finally:
            # Servers first: deleting one thaws and ends every process in it
            # (a frozen app could not even be killed). Kept, none is paused any more.
            if not (done and keep_servers):
                await _remove_earlier_demo(ops)
            for app in apps:
                await app.stop()


async def remove_messaging_demo(config: Config, endpoint: Endpoint) -> None:
    """Remove the servers and the group of the messaging part (kept by `keep_servers`)."""
    async with connect(config, endpoints=(endpoint,)) as coordinator:
        registry = Registry(coordinator)
        await _remove_earlier_demo(
            Operations(registry, timeout=config.coordination.operation_timeout)
        )


async def _remove_earlier_demo(ops: Operations) -> None:
    for server in await ops.list_servers(GROUP):
        await ops.delete(server.name)
    if any(g.name == GROUP for g in await ops.list_groups()):
        await ops.delete_group(GROUP)


async def _script(
    ops: Operations, config: Config, driver: DriverKind, apps: list[_App], say: Say
) -> MessagingResult:
    await ops.create_group(GROUP, Policy.SOFT_ANTI_AFFINITY)
    say(f"Group '{GROUP}' (soft-anti-affinity: spread over the hosts when possible).")
    servers: dict[str, Server] = {}
    for name in SERVERS:
        servers[name] = await ops.create_server(
            name, GROUP, vcpus=VCPUS.get(name, 1), driver=driver
        )
        s = servers[name]
        what = NO_NETWORK[driver]
        say(f"  server {name}: {s.spec.instance} on host {s.host}, {what}")
    for name in SERVERS:
        apps.append(await _App.start(config, servers[name]))
    by_name = {app.server: app for app in apps}
    for app in apps:
        await app.next("status", lambda line: len(line["servers"]) == len(SERVERS))
    say(f"The sample app runs in each server; each got the group's status ({len(SERVERS)}).")

    text = "hello from demo-1"
    say(f"demo-1 broadcasts {text!r}:")
    sender = await _App.start(
        config, servers["demo-1"], "--address", "cgcs.sg.demo", "--timeout", "1", text
    )
    apps.append(sender)
    seq = 0
    receivers = []
    for name in SERVERS[1:]:
        got = await by_name[name].next("broadcast", lambda line: line["text"] == text)
        seq = int(got["seq"])
        receivers.append(name)
        say(f"  {name} received it from {got['source_instance']} (group sequence {seq})")
    status = await sender.next("status", lambda line: len(line["servers"]) == len(SERVERS))
    say("  the sender's status query answered:")
    for info in status["servers"]:
        say(f"    {info['name']}: {info['vm_state']} on {info['host']} ({info['instance_name']})")

    frozen = HOW_PAUSED[driver]
    say(f"Pausing demo-3 ({frozen}):")
    started = time.monotonic()
    await ops.pause("demo-3")
    notified = []
    for name in SERVERS[:2]:
        got = await by_name[name].next(
            "notification", lambda line: line["event"]["payload"]["name"] == "demo-3"
        )
        notified.append(name)
        say(f"  {name} was told: {got['event']['event_type']}")
    took = time.monotonic() - started
    say(f"  ({took:.2f} s from the pause request to the notifications)")
    await ops.unpause("demo-3")
    return MessagingResult(
        placement={n: s.host for n, s in servers.items()},
        broadcast_seq=seq,
        broadcast_receivers=tuple(receivers),
        status_names=tuple(info["name"] for info in status["servers"]),
        pause_notified=tuple(notified),
        pause_notification_seconds=took,
    )


__all__ = [
    "MessagingResult",
    "choose_driver",
    "exec_argv",
    "remove_messaging_demo",
    "run_messaging_demo",
]
