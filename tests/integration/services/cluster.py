"""Helpers of the node-role tests: an OCF root with our agents and the system's, the store, waits.

The lab hosts of `servergroup up` share this machine's filesystem, so every
test service names its state file with `{node}` (rendered by the node role),
and the journal agent writes one journal all nodes share, which
`services.journal.check` reads.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import psutil

from servergroup.config import DEFAULT_PREFIX, CoordinationConfig, Endpoint
from servergroup.coordination import EtcdCoordinator
from servergroup.services import store
from servergroup.services.journal import Record, Violation, check, decode_record
from servergroup.services.ledger import ledger_path, read_ledger
from servergroup.services.model import FailoverDomain, Service, encode_domain, encode_service
from servergroup.services.ocf import OcfAgent
from tests.fixtures.setup import Setup

FIXTURE_OCF = Path(__file__).resolve().parents[2] / "fixtures" / "ocf"
SYSTEM_OCF = Path("/usr/lib/ocf")

#: The node roles' lease in these tests (`[services] lease_ttl`; the hosts keep their own
#: 1 s lease): 3 s leaves 2.15 s for a stop (see docs/design/services.md); the journal
#: agent's promotable service needs 2 x 0.5 s + kills.
LEASE_TTL = 3
CONFIG = CoordinationConfig(lease_ttl=LEASE_TTL)

T = TypeVar("T")


def ocf_root(base: Path) -> Path:
    """An OCF root with the system's providers and lib, and our `sgtest` agents."""
    root = base / "ocf"
    (root / "resource.d").mkdir(parents=True)
    (root / "lib").symlink_to(SYSTEM_OCF / "lib")
    for provider in (SYSTEM_OCF / "resource.d").iterdir():
        (root / "resource.d" / provider.name).symlink_to(provider)
    (root / "resource.d" / "sgtest").symlink_to(FIXTURE_OCF / "resource.d" / "sgtest")
    return root


def env(root: Path) -> dict[str, str]:
    """What the host daemons of the test's `servergroup up` get."""
    return {"SERVERGROUP_OCF_ROOT": str(root), "SERVERGROUP_SERVICES_LEASE_TTL": str(LEASE_TTL)}


def on_store(setup: Setup, work: Callable[[EtcdCoordinator], Any]) -> Any:
    """Run `await work(coordinator)` against the setup's etcd."""

    async def run() -> Any:
        endpoint = Endpoint(host="127.0.0.1", port=int(setup.env["SERVERGROUP_ETCD_PORT"]))
        async with EtcdCoordinator([endpoint], prefix=DEFAULT_PREFIX, config=CONFIG) as c:
            return await work(c)

    return asyncio.run(run())


def define(setup: Setup, *, services: list[Service], domains: list[FailoverDomain]) -> None:
    """Write definitions as `servergroup service add` will: domains first."""

    async def work(c: EtcdCoordinator) -> None:
        for domain in domains:
            await c.put(store.domain_key(domain.name), encode_domain(domain))
        for service in services:
            await c.put(store.def_key(service.name), encode_service(service))

    on_store(setup, work)


def put(setup: Setup, key: str, value: bytes) -> None:
    async def work(c: EtcdCoordinator) -> None:
        await c.put(key, value)

    on_store(setup, work)


def delete(setup: Setup, key: str) -> None:
    async def work(c: EtcdCoordinator) -> None:
        await c.delete(key)

    on_store(setup, work)


def listing(setup: Setup) -> store.Listing:
    async def work(c: EtcdCoordinator) -> store.Listing:
        rng = await c.get_prefix(store.SERVICES)
        return store.read_listing(rng.items, revision=rng.revision)

    result: store.Listing = on_store(setup, work)
    return result


def wait_for(
    setup: Setup, what: str, found: Callable[[store.Listing], T | None], timeout: float = 30.0
) -> T:
    """The first non-None `found(listing)`, read every 0.1 s; fails after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = found(listing(setup))
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s; store: {listing(setup)}")
        time.sleep(0.1)


def owner_of(instance: Any) -> Callable[[store.Listing], store.Held | None]:
    def found(lst: store.Listing) -> store.Held | None:
        held = lst.owners.get(instance)
        return held if held is not None and not held.record.busy else None

    return found


def owned_by(instance: Any, node: str) -> Callable[[store.Listing], store.Held | None]:
    """The owner of `instance` once it is `node` and not busy."""

    def found(lst: store.Listing) -> store.Held | None:
        held = owner_of(instance)(lst)
        return held if held is not None and held.record.node == node else None

    return found


def master_where(
    service: str, where: Callable[[store.MasterRecord], bool]
) -> Callable[[store.Listing], store.MasterRecord | None]:
    """The master record of `service` once `where` holds for it."""

    def found(lst: store.Listing) -> store.MasterRecord | None:
        master = lst.masters.get(service)
        return master if master is not None and where(master) else None

    return found


def journal(path: Path) -> list[Record]:
    if not path.exists():
        return []
    return [decode_record(line) for line in path.read_text().splitlines() if line.strip()]


def violations(path: Path) -> list[Violation]:
    return check(journal(path))


def pid_of(setup: Setup, host: str) -> int:
    """The pid of `host`'s daemon's supervisor, as `servergroup up` recorded it.

    SIGTERM to it is a clean stop of the daemon (it forwards the signal).
    """
    status = json.loads((setup.state_dir / "up" / "state.json").read_text())
    return int(next(h["pid"] for h in status["hosts"] if h["name"] == host))


def kill_unsupervised(setup: Setup, host: str) -> None:
    """kill -9 of `host`'s daemon with nobody to clean up after it: its supervisor dies too.

    The supervisor is stopped first, so that it neither sees the death nor
    passes its own on to the daemon (which would then stop in order). The
    supervisor's own cleanup is tested with it (tests/integration/daemons).
    """
    supervisor = pid_of(setup, host)
    os.kill(supervisor, signal.SIGSTOP)
    for child in psutil.Process(supervisor).children():
        os.kill(child.pid, signal.SIGKILL)
    os.kill(supervisor, signal.SIGKILL)


def act_as_supervisor(setup: Setup, host: str) -> int:
    """What the supervisor does for a dead daemon: stop what its ledger lists (no revoke).

    The lease is left to expire, so the test also covers failover by lease
    expiry; the supervisor proper (and its revoke) is tested with it.
    """
    ledger = read_ledger(ledger_path(setup.state_dir, host))
    assert ledger is not None, f"host {host} left no ledger"

    async def stop_all() -> int:
        for entry in ledger.entries:
            agent = OcfAgent(
                entry.service.agent,
                instance=f"{entry.instance.service}:{entry.instance.index}",
                parameters=entry.service.parameters,
                ocf_root=Path(ledger.ocf_root),
            )
            timeout = entry.service.stop_timeout or 5.0
            if entry.master:
                await agent.run("demote", timeout=timeout, fencing_token=entry.token)
            result = await agent.run("stop", timeout=timeout, fencing_token=entry.token)
            assert result.ok, result.describe()
        return len(ledger.entries)

    return asyncio.run(stop_all())
