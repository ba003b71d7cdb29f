"""The dashboard's live feed: one etcd watch, snapshots of the cluster as server-sent events.

Theory of operation. `read_snapshot(coordinator, host)` reads the whole
cluster the way the API's routes do (the same library calls, the same view
models: hosts, groups, servers, each service's status with its history,
replication pairs, image transfers) into one JSON object. A `Feed` keeps the latest snapshot
for every `/events` client of one API:

- it runs only while someone listens: the first `stream()` starts its task,
  the last one leaving stops it and forgets the snapshot (the next client
  waits for a fresh read rather than see a stale one);
- the task reads the store's revision, reads a snapshot, then watches every
  key of the namespace from the next revision, so no change between the read
  and the watch is missed; a change marks the snapshot stale, and after
  `settle` seconds (a burst of writes, such as a lifecycle operation, gives
  one snapshot, not ten) it is read again;
- a snapshot is published only when its bytes differ from the last one, so
  group messages or heartbeats that change nothing shown cost one read and
  send nothing; clients that fall behind skip to the newest snapshot;
- when etcd does not answer, the last snapshot is published again with an
  `error` sentence, and the task starts over after `retry` seconds (a
  compacted watch starts over at once).

Each client gets `event: snapshot` blocks (`data:` one JSON line) and a
comment line every `KEEPALIVE` seconds so proxies and the browser keep the
stream open. `close()` ends every stream (the API component calls it before
uvicorn stops, so an open dashboard does not hold the daemon's stop).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

from servergroup.api.models import (
    ServiceSummaryView,
    ServiceView,
    group_view,
    host_views,
    pair_view,
    server_view,
    transfer_view,
)
from servergroup.common.component import cancel_and_wait
from servergroup.common.errors import ServergroupError
from servergroup.common.logsetup import log_bug
from servergroup.coordination import CoordinationError, Coordinator, Watch, WatchCompacted
from servergroup.replication.status import read_pairs
from servergroup.scaling.client import read_pools
from servergroup.servers.operations import Operations
from servergroup.servers.registry import Registry
from servergroup.services.client import get_status, read_services
from servergroup.services.status import status_json, summaries, summary_json
from servergroup.transfers import read_transfers

log = logging.getLogger(__name__)

KEEPALIVE = 15.0
SETTLE = 0.25
RETRY = 1.0
#: Without any change, the snapshot is read again this often anyway (a safety net).
REFRESH = 30.0
#: History entries of a service sent to the page (its failover timeline).
HISTORY = 20


async def read_snapshot(coordinator: Coordinator, host: str) -> dict[str, Any]:
    """The cluster as the dashboard shows it (JSON-ready), read like the API's routes."""
    c = coordinator
    ops = Operations(Registry(c))
    live = await ops.live_hosts()
    servers = await ops.list_servers()
    pools = await read_pools(c)
    groups = await ops.list_groups()
    listing = await read_services(c)
    services: list[dict[str, Any]] = []
    for summary in summaries(listing):
        entry: dict[str, Any] = {
            "summary": ServiceSummaryView.model_validate(summary_json(summary)).model_dump(
                mode="json"
            )
        }
        try:
            view = ServiceView.model_validate(status_json(await get_status(c, summary.name)))
        except CoordinationError:
            raise
        except ServergroupError as exc:  # unreadable, or removed since the listing
            entry["status"] = None
            entry["problem"] = str(exc)
        else:
            status = view.model_dump(mode="json", by_alias=True)
            status["history"] = status["history"][-HISTORY:]
            status.pop("definition", None)
            entry["status"] = status
        services.append(entry)
    transfers = await read_transfers(c)
    pairs = [pair_view(pair).model_dump(mode="json") for pair in await read_pairs(c)]
    return {
        "host": host,
        "hosts": [h.model_dump(mode="json") for h in host_views(live.values(), pools, servers)],
        "groups": [group_view(g, servers).model_dump(mode="json") for g in groups],
        "servers": [server_view(s, live).model_dump(mode="json") for s in servers],
        "services": services,
        "replication": pairs,
        "transfers": [transfer_view(t, time.time()).model_dump(mode="json") for t in transfers],
        "error": None,
    }


def sse(event: str, data: bytes) -> bytes:
    """One server-sent event block (`data` is one line of JSON)."""
    return b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"


class Feed:
    """The latest snapshot for every `/events` client of one API (see the module docstring)."""

    def __init__(
        self,
        coordinator: Coordinator,
        read: Callable[[], Awaitable[dict[str, Any]]],
        *,
        settle: float = SETTLE,
        retry: float = RETRY,
        keepalive: float = KEEPALIVE,
    ) -> None:
        self._c = coordinator
        self._read = read
        self.settle = settle
        self.retry = retry
        self.keepalive = keepalive
        self._data: bytes | None = None
        self._last: dict[str, Any] | None = None
        self._seq = 0
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._listeners = 0
        self._closed = False

    @property
    def listeners(self) -> int:
        return self._listeners

    async def stream(self) -> AsyncGenerator[bytes, None]:
        """The event stream of one client: the newest snapshot whenever it changes."""
        self._listeners += 1
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="api-feed")
        seen = 0
        try:
            yield b"retry: 2000\n\n"
            while not self._closed:
                if self._seq != seen and self._data is not None:
                    seen = self._seq
                    yield sse("snapshot", self._data)
                    continue
                changed = self._changed
                try:
                    async with asyncio.timeout(self.keepalive):
                        await changed.wait()
                except TimeoutError:
                    yield b": keepalive\n\n"
        finally:
            self._listeners -= 1
            if self._listeners == 0 and self._task is not None:
                task, self._task = self._task, None
                task.cancel()
                # Nobody follows the store now: the next client waits for a fresh read.
                self._data = self._last = None

    def _publish(self, snapshot: dict[str, Any]) -> None:
        data = json.dumps(snapshot, separators=(",", ":"), sort_keys=True).encode()
        if data == self._data:
            return
        self._data = data
        self._seq += 1
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def _refresh(self) -> None:
        snapshot = await self._read()
        self._last = snapshot
        self._publish(snapshot)

    def _failed(self, reason: str) -> None:
        base = dict(self._last) if self._last is not None else {}
        base["error"] = reason
        self._publish(base)

    async def _run(self) -> None:
        while not self._closed:
            try:
                revision = (await self._c.get_prefix("hosts/")).revision
                await self._refresh()
                watch = await self._c.watch("", start_revision=revision + 1)
                try:
                    await self._follow(watch)
                finally:
                    await watch.close()
            except asyncio.CancelledError:
                raise
            except WatchCompacted:
                continue
            except CoordinationError as exc:
                self._failed(f"etcd did not answer ({exc}); retrying")
                await asyncio.sleep(self.retry)
            except Exception:
                log_bug(log, "the dashboard's feed (starting it over)")
                self._failed("the dashboard feed failed (BUG: see the host's log); retrying")
                await asyncio.sleep(self.retry)

    async def _follow(self, watch: Watch) -> None:
        """Read a snapshot again after each burst of changes, until the watch ends."""
        dirty = asyncio.Event()

        async def drain() -> None:
            async for _ in watch:
                dirty.set()

        drainer = asyncio.create_task(drain(), name="api-feed-watch")
        try:
            while True:
                waiter = asyncio.create_task(dirty.wait())
                done, _ = await asyncio.wait(
                    {drainer, waiter}, timeout=REFRESH, return_when=asyncio.FIRST_COMPLETED
                )
                waiter.cancel()
                if drainer in done:
                    drainer.result()  # the watch's error, if any
                    return  # the coordinator closed it
                if waiter in done:
                    await asyncio.sleep(self.settle)
                dirty.clear()
                await self._refresh()
        finally:
            await cancel_and_wait([drainer])

    async def close(self) -> None:
        """End every stream and the watch."""
        self._closed = True
        self._changed.set()
        if self._task is not None:
            task, self._task = self._task, None
            await cancel_and_wait([task])


__all__ = ["KEEPALIVE", "Feed", "read_snapshot", "sse"]
