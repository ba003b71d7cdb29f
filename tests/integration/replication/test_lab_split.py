"""Split brain on lab hosts: the primary cut off from its backup and etcd, with clients still on it.

h1 runs the primary and a client that reaches it over h1's loopback (so the
cut does not take the client away), h2 the backup, and the test process
(the root namespace, on the lab's bridge with etcd) is the third host's
clients. After `lab cut h1` the primary can commit nothing (no acks), so the
client on h1 sees no new reply; it stops when its session lease runs out;
the backup takes the pair at a new generation and serves. Every reply any
client saw is in what the backup serves: never did two actives release
output.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.daemons import show_log_on_failure
from tests.fixtures.wait import wait_until

pytestmark = [pytest.mark.root, pytest.mark.timeout(180)]

SG = [sys.executable, "-m", "servergroup", "-v", "--log-text"]
PUTTER = str(Path(__file__).with_name("kv_putter.py"))
CLIENT_PORT, STREAM_PORT, SERVE_PORT = 17400, 17401, 17402


def ask(address: tuple[str, int], request: dict[str, Any]) -> Any:
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(json.dumps(request).encode() + b"\n")
        return json.loads(sock.makefile("rb").readline())


def test_a_cut_primary_releases_nothing_and_the_backup_serves_every_acked_put(
    lab_etcd: Any, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    lab, status, cluster = lab_etcd
    h1, h2 = status.host("h1").address, status.host("h2").address
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "SERVERGROUP_ETCD_ENDPOINTS": ",".join(str(e) for e in cluster.endpoints),
        # Plain http on the lab bridge's root address, which never leaves this machine.
        "SERVERGROUP_ETCD_INSECURE": "1",
        "SERVERGROUP_PREFIX": "/split/",
        "SERVERGROUP_STATE_DIR": str(tmp_path / "state"),
    }
    procs: list[subprocess.Popen[bytes]] = []

    def start(host: str, name: str, argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        log = tmp_path / f"{name}.log"
        show_log_on_failure(request.node, name, log)
        with log.open("wb") as out:
            kwargs.setdefault("stdout", out)
            proc: subprocess.Popen[bytes] = lab.popen(
                host, argv, stderr=out, env=env, stdin=subprocess.DEVNULL, **kwargs
            )
        procs.append(proc)
        return proc

    def log_of(name: str) -> str:
        return (tmp_path / f"{name}.log").read_text(errors="replace")

    try:
        start(
            "h2",
            "backup",
            [
                *SG,
                "backup",
                "--service",
                "kv",
                "--listen",
                f"{h2}:{STREAM_PORT}",
                "--serve",
                f"{h2}:{SERVE_PORT}",
                "--node",
                "h2",
            ],
        )
        wait_until(lambda: "listening for a primary" in log_of("backup"), "the backup listening")
        primary = start(
            "h1",
            "primary",
            [
                *SG,
                "protect",
                "--service",
                "kv",
                "--listen",
                f"0.0.0.0:{CLIENT_PORT}",
                "--backup",
                f"{h2}:{STREAM_PORT}",
                "--node",
                "h1",
            ],
        )
        wait_until(lambda: "applied full epoch" in log_of("backup"), "the first checkpoint")
        # A client on the third host (here) and one on h1 itself.
        assert ask((str(h1), CLIENT_PORT), {"op": "put", "key": "far", "value": "1"})["ok"]
        local = start(
            "h1",
            "putter",
            [sys.executable, PUTTER, "127.0.0.1", str(CLIENT_PORT), "near"],
            stdout=subprocess.PIPE,
        )
        assert local.stdout is not None
        acked = [local.stdout.readline() for _ in range(30)]
        lab.cut("h1")
        rest = local.stdout.read()  # ends when the primary stops (not communicate():
        local.wait(30)  # it would skip what the buffered reader holds)
        acked += rest.splitlines(keepends=True)
        primary.wait(30)
        assert primary.returncode != 0
        assert "stopping" in log_of("primary")
        wait_until(lambda: "took over at generation" in log_of("backup"), "the takeover")
        served = (str(h2), SERVE_PORT)
        assert ask(served, {"op": "get", "key": "far"})["value"] == "1"
        seen = dict(line.decode().split() for line in acked if line.strip())
        assert len(seen) >= 30
        missing = {
            key: value
            for key, value in seen.items()
            if ask(served, {"op": "get", "key": key}).get("value") != value
        }
        assert not missing, f"replies released by the cut primary are not on the backup: {missing}"
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
