"""Which lab servers run on a lab host, so that `lab crash` and `lab freeze` hit them too.

A lab server is a namespace and a freezer cgroup of its own (see
`servers.drivers.lab`); it runs on the host whose channel directory holds
its channel link (moving that link is a live migration). A lab host's
channel directories are those of the host daemons running in its namespace
(`servergroup ... host --channel-dir DIR`). So the satellites of a host are:
for each host daemon among the host's processes, each channel link in its
directory that points at a lab server's `channel.sock`, checked against that
server's own record of where it is attached.

Only the lab server's cgroup is returned: its processes are found there at
the moment of the fault. QEMU needs nothing here: it runs in the host's
namespace.

`fault_lab(name, state_dir=...)` is the `Lab` that tests, benchmarks and
`servergroup lab` use for faults.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import psutil

from servergroup.daemons.host import DEFAULT_CHANNEL_DIR
from servergroup.lab import Lab, LabHost
from servergroup.lab.faults import Satellite
from servergroup.servers.drivers.base import DriverError
from servergroup.servers.drivers.lab import ATTACHED_NAME, SERVERS_DIR, SOCKET_NAME, LabDriver

log = logging.getLogger(__name__)

#: Channel links are named `cgcs.messaging.<instance>.sock` (libvirt's layout).
CHANNEL_GLOB = "cgcs.messaging.*.sock"


def channel_dir_of(pid: int) -> Path | None:
    """The channel directory of host daemon `pid`; None if `pid` is no host daemon."""
    try:
        process = psutil.Process(pid)
        argv = process.cmdline()
        cwd = process.cwd()
    except psutil.Error:
        return None
    words = [os.path.basename(w) for w in argv]
    try:
        # `servergroup host ...` or `python -m servergroup [options] host ...`
        start = next(i for i, w in enumerate(words) if w == "servergroup")
        command = argv.index("host", start + 1)
    except (StopIteration, ValueError):
        return None
    directory: str | None = None
    options = argv[command + 1 :]
    for i, word in enumerate(options):
        if word == "--channel-dir" and i + 1 < len(options):
            directory = options[i + 1]
        elif word.startswith("--channel-dir="):
            directory = word.partition("=")[2]
    path = Path(directory) if directory is not None else DEFAULT_CHANNEL_DIR
    return Path(os.path.normpath(Path(cwd) / path))


def lab_servers_in(channel_dir: Path) -> list[Satellite]:
    """The lab servers attached to `channel_dir`, as satellites (their cgroups)."""
    found: list[Satellite] = []
    drivers: dict[Path, LabDriver] = {}
    for link in sorted(channel_dir.glob(CHANNEL_GLOB)):
        try:
            target = Path(os.readlink(link))
        except OSError:
            continue  # a QEMU's socket, not a link
        server_dir = target.parent
        if target.name != SOCKET_NAME or server_dir.parent.name != SERVERS_DIR:
            continue
        try:
            attached = (server_dir / ATTACHED_NAME).read_text().strip()
        except OSError:
            continue
        if Path(attached) != channel_dir:
            continue  # a link left behind by a move
        state_dir = server_dir.parent.parent
        driver = drivers.setdefault(state_dir, LabDriver(state_dir))
        try:
            cgroup = driver.cgroups.path(server_dir.name)
        except DriverError as exc:
            log.warning("cannot find the cgroup of lab server %s: %s", server_dir.name, exc)
            continue
        found.append(Satellite(name=f"lab server {server_dir.name}", cgroup=cgroup))
    return found


def lab_servers_of(host: LabHost, pids: Sequence[int]) -> list[Satellite]:
    """A `SatelliteFinder`: the lab servers of the host daemons among `pids`."""
    directories = {d for d in map(channel_dir_of, pids) if d is not None}
    found: list[Satellite] = []
    for directory in sorted(directories):
        found += [s for s in lab_servers_in(directory) if s not in found]
    return found


def fault_lab(name: str, *, state_dir: Path | None = None) -> Lab:
    """The lab `name`, whose faults also hit the lab servers running on its hosts."""
    return Lab(name, state_dir=state_dir, satellites=lab_servers_of)


__all__ = ["channel_dir_of", "fault_lab", "lab_servers_in", "lab_servers_of"]
