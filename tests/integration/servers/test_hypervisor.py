"""The `Hypervisor` contract, run against both drivers with real servers.

A lab server (a namespace, freezer and cpuset cgroups, the real guest
agent) and a qemu server (a real VM booted by `QemuDriver` from the cached
guest image), each with two vCPUs. What each check reads back is the
kernel's: `os.sched_getaffinity` of the host threads the driver reports,
and `/proc/<pid>/task/` of the server's processes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from servergroup.servers.drivers.base import DriverError
from servergroup.servers.drivers.hypervisor import VcpuThread
from servergroup.servers.drivers.registry import Driver, DriverContext, build_driver
from servergroup.servers.model import DriverKind, ServerSpec
from tests.integration.servers.conftest import NameFactory

pytestmark = [pytest.mark.root, pytest.mark.timeout(240)]

#: The host CPUs a server may use here (this process's own affinity, as the tests run).
HOST_CPUS = tuple(sorted(os.sched_getaffinity(0)))


@dataclass
class Running:
    """A running server of one driver, with what the contract needs to check it."""

    driver: Driver
    spec: ServerSpec

    async def pids(self) -> tuple[int, ...]:
        return (await self.driver.observe(self.spec)).pids

    async def vcpus(self) -> tuple[VcpuThread, ...]:
        return await self.driver.vcpu_threads(self.spec)


def _spec(name: str, kind: DriverKind) -> ServerSpec:
    return ServerSpec(
        name=name,
        instance=f"instance-{name[1:9]}",
        uuid=name,
        group="g",
        host="h1",
        vcpus=2,
        driver=kind,
        memory_mb=256,
    )


def _kill_qemu(server_dir: Path) -> None:
    """Teardown by force: SIGKILL our QEMU (checked by its command line), if it still runs."""
    try:
        pid = int((server_dir / "qemu.pid").read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError, IndexError):
        return
    if os.fsencode(server_dir / "qmp.sock") not in cmdline:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.fixture(params=list(DriverKind), ids=lambda kind: kind.value)
async def running(
    request: pytest.FixtureRequest, server_names: NameFactory
) -> AsyncIterator[Running]:
    kind: DriverKind = request.param
    state_dir = Path(tempfile.mkdtemp(prefix="sgh", dir="/tmp"))  # short: socket paths
    driver = build_driver(
        kind, DriverContext(state_dir=state_dir, host="h1", channel_dir=state_dir / "ch")
    )
    spec = _spec(server_names(), kind)
    try:
        await driver.create(spec)
        await driver.start(spec)
        yield Running(driver, spec)
    finally:
        try:
            await driver.delete(spec)
        finally:
            await driver.close()
            _kill_qemu(state_dir / "qemu" / "h1" / spec.name)
            shutil.rmtree(state_dir, ignore_errors=True)


def _affinity(tid: int) -> set[int]:
    return os.sched_getaffinity(tid)


async def test_each_vcpu_is_carried_by_threads_of_the_server(running: Running) -> None:
    vcpus = await running.vcpus()
    assert [v.index for v in vcpus] == [0, 1]
    pids = await running.pids()
    tasks = {int(t) for pid in pids for t in os.listdir(f"/proc/{pid}/task")}
    union = set().union(*(v.affinity for v in vcpus))
    for vcpu in vcpus:
        assert vcpu.thread_ids, f"vCPU {vcpu.index} has no thread"
        assert set(vcpu.thread_ids) <= tasks, "a vCPU thread that is not the server's"
        assert vcpu.affinity
        assert set(vcpu.affinity) <= set(HOST_CPUS)
        for tid in vcpu.thread_ids:
            # It may run wherever its vCPU may, and nowhere the server's vCPUs may not.
            assert set(vcpu.affinity) <= _affinity(tid) <= union


async def test_pinning_confines_the_vcpu_and_can_be_undone(running: Running) -> None:
    first, last = HOST_CPUS[0], HOST_CPUS[-1]
    pinned = await running.driver.pin_vcpu(running.spec, 1, [last])
    assert (pinned.index, pinned.affinity) == (1, (last,))
    vcpus = await running.vcpus()
    assert vcpus[1].affinity == (last,)
    union = set().union(*(v.affinity for v in vcpus))
    for vcpu in vcpus:
        for tid in vcpu.thread_ids:
            assert _affinity(tid) <= union

    # Every vCPU on one CPU: every thread of the server's vCPUs runs only there.
    for index in (0, 1):
        await running.driver.pin_vcpu(running.spec, index, [first])
    for vcpu in await running.vcpus():
        assert vcpu.affinity == (first,)
        for tid in vcpu.thread_ids:
            assert _affinity(tid) == {first}

    # And back: every CPU again.
    for index in (0, 1):
        await running.driver.pin_vcpu(running.spec, index, HOST_CPUS)
    for vcpu in await running.vcpus():
        assert vcpu.affinity == HOST_CPUS
        for tid in vcpu.thread_ids:
            assert _affinity(tid) == set(HOST_CPUS)


async def test_impossible_requests_are_one_sentence(running: Running) -> None:
    driver, spec = running.driver, running.spec
    with pytest.raises(DriverError, match="no vCPU 2"):
        await driver.pin_vcpu(spec, 2, [HOST_CPUS[0]])
    with pytest.raises(DriverError, match="cannot pin vCPU 0"):
        await driver.pin_vcpu(spec, 0, [4095])
    await driver.stop(spec)
    with pytest.raises(DriverError, match="not running"):
        await driver.vcpu_threads(spec)
