"""The host daemon as a list of components, run in this process against a real etcd.

`HostDaemon` builds its components from the configuration, starts them in
order and stops them in reverse, one log line each; `health()` is the view
the HTTP API will serve, and SIGUSR1 logs it. A capability that runs on a
host is one more factory: the test adds one and sees it built after (and
with access to) those before it, started last and stopped first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from servergroup.common.component import Component, ComponentHealth, HealthState
from servergroup.config import ApiConfig, Config, CoordinationConfig
from servergroup.coordination import EtcdCoordinator
from servergroup.coordination.etcd_process import EtcdCluster
from servergroup.daemons.host import (
    COMPONENTS,
    Built,
    ComponentFactory,
    HostDaemon,
    HostNameTaken,
    HostOptions,
    HostShared,
    build_components,
)
from servergroup.groups.service import GroupService
from servergroup.servers.model import DriverKind, HostRecord, decode_host, encode_record
from servergroup.servers.registry import HOSTS, REGISTRY, host_key

WAIT = 15.0
LOGGER = "servergroup.daemons.host"


@dataclass
class Probe:
    """A component of the test's own: records what it was given and when it ran."""

    service: GroupService
    events: list[str] = field(default_factory=list)
    name: str = "probe"

    async def start(self) -> None:
        self.events.append("start")

    async def stop(self) -> None:
        self.events.append("stop")

    def health(self) -> ComponentHealth:
        running = self.events[-1:] == ["start"]
        return ComponentHealth(
            state=HealthState.HEALTHY if running else HealthState.STOPPED,
            sentence="probing" if running else "not probing",
        )


@dataclass
class Running:
    daemon: HostDaemon
    task: asyncio.Task[None]
    coordinator: EtcdCoordinator  # the test's own client, same prefix


def options(tmp_path: Path, drivers: tuple[DriverKind, ...]) -> HostOptions:
    return HostOptions(
        name=f"t{secrets.token_hex(3)}",
        channel_dir=tmp_path / "channels",
        address=f"sgt{secrets.token_hex(5)}",
        drivers=drivers,
    )


@contextlib.asynccontextmanager
async def running(
    etcd: EtcdCluster,
    prefix: str,
    tmp_path: Path,
    *,
    drivers: tuple[DriverKind, ...] = (DriverKind.LAB,),
    factories: dict[str, ComponentFactory] | None = None,
) -> AsyncIterator[Running]:
    coordination = CoordinationConfig(endpoints=etcd.endpoints, prefix=prefix)
    # The API on a port the kernel chooses: 8470 may be another daemon's on this machine.
    config = Config(state_dir=tmp_path / "state", coordination=coordination, api=ApiConfig(port=0))
    daemon = HostDaemon(
        config,
        options(tmp_path, drivers),
        endpoints=etcd.endpoints,
        factories=factories,
    )
    ready = asyncio.Event()
    task = asyncio.create_task(daemon.run(ready.set))
    coordinator = EtcdCoordinator(etcd.endpoints, prefix=prefix, config=coordination)
    try:
        async with asyncio.timeout(WAIT):
            done, _ = await asyncio.wait(
                {task, asyncio.ensure_future(ready.wait())}, return_when=asyncio.FIRST_COMPLETED
            )
        if task in done:
            task.result()  # raises what made it exit
            pytest.fail("the host daemon returned before it was ready")
        yield Running(daemon=daemon, task=task, coordinator=coordinator)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        with contextlib.suppress(Exception):
            await coordinator.delete_prefix("")
        await coordinator.close()


def lines(caplog: pytest.LogCaptureFixture, pattern: str) -> list[str]:
    """The component names in the host daemon's log lines matching `pattern` (one group)."""
    out = []
    for record in caplog.records:
        if record.name == LOGGER:
            m = re.search(pattern, record.getMessage())
            if m:
                out.append(m.group(1))
    return out


async def test_components_start_in_order_and_stop_in_reverse(
    etcd_server: EtcdCluster, etcd_prefix: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    async with running(
        etcd_server, etcd_prefix, tmp_path, drivers=(DriverKind.LAB, DriverKind.QEMU)
    ) as run:
        names = [c.name for c in run.daemon.components]
        assert names == [
            "exec brokers",
            "relay",
            "groups",
            "servers",
            "evacuator",
            "scaler",
            "autoscaler",
            "services",
            "api",
        ]
        assert lines(caplog, r": (.+) started \(") == names
        health = run.daemon.health()
        assert list(health) == ["session", *names]
        assert {n: h.state for n, h in health.items()} == dict.fromkeys(
            health, HealthState.HEALTHY
        ), health
        assert "0 of 0 guest channel(s)" in health["relay"].sentence
        # The host record is in the registry's own prefix, on the session's lease.
        kv = await run.coordinator.get(host_key(run.daemon.options.name))
        assert kv is not None
        assert kv.key.startswith(HOSTS)
        assert HOSTS.startswith(REGISTRY)
        assert kv.lease != 0
        assert decode_host(kv.value).pid == os.getpid()
        components = list(run.daemon.components)
    assert lines(caplog, r": (.+) stopped \(") == list(reversed(names))
    assert all(c.health().state is HealthState.STOPPED for c in components)
    assert run.daemon.health()["session"].state is HealthState.STARTING  # no session any more


async def test_lab_only_host_has_no_exec_brokers(
    etcd_server: EtcdCluster, etcd_prefix: str, tmp_path: Path
) -> None:
    async with running(etcd_server, etcd_prefix, tmp_path, drivers=(DriverKind.LAB,)) as run:
        names = [c.name for c in run.daemon.components]
        assert names == [
            "relay",
            "groups",
            "servers",
            "evacuator",
            "scaler",
            "autoscaler",
            "services",
            "api",
        ]


async def test_one_more_component_is_one_more_factory(
    etcd_server: EtcdCluster, etcd_prefix: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    probes: list[Probe] = []

    def probe(config: Config, options: HostOptions, shared: HostShared, built: Built) -> Component:
        probes.append(Probe(service=built.one(GroupService)))
        return probes[-1]

    factories: dict[str, ComponentFactory] = {**COMPONENTS, "probe": probe}
    async with running(etcd_server, etcd_prefix, tmp_path, factories=factories) as run:
        assert [c.name for c in run.daemon.components][-1] == "probe"
        (p,) = probes
        assert p.service is next(c for c in run.daemon.components if c.name == "groups")
        assert p.events == ["start"]
        assert run.daemon.health()["probe"] == ComponentHealth(
            state=HealthState.HEALTHY, sentence="probing"
        )
        # SIGUSR1 logs one health line per component (and the session's).
        caplog.clear()
        os.kill(os.getpid(), signal.SIGUSR1)
        async with asyncio.timeout(WAIT):
            while len(lines(caplog, r"health: (\S+) ")) < 10:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        assert lines(caplog, r"health: (\S+) ") == [
            "session",
            "relay",
            "groups",
            "servers",
            "evacuator",
            "scaler",
            "autoscaler",
            "services",
            "api",
            "probe",
        ]
    assert probes[0].events == ["start", "stop"]
    assert lines(caplog, r": (.+) stopped \(")[0] == "probe"  # last started, first stopped


def test_a_factory_that_needs_a_later_component_says_which(tmp_path: Path) -> None:
    """The order of `COMPONENTS` is the order of use: asking for a later one is refused."""
    wrong = {"groups": COMPONENTS["groups"], "relay": COMPONENTS["relay"]}
    shared = HostShared.__new__(HostShared)  # never read: the factory fails before
    with pytest.raises(LookupError, match="no ChannelRelay component was built before"):
        build_components(
            Config(state_dir=tmp_path), options(tmp_path, (DriverKind.LAB,)), shared, wrong
        )


async def test_a_dead_predecessors_record_is_awaited_then_claimed(
    etcd_server: EtcdCluster, etcd_prefix: str, tmp_path: Path
) -> None:
    """The record of a daemon that died keeps its name until its lease expires (1 s)."""
    opts = options(tmp_path, (DriverKind.LAB,))
    coordination = CoordinationConfig(endpoints=etcd_server.endpoints, prefix=etcd_prefix)
    config = Config(state_dir=tmp_path / "state", coordination=coordination)
    async with EtcdCoordinator(etcd_server.endpoints, prefix=etcd_prefix, config=coordination) as c:
        lease = await c.grant(1)  # never renewed: the predecessor is dead
        stale = HostRecord(name=opts.name, channel_dir="/x", pid=1, started_at="")
        await c.put(host_key(opts.name), encode_record(stale), lease=lease.id)
        daemon = HostDaemon(config, opts, endpoints=etcd_server.endpoints)
        ready = asyncio.Event()
        started = time.monotonic()
        task = asyncio.create_task(daemon.run(ready.set))
        try:
            async with asyncio.timeout(WAIT):
                await ready.wait()
            took = time.monotonic() - started
            kv = await c.get(host_key(opts.name))
            assert kv is not None
            assert decode_host(kv.value).pid == os.getpid()
            assert 0.5 < took < 2 * coordination.lease_ttl + 1.5  # waited, but not to the end
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await c.delete_prefix("")


async def test_a_live_daemon_keeps_its_name(
    etcd_server: EtcdCluster, etcd_prefix: str, tmp_path: Path
) -> None:
    async with running(etcd_server, etcd_prefix, tmp_path) as first:
        opts = replace(first.daemon.options, channel_dir=tmp_path / "other", address="sgtother")
        second = HostDaemon(first.daemon.config, opts, endpoints=etcd_server.endpoints)
        async with asyncio.timeout(WAIT):
            with pytest.raises(HostNameTaken, match=rf"named {opts.name!r} is running \(pid \d+\)"):
                await second.run()
        assert first.daemon.health()["servers"].state is HealthState.HEALTHY
