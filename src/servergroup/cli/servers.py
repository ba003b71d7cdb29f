"""`servergroup group ...` and `servergroup server ...`: server groups and their servers."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from servergroup.cli import complete
from servergroup.cli.common import CliState, Size, fail, pass_state, print_table, run_async
from servergroup.common.errors import PermissionNeeded, UsageError
from servergroup.common.units import MIB
from servergroup.config import Config
from servergroup.coordination.connect import connect
from servergroup.servers.drivers.registry import (
    DRIVERS,
    Driver,
    DriverContext,
    build_driver,
    driver_info,
)
from servergroup.servers.model import (
    MAX_VCPUS,
    Desired,
    DriverKind,
    Evacuate,
    GroupRecord,
    Policy,
    Server,
    VmState,
    server_info,
)
from servergroup.servers.operations import Operations
from servergroup.servers.registry import GroupNotFound, Registry

if TYPE_CHECKING:
    from servergroup.servers.drivers.hypervisor import VcpuThread

T = TypeVar("T")


def _run(
    state: CliState, work: Callable[[Operations], Awaitable[T]], *, reads_only: bool = False
) -> T:
    """Connect to the store, run `work` with the operations, close.

    `reads_only`: `work` only looks, so a managed local etcd that is not
    running is not started for it (the command says so instead).
    """
    config = state.config()
    coordinator = connect(config, start_local=not reads_only)

    async def main() -> T:
        async with coordinator:
            ops = Operations(Registry(coordinator), timeout=config.coordination.operation_timeout)
            return await work(ops)

    return run_async(main())


def _server_json(server: Server, hosts: set[str]) -> dict[str, Any]:
    info = server_info(server, host_alive=server.host in hosts)
    info["desired"] = server.spec.desired.value
    info["spec_host"] = server.spec.host
    info["reboot_count"] = server.status.reboot_count if server.status is not None else 0
    info["error"] = server.status.error if server.status is not None else None
    return info


def _state_text(server: Server, hosts: set[str]) -> str:
    if server.host not in hosts and server.state is not VmState.DELETED:
        return "lost"
    return server.state.value


# --- groups ----------------------------------------------------------------------------


@click.group()
def group() -> None:
    """Server groups: servers that message each other and share a scheduling policy."""


@group.command("create")
@click.argument("name")
@click.option(
    "--policy",
    type=click.Choice([p.value for p in Policy]),
    default=Policy.AFFINITY.value,
    show_default=True,
    help="affinity: every member on one host; anti-affinity: each member on its own host; "
    "soft-*: the same as preferences, never refusing a server.",
)
@click.option(
    "--evacuate",
    type=click.Choice([e.value for e in Evacuate]),
    default=Evacuate.AUTO.value,
    show_default=True,
    help="When a host dies: auto rebuilds its servers of this group on the other hosts after "
    "the grace period; manual waits for `servergroup server evacuate`.",
)
@pass_state
def group_create(state: CliState, name: str, policy: str, evacuate: str) -> None:
    """Create the server group NAME."""
    record = _run(
        state, lambda ops: ops.create_group(name, Policy(policy), evacuate=Evacuate(evacuate))
    )
    click.echo(
        f"group {record.name} created ({record.policy.value}, evacuate {record.evacuate.value})"
    )


@group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_state
def group_list(state: CliState, as_json: bool) -> None:
    """List the server groups and their members."""

    async def work(ops: Operations) -> tuple[list[GroupRecord], list[Server]]:
        return await ops.list_groups(), await ops.list_servers()

    groups, servers = _run(state, work, reads_only=True)
    members = {
        g.name: [
            s.name for s in servers if s.spec.group == g.name and s.state is not VmState.DELETED
        ]
        for g in groups
    }
    if as_json:
        out = [
            {
                "name": g.name,
                "policy": g.policy.value,
                "evacuate": g.evacuate.value,
                "uuid": g.uuid,
                "created_at": g.created_at,
                "members": members[g.name],
            }
            for g in groups
        ]
        click.echo(json.dumps(out))
        return
    if not groups:
        click.echo("no groups")
        return
    rows = [
        [g.name, g.policy.value, g.evacuate.value, ",".join(members[g.name]) or "-"] for g in groups
    ]
    print_table(["NAME", "POLICY", "EVACUATE", "MEMBERS"], rows)


@group.command("delete")
@click.argument("name", shell_complete=complete.groups)
@pass_state
def group_delete(state: CliState, name: str) -> None:
    """Delete the server group NAME (it must have no servers)."""
    _run(state, lambda ops: ops.delete_group(name))
    click.echo(f"group {name} deleted")


# --- servers ---------------------------------------------------------------------------


@click.group()
def server() -> None:
    """Servers: create, inspect, pause, stop, reboot, migrate, delete, run commands in them."""


timeout_option = click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Seconds to wait for the host to carry it out [default: coordination.operation_timeout].",
)


@server.command("create")
@click.argument("name")
@click.option(
    "--group",
    "group_name",
    required=True,
    shell_complete=complete.groups,
    help="The server group to join.",
)
@click.option(
    "--vcpus",
    type=click.IntRange(1, MAX_VCPUS),
    default=1,
    show_default=True,
    help="Its vCPUs (the flavor's most; all online at first).",
)
@click.option(
    "--min-vcpus",
    type=click.IntRange(1, MAX_VCPUS),
    default=1,
    show_default=True,
    help="The fewest vCPUs scaling may leave online.",
)
@click.option(
    "--host",
    default=None,
    shell_complete=complete.hosts,
    help="Run it on this host [default: the group's policy].",
)
@click.option(
    "--driver",
    type=click.Choice([kind.value for kind in DRIVERS]),
    default=DriverKind.LAB.value,
    show_default=True,
    help="; ".join(f"{info.kind.value}: {info.description}" for info in DRIVERS.values()) + ".",
)
@click.option(
    "--memory",
    "memory_mb",
    type=Size(MIB, 64, 1 << 20),
    default=None,
    help="Memory, such as 256, 256MiB or 1GiB (a bare number is MiB) [default: "
    + ", ".join(f"{i.min_memory_mb}MiB for {i.kind.value}" for i in DRIVERS.values())
    + " servers].",
)
@timeout_option
@pass_state
def server_create(
    state: CliState,
    name: str,
    group_name: str,
    vcpus: int,
    min_vcpus: int,
    host: str | None,
    driver: str,
    memory_mb: int | None,
    timeout: float | None,
) -> None:
    """Create the server NAME in a group and wait until it runs.

    A qemu server boots a real VM whose guest agent talks over
    /dev/virtio-ports/cgcs.messaging; its console log is shown by
    `servergroup server console NAME`.
    """
    kind = DriverKind(driver)
    if memory_mb is None:
        memory_mb = driver_info(kind).min_memory_mb
    created = _run(
        state,
        lambda ops: ops.create_server(
            name,
            group_name,
            vcpus=vcpus,
            min_vcpus=min_vcpus,
            host=host,
            driver=kind,
            memory_mb=memory_mb,
            timeout=timeout,
        ),
    )
    click.echo(f"server {name} is active on {created.host} ({created.spec.instance})")


@server.command("list")
@click.option(
    "--group",
    "group_name",
    default=None,
    shell_complete=complete.groups,
    help="Only the servers of this group.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_state
def server_list(state: CliState, group_name: str | None, as_json: bool) -> None:
    """List the servers."""

    async def work(ops: Operations) -> tuple[list[Server], set[str]]:
        if group_name is not None and await ops.registry.get_group(group_name) is None:
            # Not "no servers": a mistyped name would look like an empty group.
            raise GroupNotFound(f"group {group_name!r} does not exist")
        return await ops.list_servers(group_name), set(await ops.live_hosts())

    servers, hosts = _run(state, work, reads_only=True)
    if as_json:
        click.echo(json.dumps([_server_json(s, hosts) for s in servers]))
        return
    if not servers:
        click.echo("no servers")
        return
    rows = [
        [
            s.name,
            s.spec.group,
            s.host,
            _state_text(s, hosts),
            (s.status.task_state or "-") if s.status is not None else "scheduling",
            f"{len(s.status.online_cpus) if s.status is not None else 0}/{s.spec.vcpus}",
            s.spec.instance,
        ]
        for s in servers
    ]
    print_table(["NAME", "GROUP", "HOST", "STATE", "TASK", "VCPUS", "INSTANCE"], rows)


@server.command("show")
@click.argument("name", shell_complete=complete.servers)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_state
def server_show(state: CliState, name: str, as_json: bool) -> None:
    """Show everything about the server NAME."""

    async def work(ops: Operations) -> tuple[Server, set[str]]:
        return await ops.show_server(name), set(await ops.live_hosts())

    found, hosts = _run(state, work, reads_only=True)
    info = _server_json(found, hosts)
    if as_json:
        click.echo(json.dumps(info))
        return
    for key, value in info.items():
        shown = ",".join(map(str, value)) if isinstance(value, list) else value
        click.echo(f"{key + ':':<16}{'-' if shown is None else shown}")


def _lifecycle(verb: str, done: str, doc: str) -> None:
    @server.command(verb, help=doc)
    @click.argument("name", shell_complete=complete.servers)
    @timeout_option
    @pass_state
    def command(state: CliState, name: str, timeout: float | None) -> None:
        result = _run(state, lambda ops: getattr(ops, verb)(name, timeout=timeout))
        where = f" on {result.host}" if isinstance(result, Server) else ""
        click.echo(f"server {name} {done}{where}")


_lifecycle("pause", "is paused", "Pause the server NAME: freeze every process of it.")
_lifecycle("unpause", "is active", "Unpause the server NAME.")
_lifecycle("stop", "is stopped", "Stop the server NAME: end every process of it.")
_lifecycle("start", "is active", "Start the stopped server NAME again.")
_lifecycle("reboot", "has rebooted", "Reboot the server NAME (stop, then start).")
_lifecycle("delete", "is deleted", "Delete the server NAME and everything it had.")
_lifecycle(
    "rebuild",
    "is rebuilt",
    "Rebuild the active server NAME from nothing on its host (its flavor and its online "
    "vCPUs are kept).",
)


@server.command("resize")
@click.argument("name", shell_complete=complete.servers)
@click.option("--vcpus", type=click.IntRange(1, MAX_VCPUS), required=True, help="The new maximum.")
@click.option(
    "--min-vcpus",
    type=click.IntRange(1, MAX_VCPUS),
    default=None,
    help="The new minimum scaling may leave online [default: the old one, at most --vcpus].",
)
@timeout_option
@pass_state
def server_resize(
    state: CliState, name: str, vcpus: int, min_vcpus: int | None, timeout: float | None
) -> None:
    """Give the server NAME a new number of vCPUs; a running server boots again.

    As in seed 003, a resized server comes back with every vCPU of its new
    flavor online, even if it was scaled down before.
    """
    done = _run(state, lambda ops: ops.resize(name, vcpus, min_vcpus, timeout=timeout))
    flavor = f"server {name} has {done.spec.vcpus} vCPU(s) (at least {done.spec.min_vcpus})"
    if done.state is VmState.ACTIVE and done.status is not None:
        click.echo(f"{flavor}, {len(done.status.online_cpus)} online, on {done.host}")
    else:
        # A stopped server boots with the new flavor later; its status still
        # counts the vCPUs it had when it stopped.
        click.echo(f"{flavor}, {done.state.value} on {done.host}")


@server.command("migrate")
@click.argument("name", shell_complete=complete.servers)
@click.option(
    "--to", "to", required=True, shell_complete=complete.hosts, help="The host to move it to."
)
@click.option(
    "--live/--cold",
    default=True,
    show_default=True,
    help="Live: the server keeps running and only its channel moves; cold: stop, move, start.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Move it even if that breaks its group's affinity or anti-affinity policy.",
)
@timeout_option
@pass_state
def server_migrate(
    state: CliState, name: str, to: str, live: bool, force: bool, timeout: float | None
) -> None:
    """Move the server NAME to another host.

    A move that would break its group's (hard) policy is refused unless --force.
    """
    moved = _run(state, lambda ops: ops.migrate(name, to, live=live, force=force, timeout=timeout))
    click.echo(f"server {name} is {moved.state.value} on {moved.host}")


@server.command("evacuate")
@click.argument("name", required=False, shell_complete=complete.servers)
@click.option(
    "--host",
    "host",
    default=None,
    shell_complete=complete.hosts,
    help="Evacuate every server of this dead host.",
)
@click.option(
    "--to",
    "to",
    default=None,
    shell_complete=complete.hosts,
    help="Rebuild it there [default: the group's policy].",
)
@timeout_option
@pass_state
def server_evacuate(
    state: CliState, name: str | None, host: str | None, to: str | None, timeout: float | None
) -> None:
    """Rebuild the server NAME (or every server of --host) of a dead host on a live one.

    Hosts do this by themselves after the grace period for groups created with
    `--evacuate auto` (the default); this is for `--evacuate manual` groups, or
    to choose the host. Refused while the server's host is alive.
    """
    if (name is None) == (host is None):
        raise UsageError("name a server, or give --host HOST, to evacuate")
    rebuilt = _run(state, lambda ops: ops.evacuate(name, host=host, to=to, timeout=timeout))
    for server in rebuilt:
        click.echo(f"server {server.name} is rebuilt: {server.state.value} on {server.host}")


@server.command(
    "exec", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False}
)
@click.argument("name", shell_complete=complete.servers)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@pass_state
def server_exec(state: CliState, name: str, command: tuple[str, ...]) -> None:
    """Run COMMAND inside the server NAME (on this machine); exit with its status.

    In a lab server the command runs in its namespace; in a qemu server it
    runs inside the VM, through the VM's exec port, with stdin, stdout and
    stderr streamed.

    Example: servergroup server exec vm1 -- ip addr
    """
    if command[:1] == ("--",):  # after NAME every word is COMMAND's, the separator too
        command = command[1:]
    if not command:
        raise UsageError("give the command to run after NAME --")

    async def look(ops: Operations) -> tuple[Server, set[str]]:
        return await ops.show_server(name), set(await ops.live_hosts())

    found, hosts = _run(state, look, reads_only=True)
    if found.spec.desired is Desired.DELETED:
        raise UsageError(f"server {name} is being deleted")
    if found.host not in hosts:
        # Its last status (say "active") is stale: what ran there died with its host.
        raise UsageError(
            f"server {name} is lost: its host {found.host} is not running "
            f"(`servergroup server evacuate {name}` rebuilds it elsewhere)"
        )
    if found.state in (VmState.PAUSED, VmState.STOPPED, VmState.DELETED):
        raise UsageError(f"server {name} is {found.state.value}: a command cannot run in it now")
    argv = _driver(state.config(), found).exec_command(found.spec, list(command))
    # Become the command (through sh and `ip netns exec`, which exec too): its
    # PID is ours, so signals sent to `server exec` reach it, and its exit
    # status is ours.
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        fail(f"cannot run {argv[0]}: {exc.strerror}", 127)


def _driver(config: Config, found: Server) -> Driver:
    """The driver of the host that runs `found`, to reach it on this machine (needs root)."""
    if os.geteuid() != 0:
        raise PermissionNeeded(f"reaching a {found.spec.driver.value} server needs root")
    return build_driver(
        found.spec.driver, DriverContext(state_dir=config.state_dir, host=found.host)
    )


@server.command("console")
@click.argument("name", shell_complete=complete.servers)
@click.option("--lines", "-n", type=click.IntRange(0), default=None, help="Only the last N lines.")
@click.option("--follow", "-f", is_flag=True, help="Keep printing what the console writes.")
@pass_state
def server_console(state: CliState, name: str, lines: int | None, follow: bool) -> None:
    """Print the serial console of the qemu server NAME (kernel and init messages)."""
    from servergroup.servers.drivers.qemu.driver import QemuDriver

    found = _run(state, lambda ops: ops.show_server(name), reads_only=True)
    if found.spec.driver is not DriverKind.QEMU:
        raise UsageError(
            f"server {name} is a {found.spec.driver.value} server: only qemu servers have a console"
        )
    driver = QemuDriver(state.config().state_dir, host=found.host, channel_dir=None)
    path = driver.console_path(name)
    try:
        console = path.open("rb")
    except OSError as exc:
        fail(f"cannot read the console of {name} at {path}: {exc.strerror}", 1)
    with console:
        data = console.read()
        if lines is not None:
            data = b"".join(data.splitlines(keepends=True)[-lines:] if lines else [])
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        while follow:
            chunk = console.read()
            if chunk:
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
            else:
                time.sleep(0.2)


@server.command("vcpus")
@click.argument("name", shell_complete=complete.servers)
@click.option(
    "--pin",
    "pins",
    multiple=True,
    metavar="VCPU=CPUS",
    help="Run vCPU VCPU only on host CPUs CPUS (e.g. 1=0 or 0=0,1); repeatable.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_state
def server_vcpus(state: CliState, name: str, pins: tuple[str, ...], as_json: bool) -> None:
    """Show each vCPU of the server NAME with its host threads and CPU affinity; pin them.

    A qemu server's vCPU is one QEMU thread; pinning sets its affinity. A lab
    server has no virtual hardware: its vCPUs share its processes, which may
    run on the CPUs of all its vCPUs (its cpuset), so pinning a vCPU changes
    where the whole server may run.
    """
    found = _run(state, lambda ops: ops.show_server(name), reads_only=True)
    driver = _driver(state.config(), found)
    wanted: list[tuple[int, list[int]]] = []
    for pin in pins:
        vcpu, sep, cpus = pin.partition("=")
        try:
            if not sep:
                raise ValueError
            wanted.append((int(vcpu), [int(c) for c in cpus.split(",")]))
        except ValueError:
            raise UsageError(f"--pin takes VCPU=CPU[,CPU...], not {pin!r}") from None

    async def work() -> tuple[VcpuThread, ...]:
        for vcpu, cpus in wanted:
            await driver.pin_vcpu(found.spec, vcpu, cpus)
        return await driver.vcpu_threads(found.spec)

    threads = run_async(work())
    if as_json:
        rows = [
            {"vcpu": t.index, "thread_ids": list(t.thread_ids), "affinity": list(t.affinity)}
            for t in threads
        ]
        click.echo(json.dumps(rows, indent=2))
        return
    print_table(
        ["VCPU", "THREADS", "HOST CPUS"],
        [
            [str(t.index), ",".join(map(str, t.thread_ids)), ",".join(map(str, t.affinity))]
            for t in threads
        ],
    )


__all__ = ["group", "server"]
