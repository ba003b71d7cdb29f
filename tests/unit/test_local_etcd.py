"""The managed local etcd's status record (the parts that need no process)."""

from __future__ import annotations

import json
from pathlib import Path

from servergroup.config import Endpoint
from servergroup.coordination.local_etcd import LocalEtcdStatus


def test_local_status_sentence_and_json() -> None:
    running = LocalEtcdStatus(
        running=True,
        healthy=True,
        pid=42,
        endpoint=Endpoint(host="127.0.0.1", port=12379),
        data_dir=Path("/s/etcd/data"),
        log_path=Path("/s/etcd/etcd.log"),
        started_at=1.5,
    )
    assert running.describe() == (
        "the local etcd is running at http://127.0.0.1:12379, healthy "
        "(pid 42, data in /s/etcd/data, log in /s/etcd/etcd.log)."
    )
    assert json.loads(json.dumps(running.as_dict())) == {
        "running": True,
        "healthy": True,
        "pid": 42,
        "endpoint": "http://127.0.0.1:12379",
        "data_dir": "/s/etcd/data",
        "log_path": "/s/etcd/etcd.log",
        "started_at": 1.5,
    }
    stopped = LocalEtcdStatus(
        running=False,
        healthy=False,
        pid=None,
        endpoint=Endpoint(host="127.0.0.1", port=12379),
        data_dir=Path("/s/etcd/data"),
        log_path=Path("/s/etcd/etcd.log"),
        started_at=None,
    )
    assert stopped.describe().startswith("the local etcd is not running")
