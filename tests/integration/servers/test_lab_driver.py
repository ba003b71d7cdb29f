"""The lab driver for real (root): namespaces, freezer cgroups, the real guest agent."""

from __future__ import annotations

import functools
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from servergroup.common.process import process_state
from servergroup.servers.drivers.base import Observed, Power, channel_name
from servergroup.servers.drivers.lab import (
    NETNS_DIR,
    Cgroups,
    LabDriver,
    detect_cgroups,
)
from servergroup.servers.model import ServerSpec
from tests.fixtures import wait
from tests.integration.servers.conftest import NameFactory, all_freezers

pytestmark = pytest.mark.root

wait_until = functools.partial(wait.wait_until, timeout=10.0)


class Sync:
    """The driver's blocking methods, called with specs (the async ones only wrap them)."""

    def __init__(self, driver: LabDriver) -> None:
        self.driver = driver
        self.cgroups = driver.cgroups

    def create(self, spec: ServerSpec) -> None:
        self.driver.create_sync(spec.name)

    def start(self, spec: ServerSpec) -> None:
        self.driver.start_sync(spec.name)

    def stop(self, spec: ServerSpec) -> None:
        self.driver.stop_sync(spec.name)

    def pause(self, spec: ServerSpec) -> None:
        self.driver.freeze_sync(spec.name, True)

    def unpause(self, spec: ServerSpec) -> None:
        self.driver.freeze_sync(spec.name, False)

    def delete(self, spec: ServerSpec) -> None:
        self.driver.delete_sync(spec.name, spec.instance)

    def attach(self, spec: ServerSpec, channel_dir: Path) -> None:
        self.driver.attach_sync(spec.name, spec.instance, channel_dir)

    def detach(self, spec: ServerSpec, channel_dir: Path) -> None:
        self.driver.detach_sync(spec.name, spec.instance, channel_dir)

    def observe(self, spec: ServerSpec) -> Observed:
        return self.driver.observe_sync(spec.name, spec.instance)

    def exec_command(self, spec: ServerSpec, argv: list[str]) -> list[str]:
        return self.driver.exec_command(spec, argv)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.driver, name)


def make_spec(name: str) -> ServerSpec:
    return ServerSpec(name=name, instance=f"instance-{name[1:9]}", uuid=name, group="g", host="h0")


@pytest.fixture(params=["detected", "v2"])
def freezer(request: pytest.FixtureRequest) -> Cgroups:
    """The machine's freezer, and cgroup v2's `cgroup.freeze` (mounted here too)."""
    if request.param == "detected":
        return detect_cgroups()
    v2 = [c for c in all_freezers() if c.version == 2]
    assert v2, "this machine has no cgroup v2 hierarchy to test cgroup.freeze on"
    return v2[0]


@pytest.fixture
def counter(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes started in servers by a test, reaped at the end."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def start_counter(
    driver: Sync, spec: ServerSpec, path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    loop = f"i=0; while :; do i=$((i+1)); echo $i > {path}; sleep 0.01; done"
    procs.append(subprocess.Popen(driver.exec_command(spec, ["sh", "-c", loop])))
    wait_until(
        lambda: path.exists() and path.read_text().strip() not in ("", "0"),
        "the counter's first count",
    )


def count(path: Path) -> int:
    text = path.read_text().strip()
    return int(text) if text else 0


def test_server_has_no_ip_networking(driver: LabDriver, server_names: NameFactory) -> None:
    lab_driver = Sync(driver)
    spec = make_spec(server_names())
    lab_driver.create(spec)
    lab_driver.start(spec)
    done = subprocess.run(
        lab_driver.exec_command(spec, ["ip", "-j", "addr", "show"]),
        capture_output=True,
        text=True,
        check=True,
    )
    links = json.loads(done.stdout)
    assert [link["ifname"] for link in links] == ["lo"]
    assert "UP" not in links[0]["flags"]
    assert links[0]["addr_info"] == []
    # The guest agent runs in that namespace.
    observed = lab_driver.observe(spec)
    assert observed.guest_pid is not None
    guest_ns = os.stat(f"/proc/{observed.guest_pid}/ns/net")
    named = os.stat(NETNS_DIR / lab_driver.netns(spec.name))
    assert (guest_ns.st_dev, guest_ns.st_ino) == (named.st_dev, named.st_ino)


def test_pause_freezes_and_unpause_resumes(
    server_state_dir: Path,
    server_names: NameFactory,
    freezer: Cgroups,
    tmp_path: Path,
    counter: list[subprocess.Popen[bytes]],
) -> None:
    driver = Sync(LabDriver(server_state_dir, cgroups=freezer))
    spec = make_spec(server_names())
    driver.create(spec)
    driver.start(spec)
    start_counter(driver, spec, tmp_path / "count", counter)
    driver.pause(spec)
    driver.pause(spec)  # idempotent
    observed = driver.observe(spec)
    assert observed.power is Power.FROZEN
    assert observed.guest_pid is not None
    frozen_at = count(tmp_path / "count")
    time.sleep(0.5)
    assert count(tmp_path / "count") == frozen_at
    driver.unpause(spec)
    assert (driver.observe(spec)).power is Power.RUNNING
    wait_until(lambda: count(tmp_path / "count") > frozen_at + 5, "the counter counting again")


def test_stop_ends_every_process_and_start_relaunches(
    server_state_dir: Path,
    server_names: NameFactory,
    freezer: Cgroups,
    counter: list[subprocess.Popen[bytes]],
) -> None:
    driver = Sync(LabDriver(server_state_dir, cgroups=freezer))
    spec = make_spec(server_names())
    driver.create(spec)
    driver.create(spec)  # idempotent
    driver.start(spec)
    first = (driver.observe(spec)).guest_pid
    driver.start(spec)  # idempotent: the same agent
    assert (driver.observe(spec)).guest_pid == first
    # Something that ignores SIGTERM, and children of its own.
    stubborn = "trap '' TERM; sleep 1000 & sleep 1000 & while :; do sleep 0.1; done"
    counter.append(subprocess.Popen(driver.exec_command(spec, ["sh", "-c", stubborn])))
    wait_until(
        lambda: len(driver.cgroups.procs(spec.name)) >= 4,
        "the stubborn process and its children in the server's cgroup",
    )
    driver.pause(spec)  # stopping a paused server works too
    driver.stop(spec)
    observed = driver.observe(spec)
    assert observed.power is Power.STOPPED
    assert observed.pids == ()
    assert observed.guest_pid is None
    assert first is not None
    assert process_state(first) in (None, "Z")
    driver.stop(spec)  # idempotent
    driver.start(spec)
    again = driver.observe(spec)
    assert again.power is Power.RUNNING
    assert again.guest_pid not in (None, first)
    assert driver.socket_path(spec.name).is_socket()


def test_delete_leaves_nothing(
    driver: LabDriver, server_names: NameFactory, tmp_path: Path
) -> None:
    lab_driver = Sync(driver)
    spec = make_spec(server_names())
    channels = tmp_path / "channels"
    lab_driver.create(spec)
    lab_driver.start(spec)
    lab_driver.attach(spec, channels)
    lab_driver.pause(spec)
    assert lab_driver.known_servers() == [spec.name]
    cpusets = driver.cpusets
    assert cpusets is not None
    assert cpusets.exists(spec.name)
    lab_driver.delete(spec)
    assert lab_driver.known_servers() == []
    assert not (NETNS_DIR / lab_driver.netns(spec.name)).exists()
    assert not lab_driver.cgroups.path(spec.name).exists()
    assert not cpusets.exists(spec.name)
    assert not (channels / channel_name(spec.instance)).is_symlink()
    assert not lab_driver.server_dir(spec.name).exists()
    assert (lab_driver.observe(spec)).power is Power.ABSENT
    lab_driver.delete(spec)  # idempotent


ORPHAN = """
import os, signal, sys
from dataclasses import replace
from pathlib import Path
from typing import Any
from servergroup.servers.drivers.lab import LabDriver
driver = LabDriver(Path(sys.argv[1]))
driver.create_sync(sys.argv[2])
driver.start_sync(sys.argv[2])
driver.attach_sync(sys.argv[2], sys.argv[3], Path(sys.argv[4]))
print(driver.guest_pid(sys.argv[2]), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_new_driver_adopts_what_a_killed_one_started(
    server_state_dir: Path, server_names: NameFactory, tmp_path: Path
) -> None:
    spec = make_spec(server_names())
    channels = tmp_path / "channels"
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            ORPHAN,
            str(server_state_dir),
            spec.name,
            spec.instance,
            str(channels),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == -9, done.stderr
    pid = int(done.stdout.split()[0])
    driver = Sync(LabDriver(server_state_dir))
    observed = driver.observe(spec)
    assert observed.power is Power.RUNNING
    assert observed.guest_pid == pid
    assert observed.channel_dir == channels
    driver.create(spec)
    driver.start(spec)
    assert (driver.observe(spec)).guest_pid == pid  # adopted, not restarted
    # A stale PID file naming another process is not believed.
    (driver.server_dir(spec.name) / "guest.pid").write_text(f"{os.getpid()}\n")
    assert (driver.observe(spec)).guest_pid == pid


def test_channel_moves_between_hosts_without_restarting_the_guest(
    driver: LabDriver, server_names: NameFactory, tmp_path: Path
) -> None:
    lab_driver = Sync(driver)
    spec = make_spec(server_names())
    ch0, ch1 = tmp_path / "h0", tmp_path / "h1"
    link0, link1 = ch0 / channel_name(spec.instance), ch1 / channel_name(spec.instance)
    lab_driver.create(spec)
    lab_driver.start(spec)
    pid = (lab_driver.observe(spec)).guest_pid
    lab_driver.attach(spec, ch0)
    lab_driver.attach(spec, ch0)  # idempotent
    assert os.readlink(link0) == str(lab_driver.socket_path(spec.name))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(str(link0))  # a host relay connects through the link
    lab_driver.detach(spec, ch0)
    lab_driver.attach(spec, ch1)
    assert not link0.is_symlink()
    assert link1.is_symlink()
    observed = lab_driver.observe(spec)
    assert observed.channel_dir == ch1
    assert observed.guest_pid == pid
    lab_driver.attach(spec, ch0)  # attach elsewhere moves the link
    assert link0.is_symlink()
    assert not link1.is_symlink()
    lab_driver.detach(spec, ch0)
    lab_driver.detach(spec, ch0)  # idempotent
    assert (lab_driver.observe(spec)).channel_dir is None
    assert (lab_driver.observe(spec)).guest_pid == pid


def test_two_state_directories_keep_their_servers_apart(
    server_names: NameFactory, tmp_path: Path
) -> None:
    """A user's setup and a test run may both have a server of one name."""
    a = Sync(LabDriver(tmp_path / "a"))
    b = Sync(LabDriver(tmp_path / "b"))
    assert a.driver.netns("s") != b.driver.netns("s")
    spec = make_spec(server_names())
    a.create(spec)
    a.start(spec)
    pid_a = a.observe(spec).guest_pid
    b.create(spec)
    b.start(spec)
    pid_b = b.observe(spec).guest_pid
    assert pid_a is not None
    assert pid_b is not None
    assert pid_a != pid_b
    b.delete(spec)
    # Deleting b's server left a's running, in its own namespace and cgroup.
    assert a.observe(spec).power is Power.RUNNING
    assert a.observe(spec).guest_pid == pid_a
    assert (NETNS_DIR / a.driver.netns(spec.name)).exists()
    assert not (NETNS_DIR / b.driver.netns(spec.name)).exists()
    a.delete(spec)


def test_a_command_run_in_a_pinned_server_runs_on_its_vcpus_cpus(
    driver: LabDriver, server_names: NameFactory
) -> None:
    spec = replace(make_spec(server_names()), vcpus=2)
    driver.create_sync(spec.name)
    driver.start_sync(spec.name)
    cpu = max(os.sched_getaffinity(0))
    for vcpu in (0, 1):
        driver.pin_vcpu_sync(spec, vcpu, [cpu])
    done = subprocess.run(
        driver.exec_command(spec, ["grep", "Cpus_allowed_list", "/proc/self/status"]),
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    )
    assert done.stdout.split() == ["Cpus_allowed_list:", str(cpu)]
    # A new driver (a restarted host daemon) reads the pins back.
    again = LabDriver(driver.state_dir).vcpu_threads_sync(spec)
    assert [v.affinity for v in again] == [(cpu,), (cpu,)]
