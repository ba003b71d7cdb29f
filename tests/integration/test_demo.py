"""`servergroup demo` on the managed etcd, as `make demo` runs it: every part, nothing left."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from servergroup.coordination.etcd_process import free_ports
from servergroup.demo.distribution import MEMORY_DIR, distribution_lab_name, work_dir_prefix
from tests.fixtures.lab import unique_lab_name

pytestmark = pytest.mark.timeout(480)


def test_demo_runs_every_part_and_leaves_no_lab() -> None:
    state_dir = Path(tempfile.mkdtemp(prefix="sgd-", dir="/tmp"))
    client_port, peer_port = free_ports(2)
    lab = unique_lab_name()
    env = {
        **os.environ,
        "SERVERGROUP_STATE_DIR": str(state_dir),
        "SERVERGROUP_ETCD_PORT": str(client_port),
        "SERVERGROUP_ETCD_PEER_PORT": str(peer_port),
        "SERVERGROUP_LAB": lab,
    }
    env.pop("SERVERGROUP_ETCD_ENDPOINTS", None)
    sg = [sys.executable, "-m", "servergroup"]
    try:
        done = subprocess.run(
            [*sg, "demo"], env=env, capture_output=True, text=True, timeout=420, check=False
        )
        assert done.returncode == 0, done.stderr
        out = done.stdout
        # The live dashboard is served in the root namespace while the demo runs.
        assert "Live dashboard: http://127.0.0.1:" in out, out
        assert "took over with token" in out
        # This machine runs QEMU (make test installs it): the servers are real VMs.
        assert "Using qemu servers (real VMs)" in out, out
        assert "demo-2 received it from" in out
        assert "demo-3 received it from" in out
        assert "demo-1 was told: compute.instance.pause.end" in out
        assert "demo-2 was told: compute.instance.pause.end" in out
        # A VM of 2 vCPUs scaled down and up: its kernel's own view after each.
        assert "/sys/devices/system/cpu/online" in out
        assert "demo-1 sees CPUs 0 online" in out
        assert "demo-1 saw its online CPUs go 0-1 -> 0 -> 0-1" in out
        # The HA service: on h1, on h2 once h1 froze, back on h1 after the thaw, each
        # move with a larger fencing token; removed at the end.
        assert "event: demo-ha runs on h1" in out
        assert "event: demo-ha runs on h2" in out
        assert "h2 took demo-ha over" in out
        assert "demo-ha failed back to h1" in out
        assert "demo-ha ran on h1, then h2 (" in out
        assert "Service demo-ha removed; h1 runs again" in out
        # The image went to three lab hosts; the sender's table lists three
        # finished clients, and each output is the image.
        image_lab = distribution_lab_name(lab)
        assert f"Bringing up lab {image_lab}: 4 hosts" in out
        assert out.count("finished") >= 3
        assert out.count("matches the image") == 3, out
        assert "DIFFERS" not in out
        assert "Every receiver has the image" in out
        assert "Killing the primary with SIGKILL" in out
        assert "acknowledged puts read back from it: 0 lost" in out
        # The lab hosts the demo brought up are gone again; so are its servers,
        # and the image part's lab and files.
        netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert f"{lab}-h" not in netns
        assert f"{image_lab}-h" not in netns
        assert not list((state_dir / "servers").glob("*"))
        assert not list((state_dir / "qemu").glob("*/*"))
        assert not list(MEMORY_DIR.glob(work_dir_prefix(image_lab) + "*"))
        assert not list(Path(tempfile.gettempdir()).glob(work_dir_prefix(image_lab) + "*"))
    finally:
        subprocess.run([*sg, "down"], env=env, capture_output=True, timeout=60, check=False)
        subprocess.run(
            [*sg, "etcd", "--stop"], env=env, capture_output=True, timeout=60, check=False
        )
        shutil.rmtree(state_dir, ignore_errors=True)
