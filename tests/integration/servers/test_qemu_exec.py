"""`server exec` in a real VM: QEMU's exec port, the guest's exec agent, the broker, clients.

One VM boots from the cached guest image (as `make` builds it) under the
accelerator `probe_accel` finds; its /init keeps the exec agent running on
`/dev/virtio-ports/org.servergroup.exec`. A broker runs on the VM's exec
socket and real client subprocesses run commands through it.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from servergroup.common.process import ProcessIdentity, stop_process
from servergroup.servers.drivers.qemu.boot import VmLayout, qemu_argv
from servergroup.servers.drivers.qemu.execbroker import ExecBroker
from servergroup.servers.drivers.qemu.image import (
    ensure_image,
    guest_mounts,
    guest_python,
    probe_accel,
)

BOOT_TIMEOUT = 90.0  # TCG on two shared cores
CLIENT = [sys.executable, "-m", "servergroup.servers.drivers.qemu.execbroker"]

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def vm_dir() -> Iterator[Path]:
    """A short directory for the VM's sockets; its QEMU (by PID file) is killed at teardown."""
    d = Path(tempfile.mkdtemp(prefix="sg-vmx-"))
    try:
        yield d
    finally:
        _kill_qemu(d / "qemu.pid")
        shutil.rmtree(d, ignore_errors=True)


def _kill_qemu(pid_file: Path) -> None:
    try:
        pid = int(pid_file.read_text())
    except (OSError, ValueError):
        return
    identity = ProcessIdentity.of(pid, argv_check=lambda argv: str(pid_file) in argv)
    if identity is not None:  # else that PID is not our QEMU any more
        stop_process(identity, term_timeout=0.0, kill_timeout=10.0)


@pytest.fixture
def vm(vm_dir: Path) -> VmLayout:
    """A VM started (daemonized by QEMU) from the cached image; killed by `vm_dir`."""
    image = ensure_image()
    layout = VmLayout(
        name="sg-exec-vm",
        vcpus=2,
        max_vcpus=2,
        memory_mb=256,
        accel=probe_accel(image),
        kernel=image.kernel,
        initrd=image.initrd,
        python=guest_python(),
        mounts=guest_mounts(),
        channel_socket=vm_dir / "cgcs.messaging.instance-x.sock",
        exec_socket=vm_dir / "exec-port.sock",
        qmp_socket=vm_dir / "qmp.sock",
        console_log=vm_dir / "console.log",
        pid_file=vm_dir / "qemu.pid",
    )
    qemu = subprocess.run(qemu_argv(layout), capture_output=True, text=True, timeout=30)
    assert qemu.returncode == 0, qemu.stderr
    return layout


@pytest.fixture
async def vm_broker(vm: VmLayout) -> AsyncIterator[tuple[Path, ExecBroker]]:
    """A broker on the VM's exec socket, once the agent answers: (client socket, broker)."""
    layout = vm
    listen = layout.exec_socket.parent / "exec.sock"
    broker = ExecBroker(layout.exec_socket, listen, ready_timeout=BOOT_TIMEOUT)
    started = time.monotonic()
    await broker.start()
    try:
        while not broker.ready:
            if time.monotonic() - started > BOOT_TIMEOUT:
                console = layout.console_log.read_text(errors="replace")
                pytest.fail(f"the exec agent did not answer in {BOOT_TIMEOUT} s:\n{console}")
            await asyncio.sleep(0.05)
        took = time.monotonic() - started
        print(f"\nQEMU ({layout.accel}) start to the exec agent answering: {took:.2f} s")
        yield listen, broker
    finally:
        await broker.stop()


async def _run(sock: Path, *argv: str, input: bytes = b"") -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        *CLIENT,
        "--socket",
        str(sock),
        "--",
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(120):
            out, err = await proc.communicate(input)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out, err


async def test_exec_in_a_real_vm(vm_broker: tuple[Path, ExecBroker]) -> None:
    sock, broker = vm_broker
    status, out, err = await _run(sock, "uname", "-r")
    assert (status, out.decode()) == (0, ensure_image().kernel_version + "\n"), err

    status, out, err = await _run(sock, "sh", "-c", "cat /proc/cpuinfo | grep -c processor")
    assert (status, out) == (0, b"2\n"), err

    data = random.Random(11).randbytes(256 << 10)
    started = time.monotonic()
    status, out, err = await _run(sock, "cat", input=data)
    elapsed = time.monotonic() - started
    assert status == 0, err
    assert out == data
    print(f"256 KiB through cat in the VM and back: {elapsed:.2f} s")

    started = time.monotonic()
    both = await asyncio.gather(
        _run(sock, "sh", "-c", "sleep 1; echo one; exit 1"),
        _run(sock, "sh", "-c", "sleep 1; echo two >&2; exit 2"),
    )
    elapsed = time.monotonic() - started
    assert list(both) == [(1, b"one\n", b""), (2, b"", b"two\n")]
    print(f"two 1 s sessions at once: {elapsed:.2f} s")

    status, out, err = await _run(sock, "no-such-command")
    assert status == 127
    assert err.decode().splitlines() == [
        "servergroup server exec: no-such-command: command not found."
    ]
    assert broker.port_garbage == 0
