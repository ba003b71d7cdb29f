"""A node's authority on both stores: the pair's key followed from a snapshot, not its past."""

from __future__ import annotations

import asyncio

import pytest

from servergroup.config import CoordinationConfig
from servergroup.replication.authority import Authority
from servergroup.replication.pair import PairKey, PairRecord
from tests.fixtures.coordinators import CoordinatorFactory

pytestmark = pytest.mark.timeout(30)


async def test_a_new_pair_of_an_old_name_is_not_fenced_by_the_old_pairs_history(
    make_coordinator: CoordinatorFactory,
) -> None:
    old = PairKey(make_coordinator(), "kv")
    first = await old.establish("a")
    third = await old.claim((await old.attach_backup(first.generation, "a", "b")).generation, "b")  # type: ignore[union-attr]
    assert third is not None
    assert third.generation == 3
    assert await old.remove()

    authority = Authority(make_coordinator(), CoordinationConfig(), pair="kv", node="c")
    await authority.start()
    seen: list[PairRecord] = []
    arrived = asyncio.Event()

    def on_record(record: PairRecord) -> None:
        seen.append(record)
        arrived.set()

    try:
        record, since = await authority.snapshot()
        assert record is None
        authority.follow(on_record, lambda reason: None, since=since)
        await PairKey(make_coordinator(), "kv").establish("d")
        await asyncio.wait_for(arrived.wait(), 10)
        assert seen == [PairRecord(generation=1, active="d")]
        assert authority.may_act()
    finally:
        await authority.close()
