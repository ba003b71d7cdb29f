"""`servergroup lab ...` as a user runs it: a real process, real namespaces."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from servergroup.coordination.etcd_process import free_ports
from servergroup.lab import Lab
from tests.fixtures.lab import unique_lab_name
from tests.integration.lab.stale import lab_objects, leave_stale_lab

pytestmark = pytest.mark.root

FAULTS = ("crash", "freeze", "thaw", "cut", "heal")


def servergroup(
    state_dir: Path, *args: str, env: dict[str, str] | None = None, prefix: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*prefix, sys.executable, "-m", "servergroup", "--state-dir", str(state_dir), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def listed(state_dir: Path, name: str) -> dict[str, Any]:
    done = servergroup(state_dir, "lab", "list", "--json", "--name", name)
    assert done.returncode == 0, done.stderr
    data: dict[str, Any] = json.loads(done.stdout)
    return data


def test_up_list_exec_down(lab_state_dir: Path, lab_name: str) -> None:
    up = servergroup(lab_state_dir, "lab", "up", "--hosts", "2", "--name", lab_name)
    assert up.returncode == 0, up.stderr
    assert f"lab {lab_name}: bridge {lab_name}-br" in up.stdout
    assert "h2" in up.stdout

    data = listed(lab_state_dir, lab_name)
    assert data["up"] is True
    assert [h["name"] for h in data["hosts"]] == ["h1", "h2"]
    h2 = data["hosts"][1]
    assert h2["interface"] == "eth0"
    assert h2["netns"] == f"{lab_name}-h2"
    assert (h2["mtu"], h2["rate"], h2["loss"], h2["link_up"]) == (1500, None, 0.0, True)

    table = servergroup(lab_state_dir, "lab", "list", "--name", lab_name)
    assert table.returncode == 0
    assert h2["address"] + "/24" in table.stdout

    shown = servergroup(
        lab_state_dir, "lab", "exec", "--name", lab_name, "h2", "--", "ip", "-br", "addr"
    )
    assert shown.returncode == 0, shown.stderr
    assert h2["address"] + "/24" in shown.stdout
    failed = servergroup(
        lab_state_dir, "lab", "exec", "--name", lab_name, "h1", "--", "sh", "-c", "exit 7"
    )
    assert failed.returncode == 7
    # The network namespace only: /sys and its cgroups are the machine's (a host
    # daemon places its lab servers there), where `ip netns exec` would remount /sys.
    cgroups = servergroup(
        lab_state_dir, "lab", "exec", "--name", lab_name, "h1", "--", "ls", "/sys/fs/cgroup"
    )
    assert cgroups.returncode == 0, cgroups.stderr
    assert cgroups.stdout.split()  # a fresh /sys shows an empty /sys/fs/cgroup
    assert sorted(cgroups.stdout.split()) == sorted(os.listdir("/sys/fs/cgroup"))

    down = servergroup(lab_state_dir, "lab", "down", "--name", lab_name)
    assert (down.returncode, down.stdout) == (0, f"lab {lab_name} is down.\n")
    assert listed(lab_state_dir, lab_name) == {"name": lab_name, "up": False}
    again = servergroup(lab_state_dir, "lab", "down", "--name", lab_name)
    assert (again.returncode, again.stdout) == (0, f"lab {lab_name} was not up.\n")


def test_faults_as_a_user_runs_them(lab_state_dir: Path, lab_name: str) -> None:
    assert servergroup(lab_state_dir, "lab", "up", "-n", "2", "--name", lab_name).returncode == 0
    freeze = servergroup(lab_state_dir, "lab", "freeze", "--name", lab_name, "h1")
    assert (freeze.returncode, freeze.stdout) == (0, "lab host h1 is frozen (0 processes).\n")
    cut = servergroup(lab_state_dir, "lab", "cut", "--name", lab_name, "h2")
    assert (cut.returncode, cut.stdout) == (0, "lab host h2 is cut off.\n")
    hosts = listed(lab_state_dir, lab_name)["hosts"]
    assert [(h["frozen"], h["link_up"]) for h in hosts] == [(True, True), (False, False)]
    table = servergroup(lab_state_dir, "lab", "list", "--name", lab_name).stdout
    assert "FROZEN" in table
    assert "DOWN (cut)" in table
    for fault, host, said in (
        ("thaw", "h1", "lab host h1 is thawed.\n"),
        ("thaw", "h1", "lab host h1 was not frozen.\n"),
        ("heal", "h2", "lab host h2 is connected again.\n"),
        ("crash", "h2", "lab host h2 crashed: 0 processes killed.\n"),
    ):
        done = servergroup(lab_state_dir, "lab", fault, "--name", lab_name, host)
        assert (done.returncode, done.stdout) == (0, said), done.stderr
    hosts = listed(lab_state_dir, lab_name)["hosts"]
    assert [(h["frozen"], h["link_up"]) for h in hosts] == [(False, True), (False, True)]
    unknown = servergroup(lab_state_dir, "lab", "crash", "--name", lab_name, "h9")
    assert unknown.returncode == 2
    assert unknown.stderr == f"servergroup: lab {lab_name} has no host h9; it has h1..h2.\n"


def test_a_second_up_reshapes(lab_state_dir: Path, lab_name: str) -> None:
    first = servergroup(
        lab_state_dir, "lab", "up", "-n", "3", "--name", lab_name, "--rate", "1gbit"
    )
    assert first.returncode == 0, first.stderr
    before = listed(lab_state_dir, lab_name)
    second = servergroup(
        lab_state_dir, "lab", "up", "-n", "2", "--name", lab_name,
        "--mtu", "9000", "--rate", "100mbit", "--loss", "2.5", "--loss-scope", "all",
    )  # fmt: skip
    assert second.returncode == 0, second.stderr
    after = listed(lab_state_dir, lab_name)
    assert after["network"] == before["network"]
    assert [h["name"] for h in after["hosts"]] == ["h1", "h2"]
    assert {(h["mtu"], h["rate"], h["loss"], h["loss_scope"]) for h in after["hosts"]} == {
        (9000, 100_000_000, 2.5, "all")
    }


def test_the_name_comes_from_the_environment(lab_state_dir: Path, lab_name: str) -> None:
    env = {**os.environ, "SERVERGROUP_LAB": lab_name}
    assert servergroup(lab_state_dir, "lab", "up", "-n", "1", env=env).returncode == 0
    assert listed(lab_state_dir, lab_name)["up"] is True


def test_concurrent_ups_get_different_subnets(lab_state_dir: Path, lab_name: str) -> None:
    names = (lab_name, unique_lab_name())
    try:
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "servergroup", "--state-dir", str(lab_state_dir),
                 "lab", "up", "-n", "1", "--name", name],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            for name in names
        ]  # fmt: skip
        for proc in procs:
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
        networks = {listed(lab_state_dir, name)["network"] for name in names}
        assert len(networks) == 2
    finally:
        Lab(names[1], state_dir=lab_state_dir).down()


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (("up", "-n", "1", "--rate", "fast"), 2, "rate 'fast' is not a rate"),
        (("up", "-n", "1", "--loss", "120"), 2, "loss '120' is out of range"),
        (("up", "-n", "1", "--name", "Bad-Name"), 2, "lab name 'Bad-Name' is not valid"),
        (("exec", "h1", "--", "true"), 2, "is not up"),
        (("exec", "x1", "--", "true"), 2, "'x1' is not a host name"),
        (("crash", "h1"), 2, "is not up"),
        (("freeze", "h1"), 2, "is not up"),
        (("thaw", "h1"), 2, "is not up"),
        (("cut", "h1"), 2, "is not up"),
        (("heal", "h1"), 2, "is not up"),
    ],
)
def test_mistakes_are_one_sentence(
    lab_state_dir: Path, lab_name: str, args: tuple[str, ...], status: int, message: str
) -> None:
    if "--name" not in args:
        args = (*args[:1], "--name", lab_name, *args[1:])
    done = servergroup(lab_state_dir, "lab", *args)
    assert done.returncode == status
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert "Traceback" not in done.stderr


def test_without_root_it_says_so(lab_state_dir: Path, lab_name: str) -> None:
    # Root with every capability dropped is what an unprivileged user has here.
    setpriv = ("setpriv", "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all", "--")
    for args in (
        ("up", "-n", "1"),
        ("list",),
        ("down",),
        ("exec", "h1", "--", "true"),
        ("crash", "h1"),
        ("freeze", "h1"),
        ("thaw", "h1"),
        ("cut", "h1"),
        ("heal", "h1"),
    ):
        done = servergroup(
            lab_state_dir, "lab", args[0], "--name", lab_name, *args[1:], prefix=setpriv
        )
        assert done.returncode == 4, done.stderr
        assert done.stderr == (
            "servergroup: the lab needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) to manage "
            "network namespaces; run it as root.\n"
        )


def test_missing_tools_are_named(lab_state_dir: Path, lab_name: str, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    ip = shutil.which("ip")
    assert ip is not None
    (bin_dir / "ip").symlink_to(ip)
    env = {**os.environ, "PATH": str(bin_dir)}
    done = servergroup(lab_state_dir, "lab", "up", "-n", "1", "--name", lab_name, env=env)
    assert done.returncode == 5
    assert done.stderr == (
        "servergroup: the lab needs tc and nft and nsenter, which are not installed; install "
        "the Debian packages iproute2 and nftables and util-linux.\n"
    )


def test_down_stale(lab_state_dir: Path, tmp_path: Path) -> None:
    stale = unique_lab_name()
    try:
        leave_stale_lab(stale, tmp_path)
        done = servergroup(lab_state_dir, "lab", "down", "--stale")
        assert done.returncode == 0
        # It names the labs it removed (a parallel test's `lab up` may have taken
        # this one first: see stale.py); the lab is gone either way.
        assert done.stdout == "no stale labs.\n" or done.stdout.startswith("removed stale labs: ")
        assert lab_objects(stale) == ([], [])
        done = servergroup(lab_state_dir, "lab", "down", "--stale")
        assert done.returncode == 0
        assert stale not in done.stdout
    finally:
        Lab(stale, state_dir=tmp_path).down()


@pytest.mark.parametrize(
    "command",
    [(), ("up",), ("list",), ("exec",), ("down",), *((f,) for f in FAULTS)],
)
def test_every_command_explains_itself(lab_state_dir: Path, command: tuple[str, ...]) -> None:
    done = servergroup(lab_state_dir, "lab", *command, "--help")
    assert done.returncode == 0
    assert "Usage: " in done.stdout
    assert len(done.stdout.splitlines()) > 6


def test_a_lab_made_from_another_state_directory_is_left_alone(
    lab_state_dir: Path, lab_name: str, tmp_path: Path
) -> None:
    """Namespaces are machine-wide: another state directory's up/down must not touch them."""
    assert (
        servergroup(lab_state_dir, "lab", "up", "--hosts", "2", "--name", lab_name).returncode == 0
    )
    other = tmp_path / "other"
    client, peer = free_ports(2)
    env = {
        **os.environ,
        "SERVERGROUP_LAB": lab_name,
        "SERVERGROUP_ETCD_PORT": str(client),
        "SERVERGROUP_ETCD_PEER_PORT": str(peer),
    }
    env.pop("SERVERGROUP_ETCD_ENDPOINTS", None)

    def still_two_hosts() -> None:
        assert [h["name"] for h in listed(lab_state_dir, lab_name)["hosts"]] == ["h1", "h2"]

    for args in (["lab", "up", "--hosts", "1", "--name", lab_name], ["up", "--hosts", "1"]):
        refused = servergroup(other, *args, env=env)
        assert refused.returncode != 0, args
        last = refused.stderr.strip().splitlines()[-1]
        assert "was made from another state directory" in last, refused.stderr
        assert "Traceback" not in refused.stderr
        still_two_hosts()
    assert not (other / "etcd" / "data").exists()  # `up` stopped before starting an etcd

    refused = servergroup(other, "lab", "down", "--name", lab_name)
    assert refused.returncode != 0
    assert "--force" in refused.stderr
    still_two_hosts()
    done = servergroup(other, "down", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "nothing is up"
    still_two_hosts()

    forced = servergroup(other, "lab", "down", "--name", lab_name, "--force")
    assert forced.returncode == 0, forced.stderr
    assert forced.stdout.strip() == f"lab {lab_name} is down."
    assert not Lab(lab_name, state_dir=lab_state_dir).exists()
