"""Automatic scaling's records, and the pure parts of its host component (no I/O).

Theory of operation (docs/design/scaling-host.md, "Automatic scaling").

A server's policy is one durable key, written by `servergroup scale policy`:

    scaling/policies/<server>   PolicyRecord   durable (no lease); `--off` deletes it

The record names the server's `uuid`: a server deleted and created again under
the same name does not inherit the policy of the one before (its record no
longer applies, and `scale policy` shows none). Every record encodes to
compact JSON with sorted keys; `decode_policy_record` raises `RecordError`
with one sentence for anything else (a host then ignores the record, logs
it once, and scales nothing by it).

`target_for` says what the autoscaler of one host should run for a server,
from its policy record and its registry records: a `Target` (the policy, and
the run of the server it measures) when the server runs here, active, with a
policy made for it; None otherwise. A new target (the policy changed, the
server rebooted, moved here, was resized) starts the policy afresh; None
stops it and drops its state.

`autoscale_event` is the record of one decision the policy acted on, which
the group service turns into `compute.instance.autoscale` for the other
members of the server's group (`servers.model.ServerEvent`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

from servergroup.common.errors import ServergroupError, phrase
from servergroup.scaling.policy import Decision, Policy, decode_policy, encode_policy
from servergroup.scaling.protocol import Direction
from servergroup.servers.model import (
    Desired,
    DriverKind,
    RecordError,
    Server,
    ServerEvent,
    VmState,
)

POLICIES: Final = "scaling/policies/"
#: The event type (after `compute.instance.`) of a decision the policy acted on.
AUTOSCALE_EVENT: Final = "autoscale"
#: How often a server under a policy is measured: a tenth of its window, within these.
MIN_SAMPLE_INTERVAL: Final = 0.1
MAX_SAMPLE_INTERVAL: Final = 1.0


def policy_key(server: str) -> str:
    return f"{POLICIES}{server}"


def parse_policy_key(key: str) -> str | None:
    """The server of a policy key, or None when `key` is not one."""
    if not key.startswith(POLICIES):
        return None
    server = key[len(POLICIES) :]
    return server if server and "/" not in server else None


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyRecord:
    """The scaling policy of the server `server` whose spec has `uuid`."""

    server: str
    uuid: str
    policy: Policy
    set_at: str = ""  # wall time, ISO 8601 UTC, for people

    def applies_to(self, server: Server) -> bool:
        return server.name == self.server and server.spec.uuid == self.uuid


def encode_policy_record(record: PolicyRecord) -> bytes:
    return json.dumps(
        {
            "server": record.server,
            "uuid": record.uuid,
            "policy": encode_policy(record.policy),
            "set_at": record.set_at,
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode()


def decode_policy_record(raw: bytes) -> PolicyRecord:
    """The record `encode_policy_record` made; RecordError (one sentence) for anything else."""
    what = "scaling policy"
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RecordError(f"{what} record is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise RecordError(f"{what} record is not a JSON object")
    for key in ("server", "uuid"):
        if not isinstance(obj.get(key), str) or not obj[key]:
            raise RecordError(f"{what} record has no string {key!r}")
    set_at = obj.get("set_at", "")
    if not isinstance(set_at, str):
        raise RecordError(f"{what} record has 'set_at' that is not a string")
    try:
        policy = decode_policy(obj.get("policy"))
    except ServergroupError as exc:
        why = phrase(exc)
        inner = "a scaling policy record"  # what `decode_policy` calls the object it reads
        if why.startswith(inner):
            raise RecordError(f"{what} record's policy{why[len(inner) :]}") from None
        raise RecordError(f"{what} record is not valid: {why}") from None
    return PolicyRecord(server=obj["server"], uuid=obj["uuid"], policy=policy, set_at=set_at)


def policy_json(record: PolicyRecord) -> dict[str, Any]:
    """The policy as `scale policy --json` prints it."""
    return {
        "server": record.server,
        "up_above": record.policy.up_above,
        "down_below": record.policy.down_below,
        "window": record.policy.window_interval,
        "cooldown": record.policy.cooldown_interval,
        "set_at": record.set_at,
    }


def sample_interval(policy: Policy) -> float:
    """How often the host measures a server under `policy` (seconds)."""
    return min(MAX_SAMPLE_INTERVAL, max(MIN_SAMPLE_INTERVAL, policy.window_interval / 10))


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    """A policy to run on one run of a server here; a different target starts afresh."""

    server: str
    policy: Policy
    uuid: str
    driver: DriverKind
    vcpus: int
    min_vcpus: int
    launched_at: str | None
    reboot_count: int


def target_for(record: PolicyRecord | None, server: Server | None, host: str) -> Target | None:
    """What host `host` should run for `server` under `record` (None: nothing)."""
    if record is None or server is None or not record.applies_to(server):
        return None
    spec, status = server.spec, server.status
    if spec.desired is Desired.DELETED or status is None:
        return None
    if status.host != host or status.state is not VmState.ACTIVE:
        return None
    if status.vcpus and status.vcpus != spec.vcpus:
        return None  # a resize under way: its limits are about to change
    return Target(
        server=server.name,
        policy=record.policy,
        uuid=spec.uuid,
        driver=spec.driver,
        vcpus=spec.vcpus,
        min_vcpus=min(spec.min_vcpus, spec.vcpus),
        launched_at=status.launched_at,
        reboot_count=status.reboot_count,
    )


def held_at_limit(policy: Policy, decision: Decision) -> Direction | None:
    """The way the load pushes when `decision` does nothing only because of a limit."""
    if decision.direction is not None or decision.busy_percent is None:
        return None
    if decision.busy_percent > policy.up_above:
        return Direction.UP
    if decision.busy_percent < policy.down_below:
        return Direction.DOWN
    return None


def online_of(server: Server | None) -> tuple[int, ...]:
    """The server's online vCPUs as its record says (every vCPU when it says none)."""
    if server is None:
        return ()
    status = server.status
    online = status.online_cpus if status is not None else ()
    return tuple(online) if online else tuple(range(server.spec.vcpus))


def autoscale_event(
    server: str,
    decision: Decision,
    *,
    policy: Policy,
    host: str,
    at: str,
    online: int,
    done: bool,
    sentence: str,
    online_cpus: tuple[int, ...] = (),
    error: str | None = None,
) -> ServerEvent:
    """The record of a decision the policy acted on (`done`: the scale happened)."""
    assert decision.direction is not None
    details: dict[str, Any] = {
        "direction": decision.direction.value,
        "busy_percent": decision.busy_percent,
        "from_vcpus": online,
        "to_vcpus": decision.target_vcpus,
        "done": done,
        "online_cpus": list(online_cpus),
        "error": error,
        "policy": encode_policy(policy),
    }
    return ServerEvent(
        name=server,
        what=AUTOSCALE_EVENT,
        host=host,
        at=at,
        sentence=sentence,
        priority="INFO",  # whether it was carried out is `details.done`
        details=details,
    )


__all__ = [
    "AUTOSCALE_EVENT",
    "MAX_SAMPLE_INTERVAL",
    "MIN_SAMPLE_INTERVAL",
    "POLICIES",
    "PolicyRecord",
    "Target",
    "autoscale_event",
    "decode_policy_record",
    "encode_policy_record",
    "held_at_limit",
    "online_of",
    "parse_policy_key",
    "policy_json",
    "policy_key",
    "sample_interval",
    "target_for",
]
