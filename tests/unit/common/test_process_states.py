"""`common.process` spells psutil's process states itself (psutil loads on first use)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

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


def test_threads_in_an_uninterruptible_wait_are_found_by_their_state() -> None:
    # A process with a sleeping thread and a stopped one has none in state D; one that is
    # gone has none either. (No test can put a thread in D on purpose without a slow disk.)
    sleeper = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import threading, time; threading.Thread(target=time.sleep, "
            "args=(60,), daemon=True).start(); time.sleep(60)",
        ]
    )
    try:
        deadline = time.monotonic() + 10
        while len(os.listdir(f"/proc/{sleeper.pid}/task")) < 2:
            assert time.monotonic() < deadline, "the thread did not start"
            time.sleep(0.01)
        assert process.uninterruptible_threads(sleeper.pid) == []
        os.kill(sleeper.pid, signal.SIGSTOP)
        process.wait_stopped(sleeper.pid)
        assert process.uninterruptible_threads(sleeper.pid) == []
    finally:
        sleeper.kill()
        sleeper.wait()
    assert process.uninterruptible_threads(sleeper.pid) == []
