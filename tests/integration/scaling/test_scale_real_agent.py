"""`servergroup scale cpu` end to end with the real scale agent in lab servers.

Everything is the real thing: `servergroup up` (host daemons with their
scaler, the managed etcd), lab servers whose guest agents run our scale
agent on the server's own CPU tree (the default), and the CLI. The tests
read the guest's own view (its tree's `online` file, which the agent writes
as a kernel would) beside the host's record, and check the seed's behaviour
table: a scaled-down server comes back scaled down from every lifecycle
step that keeps it (its agent starts afresh and syncs to the record at
boot), and with every vCPU after a cold migration.
"""

from __future__ import annotations

import pytest

from servergroup.scaling.cpus import parse_cpu_list
from servergroup.scaling.sysfs import CPU_DIR
from tests.fixtures.setup import Setup, SetupFactory
from tests.integration.scaling.test_host_scale import no_bug, refused, scale, wait_until

pytestmark = pytest.mark.timeout(300)

POOL = {"SERVERGROUP_CPU_POOL": "0-1"}


def guest_online(setup: Setup, server: str) -> tuple[int, ...] | None:
    """The server's own online CPUs (its scale agent's tree); None while it is not there."""
    path = setup.state_dir / "servers" / server / "sysroot" / CPU_DIR / "online"
    try:
        return parse_cpu_list(path.read_text())
    except OSError:
        return None


def recorded(setup: Setup, server: str) -> list[int]:
    found: list[int] = setup.json("server", "show", server)["online_cpus"]
    return found


def test_down_refused_up_refused_with_the_real_agent(servergroup_up: SetupFactory) -> None:
    setup = servergroup_up(1, env=POOL)
    setup.run("group", "create", "g")
    setup.run("server", "create", "s", "--group", "g", "--vcpus", "2", "--min-vcpus", "1")
    wait_until(lambda: guest_online(setup, "s") == (0, 1), "s's agent made its CPU tree")
    out = scale(setup, "down", "s")
    assert (out["cpu"], out["online_cpus"]) == (1, [0])
    assert guest_online(setup, "s") == (0,)
    assert "minimum" in refused(setup, "scale", "cpu", "down", "s")
    assert guest_online(setup, "s") == (0,)
    out = scale(setup, "up", "s")
    assert (out["cpu"], out["online_cpus"]) == (1, [0, 1])
    assert guest_online(setup, "s") == (0, 1)
    assert "maximum" in refused(setup, "scale", "cpu", "up", "s")
    assert recorded(setup, "s") == [0, 1]
    no_bug(setup)


def test_the_behaviour_table_with_the_real_agent(servergroup_up: SetupFactory) -> None:
    setup = servergroup_up(2, env=POOL)
    setup.run("group", "create", "g")
    setup.run("server", "create", "s", "--group", "g", "--vcpus", "3", "--host", "h1")
    wait_until(lambda: guest_online(setup, "s") == (0, 1, 2), "s's agent made its CPU tree")
    assert scale(setup, "down", "s")["online_cpus"] == [0, 1]
    for steps in (
        [["pause", "s"], ["unpause", "s"]],
        [["stop", "s"], ["start", "s"]],
        [["reboot", "s"]],
        [["rebuild", "s"]],
        [["migrate", "s", "--to", "h2", "--live"]],
    ):
        for step in steps:
            setup.run("server", *step)
        assert recorded(setup, "s") == [0, 1], steps
        # The guest's agent started afresh (every CPU online) and synced to the record.
        wait_until(lambda: guest_online(setup, "s") == (0, 1), f"s synced after {steps}")
    setup.run("server", "migrate", "s", "--to", "h1", "--cold")
    assert recorded(setup, "s") == [0, 1, 2]
    wait_until(lambda: guest_online(setup, "s") == (0, 1, 2), "s has every vCPU again")
    no_bug(setup)
