"""Restarts lose nothing: a host daemon, a guest agent, the etcd itself.

Each test runs the real single-machine setup (`servergroup up`), real lab
servers and the sample app inside them, kills one component with SIGKILL,
and checks that the registry is intact, servers were not restarted, the
others were told what happened, and messaging works again without anyone
reconnecting by hand.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from servergroup.common.process import process_state
from tests.fixtures.setup import AppProcess, Setup, SetupFactory
from tests.fixtures.wait import wait_until

pytestmark = pytest.mark.timeout(180)


def up_state(setup: Setup) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((setup.state_dir / "up" / "state.json").read_text())
    return data


def host_pid(setup: Setup, host: str) -> int:
    """The pid of `host`'s supervisor (`servergroup host --supervised`)."""
    return next(int(h["pid"]) for h in up_state(setup)["hosts"] if h["name"] == host)


def kill_host_daemon(setup: Setup, host: str) -> int:
    """kill -9 of `host`'s daemon and its supervisor, so that nobody cleans up or restarts.

    The supervisor is stopped first: it can neither see the death nor pass
    its own on to the daemon. Returns the daemon's pid.
    """
    supervisor = host_pid(setup, host)
    pid = daemon_pid(setup, host)
    assert pid is not None, f"host {host} has no daemon running"
    os.kill(supervisor, signal.SIGSTOP)
    os.kill(pid, signal.SIGKILL)
    os.kill(supervisor, signal.SIGKILL)
    return pid


def daemon_pid(setup: Setup, host: str) -> int | None:
    """The pid of the host daemon itself: its supervisor's child."""
    try:
        children = psutil.Process(host_pid(setup, host)).children()
    except psutil.Error:
        return None
    return children[0].pid if children else None


def guest_pid(setup: Setup, server: str) -> int:
    return int((setup.state_dir / "servers" / server / "guest.pid").read_text().split()[0])


def gone(pid: int) -> bool:
    return process_state(pid) in (None, "Z", "X")


def wait_gone(pid: int, timeout: float = 5.0) -> None:
    wait_until(lambda: gone(pid), f"the end of pid {pid}", timeout)


def notification(name: str, event_type: str) -> Any:
    def check(line: dict[str, Any]) -> bool:
        return (
            line.get("kind") == "notification"
            and line["event"]["event_type"] == event_type
            and line["event"]["payload"]["name"] == name
        )

    return check


def broadcast(text: str) -> Any:
    return lambda line: line.get("kind") == "broadcast" and line.get("text") == text


def status_of(names: set[str]) -> Any:
    return lambda line: (
        line.get("kind") == "status" and {s["name"] for s in line["servers"]} == names
    )


def two_servers(setup: Setup) -> None:
    setup.run("group", "create", "g", "--policy", "soft-anti-affinity")
    setup.run("server", "create", "a", "--group", "g", "--host", "h1")
    setup.run("server", "create", "b", "--group", "g", "--host", "h2")


def send(setup: Setup, server: str, text: str) -> None:
    sender = setup.app(server, "--address", f"cgcs.sg.{os.getpid() % 1000}", "--timeout", "1", text)
    assert sender.proc.wait(20) == 0, sender.stderr


def send_until_received(setup: Setup, sender: str, receiver: AppProcess, text: str) -> None:
    """Broadcast until `receiver` has it: the service is best-effort (seed 000), and
    a message sent while a channel is still reconnecting is dropped, as there."""
    deadline = time.monotonic() + 20
    for attempt in itertools.count():
        send(setup, sender, f"{text} #{attempt}")
        try:
            receiver.wait_for(broadcast(f"{text} #{attempt}"), timeout=1.5)
            return
        except AssertionError:
            assert time.monotonic() < deadline, f"{text!r} never reached {receiver.server}"


def test_host_daemon_killed_then_restarted(servergroup_up: SetupFactory) -> None:
    setup = servergroup_up(2)
    two_servers(setup)
    guests = {s: guest_pid(setup, s) for s in ("a", "b")}
    app_a = setup.app("a")
    app_a.wait_for(status_of({"a", "b"}))
    app_b = setup.app("b")
    app_b.wait_for(status_of({"a", "b"}))

    supervisor = host_pid(setup, "h2")
    pid = daemon_pid(setup, "h2")
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_gone(pid)
    killed_at = time.monotonic()
    app_a.wait_for(notification("b", "compute.instance.lost"), timeout=10)
    lost_after = time.monotonic() - killed_at
    # The supervisor revokes the dead daemon's lease at once; the TTL would be 1.5 s.
    assert lost_after < 5.0
    # (b's record said error/lost then; the supervisor restarts the daemon within
    # a second, so a `server list` now may already find it active again.)

    # The supervisor starts the daemon again by itself; `up` finds nothing to do.
    setup.run("up", "--hosts", "2")
    assert host_pid(setup, "h2") == supervisor
    assert daemon_pid(setup, "h2") not in (None, pid)
    app_a.wait_for(notification("b", "compute.instance.recovered"), timeout=15)
    listed = {s["name"]: s for s in setup.json("server", "list")}
    assert {n: s["vm_state"] for n, s in listed.items()} == {"a": "active", "b": "active"}
    # The servers were not restarted: same guest agents.
    assert {s: guest_pid(setup, s) for s in ("a", "b")} == guests
    # b's guest agent reconnected to the new relay by itself: messages flow both ways.
    send_until_received(setup, "a", app_b, "after restart 1")
    send_until_received(setup, "b", app_a, "after restart 2")


def test_guest_agent_killed_is_respawned(servergroup_up: SetupFactory) -> None:
    setup = servergroup_up(1)
    two_servers_one_host(setup)
    app_a = setup.app("a")
    app_a.wait_for(status_of({"a", "b"}))
    old = guest_pid(setup, "a")
    os.kill(old, signal.SIGKILL)
    wait_gone(old)

    def respawned() -> bool:
        try:
            new = guest_pid(setup, "a")
        except (OSError, ValueError):
            return False
        return new != old and not gone(new)

    wait_until(respawned, "the guest agent's respawn", timeout=15, interval=0.1)
    # The app kept its socket; the new agent reaches it, and the host reaches the agent.
    send_until_received(setup, "b", app_a, "to the new agent")
    listed = {s["name"]: s["vm_state"] for s in setup.json("server", "list")}
    assert listed == {"a": "active", "b": "active"}


def two_servers_one_host(setup: Setup) -> None:
    setup.run("group", "create", "g", "--policy", "affinity")
    setup.run("server", "create", "a", "--group", "g")
    setup.run("server", "create", "b", "--group", "g")


def etcd_pid(setup: Setup) -> int:
    status = json.loads(setup.run("etcd", "--status", "--json").stdout)
    return int(status["pid"])


def test_etcd_killed_and_restarted_loses_nothing(servergroup_up: SetupFactory) -> None:
    setup = servergroup_up(2)
    two_servers(setup)
    before = {s["name"]: (s["host"], s["instance_name"]) for s in setup.json("server", "list")}
    app_a = setup.app("a")
    app_a.wait_for(status_of({"a", "b"}))
    app_b = setup.app("b")
    app_b.wait_for(status_of({"a", "b"}))
    hosts = {h: host_pid(setup, h) for h in ("h1", "h2")}

    pid = etcd_pid(setup)
    os.kill(pid, signal.SIGKILL)
    wait_gone(pid)
    time.sleep(2.0)  # past the lease TTL: the host daemons' sessions are lost
    setup.run("up", "--hosts", "2")  # starts the etcd again, on its data
    after = {s["name"]: (s["host"], s["instance_name"]) for s in setup.json("server", "list")}
    assert after == before
    # The host daemons lived through it and registered again.
    assert {h: host_pid(setup, h) for h in ("h1", "h2")} == hosts
    assert all(not gone(p) for p in hosts.values())

    def back() -> bool:
        return {h["name"] for h in setup.json("group", "list")} == {"g"} and len(
            [s for s in setup.json("server", "list") if s["host_alive"]]
        ) == 2

    wait_until(
        back,
        "the host daemons' return (group g listed, both servers' hosts alive)",
        timeout=15,
        interval=0.2,
    )
    send_until_received(setup, "a", app_b, "after etcd restart")


def test_state_dir_holds_servers(servergroup_up: SetupFactory) -> None:
    """Sanity for the helpers above: the lab driver's layout is what they read."""
    setup = servergroup_up(1)
    two_servers_one_host(setup)
    assert Path(setup.state_dir / "servers" / "a" / "guest.pid").is_file()
    assert not gone(guest_pid(setup, "a"))
