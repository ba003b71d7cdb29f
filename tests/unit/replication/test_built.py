"""A daemon's service built on fresh regions, its disk in a temporary file that leaves no trace."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from servergroup.common.errors import UsageError
from servergroup.replication.primary import Built
from servergroup.replication.service import ServiceSpace

pytestmark = pytest.mark.timeout(60)


class DiskService:
    """A service with a 2-page replicated disk; `late` asks for a second one after construction."""

    def __init__(self, space: ServiceSpace) -> None:
        self.space = space
        self.region = space.region("state", 4096)
        self.disk = space.disk(8192)

    def handle(self, request: bytes) -> bytes:
        if request == b"late":
            self.space.disk(4096)
        self.disk.write(0, request)
        return b"ok"


SPEC = f"{__name__}:DiskService"


def _ours(prefix: str) -> set[str]:
    return {name for name in os.listdir(tempfile.gettempdir()) if name.startswith(prefix)}


def test_the_disk_works_while_its_directory_is_already_gone() -> None:
    prefix = f"sg-test-built-{os.getpid()}-"
    with Built.temporary(SPEC, prefix=prefix) as built:
        assert _ours(prefix) == set()  # nothing on disk for a SIGKILL to leave behind
        disk = built.space.replicated_disk
        assert disk is not None
        assert built.service.handle(b"hello") == b"ok"
        disk.commit()
        assert disk.capture()[0].data == b"hello"
        with pytest.raises(UsageError, match="in its constructor"):
            built.service.handle(b"late")
    assert _ours(prefix) == set()


def test_a_daemon_killed_with_sigkill_leaves_no_directory(tmp_path: Path) -> None:
    """The same in a process killed while serving (TMPDIR is ours, so nothing else counts)."""
    code = (
        "import sys, time\n"
        "from servergroup.replication.primary import Built\n"
        f"with Built.temporary({SPEC!r}, prefix='sg-protect-'):\n"
        "    print('built', flush=True)\n"
        "    time.sleep(60)\n"
    )
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    with subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True
    ) as child:
        assert child.stdout is not None
        assert child.stdout.readline() == "built\n"
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    assert list(tmp_path.iterdir()) == []
