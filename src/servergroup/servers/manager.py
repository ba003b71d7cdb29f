"""The host's server manager: carries out `reconcile.decide` for the servers of this host.

Theory of operation. The manager follows the registry cache. Whenever a
server record changes, a host appears or goes, and every `check_interval`
anyway (so that a guest agent that died is noticed), it reconciles each
server this host is involved in (its owner, or the target of its move):
observe it through the driver, `decide`, log the decision's sentence, carry
out the actions, write the status.

- One server at a time each: a server has at most one worker; a kick while
  it works makes it run once more afterwards (kicks coalesce).
- Never act on a stale view of our own writes: after writing a server's
  status at revision r, the manager decides for that server again only on a
  snapshot at r or later. (A source host that acted on the status from
  before its hand-over could stop a server its target had just started.)
- A failed action writes the status ERROR with the driver's sentence. The
  same spec is retried after `retry_interval`; a new spec at once.
- On start it reconciles everything it owns before returning: what runs is
  observed and adopted as it is (a daemon restart restarts no server).
- A host may have several drivers (lab, qemu); each server is handled by the
  one its spec names. A server whose driver this host lacks is left alone.
- A decision that reports ERROR (a crash seen) counts as a failure: the
  server is tried again after `retry_interval`, not at once.
- Every write is fenced: a status is written compared on the revisions of the
  status and of the spec the decision was made on (so that no status outlives
  a server whose records were removed meanwhile), and under `fence()`, the guard of this
  host's own live registration (None while the session is not CONNECTED:
  then nothing is written). A host that was frozen or cut off, whose servers
  another host took over meanwhile, has its write refused by the store
  (`FencingError`, or `RevisionConflict` once it registered again) and
  decides again on a fresh view, where the server is no longer its own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType

from servergroup.common import metrics
from servergroup.common.component import ComponentHealth, HealthState, cancel_and_wait
from servergroup.common.logsetup import log_bug
from servergroup.coordination import CoordinationError, FencingError, Guard, RevisionConflict
from servergroup.servers.drivers.base import DriverError, Observed, ServerDriver
from servergroup.servers.model import (
    DriverKind,
    IncomingRecord,
    RegistrySnapshot,
    Server,
    ServerSpec,
    ServerStatus,
    VmState,
)
from servergroup.servers.reconcile import Action, decide, failed, involves, owner
from servergroup.servers.registry import ChangeKind, Registry, RegistryCache, RegistryChange

log = logging.getLogger(__name__)


def iso_now(wall: float) -> str:
    """ISO 8601 UTC with milliseconds, for records meant for people."""
    return datetime.fromtimestamp(wall, tz=UTC).isoformat(timespec="milliseconds")


class NotFenced(Exception):
    """No write may happen now: this host's session is not connected."""


class ServerManager:
    """Reconciles this host's servers with their specs (see the module docstring).

    A component of the host daemon (`common.component`): `start`, `stop`, `health`.
    """

    name = "servers"

    def __init__(
        self,
        *,
        registry: Registry,
        cache: RegistryCache,
        drivers: Sequence[ServerDriver],
        host: str,
        channel_dir: Path,
        check_interval: float = 1.0,
        retry_interval: float = 5.0,
        start_timeout: float = 60.0,
        wall: Callable[[], float] = time.time,
        fence: Callable[[], Guard | None] | None = None,
    ) -> None:
        self._registry = registry
        self._cache = cache
        self._drivers = {d.kind: d for d in drivers}
        self.host = host
        self.channel_dir = channel_dir
        self.check_interval = check_interval
        self.retry_interval = retry_interval
        self.start_timeout = start_timeout
        self._wall = wall
        #: The guard of this host's registration for every write; None: do not write now.
        #: Without a fence (tests of the manager alone) writes are unguarded.
        self._fence = fence
        self._queue: asyncio.Queue[RegistryChange] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        #: Servers whose last pass did not finish (the store, the fence): the tick
        #: looks at them again even when they are no longer this host's (what is
        #: left of a server taken over while this host was frozen or cut off).
        self._unfinished: set[str] = set()
        self._written: dict[str, int] = {}  # server -> revision of our latest write
        self._failed: dict[str, tuple[ServerSpec, float]] = {}  # server -> (spec, when)

    @property
    def drivers(self) -> Mapping[DriverKind, ServerDriver]:
        """The drivers of this host, by kind (the scaler pins vCPUs through the same ones)."""
        return MappingProxyType(self._drivers)

    # -- life cycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Adopt and reconcile what this host owns, then follow the registry.

        Every server is looked at once: what this host still has of servers
        that moved elsewhere while it was down (their hosts' evacuation) is
        removed.
        """
        self._queue = self._cache.subscribe()
        for name in sorted(self._cache.snapshot.servers):
            self.kick(name)
        workers = list(self._workers.values())
        if workers:
            _done, pending = await asyncio.wait(workers, timeout=self.start_timeout)
            if pending:
                log.warning("host %s: %d server(s) still being reconciled", self.host, len(pending))
        self._tasks = [
            asyncio.create_task(self._follow(), name=f"servers-follow-{self.host}"),
            asyncio.create_task(self._tick(), name=f"servers-tick-{self.host}"),
        ]
        log.info(
            "host %s manages servers with the %s driver(s)",
            self.host,
            ", ".join(kind.value for kind in self._drivers),
        )

    async def stop(self) -> None:
        """Stop reconciling; the servers keep running."""
        tasks = self._tasks + list(self._workers.values())
        await cancel_and_wait(tasks)
        self._tasks = []
        self._workers.clear()
        if self._queue is not None:
            self._cache.unsubscribe(self._queue)
            self._queue = None

    def health(self) -> ComponentHealth:
        """Running or not; degraded while a server of this host keeps failing."""
        if not self._tasks:
            return ComponentHealth(state=HealthState.STOPPED, sentence="not reconciling servers")
        ours = self._ours(self._cache.snapshot)
        failing = sorted(n for n in self._failed if n in ours)
        drivers = ", ".join(k.value for k in self._drivers)
        if failing:
            return ComponentHealth(
                state=HealthState.DEGRADED,
                sentence=f"{len(ours)} server(s) here ({drivers}); failing, retried: "
                + ", ".join(failing),
            )
        return ComponentHealth(
            state=HealthState.HEALTHY, sentence=f"{len(ours)} server(s) here ({drivers})"
        )

    # -- what to reconcile --------------------------------------------------------------

    def _ours(self, snap: RegistrySnapshot) -> list[str]:
        return [n for n, s in sorted(snap.servers.items()) if involves(s, self.host)]

    def kick(self, name: str) -> None:
        """Reconcile `name` soon (once more after the current pass, if one runs)."""
        if name in self._workers:
            self._again.add(name)
            return
        self._workers[name] = asyncio.create_task(self._work(name), name=f"server-{name}")

    async def _work(self, name: str) -> None:
        try:
            while True:
                self._again.discard(name)
                self._unfinished.add(name)
                try:
                    await self._reconcile(name)
                    self._unfinished.discard(name)
                except asyncio.CancelledError:
                    raise
                except RevisionConflict as exc:
                    log.info("server %s: changed meanwhile (%s); deciding again", name, exc)
                    self._again.add(name)
                except FencingError as exc:
                    log.warning(
                        "server %s: our registration is gone (%s): not acting until registered "
                        "again",
                        name,
                        exc,
                    )
                except NotFenced as exc:
                    log.info("server %s: %s", name, exc)
                except CoordinationError as exc:
                    log.warning("server %s: cannot reach the store (%s); retrying", name, exc)
                except Exception:
                    log_bug(log, f"reconciling server {name}")
                if name not in self._again:
                    return
        finally:
            self._workers.pop(name, None)

    async def _follow(self) -> None:
        assert self._queue is not None
        while True:
            change = await self._queue.get()
            if change.kind is ChangeKind.SERVER:
                servers = [s for s in (change.before, change.after) if isinstance(s, Server)]
                if any(involves(s, self.host) for s in servers):
                    self.kick(change.name)
            elif change.kind is ChangeKind.HOST:
                # A host came or went: a move to or from it may now proceed.
                for name in self._ours(change.snapshot):
                    self.kick(name)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.check_interval)
            snap = self._cache.snapshot
            self._unfinished &= set(snap.servers)
            for name in sorted(set(self._ours(snap)) | self._unfinished):
                self.kick(name)

    # -- one server ---------------------------------------------------------------------

    async def _fresh_snapshot(self, name: str) -> RegistrySnapshot | None:
        """The cache's snapshot once it holds our latest write for `name` (None: not yet)."""
        snap = self._cache.snapshot
        written = self._written.get(name, 0)
        if snap.revision >= written:
            return snap
        try:
            return await self._cache.wait_for(lambda s: s.revision >= written, timeout=5.0)
        except TimeoutError:
            log.warning("server %s: the registry cache lags behind our write; retrying", name)
            return None

    async def _reconcile(self, name: str) -> None:
        snap = await self._fresh_snapshot(name)
        if snap is None:
            return
        server = snap.servers.get(name)
        if server is None:
            return
        spec = server.spec
        driver = self._drivers.get(spec.driver)
        if driver is None:
            log.debug("server %s uses driver %s, which this host lacks", name, spec.driver.value)
            return
        failure = self._failed.get(name)
        if (
            failure is not None
            and failure[0] == spec
            and time.monotonic() - failure[1] < self.retry_interval
        ):
            return
        try:
            observed = await driver.observe(spec)
        except DriverError as exc:
            log.warning("server %s: cannot observe it: %s", name, exc)
            if owner(server) == self.host:
                await self._fail(server, str(exc))
            return
        now = iso_now(self._wall())
        decision = decide(
            server,
            observed,
            me=self.host,
            channel_dir=self.channel_dir,
            host_alive=lambda h: h in snap.hosts,
            now_iso=now,
            move_style=driver.move_style,
        )
        if decision.idle:
            log.debug("%s", decision.sentence)
            return
        # Self-fencing: a host whose session may not act (its lease may be gone,
        # its servers taken over) touches no server, not only writes nothing.
        self._guard()
        log.info("%s", decision.sentence)
        doing = Action.FORGET
        try:
            for action in decision.actions:
                if action is not Action.FORGET:
                    doing = action
                    await self._carry_out(driver, action, server, observed)
                    metrics.LIFECYCLE_OPERATIONS.labels(operation=action.value, result="ok").inc()
        except DriverError as exc:
            metrics.LIFECYCLE_OPERATIONS.labels(operation=doing.value, result="failed").inc()
            log.warning("server %s: %s", name, exc)
            await self._fail(server, str(exc))
            return
        if decision.status is not None and decision.status.state is VmState.ERROR:
            self._failed[name] = (spec, time.monotonic())  # a crash: start again later
        else:
            self._failed.pop(name, None)
        if decision.status is not None:
            self._written[name] = await self._put_status(server, decision.status, snap.revision)
        if Action.FORGET in decision.actions:
            await self._registry.forget_server(
                name, status_revision=self._written.get(name, 0), guard=self._guard()
            )
            self._written.pop(name, None)
            log.info("server %s deleted and forgotten", name)

    async def _fail(self, server: Server, reason: str) -> None:
        """Report ERROR with `reason`; the same spec is tried again after `retry_interval`.

        A retry of the same spec that fails the same way writes nothing new; a
        new spec's failure is always written, so its operation ends at once.
        """
        previous = self._failed.get(server.name)
        self._failed[server.name] = (server.spec, time.monotonic())
        status = failed(server, me=self.host, reason=reason, now_iso=iso_now(self._wall()))
        same = server.status is not None and replace(server.status, updated_at="") == replace(
            status, updated_at=""
        )
        if not same or previous is None or previous[0] != server.spec:
            self._written[server.name] = await self._put_status(
                server, status, self._cache.snapshot.revision
            )

    def _guard(self) -> Guard | None:
        """The guard for a write now; raises NotFenced when nothing may be written."""
        if self._fence is None:
            return None
        guard = self._fence()
        if guard is None:
            raise NotFenced("this host's session is not connected: not writing")
        return guard

    async def _put_status(self, server: Server, status: ServerStatus, seen_at: int) -> int:
        """Write `status`, compared on the status the decision saw, under our guard.

        On a conflict, the next decision waits for a view newer than `seen_at`.
        """
        try:
            return await self._registry.put_status(
                status,
                if_mod_revision=server.status_revision,
                spec_revision=server.spec_revision,
                guard=self._guard(),
            )
        except RevisionConflict:
            self._written[server.name] = seen_at + 1
            raise

    async def _carry_out(
        self, driver: ServerDriver, action: Action, server: Server, observed: Observed
    ) -> None:
        spec = server.spec
        match action:
            case Action.CREATE:
                await driver.create(spec)
            case Action.START:
                await driver.start(spec)
            case Action.STOP:
                await driver.stop(spec)
            case Action.REBOOT:
                await driver.reboot(spec)
            case Action.PAUSE:
                await driver.pause(spec)
            case Action.UNPAUSE:
                await driver.unpause(spec)
            case Action.ATTACH:
                await driver.attach(spec, self.channel_dir)
            case Action.DETACH:
                await driver.detach(spec, observed.channel_dir or self.channel_dir)
            case Action.DELETE:
                await driver.delete(spec)
            case Action.RECEIVE:
                uri = await driver.receive(spec, self.channel_dir)
                record = IncomingRecord(
                    name=spec.name, host=self.host, uri=uri, at=iso_now(self._wall())
                )
                await self._registry.put_incoming(record, guard=self._guard())
            case Action.MIGRATE:
                assert server.incoming is not None  # decide() migrates only to a known copy
                await driver.migrate(spec, server.incoming.uri)
            case Action.DROP_INCOMING:
                await self._registry.delete_incoming(spec.name, guard=self._guard())
            case _:
                raise AssertionError(f"no carrying out of {action}")


__all__ = ["ServerManager", "iso_now"]
