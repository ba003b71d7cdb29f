"""Ownership (election) on the coordinator, with fencing tokens and self-fencing.

Theory of operation. Contenders for `key` each hold a `Session`. A contender
tries `create(key, identity, lease=session.lease_id)`; the one that creates
the key owns it, and the key's create revision is its **fencing token**. The
others watch the key and try again when it is deleted (the owner resigned,
or its lease expired). Tokens only grow: a later owner always has a larger
token than any earlier one.

An owner stops owning (an `OwnershipLost` event, and `is_owner()` turns false
at once) when:
- its session leaves CONNECTED: SUSPENDED happens at the session's fencing
  deadline, before the store can expire the lease, so no one else can own
  the key while this one still acts;
- the key is deleted or re-created by someone else (seen on the watch).
After SUSPENDED, if the same lease is renewed and the key still carries the
same token, ownership is re-established with that same token (nobody else
can have owned it in between, since the key never went away).

What the owner protects should refuse stale tokens: write with
`guard()` (the store checks the owner key's create revision), or compare
tokens where the resource lives.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass

from servergroup.common.errors import UsageError
from servergroup.common.logsetup import log_bug
from servergroup.coordination.errors import CoordinationError, WatchCompacted
from servergroup.coordination.keeper import Session
from servergroup.coordination.types import EventKind, Guard, SessionState

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class OwnershipAcquired:
    """We became (or again are) the owner, with this fencing token."""

    key: str
    token: int
    at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class OwnershipLost:
    """We stopped being the owner; the token must not be used again."""

    key: str
    token: int
    reason: str
    at: float


OwnershipEvent = OwnershipAcquired | OwnershipLost


class NotOwner(UsageError):
    """An owner-only operation was attempted without ownership."""


class Ownership:
    """Campaign for `key` with `session`; see the module docstring."""

    def __init__(self, session: Session, key: str, identity: bytes) -> None:
        self.session = session
        self.key = key
        self.identity = identity
        self._token: int | None = None
        self._lease = 0
        self._events: asyncio.Queue[OwnershipEvent] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._owned = asyncio.Event()

    # -- what the owner looks at -----------------------------------------------

    def is_owner(self) -> bool:
        """True only while we own the key and the session still may act."""
        return (
            self._token is not None
            and self.session.lease_id == self._lease
            and self.session.may_act()
        )

    @property
    def token(self) -> int | None:
        """The fencing token while `is_owner()`, else None."""
        return self._token if self.is_owner() else None

    def guard(self) -> Guard:
        """A `Guard` for writes the owner makes; raises `NotOwner` if not the owner."""
        token = self.token
        if token is None:
            raise NotOwner(f"not the owner of {self.key}")
        return Guard(key=self.key, create_revision=token)

    async def events(self) -> AsyncIterator[OwnershipEvent]:
        """Every acquisition and loss, in order."""
        while True:
            yield await self._events.get()

    async def wait_owner(self, timeout: float | None = None) -> int:
        """Wait until we own the key; return the token."""

        async with asyncio.timeout(timeout):
            while True:
                await self._owned.wait()
                token = self.token
                if token is not None:
                    return token
                await asyncio.sleep(0.01)

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        """Start campaigning in the background."""
        self._task = asyncio.get_running_loop().create_task(self._campaign())

    async def resign(self) -> None:
        """Stop campaigning and give up ownership (deleting the key if still ours)."""
        token = self._token
        if token is not None:
            self._lose(token, "resigned")
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if token is not None:
            with contextlib.suppress(CoordinationError, asyncio.TimeoutError):
                await self.session.coordinator.delete(
                    self.key, guard=Guard(key=self.key, create_revision=token)
                )

    async def __aenter__(self) -> Ownership:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.resign()

    # -- the campaign ---------------------------------------------------------------

    def _now(self) -> float:
        return self.session.clock.monotonic()

    def _gain(self, token: int, lease: int) -> None:
        self._token, self._lease = token, lease
        self._owned.set()
        log.info("%s: owner of %s with token %d", self.session.name, self.key, token)
        self._events.put_nowait(OwnershipAcquired(key=self.key, token=token, at=self._now()))

    def _lose(self, token: int, reason: str) -> None:
        self._token = None
        self._owned.clear()
        log.info("%s: lost %s (token %d): %s", self.session.name, self.key, token, reason)
        self._events.put_nowait(
            OwnershipLost(key=self.key, token=token, reason=reason, at=self._now())
        )

    async def _campaign(self) -> None:
        coord = self.session.coordinator
        while True:
            try:
                await self.session.wait_for(SessionState.CONNECTED)
                lease = self.session.lease_id
                token = await coord.create(self.key, self.identity, lease=lease)
                if token is None:
                    await self._wait_vacant()
                    continue
                self._gain(token, lease)
                try:
                    while True:
                        reason = await self._hold(token, lease)
                        self._lose(token, reason)
                        if not await self._regain(token, lease):
                            break
                        self._gain(token, lease)
                finally:
                    # Whatever ends the holding (an error, cancellation), we no longer own.
                    if self._token is not None:
                        self._lose(token, "stopped holding")
            except asyncio.CancelledError:
                raise
            except CoordinationError as exc:
                log.debug("%s: campaign for %s: %s", self.session.name, self.key, exc)
                await asyncio.sleep(self.session.config.renew_interval)
            except Exception:
                log_bug(log, f"campaign for {self.key}")
                await asyncio.sleep(self.session.config.renew_interval)

    async def _until_session_changes(self, lease: int) -> str:
        while True:
            changed = self.session.changed()
            if self.session.state is not SessionState.CONNECTED:
                return f"session {self.session.state.value}"
            if self.session.lease_id != lease:
                return "session lease replaced"
            await changed.wait()

    async def _race(self, watcher: AsyncIterator[str], lease: int) -> str:
        """Whichever comes first: the watch's verdict or a session change."""
        first_watch = asyncio.ensure_future(watcher.__anext__())
        session = asyncio.ensure_future(self._until_session_changes(lease))
        try:
            done, _ = await asyncio.wait(
                {first_watch, session}, return_when=asyncio.FIRST_COMPLETED
            )
            if session in done:
                return session.result()
            try:
                return first_watch.result()
            except StopAsyncIteration:
                return "watch ended"
        finally:
            for fut in (first_watch, session):
                fut.cancel()
            await asyncio.gather(first_watch, session, return_exceptions=True)

    async def _key_changes(
        self, start_revision: int, token: int | None
    ) -> AsyncGenerator[str, None]:
        """Yield once the key is deleted or, when `token` is set, no longer ours.

        A watch that cannot resume because the store compacted its history
        reads the key again: as it is now, it says what the lost events
        would have said, and the watch goes on from that read.
        """
        coordinator = self.session.coordinator
        while True:
            watch = await coordinator.watch(self.key, start_revision=start_revision)
            try:
                async for ev in watch:
                    if ev.key != self.key:
                        continue  # another key that merely shares the prefix
                    if ev.kind is EventKind.DELETE:
                        yield "owner key deleted"
                        return
                    if token is not None and ev.create_revision != token:
                        yield "owner key taken by another"
                        return
            except WatchCompacted:
                pass
            except CoordinationError as exc:
                yield f"watch failed: {exc}"
                return
            finally:
                await watch.close()
            try:
                rng = await coordinator.get_prefix(self.key)
            except CoordinationError as exc:
                yield f"cannot read the key after its watch was compacted: {exc}"
                return
            kv = next((kv for kv in rng.items if kv.key == self.key), None)
            if kv is None:
                yield "owner key deleted"
                return
            if token is not None and kv.create_revision != token:
                yield "owner key taken by another"
                return
            start_revision = rng.revision + 1

    async def _hold(self, token: int, lease: int) -> str:
        changes = self._key_changes(token + 1, token)
        try:
            return await self._race(changes, lease)
        finally:
            await changes.aclose()

    async def _wait_vacant(self) -> None:
        kv = await self.session.coordinator.get(self.key)
        if kv is None:
            return
        changes = self._key_changes(kv.mod_revision + 1, None)
        try:
            await self._race(changes, self.session.lease_id)
        finally:
            await changes.aclose()

    async def _regain(self, token: int, lease: int) -> bool:
        """After a suspension: True if the same lease came back and the key is still ours."""
        while self.session.state is SessionState.SUSPENDED and self.session.lease_id == lease:
            await self.session.changed().wait()
        if self.session.state is not SessionState.CONNECTED or self.session.lease_id != lease:
            return False
        kv = await self.session.coordinator.get(self.key)
        return kv is not None and kv.create_revision == token and kv.lease == lease


__all__ = ["NotOwner", "Ownership", "OwnershipAcquired", "OwnershipEvent", "OwnershipLost"]
