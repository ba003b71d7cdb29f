"""How a command ends on SIGINT/SIGTERM (`cli.common.run_async`), in a real process.

The command here is a coroutine that takes a second to shut down once
cancelled, so that a second signal lands while it does.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from servergroup.cli.common import REPEAT_WINDOW

pytestmark = pytest.mark.timeout(60)

SLOW_TO_STOP = """
import asyncio, sys
from servergroup.cli.common import report_errors, run_async

async def main() -> None:
    try:
        print("ready", flush=True)
        await asyncio.sleep(60)
    except asyncio.CancelledError:
        await asyncio.shield(asyncio.sleep(1.0))  # an orderly shutdown that takes a while
        print("stopped in order", flush=True)
        raise

report_errors(lambda: run_async(main()))
"""


def started() -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_TO_STOP],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    return proc


def test_a_stop_delivered_twice_at_once_is_one_stop() -> None:
    """As `timeout` does (the process, then its group): an orderly stop, status 130."""
    proc = started()
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.05)  # the first is being handled when the second comes
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert out == "stopped in order\n"
    assert err == "servergroup: interrupted.\n"
    assert proc.returncode == 130


def test_a_second_stop_later_exits_at_once() -> None:
    proc = started()
    proc.send_signal(signal.SIGINT)
    time.sleep(REPEAT_WINDOW + 0.2)
    asked = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert time.monotonic() - asked < 0.9  # not after the shutdown's second
    assert out == ""
    assert err == "servergroup: forced exit\n"
    assert proc.returncode == 128 + signal.SIGINT
