"""`servergroup scale cpu` on a real VM: the vCPU's QEMU thread is pinned on the host.

The guest side is the real scale agent the VM's /init starts, on the VM's
own sysfs, and the host's part runs with real vCPU threads: an offlined
vCPU's thread runs where vCPU 0's runs, and its host CPU goes back to the
pool; scale up pins it to a free one.
"""

from __future__ import annotations

import pytest

from servergroup.scaling.cpus import parse_cpu_list
from tests.fixtures.setup import Setup, SetupFactory
from tests.integration.scaling.test_host_scale import POOL, affinity, no_bug, pool, refused, scale

pytestmark = pytest.mark.timeout(400)


def vm_online(setup: Setup, server: str) -> tuple[int, ...]:
    """The VM's own online CPUs, as its kernel says."""
    done = setup.run("server", "exec", server, "--", "cat", "/sys/devices/system/cpu/online")
    return parse_cpu_list(done.stdout)


def test_a_vm_scaled_down_and_up_has_its_vcpu_threads_pinned(
    servergroup_up: SetupFactory,
) -> None:
    setup = servergroup_up(1, env=POOL)
    setup.run("group", "create", "g")
    setup.run("server", "create", "v", "--group", "g", "--vcpus", "2", "--driver", "qemu")
    assert affinity(setup, "v") == {0: [0, 1], 1: [0, 1]}  # never scaled: they float
    assert vm_online(setup, "v") == (0, 1)

    out = scale(setup, "down", "v")
    assert (out["cpu"], out["online_cpus"], out["host_cpu"]) == (1, [0], 1)
    assert vm_online(setup, "v") == (0,)
    assert affinity(setup, "v") == {0: [0], 1: [0]}
    assert (pool(setup, "h1")["free"], pool(setup, "h1")["placed"]) == ([1], {"v": {"0": 0}})
    assert "minimum" in refused(setup, "scale", "cpu", "down", "v")

    out = scale(setup, "up", "v")
    assert (out["cpu"], out["online_cpus"], out["host_cpu"]) == (1, [0, 1], 1)
    assert vm_online(setup, "v") == (0, 1)
    assert affinity(setup, "v") == {0: [0], 1: [1]}
    assert "its maximum" in refused(setup, "scale", "cpu", "up", "v")
    shown = setup.json("server", "show", "v")
    assert (shown["online_cpus"], shown["vcpus"], shown["min_vcpus"]) == ([0, 1], 2, 1)
    no_bug(setup)
