"""The group service's batches: an item's size is what the encoder writes; a batch kept
by its bytes is the batch those bytes decode to."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from servergroup.groups.service import _BATCH_OVERHEAD, _Decoded, _item_size
from servergroup.servers.model import (
    NAME_PATTERN,
    BroadcastBatch,
    BroadcastItem,
    decode_batch,
    encode_batch,
)

_items = st.builds(
    BroadcastItem,
    sender=st.text(max_size=30),
    sender_instance=st.text(max_size=40),
    text=st.text(max_size=200),
)


@given(_items)
def test_an_items_size_is_its_compact_json_list_and_a_comma(item: BroadcastItem) -> None:
    compact = json.dumps([item.sender, item.sender_instance, item.text], separators=(",", ":"))
    assert _item_size(item) == len(compact) + 1


@given(
    st.lists(_items, min_size=1, max_size=20),
    st.from_regex(NAME_PATTERN, fullmatch=True),
    st.from_regex(NAME_PATTERN, fullmatch=True),
    st.integers(min_value=20, max_value=2**63),
)
def test_a_batch_is_never_larger_than_its_items_sizes_and_the_overhead(
    items: list[BroadcastItem], group: str, host: str, host_total: int
) -> None:
    batch = BroadcastBatch(
        group=group,
        host=host,
        host_total=host_total,
        sent_at="2026-12-06T14:00:00.000+00:00",
        items=tuple(items),
    )
    assert len(encode_batch(batch)) <= _BATCH_OVERHEAD + sum(_item_size(i) for i in items)


_batches = st.builds(
    BroadcastBatch,
    group=st.text(max_size=20),
    host=st.text(max_size=20),
    host_total=st.integers(min_value=10, max_value=2**62),
    sent_at=st.text(max_size=30),
    items=st.lists(_items, min_size=1, max_size=10).map(tuple),
)


@given(_batches)
def test_a_batch_kept_by_its_bytes_is_what_they_decode_to(batch: BroadcastBatch) -> None:
    value = encode_batch(batch)
    decoded = _Decoded()
    decoded.put(value, batch)
    assert decoded.decode(value) == decode_batch(value) == batch
    assert decoded.decode(value) == batch  # taken once, then decoded again: the same


def test_kept_batches_are_bounded_oldest_first() -> None:
    decoded = _Decoded()
    batches = [
        BroadcastBatch(
            group="g", host="h", host_total=n, sent_at="t", items=(BroadcastItem("a", "b", "c"),)
        )
        for n in range(1, _Decoded.LIMIT + 3)
    ]
    for b in batches:
        decoded.put(encode_batch(b), b)
    assert len(decoded._batches) == _Decoded.LIMIT
    assert encode_batch(batches[0]) not in decoded._batches
    assert decoded.decode(encode_batch(batches[-1])) is batches[-1]
