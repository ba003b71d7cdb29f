"""A replication node's published status, decoded (what `replication status` and the API show)."""

from __future__ import annotations

import json

from servergroup.replication.status import NodeStatus, decode_node_status


def test_a_primary_and_a_backup_status() -> None:
    primary = {
        "role": "primary",
        "node": "h1/127.0.0.1:7001",
        "mode": "protected",
        "generation": 3,
        "epoch": 40,
        "committed": 39,
        "lag": 1,
        "last_checkpoint_bytes": 4096,
        "last_pause_ms": 0.5,
        "held_output_bytes": 12,
        "clients": 1,
        "pause_realtime": True,
    }
    assert decode_node_status(json.dumps(primary).encode()) == NodeStatus(
        node="h1/127.0.0.1:7001",
        role="primary",
        state="protected",
        generation=3,
        epoch=40,
        committed=39,
        lag=1,
        last_checkpoint_bytes=4096,
        last_pause_ms=0.5,
        held_output_bytes=12,
        clients=1,
        pause_realtime=True,
    )
    backup = {
        "role": "backup",
        "node": "h2",
        "phase": "receiving",
        "generation": 3,
        "applied": 39,
        "listen": "10.0.0.2:7002",
    }
    decoded = decode_node_status(json.dumps(backup).encode())
    assert decoded is not None
    assert (decoded.state, decoded.applied, decoded.lag) == ("receiving", 39, None)
    assert decoded.listen == "10.0.0.2:7002"


def test_garbage_is_left_out_and_wrong_types_are_none() -> None:
    for raw in (b"not json", b"[1, 2]", b'{"role": "primary"}', b'{"node": 7}', b"\xff"):
        assert decode_node_status(raw) is None, raw
    odd = {
        "node": "h1",
        "role": "primary",
        "epoch": "40",
        "lag": True,
        "last_pause_ms": "x",
        "pause_realtime": 1,
        "listen": 7002,
    }
    decoded = decode_node_status(json.dumps(odd).encode())
    assert decoded == NodeStatus(node="h1", role="primary")
