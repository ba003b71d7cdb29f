"""`--metrics ADDR` of the stand-alone processes: `servergroup protect` serves its checkpoints."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from servergroup.coordination.etcd_process import free_ports
from tests.fixtures.daemons import DaemonFactory

SG = [sys.executable, "-m", "servergroup"]
PROTECT = [*SG, "protect", "--service", "kv", "--listen", "127.0.0.1:1", "--no-backup"]

pytestmark = pytest.mark.timeout(60)


def samples(url: str) -> dict[str, float]:
    text = httpx.get(url, timeout=5.0).text
    return {
        s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples
    }


def test_protect_serves_its_checkpoint_metrics(daemon: DaemonFactory) -> None:
    listen, metrics = free_ports(2)
    primary = daemon(
        [
            *SG,
            "-v",
            "protect",
            "--service",
            "counter",
            "--listen",
            f"127.0.0.1:{listen}",
            "--no-backup",
            "--interval",
            "50",
            "--metrics",
            f"127.0.0.1:{metrics}",
        ],
        name="primary",
        ready="serving",
    )
    url = f"http://127.0.0.1:{metrics}/metrics"
    deadline = time.monotonic() + 30
    while True:  # another process: nothing to await but its answer
        got = samples(url)
        if got.get("servergroup_checkpoint_epochs_total", 0) >= 3:
            break
        assert time.monotonic() < deadline, got
        assert primary.running
        time.sleep(0.1)
    assert got["servergroup_checkpoint_pause_seconds_count"] >= 3
    # Sizes are observed when a checkpoint is sent: --no-backup sends none.
    assert "servergroup_checkpoint_size_bytes_count" in got
    assert "servergroup_checkpoint_lag_epochs" in got


@pytest.mark.parametrize(
    ("value", "words"),
    [("nowhere", "is not HOST:PORT"), ("127.0.0.1:70000", "is not HOST:PORT")],
)
def test_a_bad_metrics_address_is_one_sentence(value: str, words: str) -> None:
    result = subprocess.run(
        [*PROTECT, "--metrics", value],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 2, result.stderr
    assert words in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_metrics_port_in_use_is_one_sentence() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        result = subprocess.run(
            [*PROTECT, "--metrics", f"127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )
    assert result.returncode == 2, result.stderr
    assert f"port {port} is in use" in result.stderr
