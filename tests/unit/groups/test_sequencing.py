"""The pure bookkeeping of batched broadcasts: batch sizes, cumulative acks, seqs delivered."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from servergroup.groups.sequencing import Ack, Admitted, SeqTracker, cumulative_acks, take_batch

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


# -- SeqTracker ------------------------------------------------------------------------------


def test_overlap_gap_and_a_new_key() -> None:
    t = SeqTracker()
    assert t.admit("g", 7, 1, 3) == Admitted(skip=0, missed=0)
    assert t.admit("g", 7, 2, 4) == Admitted(skip=2, missed=0)  # only 4 and 5 are new
    assert t.admit("g", 7, 1, 5) is None  # all delivered
    assert t.admit("g", 7, 8, 2) == Admitted(skip=0, missed=2)  # 6 and 7 never seen
    assert t.admit("g", 9, 1, 1) == Admitted(skip=0, missed=0)  # deleted, made again
    assert t.admit("g", 9, 3, 1) == Admitted(skip=0, missed=1)
    assert t.last("g") == (9, 3)
    t.forget("g")
    assert t.admit("g", 9, 40, 2) == Admitted(skip=0, missed=0)  # nothing to compare with
    t.start_at("h", 5, 10)
    assert t.admit("h", 5, 10, 1) is None
    assert t.admit("h", 5, 11, 1) == Admitted(skip=0, missed=0)


batches = st.lists(
    st.tuples(st.integers(min_value=1, max_value=60), st.integers(min_value=1, max_value=10)),
    max_size=30,
)


@given(batches)
def test_delivered_seqs_only_increase_and_every_hole_is_counted_once(
    seen: list[tuple[int, int]],
) -> None:
    """Any batches of one key, in any order (re-reads, overlaps, gaps): what is
    delivered is strictly increasing, and delivered + missed covers every seq from
    the first delivered to the last, exactly once."""
    t = SeqTracker()
    delivered: list[int] = []
    missed = 0
    for first, count in seen:
        admitted = t.admit("g", 1, first, count)
        if admitted is None:
            continue
        missed += admitted.missed
        delivered += range(first + admitted.skip, first + count)
    assert delivered == sorted(set(delivered))
    if delivered:
        assert len(delivered) + missed == delivered[-1] - delivered[0] + 1
