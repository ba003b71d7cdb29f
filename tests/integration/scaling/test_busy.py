"""The host's measure of a server's vCPU busy time (`scaling.busy`), on a real lab server.

A lab server (namespace, cgroups, its real guest agent) with two vCPUs,
measured by `BusyMeter` through the lab driver's `vcpu_threads` while it
idles and while a shell inside it runs a busy loop. Only the direction is
checked (busy > idle), never a figure: the machine is shared.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from servergroup.common.clock import SystemClock
from servergroup.common.process import stop_group, thread_times
from servergroup.scaling.busy import (
    CLOCK_TICKS,
    BusyMeter,
    CpuReading,
    cpu_seconds_between,
    read_threads,
)
from servergroup.scaling.policy import (
    BusySample,
    Decision,
    Policy,
    VcpuLimits,
    decide,
    observe,
    start,
)
from servergroup.scaling.protocol import Direction
from servergroup.servers.drivers.base import DriverError
from servergroup.servers.drivers.lab import LabDriver
from servergroup.servers.model import ServerSpec

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

#: How long each measured interval lasts (a measurement, not a deadline).
INTERVAL = 1.0


@dataclass
class LabServer:
    driver: LabDriver
    spec: ServerSpec
    started: list[subprocess.Popen[bytes]]

    def run(self, *argv: str) -> subprocess.Popen[bytes]:
        """`argv` inside the server, in its own process group (stopped at teardown)."""
        proc = subprocess.Popen(
            self.driver.exec_command(self.spec, list(argv)),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.started.append(proc)
        return proc


@pytest.fixture
async def server() -> AsyncIterator[LabServer]:
    if os.geteuid() != 0:
        pytest.fail("lab servers need root")
    state_dir = Path(tempfile.mkdtemp(prefix="sgb", dir="/tmp"))  # short: socket paths
    name = f"b{secrets.token_hex(4)}"
    spec = ServerSpec(
        name=name, instance=f"instance-{name[1:]}", uuid=name, group="g", host="h1", vcpus=2
    )
    driver = LabDriver(state_dir)
    lab = LabServer(driver=driver, spec=spec, started=[])
    try:
        await driver.create(spec)
        await driver.start(spec)
        yield lab
    finally:
        for proc in lab.started:
            if proc.poll() is None:
                stop_group(proc.pid, term_timeout=3.0)
            proc.wait(5)
        try:
            await driver.delete(spec)
        finally:
            await driver.close()
            shutil.rmtree(state_dir, ignore_errors=True)


async def sample(meter: BusyMeter, online: list[int]) -> BusySample:
    """One interval of INTERVAL seconds, measured from a fresh reading."""
    meter.reset()
    assert await meter.measure(online) is None
    await asyncio.sleep(INTERVAL)
    got = await meter.measure(online)
    assert got is not None
    return got


async def start_busy_loop(lab: LabServer) -> subprocess.Popen[bytes]:
    """A shell spinning inside the server, once its process counts among the vCPUs' threads."""
    before = set(lab.driver.cgroups.procs(lab.spec.name))
    loop = lab.run("sh", "-c", "while :; do :; done")
    for _ in range(200):
        new = set(lab.driver.cgroups.procs(lab.spec.name)) - before
        threads = await lab.driver.vcpu_threads(lab.spec)
        if new and all(new & set(vcpu.thread_ids) for vcpu in threads):
            return loop
        await asyncio.sleep(0.05)
    raise AssertionError("the busy loop never showed among the server's vCPU threads")


async def test_a_busy_loop_measures_busier_than_idle(server: LabServer) -> None:
    meter = BusyMeter(server.driver, server.spec)
    idle = await sample(meter, [0, 1])
    assert idle.vcpus == 2
    assert idle.end_at - idle.begin_at >= INTERVAL
    loop = await start_busy_loop(server)
    busy = await sample(meter, [0, 1])
    assert busy.cpu_seconds > idle.cpu_seconds
    assert busy.busy_fraction > idle.busy_fraction
    # Counting one vCPU only: the same threads (a lab server's threads carry every vCPU),
    # over one vCPU's worth of time, so the fraction is higher still.
    one = await sample(meter, [0])
    assert one.vcpus == 1
    assert one.busy_fraction > idle.busy_fraction
    # Stopped: idle again.
    stop_group(loop.pid, term_timeout=3.0)
    loop.wait(5)
    quiet = await sample(meter, [0, 1])
    assert quiet.busy_fraction < busy.busy_fraction


async def test_two_meters_at_once_agree_on_the_direction(server: LabServer) -> None:
    first = BusyMeter(server.driver, server.spec)
    second = BusyMeter(server.driver, server.spec)
    idle_a, idle_b = await asyncio.gather(sample(first, [0, 1]), sample(second, [0, 1]))
    await start_busy_loop(server)
    busy_a, busy_b = await asyncio.gather(sample(first, [0, 1]), sample(second, [0, 1]))
    assert busy_a.busy_fraction > idle_a.busy_fraction
    assert busy_b.busy_fraction > idle_b.busy_fraction


async def test_a_change_of_online_vcpus_measures_nothing_until_the_next_interval(
    server: LabServer,
) -> None:
    meter = BusyMeter(server.driver, server.spec)
    assert await meter.measure([0, 1]) is None
    assert await meter.measure([0]) is None  # another set: nothing comparable
    await asyncio.sleep(0.05)
    got = await meter.measure([0])
    assert got is not None
    assert got.vcpus == 1
    with pytest.raises(ValueError, match="at least one"):
        await meter.measure([])


async def test_a_server_that_does_not_run_is_an_error_and_the_meter_starts_afresh(
    server: LabServer,
) -> None:
    meter = BusyMeter(server.driver, server.spec)
    assert await meter.measure([0, 1]) is None
    await server.driver.stop(server.spec)
    with pytest.raises(DriverError, match="not running"):
        await meter.measure([0, 1])
    await server.driver.start(server.spec)
    assert await meter.measure([0, 1]) is None  # afresh: no interval across the restart


# -- reading threads (this process's own) ----------------------------------------------


@pytest.fixture
def spinning_thread() -> Iterator[int]:
    """A thread of this process that spins until the test ends; its id."""
    stop = threading.Event()
    ready = threading.Event()
    tid: list[int] = []

    def spin() -> None:
        tid.append(threading.get_native_id())
        ready.set()
        while not stop.is_set():
            pass

    thread = threading.Thread(target=spin, daemon=True)
    thread.start()
    ready.wait(5)
    yield tid[0]
    stop.set()
    thread.join(5)


def test_thread_cpu_time_is_the_thread_s_own(spinning_thread: int) -> None:
    me = threading.get_native_id()
    first = read_threads([spinning_thread, me])
    # Wait (without spinning here) until the spinner has used some CPU.
    event = threading.Event()
    for _ in range(100):
        event.wait(0.05)
        now = thread_times(spinning_thread)
        assert now is not None
        if now.cpu_ticks > first[(now.tid, now.start_time)] + 2:
            break
    second = read_threads([spinning_thread, me])
    spun = second[next(k for k in second if k[0] == spinning_thread)]
    waited = second[next(k for k in second if k[0] == me)]
    assert spun - first[next(k for k in first if k[0] == spinning_thread)] > (
        waited - first[next(k for k in first if k[0] == me)]
    )
    assert read_threads([2**22 + 12345]) == {}  # no such thread: nothing, no error


def test_a_reused_thread_id_is_not_taken_for_the_old_thread() -> None:
    before = CpuReading(at=0.0, vcpus=(0,), ticks={(100, 5): 50, (101, 5): 10})
    # Thread 100 ended; a new one got its id (another start time) with 7 ticks so far.
    after = CpuReading(at=1.0, vcpus=(0,), ticks={(100, 90): 7, (101, 5): 10 + CLOCK_TICKS})
    assert cpu_seconds_between(before, after) == pytest.approx(1.0)


# -- the policy fed by the meter --------------------------------------------------------------


async def first_action(
    meter: BusyMeter, policy: Policy, online: list[int], limits: VcpuLimits
) -> Decision:
    """Measure every 0.1 s and decide after each sample, until the policy acts (or 30 s)."""
    clock = SystemClock()
    state = start(clock.monotonic())
    meter.reset()
    deadline = clock.monotonic() + 30.0
    while clock.monotonic() < deadline:
        got = await meter.measure(online)
        if got is not None:
            state = observe(policy, state, got)
        decision, state = decide(
            policy, state, online=len(online), limits=limits, now=clock.monotonic()
        )
        if decision.direction is not None:
            return decision
        await asyncio.sleep(0.1)
    raise AssertionError(f"the policy never acted; last: {decision.sentence}")


async def test_the_policy_on_measured_samples_scales_a_busy_loop_up_and_idle_down(
    server: LabServer,
) -> None:
    # Thresholds far apart: only "a spinning shell" against "nothing running" matters.
    policy = Policy(up_above=10, down_below=5, window_interval=1.5, cooldown_interval=0)
    limits = VcpuLimits(min_vcpus=1, max_vcpus=2)
    meter = BusyMeter(server.driver, server.spec)
    idle = await first_action(meter, policy, [0, 1], limits)
    assert idle.direction is Direction.DOWN, idle.sentence
    assert idle.target_vcpus == 1
    loop = await start_busy_loop(server)
    busy = await first_action(meter, policy, [0], limits)
    assert busy.direction is Direction.UP, busy.sentence
    assert busy.busy_percent is not None
    assert idle.busy_percent is not None
    assert busy.busy_percent > idle.busy_percent
    stop_group(loop.pid, term_timeout=3.0)
    loop.wait(5)
