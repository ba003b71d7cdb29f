"""A replication node's authority: its coordination session and the pair's key.

Theory of operation. Whether a node may act as the pair's active is decided
in etcd by two things, held together here for both daemons:

- the pair's key (`pair.PairKey`): its generation is the fencing token. The
  daemon watches it and hands every generation seen to its machine's
  `fenced`, so a node whose generation was overtaken stops at once.
- the node's session (`coordination.Session`, one lease kept alive): while
  it is CONNECTED the node may act; when it turns SUSPENDED (a renewal is
  overdue, so the lease may run out before our next action) or LOST, the
  active stops acting: it releases no more output and stops serving
  (`on_lost`). This is the self-fencing the rest of servergroup uses: a
  node cut from etcd stops before anyone else could have taken over on
  its account, and `may_act()` is checked right before each release.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable

from servergroup.config import CoordinationConfig
from servergroup.coordination import Coordinator, Session, SessionState
from servergroup.replication.pair import PairKey, PairRecord, decode_pair

log = logging.getLogger(__name__)

#: Where each node of a pair publishes its status (one key per node, on its lease).
STATUS_PREFIX = "replication-status/"


class Authority:
    """The session lease and the pair's key of one node (see the module docstring)."""

    def __init__(
        self,
        coordinator: Coordinator,
        config: CoordinationConfig,
        *,
        pair: str,
        node: str,
    ) -> None:
        self.coordinator = coordinator
        self.pair = PairKey(coordinator, pair)
        self.node = node
        self.session = Session(coordinator, config, name=f"replication {pair} session")
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, timeout: float = 10.0) -> None:
        """Grant the session's lease (`StoreUnavailable` when etcd does not answer)."""
        await self.session.start(timeout)

    def may_act(self) -> bool:
        """True while this node's session may act (checked right before each release)."""
        return self.session.may_act()

    def follow(
        self,
        on_record: Callable[[PairRecord], None],
        on_lost: Callable[[str], None],
        *,
        since: int,
    ) -> None:
        """Call `on_record` at each change of the pair's key, `on_lost` when the session fails.

        `since` is the store revision of the last read (`snapshot`); changes after it are seen.
        A record naming this node active is its own doing (a claim, a backup
        attached): the daemons ignore those, or a claim would fence its maker.
        """
        self._tasks.append(asyncio.create_task(self._watch(on_record, since)))
        self._tasks.append(asyncio.create_task(self._session(on_lost)))

    async def _watch(self, on_record: Callable[[PairRecord], None], since: int) -> None:
        while True:
            try:
                async for record in self.pair.changes(since + 1):
                    if record is not None:
                        on_record(record)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the store is down: the session decides, we retry
                log.info("watching the pair's key failed (%s); retrying", exc)
                await asyncio.sleep(0.5)
                with contextlib.suppress(Exception):
                    record, since = await self.snapshot()
                    if record is not None:
                        on_record(record)

    async def _session(self, on_lost: Callable[[str], None]) -> None:
        queue = self.session.listen()
        try:
            while True:
                change = await queue.get()
                if change.state in (SessionState.SUSPENDED, SessionState.LOST):
                    on_lost(f"the coordination session is {change.state.value}: {change.reason}")
        finally:
            self.session.unlisten(queue)

    def publish(self, status: Callable[[], dict[str, object]], interval: float = 1.0) -> None:
        """Write `status()` under the pair's status prefix every `interval`, on the session lease.

        The key goes with the lease, so a node that dies drops out of
        `servergroup replication status` within the lease's TTL.
        """
        self._tasks.append(asyncio.create_task(self._publish(status, interval)))

    async def _publish(self, status: Callable[[], dict[str, object]], interval: float) -> None:
        key = f"{STATUS_PREFIX}{self.pair.name}/{self.node}"
        while True:
            body = json.dumps(status(), sort_keys=True).encode()
            with contextlib.suppress(Exception):
                await self.coordinator.put(key, body, lease=self.session.lease_id)
            await asyncio.sleep(interval)

    async def snapshot(self) -> tuple[PairRecord | None, int]:
        """The pair's record (None when absent) and the store's revision of that read.

        Watch from just after that revision (`follow(since=...)`): the key's
        own mod revision would be 0 when it is absent, and a watch from there
        would replay the history of an earlier pair of the same name.
        """
        found = await self.coordinator.get_prefix(self.pair.key)
        item = next((kv for kv in found.items if kv.key == self.pair.key), None)
        return (None if item is None else decode_pair(item.value)), found.revision

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.session.close()
