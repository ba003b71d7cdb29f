"""`servergroup service ...` through the real command line, on a real etcd and the real agents.

The node role is played by the test where a command needs one: it writes
the node, owner and master records a node role writes (`services.store`),
on a lease.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from servergroup.cli.main import cli
from servergroup.coordination import Coordinator, connect
from servergroup.services import store
from servergroup.services.placement import InstanceId
from tests.fixtures.coordinators import CONFIG
from tests.fixtures.daemons import Daemon, DaemonFactory

pytestmark = pytest.mark.timeout(90)

SG = [sys.executable, "-m", "servergroup"]
EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "services"
DUMMY = EXAMPLES / "dummy.toml"


def run(args: list[str], env: dict[str, str] | None = None, timeout: float = 60.0) -> Any:
    return subprocess.run(
        SG + args,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def ok(args: list[str], env: dict[str, str] | None = None) -> str:
    result = run(args, env)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    out: str = result.stdout
    return out


def one_sentence(result: Any, *fragments: str) -> str:
    assert result.returncode != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("servergroup: ")
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]
    line: str = lines[0]
    return line


@pytest.fixture
def env(etcd_server: Any, etcd_prefix: str) -> dict[str, str]:
    return {
        "SERVERGROUP_ETCD_ENDPOINTS": ",".join(str(e) for e in etcd_server.endpoints),
        "SERVERGROUP_PREFIX": etcd_prefix,
    }


@pytest.fixture
async def admin(etcd_server: Any, etcd_prefix: str) -> AsyncIterator[Coordinator]:
    c = connect(CONFIG, endpoints=etcd_server.endpoints, prefix=etcd_prefix)
    yield c
    await c.delete_prefix("")
    await c.close()


async def join(c: Coordinator, node: str) -> int:
    lease = (await c.grant(60)).id
    record = store.NodeRecord(node=node, ip=f"198.18.0.{node[1:]}", joined_at=time.time())
    await c.put(store.node_key(node), store.encode_node(record), lease=lease)
    return lease


async def own(c: Coordinator, service: str, node: str, lease: int, address: str | None) -> int:
    """Hold instance 0 on `node` and publish it as the master, as a node role does."""
    token = await c.create(
        store.owner_key(InstanceId(service=service, index=0)),
        store.encode_owner(store.OwnerRecord(node=node, master=True, started_at=time.time())),
        lease=lease,
    )
    assert token is not None
    await publish(c, service, node, token, lease, address)
    return token


async def publish(
    c: Coordinator, service: str, node: str, token: int, lease: int, address: str | None
) -> None:
    record = store.MasterRecord(node=node, index=0, token=token, address=address, at=time.time())
    await c.put(store.master_key(service), store.encode_master(record), lease=lease)


# -- without a store -----------------------------------------------------------------------


def validate(*args: str) -> Any:
    """`servergroup service validate` in this process (it needs no store)."""
    return CliRunner().invoke(cli, ["service", "validate", *args])


@pytest.mark.parametrize(("name", "stop"), [("dummy.toml", "0.4s"), ("promotable.toml", "0.15s")])
def test_validate_the_examples_against_their_agents(name: str, stop: str) -> None:
    result = validate(str(EXAMPLES / name))
    assert result.exit_code == 0, result.output
    assert result.stdout.endswith(f"{EXAMPLES / name}: valid\n")
    # The start timeout the file leaves out is the agent's hint, filled in (20 s for
    # Stateful); the stop timeout is the file's, short enough for the lease.
    assert f"start 20s, stop {stop}" in result.stdout


SERVICE = '[[service]]\nname = "a"\nagent = "ocf:heartbeat:Dummy"\n'


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (f'{SERVICE}instances = "x"\n', "instances"),
        (
            SERVICE.replace("Dummy", "Nope"),
            "service 'a': agent ocf:heartbeat:Nope is not installed: no executable",
        ),
        (f'{SERVICE}[service.parameters]\nstat = "/x"\n', "parameters.stat is not a parameter"),
        (f"{SERVICE}promotable = true\ninstances = 2\n", "cannot promote"),
        ("[[service]]\nname = ", "not valid TOML"),
        # Dummy's own hint is a 20 s stop: more than the node roles' 1 s lease leaves. The
        # file sets none, so the sentence says whose number it is.
        (SERVICE, "stop_timeout 20 s (the agent's default; with kill grace 20.1 s)"),
        (SERVICE, "; set a lower stop_timeout or raise lease_ttl."),
        (f"{SERVICE}stop_timeout = 1.5\n", "lower stop_timeout or raise lease_ttl"),
    ],
)
def test_validate_refuses_a_bad_file_in_one_sentence(tmp_path: Path, text: str, says: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    result = validate(str(path))
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("servergroup: ")
    assert says in result.stderr


def test_validate_takes_the_lease_of_the_configuration(tmp_path: Path) -> None:
    # What is refused under the default 1 s lease fits a 4 s one.
    path = tmp_path / "slow.toml"
    path.write_text(f"{SERVICE}stop_timeout = 1.5\n")
    result = CliRunner().invoke(
        cli,
        ["service", "validate", str(path)],
        env={"SERVERGROUP_SERVICES_LEASE_TTL": "4"},
    )
    assert result.exit_code == 0, result.output
    assert "stop 1.5s" in result.stdout


def test_validate_looks_for_agents_where_the_node_roles_do(tmp_path: Path) -> None:
    # `[services] ocf_root` (SERVERGROUP_OCF_ROOT) is where the node roles run agents
    # from: validate checks there too, unless --ocf-root (or OCF_ROOT) says otherwise.
    path = tmp_path / "dummy.toml"
    path.write_text(f"{SERVICE}stop_timeout = 0.3\n")
    empty = tmp_path / "ocf"
    (empty / "resource.d").mkdir(parents=True)
    environ = {"SERVERGROUP_OCF_ROOT": str(empty), "OCF_ROOT": None}
    result = CliRunner().invoke(cli, ["service", "validate", str(path)], env=environ)
    assert result.exit_code == 2, result.output
    assert f"no executable {empty}/resource.d/heartbeat/Dummy" in result.stderr
    result = CliRunner().invoke(
        cli, ["service", "validate", "--ocf-root", "/usr/lib/ocf", str(path)], env=environ
    )
    assert result.exit_code == 0, result.output


def test_validate_names_the_agent_whose_meta_data_fails_once(tmp_path: Path) -> None:
    agent = tmp_path / "agent"
    agent.write_text("#!/bin/sh\nexit 3\n")
    agent.chmod(0o755)
    path = tmp_path / "mine.toml"
    path.write_text(f'[[service]]\nname = "a"\nagent = "{agent}"\nstop_timeout = 0.3\n')
    result = validate(str(path))
    assert result.exit_code == 2, result.output
    assert result.stderr == (
        f"servergroup: service 'a': agent {agent}: meta-data returned 3 (ERR_UNIMPLEMENTED).\n"
    )


def test_validate_names_a_missing_file_and_an_outside_domain(tmp_path: Path) -> None:
    result = validate(str(tmp_path / "none.toml"))
    assert result.exit_code == 2
    assert result.stderr.startswith("servergroup: cannot read definitions file")
    assert "none.toml" in result.stderr
    path = tmp_path / "outside.toml"
    path.write_text(f'{SERVICE}domain = "lab"\n')
    result = validate(str(path), "--skip-agents")
    assert result.exit_code == 0, result.output
    assert "domain lab: not in this file" in result.stdout


def test_an_unreachable_store_is_one_sentence(tmp_path: Path) -> None:
    config = tmp_path / "sg.toml"
    config.write_text("[coordination]\noperation_timeout = 1.5\n")
    result = run(
        ["--config", str(config), "--endpoints", "127.0.0.1:1", "service", "list"],
        {"SERVERGROUP_STATE_DIR": str(tmp_path / "state")},
    )
    one_sentence(result, "http://127.0.0.1:1")


# -- on a real store -----------------------------------------------------------------------


async def test_every_command(env: dict[str, str], admin: Coordinator, tmp_path: Path) -> None:
    assert ok(["service", "add", str(DUMMY)], env) == "service dummy added; domain lab added\n"
    outside = tmp_path / "outside.toml"
    outside.write_text(
        '[[service]]\nname = "b"\nagent = "ocf:heartbeat:Dummy"\ndomain = "gone"\n'
        "stop_timeout = 0.3\n"
    )
    one_sentence(run(["service", "add", str(outside)], env), "domain 'gone' is not defined")
    listed = json.loads(ok(["service", "list", "--json"], env))
    assert listed["errors"] == []
    assert [(s["name"], s["state"], s["running"]) for s in listed["services"]] == [
        ("dummy", "stopped", 0)
    ]
    assert ok(["service", "where", "dummy"], env) == "dummy: no master\n"
    one_sentence(run(["service", "where", "nothing"], env), "no service 'nothing' is defined")

    lease1, lease2 = await join(admin, "h1"), await join(admin, "h2")
    token = await own(admin, "dummy", "h1", lease1, "198.18.0.1:7000")
    assert json.loads(ok(["service", "where", "dummy", "--json"], env)) == {
        "service": "dummy",
        "master": {
            "node": "h1",
            "index": 0,
            "token": token,
            "address": "198.18.0.1:7000",
            "at": pytest.approx(time.time(), abs=60),
        },
    }
    assert ok(["service", "where", "dummy"], env) == (
        f"dummy: master on h1 at 198.18.0.1:7000 (instance 0, token {token})\n"
    )
    text = ok(["service", "list"], env)
    assert text.splitlines()[1].split() == [
        "dummy",
        "running",
        "ocf:heartbeat:Dummy",
        "1/1",
        "h1",
        "h1",
        "198.18.0.1:7000",
    ]
    status = json.loads(ok(["service", "status", "dummy", "--json"], env))
    assert status["state"] == "running"
    assert status["instances"][0]["node"] == "h1"
    assert status["instances"][0]["token"] == token
    assert status["definition"]["domain"] == "lab"

    one_sentence(
        run(["service", "relocate", "dummy", "--to", "h9"], env), "'h9' is not a live node"
    )
    assert ok(["service", "relocate", "dummy", "--to", "h2"], env) == (
        "relocation of dummy/0 asked: from h1 to h2\n"
    )
    assert "relocation pending: from h1 to h2" in ok(["service", "status", "dummy"], env)
    assert ok(["service", "disable", "dummy"], env) == "service dummy disabled\n"
    status = json.loads(ok(["service", "status", "dummy", "--json"], env))
    assert (status["state"], status["disabled"]) == ("disabled", True)
    assert status["instances"][0]["relocation"] is None  # a disable drops it
    one_sentence(run(["service", "relocate", "dummy"], env), "service 'dummy' is disabled")
    assert ok(["service", "enable", "dummy"], env) == "service dummy enabled\n"

    now = time.time()
    await admin.put(
        store.failure_key("dummy", "h1"),
        store.encode_failure(store.FailureRecord(times=(now - 1, now), reason="monitor: rc 7")),
    )
    await admin.put(
        store.ban_key("dummy", "h3"),
        store.encode_ban(store.BanRecord(reason="start: not installed (rc 5)", at=now)),
    )
    await admin.put(
        store.blocked_key(InstanceId(service="dummy", index=0)),
        store.encode_block(store.BlockRecord(node="h2", token=3, reason="stop hung", at=now)),
    )
    entry = store.HistoryEntry(at=now, node="h1", index=0, token=token, action="start", result="ok")
    await admin.put(
        store.history_key("dummy"), store.encode_history(store.HistoryRecord(entries=(entry,)))
    )
    text = ok(["service", "status", "dummy"], env)
    assert text.splitlines()[0] == "service dummy: failed-stop"
    for fragment in (
        "failures on h1: 2",
        "monitor: rc 7",
        "banned from h3",
        "FAILED-STOP on h2 (token 3): stop hung; it may still run there",
        f"h1 instance 0 token {token}: start ok",
    ):
        assert fragment in text
    assert ok(["service", "clear", "dummy"], env) == (
        "service dummy: cleared 1 failure record(s), 1 ban(s), 1 block(s)\n"
    )
    status = json.loads(ok(["service", "status", "dummy", "--json"], env))
    assert (status["failures"], status["bans"], status["state"]) == ({}, {}, "running")
    assert ok(["service", "remove", "dummy"], env) == "service dummy removed\n"
    one_sentence(run(["service", "status", "dummy"], env), "no service 'dummy' is defined")
    await admin.revoke(lease1)
    await admin.revoke(lease2)


async def test_bad_records_do_not_crash_list_or_status(
    env: dict[str, str], admin: Coordinator
) -> None:
    ok(["service", "add", str(DUMMY)], env)
    await admin.put(store.def_key("broken"), b"{")
    await admin.put(store.master_key("dummy"), b"[1, 2]")
    await admin.put(store.state_key("dummy"), b'{"disabled": "yes", "at": 1}')
    result = run(["service", "list"], env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1].split()[:2] == ["broken", "unreadable"]
    warnings = result.stderr.strip().splitlines()
    assert len(warnings) == 3
    assert all(w.startswith("servergroup: warning: key services/") for w in warnings)
    listed = json.loads(ok(["service", "list", "--json"], env))
    assert [s["state"] for s in listed["services"]] == ["unreadable", "stopped"]
    result = run(["service", "status", "dummy"], env)
    assert result.returncode == 0, result.stderr
    assert "key services/state/dummy" in result.stderr
    assert "key services/master/dummy" in result.stderr
    one_sentence(run(["service", "status", "broken"], env), "definition of service 'broken'")
    one_sentence(run(["service", "where", "dummy"], env), "service master record is not")


async def test_two_cli_adds_racing_both_land(
    env: dict[str, str], admin: Coordinator, tmp_path: Path
) -> None:
    files = []
    for name in ("one", "two", "three"):
        path = tmp_path / f"{name}.toml"
        path.write_text(
            f'[[domain]]\nname = "d-{name}"\nnodes = ["h1"]\n'
            f'[[service]]\nname = "{name}"\nagent = "ocf:heartbeat:Dummy"\ndomain = "d-{name}"\n'
            "stop_timeout = 0.3\n"
        )
        files.append(path)
    procs = [
        await asyncio.create_subprocess_exec(
            *SG,
            "service",
            "add",
            str(p),
            env={**os.environ, **env},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for p in files
    ]
    for p in procs:
        async with asyncio.timeout(60):
            _, err = await p.communicate()
        assert p.returncode == 0, err.decode()
    listed = json.loads(ok(["service", "list", "--json"], env))
    assert [s["name"] for s in listed["services"]] == ["one", "three", "two"]


# -- discovery: where --watch --------------------------------------------------------------


def lines_of(d: Daemon) -> list[dict[str, Any]]:
    return [json.loads(line) for line in d.log_text().splitlines() if line.startswith("{")]


async def wait_lines(d: Daemon, count: int) -> list[dict[str, Any]]:
    def enough() -> bool:
        return len(lines_of(d)) >= count or not d.running

    deadline = time.monotonic() + 20
    while not enough():
        assert time.monotonic() < deadline, f"no line {count}; log:\n{d.log_text()}"
        await asyncio.sleep(0.02)
    return lines_of(d)


async def test_where_watch_prints_one_line_per_change(
    env: dict[str, str], admin: Coordinator, daemon: DaemonFactory
) -> None:
    """The master moves several times and goes; each change is one line, nothing twice.

    The last change is a sentinel: every line a change could cause arrives
    before it (one ordered watch), so the whole output is checked at once.
    """
    ok(["service", "add", str(DUMMY)], env)
    watch = daemon(
        [*SG, "service", "where", "dummy", "--watch", "--json"], env=env, name="where-watch"
    )
    assert [e["event"] for e in await wait_lines(watch, 1)] == ["gone"]  # how it stands

    lease1 = await join(admin, "h1")
    t1 = await own(admin, "dummy", "h1", lease1, "198.18.0.1:7000")
    await wait_lines(watch, 2)
    await publish(admin, "dummy", "h1", t1, lease1, "198.18.0.1:7000")  # same: no line
    await publish(admin, "dummy", "h1", t1, lease1, "198.18.0.1:7001")  # a new address
    await admin.revoke(lease1)  # h1's lease ends: its keys go
    lease2 = await join(admin, "h2")
    t2 = await own(admin, "dummy", "h2", lease2, "198.18.0.2:7000")
    await admin.delete(store.master_key("dummy"))  # demoted
    lease3 = await join(admin, "h3")
    await admin.delete(store.owner_key(InstanceId(service="dummy", index=0)))
    t3 = await own(admin, "dummy", "h3", lease3, "198.18.0.3:7000")
    await admin.revoke(lease3)  # gone
    await admin.put(store.master_key("dummy-other"), b"another service")
    t4 = await own(admin, "dummy", "h2", lease2, None)  # the sentinel
    got = await wait_lines(watch, 9)
    assert t1 < t2 < t3 < t4
    assert [(e["event"], e.get("node"), e.get("token"), e.get("address")) for e in got] == [
        ("gone", None, None, None),
        ("moved", "h1", t1, "198.18.0.1:7000"),
        ("moved", "h1", t1, "198.18.0.1:7001"),
        ("gone", None, None, None),
        ("moved", "h2", t2, "198.18.0.2:7000"),
        ("gone", None, None, None),
        ("moved", "h3", t3, "198.18.0.3:7000"),
        ("gone", None, None, None),
        ("moved", "h2", t4, None),
    ]
    watch.send_signal(signal.SIGINT)
    assert watch.wait(10) == 0, watch.log_text()
    assert len(lines_of(watch)) == 9
    assert "Traceback" not in watch.log_text()
    await admin.revoke(lease2)


def test_where_watch_of_an_unknown_service_is_one_sentence(env: dict[str, str]) -> None:
    one_sentence(run(["service", "where", "nothing", "--watch"], env), "no service 'nothing'")
