"""The output buffer: client output held per epoch until the backup has that epoch. Pure.

Theory of operation (Remus's network buffer, seed 004). Everything the
protected service writes to its clients during epoch n is speculative: if
the primary died now, the backup would resume from the end of epoch n - 1
and a client that had seen the bytes would see them contradicted. So the
buffer tags each write with the epoch that produced it and hands it out
only when that epoch commits:

- `write(conn, data)` holds `data` for epoch `epoch` (the running one).
- `seal(n)` is the postsuspend mark: epoch n is captured; later writes
  belong to n + 1.
- `release(n)` (at commit, after the disk) returns every held write of
  epochs <= n, in the order they were written (so in order per client).
- `drop(conn)` forgets a closed client's held output; `discard()` forgets
  everything (a primary that stops never releases what was not committed).

With `buffering=False` (the seed's ``--no-net-buffer``, a benchmark option)
writes pass straight through: `write` returns them at once.

At the bound. Held output is never dropped or cut (a client would get half
a reply). When the held bytes reach `limit`, `full` turns true: the driver
stops dispatching client input (requests wait in the socket buffers, which
is backpressure on the clients) and asks for an early checkpoint; handlers
already running may add their replies past `limit`. A write that would take
the held bytes past `hard_limit` raises `OutputOverflow`: the driver closes
that client and calls `drop`. Nothing else is ever refused.

Invariants: `pending_bytes` is the sum of held writes; released writes keep
write order; a write is released at most once and never before its epoch
is released.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from servergroup.common.errors import LocalError, UsageError


class OutputOverflow(LocalError):
    """A write would take the held output past the hard limit."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Send:
    """Bytes to write to client `conn` now."""

    conn: int
    data: bytes


@dataclass(frozen=True, slots=True)
class _Held:
    epoch: int
    conn: int
    data: bytes


class OutputBuffer:
    """See the module docstring."""

    def __init__(
        self,
        *,
        limit: int = 16 * 1024 * 1024,
        hard_limit: int | None = None,
        buffering: bool = True,
        epoch: int = 1,
    ) -> None:
        if limit <= 0:
            raise UsageError("the output buffer's limit must be positive.")
        self.limit = limit
        self.hard_limit = 4 * limit if hard_limit is None else hard_limit
        if self.hard_limit < limit:
            raise UsageError("the output buffer's hard limit must be at least its limit.")
        self.buffering = buffering
        #: The epoch whose output is being collected.
        self.epoch = epoch
        self._held: deque[_Held] = deque()
        self.pending_bytes = 0

    @property
    def full(self) -> bool:
        """At or past the limit: stop dispatching input and checkpoint early."""
        return self.pending_bytes >= self.limit

    @property
    def held_epochs(self) -> tuple[int, ...]:
        """The epochs with output held, oldest first."""
        return tuple(sorted({held.epoch for held in self._held}))

    def write(self, conn: int, data: bytes) -> list[Send]:
        """Hold `data` for client `conn` until the running epoch commits (or pass it)."""
        if not data:
            return []
        if not self.buffering:
            return [Send(conn=conn, data=data)]
        if self.pending_bytes + len(data) > self.hard_limit:
            raise OutputOverflow(
                f"client {conn}'s output would take the held output past {self.hard_limit} bytes."
            )
        self._held.append(_Held(self.epoch, conn, data))
        self.pending_bytes += len(data)
        return []

    def seal(self, epoch: int) -> None:
        """Epoch `epoch` is captured: later writes belong to the next one."""
        if epoch != self.epoch:
            raise UsageError(f"sealing epoch {epoch} while collecting epoch {self.epoch}.")
        self.epoch = epoch + 1

    def release(self, epoch: int) -> list[Send]:
        """Every held write of epochs up to `epoch`, in write order."""
        if epoch >= self.epoch:
            raise UsageError(f"epoch {epoch} is not sealed yet; output may not leave.")
        out: list[Send] = []
        held = self._held
        # Writes are appended in epoch order, so the releasable ones are a prefix.
        while held and held[0].epoch <= epoch:
            item = held.popleft()
            self.pending_bytes -= len(item.data)
            out.append(Send(conn=item.conn, data=item.data))
        return out

    def drop(self, conn: int) -> int:
        """Forget client `conn`'s held output; returns the bytes forgotten."""
        kept = deque(item for item in self._held if item.conn != conn)
        freed = self.pending_bytes - sum(len(item.data) for item in kept)
        self._held = kept
        self.pending_bytes -= freed
        return freed

    def discard(self) -> int:
        """Forget every held write (the primary stops); returns the bytes forgotten."""
        freed = self.pending_bytes
        self._held.clear()
        self.pending_bytes = 0
        return freed
