"""The group service's size of a broadcast in a batch is what the batch encoder writes."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from servergroup.groups.service import _BATCH_OVERHEAD, _item_size
from servergroup.servers.model import BroadcastBatch, BroadcastItem, encode_batch

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


@given(st.lists(_items, min_size=1, max_size=20), st.text(max_size=60))
def test_a_batch_is_never_larger_than_its_items_sizes_and_the_overhead(
    items: list[BroadcastItem], group: str
) -> None:
    batch = BroadcastBatch(
        group=group[:40], first_seq=1, sent_at="2026-12-06T14:00:00.000+00:00", items=tuple(items)
    )
    assert len(encode_batch(batch)) <= _BATCH_OVERHEAD + sum(_item_size(i) for i in items)
