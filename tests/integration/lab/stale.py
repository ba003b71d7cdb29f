"""Leave a stale lab behind: a process makes a lab it owns, then dies by SIGKILL."""

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
