"""The lab driver: a server on this machine is a network namespace, a cgroup and a guest agent.

Theory of operation. A lab server `<name>` is

- the network namespace `sgs-<scope>-<name>`, with no IP networking: only `lo`,
  left down, so messaging has to go through the channel (seed 000: "available
  regardless of whether IP networking is functional within the server"),
  and `net.unix.max_dgram_qlen` raised to `GUEST_DGRAM_QLEN` inside it (the
  default of 10 datagrams per socket throttles every local application);
- the cgroup `servergroup/<scope>/<name>` of the freezer hierarchy (cgroup v1
  `freezer.state` FROZEN/THAWED; on a cgroup v2 machine `cgroup.freeze`),
  which holds every process of the server: pause freezes it, stop signals
  every process in it;
- the cpuset cgroup of the same name (cgroup v1 `cpuset` hierarchy; on v2
  the same cgroup, with the cpuset controller enabled), which says where its
  processes may run (see "vCPUs" below);
- its guest agent `python -m servergroup guest --channel-listen
  <state_dir>/servers/<name>/channel.sock`, started detached (own session,
  parent re-assigned to init, output in `guest.log`, PID in `guest.pid`)
  inside the namespace and the cgroup;
- its own CPU tree, `<state_dir>/servers/<name>/sysroot/sys/devices/system/cpu`,
  with the kernel's layout and `spec.vcpus` CPUs, which its scale agent
  (inside the guest agent: `--sysfs-root` that `sysroot`, `--lab-cpus`
  the flavor's vCPUs) makes afresh at each start, all online, as a boot
  leaves a VM's CPUs. Lab servers share the machine's CPUs: their scale
  agents take CPUs offline in their trees, never in the machine's sysfs
  (`servergroup.scaling.sysfs.LabCpuSysfs`).

A host sees the server's channel through a symlink
`cgcs.messaging.<instance>.sock` in its channel directory pointing at that
socket; `attach` / `detach` make and remove it, and the server directory
records where it is (`attached`). Moving the symlink is a live migration:
the guest agent keeps its PID and its socket.

Everything is idempotent and crash-safe: the state is the kernel's (the
namespace, the cgroup and its processes) plus a few files, so a new driver
re-reads it and adopts a running guest agent (PID file checked against the
cgroup and `/proc/<pid>/cmdline`). Only processes in the server's own cgroup
are ever signalled. All lab hosts of one machine must share `state_dir`:
servers are machine-wide objects, and a host only manages them.

vCPUs (the `Hypervisor` protocol). A lab server has no virtual hardware,
so its `spec.vcpus` vCPUs are slots this driver keeps, each with an
affinity (a set of host CPUs; recorded in `vcpus.json` in the server
directory, every CPU the cpuset allows until pinned). The server's cpuset
(`cpuset.cpus`) is the union of its vCPUs' affinities, so pinning a vCPU
is a cpuset change, and every process (thread) of the server counts as a
thread of each vCPU: the kernel schedules them anywhere in that union, as
it would a VM's unpinned vCPU threads. Scaling a lab server down frees a
host CPU when the vCPU that leaves was the last one allowed on it. On a
machine without a cpuset controller, lab servers run but have no vCPU
operations.

The driver needs root, and the machine's cgroup hierarchy visible at
`/sys/fs/cgroup`: a process started with `ip netns exec` has its own `/sys`
and mount namespace (where named namespaces made later are also invisible to
everyone else), so run a host daemon in a lab host's namespace with
`nsenter --net=/run/netns/<host>` instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from servergroup.common.errors import ProcessFailed
from servergroup.common.process import alive, command_line, stop_all
from servergroup.common.runner import CommandFailed, CommandNotFound, run
from servergroup.guestcomm.sockets import GUEST_DGRAM_QLEN
from servergroup.servers.drivers.base import (
    DriverError,
    MoveStyle,
    Observed,
    Power,
    channel_name,
)
from servergroup.servers.drivers.hypervisor import VcpuThread
from servergroup.servers.model import DriverKind, ServerSpec

log = logging.getLogger(__name__)

NETNS_DIR = Path("/run/netns")
NETNS_PREFIX = "sgs-"
CGROUP_PARENT = "servergroup"
SERVERS_DIR = "servers"
SOCKET_NAME = "channel.sock"
PID_NAME = "guest.pid"
LOG_NAME = "guest.log"
ATTACHED_NAME = "attached"
VCPUS_NAME = "vcpus.json"
#: The sysfs root of a lab server's CPU tree, in its server directory.
SYSROOT_NAME = "sysroot"
#: sun_path holds 108 bytes, the terminating NUL included.
MAX_SOCKET_PATH = 107
TOOL_TIMEOUT = 20.0
POLL_INTERVAL = 0.02

#: Joins the server's cgroups (the cgroup.procs files before `--`; $0 is the namespace),
#: then becomes `ip netns exec <ns> argv...`.
#: `exec` keeps the PID: the PID of this shell is the PID of the final program.
_ENTER = (
    'ns=$0; while [ "$1" != -- ]; do echo $$ > "$1" || exit 1; shift; done; shift; '
    'exec ip netns exec "$ns" "$@"'
)
#: Starts `_ENTER` in the background and records its PID, then exits: the guest agent
#: is re-parented to init (nobody here has to reap it) and outlives its starter.
_LAUNCH = 'enter=$1 pidfile=$2; shift 2; sh -c "$enter" "$@" & echo $! > "$pidfile"'

#: `guest_argv(socket_path, vcpus)`: the guest agent's command for a server.
GuestArgv = Callable[[Path, int], Sequence[str]]


def default_guest_argv(socket_path: Path, vcpus: int = 1, *, scale_agent: bool = True) -> list[str]:
    """The guest agent of this installation, listening on `socket_path`, with its scale
    agent on the server's own CPU tree of `vcpus` CPUs (beside the socket: `SYSROOT_NAME`),
    or without one (`scale_agent` False: a program of the server may bind `cgcs.scale`).
    """
    if not scale_agent:
        return [
            sys.executable, "-m", "servergroup", "-v", "--log-text", "guest",
            "--channel-listen", str(socket_path), "--no-scale-agent",
        ]  # fmt: skip
    return [
        sys.executable,
        "-m",
        "servergroup",
        "-v",
        "--log-text",
        "guest",
        "--channel-listen",
        str(socket_path),
        "--sysfs-root",
        str(socket_path.parent / SYSROOT_NAME),
        "--lab-cpus",
        str(vcpus),
    ]


# --- cgroups -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _ServerCgroups:
    """Where the servers' cgroups of one controller's hierarchy are."""

    root: Path  # where the hierarchy is mounted
    version: int  # 1 or 2
    #: The driver's scope (see `LabDriver.scope`): the servers of one state
    #: directory live under `servergroup/<scope>/`, apart from any other's.
    scope: str = ""

    def path(self, name: str) -> Path:
        if self.scope:
            return self.root / CGROUP_PARENT / self.scope / name
        return self.root / CGROUP_PARENT / name

    def procs_file(self, name: str) -> Path:
        return self.path(name) / "cgroup.procs"

    def exists(self, name: str) -> bool:
        return self.path(name).is_dir()


@dataclass(frozen=True, slots=True)
class Cgroups(_ServerCgroups):
    """The freezer of one cgroup hierarchy: v1 `freezer` or v2 (`cgroup.freeze`)."""

    def create(self, name: str) -> None:
        self.path(name).mkdir(parents=True, exist_ok=True)

    def procs(self, name: str) -> list[int]:
        """Live (not zombie) processes of the cgroup."""
        try:
            text = self.procs_file(name).read_text()
        except FileNotFoundError:
            return []
        return [pid for pid in map(int, text.split()) if alive(pid)]

    def set_frozen(self, name: str, frozen: bool) -> None:
        if self.version == 1:
            (self.path(name) / "freezer.state").write_text("FROZEN" if frozen else "THAWED")
        else:
            (self.path(name) / "cgroup.freeze").write_text("1" if frozen else "0")

    def frozen(self, name: str) -> bool | None:
        """True when frozen, False when thawed, None while changing (or absent)."""
        try:
            if self.version == 1:
                state = (self.path(name) / "freezer.state").read_text().strip()
                return {"FROZEN": True, "THAWED": False}.get(state)
            events = (self.path(name) / "cgroup.events").read_text().split()
            wanted = (self.path(name) / "cgroup.freeze").read_text().strip() == "1"
        except FileNotFoundError:
            return None
        is_frozen = events[events.index("frozen") + 1] == "1" if "frozen" in events else False
        return is_frozen if is_frozen == wanted else None

    def wants_frozen(self, name: str) -> bool:
        """Whether the cgroup was asked to freeze (it may still be freezing)."""
        try:
            if self.version == 1:
                return (self.path(name) / "freezer.state").read_text().strip() != "THAWED"
            return (self.path(name) / "cgroup.freeze").read_text().strip() == "1"
        except FileNotFoundError:
            return False

    def remove(self, name: str) -> None:
        _remove_cgroup(self.path(name), scoped=bool(self.scope))


def _remove_cgroup(path: Path, *, scoped: bool) -> None:
    """Remove an empty cgroup (absent is fine), and its scope's once that is empty too."""
    deadline = time.monotonic() + 2.0
    while True:
        try:
            path.rmdir()
            if scoped:  # the scope's own cgroup, once its last server is gone
                with contextlib.suppress(OSError):
                    path.parent.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            # Right after its last process exits a cgroup can be busy for a moment.
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                raise DriverError(f"cannot remove cgroup {path}: {exc.strerror}") from None
            time.sleep(POLL_INTERVAL)


def _mounts() -> list[tuple[str, str, set[str]]]:
    """(mount point, filesystem type, super options) of every mount we can see."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        before, _, after = line.partition(" - ")
        fields, rest = before.split(), after.split()
        if len(fields) < 5 or len(rest) < 3:
            continue
        point = fields[4].encode().decode("unicode_escape")  # \040 for a space
        found.append((point, rest[0], set(rest[2].split(","))))
    return found


def detect_cgroups() -> Cgroups:
    """The freezer to use here: the v1 freezer hierarchy, else cgroup v2; DriverError if none."""
    mounts = _mounts()
    for point, fstype, options in mounts:
        if fstype == "cgroup" and "freezer" in options:
            return Cgroups(Path(point), 1)
    v2 = [Path(point) for point, fstype, _ in mounts if fstype == "cgroup2"]
    v2.sort(key=lambda p: p != Path("/sys/fs/cgroup"))  # a pure v2 machine's mount first
    for root in v2:
        # cgroup.freeze exists in every non-root cgroup of a kernel with the v2 freezer.
        if any((child / "cgroup.freeze").exists() for child in root.iterdir() if child.is_dir()):
            return Cgroups(root, 2)
        probe = root / CGROUP_PARENT
        with contextlib.suppress(OSError):
            probe.mkdir(exist_ok=True)
            if (probe / "cgroup.freeze").exists():
                return Cgroups(root, 2)
    raise DriverError(
        "the lab driver finds no freezer cgroup (v1 freezer or v2) under /sys/fs/cgroup; "
        "a process started with `ip netns exec` has its own /sys: start it with "
        "`nsenter --net=/run/netns/<namespace>` instead"
    )


def parse_cpus(text: str) -> tuple[int, ...]:
    """A kernel CPU list (`0-2,5`) as ascending CPU numbers; ValueError when it is not one."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        if not part:
            continue
        first, _, last = part.partition("-")
        low, high = int(first), int(last or first)
        if low < 0 or high < low:
            raise ValueError(f"not a CPU range: {part!r}")
        cpus.update(range(low, high + 1))
    return tuple(sorted(cpus))


def format_cpus(cpus: Sequence[int]) -> str:
    """CPU numbers as a kernel CPU list (`0-2,5`)."""
    ranges: list[str] = []
    for cpu in sorted(set(cpus)):
        if ranges and cpu == int(ranges[-1].rpartition("-")[2]) + 1:
            ranges[-1] = f"{ranges[-1].partition('-')[0]}-{cpu}"
        else:
            ranges.append(str(cpu))
    return ",".join(ranges)


@dataclass(frozen=True, slots=True)
class Cpusets(_ServerCgroups):
    """The cpuset controller: v1 `cpuset` hierarchy, or cgroup v2 with `cpuset` enabled."""

    def allowed(self) -> tuple[int, ...]:
        """The CPUs any server may use: those of the hierarchy's root."""
        files = ("cpuset.cpus",) if self.version == 1 else ("cpuset.cpus.effective",)
        return parse_cpus((self.root / files[0]).read_text())

    def create(self, name: str) -> None:
        """Make the server's cpuset (and its parents), allowing every CPU of the root."""
        levels = [self.root / CGROUP_PARENT]
        if self.scope:
            levels.append(levels[-1] / self.scope)
        levels.append(self.path(name))
        parent = self.root
        for level in levels:
            if self.version == 2:
                # A child has the cpuset files only once its parent enables the controller.
                control = parent / "cgroup.subtree_control"
                if "cpuset" not in control.read_text().split():
                    control.write_text("+cpuset")
            level.mkdir(exist_ok=True)
            if self.version == 1:
                # A v1 cpuset starts empty: no process can join it until it has CPUs and memory.
                for setting in ("cpuset.cpus", "cpuset.mems"):
                    if not (level / setting).read_text().strip():
                        (level / setting).write_text((parent / setting).read_text().strip())
            parent = level

    def set_cpus(self, name: str, cpus: Sequence[int]) -> None:
        (self.path(name) / "cpuset.cpus").write_text(format_cpus(cpus))

    def threads(self, name: str) -> tuple[int, ...]:
        """Every thread (task) in the server's cpuset."""
        try:
            text = (
                self.path(name) / ("tasks" if self.version == 1 else "cgroup.threads")
            ).read_text()
        except FileNotFoundError:
            return ()
        return tuple(sorted(int(tid) for tid in text.split()))

    def remove(self, name: str) -> None:
        _remove_cgroup(self.path(name), scoped=bool(self.scope))


def detect_cpusets() -> Cpusets | None:
    """The cpuset controller here (v1 hierarchy, else cgroup v2), or None when there is none."""
    mounts = _mounts()
    for point, fstype, options in mounts:
        if fstype == "cgroup" and "cpuset" in options:
            return Cpusets(Path(point), 1)
    for point, fstype, _ in mounts:
        if fstype != "cgroup2":
            continue
        with contextlib.suppress(OSError):
            if "cpuset" in (Path(point) / "cgroup.controllers").read_text().split():
                return Cpusets(Path(point), 2)
    return None


# --- processes -----------------------------------------------------------------------


def _run(argv: Sequence[str]) -> None:
    try:
        run(argv, timeout=TOOL_TIMEOUT, check=True)
    except CommandNotFound:
        raise DriverError(f"{argv[0]} is not installed (Debian package iproute2)") from None
    except CommandFailed as exc:
        raise DriverError(str(exc)) from None


def _netns_usable(netns: str) -> bool:
    """Whether /run/netns/<netns> is a mounted namespace (not a file left by a crash)."""
    try:
        st = os.stat(NETNS_DIR / netns)
        return st.st_dev != os.stat(NETNS_DIR).st_dev
    except FileNotFoundError:
        return False


def _raise_dgram_qlen(netns: str) -> None:
    """Let each socket of the server's namespace hold `GUEST_DGRAM_QLEN` datagrams.

    `net.unix.max_dgram_qlen` is per network namespace (10 by default, which
    throttles every application of the server), and a socket takes it when
    it is created, so this runs before the guest agent starts. Written from
    inside the namespace: the machine's own setting is not touched. A failure
    leaves the server working, only slower (its agent warns too).
    """
    try:
        run(
            [
                "ip",
                "netns",
                "exec",
                netns,
                "sysctl",
                "-q",
                "-w",
                f"net.unix.max_dgram_qlen={GUEST_DGRAM_QLEN}",
            ],
            timeout=TOOL_TIMEOUT,
            check=True,
        )
    except (CommandNotFound, CommandFailed) as exc:
        log.warning("cannot raise net.unix.max_dgram_qlen in %s: %s", netns, exc)


# --- the driver ----------------------------------------------------------------------


class LabDriver:
    """Lab servers on this machine (see the module docstring); needs root.

    `state_dir` holds `servers/<name>/` for every lab server; every lab host of
    the machine must use the same one. `cgroups` picks the freezer (default:
    detected on first use); `guest_argv(socket_path)` the guest agent's command.

    Kernel objects are named from the driver's `scope`, a digest of the state
    directory: namespace `sgs-<scope>-<name>`, cgroup `servergroup/<scope>/<name>`.
    Two set-ups on one machine (a user's `servergroup up` and a test run, say)
    can therefore both have a server `s1` without touching each other's.
    """

    kind = DriverKind.LAB
    move_style = MoveStyle.CHANNEL

    def __init__(
        self,
        state_dir: Path,
        *,
        cgroups: Cgroups | None = None,
        cpusets: Cpusets | None = None,
        guest_argv: GuestArgv = default_guest_argv,
        start_timeout: float = 15.0,
        stop_timeout: float = 3.0,
        kill_timeout: float = 3.0,
        freeze_timeout: float = 5.0,
    ) -> None:
        self.state_dir = Path(os.path.abspath(state_dir))
        self.scope = hashlib.sha256(os.fsencode(self.state_dir)).hexdigest()[:6]
        self._cgroups = replace(cgroups, scope=self.scope) if cgroups is not None else None
        self._cpusets = replace(cpusets, scope=self.scope) if cpusets is not None else None
        self._cpusets_detected = cpusets is not None
        self._guest_argv = guest_argv
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.kill_timeout = kill_timeout
        self.freeze_timeout = freeze_timeout

    # -- names ---------------------------------------------------------------------

    @property
    def cgroups(self) -> Cgroups:
        if self._cgroups is None:
            self._cgroups = replace(detect_cgroups(), scope=self.scope)
        return self._cgroups

    @property
    def cpusets(self) -> Cpusets | None:
        """The cpuset controller, or None on a machine without one (no vCPU operations)."""
        if not self._cpusets_detected:
            found = detect_cpusets()
            self._cpusets = replace(found, scope=self.scope) if found is not None else None
            self._cpusets_detected = True
        return self._cpusets

    def _join_files(self, name: str) -> list[str]:
        """The cgroup.procs files a process of the server writes itself into."""
        files = [self.cgroups.procs_file(name)]
        cpusets = self.cpusets
        if cpusets is not None and cpusets.exists(name) and cpusets.procs_file(name) != files[0]:
            files.append(cpusets.procs_file(name))
        return [str(f) for f in files]

    def server_dir(self, name: str) -> Path:
        return self.state_dir / SERVERS_DIR / name

    def socket_path(self, name: str) -> Path:
        return self.server_dir(name) / SOCKET_NAME

    def log_path(self, name: str) -> Path:
        return self.server_dir(name) / LOG_NAME

    def netns(self, name: str) -> str:
        return f"{NETNS_PREFIX}{self.scope}-{name}"

    def known_servers(self) -> list[str]:
        """Names of the lab servers with a directory under `state_dir` (for clean-ups)."""
        try:
            return sorted(p.name for p in (self.state_dir / SERVERS_DIR).iterdir() if p.is_dir())
        except FileNotFoundError:
            return []

    # -- the protocol ----------------------------------------------------------------

    async def create(self, spec: ServerSpec) -> None:
        await asyncio.to_thread(self.create_sync, spec.name)

    async def start(self, spec: ServerSpec) -> None:
        await asyncio.to_thread(self.start_sync, spec.name, spec.vcpus)

    async def stop(self, spec: ServerSpec) -> None:
        await asyncio.to_thread(self.stop_sync, spec.name)

    async def reboot(self, spec: ServerSpec) -> None:
        await asyncio.to_thread(self.stop_sync, spec.name)
        await asyncio.to_thread(self.start_sync, spec.name, spec.vcpus)

    async def pause(self, spec: ServerSpec) -> None:
        await asyncio.to_thread(self.freeze_sync, spec.name, True)

    async def unpause(self, spec: ServerSpec) -> None:
        await asyncio.to_thread(self.freeze_sync, spec.name, False)

    async def delete(self, spec: ServerSpec) -> None:
        await asyncio.to_thread(self.delete_sync, spec.name, spec.instance)

    async def attach(self, spec: ServerSpec, channel_dir: Path) -> None:
        await asyncio.to_thread(self.attach_sync, spec.name, spec.instance, channel_dir)

    async def detach(self, spec: ServerSpec, channel_dir: Path) -> None:
        await asyncio.to_thread(self.detach_sync, spec.name, spec.instance, channel_dir)

    async def observe(self, spec: ServerSpec) -> Observed:
        return await asyncio.to_thread(self.observe_sync, spec.name, spec.instance)

    async def receive(self, spec: ServerSpec, channel_dir: Path) -> str:
        raise DriverError("lab servers move by their channel: they are not copied")

    async def migrate(self, spec: ServerSpec, uri: str) -> None:
        raise DriverError("lab servers move by their channel: they are not copied")

    def exec_command(self, spec: ServerSpec, argv: Sequence[str]) -> list[str]:
        """`sh` joining the server's cgroups, then `ip netns exec sgs-<name> argv...`.

        DriverError when the server does not exist on this machine.
        """
        if not (_netns_usable(self.netns(spec.name)) and self.cgroups.exists(spec.name)):
            raise DriverError(f"lab server {spec.name} does not exist on this machine")
        return [
            "sh",
            "-c",
            _ENTER,
            self.netns(spec.name),
            *self._join_files(spec.name),
            "--",
            *argv,
        ]

    async def close(self) -> None:
        """Nothing to let go: a lab server's processes are the kernel's."""

    async def vcpu_threads(self, spec: ServerSpec) -> tuple[VcpuThread, ...]:
        return await asyncio.to_thread(self.vcpu_threads_sync, spec)

    async def pin_vcpu(self, spec: ServerSpec, vcpu: int, cpus: Sequence[int]) -> VcpuThread:
        return await asyncio.to_thread(self.pin_vcpu_sync, spec, vcpu, tuple(cpus))

    # -- blocking implementation -------------------------------------------------------

    def create_sync(self, name: str) -> None:
        sock = self.socket_path(name)
        if len(str(sock).encode()) > MAX_SOCKET_PATH:
            raise DriverError(
                f"the channel socket path {sock} is longer than {MAX_SOCKET_PATH} bytes; "
                "use a shorter state directory"
            )
        cgroups = self.cgroups
        self.server_dir(name).mkdir(parents=True, exist_ok=True)
        netns = self.netns(name)
        if not _netns_usable(netns):
            if (NETNS_DIR / netns).exists():  # a file left by a process killed mid-create
                _run(["ip", "netns", "delete", netns])
            _run(["ip", "netns", "add", netns])  # a new namespace: only lo, and it is down
        _raise_dgram_qlen(netns)
        try:
            cgroups.create(name)
        except OSError as exc:
            raise DriverError(
                f"cannot create cgroup {cgroups.path(name)}: {exc.strerror}"
            ) from None
        self._ensure_cpuset(name)

    def _check_created(self, name: str) -> None:
        if not (_netns_usable(self.netns(name)) and self.cgroups.exists(name)):
            raise DriverError(f"lab server {name} does not exist on this machine")

    def guest_pid(self, name: str) -> int | None:
        """The PID of the server's running guest agent, found by PID file or by its cgroup.

        A PID counts only if that process is in the server's cgroup and its
        command line names the server's channel socket: a recycled PID is never
        taken for ours.
        """
        procs = self.cgroups.procs(name)
        if not procs:
            return None
        sock = str(self.socket_path(name))
        candidates = list(procs)
        with contextlib.suppress(OSError, ValueError):
            recorded = int((self.server_dir(name) / PID_NAME).read_text().split()[0])
            candidates.insert(0, recorded)
        for pid in candidates:
            if pid in procs and sock in (command_line(pid) or ()):
                return pid
        return None

    def sysfs_root(self, name: str) -> Path:
        """The sysfs root of the server's own CPU tree (made by its scale agent at start)."""
        return self.server_dir(name) / SYSROOT_NAME

    def start_sync(self, name: str, vcpus: int = 1) -> None:
        """Start the server's guest agent (a boot: its CPU tree is made afresh, `vcpus` CPUs)."""
        self._check_created(name)
        cgroups = self.cgroups
        if cgroups.wants_frozen(name):
            # A guest started into a frozen cgroup would freeze before it listens.
            self.freeze_sync(name, False)
        running = self.guest_pid(name)
        if running is not None:
            self._wait_listening(name, running)
            return
        sock = self.socket_path(name)
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()  # left by an agent that was killed
        pidfile = self.server_dir(name) / PID_NAME
        with contextlib.suppress(FileNotFoundError):
            pidfile.unlink()
        self._ensure_cpuset(name)  # a server created by a version without cpusets
        argv = [str(a) for a in self._guest_argv(sock, vcpus)]
        with open(self.log_path(name), "ab") as out:
            launch = [_ENTER, str(pidfile), self.netns(name), *self._join_files(name), "--"]
            launcher = subprocess.Popen(
                ["sh", "-c", _LAUNCH, "sh", *launch, *argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd="/",
                close_fds=True,
            )
            try:
                status = launcher.wait(timeout=TOOL_TIMEOUT)
            except subprocess.TimeoutExpired:
                launcher.kill()
                launcher.wait()
                raise DriverError(f"the launcher of lab server {name} hung") from None
        if status != 0:
            raise DriverError(f"cannot start the guest agent of {name}: {self._last_log(name)}")
        try:
            launched = int(pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            raise DriverError(f"the launcher of lab server {name} wrote no PID") from None
        log.info("lab server %s: guest agent started (pid %d)", name, launched)
        self._wait_listening(name, launched)

    def _wait_listening(self, name: str, launched: int | None = None) -> None:
        sock = self.socket_path(name)
        deadline = time.monotonic() + self.start_timeout
        while True:
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISSOCK(sock.stat().st_mode) and self.guest_pid(name) is not None:
                    return
            if time.monotonic() > deadline:
                break
            # The launched shell may not have joined the cgroup yet: follow its PID.
            running = alive(launched) if launched is not None else bool(self.cgroups.procs(name))
            if not running:
                time.sleep(0.1)  # let the log catch the agent's last words
                raise DriverError(
                    f"the guest agent of {name} exited at start: {self._last_log(name)}"
                )
            time.sleep(POLL_INTERVAL)
        raise DriverError(
            f"the guest agent of {name} did not listen on {sock} within "
            f"{self.start_timeout:g} s: {self._last_log(name)}"
        )

    def _last_log(self, name: str) -> str:
        try:
            lines = self.log_path(name).read_text(errors="replace").strip().splitlines()
        except OSError:
            lines = []
        return lines[-1].strip() if lines else "no output (see its log)"

    def stop_sync(self, name: str) -> None:
        cgroups = self.cgroups
        if cgroups.exists(name):
            if cgroups.procs(name):
                self._end(name)
            if cgroups.wants_frozen(name):
                self.freeze_sync(name, False)
        with contextlib.suppress(FileNotFoundError):
            (self.server_dir(name) / PID_NAME).unlink()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path(name).unlink()

    def _end(self, name: str) -> None:
        cgroups = self.cgroups

        def thaw() -> None:
            if cgroups.wants_frozen(name):
                # Frozen processes act on a signal only once thawed.
                cgroups.set_frozen(name, False)

        try:
            stop_all(
                lambda: cgroups.procs(name),
                what=f"lab server {name}",
                term_timeout=self.stop_timeout,
                kill_timeout=self.kill_timeout,
                after_term=thaw,
            )
        except ProcessFailed as exc:
            raise DriverError(str(exc)) from None
        log.info("lab server %s: every process ended", name)

    def freeze_sync(self, name: str, frozen: bool) -> None:
        self._check_created(name)
        cgroups = self.cgroups
        cgroups.set_frozen(name, frozen)
        deadline = time.monotonic() + self.freeze_timeout
        while cgroups.frozen(name) is not frozen:
            if time.monotonic() > deadline:
                raise DriverError(
                    f"lab server {name} did not {'freeze' if frozen else 'thaw'} within "
                    f"{self.freeze_timeout:g} s"
                )
            time.sleep(POLL_INTERVAL)

    def delete_sync(self, name: str, instance: str) -> None:
        self.stop_sync(name)
        attached = self._attached_dir(name)
        if attached is not None:
            self.detach_sync(name, instance, attached)
        self.cgroups.remove(name)
        if self.cpusets is not None:
            self.cpusets.remove(name)
        netns = self.netns(name)
        if (NETNS_DIR / netns).exists():
            _run(["ip", "netns", "delete", netns])
        shutil.rmtree(self.server_dir(name), ignore_errors=True)
        log.info("lab server %s deleted", name)

    def _attached_dir(self, name: str) -> Path | None:
        try:
            text = (self.server_dir(name) / ATTACHED_NAME).read_text().strip()
        except OSError:
            return None
        return Path(text) if text else None

    def _is_our_link(self, link: Path, name: str) -> bool:
        try:
            return os.readlink(link) == str(self.socket_path(name))
        except OSError:
            return False

    def attach_sync(self, name: str, instance: str, channel_dir: Path) -> None:
        self._check_created(name)
        channel_dir = Path(os.path.abspath(channel_dir))
        previous = self._attached_dir(name)
        if previous is not None and previous != channel_dir:
            self.detach_sync(name, instance, previous)
        link = channel_dir / channel_name(instance)
        if not self._is_our_link(link, name):
            try:
                channel_dir.mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(FileNotFoundError):
                    if link.is_symlink():
                        link.unlink()  # a link of an earlier server of that instance name
                os.symlink(self.socket_path(name), link)
            except OSError as exc:
                raise DriverError(f"cannot make the channel link {link}: {exc.strerror}") from None
        (self.server_dir(name) / ATTACHED_NAME).write_text(f"{channel_dir}\n")

    def detach_sync(self, name: str, instance: str, channel_dir: Path) -> None:
        channel_dir = Path(os.path.abspath(channel_dir))
        link = channel_dir / channel_name(instance)
        if self._is_our_link(link, name):
            with contextlib.suppress(FileNotFoundError):
                link.unlink()
        if self._attached_dir(name) == channel_dir:
            with contextlib.suppress(FileNotFoundError):
                (self.server_dir(name) / ATTACHED_NAME).unlink()

    def observe_sync(self, name: str, instance: str) -> Observed:
        cgroups = self.cgroups
        pids = tuple(cgroups.procs(name))
        created = (
            _netns_usable(self.netns(name))
            and cgroups.exists(name)
            and self.server_dir(name).is_dir()
        )
        if not created:
            return Observed(power=Power.ABSENT, pids=pids)
        attached = self._attached_dir(name)
        if attached is not None and not self._is_our_link(attached / channel_name(instance), name):
            attached = None
        if not pids:
            power = Power.STOPPED
        elif cgroups.frozen(name) or cgroups.wants_frozen(name):
            power = Power.FROZEN
        else:
            power = Power.RUNNING
        return Observed(
            power=power, pids=pids, guest_pid=self.guest_pid(name), channel_dir=attached
        )

    # -- vCPUs (see "vCPUs" in the module docstring) ----------------------------------

    def _ensure_cpuset(self, name: str, *, required: bool = False) -> None:
        """Make the server's cpuset if missing, allowing its vCPUs' CPUs (no cpusets: nothing).

        Not `required`, a failure is logged: the server runs, without vCPU operations.
        """
        cpusets = self.cpusets
        if cpusets is None or cpusets.exists(name):
            return
        try:
            cpusets.create(name)
            cpusets.set_cpus(name, sorted(set().union(*self._affinities(name, cpusets, None))))
        except OSError as exc:
            why = f"cannot create cgroup {cpusets.path(name)}: {exc.strerror}"
            if required:
                raise DriverError(why) from None
            log.warning("lab server %s runs without vCPU operations: %s", name, why)

    def _affinities(self, name: str, cpusets: Cpusets, vcpus: int | None) -> list[tuple[int, ...]]:
        """Each vCPU's recorded affinity (every allowed CPU when unpinned), `vcpus` of them.

        `vcpus` None: as many as were recorded (at least one).
        """
        allowed = cpusets.allowed()
        try:
            recorded = json.loads((self.server_dir(name) / VCPUS_NAME).read_text())
        except (OSError, ValueError):
            recorded = []
        if not isinstance(recorded, list):
            recorded = []
        count = vcpus if vcpus is not None else max(1, len(recorded))
        found = []
        for index in range(count):
            entry = recorded[index] if index < len(recorded) else None
            cpus = tuple(
                sorted(c for c in entry if isinstance(c, int) and c in allowed)
                if isinstance(entry, list)
                else ()
            )
            found.append(cpus or allowed)  # a CPU gone from the machine falls back to all
        return found

    def _running_cpuset(self, spec: ServerSpec) -> Cpusets:
        """The server's cpuset, every process of the server in it; DriverError when not running."""
        name = spec.name
        cpusets = self.cpusets
        if cpusets is None:
            raise DriverError(
                "this machine has no cpuset cgroup controller: lab servers have no vCPU operations"
            )
        pids = self.cgroups.procs(name)
        if not pids:
            raise DriverError(f"lab server {name} is not running")
        self._ensure_cpuset(name, required=True)
        if cpusets.procs_file(name) != self.cgroups.procs_file(name):
            # Processes that joined before the server had a cpuset (an older version).
            inside = set(cpusets.threads(name))
            for pid in pids:
                if pid not in inside:
                    with contextlib.suppress(ProcessLookupError):
                        cpusets.procs_file(name).write_text(str(pid))
        return cpusets

    def vcpu_threads_sync(self, spec: ServerSpec) -> tuple[VcpuThread, ...]:
        cpusets = self._running_cpuset(spec)
        threads = cpusets.threads(spec.name)
        return tuple(
            VcpuThread(index=index, thread_ids=threads, affinity=affinity)
            for index, affinity in enumerate(self._affinities(spec.name, cpusets, spec.vcpus))
        )

    def pin_vcpu_sync(self, spec: ServerSpec, vcpu: int, cpus: Sequence[int]) -> VcpuThread:
        name = spec.name
        if not 0 <= vcpu < spec.vcpus:
            raise DriverError(f"lab server {name} has no vCPU {vcpu} (it has {spec.vcpus})")
        cpusets = self._running_cpuset(spec)
        allowed = cpusets.allowed()
        wanted = tuple(sorted(set(cpus)))
        if not wanted or not set(wanted) <= set(allowed):
            raise DriverError(
                f"cannot pin vCPU {vcpu} of {name} to CPU(s) {format_cpus(wanted) or '(none)'}: "
                f"this machine's servers may use CPU(s) {format_cpus(allowed)}"
            )
        affinities = self._affinities(name, cpusets, spec.vcpus)
        affinities[vcpu] = wanted
        record = self.server_dir(name) / VCPUS_NAME
        try:
            partial = record.with_suffix(".tmp")
            partial.write_text(json.dumps([list(a) for a in affinities]) + "\n")
            partial.replace(record)
            cpusets.set_cpus(name, sorted(set().union(*affinities)))
        except OSError as exc:
            raise DriverError(f"cannot pin vCPU {vcpu} of {name}: {exc.strerror}") from None
        log.info("lab server %s: vCPU %d may run on CPU(s) %s", name, vcpu, format_cpus(wanted))
        return VcpuThread(index=vcpu, thread_ids=cpusets.threads(name), affinity=wanted)


__all__ = [
    "NETNS_PREFIX",
    "SYSROOT_NAME",
    "Cgroups",
    "Cpusets",
    "LabDriver",
    "default_guest_argv",
    "detect_cgroups",
    "detect_cpusets",
    "format_cpus",
    "parse_cpus",
]
