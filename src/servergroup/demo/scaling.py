"""Demo part: one server scaled down and up, and what it sees of its own CPUs.

A server of 2 vCPUs (a real VM with the qemu driver when this machine can
run them, else a lab server) on the set-up of `servergroup up`: the
messaging part's demo-1 when it is given (`server`: no VM to boot), else
one made for the part and removed at its end, whatever happened. Its own
view of its CPUs is read from inside it (`server exec ... cat`): a VM's
kernel, `/sys/devices/system/cpu/online`; a lab server's CPU tree, which
its scale agent keeps with the kernel's layout (lab servers share this
machine's CPUs, so they never touch its `/sys`). Then `scale_cpu`, what
`servergroup scale cpu` runs, takes vCPU 1 offline and brings it back, the
view printed after each, with the host's record and how long each took.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from servergroup.common.errors import RemoteError
from servergroup.config import Config, Endpoint
from servergroup.coordination import connect
from servergroup.demo.messaging import exec_argv
from servergroup.scaling.client import scale_cpu
from servergroup.scaling.cpus import CpuListError, format_cpu_list, parse_cpu_list
from servergroup.scaling.protocol import Direction
from servergroup.scaling.sysfs import CPU_DIR
from servergroup.servers.drivers.lab import SERVERS_DIR, SYSROOT_NAME
from servergroup.servers.model import DriverKind, Server
from servergroup.servers.operations import Operations
from servergroup.servers.registry import Registry

Say = Callable[[str], None]

GROUP = "demo-scaling"
SERVER = "demo-cpu"
VCPUS = 2
#: How long the server's scale agent may take to be there after the server is active
#: (its boot sync: a VM's /init starts it with the guest agent).
AGENT_TIMEOUT = {DriverKind.LAB: 15.0, DriverKind.QEMU: 60.0}
#: The file a VM's /init writes once the scale agent's boot sync is over.
VM_SCALE_READY = "/run/servergroup/scale.ready"


class ScalingDemoError(RemoteError):
    """The scaling part could not show what it shows (one sentence)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ScalingResult:
    """What the scaling demo saw: the server's own online CPUs at each step."""

    server: str
    host: str
    before: tuple[int, ...]
    after_down: tuple[int, ...]
    after_up: tuple[int, ...]
    down_seconds: float
    up_seconds: float


def online_file(config: Config, server: Server) -> str:
    """Where the server itself reads its online CPUs."""
    if server.spec.driver is DriverKind.LAB:
        root = config.state_dir / SERVERS_DIR / server.name / SYSROOT_NAME
        return str(root / CPU_DIR / "online")
    return f"/{CPU_DIR}/online"


async def _exec(config: Config, server: Server, *argv: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *exec_argv(config, server, argv),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        async with asyncio.timeout(30):
            out, _ = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return proc.returncode or 0, out.decode(errors="replace")


async def own_view(config: Config, server: Server) -> tuple[int, ...]:
    """The server's online CPUs as it sees them from inside."""
    status, out = await _exec(config, server, "cat", online_file(config, server))
    try:
        if status != 0:
            raise CpuListError(f"cat exited with status {status}")
        return parse_cpu_list(out)
    except CpuListError as exc:
        raise ScalingDemoError(
            f"cannot read the online CPUs of server {server.name} from inside it: {exc}"
        ) from None


async def _agent_ready(config: Config, server: Server) -> None:
    """Until the server's scale agent has done its boot sync (a VM) or made its tree (lab)."""
    probe = VM_SCALE_READY if server.spec.driver is DriverKind.QEMU else online_file(config, server)
    deadline = time.monotonic() + AGENT_TIMEOUT[server.spec.driver]
    while (await _exec(config, server, "test", "-e", probe))[0] != 0:
        if time.monotonic() > deadline:
            raise ScalingDemoError(f"the scale agent of server {server.name} did not start")
        await asyncio.sleep(0.2)


async def run_scaling_demo(
    config: Config,
    endpoint: Endpoint,
    say: Say,
    *,
    driver: DriverKind = DriverKind.LAB,
    server: str | None = None,
) -> ScalingResult:
    """Run the scaling part against the set-up of `servergroup up`; narrate with `say`.

    `server`: scale that running server (of at least 2 vCPUs), left as it was
    found; None: make one of `VCPUS` with `driver`, removed at the end.
    """
    async with connect(config, endpoints=(endpoint,)) as coordinator:
        registry = Registry(coordinator)
        if server is not None:
            found = await registry.get_server(server)
            if found is None:
                raise ScalingDemoError(f"server {server} is not there to be scaled")
            return await _script(config, registry, found, say)
        ops = Operations(registry, timeout=config.coordination.operation_timeout)
        await _remove(ops)
        try:
            await ops.create_group(GROUP)
            made = await ops.create_server(SERVER, GROUP, vcpus=VCPUS, min_vcpus=1, driver=driver)
            return await _script(config, registry, made, say)
        finally:
            await _remove(ops)


async def _remove(ops: Operations) -> None:
    for server in await ops.list_servers(GROUP):
        await ops.delete(server.name)
    if any(g.name == GROUP for g in await ops.list_groups()):
        await ops.delete_group(GROUP)


async def _script(config: Config, registry: Registry, server: Server, say: Say) -> ScalingResult:
    name = server.name
    where = "its kernel's" if server.spec.driver is DriverKind.QEMU else "its own CPU tree's"
    say(
        f"Server {name}: {server.spec.vcpus} vCPUs (at least {server.spec.min_vcpus}) on host "
        f"{server.host}; it reads {where} {online_file(config, server)}."
    )
    await _agent_ready(config, server)
    before = await own_view(config, server)
    say(f"  {name} sees CPUs {format_cpu_list(before)} online")
    took: dict[Direction, float] = {}
    seen: dict[Direction, tuple[int, ...]] = {}
    for direction in (Direction.DOWN, Direction.UP):
        started = time.monotonic()
        outcome = await scale_cpu(registry, name, direction)
        took[direction] = time.monotonic() - started
        verb = "offline" if direction is Direction.DOWN else "online"
        say(
            f"servergroup scale cpu {direction.value} {name}: host {outcome.host} took "
            f"vCPU {outcome.cpu} {verb} ({took[direction] * 1000:.0f} ms); its record: "
            f"online {format_cpu_list(outcome.online_cpus)}"
        )
        seen[direction] = await own_view(config, server)
        say(f"  {name} sees CPUs {format_cpu_list(seen[direction])} online")
    return ScalingResult(
        server=name,
        host=server.host,
        before=before,
        after_down=seen[Direction.DOWN],
        after_up=seen[Direction.UP],
        down_seconds=took[Direction.DOWN],
        up_seconds=took[Direction.UP],
    )


__all__ = ["ScalingDemoError", "ScalingResult", "online_file", "run_scaling_demo"]
