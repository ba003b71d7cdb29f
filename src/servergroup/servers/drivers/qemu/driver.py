"""The qemu driver: a server is a real Linux VM, one QEMU process per host that runs it.

Theory of operation. A host's copy of server `<name>` lives in
`<state_dir>/qemu/<host>/<name>/`: QEMU's PID file, its QMP socket, the
exec port's socket (`exec-port.sock`, served to `server exec` by an
`ExecBroker` as `exec.sock`), the serial console (`console.log`, appended
across boots), and a few small files the driver reads back after a restart:

- `channel`: the path of the server's channel socket. QEMU creates it
  itself, as libvirt does, at `<channel dir>/cgcs.messaging.<instance>.sock`
  of the host that started it, where that host's relay finds it;
- `running`: present while QEMU should run. QEMU gone while it is present
  means QEMU died unasked: a crash, reported once and cleaned up by `stop`;
- `incoming`: the URI a copy started by `receive` waits at;
- `disk`: the guest disk this copy booted from.

The guest's files (the host's Python, servergroup) come from a read-only
disk (`rootfs`) both copies of a migrating VM open; 9p would be simpler, but
QEMU refuses to migrate a VM with a 9p share mounted. A migration's copy
opens the disk the running copy booted from (found through the shared state
directory), never a newer one: the hosts of one machine share it; hosts on
separate machines need that disk at the same path (shared storage).

The state is the process (checked by PID file and command line, so a
recycled PID is never taken for ours) plus what QMP says (`query-status`).
Every call is idempotent, and a new driver adopts what runs.

Live migration copies the VM (`MoveStyle.COPY`): the target starts QEMU
with `-incoming tcp:<its address>:<port>` (`receive`), the source runs QMP
`migrate` to it and waits for `completed`, then quits its copy (`migrate`).
The copy's channel socket is in the target's channel directory from the
start, so the target's relay is connected before the guest arrives.

QEMU runs daemonized (`-daemonize`): it outlives a restart of the host
daemon, which adopts it.

vCPUs (the `Hypervisor` protocol): each vCPU of the VM is one QEMU thread,
found with QMP `query-cpus-fast`; `pin_vcpu` sets that thread's CPU affinity
(the scaling capability frees a physical CPU that way when the guest
offlines a vCPU).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from servergroup.common.process import ProcessIdentity, alive, stop_process
from servergroup.servers.drivers.base import (
    DriverError,
    MoveStyle,
    Observed,
    Power,
    channel_name,
)
from servergroup.servers.drivers.hypervisor import VcpuThread
from servergroup.servers.drivers.qemu import image as guest_image
from servergroup.servers.drivers.qemu.boot import (
    CHANNEL_PORT_ID,
    QEMU_BINARY,
    READY_MARKER,
    VmLayout,
    qemu_argv,
)
from servergroup.servers.drivers.qemu.execbroker import ExecBrokers
from servergroup.servers.drivers.qemu.qmp import Monitor, run
from servergroup.servers.drivers.qemu.rootfs import RootfsError, ensure_rootfs
from servergroup.servers.drivers.registry import driver_info
from servergroup.servers.model import DriverKind, ServerSpec

log = logging.getLogger(__name__)

QEMU_DIR = "qemu"
PID_NAME = "qemu.pid"
QMP_NAME = "qmp.sock"
EXEC_PORT_NAME = "exec-port.sock"
EXEC_NAME = "exec.sock"
CONSOLE_NAME = "console.log"
CHANNEL_NAME = "channel"
RUNNING_NAME = "running"
INCOMING_NAME = "incoming"
DISK_NAME = "disk"
#: sun_path holds 108 bytes, the terminating NUL included.
MAX_SOCKET_PATH = 107
#: A qemu server gets at least this much memory: its guest runs Python.
MIN_MEMORY_MB = driver_info(DriverKind.QEMU).min_memory_mb
POLL_INTERVAL = 0.05
#: Migration bandwidth cap (bytes/s): QEMU's default of 32 MiB/s makes a
#: local migration needlessly slow.
MIGRATION_BANDWIDTH = 4 << 30
#: The pause at the end of a migration QEMU aims for, in ms.
MIGRATION_DOWNTIME_MS = 100

#: QMP `query-status` -> what the driver reports.
_POWER = {
    "running": Power.RUNNING,
    "paused": Power.FROZEN,
    "suspended": Power.FROZEN,
    "inmigrate": Power.INCOMING,
    "prelaunch": Power.INCOMING,
    "finish-migrate": Power.RUNNING,
    "postmigrate": Power.RUNNING,
    "save-vm": Power.RUNNING,
    "restore-vm": Power.RUNNING,
    "debug": Power.FROZEN,
    "watchdog": Power.FROZEN,
}


def _our_qemu(pid: int, qmp: Path) -> ProcessIdentity | None:
    """The identity of `pid` if it is a QEMU whose command line names its QMP socket `qmp`."""
    return ProcessIdentity.of(pid, argv_check=lambda argv: any(str(qmp) in a for a in argv))


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _channel_path(channel_dir: Path, instance: str) -> Path:
    """Where a VM's channel socket goes in `channel_dir` (libvirt's layout)."""
    return Path(os.path.abspath(channel_dir)) / channel_name(instance)


def free_port(address: str) -> int:
    """A TCP port free on `address` now (the copy binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((address, 0))
        port: int = probe.getsockname()[1]
        return port


class QemuDriver:
    """QEMU VMs of host `host` (see the module docstring); root only.

    `state_dir` is the machine's servergroup state directory; `channel_dir` the
    host's channel directory, where each VM's channel socket goes (None for a
    command that only reaches VMs already running: it boots none); `migration_address`
    the address of this host that a migration's source can reach (the lab
    host's address on a lab). `image_dir` holds the guest image (default:
    `image.default_image_dir()`), built on first use when missing.
    """

    kind = DriverKind.QEMU
    move_style = MoveStyle.COPY

    def __init__(
        self,
        state_dir: Path,
        *,
        host: str,
        channel_dir: Path | None,
        migration_address: str = "127.0.0.1",
        image_dir: Path | None = None,
        boot_timeout: float = 90.0,
        stop_timeout: float = 10.0,
        migration_timeout: float = 300.0,
        brokers: ExecBrokers | None = None,
    ) -> None:
        self.state_dir = Path(os.path.abspath(state_dir))
        self.host = host
        self.channel_dir = Path(os.path.abspath(channel_dir)) if channel_dir is not None else None
        self.migration_address = migration_address
        self.image_dir = image_dir
        self.boot_timeout = boot_timeout
        self.stop_timeout = stop_timeout
        self.migration_timeout = migration_timeout
        self._image: guest_image.GuestImage | None = None
        self._accel: str | None = None
        self._monitors: dict[str, Monitor] = {}
        #: The exec brokers of this host's VMs (the host daemon runs them as a component).
        self.brokers = brokers if brokers is not None else ExecBrokers()
        self._locks: dict[str, asyncio.Lock] = {}

    # -- names ---------------------------------------------------------------------

    def server_dir(self, name: str) -> Path:
        return self.state_dir / QEMU_DIR / self.host / name

    def console_path(self, name: str) -> Path:
        return self.server_dir(name) / CONSOLE_NAME

    def exec_socket(self, name: str) -> Path:
        return self.server_dir(name) / EXEC_NAME

    def _monitor(self, name: str) -> Monitor:
        monitor = self._monitors.get(name)
        if monitor is None:
            monitor = Monitor(self.server_dir(name) / QMP_NAME, label=f"qemu server {name}")
            self._monitors[name] = monitor
        return monitor

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    def pid(self, name: str) -> int | None:
        """The PID of this host's QEMU of `name`, if it runs (checked by its command line)."""
        text = _read(self.server_dir(name) / PID_NAME)
        if text is None or not text.isdigit():
            return None
        pid = int(text)
        return pid if _our_qemu(pid, self.server_dir(name) / QMP_NAME) is not None else None

    # -- the image -----------------------------------------------------------------

    async def _layout(
        self, spec: ServerSpec, channel_socket: Path, *, incoming: str | None = None
    ) -> VmLayout:
        if self._image is None:
            try:
                self._image = await asyncio.to_thread(guest_image.ensure_image, self.image_dir)
            except guest_image.GuestImageError as exc:
                raise DriverError(str(exc)) from None
        if self._accel is None:
            self._accel = await asyncio.to_thread(
                guest_image.probe_accel, self._image, self.image_dir
            )
            log.info("qemu servers on %s run with -accel %s", self.host, self._accel)
        disk = self._running_disk(spec.name) if incoming is not None else None
        if disk is None:
            try:
                disk = await asyncio.to_thread(
                    ensure_rootfs, self.image_dir or guest_image.default_image_dir()
                )
            except RootfsError as exc:
                raise DriverError(str(exc)) from None
        directory = self.server_dir(spec.name)
        (directory / DISK_NAME).write_text(f"{disk}\n")
        return VmLayout(
            name=spec.name,
            vcpus=spec.vcpus,
            max_vcpus=spec.vcpus,
            memory_mb=max(spec.memory_mb, MIN_MEMORY_MB),
            accel="kvm" if self._accel == "kvm" else "tcg",
            kernel=self._image.kernel,
            initrd=self._image.initrd,
            python=guest_image.guest_python(),
            mounts=(),  # a disk, not 9p: QEMU does not migrate a VM with 9p mounted
            disk=disk,
            channel_socket=channel_socket,
            exec_socket=directory / EXEC_PORT_NAME,
            qmp_socket=directory / QMP_NAME,
            console_log=directory / CONSOLE_NAME,
            pid_file=directory / PID_NAME,
            incoming=incoming,
        )

    def _running_disk(self, name: str) -> Path | None:
        """The disk a running copy of `name` on another host of this machine booted from.

        A live migration's copy must open the very disk the guest has mounted: a
        disk built since (the code changed) would corrupt what the guest sees.
        """
        for other in sorted((self.state_dir / QEMU_DIR).glob(f"*/{name}")):
            if other.parent.name == self.host:
                continue
            peer = QemuDriver(self.state_dir, host=other.parent.name, channel_dir=None)
            disk = _read(other / DISK_NAME)
            if disk is not None and peer.pid(name) is not None and Path(disk).is_file():
                return Path(disk)
        return None

    def _check_paths(self, name: str, channel_socket: Path) -> None:
        for path in (channel_socket, self.server_dir(name) / EXEC_PORT_NAME):
            if len(os.fsencode(path)) > MAX_SOCKET_PATH:
                raise DriverError(
                    f"the socket path {path} is longer than {MAX_SOCKET_PATH} bytes; "
                    "use a shorter state or channel directory"
                )

    # -- the protocol ----------------------------------------------------------------

    async def create(self, spec: ServerSpec) -> None:
        if os.geteuid() != 0:
            raise DriverError(
                "the qemu driver must run as root: it shares the host's files with its "
                "guests and pins vCPU threads"
            )
        if shutil.which(QEMU_BINARY) is None:
            raise DriverError(
                f"QEMU is not installed ({QEMU_BINARY} not found; Debian package qemu-system-x86)"
            )
        try:
            self.server_dir(spec.name).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DriverError(f"cannot make {self.server_dir(spec.name)}: {exc.strerror}") from None

    async def start(self, spec: ServerSpec) -> None:
        """Boot the VM, its channel in the host's channel directory; wait for its guest agent.

        The server is up when its guest agent has opened the messaging port
        (QEMU says so on QMP): it is in its group from then on. The exec agent
        starts after it in the guest; `server exec` waits for that agent.
        """
        async with self._lock(spec.name):
            if self.pid(spec.name) is not None:
                return
            if not self.server_dir(spec.name).is_dir():
                raise DriverError(f"qemu server {spec.name} does not exist on host {self.host}")
            if self.channel_dir is None:
                raise DriverError(
                    f"qemu server {spec.name} cannot boot without a channel directory"
                )
            await self._launch(spec, self.channel_dir / channel_name(spec.instance), incoming=None)
            await self._wait_agent(spec.name)
            await self._new_broker(spec.name)

    async def _wait_agent(self, name: str) -> None:
        """Wait until the guest agent opens the messaging port (QMP VSERPORT_CHANGE)."""
        deadline = time.monotonic() + self.boot_timeout

        def give_up() -> str | None:
            if self.pid(name) is None:
                return f"QEMU of qemu server {name} exited while booting: {self._tail(name)}"
            if time.monotonic() > deadline:
                return (
                    f"the guest agent of qemu server {name} did not start within "
                    f"{self.boot_timeout:g} s: {self._tail(name)}"
                )
            return None

        await self._monitor(name).wait_for_event(
            "VSERPORT_CHANGE",
            lambda data: data.get("id") == CHANNEL_PORT_ID and data.get("open") is True,
            give_up=give_up,
        )
        log.info("qemu server %s on %s: its guest agent opened the channel", name, self.host)

    async def _launch(self, spec: ServerSpec, channel: Path, *, incoming: str | None) -> None:
        name = spec.name
        directory = self.server_dir(name)
        self._check_paths(name, channel)
        layout = await self._layout(spec, channel, incoming=incoming)
        for leftover in (PID_NAME, QMP_NAME, EXEC_PORT_NAME, INCOMING_NAME):
            _unlink(directory / leftover)
        _unlink(channel)  # a socket left by a QEMU that was killed
        try:
            channel.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DriverError(f"cannot make {channel.parent}: {exc.strerror}") from None
        (directory / CHANNEL_NAME).write_text(f"{channel}\n")
        argv = qemu_argv(layout)
        done = await asyncio.to_thread(
            subprocess.run,
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            cwd="/",
            check=False,
        )
        if done.returncode != 0:
            reason = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
            raise DriverError(f"QEMU did not start qemu server {name}: {reason}")
        pid = self.pid(name)
        if pid is None:
            raise DriverError(
                f"QEMU of qemu server {name} exited at once: see {layout.console_log}"
            )
        (directory / RUNNING_NAME).write_text(f"{pid}\n")
        if incoming is not None:
            (directory / INCOMING_NAME).write_text(f"{incoming}\n")
        log.info(
            "qemu server %s on %s: QEMU started (pid %d, %s)%s",
            name,
            self.host,
            pid,
            layout.accel,
            f", waiting for a migration at {incoming}" if incoming else "",
        )

    def _console_size(self, name: str) -> int:
        try:
            return self.console_path(name).stat().st_size
        except OSError:
            return 0

    async def _wait_ready(self, name: str, offset: int) -> None:
        """Wait until the guest's init says it is up in the console, past `offset`."""
        marker = READY_MARKER.encode()
        deadline = time.monotonic() + self.boot_timeout
        path = self.console_path(name)
        while True:
            with contextlib.suppress(OSError), path.open("rb") as console:
                console.seek(max(0, offset - len(marker)))
                if marker in console.read():
                    log.info("qemu server %s on %s: the guest is up", name, self.host)
                    return
            if self.pid(name) is None:
                raise DriverError(
                    f"QEMU of qemu server {name} exited while booting: {self._tail(name)}"
                )
            if time.monotonic() > deadline:
                raise DriverError(
                    f"qemu server {name} did not boot within {self.boot_timeout:g} s: "
                    f"{self._tail(name)}"
                )
            await asyncio.sleep(POLL_INTERVAL * 2)

    async def _new_broker(self, name: str) -> None:
        """Serve the VM's exec port afresh: a new boot has a new exec agent."""
        await self._stop_broker(name)
        await self._ensure_broker(name)

    async def _wait_exec(self, name: str) -> None:
        """Serve the VM's exec port and wait until its agent answers: the guest is usable."""
        await self._new_broker(name)
        broker = self.brokers.get(name)
        assert broker is not None
        deadline = time.monotonic() + self.boot_timeout
        while not broker.ready:
            if self.pid(name) is None:
                raise DriverError(
                    f"QEMU of qemu server {name} exited while booting: {self._tail(name)}"
                )
            if time.monotonic() > deadline:
                raise DriverError(
                    f"the agents of qemu server {name} did not start within "
                    f"{self.boot_timeout:g} s: {self._tail(name)}"
                )
            await asyncio.sleep(POLL_INTERVAL * 2)

    def _tail(self, name: str) -> str:
        try:
            lines = self.console_path(name).read_text(errors="replace").strip().splitlines()
        except OSError:
            lines = []
        return f"last console line: {lines[-1].strip()!r}" if lines else "no console output"

    async def stop(self, spec: ServerSpec) -> None:
        async with self._lock(spec.name):
            await self._stop(spec.name)

    async def _stop(self, name: str) -> None:
        await self._stop_broker(name)
        directory = self.server_dir(name)
        pid = self.pid(name)
        if pid is not None:
            with contextlib.suppress(DriverError):
                await self._monitor(name).execute("quit")
            if not await self._exited(pid, self.stop_timeout):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                if not await self._exited(pid, self.stop_timeout):
                    raise DriverError(f"QEMU of qemu server {name} (pid {pid}) did not exit")
            log.info("qemu server %s on %s: QEMU ended (pid %d)", name, self.host, pid)
        channel = _read(directory / CHANNEL_NAME)
        if channel is not None:
            _unlink(Path(channel))
        for leftover in (
            PID_NAME,
            QMP_NAME,
            EXEC_PORT_NAME,
            EXEC_NAME,
            RUNNING_NAME,
            INCOMING_NAME,
        ):
            _unlink(directory / leftover)

    async def _exited(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while alive(pid):
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(POLL_INTERVAL)
        return True

    async def reboot(self, spec: ServerSpec) -> None:
        async with self._lock(spec.name):
            if self.pid(spec.name) is None:
                raise DriverError(f"qemu server {spec.name} is not running: nothing to reboot")
            offset = self._console_size(spec.name)
            await self._monitor(spec.name).execute("system_reset")
            await self._wait_ready(spec.name, offset)
            await self._wait_exec(spec.name)

    async def pause(self, spec: ServerSpec) -> None:
        await self._run_state(spec.name, "stop")

    async def unpause(self, spec: ServerSpec) -> None:
        await self._run_state(spec.name, "cont")

    async def _run_state(self, name: str, command: str) -> None:
        async with self._lock(name):
            if self.pid(name) is None:
                raise DriverError(f"qemu server {name} is not running")
            await self._monitor(name).execute(command)

    async def delete(self, spec: ServerSpec) -> None:
        async with self._lock(spec.name):
            await self._stop(spec.name)
            shutil.rmtree(self.server_dir(spec.name), ignore_errors=True)
        self._monitors.pop(spec.name, None)
        log.info("qemu server %s deleted from %s", spec.name, self.host)

    async def attach(self, spec: ServerSpec, channel_dir: Path) -> None:
        """The channel is where QEMU made it; a running VM's channel cannot move."""
        if self.pid(spec.name) is None:
            return
        wanted = _channel_path(channel_dir, spec.instance)
        current = _read(self.server_dir(spec.name) / CHANNEL_NAME)
        if current is not None and Path(current) != wanted:
            raise DriverError(
                f"the channel of qemu server {spec.name} is {current}, not in {channel_dir}: "
                "restart the server to move it"
            )

    async def detach(self, spec: ServerSpec, channel_dir: Path) -> None:
        """Nothing to do while QEMU runs (its channel goes with it); clean a stale socket."""
        if self.pid(spec.name) is None:
            _unlink(_channel_path(channel_dir, spec.instance))

    async def observe(self, spec: ServerSpec) -> Observed:
        name = spec.name
        directory = self.server_dir(name)
        if not directory.is_dir():
            return Observed(power=Power.ABSENT)
        channel = _read(directory / CHANNEL_NAME)
        pid = self.pid(name)
        if pid is None:
            await self._stop_broker(name)
            crashed = None
            recorded = _read(directory / RUNNING_NAME)
            if recorded is not None:
                crashed = f"its QEMU (pid {recorded}) exited without being asked to"
            return Observed(power=Power.STOPPED, crashed=crashed)
        status = await self._monitor(name).execute("query-status")
        state = str(status.get("status", "")) if isinstance(status, dict) else ""
        power = _POWER.get(state)
        if power is None:
            return Observed(
                power=Power.RUNNING,
                pids=(pid,),
                guest_pid=pid,
                crashed=f"its VM is in state {state!r}",
            )
        # Kept while the copy that received a live migration runs: it says which stream came.
        incoming = _read(directory / INCOMING_NAME)
        if power in (Power.RUNNING, Power.FROZEN):
            await self._ensure_broker(name)
        return Observed(
            power=power,
            pids=(pid,),
            guest_pid=pid,
            channel_dir=Path(channel).parent if channel is not None else None,
            incoming_uri=incoming,
        )

    async def receive(self, spec: ServerSpec, channel_dir: Path) -> str:
        async with self._lock(spec.name):
            directory = self.server_dir(spec.name)
            if self.pid(spec.name) is not None:
                waiting = _read(directory / INCOMING_NAME)
                if waiting is not None:
                    # A copy waiting for this move, or one it has already arrived in:
                    # either way never end it (that would end the server).
                    return waiting
                await self._stop(spec.name)
            await self.create(spec)
            uri = f"tcp:{self.migration_address}:{free_port(self.migration_address)}"
            await self._launch(spec, _channel_path(channel_dir, spec.instance), incoming=uri)
            return uri

    async def migrate(self, spec: ServerSpec, uri: str) -> None:
        name = spec.name
        async with self._lock(name):
            if self.pid(name) is None:
                raise DriverError(f"qemu server {name} is not running: nothing to migrate")
            label = f"qemu server {name}"
            started = time.monotonic()
            async with self._monitor(name).session() as client:
                await run(
                    client,
                    "migrate-set-parameters",
                    {
                        "max-bandwidth": MIGRATION_BANDWIDTH,
                        "downtime-limit": MIGRATION_DOWNTIME_MS,
                    },
                    label=label,
                )
                await run(client, "migrate", {"uri": uri}, label=label)
                deadline = started + self.migration_timeout
                while True:
                    info = await run(client, "query-migrate", label=label)
                    state = str(info.get("status", "")) if isinstance(info, dict) else ""
                    if state == "completed":
                        break
                    if state in ("failed", "cancelled"):
                        why = info.get("error-desc", state) if isinstance(info, dict) else state
                        raise DriverError(f"the live migration of {name} to {uri} failed: {why}")
                    if time.monotonic() > deadline:
                        with contextlib.suppress(DriverError):
                            await run(client, "migrate_cancel", label=label)
                        raise DriverError(
                            f"the live migration of {name} to {uri} did not finish within "
                            f"{self.migration_timeout:g} s"
                        )
                    await asyncio.sleep(POLL_INTERVAL)
            downtime = info.get("downtime") if isinstance(info, dict) else None
            log.info(
                "qemu server %s migrated from %s to %s in %.2f s (downtime %s ms)",
                name,
                self.host,
                uri,
                time.monotonic() - started,
                downtime,
            )
            await self._stop(name)

    def exec_command(self, spec: ServerSpec, argv: Sequence[str]) -> list[str]:
        """The exec client, talking to this host's broker of the VM's exec port.

        DriverError when the VM does not run here.
        """
        if self.pid(spec.name) is None:
            raise DriverError(f"qemu server {spec.name} does not run on host {self.host} here")
        return [
            sys.executable,
            "-m",
            "servergroup.servers.drivers.qemu.execbroker",
            "--socket",
            str(self.exec_socket(spec.name)),
            "--",
            *argv,
        ]

    # -- exec brokers ------------------------------------------------------------------

    async def _ensure_broker(self, name: str) -> None:
        directory = self.server_dir(name)
        await self.brokers.ensure(name, directory / EXEC_PORT_NAME, directory / EXEC_NAME)

    async def _stop_broker(self, name: str) -> None:
        await self.brokers.discard(name)

    async def close(self) -> None:
        """Stop serving exec sockets (the VMs keep running)."""
        await self.brokers.stop()

    # -- vCPUs -------------------------------------------------------------------------

    async def vcpu_threads(self, spec: ServerSpec) -> tuple[VcpuThread, ...]:
        """Each vCPU of the running VM: its QEMU thread (QMP `query-cpus-fast`) and affinity."""
        if self.pid(spec.name) is None:
            raise DriverError(f"qemu server {spec.name} is not running on host {self.host}")
        cpus = await self._monitor(spec.name).execute("query-cpus-fast")
        threads = []
        for cpu in cpus if isinstance(cpus, list) else []:
            tid = int(cpu["thread-id"])
            try:
                affinity = tuple(sorted(os.sched_getaffinity(tid)))
            except OSError:
                affinity = ()
            threads.append(
                VcpuThread(index=int(cpu["cpu-index"]), thread_ids=(tid,), affinity=affinity)
            )
        return tuple(sorted(threads, key=lambda t: t.index))

    async def pin_vcpu(self, spec: ServerSpec, vcpu: int, cpus: Sequence[int]) -> VcpuThread:
        """Run vCPU `vcpu` of the VM only on host CPUs `cpus` (its thread's affinity)."""
        for thread in await self.vcpu_threads(spec):
            if thread.index != vcpu:
                continue
            (tid,) = thread.thread_ids
            try:
                os.sched_setaffinity(tid, set(cpus))
                affinity = tuple(sorted(os.sched_getaffinity(tid)))
            except (OSError, ValueError) as exc:
                raise DriverError(
                    f"cannot pin vCPU {vcpu} of {spec.name} to CPU(s) "
                    f"{','.join(map(str, cpus)) or '(none)'}: "
                    f"{getattr(exc, 'strerror', None) or exc}"
                ) from None
            return VcpuThread(index=vcpu, thread_ids=(tid,), affinity=affinity)
        raise DriverError(f"qemu server {spec.name} has no vCPU {vcpu}")


def remove_all(state_dir: Path) -> list[str]:
    """End every QEMU of `state_dir`'s qemu servers (SIGKILL) and remove their files.

    For clean-ups by force (`servergroup down`): a QEMU counts only if its
    command line names its own QMP socket. Returns `host/name` of each removed.
    """
    root = Path(os.path.abspath(state_dir)) / QEMU_DIR
    removed: list[str] = []
    for directory in sorted(root.glob("*/*")):
        if not directory.is_dir():
            continue
        text = _read(directory / PID_NAME)
        if text is not None and text.isdigit():
            identity = _our_qemu(int(text), directory / QMP_NAME)
            if identity is not None:
                stop_process(identity, term_timeout=0.0)
        channel = _read(directory / CHANNEL_NAME)
        if channel is not None:
            _unlink(Path(channel))
        shutil.rmtree(directory, ignore_errors=True)
        removed.append(f"{directory.parent.name}/{directory.name}")
    return removed


__all__ = [
    "MIN_MEMORY_MB",
    "QemuDriver",
    "free_port",
    "remove_all",
]
