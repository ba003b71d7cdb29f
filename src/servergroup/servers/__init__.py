"""Servers: the model and registry in the shared store, lifecycle, server drivers.

The names below load their module on first use (PEP 562): a guest's agents
import `servergroup.servers.drivers.qemu.*`, and must not pay for the
registry's etcd client at every start of a VM.
"""

from typing import TYPE_CHECKING, Any

from servergroup.common.lazy import lazy_names

if TYPE_CHECKING:
    from servergroup.servers.model import (
        BroadcastBatch,
        BroadcastItem,
        Desired,
        GroupRecord,
        HostRecord,
        Policy,
        RecordError,
        RegistrySnapshot,
        Server,
        ServerSpec,
        ServerStatus,
        VmState,
        make_instance_name,
        server_info,
    )
    from servergroup.servers.registry import (
        ChangeKind,
        GroupExists,
        GroupNotEmpty,
        GroupNotFound,
        Registry,
        RegistryCache,
        RegistryChange,
        RegistryError,
        ServerExists,
        ServerNotFound,
    )

_WHERE = {
    "BroadcastBatch": "servergroup.servers.model",
    "BroadcastItem": "servergroup.servers.model",
    "Desired": "servergroup.servers.model",
    "GroupRecord": "servergroup.servers.model",
    "HostRecord": "servergroup.servers.model",
    "Policy": "servergroup.servers.model",
    "RecordError": "servergroup.servers.model",
    "RegistrySnapshot": "servergroup.servers.model",
    "Server": "servergroup.servers.model",
    "ServerSpec": "servergroup.servers.model",
    "ServerStatus": "servergroup.servers.model",
    "VmState": "servergroup.servers.model",
    "make_instance_name": "servergroup.servers.model",
    "server_info": "servergroup.servers.model",
    "ChangeKind": "servergroup.servers.registry",
    "GroupExists": "servergroup.servers.registry",
    "GroupNotEmpty": "servergroup.servers.registry",
    "GroupNotFound": "servergroup.servers.registry",
    "Registry": "servergroup.servers.registry",
    "RegistryCache": "servergroup.servers.registry",
    "RegistryChange": "servergroup.servers.registry",
    "RegistryError": "servergroup.servers.registry",
    "ServerExists": "servergroup.servers.registry",
    "ServerNotFound": "servergroup.servers.registry",
}


_load = lazy_names(__name__, _WHERE)


def __getattr__(name: str) -> Any:
    return _load(name)


__all__ = [
    "BroadcastBatch",
    "BroadcastItem",
    "ChangeKind",
    "Desired",
    "GroupExists",
    "GroupNotEmpty",
    "GroupNotFound",
    "GroupRecord",
    "HostRecord",
    "Policy",
    "RecordError",
    "Registry",
    "RegistryCache",
    "RegistryChange",
    "RegistryError",
    "RegistrySnapshot",
    "Server",
    "ServerExists",
    "ServerNotFound",
    "ServerSpec",
    "ServerStatus",
    "VmState",
    "make_instance_name",
    "server_info",
]
