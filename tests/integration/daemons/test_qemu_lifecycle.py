"""A qemu server's life, as a user runs it: real VMs under `servergroup up`.

One VM with two vCPUs lives through the whole of it, watched by an app in a
lab server of the same group: vCPU offline/online inside the guest, vCPU
threads and pinning, pause (a counter the guest prints stops) and unpause,
live migration to the other host (the counter's process keeps its PID and
counts on), messaging after the move, reboot, stop and start, a QEMU killed
with SIGKILL (reported as an error, cleaned up, booted again), cold migration,
delete.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest

from tests.fixtures.setup import Setup, SetupFactory
from tests.integration.daemons.test_restarts import (
    broadcast,
    notification,
    send_until_received,
    status_of,
    up_state,
    wait_gone,
)

pytestmark = pytest.mark.timeout(420)

COUNTER = re.compile(rb"counter (\d+) (\d+)")

#: Prints "counter PID N" on the console every 10 ms, in its own session so
#: that it outlives the exec session that starts it.
START_COUNTER = (
    "setsid sh -c 'i=0; while :; do echo \"counter $$ $i\"; i=$((i+1)); sleep 0.01; done' "
    "> /dev/console 2>&1 < /dev/null &"
)


def vm_dir(setup: Setup, host: str, name: str) -> Path:
    return setup.state_dir / "qemu" / host / name


def qemu_pid(setup: Setup, host: str, name: str) -> int:
    return int((vm_dir(setup, host, name) / "qemu.pid").read_text().split()[0])


def counter(setup: Setup, hosts: tuple[str, ...], name: str) -> tuple[int, int] | None:
    """The last (pid, n) the guest's counter printed, over the consoles of `hosts`."""
    last: tuple[int, int] | None = None
    for host in hosts:
        try:
            data = (vm_dir(setup, host, name) / "console.log").read_bytes()
        except OSError:
            continue
        found = COUNTER.findall(data)
        if found:
            pid, n = found[-1]
            if last is None or int(n) > last[1]:
                last = (int(pid), int(n))
    return last


def wait_counter_past(
    setup: Setup, hosts: tuple[str, ...], name: str, n: int, timeout: float = 30.0
) -> tuple[int, int]:
    deadline = time.monotonic() + timeout
    while True:
        seen = counter(setup, hosts, name)
        if seen is not None and seen[1] > n:
            return seen
        assert time.monotonic() < deadline, f"the counter of {name} stays at {seen}"
        time.sleep(0.1)


def test_a_qemu_server_through_its_whole_life(servergroup_up: SetupFactory) -> None:
    setup = servergroup_up(2)
    setup.run("group", "create", "g", "--policy", "soft-affinity")
    setup.run("server", "create", "a", "--group", "g", "--host", "h1")
    setup.run("server", "create", "v", "--group", "g", "--host", "h1", "--driver", "qemu",
              "--vcpus", "2")  # fmt: skip
    shown = setup.json("server", "show", "v")
    assert (shown["host"], shown["vm_state"]) == ("h1", "active")
    watcher = setup.app("a")
    watcher.wait_for(status_of({"a", "v"}))

    # The README's commands work as written in the VM: `servergroup` is on the PATH
    # of commands run there, and its app reaches the group.
    helped = setup.run("server", "exec", "v", "--", "servergroup", "app", "--help")
    assert "Usage: servergroup app" in helped.stdout
    setup.run("server", "exec", "v", "--", "servergroup", "app", "from the VM", "--timeout", "3")
    watcher.wait_for(broadcast("from the VM"))

    # The guest has the vCPUs of its flavor, and can take one offline and back.
    cpus = setup.run(
        "server", "exec", "v", "--", "sh", "-c",
        "cat /sys/devices/system/cpu/online; echo 0 > /sys/devices/system/cpu/cpu1/online; "
        "cat /sys/devices/system/cpu/online; echo 1 > /sys/devices/system/cpu/cpu1/online; "
        "cat /sys/devices/system/cpu/online",
    ).stdout.split()  # fmt: skip
    assert cpus == ["0-1", "0", "0-1"]
    # Each vCPU is a host thread of QEMU that can be pinned.
    threads = setup.json("server", "vcpus", "v")
    assert [t["vcpu"] for t in threads] == [0, 1]
    pid = qemu_pid(setup, "h1", "v")
    for t in threads:
        (tid,) = t["thread_ids"]
        assert Path(f"/proc/{pid}/task/{tid}").exists()
    pinned = setup.json("server", "vcpus", "v", "--pin", "1=0")
    assert pinned[1]["affinity"] == [0]
    assert os.sched_getaffinity(pinned[1]["thread_ids"][0]) == {0}
    # A lab server's vCPU is its cpuset: pinning confines every process of it.
    lab = setup.json("server", "vcpus", "a", "--pin", "0=0")
    assert [(t["vcpu"], t["affinity"]) for t in lab] == [(0, [0])]
    assert lab[0]["thread_ids"]
    assert all(os.sched_getaffinity(t) == {0} for t in lab[0]["thread_ids"])
    # Errors are one sentence.
    bad = setup.run("server", "vcpus", "a", "--pin", "1=0", check=False)
    assert bad.returncode == 1
    assert bad.stderr.strip().endswith("has no vCPU 1 (it has 1)."), bad.stderr

    # Pause stops the guest: its counter stops; unpause resumes it.
    setup.run("server", "exec", "v", "--", "sh", "-c", START_COUNTER)
    first = wait_counter_past(setup, ("h1",), "v", 20)
    setup.run("server", "pause", "v")
    watcher.wait_for(notification("v", "compute.instance.pause.end"))
    frozen = counter(setup, ("h1",), "v")
    time.sleep(1.0)
    assert counter(setup, ("h1",), "v") == frozen
    setup.run("server", "unpause", "v")
    watcher.wait_for(notification("v", "compute.instance.unpause.end"))
    assert frozen is not None
    wait_counter_past(setup, ("h1",), "v", frozen[1])

    # Live migration: QEMU's own, to a copy the target host started. The
    # counter's process keeps its PID and counts on, on the target's console.
    before = wait_counter_past(setup, ("h1",), "v", frozen[1])
    setup.run("server", "migrate", "v", "--to", "h2", "--live")
    watcher.wait_for(notification("v", "compute.instance.live_migration.end"))
    shown = setup.json("server", "show", "v")
    assert (shown["host"], shown["vm_state"]) == ("h2", "active")
    after = wait_counter_past(setup, ("h2",), "v", before[1])
    assert after[0] == first[0] == before[0], "the counter was restarted"
    assert not (vm_dir(setup, "h1", "v") / "qemu.pid").exists(), "the source QEMU remains"
    # Messaging reaches the moved VM through h2's relay.
    listener = setup.app("v")
    listener.wait_for(status_of({"a", "v"}))
    send_until_received(setup, "a", listener, "after live migration")
    listener.stop()

    # Reboot (system_reset) and stop/start.
    setup.run("server", "reboot", "v")
    watcher.wait_for(notification("v", "compute.instance.reboot.end"))
    setup.run("server", "stop", "v")
    watcher.wait_for(notification("v", "compute.instance.power_off.end"))
    assert not (vm_dir(setup, "h2", "v") / "qemu.pid").exists()
    setup.run("server", "start", "v")
    watcher.wait_for(notification("v", "compute.instance.power_on.end"))

    # QEMU killed: an error for the group, its sockets cleaned up, booted again.
    pid = qemu_pid(setup, "h2", "v")
    channel = next(Path(h["channel_dir"]) for h in up_state(setup)["hosts"] if h["name"] == "h2")
    sockets = [vm_dir(setup, "h2", "v") / "qmp.sock", *channel.glob("cgcs.messaging.*.sock")]
    assert all(p.exists() for p in sockets)
    os.kill(pid, signal.SIGKILL)
    wait_gone(pid)
    event = watcher.wait_for(notification("v", "compute.instance.error"), timeout=30)
    assert "crashed" in json.dumps(event)
    assert not any(p.exists() for p in sockets), "sockets of the dead QEMU remain"
    deadline = time.monotonic() + 60
    while setup.json("server", "show", "v")["vm_state"] != "active":
        assert time.monotonic() < deadline, "the crashed server was not booted again"
        time.sleep(0.5)
    assert qemu_pid(setup, "h2", "v") != pid

    # Cold migration back: powered off on h2, booted on h1.
    setup.run("server", "migrate", "v", "--to", "h1", "--cold")
    watcher.wait_for(notification("v", "compute.instance.migrate.end"))
    shown = setup.json("server", "show", "v")
    assert (shown["host"], shown["vm_state"]) == ("h1", "active")
    assert not (vm_dir(setup, "h2", "v") / "qemu.pid").exists()
    assert qemu_pid(setup, "h1", "v") > 0
    assert setup.run("server", "exec", "v", "--", "hostname").stdout.strip() == "v"

    setup.run("server", "delete", "v")
    watcher.wait_for(notification("v", "compute.instance.delete.end"))
    assert not vm_dir(setup, "h1", "v").exists()
