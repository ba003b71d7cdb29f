"""The `Coordinator` protocol: what every backend of the shared store guarantees.

Guarantees (checked by one contract test suite against every backend, the
etcd one against a real etcd):

- `put`/`get`/`get_prefix`/`delete` with revisions on every key; every write
  returns the store revision at which it took effect.
- `create(key, value, lease)`: create-if-absent in one transaction; the
  winner gets the key's create revision, its **fencing token**.
- Leases: `grant(ttl)`, `keep_alive`, `revoke`; when a lease expires or is
  revoked, every key attached to it is deleted (and watchers see the DELETE).
- Guarded writes: a `Guard(owner_key, token)` makes a write happen only while
  `owner_key` still exists with that create revision; otherwise
  `FencingError`. This is how a stale owner is refused by what it protects.
- Conditional writes: `put`/`delete` with `if_mod_revision` happen only if the
  key was last written at that revision (0: it must be absent); otherwise
  `RevisionConflict`. This is the compare of every read-modify-write.
- Transactions: `txn(compares, success, failure)` evaluates every `Compare`
  and runs the success branch if all hold, else the failure branch, as one
  atomic step at one revision (etcd's Txn). A branch writes a key at most once.
- Writes are retried across reconnects. A conditional write whose first
  attempt took effect but whose answer was lost is reported as done when the
  key now holds exactly the value written (same lease); so where telling two
  equal writes apart matters, make the value unique (an operation id).
- `watch(prefix, start_revision)`: every change under `prefix` with revision
  >= `start_revision`, in revision order, each exactly once, also across
  reconnects to the same or another member. If the store has compacted
  history the watch needs, iteration raises `WatchCompacted`.
- Every call has a deadline; a store that does not answer in time raises
  `StoreUnavailable`. Nothing blocks forever.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Protocol

from servergroup.coordination.types import (
    Compare,
    Guard,
    KeyValue,
    Lease,
    Range,
    TxnOp,
    TxnResult,
    WatchEvent,
)


class Watch(Protocol):
    """An ordered stream of `WatchEvent`s; close it when done."""

    def __aiter__(self) -> AsyncIterator[WatchEvent]: ...

    async def close(self) -> None: ...


class Coordinator(Protocol):
    """A client of the shared store, scoped to one key prefix (namespace)."""

    @property
    def prefix(self) -> str:
        """The namespace: every key this client reads or writes lives below it."""
        ...

    async def get(self, key: str) -> KeyValue | None:
        """The key, or None when it does not exist."""
        ...

    async def get_prefix(self, prefix: str) -> Range:
        """Every key below `prefix`, sorted by key, and the revision of the read."""
        ...

    async def put(
        self,
        key: str,
        value: bytes,
        *,
        lease: int = 0,
        guard: Guard | None = None,
        if_mod_revision: int | None = None,
    ) -> int:
        """Write `key`; return the revision.

        With `guard`, raise `FencingError` if stale; with `if_mod_revision`,
        raise `RevisionConflict` unless the key was last written then (0: absent).
        """
        ...

    async def create(self, key: str, value: bytes, *, lease: int = 0) -> int | None:
        """Create `key` only if absent; return its create revision (the token) or None."""
        ...

    async def delete(
        self, key: str, *, guard: Guard | None = None, if_mod_revision: int | None = None
    ) -> bool:
        """Delete `key`; return whether it existed. With `guard`/`if_mod_revision`, as `put`."""
        ...

    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[TxnOp],
        failure: Sequence[TxnOp] = (),
    ) -> TxnResult:
        """One atomic transaction: `success` if every compare holds, else `failure`."""
        ...

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every key below `prefix`; return how many were deleted."""
        ...

    async def grant(self, ttl: int) -> Lease:
        """A new lease of (at least) `ttl` whole seconds."""
        ...

    async def keep_alive(self, lease_id: int, *, timeout: float | None = None) -> int:
        """Renew the lease once within `timeout`; return the remaining TTL.

        Raises `LeaseNotFound` if the lease is gone, `StoreUnavailable` if no
        member answered in time.
        """
        ...

    async def revoke(self, lease_id: int) -> None:
        """End the lease now, deleting its keys; a lease already gone is not an error."""
        ...

    async def watch(self, prefix: str, *, start_revision: int) -> Watch:
        """Watch every change below `prefix` from `start_revision` (inclusive)."""
        ...

    async def close(self) -> None:
        """Release connections and end every watch of this client."""
        ...


__all__ = ["Coordinator", "Watch"]
