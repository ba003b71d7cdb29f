"""Kill rounds on lab hosts: the primary on h1, its backup on h2, clients on h3.

Each round is a new pair (its own name and ports) in the same lab: the
backup starts on h2, the kv primary on h1, three `kv_putter.py` clients on
h3 put unique keys through the lab's bridge and print every put whose reply
came. Then the primary dies: at a failure point armed on its stdin (`s s2 r
r2 c c2`, it kills itself there with SIGKILL) or by `lab crash h1` at a
random moment. The backup takes the pair over and serves on h2; every put
any client saw acknowledged must be there. By default two rounds run (a
failure point drawn at random, then a random crash); the slow-marked test
runs every point and random crashes, twice each.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from servergroup.lab import Lab
from tests.fixtures.daemons import show_log_on_failure
from tests.fixtures.wait import wait_until

pytestmark = [pytest.mark.root]

SG = [sys.executable, "-m", "servergroup", "-v", "--log-text"]
PUTTER = str(Path(__file__).with_name("kv_putter.py"))
POINTS = ["s", "s2", "r", "r2", "c", "c2"]
#: Rounds of each kill in the slow-marked run.
SLOW_ROUNDS = 2


def ask(address: tuple[str, int], request: dict[str, Any]) -> Any:
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(json.dumps(request).encode() + b"\n")
        return json.loads(sock.makefile("rb").readline())


class Rounds:
    """Kill rounds in one lab; every process started is killed at the end."""

    def __init__(self, lab: Lab, status: Any, cluster: Any, tmp: Path, request: Any) -> None:
        self.lab = lab
        self.h1 = str(status.host("h1").address)
        self.h2 = str(status.host("h2").address)
        self.tmp = tmp
        self.request = request
        self.env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "SERVERGROUP_ETCD_ENDPOINTS": ",".join(str(e) for e in cluster.endpoints),
            # Plain http on the lab bridge's root address, which never leaves this machine.
            "SERVERGROUP_ETCD_INSECURE": "1",
            "SERVERGROUP_PREFIX": "/kills/",
            "SERVERGROUP_STATE_DIR": str(tmp / "state"),
        }
        self.procs: list[subprocess.Popen[bytes]] = []
        self.count = 0

    def start(
        self, host: str, name: str, argv: list[str], **kwargs: Any
    ) -> subprocess.Popen[bytes]:
        log = self.tmp / f"{name}.log"
        show_log_on_failure(self.request.node, name, log)
        with log.open("wb") as out:
            kwargs.setdefault("stdout", out)
            kwargs.setdefault("stdin", subprocess.DEVNULL)
            proc: subprocess.Popen[bytes] = self.lab.popen(
                host, argv, stderr=out, env=self.env, **kwargs
            )
        self.procs.append(proc)
        return proc

    def log_of(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def round(self, point: str | None) -> None:
        """One round: kill the primary at `point` (None: `lab crash h1` at a random moment)."""
        self.count += 1
        n = self.count
        client, stream, serve = 17410 + 10 * n, 17411 + 10 * n, 17412 + 10 * n
        pair = ["--pair", f"kills-{n}"]
        self.start(
            "h2",
            f"backup-{n}",
            [*SG, "backup", "--service", "kv", "--listen", f"{self.h2}:{stream}",
             "--serve", f"{self.h2}:{serve}", "--node", f"h2-{n}", *pair],
        )  # fmt: skip
        wait_until(lambda: "listening for a primary" in self.log_of(f"backup-{n}"), "the backup")
        primary = self.start(
            "h1",
            f"primary-{n}",
            [*SG, "protect", "--service", "kv", "--listen", f"0.0.0.0:{client}",
             "--backup", f"{self.h2}:{stream}", "--node", f"h1-{n}", *pair],
            stdin=subprocess.PIPE,
        )  # fmt: skip
        wait_until(lambda: "applied full epoch" in self.log_of(f"backup-{n}"), "the full epoch")
        putters = [
            self.start(
                "h3",
                f"putter-{n}-{i}",
                [sys.executable, PUTTER, self.h1, str(client), f"r{n}c{i}"],
                stdout=subprocess.PIPE,
            )
            for i in range(3)
        ]
        seen: dict[str, str] = {}
        for putter in putters:  # a few acknowledged puts each before the kill
            assert putter.stdout is not None
            for _ in range(5):
                key, value = putter.stdout.readline().decode().split()
                seen[key] = value
        if point is None:
            time.sleep(random.uniform(0, 0.4))
            self.lab.crash("h1")
        else:
            assert primary.stdin is not None
            primary.stdin.write(point.encode() + b"\n")
            primary.stdin.flush()
        primary.wait(30)
        for putter in putters:  # each ends when its connection does
            assert putter.stdout is not None
            # Read through the buffered reader: communicate() would skip what it holds.
            rest = putter.stdout.read()
            putter.wait(30)
            for line in rest.decode().splitlines():
                if line.strip():
                    key, value = line.split()
                    seen[key] = value
        if point is not None:
            assert f"failure point {point}: killing this process" in self.log_of(f"primary-{n}")
        wait_until(lambda: "took over at generation" in self.log_of(f"backup-{n}"), "the takeover")
        served = (self.h2, serve)
        lost = {
            key: value
            for key, value in seen.items()
            if ask(served, {"op": "get", "key": key}).get("value") != value
        }
        some = dict(list(lost.items())[:10])
        assert not lost, f"round {n}: {len(lost)} of {len(seen)} acknowledged puts lost: {some}"

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
            if proc.stdin is not None:
                proc.stdin.close()


def run_rounds(lab_etcd: Any, tmp_path: Path, request: Any, points: list[str | None]) -> None:
    lab, status, cluster = lab_etcd
    rounds = Rounds(lab, status, cluster, tmp_path, request)
    try:
        for point in points:
            rounds.round(point)
    finally:
        rounds.close()


@pytest.mark.timeout(240)
def test_no_acknowledged_put_is_lost_when_the_primary_host_dies(
    lab_etcd: Any, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    run_rounds(lab_etcd, tmp_path, request, [random.choice(POINTS), None])


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_many_kill_rounds_on_lab_hosts_lose_no_acknowledged_put(
    lab_etcd: Any, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    points: list[str | None] = [*POINTS, None]
    run_rounds(lab_etcd, tmp_path, request, points * SLOW_ROUNDS)
