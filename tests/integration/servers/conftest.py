"""Fixtures for servers: registries over memory and real etcd, and lab servers cleaned up always.

- `make_coordinator` (tests/fixtures/coordinators.py): clients of one store,
  per backend (memory, etcd).
- `lab_state_dir`-independent `server_state_dir`: a short directory (the
  channel socket path must fit in 108 bytes), removed after the test.
- `lab_driver`: a `LabDriver` on it; `server_names()` gives unique names and
  every server of those names is deleted at teardown, pass or fail
  (processes, cgroup, namespace, files).
- `hosts(name, driver=None)`: an in-process host on the shared etcd (its own
  client, cache, host record on a lease, channel directory, `ServerManager`);
  `ops`: `Operations` on another client of that store.
- A log record with the BUG marker fails the test (in-process managers).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from servergroup.common.errors import ServergroupError
from servergroup.common.logsetup import BUG_MARKER
from servergroup.common.process import process_state
from servergroup.config import CoordinationConfig
from servergroup.coordination import (
    EtcdCluster,
    EtcdCoordinator,
)
from servergroup.servers.drivers.base import channel_name
from servergroup.servers.drivers.lab import (
    CGROUP_PARENT,
    NETNS_DIR,
    NETNS_PREFIX,
    Cgroups,
    LabDriver,
    detect_cgroups,
    detect_cpusets,
)
from servergroup.servers.manager import ServerManager
from servergroup.servers.model import HostRecord, Server
from servergroup.servers.operations import Operations
from servergroup.servers.registry import Registry, RegistryCache

CONFIG = CoordinationConfig()

NameFactory = Callable[[], str]


@pytest.fixture(autouse=True)
def no_bug_lines(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.INFO)
    yield
    bugs = [r.getMessage() for r in caplog.records if BUG_MARKER in r.getMessage()]
    assert not bugs, f"BUG lines logged: {bugs}"


@pytest.fixture
def server_state_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="sgs", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def server_names() -> Iterator[NameFactory]:
    """Unique server names (`t` + 8 hex digits); their lab servers are removed at teardown."""
    names: list[str] = []

    def new() -> str:
        name = f"t{secrets.token_hex(4)}"
        names.append(name)
        return name

    yield new
    failures = []
    for name in names:
        # Whatever driver (scope) made it: cgroups servergroup/<scope>/<name>,
        # namespaces sgs-<scope>-<name>.
        for cgroups in all_freezers():
            for path in sorted((cgroups.root / CGROUP_PARENT).glob(f"*/{name}")):
                scoped = replace(cgroups, scope=path.parent.name)
                try:
                    _kill_all(scoped.procs(name))
                    scoped.remove(name)
                except (ServergroupError, OSError) as exc:
                    failures.append(f"{name}: {exc}")
        cpusets = detect_cpusets()
        if cpusets is not None:  # empty once the freezer's processes are gone
            for path in sorted((cpusets.root / CGROUP_PARENT).glob(f"*/{name}")):
                try:
                    replace(cpusets, scope=path.parent.name).remove(name)
                except ServergroupError as exc:
                    failures.append(f"{name}: {exc}")
        for netns in sorted(NETNS_DIR.glob(f"{NETNS_PREFIX}*-{name}")):
            subprocess.run(["ip", "netns", "delete", netns.name], check=False)
    if failures:
        pytest.fail("could not clean up lab servers: " + "; ".join(failures))


def _kill_all(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 3.0
    while any(process_state(p) not in (None, "Z") for p in pids) and time.monotonic() < deadline:
        time.sleep(0.02)


def all_freezers() -> list[Cgroups]:
    """The detected freezer, and every cgroup v2 hierarchy (tests use both)."""
    found = [detect_cgroups()]
    found += [Cgroups(root, 2) for root in _v2_roots() if root != found[0].root]
    return found


def _v2_roots() -> list[Path]:
    roots = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        before, _, after = line.partition(" - ")
        if after.split()[:1] == ["cgroup2"]:
            roots.append(Path(before.split()[4]))
    return roots


@pytest.fixture
def driver(server_state_dir: Path) -> LabDriver:
    if os.geteuid() != 0:
        pytest.fail("lab server tests need root")
    return LabDriver(server_state_dir)


@dataclass
class Host:
    name: str
    channel_dir: Path
    driver: LabDriver
    coordinator: EtcdCoordinator
    cache: RegistryCache
    lease: int
    manager: ServerManager | None = None

    async def start_manager(self) -> ServerManager:
        self.manager = ServerManager(
            registry=Registry(self.coordinator),
            cache=self.cache,
            drivers=[self.driver],
            host=self.name,
            channel_dir=self.channel_dir,
            check_interval=0.3,
        )
        await self.manager.start()
        return self.manager

    async def stop_manager(self) -> None:
        if self.manager is not None:
            await self.manager.stop()
            self.manager = None

    def link(self, server: Server) -> Path:
        return self.channel_dir / channel_name(server.spec.instance)


HostFactory = Callable[..., Awaitable[Host]]


@pytest.fixture
async def hosts(
    etcd_server: EtcdCluster, etcd_prefix: str, server_state_dir: Path, tmp_path: Path
) -> AsyncIterator[HostFactory]:
    made: list[Host] = []

    async def make(name: str, driver: LabDriver | None = None) -> Host:
        coordinator = EtcdCoordinator(etcd_server.endpoints, prefix=etcd_prefix, config=CONFIG)
        cache = RegistryCache(coordinator)
        await cache.start()
        lease = await coordinator.grant(60)
        channel_dir = tmp_path / name / "channels"
        channel_dir.mkdir(parents=True)
        record = HostRecord(
            name=name, channel_dir=str(channel_dir), pid=os.getpid(), started_at="now"
        )
        await Registry(coordinator).register_host(record, lease=lease.id)
        host = Host(
            name=name,
            channel_dir=channel_dir,
            driver=driver or LabDriver(server_state_dir),
            coordinator=coordinator,
            cache=cache,
            lease=lease.id,
        )
        made.append(host)
        await host.start_manager()
        return host

    yield make
    for host in made:
        await host.stop_manager()
        await host.cache.stop()
    if made:
        await made[0].coordinator.delete_prefix("")
    for host in made:
        await host.coordinator.close()


@pytest.fixture
async def ops(etcd_server: EtcdCluster, etcd_prefix: str) -> AsyncIterator[Operations]:
    async with EtcdCoordinator(etcd_server.endpoints, prefix=etcd_prefix, config=CONFIG) as c:
        yield Operations(Registry(c), timeout=30)
