"""The dashboard's feed (`api.events.Feed`) on the session's real etcd.

Its read is a small one of the test's own (the keys under `k/`), so each
test can tell exactly what a snapshot holds; `read_snapshot` itself is what
the browser test's page shows. Checked: every client gets the snapshot, a
change under the namespace gives a new one, a change that does not alter
what is shown sends nothing, a client that did not read skips to the
newest, etcd failing shows an error on the last snapshot and recovers, the
last client leaving stops the watch, and `close()` ends every stream.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest

from servergroup.api.events import Feed
from servergroup.config import CoordinationConfig
from servergroup.coordination import StoreUnavailable
from servergroup.coordination.etcd import EtcdCoordinator
from servergroup.coordination.etcd_process import EtcdCluster
from tests.fixtures.services import until

pytestmark = pytest.mark.timeout(60)

STEP = 10.0  # how long one snapshot may take to arrive (a loaded machine)


async def snapshot(stream: AsyncIterator[bytes]) -> dict[str, Any]:
    """The next snapshot of `stream` (comment lines and the retry hint are skipped)."""
    async with asyncio.timeout(STEP):
        async for block in stream:
            if block.startswith(b"event: snapshot\n"):
                data = block.split(b"\ndata: ", 1)[1].rstrip(b"\n")
                return json.loads(data)  # type: ignore[no-any-return]
    raise AssertionError("the stream ended")


@pytest.fixture
async def store(etcd_server: EtcdCluster) -> AsyncIterator[EtcdCoordinator]:
    prefix = f"/sgtest/feed-{secrets.token_hex(4)}/"
    config = CoordinationConfig(prefix=prefix)
    async with EtcdCoordinator(etcd_server.endpoints, prefix=prefix, config=config) as c:
        yield c
        await c.delete_prefix("")


async def test_every_client_follows_the_changes_and_the_last_one_stops_the_watch(
    store: EtcdCoordinator,
) -> None:
    reads = 0
    fail = asyncio.Event()

    async def read() -> dict[str, Any]:
        nonlocal reads
        reads += 1
        if fail.is_set():
            fail.clear()
            raise StoreUnavailable("etcd did not answer in time")
        r = await store.get_prefix("k/")
        return {"keys": {kv.key: kv.value.decode() for kv in r.items}, "error": None}

    feed = Feed(store, read, settle=0.05, retry=0.2, keepalive=0.3)
    a, b = feed.stream(), feed.stream()
    assert (await snapshot(a))["keys"] == {}
    assert (await snapshot(b))["keys"] == {}
    assert feed.listeners == 2

    await store.put("k/x", b"1")
    assert (await snapshot(a))["keys"] == {"k/x": "1"}

    # A write that changes nothing shown is read, and sends nothing.
    before = reads
    await store.put("other/y", b"2")
    await until(lambda: reads > before, "read again after the other write", STEP)
    await store.put("k/z", b"3")
    assert (await snapshot(a))["keys"] == {"k/x": "1", "k/z": "3"}

    # b read nothing meanwhile: it skips to the newest.
    assert (await snapshot(b))["keys"] == {"k/x": "1", "k/z": "3"}

    # etcd failing: the last snapshot again, with the error; then it recovers.
    fail.set()
    await store.put("k/w", b"4")
    failed = await snapshot(a)
    assert failed["error"] is not None
    assert "etcd did not answer" in failed["error"]
    assert failed["keys"] == {"k/x": "1", "k/z": "3"}
    recovered = await snapshot(a)
    assert recovered == {"keys": {"k/x": "1", "k/z": "3", "k/w": "4"}, "error": None}

    # The last client leaving stops the watch; a new one starts it again.
    await a.aclose()
    assert feed.listeners == 1
    await b.aclose()
    assert feed.listeners == 0
    before = reads
    await store.put("k/v", b"5")
    await asyncio.sleep(0.5)  # nothing to wait for: the point is that nothing happens
    assert reads == before

    c = feed.stream()
    assert (await snapshot(c))["keys"]["k/v"] == "5"
    await feed.close()
    async with asyncio.timeout(STEP):
        rest = [block async for block in c]
    assert not any(block.startswith(b"event:") for block in rest)
