"""Seed 000's validation procedure, steps a-g, run as a user would run it.

Everything is real: `servergroup up` (managed etcd, lab hosts with host
daemons), lab servers (network namespaces without IP networking, each with
its guest agent), and the sample app run inside the servers with `servergroup
server exec`. Once with every server on one host (affinity, as the seed
says), once with the servers spread over two hosts sharing one etcd, and
once with qemu servers (real VMs, the guest agent on
/dev/virtio-ports/cgcs.messaging) over two hosts.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.fixtures.setup import AppProcess, Setup, SetupFactory

pytestmark = pytest.mark.timeout(240)


def is_status_of(names: set[str]) -> Any:
    def check(line: dict[str, Any]) -> bool:
        return line.get("kind") == "status" and {s["name"] for s in line["servers"]} == names

    return check


def is_broadcast(text: str, instance: str) -> Any:
    def check(line: dict[str, Any]) -> bool:
        return (
            line.get("kind") == "broadcast"
            and line.get("text") == text
            and line.get("source_instance") == instance
        )

    return check


def is_notification_about(name: str, what: str = "") -> Any:
    def check(line: dict[str, Any]) -> bool:
        if line.get("kind") != "notification":
            return False
        event = line["event"]
        return event["payload"]["name"] == name and what in event["event_type"]

    return check


def instance_of(setup: Setup, name: str) -> str:
    info = setup.json("server", "show", name)
    return str(info["instance_name"])


def create_server(setup: Setup, name: str, host: str | None, driver: str) -> str:
    args = ["server", "create", name, "--group", "grp", "--driver", driver]
    if host is not None:
        args += ["--host", host]
    setup.run(*args)
    return instance_of(setup, name)


def run_steps(setup: Setup, policy: str, hosts: list[str | None], driver: str = "lab") -> None:
    # a) a server group with the given policy
    setup.run("group", "create", "grp", "--policy", policy)
    # b) a server in it
    i1 = create_server(setup, "s1", hosts[0], driver)
    # The server has no IP networking at all: only lo, and it is down.
    links = setup.run("server", "exec", "s1", "--", "ip", "-o", "link").stdout.splitlines()
    assert len(links) == 1
    assert ": lo:" in links[0]
    assert "UP" not in links[0].split("<")[1].split(">")[0]
    addrs = setup.run("server", "exec", "s1", "--", "ip", "-o", "addr").stdout
    assert "inet" not in addrs
    # c) the app in the first server sees the status of that server at once
    app1 = setup.app("s1")
    app1.wait_for(is_status_of({"s1"}))
    # d) a second server: notifications at the first
    create_server(setup, "s2", hosts[1], driver)
    i2 = instance_of(setup, "s2")
    app1.wait_for(is_notification_about("s2", "create"))
    # e) the app with a message on the second server: broadcast at the first,
    #    and a status with both servers at the second
    app2 = setup.app("s2", "--address", "cgcs.sg.e", "--timeout", "3", "this is a test")
    app2.wait_for(is_status_of({"s1", "s2"}))
    app1.wait_for(is_broadcast("this is a test", i2))
    assert app2.proc.wait(15) == 0
    assert not any(line.get("kind") == "broadcast" for line in app2.drain(0.2)), (
        "a broadcast came back to its sender"
    )
    # f) a third server: notifications at the other two (an app now runs in s2)
    app2_listener = setup.app("s2")
    app2_listener.wait_for(is_status_of({"s1", "s2"}))
    create_server(setup, "s3", hosts[2], driver)
    i3 = instance_of(setup, "s3")
    app1.wait_for(is_notification_about("s3", "create"))
    app2_listener.wait_for(is_notification_about("s3", "create"))
    app3 = setup.app("s3")
    app3.wait_for(is_status_of({"s1", "s2", "s3"}))
    # g) the app with a message on the second server again: the broadcast at
    #    the other two, a status with all three at the sender
    app2g = setup.app("s2", "--address", "cgcs.sg.g", "--timeout", "3", "final test")
    app2g.wait_for(is_status_of({"s1", "s2", "s3"}))
    b1 = app1.wait_for(is_broadcast("final test", i2))
    b3 = app3.wait_for(is_broadcast("final test", i2))
    assert b1["seq"] == b3["seq"], "one total order per group: the same sequence number"
    assert app2g.proc.wait(15) == 0
    # Never back to the sender: neither app in s2 got its own broadcast.
    for app in (app2_listener, app2g):
        assert not [
            line
            for line in app.drain(0.3)
            if line.get("kind") == "broadcast" and line.get("text") == "final test"
        ]
    assert {i1, i2, i3} == {
        s["instance_name"] for s in app3.wait_for(is_status_of({"s1", "s2", "s3"}))["servers"]
    }
    stop_all([app1, app2_listener, app3])


def stop_all(apps: list[AppProcess]) -> None:
    for app in apps:
        app.stop()


def test_seed_steps_on_one_host(servergroup_up: SetupFactory) -> None:
    setup = servergroup_up(1)
    run_steps(setup, "affinity", [None, None, None])
    hosts = {s["host"] for s in setup.json("server", "list")}
    assert hosts == {"h1"}


def test_seed_steps_over_two_hosts(servergroup_up: SetupFactory) -> None:
    setup = servergroup_up(2)
    run_steps(setup, "soft-anti-affinity", ["h1", "h2", "h1"])
    placed = {s["name"]: s["host"] for s in setup.json("server", "list")}
    assert placed == {"s1": "h1", "s2": "h2", "s3": "h1"}


def test_seed_steps_with_qemu_servers_over_two_hosts(servergroup_up: SetupFactory) -> None:
    setup = servergroup_up(2)
    run_steps(setup, "soft-anti-affinity", ["h1", "h2", "h1"], driver="qemu")
    placed = {s["name"]: s["host"] for s in setup.json("server", "list")}
    assert placed == {"s1": "h1", "s2": "h2", "s3": "h1"}
    # The app ran inside real VMs: the guest's kernel, not the host's.
    guest = setup.run("server", "exec", "s1", "--", "cat", "/proc/cmdline").stdout
    assert "sg.name=s1" in guest
