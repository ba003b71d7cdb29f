"""The original scaling tools over our relay path, both ways, with C programs written from the spec.

`tests/compat/scale_host_helper.c` behaves as the original host-side
scaling helper over libhostguestmsg (bound at abstract `scale-<hex>` on a
host, sending a `scale_request` to `cgcs.scale` of a guest named in
`dest_instance`), and `tests/compat/scale_guest_agent.c` as the original
guest scale agent (bound at abstract `cgcs.scale` in a guest, running the
helper `--cpu_del` / `--cpu_add`, writing `cpuN/online`, replying through
the guest agent). Spec: guest-host-protocol.md, sections 1, 3 and 5.

Everything between them is real: `servergroup up` (managed etcd, a lab host
with its host daemon and channel relay), lab servers with their real guest
agents; the host helper runs in the lab host's network namespace (`nsenter`),
the guest agent inside the server (`servergroup server exec`). The guest
agent's CPUs are a directory of the test's own with the sysfs layout, never
the machine's /sys.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from servergroup.scaling.cpus import format_cpu_list, parse_cpu_list
from servergroup.scaling.protocol import Direction, Result, ScaleNack, ScaleReply, decode_reply
from servergroup.scaling.sysfs import CPU_DIR
from tests.fixtures.setup import Setup, SetupFactory
from tests.integration.test_compat_c import (
    CProcess,
    build_c_programs,
    create_server,
    host_netns,
    in_server,
    names,
    py_status_of,
    start,
    words,
)

pytestmark = [pytest.mark.root, pytest.mark.timeout(180)]

#: The original's budget for one scaling request (spec section 5).
REQUEST_SECONDS = 10.0


@dataclass(frozen=True)
class ScalePrograms:
    host_helper: Path
    guest_agent: Path


@pytest.fixture(scope="session")
def scale_programs(tmp_path_factory: pytest.TempPathFactory) -> ScalePrograms:
    """`tests/compat/scale_*.c` compiled once per session."""
    built = build_c_programs(tmp_path_factory, ("scale_host_helper", "scale_guest_agent"))
    return ScalePrograms(
        host_helper=built["scale_host_helper"], guest_agent=built["scale_guest_agent"]
    )


@pytest.fixture
def procs() -> Iterator[list[CProcess]]:
    """Every C program a test started; stopped at teardown."""
    started: list[CProcess] = []
    yield started
    for proc in started:
        proc.stop()


# -- a guest's CPUs, as a directory of its own -------------------------------------------


@dataclass(frozen=True)
class GuestCpus:
    """A sysfs root with the layout of /sys/devices/system/cpu, and the app helper's files."""

    root: Path
    helper: Path

    @property
    def cpu_dir(self) -> Path:
        return self.root / "sys" / "devices" / "system" / "cpu"

    def online(self) -> tuple[int, ...]:
        return parse_cpu_list((self.cpu_dir / "online").read_text())

    def offline(self) -> tuple[int, ...]:
        return parse_cpu_list((self.cpu_dir / "offline").read_text())

    def cpu_online(self, cpu: int) -> bool:
        return (self.cpu_dir / f"cpu{cpu}" / "online").read_text().strip() == "1"

    def helper_picks(self, cpu: int) -> None:
        """The next `--cpu_del` exits with status `cpu` (0: no choice)."""
        (self.root / "pick").write_text(f"{cpu}\n")

    def hold(self) -> None:
        """The helper waits (a request stays in flight) until `release`."""
        (self.root / "hold").write_text("")

    def release(self) -> None:
        (self.root / "hold").unlink(missing_ok=True)

    def helper_calls(self) -> list[str]:
        log = self.root / "helper.log"
        return log.read_text().splitlines() if log.exists() else []


def make_guest_cpus(base: Path, count: int) -> GuestCpus:
    """CPUs 0..count-1, all online, as the kernel lays them out (cpu0 has no `online` file)."""
    root = base / "sysfs"
    cpu_dir = root / "sys" / "devices" / "system" / "cpu"
    every = format_cpu_list(range(count)) + "\n"
    for leaf, text in (("present", every), ("possible", every), ("online", every)):
        (cpu_dir).mkdir(parents=True, exist_ok=True)
        (cpu_dir / leaf).write_text(text)
    (cpu_dir / "offline").write_text("\n")
    for cpu in range(count):
        (cpu_dir / f"cpu{cpu}").mkdir()
        if cpu:
            (cpu_dir / f"cpu{cpu}" / "online").write_text("1\n")
    # The app helper of seed 003: --cpu_del exits with the CPU it picks, --cpu_add is logged.
    helper = root / "app_scale_helper"
    helper.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {root}/helper.log\n'
        # While the test holds it, the helper waits (at most 20 s): a request stays in flight.
        f"i=0; while [ -e {root}/hold ] && [ $i -lt 200 ]; do sleep 0.1; i=$((i+1)); done\n"
        f'if [ "$1" = --cpu_del ]; then exit "$(cat {root}/pick 2>/dev/null || echo 0)"; fi\n'
        "exit 0\n"
    )
    helper.chmod(0o755)
    return GuestCpus(root=root, helper=helper)


# -- the two programs ------------------------------------------------------------------------


def start_guest_agent(
    setup: Setup, server: str, programs: ScalePrograms, cpus: GuestCpus, started: list[CProcess]
) -> CProcess:
    args = ["-s", str(cpus.root), "-H", str(cpus.helper), "-t", "120"]
    return in_server(setup, server, programs.guest_agent, args, started)


def start_host_helper(
    setup: Setup,
    programs: ScalePrograms,
    instance: str,
    args: list[str],
    started: list[CProcess],
    *,
    seconds: float = REQUEST_SECONDS,
) -> CProcess:
    netns = host_netns(setup, "h1")
    argv = [
        "nsenter",
        f"--net=/run/netns/{netns}",
        str(programs.host_helper),
        *("-i", instance, "-t", str(seconds), *args),
    ]
    return start(argv, f"scale_host_helper in {netns} for {instance}", setup.env, started)


def reply_of(helper: CProcess, instance: str) -> dict[str, Any]:
    """The helper's `reply <instance> <data>`, after it exited 0."""
    lines = helper.finish(REQUEST_SECONDS + 5)
    replies = [words(line, 3) for line in lines if line.startswith(b"reply ")]
    assert len(replies) == 1, lines
    parts = replies[0]
    assert parts is not None
    assert parts[1] == instance
    # The helper's own measure of the round trip (what bench/scaling.py reports).
    assert [float(line.split()[1]) > 0 for line in lines if line.startswith(b"rtt ")] == [True]
    data: dict[str, Any] = json.loads(parts[2])
    return data


def request_seen(agent: CProcess, source: str) -> dict[str, Any]:
    """The next `request <source_addr> <data>` the guest agent printed (data as received)."""

    def check(line: bytes) -> dict[str, Any] | None:
        if not line.startswith(b"request "):
            return None
        parts = words(line, 3)
        assert parts is not None, line
        assert parts[1] == source, line
        data: dict[str, Any] = json.loads(parts[2])
        return data

    got: dict[str, Any] = agent.wait_for(check)
    agent.seen.remove(next(line for line in agent.seen if line.startswith(b"request ")))
    return got


def scale(
    setup: Setup,
    programs: ScalePrograms,
    agent: CProcess,
    instance: str,
    args: list[str],
    started: list[CProcess],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One request from the C host helper: (the request as the guest saw it, the reply)."""
    helper = start_host_helper(setup, programs, instance, args, started)
    helper.wait_for(lambda line: line.startswith(b"sent "))
    seen = request_seen(agent, f"scale-{instance.removeprefix('instance-')}")
    return seen, reply_of(helper, instance)


def stderr_until(proc: CProcess, word: str) -> list[str]:
    """The program's stderr lines, once one holds `word` (or after 5 s: they are all read)."""
    done = threading.Event()
    for _ in range(100):
        if any(word in line for line in proc.stderr):
            break
        done.wait(0.05)
    return list(proc.stderr)


def channel_up(setup: Setup, server: str, group: set[str] | None = None) -> None:
    """Wait until the server's guest agent is connected to its host (a status round trip
    listing the servers of its `group`, by default the server alone)."""
    app = setup.app(server)
    app.wait_for(py_status_of(group or {server}))
    app.stop()


# -- the tests ---------------------------------------------------------------------------------


def test_the_original_host_helper_scales_the_original_guest_agent_down_and_up(
    servergroup_up: SetupFactory,
    scale_programs: ScalePrograms,
    procs: list[CProcess],
    tmp_path: Path,
) -> None:
    setup = servergroup_up(1, env={"SERVERGROUP_LAB_SCALE_AGENT": "off"})
    group, (s1,) = names(1)
    setup.run("group", "create", group)
    instance = create_server(setup, s1, group)
    channel_up(setup, s1)
    cpus = make_guest_cpus(tmp_path, 4)
    agent = start_guest_agent(setup, s1, scale_programs, cpus, procs)

    # Down, no choice from the helper: the highest online CPU.
    cpus.helper_picks(0)
    seen, reply = scale(setup, scale_programs, agent, instance, ["-d", "down"], procs)
    # What the guest got is what the host helper sent, untouched by the relay.
    assert seen == {
        "version": 2,
        "msg_type": "scale_request",
        "timeout_ms": 9000,
        "resource": "cpu",
        "direction": "down",
    }
    assert reply == {
        "version": 2,
        "resource": "cpu",
        "direction": "down",
        "result": "success",
        "offline_cpu": 3,
        "online_cpus": [0, 1, 2],
    }
    assert decode_reply(reply) == ScaleReply(
        direction=Direction.DOWN, result=Result.SUCCESS, cpu=3, online_cpus=(0, 1, 2)
    )
    assert cpus.online() == (0, 1, 2)
    assert not cpus.cpu_online(3)

    # Down, the helper picks CPU 1 (its exit status): CPU 1.
    cpus.helper_picks(1)
    _, reply = scale(setup, scale_programs, agent, instance, ["-d", "down"], procs)
    assert (reply["result"], reply["offline_cpu"], reply["online_cpus"]) == ("success", 1, [0, 2])
    assert cpus.online() == (0, 2)
    assert cpus.offline() == (1, 3)

    # Down, the helper picks a CPU that is already offline: the highest online instead.
    cpus.helper_picks(3)
    _, reply = scale(setup, scale_programs, agent, instance, ["-d", "down"], procs)
    assert (reply["offline_cpu"], reply["online_cpus"]) == (2, [0])
    # Only CPU 0 left: it is never taken offline; the guest says why.
    _, reply = scale(setup, scale_programs, agent, instance, ["-d", "down"], procs)
    assert reply["result"] == "fail"
    assert "CPU 0" in reply["err_msg"]
    assert cpus.online() == (0,)

    # Up: the host names the CPU; the helper hears of it with the new online list.
    for cpu, online in ((1, [0, 1]), (2, [0, 1, 2]), (3, [0, 1, 2, 3])):
        seen, reply = scale(
            setup, scale_programs, agent, instance, ["-d", "up", "-c", str(cpu)], procs
        )
        assert seen["direction"] == "up"
        assert seen["online_cpu"] == cpu
        assert reply == {
            "version": 2,
            "resource": "cpu",
            "direction": "up",
            "result": "success",
            "online_cpu": cpu,
            "online_cpus": online,
        }
        assert cpus.online() == tuple(online)
        assert (
            cpus.helper_calls()[-1]
            == f"--cpu_add {cpu} {json.dumps(online, separators=(',', ':'))}"
        )
    assert cpus.offline() == ()

    # A request the guest cannot use: a nack with the reason, nothing changed.
    _, reply = scale(
        setup,
        scale_programs,
        agent,
        instance,
        ["-x", '{ "version": 2, "msg_type": "scale_request", "resource": "memory" }'],
        procs,
    )
    nack = decode_reply(reply)
    assert isinstance(nack, ScaleNack)
    assert "cpu" in nack.log_msg
    assert cpus.online() == (0, 1, 2, 3)


def test_two_guests_scaled_at_once_each_get_their_own_request_and_reply(
    servergroup_up: SetupFactory,
    scale_programs: ScalePrograms,
    procs: list[CProcess],
    tmp_path: Path,
) -> None:
    setup = servergroup_up(1, env={"SERVERGROUP_LAB_SCALE_AGENT": "off"})
    group, (s1, s2) = names(2)
    setup.run("group", "create", group)
    instances = [create_server(setup, s, group) for s in (s1, s2)]
    guests: list[tuple[str, GuestCpus, CProcess]] = []
    for server, instance in zip((s1, s2), instances, strict=True):
        channel_up(setup, server, {s1, s2})
        cpus = make_guest_cpus(tmp_path / server, 3)
        cpus.helper_picks(0)
        guests.append(
            (instance, cpus, start_guest_agent(setup, server, scale_programs, cpus, procs))
        )

    # Both host helpers in flight at once, one down, one up after a down.
    (i1, cpus1, _), (i2, cpus2, agent2) = guests
    _, reply = scale(setup, scale_programs, agent2, i2, ["-d", "down"], procs)
    assert reply["online_cpus"] == [0, 1]
    cpus1.hold()  # guest 1's helper waits: its request stays in flight
    down = start_host_helper(setup, scale_programs, i1, ["-d", "down"], procs)
    up = start_host_helper(setup, scale_programs, i2, ["-d", "up", "-c", "2"], procs)
    # A second helper for the same guest at the same time cannot bind scale-<hex>, as
    # with the original: it fails at once rather than take the other's reply.
    down.wait_for(lambda line: line == b"ready")
    twin = start_host_helper(setup, scale_programs, i1, ["-d", "down"], procs)
    assert twin.proc.wait(REQUEST_SECONDS) == 2  # its bind failed (a timeout would be 1)
    assert any("bind" in line for line in stderr_until(twin, "bind")), twin.stderr
    cpus1.release()
    down_reply, up_reply = reply_of(down, i1), reply_of(up, i2)
    assert (down_reply["direction"], down_reply["offline_cpu"]) == ("down", 2)
    assert down_reply["online_cpus"] == [0, 1]
    assert (up_reply["direction"], up_reply["online_cpu"]) == ("up", 2)
    assert up_reply["online_cpus"] == [0, 1, 2]
    assert cpus1.online() == (0, 1)
    assert cpus2.online() == (0, 1, 2)


def test_no_scale_agent_in_the_guest_means_a_timeout_and_a_non_zero_exit(
    servergroup_up: SetupFactory,
    scale_programs: ScalePrograms,
    procs: list[CProcess],
) -> None:
    setup = servergroup_up(1, env={"SERVERGROUP_LAB_SCALE_AGENT": "off"})
    group, (s1,) = names(1)
    setup.run("group", "create", group)
    instance = create_server(setup, s1, group)
    channel_up(setup, s1)
    helper = start_host_helper(setup, scale_programs, instance, ["-d", "down"], procs, seconds=2)
    assert helper.proc.wait(REQUEST_SECONDS) == 1
    assert "timeout" in stderr_until(helper, "timeout")
    helper.drain(0.1)
    assert not [line for line in helper.seen if line.startswith(b"reply ")]


def test_the_original_host_helper_scales_our_scale_agent(
    servergroup_up: SetupFactory, scale_programs: ScalePrograms, procs: list[CProcess]
) -> None:
    # The lab server's own guest agent runs our scale agent (the default), on the
    # server's own CPU tree; the C host helper speaks to it as the original one would.
    setup = servergroup_up(1)
    group, (server,) = names(1)
    setup.run("group", "create", group)
    instance = create_server(setup, server, group)
    channel_up(setup, server)
    online_file = setup.state_dir / "servers" / server / "sysroot" / CPU_DIR / "online"
    assert parse_cpu_list(online_file.read_text()) == (0,)  # a 1-vCPU flavor: CPU 0 only
    refused = reply_of(
        start_host_helper(setup, scale_programs, instance, ["-d", "down"], procs), instance
    )
    assert refused["result"] == "fail", refused
    assert "CPU 0" in refused["err_msg"], refused
    assert parse_cpu_list(online_file.read_text()) == (0,)
    # A bigger server: down, down, up, each reply the online list the server now has.
    group2, (big,) = names(1)
    setup.run("group", "create", group2)
    setup.run("server", "create", big, "--group", group2, "--vcpus", "3")
    instance2 = str(setup.json("server", "show", big)["instance_name"])
    channel_up(setup, big)
    big_online = setup.state_dir / "servers" / big / "sysroot" / CPU_DIR / "online"
    for args, expected in (
        (["-d", "down"], [0, 1]),
        (["-d", "down"], [0]),
        (["-d", "up", "-c", "2"], [0, 2]),
    ):
        reply = reply_of(
            start_host_helper(setup, scale_programs, instance2, args, procs), instance2
        )
        assert reply["result"] == "success", reply
        assert reply["online_cpus"] == expected
        assert list(parse_cpu_list(big_online.read_text())) == expected


def test_servergroup_scale_is_answered_by_the_original_guest_agent(
    servergroup_up: SetupFactory,
    scale_programs: ScalePrograms,
    procs: list[CProcess],
    tmp_path: Path,
) -> None:
    # The other way round from the test above: `servergroup scale cpu` (our CLI, the
    # host's scaler) reaches the original guest scale agent, which does not copy our
    # request `id` into its reply; the scaler still pairs them and records the result.
    setup = servergroup_up(
        1, env={"SERVERGROUP_LAB_SCALE_AGENT": "off", "SERVERGROUP_CPU_POOL": "0-1"}
    )
    group, (server,) = names(1)
    setup.run("group", "create", group)
    setup.run("server", "create", server, "--group", group, "--vcpus", "3", "--min-vcpus", "1")
    channel_up(setup, server)
    cpus = make_guest_cpus(tmp_path, 3)
    cpus.helper_picks(1)
    start_guest_agent(setup, server, scale_programs, cpus, procs)  # ready: bound

    def scale_cli(direction: str) -> dict[str, Any]:
        done = setup.run("scale", "cpu", direction, server, "--json")
        out: dict[str, Any] = json.loads(done.stdout)
        return out

    # Down: the original agent runs the helper, which picks vCPU 1.
    out = scale_cli("down")
    assert (out["cpu"], out["online_cpus"]) == (1, [0, 2]), out
    assert cpus.online() == (0, 2)
    assert cpus.helper_calls()[-1].startswith("--cpu_del")
    # Down again, no pick: the highest online vCPU; then the minimum is refused by the
    # host before the guest is asked (its helper is not called again).
    cpus.helper_picks(0)
    out = scale_cli("down")
    assert (out["cpu"], out["online_cpus"]) == (2, [0]), out
    calls = len(cpus.helper_calls())
    done = setup.run("scale", "cpu", "down", server, check=False)
    assert done.returncode != 0
    assert "minimum" in done.stderr
    assert len(cpus.helper_calls()) == calls
    # Up: the host names the lowest offline vCPU; the original agent onlines it and
    # tells its helper with the new online list.
    out = scale_cli("up")
    assert (out["cpu"], out["online_cpus"]) == (1, [0, 1]), out
    assert cpus.online() == (0, 1)
    assert cpus.helper_calls()[-1] == "--cpu_add 1 [0,1]"
    # What the host recorded is what the guest has.
    assert setup.json("server", "show", server)["online_cpus"] == [0, 1]
