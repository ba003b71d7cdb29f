"""Real labs: namespaces, veths and a bridge, with tc and nftables, on this machine."""

from __future__ import annotations

import json
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from servergroup.common.errors import UsageError
from servergroup.lab import Lab, LabHost, LossScope, remove_stale_labs
from servergroup.lab.plan import make_spec, network_at, plan_lab
from servergroup.lab.state import owner_of, record_of, record_path, write_record
from tests.fixtures.lab import LabFactory, unique_lab_name
from tests.integration.lab.stale import lab_objects, leave_stale_lab

pytestmark = pytest.mark.root

PROBE = Path(__file__).with_name("probe.py")
PORT = 18383


def probe(lab: Lab, host: str, *args: str, timeout: float = 20.0) -> dict[str, Any]:
    done = lab.exec(
        host,
        [sys.executable, str(PROBE), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


def ping(lab: Lab, src: str, dst: LabHost | str, count: int = 3, wait: float = 2.0) -> int:
    """Echo replies received out of `count` requests."""
    address = str(dst.address) if isinstance(dst, LabHost) else dst
    result = probe(lab, src, "ping", address, "--count", str(count), "--wait", str(wait))
    received: int = result["received"]
    return received


def start_receiver(lab: Lab, host: str, *args: str) -> subprocess.Popen[str]:
    """A UDP receiver in `host`, already listening when this returns."""
    proc = lab.popen(
        host,
        [sys.executable, str(PROBE), "recv", "--port", str(PORT), *args],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 10.0)
    assert ready, "the receiver did not start"
    assert proc.stdout.readline().strip() == "ready"
    return proc


def result_of(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=20)
    result: dict[str, Any] = json.loads(out.splitlines()[-1])
    return result


# --- building and reaching ------------------------------------------------------------


def test_hosts_reach_each_other_and_the_root(lab: LabFactory) -> None:
    sg = lab(3)
    status = sg.status()
    assert status is not None
    h1, h2, h3 = status.hosts
    assert [h.name for h in status.hosts] == ["h1", "h2", "h3"]
    assert str(status.root_address).endswith(".1")
    assert str(h1.address).endswith(".11")
    assert h3.address == status.network.network_address + 13
    assert {h.netns for h in status.hosts} == {f"{sg.name}-h{i}" for i in (1, 2, 3)}
    assert all(h.interface == "eth0" and h.link_up and h.mtu == 1500 for h in status.hosts)
    assert ping(sg, "h1", h2) == 3
    assert ping(sg, "h3", h1) == 3
    assert ping(sg, "h2", str(status.root_address)) == 3
    # and the root namespace reaches the hosts (how etcd answers its clients)
    from_root = subprocess.run(
        [sys.executable, str(PROBE), "ping", str(h3.address)],
        capture_output=True,
        text=True,
        check=True,
        timeout=20,
    )
    assert json.loads(from_root.stdout) == {"sent": 3, "received": 3}


def test_a_host_runs_commands_in_its_own_namespace(lab: LabFactory) -> None:
    sg = lab(2)
    h2 = sg.host("h2")
    shown = sg.exec(
        "h2", ["ip", "-4", "-o", "addr", "show", "eth0"], capture_output=True, text=True
    )
    assert f"inet {h2.address}/24 brd {h2.network.broadcast_address}" in shown.stdout
    routes = sg.exec(h2, ["ip", "route", "show"], capture_output=True, text=True).stdout
    assert "224.0.0.0/4 dev eth0" in routes
    assert "default" not in routes  # lab addresses never leave the lab
    lo = sg.exec("h2", ["ip", "-o", "link", "show", "lo"], capture_output=True, text=True).stdout
    assert "UP" in lo
    assert sg.exec("h1", ["sh", "-c", "exit 7"]).returncode == 7
    with pytest.raises(UsageError, match="has no host h5"):
        sg.exec("h5", ["true"])


def test_mtu_applies_end_to_end(lab: LabFactory) -> None:
    sg = lab(2, mtu=9000)
    status = sg.status()
    assert status is not None
    assert status.mtu == 9000
    assert {h.mtu for h in status.hosts} == {9000}
    bridge = subprocess.run(
        ["ip", "-o", "link", "show", status.bridge], capture_output=True, text=True
    ).stdout
    assert "mtu 9000" in bridge
    h2 = status.host("h2")
    receiver = start_receiver(sg, "h2", "--idle", "0.3")
    # 9000 - 20 (IP) - 8 (UDP): the largest datagram that is not fragmented
    sent = probe(sg, "h1", "send", str(h2.address), "--port", str(PORT), "--size", "8972", "--df")
    assert sent == {"sent": 1}
    too_big = probe(
        sg, "h1", "send", str(h2.address), "--port", str(PORT), "--size", "8973", "--df"
    )
    assert too_big["error"] == "Message too long"
    assert result_of(receiver) == {"received": 1, "sizes": [8972]}


def test_multicast_from_one_host_reaches_the_others(lab: LabFactory) -> None:
    sg = lab(3)
    group = "224.238.0.31"
    receivers = [start_receiver(sg, host, "--group", group) for host in ("h2", "h3")]
    assert probe(sg, "h1", "send", group, "--port", str(PORT), "--count", "200") == {"sent": 200}
    assert [result_of(r)["received"] for r in receivers] == [200, 200]


def test_two_labs_live_side_by_side(lab: LabFactory) -> None:
    first, second = lab(1), lab(1)
    a, b = first.status(), second.status()
    assert a is not None
    assert b is not None
    assert a.network != b.network
    assert a.bridge != b.bridge
    assert ping(first, "h1", str(a.root_address), count=1) == 1
    assert ping(second, "h1", str(b.root_address), count=1) == 1


# --- shaping ----------------------------------------------------------------------------


def tbf(netns: str | None, dev: str) -> str:
    where = ["-n", netns] if netns else []
    return subprocess.run(
        ["tc", *where, "qdisc", "show", "dev", dev], capture_output=True, text=True, check=True
    ).stdout


def test_rate_limits_both_ends_of_each_link(lab: LabFactory) -> None:
    sg = lab(2, rate="100mbit")
    for host in sg.hosts():
        assert host.rate == 100_000_000
        assert "tbf" in tbf(host.netns, "eth0")
        assert "rate 100Mbit" in tbf(host.netns, "eth0")
        assert "rate 100Mbit" in tbf(None, host.root_interface)
    h1 = sg.set_rate("h1", "1gbit")
    assert h1.rate == 10**9
    assert "rate 1Gbit" in tbf(h1.netns, "eth0")
    assert "rate 1Gbit" in tbf(None, h1.root_interface)
    assert "rate 100Mbit" in tbf(None, sg.host("h2").root_interface)
    h1 = sg.set_rate("h1", None)
    assert h1.rate is None
    assert "tbf" not in tbf(h1.netns, "eth0")
    assert "tbf" not in tbf(None, h1.root_interface)


def test_loss_drops_about_that_share_of_udp_only(lab: LabFactory) -> None:
    sg = lab(2, loss=50)
    h2 = sg.host("h2")
    assert h2.loss == 50.0
    assert h2.loss_scope is LossScope.UDP
    receiver = start_receiver(sg, "h2")
    probe(sg, "h1", "send", str(h2.address), "--port", str(PORT), "--count", "2000")
    received = result_of(receiver)["received"]
    # Binomial(2000, 0.5): sd 22, so 800..1200 fails by chance about once in 10^18 runs.
    assert 800 <= received <= 1200
    # ICMP is not UDP: every echo and every reply gets through.
    assert ping(sg, "h1", h2, count=20) == 20

    sg.set_loss("h2", 0)
    receiver = start_receiver(sg, "h2")
    probe(sg, "h1", "send", str(h2.address), "--port", str(PORT), "--count", "500")
    assert result_of(receiver)["received"] == 500


def test_a_loss_of_100_percent_drops_every_datagram(lab: LabFactory) -> None:
    sg = lab(2, loss=100)  # nft refused the rule this once rendered
    h2 = sg.host("h2")
    assert h2.loss == 100.0
    receiver = start_receiver(sg, "h2", "--wait", "3")  # nothing comes: it waits that long
    probe(sg, "h1", "send", str(h2.address), "--port", str(PORT), "--count", "200")
    assert result_of(receiver)["received"] == 0
    assert ping(sg, "h1", h2, count=3) == 3  # UDP only
    assert sg.up(2, loss=100).hosts[1].loss == 100.0  # read back as it is: nothing to change


def test_loss_of_all_protocols(lab: LabFactory) -> None:
    sg = lab(2)
    h2 = sg.set_loss("h2", 50, LossScope.ALL)
    assert h2.loss_scope is LossScope.ALL
    # A round trip survives only if the request is not dropped at h2:
    # 20 of 20 would happen by chance once in a million runs.
    assert ping(sg, "h1", h2, count=20, wait=0.5) < 20


# --- link down and up -----------------------------------------------------------------


def test_link_down_cuts_a_host_off_and_up_restores_it(lab: LabFactory) -> None:
    sg = lab(3)
    h2 = sg.set_link("h2", up=False)
    assert not h2.link_up
    assert ping(sg, "h1", h2, count=2, wait=0.5) == 0
    assert ping(sg, "h2", sg.host("h3"), count=2, wait=0.5) == 0
    assert ping(sg, "h1", sg.host("h3")) == 3  # the others do not notice
    h2 = sg.set_link("h2", up=True)
    assert h2.link_up
    assert ping(sg, "h1", h2) == 3


# --- reshaping and removing -----------------------------------------------------------


def test_a_second_up_reshapes_in_place(lab: LabFactory) -> None:
    sg = lab(2, rate="100mbit", loss=5)
    before = sg.status()
    assert before is not None
    again = sg.up(2, rate="100mbit", loss=5)
    assert again == before  # idempotent
    sg.set_link("h1", up=False)
    grown = sg.up(3, mtu=9000)
    assert [h.name for h in grown.hosts] == ["h1", "h2", "h3"]
    assert grown.network == before.network
    assert {(h.mtu, h.rate, h.loss, h.link_up) for h in grown.hosts} == {(9000, None, 0.0, True)}
    assert ping(sg, "h3", grown.host("h1"), count=1) == 1
    shrunk = sg.up(1)
    assert [h.name for h in shrunk.hosts] == ["h1"]
    namespaces, links = lab_objects(sg.name)
    assert (namespaces, sorted(links)) == ([f"{sg.name}-h1"], [f"{sg.name}-br", f"{sg.name}-h1"])


def test_down_removes_everything(lab: LabFactory) -> None:
    sg = lab(2, rate="1gbit", loss=1)
    assert sg.state_path.exists()
    namespaces, links = lab_objects(sg.name)
    assert sorted(namespaces) == [f"{sg.name}-h1", f"{sg.name}-h2"]
    assert sorted(links) == [f"{sg.name}-br", f"{sg.name}-h1", f"{sg.name}-h2"]
    sleeper = sg.popen("h1", ["sleep", "60"])
    assert sg.exists()
    assert sg.down() is True
    assert not sg.exists()
    assert sleeper.wait(timeout=5) == -signal.SIGTERM  # what ran inside was ended
    assert lab_objects(sg.name) == ([], [])
    assert not sg.state_path.exists()
    assert sg.status() is None
    assert sg.down() is False  # nothing left to do
    with pytest.raises(UsageError, match="is not up"):
        sg.hosts()


def test_down_without_a_state_file(lab: LabFactory) -> None:
    sg = lab(2)
    sg.state_path.unlink()
    assert sg.down() is True
    assert lab_objects(sg.name) == ([], [])


def test_a_damaged_lab_is_repaired_by_up(lab: LabFactory) -> None:
    sg = lab(2)
    subprocess.run(["ip", "link", "del", f"{sg.name}-h2"], check=True)
    subprocess.run(
        ["ip", "netns", "exec", f"{sg.name}-h1", "ip", "link", "set", "eth0", "mtu", "1400"],
        check=True,
    )
    repaired = sg.up(2)
    assert [h.mtu for h in repaired.hosts] == [1500, 1500]
    assert ping(sg, "h1", repaired.host("h2"), count=1) == 1


def test_a_half_made_namespace_is_made_again(lab: LabFactory) -> None:
    sg = lab(2)
    # What a process killed inside `ip netns add` leaves: the name, but no namespace.
    subprocess.run(["umount", f"/run/netns/{sg.name}-h2"], check=True)
    assert Path(f"/run/netns/{sg.name}-h2").exists()
    repaired = sg.up(2)
    assert ping(sg, "h1", repaired.host("h2"), count=1) == 1


# --- stale labs -----------------------------------------------------------------------


def test_a_killed_owner_leaves_a_stale_lab_that_is_removed(
    lab: LabFactory, tmp_path: Path, lab_state_dir: Path, lab_name: str
) -> None:
    stale = unique_lab_name()
    try:
        keeper = Lab(lab_name, state_dir=lab_state_dir)  # no owner: never stale
        keeper.up(1)
        mine = lab(1)  # owned by this live process: not stale
        leave_stale_lab(stale, tmp_path)
        assert lab_objects(stale) != ([], [])  # SIGKILL left the lab behind
        # Cleanup in another state directory still finds it by its bridge's marker
        # (unless a parallel test's `lab up` removed it first: see stale.py).
        removed = remove_stale_labs(lab_state_dir)
        assert lab_objects(stale) == ([], [])
        assert mine.name not in removed
        assert keeper.name not in removed
        assert mine.status() is not None
        assert keeper.status() is not None
    finally:
        Lab(stale, state_dir=tmp_path).down()


def test_the_next_up_removes_stale_labs(lab: LabFactory, tmp_path: Path) -> None:
    stale = unique_lab_name()
    try:
        leave_stale_lab(stale, tmp_path)
        lab(1)
        assert lab_objects(stale) == ([], [])
    finally:
        Lab(stale, state_dir=tmp_path).down()


def test_a_lab_killed_before_its_marker_is_found_by_its_state_file(tmp_path: Path) -> None:
    name = unique_lab_name()
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    dead = owner_of(child.pid)
    child.communicate()
    plan = plan_lab(make_spec(name, hosts=1, owner=dead), network_at(511))
    write_record(record_path(tmp_path, name), record_of(plan, dead, complete=False, now=0.0))
    # the bridge exists, but the process died before it set the bridge's alias
    subprocess.run(["ip", "link", "add", f"{name}-br", "type", "bridge"], check=True)
    try:
        assert remove_stale_labs(tmp_path) == [name]
        assert lab_objects(name) == ([], [])
        assert not record_path(tmp_path, name).exists()
    finally:
        Lab(name, state_dir=tmp_path).down()


# --- async callers --------------------------------------------------------------------


async def test_the_api_works_from_async_code(lab: LabFactory) -> None:
    sg = lab(1)
    started = time.monotonic()
    status = sg.status()  # pyroute2 cannot run on this thread's loop: it moves to a thread
    assert status is not None
    assert status.hosts[0].name == "h1"
    assert time.monotonic() - started < 10
