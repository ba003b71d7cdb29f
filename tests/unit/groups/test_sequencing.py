"""The pure bookkeeping of batched broadcasts: batch sizes, cumulative acks, seqs from totals."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given
from hypothesis import strategies as st

from servergroup.groups.sequencing import (
    Ack,
    GroupFeed,
    HostTotal,
    Numbered,
    cumulative_acks,
    take_batch,
)

# -- take_batch ------------------------------------------------------------------------------


@given(
    sizes=st.lists(st.integers(min_value=1, max_value=5000), max_size=60),
    max_items=st.integers(min_value=1, max_value=20),
    max_bytes=st.integers(min_value=1, max_value=20_000),
    overhead=st.integers(min_value=0, max_value=300),
)
def test_take_batch_respects_both_bounds_and_always_progresses(
    sizes: list[int], max_items: int, max_bytes: int, overhead: int
) -> None:
    n = take_batch(sizes, max_items=max_items, max_bytes=max_bytes, overhead=overhead)
    assert 0 <= n <= min(len(sizes), max_items)
    if sizes:
        assert n >= 1  # one broadcast always goes, even alone over the byte bound
    if n > 1:
        assert overhead + sum(sizes[:n]) <= max_bytes
    if 0 < n < min(len(sizes), max_items):
        assert overhead + sum(sizes[: n + 1]) > max_bytes  # it took as many as fit


def test_take_batch_examples() -> None:
    assert take_batch([], max_items=10, max_bytes=100) == 0
    assert take_batch([10] * 30, max_items=10, max_bytes=1000) == 10
    assert take_batch([40, 40, 40], max_items=10, max_bytes=100) == 2
    assert take_batch([500, 1], max_items=10, max_bytes=100) == 1
    assert take_batch([40, 40], max_items=10, max_bytes=100, overhead=30) == 1


# -- cumulative_acks -----------------------------------------------------------------------


def test_one_ack_per_sender_with_its_highest_id_and_that_seq() -> None:
    senders = [("x", 4), ("y", None), ("x", 5), ("z", 0), ("y", None), ("x", 3)]
    assert cumulative_acks(10, senders) == {
        "x": Ack(id=5, seq=12),
        "z": Ack(id=0, seq=13),
    }
    assert cumulative_acks(1, [("old", None)]) == {}


@given(
    first_seq=st.integers(min_value=1, max_value=10**9),
    senders=st.lists(
        st.tuples(st.sampled_from("abc"), st.none() | st.integers(min_value=0, max_value=50)),
        max_size=40,
    ),
)
def test_acks_name_the_highest_id_of_each_sender(
    first_seq: int, senders: list[tuple[str, int | None]]
) -> None:
    acks = cumulative_acks(first_seq, senders)
    assert set(acks) == {who for who, ident in senders if ident is not None}
    for who, ack in acks.items():
        ids = [ident for w, ident in senders if w == who and ident is not None]
        assert ack.id == max(ids)
        assert senders[ack.seq - first_seq] == (who, ack.id)


# -- GroupFeed: seqs from the hosts' totals -------------------------------------------------


def test_seqs_from_totals_overlap_gap_and_a_new_group() -> None:
    feed = GroupFeed({"h1": HostTotal(5, 3), "h2": HostTotal(6, 2)})  # 5 stored before
    assert (feed.total, feed.last) == (5, 5)
    assert feed.put("h2", 6, 4, 2) == Numbered(first_seq=6, count=2, skip=0, missed=0)
    assert feed.put("h3", 9, 1, 1) == Numbered(first_seq=8, count=1, skip=0, missed=0)
    assert feed.put("h1", 5, 6, 3) == Numbered(first_seq=9, count=3, skip=0, missed=0)
    # A compaction: h1 wrote 4 more in two batches, h2 one more; h1's last batch is latest.
    read = {"h1": HostTotal(5, 10), "h2": HostTotal(6, 5), "h3": HostTotal(9, 1)}
    assert feed.reread(read, 3) == Numbered(first_seq=14, count=3, skip=0, missed=2)
    assert feed.reread(read, 3) == Numbered(first_seq=14, count=3, skip=3, missed=0)
    for host in ("h1", "h2", "h3"):  # the group deleted: its keys go one by one
        feed.delete(host)
    assert (feed.total, feed.last) == (0, 0)
    assert feed.put("h2", 20, 2, 2) == Numbered(first_seq=1, count=2, skip=0, missed=0)
    # Deleted and made again while this host was away: a known key was made again.
    assert feed.reread({"h2": HostTotal(30, 4)}, 1) == Numbered(
        first_seq=4, count=1, skip=0, missed=3
    )


@dataclass
class _Receiver:
    """A host following the group: what it delivered, per life of the group, and missed."""

    feed: GroupFeed
    life: int
    base: dict[int, int]  # life -> the seq taken as delivered when following began
    delivered: list[tuple[int, int]] = field(default_factory=list)  # (life, seq) in order
    missed: dict[int, int] = field(default_factory=dict)
    behind: bool = False  # its watch skipped writes: it reads the keys again before the next


_ops = st.lists(
    st.one_of(
        # (host, items, whether the receiver's watch sees it or a compaction skips it)
        st.tuples(st.sampled_from(["h1", "h2", "h3"]), st.integers(1, 5), st.booleans()),
        st.tuples(st.just("delete"), st.just(0), st.booleans()),
    ),
    max_size=40,
)


@given(_ops, st.integers(min_value=0, max_value=40), st.booleans())
def test_every_host_numbers_each_write_as_the_store_ordered_it(
    ops: list[tuple[str, int, bool]], start: int, all_seen: bool
) -> None:
    """Hosts write batches to their own keys in any interleaving; the group is
    deleted and made again; a receiver starts anywhere and its watch skips some
    writes (compaction), after which it reads the keys again. Every item it
    delivers has the seq of the writes' order (every host agrees), the seqs of
    one life of the group only increase, and delivered + missed covers every
    seq from its start to the last it delivered, each once. Seeing every write,
    it misses nothing."""
    store: dict[str, HostTotal] = {}
    revision = 0
    life = 0
    group_total = 0  # the truth: the seq of the last item written in this life
    latest = 0  # items of the last write (the latest batch) in this life
    receiver: _Receiver | None = None

    def follow() -> _Receiver:
        return _Receiver(feed=GroupFeed(store), life=life, base={life: group_total})

    def deliver(r: _Receiver, numbered: Numbered, truth_first: int) -> None:
        assert numbered.first_seq == truth_first
        if numbered.missed:
            r.missed[r.life] = r.missed.get(r.life, 0) + numbered.missed
        r.delivered += [
            (r.life, numbered.first_seq + i) for i in range(numbered.skip, numbered.count)
        ]

    for i, (host, count, seen) in enumerate(ops):
        if i == start:
            receiver = follow()
        seen = seen or all_seen
        r = receiver
        if r is not None and seen and r.behind:
            # The watch resumed past a compaction: the keys as they are now, the latest batch.
            r.life = life
            r.base.setdefault(life, 0)
            numbered = r.feed.reread(store, latest if store else 0)
            deliver(r, numbered, group_total - (latest if store else 0) + 1)
            r.behind = False
        if host == "delete":
            lost = list(store)
            store.clear()
            revision += 1
            life += 1
            group_total = latest = 0
            if r is not None:
                if seen and not r.behind:
                    for h in lost:
                        r.feed.delete(h)
                    r.life = life
                    r.base.setdefault(life, 0)
                else:
                    r.behind = True
            continue
        revision += 1
        old = store.get(host)
        store[host] = HostTotal(
            old.create_revision if old is not None else revision,
            (old.total if old is not None else 0) + count,
        )
        truth_first = group_total + 1
        group_total += count
        latest = count
        if r is not None:
            if seen and not r.behind:
                deliver(
                    r,
                    r.feed.put(host, store[host].create_revision, store[host].total, count),
                    truth_first,
                )
            else:
                r.behind = True

    if receiver is None:
        return
    seqs = receiver.delivered
    assert len(seqs) == len(set(seqs))
    for life_of in {lf for lf, _ in seqs}:
        mine = [seq for lf, seq in seqs if lf == life_of]
        assert mine == sorted(mine)
        base = receiver.base[life_of]
        assert len(mine) + receiver.missed.get(life_of, 0) == mine[-1] - base
    if all_seen:
        assert receiver.missed == {}
