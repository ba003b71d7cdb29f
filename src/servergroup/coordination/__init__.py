"""The shared store: the `Coordinator` protocol, its etcd and in-memory backends, and recipes.

etcd is the only shared state (ARCHITECTURE.md). Capabilities use:
- a `Coordinator` (`connect()` builds the etcd one from the config),
- a `Session` (a lease kept alive, with CONNECTED / SUSPENDED / LOST),
- `Ownership` (election with fencing tokens and self-fencing),
- `resolve_endpoints(config)`: the configured etcd, or the managed local one
  (`LocalEtcd`) started on demand.

The etcd client (`EtcdCoordinator`: aetcd and gRPC, ~0.1 s of start-up) is
imported on first use (`connect` imports it when it makes one), and so are
the session driver, the election recipe, the etcd processes and the memory
store (some 25 ms more): a command that may not need etcd (`image receive`
without a store to record in) starts with the types, the errors and the
protocol only. (`connect` is imported at once: it is also the name of its
module, which would otherwise replace it here when first imported; its
module imports the rest inside the function.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from servergroup.common.lazy import lazy_names
from servergroup.coordination.connect import connect
from servergroup.coordination.errors import (
    CoordinationError,
    FencingError,
    LeaseNotFound,
    RevisionConflict,
    StoreFull,
    StoreUnavailable,
    WatchCompacted,
)
from servergroup.coordination.protocol import Coordinator, Watch
from servergroup.coordination.session import SessionChanged, SessionMachine
from servergroup.coordination.types import (
    Compare,
    CompareTarget,
    Delete,
    EventKind,
    Get,
    Guard,
    KeyValue,
    Lease,
    Put,
    Range,
    SessionState,
    TxnOp,
    TxnResult,
    WatchEvent,
)

if TYPE_CHECKING:
    from servergroup.coordination.election import (
        NotOwner,
        Ownership,
        OwnershipAcquired,
        OwnershipEvent,
        OwnershipLost,
    )
    from servergroup.coordination.etcd import EtcdCoordinator
    from servergroup.coordination.etcd_process import EtcdCluster, EtcdProcess, start_cluster
    from servergroup.coordination.keeper import Session
    from servergroup.coordination.local_etcd import (
        LocalEtcd,
        LocalEtcdStatus,
        resolve_endpoints,
    )
    from servergroup.coordination.memory import MemoryCoordinator, MemoryStore

#: What is loaded on first use, by name: the etcd client, the etcd processes (and
#: urllib with them), the session driver and the election recipe, the memory store.
_load = lazy_names(
    __name__,
    {
        "EtcdCoordinator": ".etcd",
        **dict.fromkeys(
            ("NotOwner", "Ownership", "OwnershipAcquired", "OwnershipEvent", "OwnershipLost"),
            ".election",
        ),
        **dict.fromkeys(("EtcdCluster", "EtcdProcess", "start_cluster"), ".etcd_process"),
        "Session": ".keeper",
        **dict.fromkeys(("LocalEtcd", "LocalEtcdStatus", "resolve_endpoints"), ".local_etcd"),
        **dict.fromkeys(("MemoryCoordinator", "MemoryStore"), ".memory"),
    },
)


def __getattr__(name: str) -> Any:
    return _load(name)


__all__ = [
    "Compare",
    "CompareTarget",
    "CoordinationError",
    "Coordinator",
    "Delete",
    "EtcdCluster",
    "EtcdCoordinator",
    "EtcdProcess",
    "EventKind",
    "FencingError",
    "Get",
    "Guard",
    "KeyValue",
    "Lease",
    "LeaseNotFound",
    "LocalEtcd",
    "LocalEtcdStatus",
    "MemoryCoordinator",
    "MemoryStore",
    "NotOwner",
    "Ownership",
    "OwnershipAcquired",
    "OwnershipEvent",
    "OwnershipLost",
    "Put",
    "Range",
    "RevisionConflict",
    "Session",
    "SessionChanged",
    "SessionMachine",
    "SessionState",
    "StoreFull",
    "StoreUnavailable",
    "TxnOp",
    "TxnResult",
    "Watch",
    "WatchCompacted",
    "WatchEvent",
    "connect",
    "resolve_endpoints",
    "start_cluster",
]
