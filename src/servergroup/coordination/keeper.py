"""`Session`: the asyncio driver that keeps one lease alive and publishes its state.

It runs `SessionMachine` (the pure core in `session.py`): grants a lease,
renews it every `renew_interval` (each renewal in its own task, bounded by
`renew_timeout`, so that the fencing deadline fires on time even while a
renewal hangs), ticks the machine at the times it asks for, and when the
lease is LOST grants a new one. Listeners see every state change in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from servergroup.common.clock import Clock, SystemClock
from servergroup.common.logsetup import log_bug
from servergroup.config import CoordinationConfig
from servergroup.coordination.errors import CoordinationError, LeaseNotFound
from servergroup.coordination.protocol import Coordinator
from servergroup.coordination.session import SessionChanged, SessionMachine
from servergroup.coordination.types import SessionState

log = logging.getLogger(__name__)


class Session:
    """A lease kept alive on a `Coordinator`, with CONNECTED/SUSPENDED/LOST states."""

    def __init__(
        self,
        coordinator: Coordinator,
        config: CoordinationConfig | None = None,
        *,
        clock: Clock | None = None,
        name: str = "session",
    ) -> None:
        self.config = config or CoordinationConfig()
        self.coordinator = coordinator
        self.clock: Clock = clock or SystemClock()
        self.name = name
        self._machine = SessionMachine(
            ttl=self.config.lease_ttl,
            renew_interval=self.config.renew_interval,
            fence_margin=self.config.fence_margin,
        )
        self._changed = asyncio.Event()
        self._wake = asyncio.Event()
        self._listeners: list[asyncio.Queue[SessionChanged]] = []
        self._task: asyncio.Task[None] | None = None
        self._renewal: asyncio.Task[None] | None = None

    # -- what holders look at ---------------------------------------------------

    @property
    def state(self) -> SessionState:
        return self._machine.state

    @property
    def lease_id(self) -> int:
        """The current lease (0 before the first grant)."""
        return self._machine.lease_id

    @property
    def fence_at(self) -> float:
        """Monotonic time at which holders must have stopped, unless renewed first."""
        return self._machine.fence_at

    def may_act(self) -> bool:
        """True if a holder of this session's lease may act right now."""
        now = self.clock.monotonic()
        self._publish(self._machine.tick(now))
        return self._machine.may_act(now)

    def listen(self) -> asyncio.Queue[SessionChanged]:
        """A queue that receives every later state change."""
        q: asyncio.Queue[SessionChanged] = asyncio.Queue()
        self._listeners.append(q)
        return q

    def unlisten(self, q: asyncio.Queue[SessionChanged]) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(q)

    def changed(self) -> asyncio.Event:
        """An event set at the next state change (a fresh one each change)."""
        return self._changed

    async def wait_for(self, state: SessionState, timeout: float | None = None) -> None:
        """Wait until the session is in `state`."""

        async with asyncio.timeout(timeout):
            while self.state is not state:
                await self._changed.wait()

    # -- lifecycle -------------------------------------------------------------------

    async def start(self, timeout: float | None = None) -> None:
        """Grant the first lease (raising `StoreUnavailable` on failure), then keep it."""
        sent_at = self.clock.monotonic()
        async with asyncio.timeout(timeout):
            lease = await self.coordinator.grant(self.config.lease_ttl)
        self._publish(self._machine.granted(lease, sent_at=sent_at, now=self.clock.monotonic()))
        self._task = asyncio.get_running_loop().create_task(self._run(), name=self.name)

    async def close(self, *, revoke: bool = True) -> None:
        """Stop renewing and (by default) revoke the lease, releasing what it held."""
        for task in (self._renewal, self._task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        lease_id = self._machine.lease_id
        self._publish(self._machine.lost("session closed", self.clock.monotonic()))
        if revoke and lease_id:
            with contextlib.suppress(CoordinationError, TimeoutError):
                async with asyncio.timeout(2.0):
                    await self.coordinator.revoke(lease_id)

    async def __aenter__(self) -> Session:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- the loop -------------------------------------------------------------------

    def _publish(self, events: list[SessionChanged]) -> None:
        for ev in events:
            log.info("%s: %s (lease %x: %s)", self.name, ev.state.value, ev.lease_id, ev.reason)
            for q in self._listeners:
                q.put_nowait(ev)
        if events:
            self._changed.set()
            self._changed = asyncio.Event()

    async def _renew(self, lease_id: int, sent_at: float) -> None:
        try:
            remaining = await self.coordinator.keep_alive(
                lease_id, timeout=self.config.renew_timeout
            )
        except LeaseNotFound:
            events = self._machine.renew_failed(lease_id, gone=True, now=self.clock.monotonic())
        except (TimeoutError, CoordinationError) as exc:
            log.debug("%s: renewal failed: %s", self.name, exc)
            events = self._machine.renew_failed(lease_id, gone=False, now=self.clock.monotonic())
        else:
            events = self._machine.renewed(
                lease_id, sent_at=sent_at, remaining=remaining, now=self.clock.monotonic()
            )
        self._publish(events)
        self._wake.set()

    async def _regrant(self) -> None:
        old = self._machine.lease_id
        sent_at = self.clock.monotonic()
        try:
            async with asyncio.timeout(self.config.request_timeout):
                lease = await self.coordinator.grant(self.config.lease_ttl)
        except (TimeoutError, CoordinationError) as exc:
            log.debug("%s: cannot grant a new lease yet: %s", self.name, exc)
            await self.clock.sleep(self.config.renew_interval)
            return
        if old:
            # The old lease may still exist at the store; end it so its keys go now.
            with contextlib.suppress(CoordinationError, TimeoutError):
                async with asyncio.timeout(self.config.request_timeout):
                    await self.coordinator.revoke(old)
        self._publish(self._machine.granted(lease, sent_at=sent_at, now=self.clock.monotonic()))

    async def _sleep_or_wake(self, delay: float) -> None:
        sleeper = asyncio.ensure_future(self.clock.sleep(delay))
        waker = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for fut in (sleeper, waker):
                fut.cancel()
            await asyncio.gather(sleeper, waker, return_exceptions=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                now = self.clock.monotonic()
                self._publish(self._machine.tick(now))
                if self._machine.state is SessionState.LOST:
                    if self._renewal is not None and not self._renewal.done():
                        self._renewal.cancel()
                    await self._regrant()
                    continue
                if self._machine.renew_due(now):
                    lease_id = self._machine.renew_started(now)
                    self._renewal = loop.create_task(self._renew(lease_id, now))
                delay = max(0.0, self._machine.next_timer() - self.clock.monotonic())
                self._wake.clear()
                await self._sleep_or_wake(delay)
            except asyncio.CancelledError:
                raise
            except Exception:
                log_bug(log, f"{self.name} loop")
                await asyncio.sleep(self.config.renew_interval)


__all__ = ["Session"]
