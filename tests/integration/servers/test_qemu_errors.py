"""What the qemu driver says when the machine cannot run VMs: one sentence each, no traceback.

No QEMU, no kernel package to build the guest from, not root: each is found
with the real tools of this machine, hidden from the one process that asks
(a PATH without them, or a process that gave up root), never by patching.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

#: Creates one qemu server with the driver, as a host daemon does; prints the outcome.
CREATE = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from servergroup.servers.drivers.base import DriverError
    from servergroup.servers.drivers.qemu.driver import QemuDriver
    from servergroup.servers.model import DriverKind, ServerSpec

    state = Path(sys.argv[1])
    driver = QemuDriver(state, host="h1", channel_dir=state / "channels")
    spec = ServerSpec(name="v1", instance="instance-0000abcd", uuid="u", group="g",
                      host="h1", driver=DriverKind.QEMU)
    try:
        asyncio.run(driver.create(spec))
    except DriverError as exc:
        print("DriverError:", exc)
        sys.exit(3)
    print("created")
    """
)


def run_python(code: str, *args: str, env: dict[str, str], user: bool = False) -> tuple[int, str]:
    argv = [sys.executable, "-c", code, *args]
    if user:  # the same interpreter, as nobody
        argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)
    return done.returncode, done.stdout + done.stderr


def bare_path(tmp_path: Path, *tools: str) -> str:
    """A PATH with only `tools` (links to the real ones) in it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in tools:
        real = subprocess.run(["which", tool], capture_output=True, text=True).stdout.strip()
        assert real, f"{tool} is not installed"
        (bin_dir / tool).symlink_to(real)
    return str(bin_dir)


def test_no_qemu_is_one_sentence(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": bare_path(tmp_path)}
    status, out = run_python(CREATE, str(tmp_path / "state"), env=env)
    assert status == 3, out
    assert out.strip() == (
        "DriverError: QEMU is not installed (qemu-system-x86_64 not found; "
        "Debian package qemu-system-x86)"
    )


def test_not_root_is_one_sentence(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    tmp_path.chmod(0o755)
    status, out = run_python(CREATE, str(state), env=dict(os.environ), user=True)
    assert status == 3, out
    assert out.startswith("DriverError: the qemu driver must run as root"), out
    assert len(out.strip().splitlines()) == 1


def test_no_kernel_package_is_one_sentence(tmp_path: Path) -> None:
    # No installed kernel and no apt to fetch one: the image build says so.
    env = {
        **os.environ,
        "PATH": bare_path(tmp_path, "dpkg-deb", "dpkg-query"),
        "SERVERGROUP_GUEST_IMAGE_DIR": str(tmp_path / "image"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "servergroup.servers.drivers.qemu.image"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert "apt-cache" in lines[0] or "kernel" in lines[0], lines[0]
