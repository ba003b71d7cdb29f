"""Real etcd members through `etcd_process` and the etcd fixtures built on it."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from servergroup.common.errors import ProcessFailed
from servergroup.common.process import process_state
from servergroup.config import Endpoint
from servergroup.coordination.etcd_process import (
    EtcdCluster,
    EtcdMemberSpec,
    EtcdProcess,
    free_ports,
    is_healthy,
    member_status,
)
from tests.fixtures.etcd import new_test_cluster, run_test_cluster


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _call(endpoint: Endpoint, path: str, body: dict[str, Any], timeout: float = 2.0) -> Any:
    request = urllib.request.Request(f"{endpoint}{path}", data=json.dumps(body).encode())
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def put(endpoint: Endpoint, key: str, value: str) -> None:
    _call(endpoint, "/v3/kv/put", {"key": _b64(key), "value": _b64(value)})


def get(endpoint: Endpoint, key: str) -> str | None:
    kvs = _call(endpoint, "/v3/kv/range", {"key": _b64(key)}).get("kvs", [])
    return base64.b64decode(kvs[0]["value"]).decode() if kvs else None


def alive(pid: int) -> bool:
    return process_state(pid) not in (None, "Z", "X")


def test_shared_server_serves_keys_under_the_test_prefix(
    etcd_server: EtcdCluster, etcd_prefix: str
) -> None:
    assert len(etcd_server.endpoints) == 1
    endpoint = etcd_server.endpoints[0]
    assert is_healthy(endpoint)
    put(endpoint, etcd_prefix + "k", "v")
    assert get(endpoint, etcd_prefix + "k") == "v"


def test_prefix_is_unique_and_names_the_test(etcd_prefix: str) -> None:
    assert re.fullmatch(
        r"/sgtest/test_prefix_is_unique_and_names_the_test-[0-9a-f]{8}/", etcd_prefix
    )


def test_members_run_tuned_so_a_one_second_lease_is_granted(etcd_single: EtcdCluster) -> None:
    member = etcd_single.members[0]
    assert member.pid is not None
    cmdline = Path(f"/proc/{member.pid}/cmdline").read_bytes().split(b"\0")
    assert cmdline[cmdline.index(b"--heartbeat-interval") + 1] == b"50"
    assert cmdline[cmdline.index(b"--election-timeout") + 1] == b"500"
    # With etcd's default timings the smallest lease is 2 s (REFERENCE.md).
    granted = _call(member.endpoint, "/v3/lease/grant", {"TTL": 1})
    assert granted["TTL"] == "1"


def test_single_member_freeze_thaw_kill_restart(etcd_single: EtcdCluster) -> None:
    member = etcd_single.members[0]
    put(member.endpoint, "/k", "kept")
    member.freeze()
    assert member.frozen
    assert not is_healthy(member.endpoint, timeout=0.3)
    member.thaw()
    etcd_single.wait_healthy(5.0)
    old_pid = member.pid
    member.kill()
    assert not member.running
    assert member.returncode == -signal.SIGKILL
    assert old_pid is not None
    assert not alive(old_pid)
    member.restart()
    assert member.pid != old_pid
    assert get(member.endpoint, "/k") == "kept"


def test_cluster_elects_a_new_leader_when_the_leader_dies(etcd_cluster: EtcdCluster) -> None:
    assert len(etcd_cluster.members) == 3
    assert len(set(etcd_cluster.endpoints)) == 3
    leader = etcd_cluster.leader()
    put(leader.endpoint, "/before", "1")
    leader.kill()
    new_leader = etcd_cluster.leader(timeout=5.0)
    assert new_leader is not leader
    etcd_cluster.wait_healthy(5.0)
    put(new_leader.endpoint, "/after", "2")
    # The old leader comes back from its data directory as a follower.
    leader.restart()
    etcd_cluster.wait_healthy(10.0)
    assert get(leader.endpoint, "/before") == "1"
    statuses = [member_status(m.endpoint) for m in etcd_cluster.members]
    assert all(s is not None for s in statuses)
    assert len({s.leader_id for s in statuses if s is not None}) == 1


def test_cluster_replaces_a_frozen_leader(etcd_cluster: EtcdCluster) -> None:
    leader = etcd_cluster.leader()
    leader.freeze()
    new_leader = etcd_cluster.leader(timeout=5.0)
    assert new_leader is not leader
    leader.thaw()
    etcd_cluster.wait_healthy(10.0)
    assert etcd_cluster.leader() in etcd_cluster.members


def test_teardown_kills_frozen_members_and_removes_data(tmp_path: Path) -> None:
    cluster = new_test_cluster(tmp_path, 1)
    run = run_test_cluster(cluster)
    started = next(run)
    member = started.members[0]
    pid = member.pid
    assert pid is not None
    assert alive(pid)
    member.freeze()
    run.close()  # what pytest does at teardown
    assert not alive(pid)
    assert not member.spec.data_dir.exists()
    assert member.log_path.exists()


def test_teardown_kills_even_when_the_test_raised(tmp_path: Path) -> None:
    run = run_test_cluster(new_test_cluster(tmp_path, 1))
    pid = next(run).members[0].pid
    assert pid is not None
    with pytest.raises(RuntimeError):
        run.throw(RuntimeError("the test failed"))
    assert not alive(pid)


def test_start_failure_names_the_last_log_line(tmp_path: Path) -> None:
    client, peer = free_ports(2)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "member").write_text("not a directory")
    member = EtcdProcess(
        EtcdMemberSpec(name="broken", data_dir=data_dir, client_port=client, peer_port=peer),
        log_path=tmp_path / "broken.log",
    )
    member.start()
    with pytest.raises(
        ProcessFailed, match=r"exited with status 1 while starting.*not a directory"
    ):
        member.wait_healthy(10.0)
    assert not member.running


def test_a_member_that_is_never_healthy_times_out(tmp_path: Path) -> None:
    # One member of a two-member cluster whose peer never starts has no leader.
    ports = free_ports(4)
    initial = (("a", f"http://127.0.0.1:{ports[1]}"), ("b", f"http://127.0.0.1:{ports[3]}"))
    member = EtcdProcess(
        EtcdMemberSpec(
            name="a",
            data_dir=tmp_path / "a",
            client_port=ports[0],
            peer_port=ports[1],
            initial_cluster=initial,
        )
    )
    member.start()
    try:
        with pytest.raises(ProcessFailed, match=r"did not become healthy .* within 1 s"):
            member.wait_healthy(1.0)
        assert member.running
    finally:
        member.stop()
    assert not member.running
    assert member.pid is not None
    assert not alive(member.pid)


def test_leader_times_out_without_quorum(etcd_cluster: EtcdCluster) -> None:
    for m in etcd_cluster.members[1:]:
        m.kill()
    with pytest.raises(ProcessFailed, match="no etcd leader"):
        etcd_cluster.leader(timeout=1.5)


def test_stop_is_graceful_for_a_single_member(etcd_single: EtcdCluster) -> None:
    etcd_single.stop()
    member = etcd_single.members[0]
    assert member.returncode in (0, -signal.SIGTERM)
    assert os.path.exists(member.log_path)
