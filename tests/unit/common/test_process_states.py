"""`common.process` spells psutil's process states itself (psutil loads on first use)."""

from __future__ import annotations

import subprocess
import sys

import psutil

from servergroup.common import process


def test_the_states_are_psutil_s() -> None:
    assert {psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD} == process._GONE_STATES
    assert {
        psutil.STATUS_STOPPED,
        psutil.STATUS_TRACING_STOP,
        psutil.STATUS_ZOMBIE,
        psutil.STATUS_DEAD,
    } == process._STOPPED_STATES


def test_importing_it_does_not_load_psutil() -> None:
    probe = "import sys, servergroup.common.process; print('psutil' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "False"
