"""The counter example: one 64-bit counter in one region.

Requests: `{"op": "incr"}` (add one, reply the new value) and `{"op": "get"}`.
The smallest protected service: a reply a client saw is a value the backup
has, so after a failover the counter never goes back below it.
"""

from __future__ import annotations

import numpy as np

from servergroup.replication.examples._requests import BadRequest, parse, refuse, reply
from servergroup.replication.service import ServiceSpace


class CounterService:
    def __init__(self, space: ServiceSpace) -> None:
        self._value = space.region("counter", 8).array(np.uint64, 1)

    def handle(self, request: bytes) -> bytes:
        try:
            op = parse(request)["op"]
            if op == "incr":
                self._value[0] += np.uint64(1)
            elif op != "get":
                raise BadRequest(f"unknown op {op!r}; use incr or get")
        except BadRequest as exc:
            return refuse(str(exc))
        return reply(value=int(self._value[0]))

    def too_long(self, limit: int) -> bytes:
        """The reply to a request line over the front's `limit`, which `handle` never sees."""
        return refuse(f"the request is over {limit} bytes")
