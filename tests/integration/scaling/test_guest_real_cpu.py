"""The scale agent on this machine's own CPUs: cpu1 taken offline and back online, for real.

Collected only when SERVERGROUP_REAL_CPU_TESTS=1 (see conftest.py): it
changes the machine for everything running on it. It needs root, a machine
with a cpu1 that can go offline, and nothing pinned to cpu1 alone. cpu1 is
put back online whatever happens. Caveat: on a cgroup v1 machine the
kernel removes an offlined CPU from every child cpuset and does not give it
back when the CPU returns; this test puts cpu1 back into the cpusets that
had it (lab servers' cpusets included), children after their parents.

The agent runs as everywhere else: the real guest agent with its scale
agent (sysfs root `/`, this kernel), in a network namespace of its own,
the test playing the host on the channel.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from servergroup.scaling.cpus import format_cpu_list, parse_cpu_list
from servergroup.scaling.protocol import Result
from tests.integration.scaling.conftest import ScaledGuest

CPU = Path("/sys/devices/system/cpu")
CPUSET_ROOT = Path("/sys/fs/cgroup/cpuset")


def _cpusets_with(cpu: int) -> list[Path]:
    """The v1 cpusets that allow `cpu` now, parents first."""
    if not (CPUSET_ROOT / "cpuset.cpus").exists():
        return []
    found = []
    for path in sorted(CPUSET_ROOT.rglob("cpuset.cpus"), key=lambda p: len(p.parts)):
        with contextlib.suppress(OSError, ValueError):
            if cpu in parse_cpu_list(path.read_text()):
                found.append(path)
    return found


@pytest.fixture
def cpu1_restored() -> Iterator[None]:
    switch = CPU / "cpu1" / "online"
    if not switch.exists() or 1 not in parse_cpu_list((CPU / "online").read_text()):
        pytest.fail("this machine has no online cpu1 that can be taken offline", pytrace=False)
    had_cpu1 = _cpusets_with(1)
    try:
        yield
    finally:
        switch.write_text("1")
        for path in had_cpu1:
            with contextlib.suppress(OSError, ValueError):
                cpus = set(parse_cpu_list(path.read_text())) | {1}
                path.write_text(format_cpu_list(cpus))


def test_cpu1_of_this_machine_offline_and_back(scaled: ScaledGuest, cpu1_restored: None) -> None:
    before = parse_cpu_list((CPU / "online").read_text())
    scaled.guest.scale = ("--sysfs-root", "/", "--scale-sync-timeout", "0")
    scaled.guest.start("--scale-helper", str(scaled.helper("exit 1")))
    host = scaled.host()
    down = host.down()
    assert (down.result, down.cpu) == (Result.SUCCESS, 1), down.err_msg
    assert 1 not in parse_cpu_list((CPU / "online").read_text())
    assert (CPU / "cpu1" / "online").read_text().strip() == "0"
    assert down.online_cpus == parse_cpu_list((CPU / "online").read_text())
    up = host.up(1)
    assert (up.result, up.cpu) == (Result.SUCCESS, 1), up.err_msg
    assert parse_cpu_list((CPU / "online").read_text()) == before
