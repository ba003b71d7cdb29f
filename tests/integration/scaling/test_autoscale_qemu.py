"""`servergroup scale policy` on a real VM: its vCPU threads' CPU time decides.

The VM runs the real scale agent its /init starts; the host's autoscaler
measures the QEMU threads of its online vCPUs. Idle, the VM is scaled down
to its minimum (its own kernel takes the vCPU offline); a busy loop started
in it with `servergroup server exec` makes its one online vCPU's thread
busy, and it is scaled up again (its thread pinned to the CPU freed before).
"""

from __future__ import annotations

import subprocess

import pytest

from tests.fixtures.setup import SetupFactory
from tests.integration.scaling.test_autoscale import host_log
from tests.integration.scaling.test_host_qemu import vm_online
from tests.integration.scaling.test_host_scale import POOL, affinity, no_bug, wait_until
from tests.integration.scaling.test_scale_real_agent import recorded

pytestmark = pytest.mark.timeout(400)

STOP = "/tmp/stop-busy"


def test_a_busy_vm_is_scaled_up_and_an_idle_one_down(servergroup_up: SetupFactory) -> None:
    setup = servergroup_up(1, env=POOL)
    setup.run("group", "create", "g")
    setup.run("server", "create", "v", "--group", "g", "--vcpus", "2", "--driver", "qemu")
    setup.run(
        "scale", "policy", "v", "--up-above", "20", "--down-below", "8", "--window", "3",
        "--cooldown", "1",
    )  # fmt: skip
    wait_until(lambda: recorded(setup, "v") == [0], "the idle VM is scaled down", timeout=60)
    assert vm_online(setup, "v") == (0,)
    assert affinity(setup, "v") == {0: [0], 1: [0]}

    loop = subprocess.Popen(
        setup.argv("server", "exec", "v", "--", "sh", "-c", f"while [ ! -e {STOP} ]; do :; done"),
        env=setup.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: recorded(setup, "v") == [0, 1], "the busy VM is scaled up", timeout=60)
        assert vm_online(setup, "v") == (0, 1)
        assert affinity(setup, "v") == {0: [0], 1: [1]}
    finally:
        setup.run("server", "exec", "v", "--", "touch", STOP)
        loop.wait(30)
    text = host_log(setup)
    assert "server v was" in text
    assert "scale up from 1 to 2 vCPUs: done" in text
    no_bug(setup)
