"""`servergroup group|server` as real processes, against a host served in-process."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from servergroup.coordination import EtcdCluster
from tests.integration.servers.conftest import HostFactory, NameFactory

pytestmark = pytest.mark.root

Cli = Callable[..., Awaitable[tuple[int, str, str]]]


@pytest.fixture
def cli(etcd_server: EtcdCluster, etcd_prefix: str, server_state_dir: Path) -> Cli:
    env = dict(os.environ)
    env.update(
        SERVERGROUP_ETCD_ENDPOINTS=",".join(str(e) for e in etcd_server.endpoints),
        SERVERGROUP_PREFIX=etcd_prefix,
        SERVERGROUP_STATE_DIR=str(server_state_dir),
    )

    async def run(*args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "servergroup",
            *args,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    return run


async def test_groups_and_servers_from_the_command_line(
    cli: Cli, hosts: HostFactory, server_names: NameFactory
) -> None:
    assert await cli("group", "create", "g", "--policy", "anti-affinity") == (
        0,
        "group g created (anti-affinity, evacuate auto)\n",
        "",
    )
    status, _, err = await cli("group", "create", "g")
    assert status == 2
    assert "already exists" in err
    name = server_names()
    status, _, err = await cli("server", "create", name, "--group", "g")
    assert (status, err) == (
        3,
        "servergroup: no host is running: start one with `servergroup up`.\n",
    )

    await hosts("h0")
    status, out, err = await cli("server", "create", name, "--group", "g", "--vcpus", "2")
    assert status == 0, err
    assert out.startswith(f"server {name} is active on h0 (instance-")
    status, out, _ = await cli("server", "list", "--json")
    [listed] = json.loads(out)
    assert (listed["name"], listed["host"], listed["vm_state"], listed["online_cpus"]) == (
        name,
        "h0",
        "active",
        [0, 1],
    )
    status, out, _ = await cli("server", "list")
    assert out.splitlines()[0].split() == [
        "NAME",
        "GROUP",
        "HOST",
        "STATE",
        "TASK",
        "VCPUS",
        "INSTANCE",
    ]
    assert out.splitlines()[1].split()[:4] == [name, "g", "h0", "active"]
    status, out, _ = await cli("server", "show", name, "--json")
    assert json.loads(out)["server_group"] == "g"
    status, out, _ = await cli("group", "list", "--json")
    assert json.loads(out)[0]["members"] == [name]
    assert await cli("server", "list", "--group", "nope") == (
        2,
        "",
        "servergroup: group 'nope' does not exist.\n",
    )

    status, out, err = await cli("server", "exec", name, "--", "ip", "-br", "link")
    assert (status, out.split(), err) == (0, ["lo", "DOWN", "00:00:00:00:00:00", "<LOOPBACK>"], "")
    status, _, _ = await cli("server", "exec", name, "--", "sh", "-c", "exit 7")
    assert status == 7
    # `server exec` becomes the command: same PID, so a signal to it reaches the command.
    status, out, err = await cli("server", "exec", name, "--", "sh", "-c", 'echo "$$ $PPID"')
    assert status == 0, err
    _, parent = out.split()
    assert int(parent) == os.getpid()

    assert (await cli("server", "pause", name))[1] == f"server {name} is paused on h0\n"
    status, _, err = await cli("server", "exec", name, "--", "true")
    assert status == 2
    assert "is paused" in err
    status, _, err = await cli("server", "stop", name)
    assert status == 0, err
    status, _, err = await cli("server", "unpause", name)
    assert status == 2
    assert err == (
        f"servergroup: server {name} is stopped, not paused: "
        f"use `servergroup server start {name}`.\n"
    )
    status, _, err = await cli("server", "migrate", name, "--to", "h0")
    assert (status, err) == (2, f"servergroup: server {name} already runs on h0.\n")
    status, out, _ = await cli("server", "delete", name)
    assert (status, out) == (0, f"server {name} is deleted\n")
    assert await cli("group", "delete", "g") == (0, "group g deleted\n", "")
    status, _, err = await cli("server", "show", name)
    assert status == 2
    assert "does not exist" in err


async def test_a_server_whose_host_died_is_refused_at_once(
    cli: Cli, hosts: HostFactory, server_names: NameFactory
) -> None:
    status, _, err = await cli(
        "group", "create", "g", "--policy", "soft-anti-affinity", "--evacuate", "manual"
    )
    assert status == 0, err
    h1 = await hosts("h1")
    await hosts("h2")
    name = server_names()
    status, _, err = await cli("server", "create", name, "--group", "g", "--host", "h1")
    assert status == 0, err
    await h1.stop_manager()
    await h1.coordinator.revoke(h1.lease)

    # Its last status says "active", but what ran there died with its host.
    status, _, err = await cli("server", "exec", name, "--", "true")
    assert (status, err) == (
        2,
        f"servergroup: server {name} is lost: its host h1 is not running "
        f"(`servergroup server evacuate {name}` rebuilds it elsewhere).\n",
    )
    # Nothing is left on h1 to move: refused, rather than left "moving" until h1 returns.
    started = time.monotonic()
    status, _, err = await cli("server", "migrate", name, "--to", "h2")
    assert (status, err) == (
        2,
        f"servergroup: host h1 of server {name} is not running: rebuild it elsewhere "
        f"with `servergroup server evacuate {name} --to h2`.\n",
    )
    assert time.monotonic() - started < 5  # at once, not after the operation's timeout
    status, out, _ = await cli("server", "show", name, "--json")
    assert json.loads(out)["spec_host"] == "h1"
