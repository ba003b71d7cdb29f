"""The bookkeeping of batched broadcasts, pure: what to write next, to deliver, to acknowledge.

Theory of operation (docs/design/messaging.md, "Broadcast order and sequence
number"): each host writes its batches of group G to its own key
`broadcasts/<G>/<host>`, and every batch carries its writer's `host_total`
(the host's broadcasts of G stored so far, this batch's included). The
group's order is the store's order of those writes; its seq is agreed by
every host without any compare between hosts: once a batch of n items is
written, the group has sum(latest host_total of every host) broadcasts, so
its items are that sum - n + 1 ... that sum. The group service keeps these
decisions apart from its I/O so that they can be tested on their own:

- `take_batch(sizes, ...)`: how many of the waiting broadcasts, in order, go
  into the next transaction: at least one, at most `max_items`, and no more
  than `max_bytes` of encoded value once one is in.
- `cumulative_acks(first_seq, senders)`: for a stored batch, one
  acknowledgement per sender (its highest id, with that broadcast's seq);
  broadcasts without an id get none.
- `GroupFeed`: one receiving host's view of one group: each host's latest
  total (and its key's create revision), their sum, and the last seq
  delivered. `put` numbers a batch seen by the watch and says which of its
  items are new; `delete` forgets a host's key (when the group's keys are
  all gone, it numbers from 1 again); `reread` takes the totals read after
  a compaction and numbers the latest batch. Invariants, for any sequence
  of writes by any hosts and any compactions: every item a host delivers
  has the seq the writes' order gives it (so every host numbers alike), the
  seqs delivered are strictly increasing (never one twice nor out of
  order), and every seq skipped between two delivered ones is counted once
  as missed.

No I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
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


@dataclass(frozen=True, slots=True)
class HostTotal:
    """A host's key of a group: its create revision, and the `host_total` it holds."""

    create_revision: int
    total: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Numbered:
    """A batch of `count` items numbered `first_seq` on: deliver from item `skip` on.

    `missed` seqs came before it that this host never delivered (a gap).
    """

    first_seq: int
    count: int
    skip: int
    missed: int

    @property
    def fresh(self) -> bool:
        """Whether any item of the batch is new here."""
        return self.skip < self.count

    @property
    def gap(self) -> bool:
        return self.missed > 0


def first_seq(group_total: int, count: int) -> int:
    """The seq of the first of `count` items whose write brought the group to `group_total`."""
    return group_total - count + 1


class GroupFeed:
    """One group as a receiving host follows it: hosts' totals, their sum, the last delivered.

    Made from the totals read at the revision the watch starts after; what
    that read counted is taken as delivered already.
    """

    __slots__ = ("_last", "_sum", "_totals")

    def __init__(self, totals: Mapping[str, HostTotal] | None = None) -> None:
        self._totals: dict[str, HostTotal] = dict(totals or {})
        self._sum = sum(t.total for t in self._totals.values())
        self._last = self._sum

    @property
    def total(self) -> int:
        """The group's broadcasts so far: the sum of every host's latest total."""
        return self._sum

    @property
    def last(self) -> int:
        """The last seq delivered (or taken as delivered)."""
        return self._last

    def totals(self) -> dict[str, HostTotal]:
        return dict(self._totals)

    def put(self, host: str, create_revision: int, host_total: int, count: int) -> Numbered:
        """`host` wrote a batch of `count` items bringing its total to `host_total`."""
        old = self._totals.get(host)
        self._sum += host_total - (old.total if old is not None else 0)
        self._totals[host] = HostTotal(create_revision, host_total)
        return self._admit(first_seq(self._sum, count), count)

    def delete(self, host: str) -> None:
        """`host`'s key was deleted: with the group's last key gone, it numbers from 1 again."""
        old = self._totals.pop(host, None)
        if old is not None:
            self._sum -= old.total
        if not self._totals:
            self._sum = self._last = 0

    def reread(self, totals: Mapping[str, HostTotal], latest_count: int) -> Numbered:
        """The group's keys as read again (after a compaction), and the latest batch numbered.

        `latest_count` is the item count of the batch written last (the key
        with the highest mod revision), 0 when there is none to deliver; its
        items are the group's last. A key known before that is gone or made
        again means the group was deleted meanwhile: it numbers from 1 again.
        What lies between the last delivered and that batch is missed.
        """
        restarted = any(
            (now := totals.get(host)) is None or now.create_revision != old.create_revision
            for host, old in self._totals.items()
        )
        self._totals = dict(totals)
        self._sum = sum(t.total for t in self._totals.values())
        if restarted or not self._totals:
            self._last = 0
        return self._admit(first_seq(self._sum, latest_count), latest_count)

    def _admit(self, first: int, count: int) -> Numbered:
        last = self._last
        end = first + count - 1
        if end <= last:
            return Numbered(first_seq=first, count=count, skip=count, missed=0)
        self._last = end
        return Numbered(
            first_seq=first,
            count=count,
            skip=max(0, last + 1 - first),
            missed=max(0, first - last - 1),
        )


__all__ = [
    "Ack",
    "GroupFeed",
    "HostTotal",
    "Numbered",
    "cumulative_acks",
    "first_seq",
    "take_batch",
]
