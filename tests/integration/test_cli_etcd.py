"""`servergroup etcd` as a user runs it: a subprocess, a state directory, real etcd."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from servergroup.common.process import process_state
from servergroup.config import load_config
from servergroup.coordination.etcd_process import free_ports, is_healthy
from servergroup.coordination.local_etcd import LocalEtcd
from tests.fixtures.daemons import DaemonFactory
from tests.fixtures.etcd import own_local_etcd_env

CLI = [sys.executable, "-m", "servergroup"]


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """Environment for the CLI: own state directory and free ports; stops what it started."""
    values = own_local_etcd_env(tmp_path / "state")
    yield values
    LocalEtcd(load_config(env=values)).stop(timeout=5.0)


def sg(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "etcd", *args], env=env, capture_output=True, text=True, timeout=30
    )


def assert_one_sentence_error(done: subprocess.CompletedProcess[str], status: int) -> str:
    """A user-facing failure: this exit status, one stderr line, no traceback."""
    assert "Traceback" not in done.stdout + done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("servergroup: ")
    assert done.returncode == status, done.stderr
    return lines[0]


def test_help_names_every_mode(env: dict[str, str]) -> None:
    done = sg(env, "--help")
    assert done.returncode == 0
    for option in ("--status", "--start", "--stop", "--json", "--port", "--peer-port"):
        assert option in done.stdout


def test_status_start_json_stop(env: dict[str, str]) -> None:
    port = env["SERVERGROUP_ETCD_PORT"]
    done = sg(env, "--status")
    assert done.returncode == 3
    assert done.stdout.startswith("the local etcd is not running")
    assert f"http://127.0.0.1:{port}" in done.stdout

    done = sg(env, "--start")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"the local etcd is running at http://127.0.0.1:{port}")

    done = sg(env, "--status", "--json")
    assert done.returncode == 0
    status = json.loads(done.stdout)
    assert status["running"] is True
    assert status["healthy"] is True
    assert status["endpoint"] == f"http://127.0.0.1:{port}"
    assert status["data_dir"] == env["SERVERGROUP_STATE_DIR"] + "/etcd/data"
    pid = status["pid"]

    done = sg(env, "--status")
    assert done.returncode == 0
    assert f"pid {pid}" in done.stdout

    assert sg(env, "--start").returncode == 0
    assert json.loads(sg(env, "--status", "--json").stdout)["pid"] == pid  # reused

    done = sg(env, "--stop")
    assert done.returncode == 0
    assert done.stdout.strip() == f"stopped the local etcd (pid {pid})."
    assert process_state(pid) in (None, "Z")  # gone, or exited and waiting for init to reap
    assert sg(env, "--status").returncode == 3
    assert sg(env, "--stop").stdout.strip() == "the local etcd was not running."


READS = [
    ["status"],
    ["group", "list"],
    ["server", "list"],
    ["server", "show", "vm1"],
    ["host", "list"],
    ["host", "show", "h1"],
    ["service", "list"],
    ["service", "status", "web"],
    ["service", "where", "web"],
    ["replication", "status", "pair"],
    ["election", "show", "key"],
    ["scale", "policy", "vm1"],
]


def test_a_command_that_only_looks_does_not_start_the_local_etcd(env: dict[str, str]) -> None:
    """Reads say the store is not running and leave no daemon; a write starts it."""
    for args in READS:
        done = subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=30)
        line = assert_one_sentence_error(done, 1)
        assert "the local etcd is not running" in line, args
        assert "servergroup etcd --start" in line
    assert LocalEtcd(load_config(env=env)).running() is None
    assert sg(env, "--status").returncode == 3

    done = subprocess.run(
        [*CLI, "group", "create", "web"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert LocalEtcd(load_config(env=env)).running() is not None
    done = subprocess.run(
        [*CLI, "group", "list"], env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert "web" in done.stdout

    # `down` stops only an etcd that `up` started, and says this one runs on.
    done = subprocess.run([*CLI, "down"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    running = LocalEtcd(load_config(env=env)).running()
    assert running is not None
    assert done.stdout.strip() == (
        f"nothing is up; the local etcd (pid {running[0]}) was not started by up and runs on: "
        "`servergroup etcd --stop` stops it"
    )


def test_port_options_override_the_environment(env: dict[str, str]) -> None:
    client, peer = free_ports(2)
    ports = ("--port", str(client), "--peer-port", str(peer))
    assert sg(env, "--start", *ports).returncode == 0
    status = json.loads(sg(env, "--status", "--json", *ports).stdout)
    assert status["endpoint"] == f"http://127.0.0.1:{client}"
    assert sg(env, "--stop", *ports).returncode == 0


def test_foreground_runs_until_interrupted(env: dict[str, str], daemon: DaemonFactory) -> None:
    fg = daemon([*CLI, "etcd"], env=env, name="servergroup-etcd", ready=r"Ctrl-C stops it")
    status = json.loads(sg(env, "--status", "--json").stdout)
    assert status["running"] is True
    assert status["pid"] != fg.pid  # etcd is the command's child
    assert is_healthy(LocalEtcd(load_config(env=env)).endpoint)
    assert '"level"' in fg.log_text()  # etcd's own log is shown on the terminal
    fg.send_signal(signal.SIGINT)
    assert fg.wait(10.0) == 0
    assert sg(env, "--status").returncode == 3
    assert not Path(env["SERVERGROUP_STATE_DIR"], "etcd", "state.json").exists()


def test_foreground_stops_when_stopped_from_elsewhere(
    env: dict[str, str], daemon: DaemonFactory
) -> None:
    fg = daemon([*CLI, "etcd"], env=env, name="servergroup-etcd", ready=r"Ctrl-C stops it")
    assert sg(env, "--stop").returncode == 0
    assert fg.wait(10.0) == 0


def test_foreground_refuses_when_already_running(env: dict[str, str]) -> None:
    assert sg(env, "--start").returncode == 0
    line = assert_one_sentence_error(sg(env), 2)
    assert "already running" in line


def test_json_needs_status(env: dict[str, str]) -> None:
    done = sg(env, "--json")
    assert done.returncode == 2
    assert "--json goes with --status" in done.stderr


# -- faults: one sentence, a non-zero status, no traceback -------------------


def test_etcd_not_installed(env: dict[str, str], tmp_path: Path) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    line = assert_one_sentence_error(sg({**env, "PATH": str(empty)}, "--start"), 5)
    assert "etcd is not installed" in line
    assert "etcd-server" in line


def test_port_in_use_by_another_program(env: dict[str, str]) -> None:
    port = int(env["SERVERGROUP_ETCD_PORT"])
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        line = assert_one_sentence_error(sg(env, "--start"), 2)
    assert f"port {port} on 127.0.0.1 is in use by another program" in line
    assert "SERVERGROUP_ETCD_PORT" in line


def test_peer_port_in_use_by_another_program(env: dict[str, str]) -> None:
    port = int(env["SERVERGROUP_ETCD_PEER_PORT"])
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        line = assert_one_sentence_error(sg(env), 2)  # foreground too
    assert f"port {port}" in line
    assert "SERVERGROUP_ETCD_PEER_PORT" in line


def test_unwritable_state_directory(env: dict[str, str], tmp_path: Path) -> None:
    # We run as root, so permission bits would not stop us; a path below a
    # regular file cannot be created by anyone.
    (tmp_path / "a-file").write_text("")
    state_dir = tmp_path / "a-file" / "state"
    line = assert_one_sentence_error(
        sg({**env, "SERVERGROUP_STATE_DIR": str(state_dir)}, "--start"), 2
    )
    assert f"the state directory {state_dir} is not usable" in line
    assert "Not a directory" in line


def test_etcd_fails_to_start(env: dict[str, str]) -> None:
    data_dir = Path(env["SERVERGROUP_STATE_DIR"], "etcd", "data")
    data_dir.mkdir(parents=True)
    (data_dir / "member").write_text("")  # etcd needs a directory here
    line = assert_one_sentence_error(sg(env, "--start"), 3)
    assert "the local etcd exited with status 1 while starting" in line
    # The last line of etcd's log says why.
    assert "not a directory" in line
    assert str(data_dir.parent / "etcd.log") in line


def test_bad_setting(env: dict[str, str]) -> None:
    line = assert_one_sentence_error(sg({**env, "SERVERGROUP_ETCD_PORT": "high"}, "--status"), 2)
    assert "etcd.client_port" in line
