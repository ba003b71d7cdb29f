"""Lab faults under `servergroup up`: real host daemons, real lab servers, a real VM.

`servergroup lab crash HOST` must take down everything a machine would lose:
its host daemon and the servers it runs (lab servers live in namespaces and
cgroups of their own; QEMU daemonizes). `freeze` must stop them all and
`thaw` must give back exactly what it took (a paused server stays paused).
Afterwards `servergroup down` still cleans up everything.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from servergroup.daemons.host import DEFAULT_CHANNEL_DIR
from servergroup.daemons.labfaults import channel_dir_of
from servergroup.lab.faults import find_freezer, is_frozen
from servergroup.servers.drivers.lab import LabDriver
from tests.fixtures.setup import Setup, SetupFactory
from tests.integration.daemons.test_qemu_lifecycle import qemu_pid
from tests.integration.daemons.test_restarts import (
    daemon_pid,
    guest_pid,
    host_pid,
    notification,
    status_of,
    up_state,
    wait_gone,
)

pytestmark = [pytest.mark.root, pytest.mark.timeout(240)]


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def netns_of(setup: Setup, host: str) -> str:
    return next(str(h["netns"]) for h in up_state(setup)["hosts"] if h["name"] == host)


def down_cleanly(setup: Setup) -> None:
    """`servergroup down` removes everything, without waiting for dead hosts."""
    started = time.monotonic()
    done = setup.run("down")
    assert time.monotonic() - started < 30, "down waited for a host that is gone"
    assert "Traceback" not in done.stderr
    assert setup.run("lab", "list", "--json").stdout.count('"up": false') == 1
    assert not list((setup.state_dir / "servers").glob("*"))
    assert not list((setup.state_dir / "qemu").glob("*/*"))


def test_a_host_daemons_channel_directory_is_read_from_its_command_line(tmp_path: Path) -> None:
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    cases = {
        ("servergroup", "-v", "host", "--name", "h1", "--channel-dir", "rel"): tmp_path / "rel",
        ("servergroup", "host", "--channel-dir=/x/y/../z"): Path("/x/z"),
        ("servergroup", "host", "--name", "h1"): DEFAULT_CHANNEL_DIR,
        ("servergroup", "app", "--channel-dir", "rel"): None,
        ("other", "host", "--channel-dir", "rel"): None,
    }
    procs = {args: subprocess.Popen([*sleeper, *args], cwd=tmp_path) for args in cases}
    try:
        for args, expected in cases.items():
            assert channel_dir_of(procs[args].pid) == expected, args
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait(10)


def test_crash_kills_the_host_daemon_and_its_lab_servers(servergroup_up: SetupFactory) -> None:
    setup = servergroup_up(2)
    setup.run("group", "create", "g", "--policy", "soft-anti-affinity")
    setup.run("server", "create", "a", "--group", "g", "--host", "h1")
    setup.run("server", "create", "b", "--group", "g", "--host", "h2")
    watcher = setup.app("b")
    watcher.wait_for(status_of({"a", "b"}))
    hosts = {h: host_pid(setup, h) for h in ("h1", "h2")}
    guests = {s: guest_pid(setup, s) for s in ("a", "b")}

    done = setup.run("lab", "crash", "h1")
    assert done.stdout.startswith("lab host h1 crashed: ")

    wait_gone(hosts["h1"])
    wait_gone(guests["a"])
    assert alive(hosts["h2"])
    assert alive(guests["b"])
    # The machine is gone as far as the others can tell: its lease runs out.
    watcher.wait_for(notification("a", "compute.instance.lost"), timeout=15)
    down_cleanly(setup)
    assert not alive(hosts["h2"])
    assert not alive(guests["b"])


def test_freeze_stops_the_host_and_its_servers_and_thaw_gives_back_exactly_that(
    servergroup_up: SetupFactory,
) -> None:
    setup = servergroup_up(2)
    # Manual evacuation: the thaw must find a and p where the freeze left them.
    setup.run("group", "create", "g", "--policy", "soft-affinity", "--evacuate", "manual")
    for name, host in (("a", "h1"), ("p", "h1"), ("b", "h2")):
        setup.run("server", "create", name, "--group", "g", "--host", host)
    setup.run("server", "pause", "p")
    watcher = setup.app("b")
    watcher.wait_for(status_of({"a", "p", "b"}))
    driver = LabDriver(setup.state_dir)
    host_cgroup = find_freezer().host_cgroup(netns_of(setup, "h1"))
    daemon = host_pid(setup, "h1")

    setup.run("lab", "freeze", "h1")
    assert is_frozen(host_cgroup)
    assert daemon in map(int, (host_cgroup / "cgroup.procs").read_text().split())
    assert is_frozen(driver.cgroups.path("a"))
    assert not is_frozen(driver.cgroups.path("b"))
    listed = setup.json("lab", "list")
    assert [h["frozen"] for h in listed["hosts"]] == [True, False]
    # A frozen machine renews no lease: the others are told its servers are lost.
    watcher.wait_for(notification("a", "compute.instance.lost"), timeout=15)

    setup.run("lab", "thaw", "h1")
    assert is_frozen(host_cgroup) is False
    assert is_frozen(driver.cgroups.path("a")) is False
    assert is_frozen(driver.cgroups.path("p"))  # paused before: still paused
    assert alive(daemon)
    down_cleanly(setup)


def test_down_cleans_up_a_frozen_host(servergroup_up: SetupFactory) -> None:
    setup = servergroup_up(2)
    setup.run("group", "create", "g", "--policy", "soft-anti-affinity")
    setup.run("server", "create", "a", "--group", "g", "--host", "h1")
    setup.run("server", "create", "b", "--group", "g", "--host", "h2")
    daemon, guest = host_pid(setup, "h1"), guest_pid(setup, "a")
    setup.run("lab", "freeze", "h1")
    down_cleanly(setup)
    assert not alive(daemon)
    assert not alive(guest)


def test_cut_takes_the_host_off_etcd_and_heal_brings_it_back(
    servergroup_up: SetupFactory,
) -> None:
    setup = servergroup_up(2)
    # Manual evacuation: on a busy machine the heal may come after the grace
    # period, and a would then be rebuilt on h2 instead of coming back.
    setup.run("group", "create", "g", "--policy", "soft-anti-affinity", "--evacuate", "manual")
    setup.run("server", "create", "a", "--group", "g", "--host", "h1")
    setup.run("server", "create", "b", "--group", "g", "--host", "h2")
    watcher = setup.app("b")
    watcher.wait_for(status_of({"a", "b"}))
    daemon, guest = host_pid(setup, "h1"), guest_pid(setup, "a")

    setup.run("lab", "cut", "h1")
    watcher.wait_for(notification("a", "compute.instance.lost"), timeout=15)
    assert alive(daemon)  # cut off, not dead
    assert alive(guest)
    setup.run("lab", "heal", "h1")
    watcher.wait_for(notification("a", "compute.instance.recovered"), timeout=30)
    assert host_pid(setup, "h1") == daemon
    down_cleanly(setup)


def test_a_qemu_server_freezes_and_dies_with_its_host(servergroup_up: SetupFactory) -> None:
    setup = servergroup_up(2)
    # Manual evacuation: a freeze that outlasts the grace period on a busy machine
    # must not get v rebuilt on h2 before the thaw.
    setup.run("group", "create", "g", "--policy", "soft-affinity", "--evacuate", "manual")
    setup.run("server", "create", "v", "--group", "g", "--host", "h1", "--driver", "qemu")
    setup.run("server", "create", "b", "--group", "g", "--host", "h2")
    vm = qemu_pid(setup, "h1", "v")
    daemon = daemon_pid(setup, "h1")
    assert daemon is not None
    # Daemonized: not the host daemon's child (its supervisor, the subreaper, adopted it).
    assert psutil.Process(vm).ppid() == host_pid(setup, "h1")

    host_cgroup = find_freezer().host_cgroup(netns_of(setup, "h1"))
    setup.run("lab", "freeze", "h1")
    frozen = set(map(int, (host_cgroup / "cgroup.procs").read_text().split()))
    assert {vm, daemon} <= frozen
    assert is_frozen(host_cgroup)
    setup.run("lab", "thaw", "h1")
    assert is_frozen(host_cgroup) is False
    # The VM runs on: its guest answers through the thawed host daemon.
    assert setup.run("server", "exec", "v", "--", "echo", "thawed").stdout == "thawed\n"

    setup.run("lab", "crash", "h1")
    wait_gone(daemon)
    wait_gone(vm)
    assert alive(guest_pid(setup, "b"))
    down_cleanly(setup)
