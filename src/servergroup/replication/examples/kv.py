"""The key-value example: get, put, delete and scan over a hash table kept in regions.

Theory of operation. The table is a region of fixed-size slots (512 bytes:
state, key length, value length, 64 bytes of key, 440 of value) addressed
by open addressing with linear probing from the key's xxh3 hash; a deleted
slot becomes a tombstone so probes for other keys go on past it, and a put
reuses the first tombstone on its path. A second region holds the number of
keys. Every byte of state is in the two regions, so a checkpoint of them is
a checkpoint of the store.

Requests (one JSON object per line): `{"op": "put", "key": K, "value": V}`,
`{"op": "get", "key": K}`, `{"op": "delete", "key": K}`, `{"op": "scan"}`
(every key, sorted). Keys and values are strings of at most 64 and 440
bytes of UTF-8. Replies: `{"ok": true, ...}` or `{"ok": false, "error": ...}`;
a get of a missing key is `{"ok": true, "found": false}`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xxhash

from servergroup.replication.examples._requests import BadRequest, parse, refuse, reply, text
from servergroup.replication.service import ServiceSpace

KEY_BYTES = 64
VALUE_BYTES = 440
SLOT = np.dtype(
    [
        ("state", "u1"),
        ("pad", "u1"),
        ("key_length", "<u2"),
        ("value_length", "<u2"),
        ("pad2", "<u2"),
        ("key", "u1", (KEY_BYTES,)),
        ("value", "u1", (VALUE_BYTES,)),
    ]
)
assert SLOT.itemsize == 512
EMPTY, USED, GONE = 0, 1, 2


class KvService:
    #: Slots in the table (16 MiB); a subclass may change it.
    capacity = 32768

    def __init__(self, space: ServiceSpace) -> None:
        self._slots = space.region("kv.slots", self.capacity * SLOT.itemsize).array(
            SLOT, self.capacity
        )
        self._count = space.region("kv.meta", 8).array(np.uint64, 1)

    @property
    def count(self) -> int:
        return int(self._count[0])

    def _find(self, key: bytes) -> tuple[int | None, int | None]:
        """(slot holding `key` or None, slot a put of it would use or None when full)."""
        slots = self._slots
        start = xxhash.xxh3_64_intdigest(key) % self.capacity
        free: int | None = None
        for step in range(self.capacity):
            at = (start + step) % self.capacity
            state = slots["state"][at]
            if state == EMPTY:
                return None, at if free is None else free
            if state == GONE:
                if free is None:
                    free = at
                continue
            length = int(slots["key_length"][at])
            if length == len(key) and bytes(slots["key"][at][:length]) == key:
                return at, at
        return None, free

    def handle(self, request: bytes) -> bytes:
        try:
            body = parse(request)
            return self._do(body["op"], body)
        except BadRequest as exc:
            return refuse(str(exc))

    def too_long(self, limit: int) -> bytes:
        """The reply to a request line over the front's `limit`, which `handle` never sees."""
        return refuse(f"the request is over {limit} bytes")

    def _do(self, op: str, body: dict[str, Any]) -> bytes:
        slots = self._slots
        if op == "scan":
            used = np.flatnonzero(slots["state"] == USED)
            keys = sorted(
                bytes(slots["key"][at][: int(slots["key_length"][at])]).decode(
                    "utf-8", "surrogatepass"
                )
                for at in used
            )
            return reply(keys=keys)
        if op not in ("get", "put", "delete"):
            raise BadRequest(f"unknown op {op!r}; use get, put, delete or scan")
        key = text(body, "key", KEY_BYTES)
        found, room = self._find(key)
        if op == "get":
            if found is None:
                return reply(found=False)
            length = int(slots["value_length"][found])
            stored = bytes(slots["value"][found][:length]).decode("utf-8", "surrogatepass")
            return reply(found=True, value=stored)
        if op == "put":
            value = text(body, "value", VALUE_BYTES)
            if room is None:
                raise BadRequest("the store is full")
            slot = slots[room]
            if found is None:
                self._count[0] += np.uint64(1)
                slot["key"][: len(key)] = np.frombuffer(key, dtype=np.uint8)
                slot["key_length"] = len(key)
            slot["value"][: len(value)] = np.frombuffer(value, dtype=np.uint8)
            slot["value_length"] = len(value)
            slot["state"] = USED
            return reply()
        if op == "delete":
            if found is None:
                return reply(deleted=False)
            slots["state"][found] = GONE
            self._count[0] -= np.uint64(1)
            return reply(deleted=True)
        raise AssertionError(f"op {op!r} was checked above")
