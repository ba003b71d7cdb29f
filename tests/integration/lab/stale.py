"""Leave a stale lab behind: a process makes a lab it owns, then dies by SIGKILL.

Any `lab up` on the machine removes stale labs, so under pytest-xdist another
worker may remove one of these before the test's own cleanup call does: the
tests accept that, and check that the lab is gone either way (`lab_objects`).
"""

from __future__ import annotations

import select
import signal
import subprocess
import sys
from pathlib import Path

CREATOR = """
import os, sys, time
from pathlib import Path
from servergroup.lab import Lab
Lab(sys.argv[1], state_dir=Path(sys.argv[2]), owner_pid=os.getpid()).up(2)
print("ready", flush=True)
time.sleep(120)
"""


def leave_stale_lab(name: str, state_dir: Path) -> None:
    """Lab `name` (2 hosts, state under `state_dir`) exists, and its owner is dead."""
    creator = subprocess.Popen(
        [sys.executable, "-c", CREATOR, name, str(state_dir)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert creator.stdout is not None
        assert select.select([creator.stdout], [], [], 30.0)[0], "the creator did not start"
        assert creator.stdout.readline().strip() == "ready"
    finally:
        creator.send_signal(signal.SIGKILL)
        creator.wait(timeout=10)


def lab_objects(name: str) -> tuple[list[str], list[str]]:
    """Namespaces and root-namespace links whose names belong to lab `name`."""
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    prefix = f"{name}-"
    return (
        [line.split()[0] for line in namespaces.splitlines() if line.startswith(prefix)],
        [
            ifname
            for ifname in (line.split(": ")[1].split("@")[0] for line in links.splitlines())
            if ifname.startswith(prefix)
        ],
    )
