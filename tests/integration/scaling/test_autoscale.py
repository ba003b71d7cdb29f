"""`servergroup scale policy` end to end on lab servers: the host measures, decides, scales.

Everything is real: `servergroup up` (host daemons with their scaler and
autoscaler, the managed etcd), lab servers whose guest agents run our scale
agent on their own CPU tree, a busy loop started inside a server with
`servergroup server exec`, and an app in another member of the group that
receives the `compute.instance.autoscale` notifications. Windows and
cooldowns are short (a second or two) so that each step takes a few seconds.

A lab server's vCPUs are measured as all its processes' CPU time: two busy
loops make a 1-vCPU server (a cpuset of one CPU) ~100 % busy and a 2-vCPU
one up to 100 %, an idle one is ~0 %: the thresholds (up above 10 %, down
below 2 %) hold even on a machine so shared that the loops get a fraction of
a CPU.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from servergroup.scaling.autoscale import policy_key
from tests.fixtures.setup import Setup, SetupFactory
from tests.integration.daemons.test_restarts import notification
from tests.integration.scaling.test_host_scale import no_bug, refused, scaling_keys, wait_until
from tests.integration.scaling.test_scale_real_agent import guest_online, recorded

pytestmark = pytest.mark.timeout(240)

POOL = {"SERVERGROUP_CPU_POOL": "0-1"}
#: Short windows so each decision comes within seconds.
FAST = ("--window", "2", "--cooldown", "0.5")


class BusyLoop:
    """A shell spinning inside a server until its stop file exists."""

    def __init__(self, setup: Setup, server: str) -> None:
        self.stop_file = setup.state_dir / f"stop-busy-{server}-{time.monotonic_ns()}"
        self.proc = subprocess.Popen(
            setup.argv(
                "server",
                "exec",
                server,
                "--",
                "sh",
                "-c",
                f"while [ ! -e {self.stop_file} ]; do :; done",
            ),
            env=setup.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        Path(self.stop_file).touch()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def host_log(setup: Setup, host: str = "h1") -> str:
    return (setup.state_dir / "up" / "hosts" / host / "host.log").read_text()


def put_raw(setup: Setup, key: str, value: bytes) -> None:
    """Write `value` at `key` in the setup's etcd (as a buggy or older writer could)."""
    import asyncio

    from servergroup.config import load_config
    from servergroup.coordination.connect import connect

    async def write() -> None:
        async with connect(load_config(env=setup.env)) as c:
            await c.put(key, value)

    asyncio.run(write())


def test_a_busy_server_is_scaled_up_an_idle_one_down_and_off_stops_it(
    servergroup_up: SetupFactory,
) -> None:
    setup = servergroup_up(1, env=POOL)
    setup.run("group", "create", "g")
    setup.run("server", "create", "s", "--group", "g", "--vcpus", "2", "--min-vcpus", "1")
    setup.run("server", "create", "watcher", "--group", "g")
    app = setup.app("watcher")
    wait_until(lambda: guest_online(setup, "s") == (0, 1), "s's agent made its CPU tree")

    # Bad values: one sentence each, nothing stored.
    for args, words in [
        (["--up-above", "20", "--down-below", "30"], "must be below"),
        (["--up-above", "120", "--down-below", "5"], "at most 100%"),
        (["--up-above", "50", "--down-below", "-1"], "above 0%"),
        (["--up-above", "50"], "give both"),
        (["--up-above", "50", "--down-below", "5", "--off"], "either --off"),
    ]:
        assert words in refused(setup, "scale", "policy", "s", *args)
    assert "'nope' does not exist" in refused(
        setup, "scale", "policy", "nope", "--up-above", "50", "--down-below", "5"
    )
    assert scaling_keys(setup, "policies/") == []
    assert setup.run("scale", "policy", "s").stdout.strip() == "server s has no scaling policy"

    out = setup.run("scale", "policy", "s", "--up-above", "10", "--down-below", "2", *FAST)
    assert "up above 10.0%, down below 2.0%, over 2 s, cooldown 0.5 s" in out.stdout
    shown = setup.json("scale", "policy", "s")["policy"]
    assert (shown["up_above"], shown["down_below"], shown["window"]) == (10.0, 2.0, 2.0)

    # Idle: scaled down to its minimum, and no further.
    wait_until(lambda: recorded(setup, "s") == [0], "idle s is scaled down")
    assert guest_online(setup, "s") == (0,)
    wait_until(
        lambda: "but it is at its minimum of 1 vCPUs" in host_log(setup),
        "the policy judges s at its minimum",
    )
    assert recorded(setup, "s") == [0]
    event = app.wait_for(notification("s", "compute.instance.autoscale"), timeout=20)["event"]
    details = event["payload"]["details"]
    assert (details["direction"], details["from_vcpus"], details["to_vcpus"]) == ("down", 2, 1)
    assert details["done"] is True
    assert details["online_cpus"] == [0]
    assert "below 2.0%: scale down from 2 to 1 vCPUs" in details["sentence"]
    assert event["payload"]["online_cpus"] == [0]

    # Busy: scaled up to its maximum, and no further.
    loops = [BusyLoop(setup, "s"), BusyLoop(setup, "s")]
    try:
        wait_until(lambda: recorded(setup, "s") == [0, 1], "busy s is scaled up", timeout=30)
        assert guest_online(setup, "s") == (0, 1)
        wait_until(
            lambda: (
                "at its maximum of 2 vCPUs" in host_log(setup) or recorded(setup, "s") != [0, 1]
            ),
            "the policy judges s at its maximum",
        )
        assert recorded(setup, "s") == [0, 1]
    finally:
        for loop in loops:
            loop.stop()
    logged = [line for line in host_log(setup).splitlines() if "scale up from 1 to 2" in line]
    assert logged
    assert "done, online vCPUs 0-1" in logged[0]

    # Idle again: down; then --off, and a busy loop no longer scales it up.
    wait_until(lambda: recorded(setup, "s") == [0], "idle s is scaled down again", timeout=30)
    assert setup.run("scale", "policy", "s", "--off").stdout.strip() == (
        "server s: scaling policy removed"
    )
    wait_until(
        lambda: "s: no longer scaled by policy here (its policy was removed)" in host_log(setup),
        "h1 drops s's policy",
    )
    loop = BusyLoop(setup, "s")
    try:
        time.sleep(2 * 2.0)  # two windows: the policy would have scaled it up by now
        assert recorded(setup, "s") == [0]
    finally:
        loop.stop()
    assert setup.run("scale", "policy", "s", "--off").stdout.strip() == (
        "server s had no scaling policy"
    )
    no_bug(setup)


def test_a_malformed_policy_a_manual_scale_racing_the_policy_a_move_and_a_delete(
    servergroup_up: SetupFactory,
) -> None:
    setup = servergroup_up(2, env=POOL)
    setup.run("group", "create", "g", "--policy", "soft-anti-affinity")
    setup.run(
        "server", "create", "s", "--group", "g", "--vcpus", "3", "--min-vcpus", "1", "--host", "h1"
    )
    wait_until(lambda: guest_online(setup, "s") == (0, 1, 2), "s's agent made its CPU tree")

    # A record that is not a policy: one log line, nothing scaled, the CLI says so.
    put_raw(setup, policy_key("s"), b'{"server": "s", "policy": 12}')
    wait_until(
        lambda: "ignoring the scaling policy of server s" in host_log(setup), "h1 ignores it"
    )
    sentence = refused(setup, "scale", "policy", "s")
    assert "unreadable" in sentence
    assert "--off" in sentence
    assert recorded(setup, "s") == [0, 1, 2]

    # A valid policy replaces it. An idle s is scaled down while commands scale it up
    # by hand at the same time: every scale is queued on the scaler, none goes past the
    # flavor's limits, the policy gets the last word, and the guest agrees with the record.
    setup.run(
        "scale",
        "policy",
        "s",
        "--up-above",
        "90",
        "--down-below",
        "5",
        "--window",
        "1",
        "--cooldown",
        "0",
    )
    manual = [
        subprocess.Popen(
            setup.argv("scale", "cpu", "up", "s", "--json"),
            env=setup.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for proc in manual:
        _, err = proc.communicate(timeout=30)
        # Done, or refused in one sentence (at the maximum, or the 2-CPU pool is in use
        # by the vCPUs online); never a fault.
        assert proc.returncode == 0 or "its maximum" in err or "no free physical CPU" in err, err
        assert len(err.strip().splitlines()) <= 1, err
    wait_until(lambda: recorded(setup, "s") == [0], "s is scaled down to its minimum", timeout=40)
    assert guest_online(setup, "s") == (0,)
    text = host_log(setup)
    assert "scale down from 3 to 2 vCPUs: done" in text
    assert "scale down from 2 to 1 vCPUs: done" in text

    # s moves to h2: h1 drops the policy, h2 takes it up (s, scaled up by hand there,
    # is scaled down again by h2's autoscaler).
    setup.run("server", "migrate", "s", "--to", "h2", "--live")
    wait_until(
        lambda: "s: no longer scaled by policy here" in host_log(setup, "h1"),
        "h1 lets go of s",
    )
    wait_until(lambda: "server s: scaled by policy here" in host_log(setup, "h2"), "h2 takes s")
    setup.run("scale", "cpu", "up", "s")
    wait_until(lambda: recorded(setup, "s") == [0], "h2 scales s down", timeout=30)
    assert "scale down from 2 to 1 vCPUs: done" in host_log(setup, "h2")

    # Deleted: its policy goes with it, and a new s does not inherit it.
    setup.run("server", "delete", "s")
    wait_until(lambda: scaling_keys(setup, "policies/") == [], "s's policy is removed")
    assert "'s' does not exist" in refused(setup, "scale", "policy", "s")
    no_bug(setup)
