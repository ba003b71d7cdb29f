"""What `servergroup replication status` and the HTTP API show of a protected pair.

Theory of operation. A pair is two things in etcd: its durable record
`replication/<NAME>` (`pair.PairRecord`: generation, active, backup) and one
status key per running node, `replication-status/<NAME>/<node>`, which each
node's daemon puts on its own lease every second (`authority.Authority.publish`:
the primary's and the backup's `status()`). So a node that died drops out of
the listing within its lease, and the listing is as fresh as the last
publish. `read_pair(coordinator, name)` reads both, `read_pairs` every
pair's; `pair_names(coordinator)` lists the pairs. A status value that is
not a JSON object is left out (a peer's garbage never breaks the listing);
its fields are typed here, each optional, because a primary publishes some
and a backup others.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from servergroup.coordination import Coordinator
from servergroup.replication.authority import STATUS_PREFIX
from servergroup.replication.pair import PREFIX, PairKey, PairRecord


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeStatus:
    """What one running node of a pair last published (None: not published by its role)."""

    node: str
    role: str  # "primary", "backup" or "primary (took over)"
    state: str | None = None  # the primary's mode or the backup's phase
    generation: int | None = None
    epoch: int | None = None  # the primary's current epoch
    committed: int | None = None  # the primary's last epoch the backup acknowledged
    applied: int | None = None  # the backup's last epoch applied
    lag: int | None = None  # epochs captured and not yet acknowledged
    last_checkpoint_bytes: int | None = None
    last_pause_ms: float | None = None
    held_output_bytes: int | None = None
    clients: int | None = None
    precopied_pages: int | None = None  # the primary's pages copied by pre-copy rounds, all told
    pause_realtime: bool | None = None  # the primary's last pause ran at real-time priority
    listen: str | None = None  # a backup's stream address (HOST:PORT), where a primary finds it


@dataclass(frozen=True, slots=True, kw_only=True)
class PairStatus:
    """A pair's record and its running nodes' statuses."""

    name: str
    record: PairRecord
    nodes: tuple[NodeStatus, ...] = ()


def _int(raw: dict[str, Any], key: str) -> int | None:
    value = raw.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def decode_node_status(raw: bytes) -> NodeStatus | None:
    """The status a node published, or None when it is not one."""
    try:
        obj = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("node"), str):
        return None
    state = obj.get("mode", obj.get("phase"))
    pause = obj.get("last_pause_ms")
    realtime = obj.get("pause_realtime")
    listen = obj.get("listen")
    return NodeStatus(
        node=obj["node"],
        role=str(obj.get("role", "")),
        state=state if isinstance(state, str) else None,
        generation=_int(obj, "generation"),
        epoch=_int(obj, "epoch"),
        committed=_int(obj, "committed"),
        applied=_int(obj, "applied"),
        lag=_int(obj, "lag"),
        last_checkpoint_bytes=_int(obj, "last_checkpoint_bytes"),
        last_pause_ms=float(pause) if isinstance(pause, int | float) else None,
        held_output_bytes=_int(obj, "held_output_bytes"),
        clients=_int(obj, "clients"),
        precopied_pages=_int(obj, "precopied_pages"),
        pause_realtime=realtime if isinstance(realtime, bool) else None,
        listen=listen if isinstance(listen, str) else None,
    )


async def read_pair(coordinator: Coordinator, name: str) -> PairStatus | None:
    """Pair `name`'s record and its running nodes' statuses; None when there is no such pair."""
    record, _ = await PairKey(coordinator, name).read()
    if record is None:
        return None
    found = await coordinator.get_prefix(f"{STATUS_PREFIX}{name}/")
    nodes = [n for n in (decode_node_status(kv.value) for kv in found.items) if n is not None]
    return PairStatus(name=name, record=record, nodes=tuple(nodes))


async def pair_names(coordinator: Coordinator) -> list[str]:
    """The names of the pairs in the store, sorted."""
    found = await coordinator.get_prefix(PREFIX)
    return sorted({kv.key[len(PREFIX) :] for kv in found.items if "/" not in kv.key[len(PREFIX) :]})


async def read_pairs(coordinator: Coordinator) -> list[PairStatus]:
    """Every pair in the store, by name (one removed while they are read is left out)."""
    found = [await read_pair(coordinator, name) for name in await pair_names(coordinator)]
    return [pair for pair in found if pair is not None]


__all__ = [
    "NodeStatus",
    "PairStatus",
    "decode_node_status",
    "pair_names",
    "read_pair",
    "read_pairs",
]
