"""The evacuator: one surviving host at a time rebuilds the servers of dead hosts.

Theory of operation. Every host daemon runs an `Evacuator`; they all follow
the registry cache and remember since when each dead host has been gone (so
that a host that becomes evacuator later still honours the grace period
counted from its own first sight), but only the owner of the ownership key
`election/evacuation` acts. The owner decides with `evacuation.decide` on
each registry change and when a grace period ends, logs the decision's
sentence when it changes, and writes each rebuild with `Registry.place`
under its fencing token: an evacuator that lost its lease (frozen, cut off)
is refused by the store, so two evacuators never rebuild one server twice.
A write that finds the records changed (the operator, the dead host coming
back) is decided again on the next snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from servergroup.common import metrics
from servergroup.common.component import ComponentHealth, HealthState
from servergroup.common.logsetup import log_bug
from servergroup.coordination import (
    CoordinationError,
    FencingError,
    NotOwner,
    Ownership,
    RevisionConflict,
    Session,
)
from servergroup.servers.evacuation import dead_hosts, decide
from servergroup.servers.manager import iso_now
from servergroup.servers.model import RegistrySnapshot
from servergroup.servers.registry import Registry, RegistryCache, RegistryChange

log = logging.getLogger(__name__)

#: The ownership key of the evacuator (below the coordinator's prefix).
EVACUATION_KEY = "election/evacuation"

#: The default grace period: how long a host must be gone before its servers move.
DEFAULT_GRACE = 5.0


class Evacuator:
    """Rebuilds the servers of dead hosts while this host owns `EVACUATION_KEY`."""

    name = "evacuator"

    def __init__(
        self,
        *,
        registry: Registry,
        cache: RegistryCache,
        session: Session,
        host: str,
        grace: float = DEFAULT_GRACE,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._registry = registry
        self._cache = cache
        self._ownership = Ownership(session, EVACUATION_KEY, host.encode())
        self.host = host
        self.grace = grace
        self._monotonic = monotonic
        self._wall = wall
        self._gone_since: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None
        self._last_sentence = ""
        self.rebuilt = 0  # servers this evacuator rebuilt (for tests and health)

    @property
    def is_owner(self) -> bool:
        return self._ownership.is_owner()

    async def start(self) -> None:
        self._ownership.start()
        self._task = asyncio.create_task(self._run(), name=f"evacuator-{self.host}")

    def health(self) -> ComponentHealth:
        """Owner or standby, and what it waits for."""
        if self._task is None:
            return ComponentHealth(state=HealthState.STOPPED, sentence="not following hosts")
        role = "the evacuator" if self.is_owner else "standing by as evacuator"
        stuck = f"; {self._last_sentence}" if self._last_sentence and self.is_owner else ""
        gone = ", ".join(sorted(self._gone_since)) or "none"
        return ComponentHealth(
            state=HealthState.HEALTHY,
            sentence=f"{role} (dead hosts: {gone}; {self.rebuilt} server(s) rebuilt){stuck}",
        )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._ownership.resign()

    def _track(self) -> None:
        """Remember since when each dead host is gone; forget hosts that came back."""
        now = self._monotonic()
        dead = set(dead_hosts(self._cache.snapshot))
        for host in dead:
            self._gone_since.setdefault(host, now)
        for host in set(self._gone_since) - dead:
            del self._gone_since[host]

    async def _run(self) -> None:
        queue = self._cache.subscribe()
        try:
            while True:
                self._track()
                wait_for: float | None = None
                if self._ownership.is_owner():
                    try:
                        wait_for = await self._pass()
                    except (RevisionConflict, FencingError, NotOwner) as exc:
                        log.info("evacuator on %s: %s; deciding again", self.host, exc)
                        wait_for = 0.05
                    except CoordinationError as exc:
                        log.warning("evacuator on %s: %s; retrying", self.host, exc)
                        wait_for = 1.0
                    except Exception:
                        log_bug(log, "the evacuator")
                        wait_for = 1.0
                    await _next_change(queue, wait_for)
                else:
                    # A standby: a registry change, or becoming the owner (the
                    # owner's host may be the one that died), whichever first.
                    await _next_change(queue, None, also=self._ownership.wait_owner())
        finally:
            self._cache.unsubscribe(queue)

    async def _pass(self) -> float | None:
        """Decide once and write the rebuilds; return how long until the next check."""
        snapshot = self._cache.snapshot
        now = self._monotonic()
        decision = decide(
            snapshot,
            gone_since=self._gone_since,
            grace=self.grace,
            now=now,
            now_iso=iso_now(self._wall()),
        )
        if decision.sentence != self._last_sentence:
            log.info("evacuator on %s: %s", self.host, decision.sentence)
            self._last_sentence = decision.sentence
        written: dict[str, int] = {}
        for rebuild in decision.rebuilds:
            group, _ = await self._registry.group_for_placement(rebuild.spec.group)
            written[rebuild.name] = await self._registry.place(
                group,
                rebuild.spec,
                spec_revision=rebuild.spec_revision,
                status=rebuild.status,
                status_revision=rebuild.status_revision,
                guard=self._ownership.guard(),
            )
            self.rebuilt += 1
            metrics.EVACUATIONS.inc()
            log.info(
                "evacuator on %s: server %s of dead host %s is rebuilt on %s",
                self.host,
                rebuild.name,
                rebuild.dead_host,
                rebuild.spec.host,
            )
        if decision.rebuilds:
            # Decide again once the cache shows what we wrote: each server's own
            # record, since the cache may be at a revision whose events it has
            # not all applied yet (a transaction writes several keys at one).
            def shown(snap: RegistrySnapshot) -> bool:
                return all(
                    name not in snap.servers or snap.servers[name].status_revision >= revision
                    for name, revision in written.items()
                )

            with contextlib.suppress(TimeoutError):
                await self._cache.wait_for(shown, timeout=5.0)
            return 0.0
        if decision.stuck:
            return 1.0  # a host may come up to take them
        if decision.next_check_at is not None:
            return max(0.0, decision.next_check_at - now)
        return None


async def _next_change(
    queue: asyncio.Queue[RegistryChange],
    timeout: float | None,
    *,
    also: Coroutine[Any, Any, object] | None = None,
) -> None:
    """Wait for the next registry change, `also` to end, or `timeout` seconds (None: no limit)."""
    waits: set[asyncio.Future[Any]] = {asyncio.ensure_future(queue.get())}
    if also is not None:
        waits.add(asyncio.ensure_future(also))
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
    while not queue.empty():
        queue.get_nowait()  # one decision covers every change so far


__all__ = ["DEFAULT_GRACE", "EVACUATION_KEY", "Evacuator"]
