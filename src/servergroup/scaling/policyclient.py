"""Setting, showing and removing a server's scaling policy: the library under
`servergroup scale policy`.

Theory of operation. A policy is one durable key, `scaling/policies/<server>`
(`autoscale.PolicyRecord`, naming the server's uuid). `set_policy` checks
the server exists and is not being deleted, then writes the record; the
autoscaler of the host that runs the server follows the key with a watch
and applies it from then on (a changed policy starts afresh). `remove_policy`
deletes the key. `get_policy` reads it back; a record left by an earlier
server of the same name, or one that does not decode, is reported as such,
never applied.
"""

from __future__ import annotations

from datetime import UTC, datetime

from servergroup.scaling.autoscale import (
    PolicyRecord,
    decode_policy_record,
    encode_policy_record,
    policy_key,
)
from servergroup.scaling.policy import Policy
from servergroup.servers.model import Desired, RecordError
from servergroup.servers.registry import Registry, ServerNotFound


class PolicyUnreadable(RecordError):
    """The stored policy of a server does not decode (one sentence)."""


async def set_policy(registry: Registry, name: str, policy: Policy) -> PolicyRecord:
    """Put `policy` on server `name` (replacing any); ServerNotFound when there is none."""
    server = await registry.get_server(name)
    if server is None or server.spec.desired is Desired.DELETED:
        raise ServerNotFound(f"server {name!r} does not exist")
    record = PolicyRecord(
        server=name,
        uuid=server.spec.uuid,
        policy=policy,
        set_at=datetime.now(UTC).isoformat(timespec="milliseconds"),
    )
    await registry.coordinator.put(policy_key(name), encode_policy_record(record))
    return record


async def get_policy(registry: Registry, name: str) -> PolicyRecord | None:
    """The policy of server `name` (None: it has none); ServerNotFound, PolicyUnreadable."""
    server = await registry.get_server(name)
    if server is None:
        raise ServerNotFound(f"server {name!r} does not exist")
    kv = await registry.coordinator.get(policy_key(name))
    if kv is None:
        return None
    try:
        record = decode_policy_record(kv.value)
    except RecordError as exc:
        raise PolicyUnreadable(
            f"the scaling policy of server {name} is unreadable ({str(exc).rstrip('.')}): "
            f"set it again or remove it with --off"
        ) from None
    return record if record.applies_to(server) else None


async def remove_policy(registry: Registry, name: str) -> bool:
    """Remove the policy of server `name`; whether there was one. ServerNotFound when there
    is neither the server nor a policy key (a deleted server's leftover key is removed)."""
    removed = await registry.coordinator.delete(policy_key(name))
    if not removed and await registry.get_server(name) is None:
        raise ServerNotFound(f"server {name!r} does not exist")
    return removed


__all__ = ["PolicyUnreadable", "get_policy", "remove_policy", "set_policy"]
