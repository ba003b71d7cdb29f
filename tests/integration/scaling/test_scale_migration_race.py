"""A scale racing a live migration of a lab server: the guest ends as its record says.

Real host daemons (their scalers), real etcd, a lab server whose guest runs
our real scale agent (`servergroup scale-agent`, started in the server with
`server exec`) with an app helper that the test can hold: the helper touches
a file as it starts, then waits for the test's word (a file), so the test
moves the server to the other host exactly while its old host's scale is
inside the guest. The old host
cannot record what its guest did (the record is the new host's now); the new
host settles the server when that order ends, pushing its record to the
guest. Then free-running rounds: scale commands and a live migration started
together, in both directions.

What must hold after each race: the guest's own online CPUs (its tree's
`online` file) become the record's; every scale reported OK is in the record
(its vCPU offline there) and every one that failed is not (the record is the
full set minus the vCPUs of the OK scale downs); one sentence for a failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from servergroup.scaling.cpus import parse_cpu_list
from servergroup.scaling.sysfs import CPU_DIR
from tests.fixtures.setup import Setup, SetupFactory
from tests.integration.scaling.test_host_scale import no_bug, wait_until

pytestmark = pytest.mark.timeout(240)

#: The guest's scale agent is the test's (with its helper): the lab's own is left out.
ENV = {"SERVERGROUP_CPU_POOL": "0-1", "SERVERGROUP_LAB_SCALE_AGENT": "off"}
VCPUS = 4
#: The held helper waits for the release file at most this long (in 0.05 s steps), well
#: within the held scale's --timeout: the guest does the scale, it is not killed.
HOLD_STEPS = 60
HELD_TIMEOUT = "5"


def guest_online(root: Path) -> tuple[int, ...] | None:
    try:
        return parse_cpu_list((root / CPU_DIR / "online").read_text())
    except OSError:
        return None


def recorded(setup: Setup) -> tuple[int, ...]:
    return tuple(setup.json("server", "show", "s")["online_cpus"])


def where(setup: Setup) -> str:
    host: str = setup.json("server", "show", "s")["host"]
    return host


def start_agent(setup: Setup, root: Path, helper: Path) -> subprocess.Popen[bytes]:
    """Our scale agent in the server, on its own CPU tree, with `helper`."""
    ready = root / "ready"
    ready.unlink(missing_ok=True)
    err = (setup.state_dir / "scale-agent.err").open("ab")
    proc = subprocess.Popen(
        setup.argv(
            "server", "exec", "s", "--", *setup.argv(
                "-v", "--log-text", "scale-agent", "--sysfs-root", str(root),
                "--lab-cpus", str(VCPUS), "--helper", str(helper), "--ready-file", str(ready),
            ),
        ),
        env=setup.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=err,
        start_new_session=True,
    )  # fmt: skip
    err.close()
    wait_until(
        lambda: ready.exists() or proc.poll() is not None, "the scale agent is ready", timeout=30
    )
    assert proc.poll() is None, (setup.state_dir / "scale-agent.err").read_text()[-2000:]
    return proc


def start_scale(setup: Setup, direction: str = "down", timeout: str = "2") -> subprocess.Popen[str]:
    return subprocess.Popen(
        setup.argv("scale", "cpu", direction, "s", "--json", "--timeout", timeout),
        env=setup.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def ended(procs: list[subprocess.Popen[str]]) -> tuple[set[int], list[str]]:
    """The vCPUs the scales that ended OK took offline or brought online; the sentences of
    those that failed."""
    changed: set[int] = set()
    failed: list[str] = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert "Traceback" not in err, err
        if proc.returncode == 0:
            cpu = json.loads(out)["cpu"]
            assert cpu not in changed, f"two scales reported vCPU {cpu}"
            changed.add(cpu)
        else:
            assert len(err.strip().splitlines()) == 1, err
            failed.append(err.strip())
    return changed, failed


def settled(setup: Setup, root: Path, online: tuple[int, ...]) -> tuple[int, ...]:
    """The record is `online`; the guest comes to match it."""
    assert recorded(setup) == online, "the record is not what the OK scales said"
    wait_until(lambda: guest_online(root) == online, f"the guest's online CPUs become {online}")
    return online


def test_a_scale_racing_a_live_migration_leaves_the_guest_as_recorded(
    servergroup_up: SetupFactory,
) -> None:
    setup = servergroup_up(2, env=ENV)
    setup.run("group", "create", "g")
    setup.run("server", "create", "s", "--group", "g", "--vcpus", str(VCPUS), "--host", "h1")
    root = setup.state_dir / "race-sysroot"
    started = setup.state_dir / "helper-started"
    release = setup.state_dir / "helper-release"
    helper = setup.state_dir / "held-helper"
    helper.write_text(
        f"#!/bin/sh\ntouch {started}\ni=0\n"
        f"while [ ! -e {release} ] && [ $i -lt {HOLD_STEPS} ]; do sleep 0.05; i=$((i+1)); done\n"
        "exit 0\n"
    )
    helper.chmod(0o755)
    agent = start_agent(setup, root, helper)
    try:
        # 1. Held: h1's scale is inside the guest (its helper waits) when s moves to h2.
        racer = start_scale(setup, timeout=HELD_TIMEOUT)
        wait_until(started.exists, "the guest's helper started", timeout=30)
        setup.run("server", "migrate", "s", "--to", "h2", "--live")
        release.touch()
        taken, failed = ended([racer])
        assert taken == set()  # h1 could not record it: failed, in one sentence
        assert "moved to h2 while being scaled" in failed[0], failed
        online = settled(setup, root, (0, 1, 2, 3))  # h2 brought the guest back to the record
        assert where(setup) == "h2"

        # 2. Free-running: scale commands and a live migration at once, both ways (the
        # pool has 2 CPUs: an up needs one of them free, so down to 1 vCPU first).
        helper.write_text("#!/bin/sh\nexit 0\n")
        for target, directions in (("h1", ("down", "down")), ("h2", ("down",)), ("h1", ("up",))):
            racers = [start_scale(setup, d) for d in directions]
            time.sleep(0.3)  # the commands' start-up: the move lands among their scales
            setup.run("server", "migrate", "s", "--to", target, "--live")
            changed, _ = ended(racers)
            now = set(online) - changed if directions[0] == "down" else set(online) | changed
            online = settled(setup, root, tuple(sorted(now)))
            assert where(setup) == target
        no_bug(setup)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(agent.pid, signal.SIGTERM)
        agent.wait(timeout=30)
