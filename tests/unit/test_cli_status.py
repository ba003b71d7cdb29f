"""`servergroup status`'s rendering and its attention list, on snapshots made by hand.

The real command, on real daemons, is in tests/integration/daemons/test_status.py;
here are the states that are slow to reach there (a failed service, a pair
without its backup, a stale transfer, a server in error).
"""

from __future__ import annotations

from typing import Any

from servergroup.cli.status import describe, needs_attention


def server(name: str, state: str, *, alive: bool = True, error: str | None = None) -> Any:
    return {
        "name": name,
        "vm_state": state,
        "task_state": None,
        "host": "h1",
        "host_alive": alive,
        "online_cpus": [0],
        "vcpus": 2,
        "group": "g",
        "error": error,
    }


def service(name: str, state: str, error: str | None = None) -> Any:
    summary = {
        "name": name,
        "state": state,
        "agent": "ocf:heartbeat:Dummy",
        "instances": 1,
        "running": 0,
        "nodes": [],
        "master": None,
        "error": error,
    }
    return {"summary": summary, "status": None}


SNAPSHOT: dict[str, Any] = {
    "hosts": [
        {"name": "h1", "alive": True, "pid": 42, "drivers": ["lab"], "servers": ["a", "b", "c"]}
    ],
    "groups": [{"name": "g", "policy": "affinity", "members": ["a", "b", "c", "gone"]}],
    "servers": [
        server("a", "active"),
        server("b", "error", error="the driver failed: no such file"),
        server("c", "active", alive=False),
        server("gone", "deleted", alive=False),
    ],
    "services": [
        service("up", "running"),
        service("off", "disabled"),
        service("bad", "failed", error="monitor: not running"),
        service("waiting", "stopped"),
    ],
    "replication": [
        {"name": "kv", "generation": 3, "active": "n1", "backup": None},
        {"name": "ok", "generation": 1, "active": "n1", "backup": "n2"},
    ],
    "transfers": [
        {
            "endpoint": "198.18.0.11:18383",
            "state": "running",
            "stale": True,
            "progress": 0.5,
            "receivers": [],
        },
    ],
}


def test_attention_names_each_thing_to_look_at_and_nothing_settled() -> None:
    assert needs_attention(SNAPSHOT) == [
        "server b is in error: the driver failed: no such file",
        "server c is lost: its host h1 is not live",
        "service bad is failed: monitor: not running",
        "service waiting is stopped",
        "pair kv has no backup: n1 serves unprotected",
        "transfer 198.18.0.11:18383 is stale: its sender stopped writing its record",
    ]


def test_a_lost_server_of_a_group_evacuated_by_hand_says_how() -> None:
    snapshot = {
        **SNAPSHOT,
        "groups": [{"name": "g", "policy": "affinity", "evacuate": "manual", "members": ["c"]}],
    }
    assert (
        "server c is lost: its host h1 is not live "
        "(group g is evacuated by hand: servergroup server evacuate c)"
    ) in needs_attention(snapshot)


def test_an_empty_cluster_needs_nothing() -> None:
    kinds = ("hosts", "groups", "servers", "services", "replication", "transfers")
    empty: dict[str, Any] = {kind: [] for kind in kinds}
    assert needs_attention(empty) == []
    assert describe(empty, "http://127.0.0.1:12379") == [
        "store: http://127.0.0.1:12379",
        "hosts: 0 live",
        "groups: 0",
        "servers: 0",
        "services: 0",
        "replication pairs: 0",
        "image transfers: 0",
    ]


def test_rows_line_up_under_their_heading() -> None:
    lines = describe(SNAPSHOT, "etcd")
    at = lines.index("servers: 4 (2 active, 1 deleted, 1 error)")
    rows = lines[at + 1 : at + 5]
    assert [row.split()[0] for row in rows] == ["a", "b", "c", "gone"]
    assert len({row.index("on h1") for row in rows}) == 1  # one column
    assert "on h1 (gone)" in rows[2]
    assert "replication pairs: 2" in lines
    assert any(line.split()[:2] == ["kv", "generation"] and "no backup" in line for line in lines)
    assert "  198.18.0.11:18383  running (stale)  50%  0 receiver(s)" in lines
