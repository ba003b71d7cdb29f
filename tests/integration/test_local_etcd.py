"""The managed local etcd against real etcd processes: start, reuse, stop, status, faults."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from servergroup.common.errors import ConfigError, MissingDependency, ProcessFailed, UsageError
from servergroup.common.process import process_state
from servergroup.config import (
    Config,
    CoordinationConfig,
    Endpoint,
    LocalEtcdConfig,
    parse_endpoints,
)
from servergroup.coordination.etcd_process import free_ports, is_healthy
from servergroup.coordination.local_etcd import LocalEtcd, resolve_endpoints


def alive(pid: int) -> bool:
    return process_state(pid) not in (None, "Z", "X")


def local_config(
    state_dir: Path,
    *,
    binary: str = "etcd",
    client_port: int | None = None,
    peer_port: int | None = None,
) -> Config:
    """Config for a local etcd under `state_dir` on free ports (or the given ones)."""
    free_client, free_peer = free_ports(2)
    settings = LocalEtcdConfig(
        binary=binary,
        client_port=client_port or free_client,
        peer_port=peer_port or free_peer,
        start_timeout=10.0,
    )
    return Config(state_dir=state_dir, etcd=settings.validate())


@pytest.fixture
def config(tmp_path: Path) -> Iterator[Config]:
    """A state directory and free ports of this test's own; whatever it started is stopped."""
    cfg = local_config(tmp_path / "state")
    yield cfg
    LocalEtcd(cfg).stop(timeout=5.0)


def test_serving_another_address_restarts_it_keeping_the_data(config: Config) -> None:
    local = LocalEtcd(config)
    endpoint = local.ensure_running()
    first = local.status().pid
    subprocess.run(
        ["etcdctl", f"--endpoints={endpoint}", "put", "kept", "yes"],
        check=True,
        capture_output=True,
    )
    assert local.ensure_running(serve_also=("127.0.0.2",)) == endpoint
    second = local.status().pid
    assert second != first
    also = Endpoint(host="127.0.0.2", port=endpoint.port)
    assert is_healthy(also)
    got = subprocess.run(
        ["etcdctl", f"--endpoints={also}", "get", "kept", "--print-value-only"],
        check=True,
        capture_output=True,
        text=True,
    )
    assert got.stdout.strip() == "yes"
    # Asking again (or for less) reuses it as it is.
    local.ensure_running(serve_also=("127.0.0.2",))
    local.ensure_running()
    assert local.status().pid == second


def test_start_reuse_stop(config: Config) -> None:
    local = LocalEtcd(config)
    before = local.status()
    assert not before.running
    assert before.pid is None
    assert before.endpoint == Endpoint(host="127.0.0.1", port=config.etcd.client_port)

    endpoint = local.ensure_running()
    assert endpoint == before.endpoint
    assert is_healthy(endpoint)
    status = local.status()
    assert status.running
    assert status.healthy
    assert status.pid is not None
    assert status.data_dir == config.state_dir / "etcd" / "data"
    assert status.log_path == config.state_dir / "etcd" / "etcd.log"
    assert status.started_at is not None
    assert abs(status.started_at - time.time()) < 60
    assert status.describe().startswith(f"the local etcd is running at {endpoint}, healthy")

    record = json.loads((config.state_dir / "etcd" / "state.json").read_text())
    assert record["pid"] == status.pid
    assert record["endpoint"] == str(endpoint)
    assert record["log_path"] == str(status.log_path)

    # Tuned for a 1 s minimum lease, loopback only.
    cmdline = Path(f"/proc/{status.pid}/cmdline").read_bytes().split(b"\0")
    assert b"--heartbeat-interval" in cmdline
    assert cmdline[cmdline.index(b"--election-timeout") + 1] == b"500"
    assert cmdline[cmdline.index(b"--listen-client-urls") + 1] == str(endpoint).encode()
    # A bounded store: history kept for a time window, and a quota behind it.
    assert cmdline[cmdline.index(b"--auto-compaction-mode") + 1] == b"periodic"
    assert cmdline[cmdline.index(b"--auto-compaction-retention") + 1] == b"5m"
    assert int(cmdline[cmdline.index(b"--quota-backend-bytes") + 1]) == 1 << 30

    # Reused, by this object and by a fresh one (another command).
    assert local.ensure_running() == endpoint
    assert LocalEtcd(config).ensure_running() == endpoint
    assert LocalEtcd(config).status().pid == status.pid

    assert local.stop() == status.pid
    assert not alive(status.pid)
    assert not local.status().running
    assert not (config.state_dir / "etcd" / "state.json").exists()
    assert local.stop() is None


def test_outlives_the_process_that_started_it_and_is_reused(config: Config) -> None:
    # Start it from another process, as a CLI command would, then reuse it here.
    script = (
        "from servergroup.config import load_config; "
        "from servergroup.coordination.local_etcd import LocalEtcd; "
        "print(LocalEtcd(load_config()).ensure_running())"
    )
    env = {
        **os.environ,
        "SERVERGROUP_STATE_DIR": str(config.state_dir),
        "SERVERGROUP_ETCD_PORT": str(config.etcd.client_port),
        "SERVERGROUP_ETCD_PEER_PORT": str(config.etcd.peer_port),
    }
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert done.stdout.strip() == f"http://127.0.0.1:{config.etcd.client_port}"
    status = LocalEtcd(config).status()
    assert status.running
    assert status.healthy
    assert status.pid is not None
    assert LocalEtcd(config).ensure_running() == status.endpoint
    assert LocalEtcd(config).status().pid == status.pid
    # Not our child: stopped through its pid, after the ownership check.
    assert LocalEtcd(config).stop() == status.pid
    assert not alive(status.pid)


def test_found_again_when_the_state_file_is_lost(config: Config) -> None:
    local = LocalEtcd(config)
    local.ensure_running()
    pid = local.status().pid
    (config.state_dir / "etcd" / "state.json").unlink()
    assert local.status().pid == pid
    local.ensure_running()
    assert local.status().pid == pid


def test_a_stale_pid_of_another_program_is_never_signalled(config: Config) -> None:
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        etcd_dir = config.state_dir / "etcd"
        etcd_dir.mkdir(parents=True)
        (etcd_dir / "state.json").write_text(
            json.dumps(
                {
                    "pid": stranger.pid,
                    "endpoint": "http://127.0.0.1:1",
                    "started_at": 0,
                    "log_path": "x",
                    "data_dir": str(etcd_dir / "data"),
                }
            )
        )
        local = LocalEtcd(config)
        assert not local.status().running
        assert local.stop() is None
        assert stranger.poll() is None
        local.ensure_running()  # the stale record is replaced
        assert local.status().pid not in (None, stranger.pid)
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


def test_damaged_state_file_is_ignored(config: Config) -> None:
    etcd_dir = config.state_dir / "etcd"
    etcd_dir.mkdir(parents=True)
    (etcd_dir / "state.json").write_text("{not json")
    local = LocalEtcd(config)
    assert not local.status().running
    local.ensure_running()
    assert local.status().running


def test_resolve_endpoints_prefers_configured_ones(config: Config) -> None:
    configured = Config(
        state_dir=config.state_dir,
        etcd=config.etcd,
        coordination=CoordinationConfig(endpoints=parse_endpoints("10.1.2.3:2379"), insecure=True),
    )
    assert resolve_endpoints(configured) == (Endpoint(host="10.1.2.3", port=2379),)
    assert not LocalEtcd(config).status().running  # nothing was started
    (endpoint,) = resolve_endpoints(config)
    assert is_healthy(endpoint)
    assert LocalEtcd(config).status().running


def test_port_taken_by_another_program(tmp_path: Path) -> None:
    config = local_config(tmp_path / "state")
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", config.etcd.client_port))
        squatter.listen()
        with pytest.raises(ConfigError, match=rf"port {config.etcd.client_port} .* in use"):
            LocalEtcd(config).ensure_running()
    assert not LocalEtcd(config).status().running


def test_running_on_another_port_is_reported_not_silently_reused(config: Config) -> None:
    LocalEtcd(config).ensure_running()
    client, peer = free_ports(2)
    moved = local_config(config.state_dir, client_port=client, peer_port=peer)
    with pytest.raises(ConfigError, match="not at the configured"):
        LocalEtcd(moved).ensure_running()


def test_missing_etcd(tmp_path: Path) -> None:
    config = local_config(tmp_path / "state", binary="/nonexistent/etcd")
    with pytest.raises(MissingDependency, match="etcd-server"):
        LocalEtcd(config).ensure_running()


def test_unwritable_state_directory(tmp_path: Path) -> None:
    # Root ignores permission bits, but nobody can create a directory below a file.
    (tmp_path / "file").write_text("")
    config = local_config(tmp_path / "file" / "state")
    with pytest.raises(ConfigError, match=r"state directory .* not usable .*Not a directory"):
        LocalEtcd(config).ensure_running()
    assert not LocalEtcd(config).status().running
    assert LocalEtcd(config).stop() is None


def test_failed_start_says_why_and_leaves_nothing_running(tmp_path: Path) -> None:
    config = local_config(tmp_path / "state")
    data_dir = config.state_dir / "etcd" / "data"
    data_dir.mkdir(parents=True)
    (data_dir / "member").write_text("")  # etcd needs a directory here
    with pytest.raises(ProcessFailed, match=r"the local etcd exited .* not a directory") as info:
        LocalEtcd(config).ensure_running()
    assert "\n" not in str(info.value)
    assert not LocalEtcd(config).status().running
    assert not (config.state_dir / "etcd" / "state.json").exists()


def test_foreground_refuses_while_one_runs(config: Config) -> None:
    local = LocalEtcd(config)
    local.ensure_running()
    with pytest.raises(UsageError, match="already running"):
        local.run_foreground()
