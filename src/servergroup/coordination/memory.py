"""An in-memory store behind the `Coordinator` protocol, for fast tests of higher layers.

`MemoryStore` plays the etcd server: one global revision, keys, leases that
expire on the injected clock, full history for watches. `MemoryCoordinator`
is one client of it, scoped to a prefix. Setting `store.available = False`
makes every call fail with `StoreUnavailable`, as an unreachable etcd would,
while leases keep expiring: that is how session and ownership tests
simulate an outage without a real process.

It honours the same contract as the etcd backend; the contract suite runs
against both.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace

from servergroup.common.clock import Clock, SystemClock
from servergroup.coordination.errors import (
    CoordinationError,
    FencingError,
    LeaseNotFound,
    RevisionConflict,
    StoreUnavailable,
    WatchCompacted,
)
from servergroup.coordination.types import (
    Compare,
    Delete,
    EventKind,
    Guard,
    KeyValue,
    Lease,
    Put,
    Range,
    TxnOp,
    TxnResult,
    WatchEvent,
)

# Past this many events the oldest history is compacted away, as etcd would.
HISTORY_LIMIT = 100_000


@dataclass(slots=True)
class _LeaseRecord:
    ttl: int
    expires_at: float


class MemoryStore:
    """The shared state that `MemoryCoordinator` clients talk to."""

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock: Clock = clock or SystemClock()
        self.available = True
        self.revision = 1  # etcd starts at 1 too
        self._kv: dict[str, KeyValue] = {}
        self._leases: dict[int, _LeaseRecord] = {}
        self._lease_ids = itertools.count(0x1000)
        self._history: list[WatchEvent] = []
        self._compacted = 0  # revisions <= this are gone from history
        self._watchers: set[_MemoryWatch] = set()
        self._reaper: asyncio.Task[None] | None = None

    def ensure_reaper(self) -> None:
        """Expire leases in the background, as the etcd server does every 500 ms."""
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.get_running_loop().create_task(self._reap_forever())

    async def _reap_forever(self) -> None:
        while True:
            now = self.clock.monotonic()
            due = min((r.expires_at for r in self._leases.values()), default=now + 0.05)
            await self.clock.sleep(min(max(due - now, 0.0), 0.05) + 0.001)
            self.expire_leases()

    async def close(self) -> None:
        """Stop the background reaper."""
        if self._reaper is not None:
            self._reaper.cancel()
            await asyncio.gather(self._reaper, return_exceptions=True)
            self._reaper = None

    # -- helpers used by clients -------------------------------------------

    def check(self) -> None:
        """Raise as an unreachable store would; expire leases that are due."""
        if not self.available:
            raise StoreUnavailable("the in-memory store is unavailable")
        self.expire_leases()

    def expire_leases(self) -> None:
        """Delete every lease whose time is up, with its keys."""
        now = self.clock.monotonic()
        for lease_id, rec in list(self._leases.items()):
            if rec.expires_at <= now:
                self._drop_lease(lease_id)

    def _drop_lease(self, lease_id: int) -> None:
        self._leases.pop(lease_id, None)
        doomed = [k for k, kv in self._kv.items() if kv.lease == lease_id]
        if doomed:
            self.revision += 1
            for key in doomed:
                self._delete_at(key, self.revision)

    def _record(self, event: WatchEvent) -> None:
        self._history.append(event)
        if len(self._history) > HISTORY_LIMIT:
            drop = len(self._history) - HISTORY_LIMIT
            self._compacted = self._history[drop - 1].revision
            del self._history[:drop]
        for watcher in list(self._watchers):
            watcher.offer(event)

    def _delete_at(self, key: str, revision: int) -> None:
        del self._kv[key]
        self._record(
            WatchEvent(
                kind=EventKind.DELETE,
                key=key,
                value=b"",
                revision=revision,
                create_revision=0,  # as etcd reports deletions
                lease=0,
            )
        )

    def _guard_holds(self, guard: Guard | None) -> bool:
        if guard is None:
            return True
        kv = self._kv.get(guard.key)
        return kv is not None and kv.create_revision == guard.create_revision

    # -- operations (full keys) --------------------------------------------

    def put(
        self,
        key: str,
        value: bytes,
        lease: int,
        guard: Guard | None,
        if_mod_revision: int | None = None,
    ) -> int:
        self.check()
        if not self._guard_holds(guard):
            raise FencingError(f"write to {key} refused: fencing token is stale")
        current = self._kv.get(key)
        if (
            if_mod_revision is not None
            and current is not None
            and current.mod_revision != if_mod_revision
            and (current.value, current.lease) == (value, lease)
        ):
            return current.mod_revision  # as on etcd: a retry of our own write that took effect
        _check_unchanged(key, current, if_mod_revision, "write to")
        if lease and lease not in self._leases:
            raise LeaseNotFound(f"lease {lease:x} does not exist")
        self.revision += 1
        self._put_at(key, value, lease, self.revision)
        return self.revision

    def _put_at(self, key: str, value: bytes, lease: int, revision: int) -> None:
        old = self._kv.get(key)
        kv = KeyValue(
            key=key,
            value=value,
            create_revision=old.create_revision if old else revision,
            mod_revision=revision,
            version=(old.version + 1) if old else 1,
            lease=lease,
        )
        self._kv[key] = kv
        self._record(
            WatchEvent(
                kind=EventKind.PUT,
                key=key,
                value=value,
                revision=revision,
                create_revision=kv.create_revision,
                version=kv.version,
                lease=lease,
            )
        )

    def create(self, key: str, value: bytes, lease: int) -> int | None:
        self.check()
        old = self._kv.get(key)
        if old is not None:
            # A retry of our own successful create gets our token back, as on etcd.
            if lease and old.lease == lease and old.value == value:
                return old.create_revision
            return None
        return self.put(key, value, lease, None)

    def delete(self, key: str, guard: Guard | None, if_mod_revision: int | None = None) -> bool:
        self.check()
        if not self._guard_holds(guard):
            raise FencingError(f"delete of {key} refused: fencing token is stale")
        _check_unchanged(key, self._kv.get(key), if_mod_revision, "delete of")
        if key not in self._kv:
            return False
        self.revision += 1
        self._delete_at(key, self.revision)
        return True

    def delete_prefix(self, prefix: str) -> int:
        self.check()
        doomed = sorted(k for k in self._kv if k.startswith(prefix))
        if doomed:
            self.revision += 1
            for key in doomed:
                self._delete_at(key, self.revision)
        return len(doomed)

    def txn(
        self, compares: Sequence[Compare], success: Sequence[TxnOp], failure: Sequence[TxnOp]
    ) -> TxnResult:
        """Evaluate `compares`, then run one branch in order, at one new revision."""
        self.check()
        succeeded = all(c.holds(self._kv.get(c.key)) for c in compares)
        ops = success if succeeded else failure
        _check_branch(ops)
        for op in ops:
            if isinstance(op, Put) and op.lease and op.lease not in self._leases:
                raise LeaseNotFound(f"lease {op.lease:x} does not exist")
        revision = self.revision + 1
        changed = False
        reads: dict[str, KeyValue | None] = {}
        deleted: set[str] = set()
        for op in ops:
            if isinstance(op, Put):
                self._put_at(op.key, op.value, op.lease, revision)
                changed = True
            elif isinstance(op, Delete):
                if op.key in self._kv:
                    self._delete_at(op.key, revision)
                    deleted.add(op.key)
                    changed = True
            else:
                reads[op.key] = self._kv.get(op.key)
        if changed:
            self.revision = revision
        return TxnResult(
            succeeded=succeeded, revision=self.revision, reads=reads, deleted=frozenset(deleted)
        )

    def get(self, key: str) -> KeyValue | None:
        self.check()
        return self._kv.get(key)

    def get_prefix(self, prefix: str) -> Range:
        self.check()
        items = tuple(self._kv[k] for k in sorted(self._kv) if k.startswith(prefix))
        return Range(items=items, revision=self.revision)

    def grant(self, ttl: int) -> Lease:
        self.check()
        ttl = max(1, int(ttl))
        lease_id = next(self._lease_ids)
        self._leases[lease_id] = _LeaseRecord(ttl=ttl, expires_at=self.clock.monotonic() + ttl)
        return Lease(id=lease_id, ttl=ttl)

    def keep_alive(self, lease_id: int) -> int:
        self.check()
        rec = self._leases.get(lease_id)
        if rec is None:
            raise LeaseNotFound(f"lease {lease_id:x} has expired or was revoked")
        rec.expires_at = self.clock.monotonic() + rec.ttl
        return rec.ttl

    def revoke(self, lease_id: int) -> None:
        self.check()
        self._drop_lease(lease_id)

    def history_from(self, prefix: str, start_revision: int) -> list[WatchEvent]:
        if start_revision <= self._compacted:
            raise WatchCompacted(
                f"revision {start_revision} is compacted (oldest kept: {self._compacted + 1})",
                compact_revision=self._compacted,
            )
        return [
            e for e in self._history if e.revision >= start_revision and e.key.startswith(prefix)
        ]

    def compact(self, revision: int) -> None:
        """Forget history before `revision` (for tests of `WatchCompacted`)."""
        self._compacted = max(self._compacted, revision - 1)
        self._history = [e for e in self._history if e.revision >= revision]


def _check_unchanged(key: str, kv: KeyValue | None, expected: int | None, what: str) -> None:
    if expected is not None and not Compare.unchanged(key, expected).holds(kv):
        now = kv.mod_revision if kv is not None else 0
        raise RevisionConflict(
            f"{what} {key} refused: it changed since revision {expected} (now {now})"
        )


def _check_branch(ops: Sequence[TxnOp]) -> None:
    """Refuse a branch that writes one key twice, as etcd does."""
    written: set[str] = set()
    for op in ops:
        if isinstance(op, (Put, Delete)):
            if op.key in written:
                raise CoordinationError(f"a transaction writes {op.key} more than once")
            written.add(op.key)


class _MemoryWatch:
    """A watch on a `MemoryStore`: history first, then live events."""

    def __init__(self, store: MemoryStore, prefix: str, strip: int, start_revision: int) -> None:
        self._store = store
        self._prefix = prefix
        self._strip = strip
        self._queue: asyncio.Queue[WatchEvent | None] = asyncio.Queue()
        self._closed = False
        self._next_revision = start_revision
        for event in store.history_from(prefix, start_revision):
            self.offer(event)
        store._watchers.add(self)

    def offer(self, event: WatchEvent) -> None:
        if self._closed or not event.key.startswith(self._prefix):
            return
        if event.revision < self._next_revision:
            return
        self._queue.put_nowait(replace(event, key=event.key[self._strip :]))

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._store._watchers.discard(self)
            self._queue.put_nowait(None)

    def __aiter__(self) -> AsyncIterator[WatchEvent]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[WatchEvent]:
        while True:
            event = await self._queue.get()
            if event is None:
                return
            yield event


class MemoryCoordinator:
    """One client of a `MemoryStore`, scoped to `prefix`."""

    def __init__(self, store: MemoryStore, prefix: str = "/servergroup/v1/") -> None:
        self._store = store
        self._prefix = prefix
        self._watches: set[_MemoryWatch] = set()

    @property
    def prefix(self) -> str:
        return self._prefix

    async def _enter(self) -> None:
        self._store.ensure_reaper()
        await asyncio.sleep(0)

    def _strip(self, kv: KeyValue) -> KeyValue:
        return replace(kv, key=kv.key[len(self._prefix) :])

    async def get(self, key: str) -> KeyValue | None:
        await self._enter()
        kv = self._store.get(self._prefix + key)
        return self._strip(kv) if kv else None

    async def get_prefix(self, prefix: str) -> Range:
        await self._enter()
        r = self._store.get_prefix(self._prefix + prefix)
        return Range(items=tuple(self._strip(kv) for kv in r.items), revision=r.revision)

    def _full(self, guard: Guard | None) -> Guard | None:
        return replace(guard, key=self._prefix + guard.key) if guard else None

    async def put(
        self,
        key: str,
        value: bytes,
        *,
        lease: int = 0,
        guard: Guard | None = None,
        if_mod_revision: int | None = None,
    ) -> int:
        await self._enter()
        return self._store.put(self._prefix + key, value, lease, self._full(guard), if_mod_revision)

    async def create(self, key: str, value: bytes, *, lease: int = 0) -> int | None:
        await self._enter()
        return self._store.create(self._prefix + key, value, lease)

    async def delete(
        self, key: str, *, guard: Guard | None = None, if_mod_revision: int | None = None
    ) -> bool:
        await self._enter()
        return self._store.delete(self._prefix + key, self._full(guard), if_mod_revision)

    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[TxnOp],
        failure: Sequence[TxnOp] = (),
    ) -> TxnResult:
        await self._enter()
        p = self._prefix
        result = self._store.txn(
            [replace(c, key=p + c.key) for c in compares],
            [replace(op, key=p + op.key) for op in success],
            [replace(op, key=p + op.key) for op in failure],
        )
        return replace(
            result,
            reads={
                k[len(p) :]: (self._strip(kv) if kv else None) for k, kv in result.reads.items()
            },
            deleted=frozenset(k[len(p) :] for k in result.deleted),
        )

    async def delete_prefix(self, prefix: str) -> int:
        await self._enter()
        return self._store.delete_prefix(self._prefix + prefix)

    async def grant(self, ttl: int) -> Lease:
        await self._enter()
        return self._store.grant(ttl)

    async def keep_alive(self, lease_id: int, *, timeout: float | None = None) -> int:
        await self._enter()
        return self._store.keep_alive(lease_id)

    async def revoke(self, lease_id: int) -> None:
        await self._enter()
        self._store.revoke(lease_id)

    async def watch(self, prefix: str, *, start_revision: int) -> _MemoryWatch:
        await self._enter()
        self._store.check()
        w = _MemoryWatch(self._store, self._prefix + prefix, len(self._prefix), start_revision)
        self._watches.add(w)
        return w

    async def close(self) -> None:
        for w in list(self._watches):
            await w.close()
        self._watches.clear()


__all__ = ["MemoryCoordinator", "MemoryStore"]
