"""No lost update, no broken placement policy, under concurrent operators (issue 11, part 1).

8 clients issue 300 random lifecycle operations in total on 12 server names
(6 in an affinity group, 6 in an anti-affinity group) over 6 in-process hosts
with real lab servers: once on the memory store (8 asyncio clients, each over
its own `MemoryCoordinator`), once on the shared real etcd (8 client
processes, each over its own `EtcdCoordinator`). Then every change under the
test's prefix since the start is read back (a watch from the start revision)
and checked by `workload.check_history`: each success is reflected in the
history, reboot counts equal the reboots written, no deleted server comes
back, and no group's policy is broken at any revision.

The seed is printed; set SERVERGROUP_TEST_SEED to run with a given one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import subprocess
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from servergroup.common.errors import ServergroupError
from servergroup.config import CoordinationConfig
from servergroup.coordination import (
    Coordinator,
    EtcdCluster,
    EtcdCoordinator,
    Guard,
    MemoryCoordinator,
    MemoryStore,
    WatchEvent,
)
from servergroup.servers.drivers.lab import LabDriver
from servergroup.servers.manager import ServerManager
from servergroup.servers.model import HostRecord, Policy, ServerSpec
from servergroup.servers.operations import OperationError, Operations
from servergroup.servers.registry import Registry, RegistryCache, host_key
from tests.integration.servers.conftest import NameFactory
from tests.integration.servers.workload import (
    Layout,
    OpRecord,
    RecordingRegistry,
    check_history,
    client_argv,
    read_history,
    run_client,
    split,
    store_revision,
    summarize,
    summary_text,
    two_groups,
)

pytestmark = [pytest.mark.root, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[3]
HOSTS = ("h1", "h2", "h3", "h4", "h5", "h6")
SERVERS = 12
CLIENTS = 8
OPERATIONS = 300
#: Each operation's own bound; a healthy run ends every one far sooner.
OP_TIMEOUT = 30.0
LEASE_TTL = 10
START_TIMEOUT = 60.0
RUN_TIMEOUT = 200.0
#: At most this long between two operations of one client: servers get built
#: between requests, so more of them succeed and the histories hold more moves.
THINK = 0.3
CONFIG = CoordinationConfig()


@pytest.fixture
def seed() -> int:
    value = os.environ.get("SERVERGROUP_TEST_SEED")
    return int(value) if value else random.randrange(1_000_000)


@dataclass
class InProcessHost:
    """A host as the daemon runs one: registration on a kept-alive lease, cache, manager."""

    name: str
    coordinator: Coordinator
    cache: RegistryCache
    manager: ServerManager
    keep_alive: asyncio.Task[None]


async def _keep_alive(coordinator: Coordinator, lease: int) -> None:
    while True:
        await asyncio.sleep(LEASE_TTL / 4)
        await coordinator.keep_alive(lease)


def _fixed(guard: Guard) -> Callable[[], Guard | None]:
    """The fence of a host whose registration lives as long as the test."""
    return lambda: guard


@contextlib.asynccontextmanager
async def running_hosts(
    make: Callable[[], Coordinator], names: Sequence[str], state_dir: Path, channels: Path
) -> AsyncIterator[list[InProcessHost]]:
    """In-process hosts with lab drivers, writing fenced by their registration."""
    made: list[InProcessHost] = []
    try:
        for name in names:
            coordinator = make()
            cache = RegistryCache(coordinator)
            await cache.start()
            lease = await coordinator.grant(LEASE_TTL)
            channel_dir = channels / name
            channel_dir.mkdir(parents=True)
            record = HostRecord(
                name=name, channel_dir=str(channel_dir), pid=os.getpid(), started_at="now"
            )
            registry = Registry(coordinator)
            await registry.register_host(record, lease=lease.id)
            registered = await coordinator.get(host_key(name))
            assert registered is not None
            guard = Guard(key=host_key(name), create_revision=registered.create_revision)
            manager = ServerManager(
                registry=registry,
                cache=cache,
                drivers=[LabDriver(state_dir)],
                host=name,
                channel_dir=channel_dir,
                check_interval=1.0,
                retry_interval=1.0,
                fence=_fixed(guard),
            )
            await manager.start()
            task = asyncio.create_task(_keep_alive(coordinator, lease.id))
            made.append(InProcessHost(name, coordinator, cache, manager, task))
        yield made
    finally:
        if made:
            await delete_everything(made[0].coordinator)
        for host in made:
            host.keep_alive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await host.keep_alive
            await host.manager.stop()
            await host.cache.stop()


async def delete_everything(coordinator: Coordinator) -> None:
    """Delete every server through its host (so that no lab process outlives the test)."""
    ops = Operations(Registry(coordinator), timeout=OP_TIMEOUT)
    for server in await ops.list_servers():
        try:
            await ops.delete(server.name)
        except ServergroupError as exc:
            print(f"cleaning up: {exc}")


async def set_up_groups(coordinator: Coordinator, layout: Layout) -> int:
    """Create the groups; return the store revision from which the history is checked."""
    ops = Operations(Registry(coordinator))
    for group, policy in layout.groups.items():
        await ops.create_group(group, policy)
    assert not await ops.list_servers()
    return await store_revision(coordinator)


def verdict(
    backend: str,
    seed: int,
    layout: Layout,
    events: list[WatchEvent],
    records: list[OpRecord],
    keep: Path,
) -> None:
    """Print the summary; fail with every problem the history shows.

    The history and the operations are kept in `keep` (history.jsonl,
    operations.jsonl) to look into a failure.
    """
    with (keep / "history.jsonl").open("w") as out:
        for e in events:
            out.write(
                json.dumps(
                    {
                        "revision": e.revision,
                        "kind": e.kind.value,
                        "key": e.key,
                        "value": e.value.decode(errors="replace"),
                    }
                )
                + "\n"
            )
    with (keep / "operations.jsonl").open("w") as out:
        for r in sorted(records, key=lambda r: r.began_at):
            out.write(r.to_json() + "\n")
    assert len(records) == OPERATIONS, f"{len(records)} operations recorded, not {OPERATIONS}"
    problems, replayed = check_history(layout, events, records)
    text = f"{backend}, seed {seed}: {replayed.revisions} revisions replayed\n" + summary_text(
        summarize(records, layout)
    )
    print("\n" + text)
    shown = "\n".join(problems[:30])
    assert not problems, f"{len(problems)} problem(s) (details in {keep}):\n{shown}\n{text}"


async def test_concurrent_operations_on_the_memory_store(
    server_names: NameFactory, server_state_dir: Path, tmp_path: Path, seed: int
) -> None:
    store = MemoryStore()
    made: list[MemoryCoordinator] = []

    def make() -> Coordinator:
        made.append(MemoryCoordinator(store, prefix="/sgtest/concurrent/"))
        return made[-1]

    layout = two_groups([server_names() for _ in range(SERVERS)], HOSTS)
    records: list[OpRecord] = []
    try:
        async with running_hosts(make, HOSTS, server_state_dir, tmp_path / "channels"):
            admin = make()
            start = await set_up_groups(admin, layout)
            async with asyncio.timeout(RUN_TIMEOUT):
                await asyncio.gather(
                    *(
                        run_client(
                            client=i,
                            registry=RecordingRegistry(make()),
                            layout=layout,
                            count=count,
                            seed=seed * 100 + i,
                            timeout=OP_TIMEOUT,
                            emit=records.append,
                            think=THINK,
                        )
                        for i, count in enumerate(split(OPERATIONS, CLIENTS))
                    )
                )
            events = await read_history(admin, start, await store_revision(admin))
    finally:
        for c in made:
            await c.close()
        await store.close()
    verdict("memory store", seed, layout, events, records, tmp_path)


async def test_concurrent_operations_on_etcd_with_client_processes(
    etcd_server: EtcdCluster,
    etcd_prefix: str,
    server_names: NameFactory,
    server_state_dir: Path,
    tmp_path: Path,
    seed: int,
) -> None:
    made: list[EtcdCoordinator] = []

    def make() -> Coordinator:
        made.append(EtcdCoordinator(etcd_server.endpoints, prefix=etcd_prefix, config=CONFIG))
        return made[-1]

    layout = two_groups([server_names() for _ in range(SERVERS)], HOSTS)
    endpoints = ",".join(str(e) for e in etcd_server.endpoints)
    procs: list[asyncio.subprocess.Process] = []
    try:
        async with running_hosts(make, HOSTS, server_state_dir, tmp_path / "channels"):
            admin = make()
            start = await set_up_groups(admin, layout)
            for i, count in enumerate(split(OPERATIONS, CLIENTS)):
                procs.append(
                    await asyncio.create_subprocess_exec(
                        *client_argv(
                            endpoints=endpoints,
                            prefix=etcd_prefix,
                            layout=layout,
                            client=i,
                            count=count,
                            seed=seed * 100 + i,
                            timeout=OP_TIMEOUT,
                            think=THINK,
                            out=tmp_path / f"client{i}.jsonl",
                        ),
                        cwd=ROOT,
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        stderr=(tmp_path / f"client{i}.err").open("wb"),
                    )
                )
            async with asyncio.timeout(START_TIMEOUT):
                for proc in procs:
                    assert proc.stdout is not None
                    line = await proc.stdout.readline()
                    assert line == b"ready\n", f"a client did not start: {line!r}"
            for proc in procs:  # all at once: they were all waiting
                assert proc.stdin is not None
                proc.stdin.write(b"go\n")
                await proc.stdin.drain()
            async with asyncio.timeout(RUN_TIMEOUT):
                codes = [await proc.wait() for proc in procs]
            errors = {i: (tmp_path / f"client{i}.err").read_text() for i in range(len(procs))}
            assert codes == [0] * len(procs), f"clients exited with {codes}: {errors}"
            bugs = {i: e for i, e in errors.items() if "BUG" in e or "Traceback" in e}
            assert not bugs, f"clients logged errors: {bugs}"
            events = await read_history(admin, start, await store_revision(admin))
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        if made:
            await made[0].delete_prefix("")
        for c in made:
            await c.close()
    records = [
        OpRecord.from_json(line)
        for i in range(CLIENTS)
        for line in (tmp_path / f"client{i}.jsonl").read_text().splitlines()
    ]
    verdict("etcd, client processes", seed, layout, events, records, tmp_path)


async def test_a_server_is_not_moved_before_its_host_has_built_it() -> None:
    """A move asked before the first status would have two hosts build one server at once."""
    store = MemoryStore()
    coordinator = MemoryCoordinator(store, prefix="/sgtest/not-built/")
    try:
        registry = Registry(coordinator)
        lease = await coordinator.grant(LEASE_TTL)
        for name in ("h1", "h2"):
            record = HostRecord(name=name, channel_dir="/nowhere", pid=1, started_at="now")
            await registry.register_host(record, lease=lease.id)
        ops = Operations(registry, timeout=1)
        await ops.create_group("g", Policy.ANTI_AFFINITY)
        spec = ServerSpec(name="s1", instance="instance-00000001", uuid="u1", group="g", host="h1")
        await registry.create_server(spec)
        with pytest.raises(OperationError, match="still being built on h1: wait for it"):
            await ops.migrate("s1", "h2")
        assert (await registry.require_server("s1")).spec == spec
    finally:
        await coordinator.close()
        await store.close()
