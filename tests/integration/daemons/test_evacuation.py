"""A host's death does not strand its servers: crash, freeze, cut, as a user runs them.

Each test runs the real setup (`servergroup up` with three lab hosts, the
managed etcd, host daemons as processes), real lab or qemu servers with the
sample app inside, injects a fault with `servergroup lab crash|freeze|cut`,
and checks what the other members are told (`lost`, then `evacuate.end`),
that the server runs again on a surviving host, that messaging works with
the rebuilt server, and, when the host comes back (`thaw`, `heal`), that it
destroys its stale copy without touching the new one.
"""

from __future__ import annotations

import asyncio
import functools
import time
from pathlib import Path
from typing import Any

import pytest

from servergroup.config import DEFAULT_PREFIX, CoordinationConfig, Endpoint
from servergroup.coordination import EtcdCoordinator
from servergroup.servers.drivers.base import channel_name
from servergroup.servers.registry import HOSTS
from tests.fixtures import wait
from tests.fixtures.setup import AppProcess, Setup, SetupFactory
from tests.integration.daemons.test_restarts import (
    gone,
    guest_pid,
    notification,
    send_until_received,
    status_of,
)

pytestmark = pytest.mark.timeout(300)

CONFIG = CoordinationConfig()

#: A short grace keeps the tests quick; the default (5 s) is checked in the unit tests.
GRACE = {"SERVERGROUP_EVACUATION_GRACE": "1"}
#: Every 0.1 s: a check of the hosts alive connects to etcd.
wait_until = functools.partial(wait.wait_until, timeout=60.0, interval=0.1)


def shown(setup: Setup, name: str) -> dict[str, Any]:
    data: dict[str, Any] = setup.json("server", "show", name)
    return data


def hosts_alive(setup: Setup) -> set[str]:
    """The hosts registered in the setup's etcd now (their daemons' sessions live)."""

    async def read() -> set[str]:
        port = int(setup.env["SERVERGROUP_ETCD_PORT"])
        endpoint = Endpoint(host="127.0.0.1", port=port)
        async with EtcdCoordinator([endpoint], prefix=DEFAULT_PREFIX, config=CONFIG) as c:
            rng = await c.get_prefix(HOSTS)
        return {kv.key[len(HOSTS) :] for kv in rng.items}

    return asyncio.run(read())


def channel_link(setup: Setup, host: str, instance: str) -> Path:
    return setup.state_dir / "up" / "hosts" / host / "channels" / channel_name(instance)


def evacuated(setup: Setup, watcher: AppProcess, name: str, *, dead: str) -> dict[str, Any]:
    """Wait for `lost` then `evacuate.end` about `name`; the server as shown after."""
    watcher.wait_for(notification(name, "compute.instance.lost"), timeout=60)
    watcher.wait_for(notification(name, "compute.instance.evacuate.end"), timeout=120)
    server = shown(setup, name)
    assert server["host"] != dead
    assert (server["vm_state"], server["task_state"]) == ("active", None)
    return server


@pytest.mark.parametrize("fault", ["crash", "freeze", "cut"])
def test_lab_servers_of_a_dead_host_are_rebuilt(servergroup_up: SetupFactory, fault: str) -> None:
    setup = servergroup_up(3, env=GRACE)
    setup.run("group", "create", "g", "--policy", "anti-affinity")
    setup.run("server", "create", "a", "--group", "g", "--host", "h1")
    setup.run("server", "create", "b", "--group", "g", "--host", "h2")
    watcher = setup.app("a")
    watcher.wait_for(status_of({"a", "b"}))
    stale = guest_pid(setup, "b")
    instance = shown(setup, "b")["instance_name"]

    setup.run("lab", fault, "h2")
    server = evacuated(setup, watcher, "b", dead="h2")
    assert server["host"] == "h3"  # anti-affinity: h1 runs a
    fresh = guest_pid(setup, "b")
    assert fresh != stale
    wait_until(lambda: gone(stale), "the stale guest agent ended", timeout=10)
    assert channel_link(setup, "h3", instance).is_symlink()
    assert not channel_link(setup, "h2", instance).is_symlink()
    listener = setup.app("b")
    listener.wait_for(status_of({"a", "b"}))
    send_until_received(setup, "a", listener, f"after {fault}")

    if fault == "crash":
        return
    setup.run("lab", "thaw" if fault == "freeze" else "heal", "h2")
    # h2 comes back, registers again, and leaves b where it is now.
    wait_until(lambda: "h2" in hosts_alive(setup), "h2 registered again")
    time.sleep(2.0)  # a returning host that acted on stale state would do so now
    again = shown(setup, "b")
    assert (again["host"], again["vm_state"]) == ("h3", "active")
    assert guest_pid(setup, "b") == fresh
    assert not channel_link(setup, "h2", instance).is_symlink()
    send_until_received(setup, "a", listener, f"after the {fault}ed host came back")


def test_manual_group_waits_for_the_operator(servergroup_up: SetupFactory) -> None:
    setup = servergroup_up(3, env=GRACE)
    setup.run("group", "create", "m", "--policy", "soft-affinity", "--evacuate", "manual")
    setup.run("server", "create", "a", "--group", "m", "--host", "h1")
    setup.run("server", "create", "b", "--group", "m", "--host", "h2")
    refused = setup.run("server", "evacuate", "b", check=False)
    assert refused.returncode == 2
    assert "host h2 is alive" in refused.stderr
    assert "Traceback" not in refused.stderr
    watcher = setup.app("a")
    watcher.wait_for(status_of({"a", "b"}))
    setup.run("lab", "crash", "h2")
    watcher.wait_for(notification("b", "compute.instance.lost"), timeout=60)
    time.sleep(3 * float(GRACE["SERVERGROUP_EVACUATION_GRACE"]))
    assert shown(setup, "b")["host"] == "h2"  # nobody moved it
    done = setup.run("server", "evacuate", "b", "--to", "h3")
    assert "server b is rebuilt: active on h3" in done.stdout
    watcher.wait_for(notification("b", "compute.instance.evacuate.end"), timeout=30)
    listener = setup.app("b")
    listener.wait_for(status_of({"a", "b"}))
    send_until_received(setup, "a", listener, "after a manual evacuation")


@pytest.mark.parametrize("fault", ["crash", "freeze", "cut"])
def test_a_qemu_server_of_a_dead_host_is_booted_elsewhere(
    servergroup_up: SetupFactory, fault: str
) -> None:
    setup = servergroup_up(3, env=GRACE)
    setup.run("group", "create", "g", "--policy", "soft-anti-affinity")
    setup.run("server", "create", "a", "--group", "g", "--host", "h1")
    setup.run("server", "create", "v", "--group", "g", "--host", "h2", "--driver", "qemu")
    watcher = setup.app("a")
    watcher.wait_for(status_of({"a", "v"}))
    stale = int((setup.state_dir / "qemu" / "h2" / "v" / "qemu.pid").read_text())
    setup.run("lab", fault, "h2")
    server = evacuated(setup, watcher, "v", dead="h2")
    assert server["host"] == "h3"  # soft-anti-affinity: the host without a member
    assert (setup.state_dir / "qemu" / "h3" / "v").is_dir()
    listener = setup.app("v")
    listener.wait_for(status_of({"a", "v"}), timeout=90)
    send_until_received(setup, "a", listener, "to the rebuilt VM")
    if fault == "crash":
        assert gone(stale)
        return
    setup.run("lab", "thaw" if fault == "freeze" else "heal", "h2")
    # h2 comes back and ends its stale copy; the new VM keeps running on h3.
    wait_until(lambda: "h2" in hosts_alive(setup), "h2 registered again")
    wait_until(lambda: gone(stale), "the stale QEMU on h2 ended", timeout=30)
    again = shown(setup, "v")
    assert (again["host"], again["vm_state"]) == ("h3", "active")
    send_until_received(setup, "a", listener, f"after the {fault}ed host came back")
