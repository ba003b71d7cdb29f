"""The pair's key on both coordinator backends (memory, and a real etcd): exclusive claims."""

from __future__ import annotations

import asyncio

import pytest

from servergroup.common.errors import UsageError
from servergroup.replication.pair import (
    PairError,
    PairKey,
    PairRecord,
    decode_pair,
    encode_pair,
)
from tests.fixtures.coordinators import CoordinatorFactory

pytestmark = pytest.mark.timeout(60)
WAIT = 20.0


def test_the_record_round_trips_and_garbage_is_one_error() -> None:
    record = PairRecord(generation=3, active="h1", backup="h2")
    assert decode_pair(encode_pair(record)) == record
    for raw in (b"", b"[]", b'{"generation": 0, "active": "a", "backup": null}',
                b'{"generation": true, "active": "a", "backup": null}',
                b'{"generation": 1, "active": 5, "backup": null}', b"\xff"):  # fmt: skip
        with pytest.raises(PairError):
            decode_pair(raw)


async def test_establish_is_ours_once_and_refuses_another_node(
    make_coordinator: CoordinatorFactory,
) -> None:
    pair = PairKey(make_coordinator(), "kv")
    assert await pair.establish("h1") == PairRecord(generation=1, active="h1")
    assert await pair.establish("h1") == PairRecord(generation=1, active="h1")
    with pytest.raises(UsageError, match="'kv' is active on h1, not on h2"):
        await pair.establish("h2")
    with pytest.raises(UsageError):
        PairKey(make_coordinator(), "a/b")


async def test_of_two_racing_claims_from_one_generation_exactly_one_wins(
    make_coordinator: CoordinatorFactory,
) -> None:
    primary = PairKey(make_coordinator(), "kv")
    backup = PairKey(make_coordinator(), "kv")
    await primary.establish("h1")
    attached = await primary.attach_backup(1, "h1", "h2")
    assert attached == PairRecord(generation=2, active="h1", backup="h2")
    assert attached is not None
    generation = attached.generation
    for _ in range(5):
        results = await asyncio.gather(
            primary.claim(generation, "h1"), backup.claim(generation, "h2")
        )
        winners = [r for r in results if r is not None]
        assert len(winners) == 1
        won = winners[0]
        assert won.generation == generation + 1
        assert won.backup is None
        # The loser's stale generation can change nothing any more.
        assert await backup.claim(generation, "h2") is None
        assert await primary.attach_backup(generation, "h1", "h3") is None
        generation = won.generation
    current, revision = await primary.read()
    assert current is not None
    assert current.generation == generation
    assert revision > 0


async def test_changes_follow_the_record(make_coordinator: CoordinatorFactory) -> None:
    pair = PairKey(make_coordinator(), "kv")
    await pair.establish("h1")
    _, revision = await pair.read()
    changes = pair.changes(revision + 1)
    await pair.attach_backup(1, "h1", "h2")
    await pair.claim(2, "h2")
    async with asyncio.timeout(WAIT):
        assert await anext(changes) == PairRecord(generation=2, active="h1", backup="h2")
        assert await anext(changes) == PairRecord(generation=3, active="h2")
    await changes.aclose()
