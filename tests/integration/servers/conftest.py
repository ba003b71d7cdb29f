"""Fixtures for servers: registries over memory and real etcd, and lab servers cleaned up always.

- `make_coordinator`: clients of one store, per backend (memory, etcd), as in
  tests/integration/coordination (a prefix of the test's own on the shared etcd).
- `lab_state_dir`-independent `server_state_dir`: a short directory (the
  channel socket path must fit in 108 bytes), removed after the test.
- `lab_driver`: a `LabDriver` on it; `server_names()` gives unique names and
  every server of those names is deleted at teardown, pass or fail
  (processes, cgroup, namespace, files).
- A log record with the BUG marker fails the test (in-process managers).
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from servergroup.common.errors import ServergroupError
from servergroup.common.logsetup import BUG_MARKER
from servergroup.config import CoordinationConfig
from servergroup.coordination import Coordinator, EtcdCoordinator, MemoryCoordinator, MemoryStore
from servergroup.servers.drivers.lab import NETNS_DIR, Cgroups, LabDriver, detect_cgroups

CONFIG = CoordinationConfig()

CoordinatorFactory = Callable[[], Coordinator]
NameFactory = Callable[[], str]


@pytest.fixture(autouse=True)
def no_bug_lines(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.INFO)
    yield
    bugs = [r.getMessage() for r in caplog.records if BUG_MARKER in r.getMessage()]
    assert not bugs, f"BUG lines logged: {bugs}"


@pytest.fixture(params=["memory", "etcd"])
async def make_coordinator(request: pytest.FixtureRequest) -> AsyncIterator[CoordinatorFactory]:
    """A factory of clients of one store (several clients share it), per backend."""
    made: list[Any] = []
    if request.param == "memory":
        store = MemoryStore()
        prefix = f"/sgtest/memory-{secrets.token_hex(3)}/"

        def make() -> Coordinator:
            c = MemoryCoordinator(store, prefix=prefix)
            made.append(c)
            return c

        yield make
        for c in made:
            await c.close()
        await store.close()
    else:
        server = request.getfixturevalue("etcd_server")
        prefix = request.getfixturevalue("etcd_prefix")

        def make() -> Coordinator:
            c = EtcdCoordinator(server.endpoints, prefix=prefix, config=CONFIG)
            made.append(c)
            return c

        yield make
        if made:
            await made[0].delete_prefix("")
        for c in made:
            await c.close()


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
        for cgroups in all_freezers():
            try:
                if cgroups.exists(name):
                    LabDriver(Path(tempfile.gettempdir()), cgroups=cgroups).stop_sync(name)
                    cgroups.remove(name)
            except (ServergroupError, OSError) as exc:
                failures.append(f"{name}: {exc}")
        netns = LabDriver.netns(name)
        if (NETNS_DIR / netns).exists():
            subprocess.run(["ip", "netns", "delete", netns], check=False)
    if failures:
        pytest.fail("could not clean up lab servers: " + "; ".join(failures))


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
