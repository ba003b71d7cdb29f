"""ServerManager end to end: two hosts (in-process) on a real etcd, lab servers for real."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from servergroup.servers.drivers.base import DriverError, Observed, Power
from servergroup.servers.drivers.lab import LabDriver
from servergroup.servers.model import Policy, Server, ServerSpec, VmState
from servergroup.servers.operations import (
    NoHostRunning,
    OperationError,
    OperationFailed,
    Operations,
    OperationTimeout,
)
from servergroup.servers.registry import status_key
from tests.fixtures.wait import eventually
from tests.integration.servers.conftest import Host, HostFactory, NameFactory

pytestmark = pytest.mark.root


async def observe(host: Host, server: Server) -> Observed:
    return await host.driver.observe(server.spec)


async def test_lifecycle_and_migrations_on_two_hosts(
    hosts: HostFactory, ops: Operations, server_names: NameFactory
) -> None:
    h0, h1 = await hosts("h0"), await hosts("h1")
    await ops.create_group("g", Policy.AFFINITY)
    name = server_names()

    vm = await ops.create_server(name, "g", vcpus=2, host="h0")
    assert (vm.host, vm.state, vm.status.online_cpus if vm.status else None) == (
        "h0",
        VmState.ACTIVE,
        (0, 1),
    )
    seen = await observe(h0, vm)
    assert seen.power is Power.RUNNING
    assert seen.channel_dir == h0.channel_dir
    first = seen.guest_pid
    assert first is not None
    assert os.readlink(h0.link(vm)) == str(h0.driver.socket_path(name))

    vm = await ops.pause(name)
    assert vm.state is VmState.PAUSED
    assert (await observe(h0, vm)).power is Power.FROZEN
    with pytest.raises(OperationError, match="paused, not stopped"):
        await ops.start(name)

    vm = await ops.unpause(name)
    assert vm.state is VmState.ACTIVE
    seen = await observe(h0, vm)
    assert (seen.power, seen.guest_pid) == (Power.RUNNING, first)

    vm = await ops.stop(name)
    assert vm.state is VmState.STOPPED
    seen = await observe(h0, vm)
    assert (seen.power, seen.pids, seen.channel_dir) == (Power.STOPPED, (), None)
    assert not h0.link(vm).is_symlink()
    with pytest.raises(OperationError, match="start it before pausing"):
        await ops.pause(name)

    vm = await ops.start(name)
    started = (await observe(h0, vm)).guest_pid
    assert started not in (None, first)
    assert h0.link(vm).is_symlink()

    launched = vm.status.launched_at if vm.status else None
    vm = await ops.reboot(name)
    assert vm.status is not None
    assert vm.status.reboot_count == 1
    assert vm.status.launched_at != launched
    rebooted = (await observe(h0, vm)).guest_pid
    assert rebooted not in (None, started)

    with pytest.raises(OperationError, match="already runs on h0"):
        await ops.migrate(name, "h0")
    with pytest.raises(OperationError, match="host h7 is not running"):
        await ops.migrate(name, "h7")

    vm = await ops.migrate(name, "h1", live=True)
    assert (vm.host, vm.state, vm.status.task_state if vm.status else "?") == (
        "h1",
        VmState.ACTIVE,
        None,
    )
    seen = await observe(h1, vm)
    assert seen.guest_pid == rebooted  # live: the guest agent kept running
    assert seen.channel_dir == h1.channel_dir
    assert h1.link(vm).is_symlink()
    assert not h0.link(vm).is_symlink()

    vm = await ops.migrate(name, "h0", live=False)
    assert (vm.host, vm.state) == ("h0", VmState.ACTIVE)
    seen = await observe(h0, vm)
    assert seen.guest_pid not in (None, rebooted)  # cold: started again on h0
    assert h0.link(vm).is_symlink()
    assert not h1.link(vm).is_symlink()

    await ops.delete(name)
    assert await ops.registry.get_server(name) is None
    assert (await observe(h0, vm)).power is Power.ABSENT
    assert not h0.link(vm).is_symlink()
    await ops.delete_group("g")


async def test_dead_guest_agent_is_restarted_and_a_restarted_manager_adopts(
    hosts: HostFactory, ops: Operations, server_names: NameFactory
) -> None:
    h0 = await hosts("h0")
    await ops.create_group("g", Policy.ANTI_AFFINITY)
    name = server_names()
    vm = await ops.create_server(name, "g")
    first = (await observe(h0, vm)).guest_pid
    assert first is not None
    os.kill(first, signal.SIGKILL)

    async def respawned() -> bool:
        pid = (await observe(h0, vm)).guest_pid
        return pid is not None and pid != first

    await eventually(respawned, "the guest agent restarted", 15.0)
    again = (await observe(h0, vm)).guest_pid

    # A host daemon restart: a new manager adopts the running server as it is.
    kv = await ops.registry.coordinator.get(status_key(name))
    assert kv is not None
    await h0.stop_manager()
    await h0.start_manager()
    await asyncio.sleep(1.0)  # a few check intervals
    assert (await observe(h0, vm)).guest_pid == again
    after = await ops.registry.coordinator.get(status_key(name))
    assert after is not None
    assert after.mod_revision == kv.mod_revision  # nothing to report: nothing changed


async def test_refusals_and_timeouts_say_why(
    hosts: HostFactory,
    ops: Operations,
    server_names: NameFactory,
    server_state_dir: Path,
) -> None:
    await ops.create_group("g", Policy.ANTI_AFFINITY)
    with pytest.raises(NoHostRunning, match="no host is running: start one with `servergroup up`"):
        await ops.create_server(server_names(), "g")
    broken = LabDriver(
        server_state_dir, guest_argv=lambda sock, vcpus: ["sh", "-c", "echo no luck; exit 3"]
    )
    h0 = await hosts("h0", broken)
    failing = server_names()
    with pytest.raises(OperationFailed, match=r"could not become active: .*no luck"):
        await ops.create_server(failing, "g")
    # A new request on a failing server fails at once too, with the same reason.
    with pytest.raises(OperationFailed, match=r"could not become rebooted: .*no luck"):
        await ops.reboot(failing)
    with pytest.raises(OperationError, match="1 <= min_vcpus <= vcpus"):
        await ops.create_server(server_names(), "g", vcpus=2, min_vcpus=3)
    with pytest.raises(OperationError, match="not valid"):
        await ops.create_server("bad name", "g")

    h1 = await hosts("h1")
    name = server_names()
    vm = await ops.create_server(name, "g", host="h1")
    assert vm.host == "h1"
    # Its host goes away: the operation waits, then says why it did not happen.
    await h1.stop_manager()
    await h1.coordinator.revoke(h1.lease)
    started = time.monotonic()
    with pytest.raises(
        OperationTimeout,
        match=rf"server {name} did not become paused within 1 s: host h1 is not running "
        rf"\(the request stays for when it is back; `servergroup server evacuate {name}` "
        r"rebuilds the server elsewhere\)$",
    ):
        await ops.pause(name, timeout=1)
    assert time.monotonic() - started < 5
    await h0.stop_manager()


class BlindDriver(LabDriver):
    """A lab driver that cannot look at its servers (as under `ip netns exec`)."""

    async def observe(self, spec: ServerSpec) -> Observed:
        raise DriverError("the lab driver finds no freezer cgroup")


async def test_a_driver_that_cannot_observe_reports_error(
    hosts: HostFactory, ops: Operations, server_names: NameFactory, server_state_dir: Path
) -> None:
    await hosts("h0", BlindDriver(server_state_dir))
    await ops.create_group("g", Policy.AFFINITY)
    with pytest.raises(OperationFailed, match=r"could not become active: .* no freezer cgroup"):
        await ops.create_server(server_names(), "g")
