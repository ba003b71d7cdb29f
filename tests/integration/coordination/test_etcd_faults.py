"""Faults against real etcd processes: member loss, store freeze, reconnects, frozen owners."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from servergroup.config import CoordinationConfig
from servergroup.coordination import (
    EtcdCoordinator,
    EventKind,
    Ownership,
    OwnershipAcquired,
    OwnershipLost,
    Session,
    SessionState,
)
from tests.fixtures.wait import eventually

CONFIG = CoordinationConfig()


async def test_operations_continue_when_members_die(etcd_cluster: Any, etcd_prefix: str) -> None:
    """kill -9 of the member we talk to, then of the leader: operations go on."""
    async with EtcdCoordinator(etcd_cluster.endpoints, prefix=etcd_prefix, config=CONFIG) as c:
        await c.put("k", b"0")
        connected = next(m for m in etcd_cluster.members if m.endpoint == c.endpoint)
        connected.kill()
        await c.put("k", b"1")
        kv = await c.get("k")
        assert kv is not None
        assert kv.value == b"1"
        assert c.endpoint != connected.endpoint

        connected.restart()
        etcd_cluster.wait_healthy(15.0)
        leader = etcd_cluster.leader(timeout=10.0)
        leader.kill()
        for i in range(2, 12):
            await c.put("k", str(i).encode())
        kv = await c.get("k")
        assert kv is not None
        assert kv.value == b"11"
        assert leader.endpoint != c.endpoint
        new_leader = etcd_cluster.leader(timeout=10.0)
        assert new_leader is not leader


async def test_watch_resumes_after_member_kill_without_loss_or_repeat(
    etcd_cluster: Any, etcd_prefix: str
) -> None:
    """A counter of puts, watched across a forced reconnect: every value exactly once."""
    total = 300
    watcher = EtcdCoordinator(etcd_cluster.endpoints, prefix=etcd_prefix, config=CONFIG)
    start = (await watcher.get_prefix("")).revision + 1
    watch = await watcher.watch("counter", start_revision=start)
    watched_member = next(m for m in etcd_cluster.members if m.endpoint == watcher.endpoint)
    # The writer talks only to a member that stays up, so each put happens once.
    other = next(m for m in etcd_cluster.members if m is not watched_member)
    writer = EtcdCoordinator([other.endpoint], prefix=etcd_prefix, config=CONFIG)
    seen: list[int] = []

    async def read() -> None:
        async for ev in watch:
            assert ev.kind is EventKind.PUT
            seen.append(int(ev.value))
            if len(seen) >= total:
                return

    reader = asyncio.create_task(read())
    try:
        for i in range(total):
            await writer.put("counter", str(i).encode())
            if i == total // 3:
                watched_member.kill()
        await asyncio.wait_for(reader, 20.0)
    finally:
        reader.cancel()
        await watch.close()
        await writer.close()
        await watcher.close()
    assert seen == list(range(total))
    assert watcher.generation >= 1, "the watcher never reconnected: the test proved nothing"


async def test_watch_resumes_after_single_member_restart(
    etcd_single: Any, etcd_prefix: str
) -> None:
    member = etcd_single.members[0]
    async with EtcdCoordinator(etcd_single.endpoints, prefix=etcd_prefix, config=CONFIG) as c:
        start = (await c.get_prefix("")).revision + 1
        watch = await c.watch("n", start_revision=start)
        seen: list[tuple[int, bytes]] = []

        async def read() -> None:
            async for ev in watch:
                seen.append((ev.revision, ev.value))
                if ev.value == b"19":
                    return

        reader = asyncio.create_task(read())
        for i in range(10):
            await c.put("n", b"%d" % i)
        member.kill()
        member.restart()
        for i in range(10, 20):
            await c.put("n", b"%d" % i)
        await asyncio.wait_for(reader, 20.0)
        await watch.close()
    # Every revision once, in order. (A put whose answer the restart lost is sent again
    # and may land twice: two revisions of one value, both watched.)
    revisions = [r for r, _ in seen]
    assert revisions == sorted(set(revisions))
    assert [v for i, (_, v) in enumerate(seen) if i == 0 or seen[i - 1][1] != v] == [
        b"%d" % i for i in range(20)
    ]


async def test_store_frozen_past_ttl_owner_stops_before_expiry_and_recovers(
    etcd_single: Any, etcd_prefix: str
) -> None:
    """SIGSTOP of the whole store: the owner stops acting within its TTL, then recovers."""
    member = etcd_single.members[0]
    coord = EtcdCoordinator(etcd_single.endpoints, prefix=etcd_prefix, config=CONFIG)
    session = Session(coord, CONFIG, name="owner")
    await session.start()
    ownership = Ownership(session, "owners/svc", b"me")
    ownership.start()
    events: list[Any] = []
    acquired_seen = asyncio.Event()

    async def record() -> None:
        async for ev in ownership.events():
            events.append((time.monotonic(), ev))
            if isinstance(ev, OwnershipAcquired):
                acquired_seen.set()

    recorder = asyncio.create_task(record())
    acts: list[tuple[float, int]] = []

    async def work() -> None:
        while True:
            token = ownership.token
            if token is not None:
                acts.append((time.monotonic(), token))
            await asyncio.sleep(0.01)

    worker = asyncio.create_task(work())
    try:
        first = await ownership.wait_owner(5.0)
        await asyncio.sleep(0.5)
        frozen_at = time.monotonic()
        member.freeze()
        await asyncio.sleep(CONFIG.lease_ttl + 1.5)
        assert session.state is SessionState.LOST
        acquired_seen.clear()
        member.thaw()
        thawed_at = time.monotonic()
        second = await ownership.wait_owner(10.0)
        # The event is queued as the token is set; let the recorder take it in.
        async with asyncio.timeout(5.0):
            await acquired_seen.wait()
    finally:
        member.thaw()
        worker.cancel()
        recorder.cancel()
        await asyncio.gather(worker, recorder, return_exceptions=True)
        await ownership.resign()
        await session.close()
        await coord.close()

    lost = [t for t, ev in events if isinstance(ev, OwnershipLost) and ev.token == first]
    assert lost, "the owner never noticed it lost the store"
    # It stopped after the freeze and before the lease could expire at the store
    # (the last renewal it saw answered was sent before the freeze).
    assert frozen_at < lost[0] < frozen_at + CONFIG.lease_ttl
    last_stale_act = max(t for t, tok in acts if tok == first)
    assert last_stale_act < frozen_at + CONFIG.lease_ttl - CONFIG.fence_margin + 0.05
    assert all(t < thawed_at for t, tok in acts if tok == first)
    assert second > first
    acquired = [ev for _, ev in events if isinstance(ev, OwnershipAcquired)]
    assert [ev.token for ev in acquired][-1] == second


def contender_argv(key: str, name: str) -> list[str]:
    return [sys.executable, "-m", "servergroup", "election", "contend", key, "--name", name]


def events_of(handle: Any) -> list[dict[str, Any]]:
    out = []
    for line in handle.log_text().splitlines():
        if line.startswith("{"):
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if "event" in record:
                out.append(record)
    return out


async def test_frozen_owner_loses_to_higher_token_and_never_acts_stale(
    etcd_single: Any, etcd_prefix: str, daemon: Any
) -> None:
    env = {
        "SERVERGROUP_ETCD_ENDPOINTS": ",".join(str(e) for e in etcd_single.endpoints),
        "SERVERGROUP_PREFIX": etcd_prefix,
    }
    a = daemon(contender_argv("svc", "a"), env=env, name="contender-a")
    b = daemon(contender_argv("svc", "b"), env=env, name="contender-b")

    def acquired(h: Any) -> list[int]:
        return [e["token"] for e in events_of(h) if e["event"] == "acquired"]

    await eventually(lambda: bool(acquired(a) or acquired(b)), "a first owner", 10.0)
    owner, other = (a, b) if acquired(a) else (b, a)
    stale = acquired(owner)[0]
    await eventually(
        lambda: any(e["event"] == "acted" for e in events_of(owner)), "the owner acting", 5.0
    )
    owner.freeze()
    try:
        await eventually(lambda: bool(acquired(other)), "the takeover", 10.0)
        await asyncio.sleep(0.5)
        before_thaw = len(events_of(owner))
    finally:
        owner.thaw()
    new = acquired(other)[0]
    assert new > stale
    await eventually(
        lambda: any(e["event"] == "lost" for e in events_of(owner)[before_thaw:]),
        "the thawed owner learning it lost",
        5.0,
    )
    await asyncio.sleep(0.5)
    after = events_of(owner)[before_thaw:]
    stale_acts = [e for e in after if e["event"] in ("acted", "refused") and e["token"] == stale]
    assert stale_acts == [], f"the thawed owner acted with its stale token: {stale_acts}"

    # The protected resource only ever saw tokens in increasing order.
    async with EtcdCoordinator(etcd_single.endpoints, prefix=etcd_prefix, config=CONFIG) as c:
        watch = await c.watch("work/svc", start_revision=1)
        tokens: list[int] = []
        head = (await c.get_prefix("")).revision

        async def read() -> None:
            async for ev in watch:
                tokens.append(json.loads(ev.value)["token"])
                if ev.revision >= head:
                    return

        await asyncio.wait_for(read(), 10.0)
        await watch.close()
    assert tokens == sorted(tokens)
    assert stale in tokens
    assert new in tokens


async def test_a_watch_made_while_the_client_moves_on_still_delivers(
    etcd_server: Any, etcd_prefix: str
) -> None:
    """The client rotates at every moment of a watch being made: a watch that was made
    on the client being closed must follow the rotation, not wait on it for ever (the
    broadcasts of a group stopped reaching a host's members after one rotation)."""
    async with (
        EtcdCoordinator(etcd_server.endpoints, prefix=etcd_prefix, config=CONFIG) as c,
        EtcdCoordinator(etcd_server.endpoints, prefix=etcd_prefix, config=CONFIG) as writer,
    ):
        delays = [*(("rounds", n) for n in range(0, 40, 2)), *(("s", t / 5_000) for t in range(20))]
        for i, (kind, amount) in enumerate(delays):
            start = (await writer.get_prefix("")).revision + 1
            watch = await c.watch(f"w/{i}", start_revision=start)
            try:
                if kind == "rounds":
                    for _ in range(int(amount)):
                        await asyncio.sleep(0)
                else:
                    await asyncio.sleep(amount)
                c.rotate(c.generation)
                await writer.put(f"w/{i}", b"x")
                event = await asyncio.wait_for(anext(aiter(watch)), 10.0)
                assert (event.key, event.value) == (f"w/{i}", b"x"), (kind, amount)
            finally:
                await watch.close()
