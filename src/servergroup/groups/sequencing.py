"""The bookkeeping of batched broadcasts, pure: what to write next, to deliver, to acknowledge.

Theory of operation (docs/design/messaging.md, "Broadcast order and sequence
number"): each write to `broadcasts/<group>` is one batch, item i numbered
`first_seq + i`. The group service keeps three small decisions apart from its
I/O so that they can be tested on their own:

- `take_batch(sizes, ...)`: how many of the waiting broadcasts, in order, go
  into the next transaction: at least one, at most `max_items`, and no more
  than `max_bytes` of encoded value once one is in.
- `cumulative_acks(first_seq, senders)`: for a stored batch, one
  acknowledgement per sender (its highest id, with that broadcast's seq);
  broadcasts without an id get none.
- `SeqTracker.admit(group, create_revision, first_seq, count)`: for a batch
  seen by a receiving host, which of its items are new. Invariant, for any
  sequence of batches: the seqs a host delivers for one key (one create
  revision) are strictly increasing, so never one twice nor out of order;
  every seq skipped over between two delivered ones is counted once as
  missed. A new create revision (the group deleted and made again) starts
  the numbering again; the first batch after a group gets a server here is
  taken as it is (there is nothing to compare it with).

No I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import TypeVar

K = TypeVar("K", bound=Hashable)


def take_batch(sizes: Sequence[int], *, max_items: int, max_bytes: int, overhead: int = 0) -> int:
    """How many of the leading `sizes` (encoded bytes of each) fit one transaction.

    At least one when there is any (a single broadcast larger than `max_bytes`
    still goes, alone: the text limit keeps it far below what etcd accepts).
    """
    total = overhead
    count = 0
    for size in sizes:
        if count >= max_items or (count and total + size > max_bytes):
            break
        total += size
        count += 1
    return count


@dataclass(frozen=True, slots=True, kw_only=True)
class Ack:
    """The acknowledgement one sender gets for a stored batch."""

    id: int
    seq: int


def cumulative_acks(first_seq: int, senders: Sequence[tuple[K, int | None]]) -> dict[K, Ack]:
    """One `Ack` per sender of the batch: its highest id and the seq that broadcast got.

    `senders[i]` is who sent item i (any hashable, e.g. (instance, address))
    and its id, or None for a broadcast that asked for no acknowledgement.
    """
    acks: dict[K, Ack] = {}
    for i, (who, ident) in enumerate(senders):
        if ident is None:
            continue
        best = acks.get(who)
        if best is None or ident >= best.id:
            acks[who] = Ack(id=ident, seq=first_seq + i)
    return acks


@dataclass(frozen=True, slots=True, kw_only=True)
class Admitted:
    """What to do with a batch: deliver its items from `skip` on; `missed` seqs came before."""

    skip: int
    missed: int

    @property
    def gap(self) -> bool:
        return self.missed > 0


class SeqTracker:
    """Per group: the key's create revision and the last seq delivered."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[int, int]] = {}

    def start_at(self, group: str, create_revision: int, last_seq: int) -> None:
        """Take `last_seq` as delivered already (what the key held when following began)."""
        self._last[group] = (create_revision, last_seq)

    def forget(self, group: str) -> None:
        """The group's key was deleted, or the group is no longer followed."""
        self._last.pop(group, None)

    def last(self, group: str) -> tuple[int, int] | None:
        """(create revision, last seq delivered) of `group`, or None."""
        return self._last.get(group)

    def clear(self) -> None:
        self._last.clear()

    def admit(
        self, group: str, create_revision: int, first_seq: int, count: int
    ) -> Admitted | None:
        """The part of a batch (seqs `first_seq` .. `first_seq + count - 1`) to deliver.

        None when every item was delivered already. Records the batch's last
        seq as delivered.
        """
        seen = self._last.get(group)
        if seen is None:
            last = first_seq - 1  # the first since the group has a server here
        elif seen[0] != create_revision:
            last = 0  # the group was deleted and created again: numbered from 1
        else:
            last = seen[1]
        last_seq = first_seq + count - 1
        if last_seq <= last:
            return None
        self._last[group] = (create_revision, last_seq)
        return Admitted(skip=max(0, last + 1 - first_seq), missed=max(0, first_seq - last - 1))


__all__ = ["Ack", "Admitted", "SeqTracker", "cumulative_acks", "take_batch"]
