"""`servergroup scale cpu` end to end on lab servers: real etcd, host daemons, lab servers.

The guest side is `agent.start_scale_agent` (see there). The host's CPU pool
is given by configuration (`SERVERGROUP_CPU_POOL`): the machine's CPUs 0-1.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import signal
import subprocess
from typing import Any

import pytest

from tests.fixtures import wait
from tests.fixtures.setup import Setup, SetupFactory
from tests.integration.daemons.test_restarts import guest_pid, notification, status_of
from tests.integration.scaling.agent import start_scale_agent

pytestmark = pytest.mark.timeout(240)

#: A pool of this machine's 2 CPUs; lab servers' guest agents without the scale agent, so
#: that the stand-in of agent.py (which can misbehave on purpose) binds `cgcs.scale`
#: (test_scale_real_agent.py and test_host_qemu.py run the real one).
POOL = {"SERVERGROUP_CPU_POOL": "0-1", "SERVERGROUP_LAB_SCALE_AGENT": "off"}
#: The waits of the scaling tests (also of the modules that import it): every 0.1 s, as
#: most checks run the CLI or read etcd.
wait_until = functools.partial(wait.wait_until, timeout=15.0, interval=0.1)


def scale(setup: Setup, direction: str, server: str, *extra: str) -> dict[str, Any]:
    done = setup.run("scale", "cpu", direction, server, "--json", *extra)
    out: dict[str, Any] = json.loads(done.stdout)
    return out


def refused(setup: Setup, *args: str) -> str:
    """The one sentence a refused command prints (and that it exits non-zero)."""
    done = setup.run(*args, check=False)
    assert done.returncode != 0, done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    return lines[0]


def pool(setup: Setup, host: str) -> dict[str, Any]:
    shown: dict[str, Any] = setup.json("host", "show", host)["cpu_pool"]
    return shown


def no_bug(setup: Setup) -> None:
    """No host daemon logged a BUG (an unexpected exception) during the test."""
    for path in setup.host_logs():
        bugs = [line for line in path.read_text().splitlines() if "BUG" in line]
        assert not bugs, f"{path}: {bugs[:3]}"


def affinity(setup: Setup, server: str) -> dict[int, list[int]]:
    rows = setup.json("server", "vcpus", server)
    return {row["vcpu"]: row["affinity"] for row in rows}


def test_down_down_refused_up_refused_and_the_pool(servergroup_up: SetupFactory) -> None:
    setup = servergroup_up(1, env=POOL)
    setup.run("group", "create", "g")
    setup.run("server", "create", "s1", "--group", "g", "--vcpus", "3", "--min-vcpus", "1")
    agent = start_scale_agent(setup, "s1", 3)
    shown = setup.json("server", "show", "s1")
    assert (shown["online_cpus"], shown["vcpus"], shown["min_vcpus"]) == ([0, 1, 2], 3, 1)

    # Never scaled, s1 takes no part in the pool: its vCPUs float over the host's CPUs.
    wait_until(lambda: pool(setup, "h1")["free"] == [0, 1], "h1's pool is published")
    assert pool(setup, "h1")["placed"] == {}
    assert set(map(len, affinity(setup, "s1").values())) == {2}

    # Its first scale places it: vCPUs 0 and 1 get CPUs 0 and 1, vCPU 2 finds the
    # pool full and shares it, then goes offline (freeing nothing).
    out = scale(setup, "down", "s1")
    assert (out["cpu"], out["online_cpus"], out["host"]) == (2, [0, 1], "h1")
    assert agent.online() == (0, 1)
    # Where the host's time went, phase by phase (seconds; the guest's part is not 0).
    assert set(out["timings"]) == {"queued", "check", "guest", "hypervisor", "record"}
    assert out["timings"]["guest"] > 0
    assert min(out["timings"].values()) >= 0
    placed = pool(setup, "h1")
    assert (placed["placed"], placed["shared"], placed["free"]) == (
        {"s1": {"0": 0, "1": 1}},
        {},
        [],
    )
    out = scale(setup, "down", "s1")
    assert (out["cpu"], out["online_cpus"], out["host_cpu"]) == (1, [0], 1)
    assert agent.online() == (0,)
    after = pool(setup, "h1")
    assert (after["free"], after["placed"]) == ([1], {"s1": {"0": 0}})
    pins = affinity(setup, "s1")
    assert pins[1] == pins[0] == [0]  # offline vCPUs run where vCPU 0 runs
    shown = setup.json("server", "show", "s1")
    assert shown["online_cpus"] == [0]

    sentence = refused(setup, "scale", "cpu", "down", "s1")
    assert "minimum" in sentence
    assert agent.online() == (0,)

    out = scale(setup, "up", "s1")
    assert (out["cpu"], out["online_cpus"], out["host_cpu"]) == (1, [0, 1], 1)
    assert agent.online() == (0, 1)
    assert affinity(setup, "s1")[1] == [1]
    assert pool(setup, "h1")["free"] == []

    # The pool is full: vCPU 2 cannot come back, and nothing changes.
    sentence = refused(setup, "scale", "cpu", "up", "s1")
    assert "no free physical CPU on h1" in sentence
    assert agent.online() == (0, 1)
    assert setup.json("server", "show", "s1")["online_cpus"] == [0, 1]

    # A second server takes the CPU s1 gives back; deleting it gives it back again.
    setup.run("server", "create", "s2", "--group", "g", "--vcpus", "2")
    start_scale_agent(setup, "s2", 2)
    scale(setup, "down", "s1")
    assert pool(setup, "h1")["free"] == [1]
    assert scale(setup, "down", "s2")["online_cpus"] == [0]  # vCPU 1 shared: frees nothing
    full = pool(setup, "h1")
    assert (full["free"], full["placed"]["s2"]) == ([], {"0": 1})
    assert "no free physical CPU on h1" in refused(setup, "scale", "cpu", "up", "s1")
    setup.run("server", "delete", "s2")
    wait_until(lambda: pool(setup, "h1")["free"] == [1], "s2's CPU is free again")
    out = scale(setup, "up", "s1")
    assert out["online_cpus"] == [0, 1]
    setup.run("server", "delete", "s1")
    wait_until(
        lambda: [h["cpu_pool"]["free"] for h in setup.json("host", "list")] == [[0, 1]],
        "every CPU of h1 is free",
    )


def scaling_keys(setup: Setup, prefix: str) -> list[str]:
    """The keys under `scaling/<prefix>` in the setup's etcd."""
    from servergroup.config import load_config
    from servergroup.coordination.connect import connect

    async def read() -> list[str]:
        async with connect(load_config(env=setup.env)) as c:
            return [kv.key for kv in (await c.get_prefix(f"scaling/{prefix}")).items]

    return asyncio.run(read())


def test_bad_requests_each_get_one_sentence_and_change_nothing(
    servergroup_up: SetupFactory,
) -> None:
    setup = servergroup_up(1, env=POOL)
    setup.run("group", "create", "g")
    setup.run("server", "create", "s1", "--group", "g", "--vcpus", "2")

    assert "'nope' does not exist" in refused(setup, "scale", "cpu", "down", "nope")
    # No scale agent in the guest yet: nobody answers.
    sentence = refused(setup, "scale", "cpu", "down", "s1", "--timeout", "0.5")
    assert "did not answer within 1.5 s" in sentence
    assert "scale agent" in sentence
    for mode, words in [
        ("garbage", "answered garbage"),
        ("fail", "could not scale down: the helper says no"),
        ("nack", "refused the request: scaling is disabled here"),
        ("wrong-cpu", "took vCPU 0 offline"),
    ]:
        agent = start_scale_agent(setup, "s1", 2, mode=mode)
        sentence = refused(setup, "scale", "cpu", "down", "s1")
        assert words in sentence, sentence
        assert setup.json("server", "show", "s1")["online_cpus"] == [0, 1]
        agent.stop()
    agent = start_scale_agent(setup, "s1", 2)
    assert "its maximum" in refused(setup, "scale", "cpu", "up", "s1")
    setup.run("server", "pause", "s1")
    assert "s1 is paused" in refused(setup, "scale", "cpu", "down", "s1")
    setup.run("server", "unpause", "s1")
    assert scale(setup, "down", "s1")["online_cpus"] == [0]
    usage = setup.run("scale", "cpu", "down", "s1", "--timeout", "0", check=False)
    assert usage.returncode == 2
    assert "Traceback" not in usage.stderr
    # Every request and result went with its command's lease.
    assert scaling_keys(setup, "requests/") == []
    assert scaling_keys(setup, "results/") == []
    # A command killed while it waits leaves its request to its lease's expiry.
    agent.stop()
    start_scale_agent(setup, "s1", 2, mode="silent")
    killed = subprocess.Popen(
        setup.argv("scale", "cpu", "up", "s1", "--timeout", "1"),
        env=setup.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_until(lambda: scaling_keys(setup, "requests/") != [], "the request is written")
    killed.kill()
    killed.wait(10)
    wait_until(
        lambda: scaling_keys(setup, "requests/") == scaling_keys(setup, "results/") == [],
        "the abandoned request and its result are gone",
    )
    assert setup.json("server", "show", "s1")["online_cpus"] == [0]
    no_bug(setup)


def test_concurrent_scales_of_one_server_take_different_vcpus(
    servergroup_up: SetupFactory,
) -> None:
    setup = servergroup_up(1, env=POOL)
    setup.run("group", "create", "g")
    setup.run("server", "create", "s1", "--group", "g", "--vcpus", "4")
    agent = start_scale_agent(setup, "s1", 4)
    procs = [
        subprocess.Popen(
            setup.argv("scale", "cpu", "down", "s1", "--json"),
            env=setup.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    cpus = sorted(json.loads(out)["cpu"] for out, _ in outs)
    assert cpus == [1, 2, 3]
    assert agent.online() == (0,)
    assert setup.json("server", "show", "s1")["online_cpus"] == [0]
    # Two more at the minimum: both refused, by the CLI or by the host.
    procs = [
        subprocess.Popen(
            setup.argv("scale", "cpu", "down", "s1"),
            env=setup.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode != 0
        assert "minimum" in err
    # And back up at once: each takes a vCPU of its own.
    procs = [
        subprocess.Popen(
            setup.argv("scale", "cpu", "up", "s1", "--json"),
            env=setup.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=60) for p in procs]
    ok = sorted(
        json.loads(out)["cpu"] for (out, _), p in zip(outs, procs, strict=True) if not p.returncode
    )
    assert len(set(ok)) == len(ok)
    assert set(setup.json("server", "show", "s1")["online_cpus"]) == {0, *ok}
    assert set(agent.online()) == {0, *ok}
    no_bug(setup)


def test_a_scale_racing_a_delete_or_a_migration_ends_in_one_sentence(
    servergroup_up: SetupFactory,
) -> None:
    setup = servergroup_up(2, env=POOL)
    setup.run("group", "create", "g", "--policy", "soft-affinity")
    setup.run("server", "create", "s1", "--group", "g", "--vcpus", "3", "--host", "h1")
    start_scale_agent(setup, "s1", 3)
    racer = subprocess.Popen(
        setup.argv("scale", "cpu", "down", "s1", "--json"),
        env=setup.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    setup.run("server", "migrate", "s1", "--to", "h2", "--live")
    out, err = racer.communicate(timeout=60)
    assert "Traceback" not in err
    if racer.returncode == 0:
        online = json.loads(out)["online_cpus"]
    else:
        assert len(err.strip().splitlines()) == 1, err
        online = [0, 1, 2]
    wait_until(
        lambda: setup.json("server", "show", "s1")["online_cpus"] == online,
        f"the record says {online}",
    )
    # On h2 now: scaled by h2.
    assert scale(setup, "down", "s1")["host"] == "h2"

    racer = subprocess.Popen(
        setup.argv("scale", "cpu", "down", "s1"),
        env=setup.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    setup.run("server", "delete", "s1")
    out, err = racer.communicate(timeout=60)
    assert "Traceback" not in err
    assert racer.returncode == 0 or len(err.strip().splitlines()) == 1, err
    wait_until(lambda: scaling_keys(setup, "requests/") == [], "no request left")
    wait_until(
        lambda: all(h["cpu_pool"]["free"] == [0, 1] for h in setup.json("host", "list")),
        "every CPU free again",
    )
    no_bug(setup)


def test_boot_sync_and_the_behaviour_table(servergroup_up: SetupFactory) -> None:
    setup = servergroup_up(2, env=POOL)
    setup.run("group", "create", "g", "--policy", "soft-affinity")
    setup.run("server", "create", "s1", "--group", "g", "--vcpus", "3", "--host", "h1")
    setup.run("server", "create", "w", "--group", "g", "--host", "h2")
    watcher = setup.app("w")
    watcher.wait_for(status_of({"s1", "w"}))
    first = start_scale_agent(setup, "s1", 3)
    scale(setup, "down", "s1")
    assert setup.json("server", "show", "s1")["online_cpus"] == [0, 1]
    # The group is told: its other members get compute.instance.scale.end.
    told = watcher.wait_for(notification("s1", "compute.instance.scale.end"))
    assert told["event"]["payload"]["online_cpus"] == [0, 1]
    first.stop()

    def online() -> list[int]:
        found: list[int] = setup.json("server", "show", "s1")["online_cpus"]
        return found

    # Stays scaled down (the record), and a guest booting again syncs to it.
    for steps in (
        [["pause", "s1"], ["unpause", "s1"]],
        [["stop", "s1"], ["start", "s1"]],
        [["reboot", "s1"]],
        [["rebuild", "s1"]],
        [["migrate", "s1", "--to", "h2", "--live"]],
    ):
        for step in steps:
            setup.run("server", *step)
        assert online() == [0, 1], steps
        agent = start_scale_agent(setup, "s1", 3, sync=True)
        assert agent.synced() == "[2]"
        assert agent.online() == (0, 1)
        agent.stop()

    # Automatic restart after a crash (its guest agent killed): still scaled down.
    old = guest_pid(setup, "s1")
    os.kill(old, signal.SIGKILL)

    def restarted() -> bool:
        try:
            pid = guest_pid(setup, "s1")
        except (OSError, ValueError, IndexError):
            return False
        return pid != old and setup.json("server", "show", "s1")["vm_state"] == "active"

    wait_until(restarted, "s1's guest agent is started again", timeout=30)
    assert online() == [0, 1]
    agent = start_scale_agent(setup, "s1", 3, sync=True)
    assert agent.synced() == "[2]"
    agent.stop()

    # Reverts to the flavor's every vCPU on a cold migration.
    setup.run("server", "migrate", "s1", "--to", "h1", "--cold")
    assert online() == [0, 1, 2]
    agent = start_scale_agent(setup, "s1", 3, sync=True)
    assert agent.synced() == "[]"
    assert agent.online() == (0, 1, 2)

    # And on a resize, to every vCPU of the new flavor.
    scale(setup, "down", "s1")
    agent.stop()
    setup.run("server", "resize", "s1", "--vcpus", "2", "--min-vcpus", "1")
    watcher.wait_for(notification("s1", "compute.instance.resize.end"))
    shown = setup.json("server", "show", "s1")
    assert (shown["online_cpus"], shown["vcpus"], shown["min_vcpus"]) == ([0, 1], 2, 1)
    agent = start_scale_agent(setup, "s1", 2, sync=True)
    assert agent.synced() == "[]"
    assert scale(setup, "down", "s1")["online_cpus"] == [0]
    assert "minimum" in refused(setup, "scale", "cpu", "down", "s1")
    no_bug(setup)


def test_a_scaled_down_server_stays_scaled_down_when_evacuated(
    servergroup_up: SetupFactory,
) -> None:
    setup = servergroup_up(2, env={**POOL, "SERVERGROUP_EVACUATION_GRACE": "1"})
    setup.run("group", "create", "g", "--policy", "soft-anti-affinity")
    setup.run("server", "create", "w", "--group", "g", "--host", "h2")
    setup.run("server", "create", "s1", "--group", "g", "--vcpus", "3", "--host", "h1")
    watcher = setup.app("w")
    watcher.wait_for(status_of({"s1", "w"}))
    agent = start_scale_agent(setup, "s1", 3)
    assert scale(setup, "down", "s1")["online_cpus"] == [0, 1]
    agent.stop()

    setup.run("lab", "crash", "h1")
    watcher.wait_for(notification("s1", "compute.instance.evacuate.end"), timeout=120)
    shown = setup.json("server", "show", "s1")
    assert (shown["host"], shown["online_cpus"]) == ("h2", [0, 1])
    agent = start_scale_agent(setup, "s1", 3, sync=True)
    assert agent.synced() == "[2]"
    # h2 scales it now, from its own pool.
    assert scale(setup, "down", "s1")["host"] == "h2"
    # Scaled down, it took part in h2's pool as it arrived (w, never scaled, floats).
    placed = setup.json("host", "show", "h2")["cpu_pool"]["placed"]
    assert placed == {"s1": {"0": 0}}
    no_bug(setup)
