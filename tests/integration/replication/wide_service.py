"""A kv service whose every put also rewrites 128 pages: enough dirty pages for pre-copy rounds.

`WideKv` is the kv example plus a 4 MiB "ledger" region of 8 blocks of 128
pages. Put number n (counted in the ledger's first page) fills block n % 8
with n, so the ledger is a function of the count: block b holds the
largest n <= count with n % 8 == b (0 if none). `{"op": "check"}` answers
whether that holds. A checkpoint that mixed pages of two moments (a page
copied before a later write it should have seen, or after one it should
not) breaks it, and so would a lost or repeated put.
"""

from __future__ import annotations

import json

import numpy as np

from servergroup.replication.examples.kv import KvService
from servergroup.replication.regions import PAGE_SIZE
from servergroup.replication.service import ServiceSpace

BLOCKS = 8
BLOCK_PAGES = 128


class WideKv(KvService):
    def __init__(self, space: ServiceSpace) -> None:
        super().__init__(space)
        words = BLOCK_PAGES * PAGE_SIZE // 8
        self._puts = space.region("ledger.count", 8).array(np.uint64, 1)
        self._blocks = space.region("ledger.blocks", BLOCKS * BLOCK_PAGES * PAGE_SIZE).array(
            np.uint64, (BLOCKS, words)
        )

    def handle(self, request: bytes) -> bytes:
        try:
            op = json.loads(request).get("op")
        except (ValueError, AttributeError):
            op = None
        if op == "check":
            return json.dumps(
                {"consistent": self._consistent(), "puts": int(self._puts[0])}
            ).encode()
        answer = super().handle(request)
        if op == "put" and json.loads(answer).get("ok"):
            n = int(self._puts[0]) + 1
            self._puts[0] = n
            self._blocks[n % BLOCKS] = n
        return answer

    def _consistent(self) -> bool:
        count = int(self._puts[0])
        for block in range(BLOCKS):
            recent = range(max(0, count - BLOCKS + 1), count + 1)
            want = max((n for n in recent if n % BLOCKS == block), default=0)
            if not (self._blocks[block] == want).all():
                return False
        return True
