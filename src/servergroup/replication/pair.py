"""The pair's key in etcd: who is active, at which generation, with which backup.

Theory of operation. A protected pair `NAME` has one durable key,
`replication/<NAME>` under the coordinator's prefix, whose value is a
`PairRecord`: the fencing `generation`, the `active` node and its `backup`
(or none). The generation only grows and every change is a compare-and-set
on the key's mod revision, so for any generation g at most one change from g
succeeds: this is what makes the machines' claims exclusive (two sides that
both claim from g cannot both win, and a side whose generation is stale can
no longer change anything).

- `establish(node)`: the first primary creates the record at generation 1;
  the same node coming back finds it (a restart); another node is refused.
- `claim(previous, node)`: from generation `previous` to `previous + 1`, with
  `node` the only active and no backup: a backup taking over, or a primary
  fencing a silent backup before it releases unacknowledged output. None
  when the record has moved past `previous` (the claim is lost).
- `attach_backup(generation, active, backup)`: the active names its new
  backup and bumps the generation, so any older backup is stale from then.
- `changes(start_revision)`: the record as it changes (None when deleted),
  surviving a compacted history by reading the key again. Drivers feed it to
  the machines' `fenced(generation)`.

The record is JSON (small, read by `servergroup replication status`); a
malformed one is a `PairError`, never a crash.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from servergroup.common.errors import RemoteError, UsageError
from servergroup.coordination import (
    Coordinator,
    EventKind,
    RevisionConflict,
    WatchCompacted,
)

PREFIX = "replication/"


class PairError(RemoteError):
    """The pair's record in the store is not one we can read."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PairRecord:
    generation: int
    active: str
    backup: str | None = None


def encode_pair(record: PairRecord) -> bytes:
    body = {"generation": record.generation, "active": record.active, "backup": record.backup}
    return json.dumps(body, sort_keys=True).encode()


def decode_pair(raw: bytes) -> PairRecord:
    try:
        body = json.loads(raw)
        generation, active, backup = body["generation"], body["active"], body["backup"]
    except (ValueError, TypeError, KeyError) as exc:
        raise PairError(f"the pair's record is not valid: {exc}") from None
    if not isinstance(generation, int) or isinstance(generation, bool) or generation < 1:
        raise PairError("the pair's record has no valid generation.")
    if not isinstance(active, str) or not (backup is None or isinstance(backup, str)):
        raise PairError("the pair's record does not name its nodes.")
    return PairRecord(generation=generation, active=active, backup=backup)


class PairKey:
    """The record of one pair, read and changed only by compare-and-set."""

    def __init__(self, coordinator: Coordinator, name: str) -> None:
        if not name or "/" in name:
            raise UsageError(f"a pair name must be non-empty and have no '/', not {name!r}.")
        self._coordinator = coordinator
        self.name = name
        self.key = PREFIX + name

    async def read(self) -> tuple[PairRecord | None, int]:
        """The record (None when absent) and its mod revision (0 when absent)."""
        found = await self._coordinator.get(self.key)
        if found is None:
            return None, 0
        return decode_pair(found.value), found.mod_revision

    async def establish(self, node: str) -> PairRecord:
        """Be the pair's active: create it at generation 1, or find it ours already."""
        record = PairRecord(generation=1, active=node)
        if await self._coordinator.create(self.key, encode_pair(record)) is not None:
            return record
        current, _ = await self.read()
        if current is not None and current.active == node:
            return current
        holder = "nobody" if current is None else current.active
        raise UsageError(
            f"pair {self.name!r} is active on {holder}, not on {node} (if {holder} is gone"
            f" for good, `servergroup replication remove {self.name}` forgets the pair)."
        )

    async def abandon(self, record: PairRecord) -> bool:
        """Forget the pair if it is still exactly `record`; False when it moved on.

        For a primary that made a new pair and failed before it served: what it
        leaves would name it active and refuse the next primary.
        """
        current, revision = await self.read()
        if current != record:
            return False
        try:
            return await self._coordinator.delete(self.key, if_mod_revision=revision)
        except RevisionConflict:
            return False

    async def claim(self, previous: int, node: str) -> PairRecord | None:
        """Move the pair from generation `previous` to the next with `node` the only active."""
        while True:
            current, revision = await self.read()
            if current is None or current.generation != previous:
                return None
            record = PairRecord(generation=previous + 1, active=node)
            try:
                await self._coordinator.put(self.key, encode_pair(record), if_mod_revision=revision)
            except RevisionConflict:
                continue  # someone wrote in between: read again, and lose if it moved
            return record

    async def attach_backup(self, generation: int, active: str, backup: str) -> PairRecord | None:
        """Name `backup` as the backup of `active` at the next generation; None if stale."""
        while True:
            current, revision = await self.read()
            if current is None or current.generation != generation or current.active != active:
                return None
            record = PairRecord(generation=generation + 1, active=active, backup=backup)
            try:
                await self._coordinator.put(self.key, encode_pair(record), if_mod_revision=revision)
            except RevisionConflict:
                continue
            return record

    async def remove(self) -> bool:
        """Forget the pair (an operator's act: its generations start again); False if absent."""
        return bool(await self._coordinator.delete(self.key))

    async def changes(self, start_revision: int) -> AsyncGenerator[PairRecord | None, None]:
        """The record at each change from `start_revision` on; None when it is deleted."""
        revision = start_revision
        while True:
            watch = await self._coordinator.watch(self.key, start_revision=revision)
            try:
                async for event in watch:
                    if event.key != self.key:
                        continue  # a longer key that shares the prefix
                    revision = event.revision + 1
                    if event.kind is EventKind.DELETE:
                        yield None
                    else:
                        yield decode_pair(event.value)
            except WatchCompacted:
                # History is gone: read the key as it is now and watch on from there.
                now = await self._coordinator.get_prefix(self.key)
                found = next((kv for kv in now.items if kv.key == self.key), None)
                yield None if found is None else decode_pair(found.value)
                revision = now.revision + 1
            finally:
                await watch.close()
