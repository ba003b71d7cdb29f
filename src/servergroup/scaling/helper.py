"""Running the application's scale helper (`/usr/sbin/app_scale_helper`) with a deadline.

Theory of operation. `run_helper(path, args, deadline_at)` starts the
helper in a process group of its own, its standard input empty and its
output in an anonymous temporary file (never a pipe: a helper that leaves
a child holding a pipe open would make us wait for that child), and waits
for it until `deadline_at` (monotonic clock). It returns a
`choice.HelperOutcome`; the meaning of the outcome is `choice`'s business:

- no file at `path`: MISSING (the original's status 127 from `system()`);
- a file that cannot be executed: NOT_STARTED, with the reason;
- an exit: EXITED with its status; death by a signal: SIGNALLED;
- still running at the deadline: the whole process group is killed
  (SIGKILL, so a helper that forked is ended with its children) and reaped,
  and the outcome is TIMED_OUT.

The first `OUTPUT_LIMIT` bytes of what it printed are kept for the log.
`stop` (a `threading.Event`), when set, ends the wait like a deadline: an
agent that is asked to stop does not wait for a helper.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from servergroup.scaling.choice import HelperEnd, HelperOutcome

#: The original's helper path (seed 003).
DEFAULT_HELPER: Final = Path("/usr/sbin/app_scale_helper")
#: Bytes of the helper's output kept for the log.
OUTPUT_LIMIT: Final = 1024
#: How often the wait looks at `stop`.
_WAIT_STEP = 0.05
#: How long a killed process group may take to go.
_REAP_TIMEOUT = 5.0


def run_helper(
    path: Path,
    args: Sequence[str],
    deadline_at: float,
    *,
    stop: threading.Event | None = None,
) -> HelperOutcome:
    """Run `path args...` until it ends or `deadline_at` (see the module docstring)."""
    if not path.exists():
        return HelperOutcome(end=HelperEnd.MISSING)
    with tempfile.TemporaryFile() as output:
        try:
            proc = subprocess.Popen(
                [str(path), *args],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                cwd="/",
            )
        except FileNotFoundError:
            return HelperOutcome(end=HelperEnd.MISSING)
        except OSError as exc:
            return HelperOutcome(end=HelperEnd.NOT_STARTED, detail=exc.strerror or str(exc))
        status = _wait(proc, deadline_at, stop)
        output.seek(0)
        printed = output.read(OUTPUT_LIMIT).decode("utf-8", "replace")
    if status is None:
        return HelperOutcome(end=HelperEnd.TIMED_OUT, output=printed)
    if status < 0:
        return HelperOutcome(end=HelperEnd.SIGNALLED, status=-status, output=printed)
    return HelperOutcome(end=HelperEnd.EXITED, status=status, output=printed)


def _wait(
    proc: subprocess.Popen[bytes], deadline_at: float, stop: threading.Event | None
) -> int | None:
    """The helper's return code, or None after killing its group at the deadline."""
    while True:
        left = deadline_at - time.monotonic()
        if left <= 0 or (stop is not None and stop.is_set()):
            break
        try:
            return proc.wait(timeout=min(left, _WAIT_STEP))
        except subprocess.TimeoutExpired:
            continue
    kill_group(proc.pid)
    # Unkillable (stuck in the kernel): leave it.
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=_REAP_TIMEOUT)
    return None


def kill_group(pgid: int) -> None:
    """SIGKILL every process of process group `pgid` (gone already: nothing to do)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


__all__ = ["DEFAULT_HELPER", "OUTPUT_LIMIT", "kill_group", "run_helper"]
